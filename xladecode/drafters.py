"""Drafters for speculative decoding: who proposes the ``k`` tokens the target then checks.

A drafter is a small object with a static ``k`` and two graph-side methods
(:class:`Drafter`); ``speculative.py`` calls them inside its ``tf.while_loop``.
Two are provided, with transformers' names in brackets:

* :class:`PromptLookupDrafter` (``prompt_lookup_num_tokens=k``): no model.
  Each row looks for the last ``n`` tokens of its own context (prompt plus
  generated) earlier in that context and proposes the ``k`` tokens that
  followed. Its draft is deterministic: ``q`` is one-hot.
* :class:`ModelDrafter` (``assistant_model=draft, num_assistant_tokens=k``):
  any model with ``step_all`` (``protocol.VerifyingModel``) and the target's
  vocabulary, with its own fixed-size cache, run ``k`` steps per iteration
  under exactly the processors and warpers the target uses.

Everything is per row and fixed-size: a row with nothing to propose marks its
draft positions invalid (``Draft.valid``) instead of proposing fewer tokens.

The per-row helpers (:func:`write_spans`, :func:`context_mask`,
:func:`leading_run`) and the random-stream counter (:func:`rng_counter`) live
here because drafters and the verifier both use them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from . import decoding
from . import positions as pos
from . import validation

#: Largest ``k`` a drafter accepts (it is a compile key: one graph per value).
MAX_DRAFT_TOKENS = 32
#: Largest prompt-lookup n-gram (transformers' ``max_matching_ngram_size``, default 2).
MAX_NGRAM = 16
#: Largest prompt-lookup backoff, in iterations (see :class:`PromptLookupDrafter`).
MAX_BACKOFF = 1024

# Independent random streams per new-token index (see rng_counter).
DRAFT_STREAM, ACCEPT_STREAM, RESAMPLE_STREAM = 0, 1, 2
_NUM_STREAMS = 3


class Draft(NamedTuple):
    """What a drafter proposes for every row, fixed-size."""

    tokens: tf.Tensor  # int32 [B, k]; pad_token_id where not valid
    valid: tf.Tensor  # bool [B, k]; True on a prefix of each row: the proposed tokens
    probs: Any  # float32 [B, k, V] distribution each token was drawn from; None = one-hot (deterministic)


class DraftContext(NamedTuple):
    """What a drafter may read at the start of one speculative iteration."""

    sequences: tf.Tensor  # int32 [B, L]: prompt, generated tokens, then pad
    generated: tf.Tensor  # int32 [B]: new tokens so far; row b ends at column P + generated[b] (P >= 2)
    prompt_mask: tf.Tensor  # int32 [B, P]
    key_mask: tf.Tensor  # int32 [B, L] cache slots holding (or to hold) real tokens
    options: decoding.DecodeOptions
    keys: tf.Tensor  # uint32 [B] RNG row keys
    do_sample: bool
    finished: Any = None  # bool [B]: rows that are done (None: not known, e.g. a drafter tested alone)


class Drafter(Protocol):
    """The interface; ``k`` and :meth:`compile_key` are compile keys."""

    k: int

    def compile_key(self) -> tuple:
        """Hashable; equal keys may share one compiled graph."""
        ...

    def check(self, model) -> None:
        """Host side, before tracing: raises ``ValueError`` if it cannot draft for ``model``."""
        ...

    def start(self, input_ids: tf.Tensor, attention_mask: tf.Tensor, key_mask: tf.Tensor) -> Any:
        """Prefill: returns the drafter's loop state (a nest of tensors, ``()`` if none)."""
        ...

    def propose(self, context: DraftContext, state: Any) -> tuple[Draft, Any]:
        """Proposes ``k`` tokens per row; returns ``(Draft, new state)``."""
        ...


# ------------------------------------------------------------------ helpers
def rng_counter(new_token_index: tf.Tensor, stream: int) -> tf.Tensor:
    """The ``step`` given to ``sampling.uniform`` for one random decision.

    Each decision about a row's new token number ``i`` (drafting it, testing
    it, resampling it) reads its own stream ``3 * i + stream``. A row's
    randomness then depends only on its key and on which token is being
    decided -- not on the iteration, the batch or the neighbours' acceptance.
    Reusing a counter in a later iteration is harmless: an iteration's output
    depends only on the draws of the tokens it emits, so draws it did not use
    are still fresh.
    """
    return _NUM_STREAMS * tf.cast(new_token_index, tf.int32) + stream


def leading_run(passed: tf.Tensor) -> tf.Tensor:
    """int32 ``[B]``: how many leading entries of each row of bool ``[B, m]`` are True.

    Example: leading_run([[True, True, False, True], [False, True, True, True]]) -> [2, 0].
    """
    return tf.reduce_sum(tf.math.cumprod(tf.cast(passed, tf.int32), axis=1), axis=1)


def write_spans(buffer: tf.Tensor, values: tf.Tensor, first: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """``buffer[b, first[b] + j] = values[b, j]`` for ``j < count[b]``; other columns unchanged.

    Args:
      buffer: ``[B, L]`` (any dtype); values: ``[B, w]``, same dtype.
      first, count: int32 ``[B]``. Columns past ``L`` are dropped.

    Returns:
      ``[B, L]``. A select over the (small) buffer, not a scatter: every row
      writes its own span and the shape never changes.

    Example: write_spans([[0, 0, 0, 0]], [[7, 8]], [1], [1]) -> [[0, 7, 0, 0]].
    """
    width = values.shape[1]
    if width == 0:
        return buffer
    offset = tf.range(tf.shape(buffer)[1])[tf.newaxis, :] - first[:, tf.newaxis]  # [B, L]
    inside = (offset >= 0) & (offset < count[:, tf.newaxis])
    picked = tf.gather(values, tf.clip_by_value(offset, 0, width - 1), batch_dims=1)
    return tf.where(inside, picked, buffer)


def context_mask(prompt_mask: tf.Tensor, end: tf.Tensor, length: int) -> tf.Tensor:
    """bool ``[B, length]``: a row's real tokens, i.e. prompt tokens and columns ``P .. end[b] - 1``.

    The ``token_mask`` the logits processors read, with a per-row end.
    """
    prompt_len = prompt_mask.shape[1]
    columns = tf.range(length)[tf.newaxis, :]
    generated = (columns >= prompt_len) & (columns < end[:, tf.newaxis])
    prompt = tf.pad(tf.cast(prompt_mask, tf.bool), [[0, 0], [0, length - prompt_len]])
    return prompt | generated


def _shift_right(x: tf.Tensor, d: int, fill) -> tf.Tensor:
    """``x[:, j - d]`` at column ``j`` (``fill`` for ``j < d``)."""
    return x if d == 0 else tf.pad(x[:, :x.shape[1] - d], [[0, 0], [d, 0]], constant_values=fill)


# ------------------------------------------------------------ prompt lookup
class LookupBackoff(NamedTuple):
    """Per-row loop state of :class:`PromptLookupDrafter`'s backoff."""

    first_column: tf.Tensor  # int32 [B]: column of the last draft's first token
    draft: tf.Tensor  # int32 [B, k]: the last draft's tokens
    valid: tf.Tensor  # bool [B, k]: which of them were proposed (all False: the row did not draft)
    skip: tf.Tensor  # int32 [B]: iterations left in which this row does not draft
    penalty: tf.Tensor  # int32 [B]: the skip length of the last losing draft (0 after one that paid)


class PromptLookupDrafter:
    """Drafts by copying from the row's own context: no model, one-hot ``q``.

    For ``n = ngram .. 1`` (largest first), row ``b`` looks for the last ``n``
    tokens of its context earlier in that context, and the (up to) ``k``
    tokens after the occurrence are the draft. Which occurrence: the latest
    by default, the leftmost with ``latest=False`` (transformers'
    ``PromptLookupCandidateGenerator``). Text that repeats itself -- a
    refrain, a loop of the model's own -- is best predicted by its most
    recent round: on the shipped model the latest match lifted grounded
    prompts from 1.88 to 2.29 tokens per iteration (README). Fewer tokens
    may follow before the context ends: the rest are invalid. Unlike
    transformers, drafts are not cut at EOS or at processor-forbidden tokens:
    verification rejects those anyway. The choice changes which tokens are
    verified, never the output.

    Example, k = 2, ngram = 2, context ``[5, 6, 7, 8, 5, 6, 9, 5, 6]``: the
    tail ``[5, 6]`` occurs earlier at columns 0-1 and 4-5, so the draft is
    ``[9, 5]`` (latest) or ``[7, 8]`` (leftmost).

    **Backoff.** On free text most matches are chance ones, and verifying a
    draft costs a ``k + 1``-position forward (on the shipped model ~2.5x a
    one-token step at batch 1, ``tools/profile_verify.py``). A draft *pays* when at least half of its ``k`` tokens
    (rounded up) are accepted. After a draft that does not pay, the row stops
    drafting for 1 iteration; after its next such draft for 2, then 4, 8 ...
    up to ``max_backoff``; a draft that pays resets this. The rule reads the
    row's own history (how many of its last draft's tokens are now written
    in its context), and it changes which positions are verified, never the
    output (greedy tokens are plain greedy's; sampling keeps the target's
    distribution). When no row of the batch drafts, the verifier runs one
    position only (``speculative._iteration``): plain decoding's cost. When
    one running row drafts, greedy decoding lets every row with a match
    draft, in its backoff or not: the wide verify is paid anyway
    (:meth:`_ready`). Sampling never does, so a seeded row stays independent
    of its neighbours.

    Example, ``max_backoff = 4``, no draft ever pays: the row drafts in
    iterations 0, 2, 5, 10, 15, 20, ... (skips of 1, 2, 4, 4, ...).

    Args:
      k: tokens per draft (transformers' ``prompt_lookup_num_tokens``).
      ngram: longest n-gram matched (transformers' ``max_matching_ngram_size``;
        transformers defaults to 2).
      max_backoff: longest skip, in iterations; 0 = draft whenever a match
        exists (transformers' behaviour).
      latest: copy after the latest earlier occurrence (True) or the leftmost
        (False, transformers' rule).
    """

    def __init__(self, k: int, ngram: int = 2, max_backoff: int = 16, latest: bool = True):
        self.k = validation.integer("prompt_lookup_num_tokens", k, 1, MAX_DRAFT_TOKENS)
        self.ngram = validation.integer("max_matching_ngram_size", ngram, 1, MAX_NGRAM)
        self.max_backoff = validation.integer("prompt_lookup_max_backoff", max_backoff, 0, MAX_BACKOFF)
        self.latest = validation.boolean("prompt_lookup_latest_match", latest)

    def compile_key(self) -> tuple:
        return ("prompt_lookup", self.k, self.ngram, self.max_backoff, self.latest)

    def check(self, model) -> None:
        """Any model can be drafted for: nothing to check."""

    def start(self, input_ids, attention_mask, key_mask):
        """The backoff state (:class:`LookupBackoff`, nothing drafted yet); ``()`` without backoff."""
        if not self.max_backoff:
            return ()
        zero = tf.zeros([input_ids.shape[0]], tf.int32)
        none = tf.zeros([input_ids.shape[0], self.k], tf.int32)
        return LookupBackoff(zero, none, tf.cast(none, tf.bool), zero, zero)

    def propose(self, context: DraftContext, state) -> tuple[Draft, Any]:
        """See :class:`Drafter`; ``state`` is :meth:`start`'s."""
        seq = context.sequences
        length = seq.shape[1]
        end = context.prompt_mask.shape[1] + context.generated  # [B] first unwritten column
        real = context_mask(context.prompt_mask, end, length)
        columns = tf.range(length)[tf.newaxis, :]
        start = tf.fill(tf.shape(end), length)  # first column of the draft; L = none found
        for n in range(self.ngram, 0, -1):  # static: one [B, L] comparison per offset
            first = self._match(seq, real, end, n, columns, length)
            start = tf.where(start < length, start, first + n)  # larger n already found: keep it
        draft_columns = start[:, tf.newaxis] + tf.range(self.k)  # [B, k]
        valid = draft_columns < end[:, tf.newaxis]  # also False when nothing matched (start = L)
        if self.max_backoff:
            skip, penalty = self._backoff(seq, state)
            valid &= self._ready(skip, valid, context)[:, tf.newaxis]
        copied = tf.gather(seq, tf.minimum(draft_columns, length - 1), batch_dims=1)
        tokens = tf.where(valid, copied, context.options.pad_token_id)
        if self.max_backoff:
            state = LookupBackoff(end, tokens, valid, skip, penalty)
        return Draft(tokens, valid, None), state

    @staticmethod
    def _ready(skip, valid, context: DraftContext):
        """bool ``[B]``: rows allowed to draft this iteration.

        A row drafts when its backoff is over (``skip == 0``). Greedy at batch > 1: as soon
        as one running row drafts, the batch pays the ``k + 1``-position verify anyway, so
        every row with a match drafts too, in its backoff or not. Sampling keeps the
        per-row rule: a seeded row's tokens depend on which of its positions were drafted,
        and they must not depend on its neighbours.
        """
        ready = skip == 0
        if context.do_sample or context.finished is None:
            return ready
        running = tf.logical_not(context.finished)
        return ready | tf.reduce_any(ready & valid[:, 0] & running)

    def _backoff(self, seq, state: LookupBackoff):
        """``(skip, penalty)`` int32 ``[B]`` for this iteration, from the fate of the last draft.

        An accepted draft token is written as it was proposed, and a rejected
        one never is (greedy writes the target's different argmax; sampling
        resamples from a residual that excludes it), so the accepted count is
        the leading run of the draft that equals the context at its columns.
        """
        columns = tf.minimum(state.first_column[:, tf.newaxis] + tf.range(self.k), seq.shape[1] - 1)
        written = tf.gather(seq, columns, batch_dims=1)
        accepted = leading_run(state.valid & tf.equal(written, state.draft))
        drafted = state.valid[:, 0]
        lost = drafted & (accepted < (self.k + 1) // 2)
        penalty = tf.where(lost, tf.minimum(tf.maximum(2 * state.penalty, 1), self.max_backoff),
                           tf.where(drafted, 0, state.penalty))
        skip = tf.where(lost, penalty, tf.maximum(state.skip - 1, 0))
        return skip, penalty

    def _match(self, seq, real, end, n, columns, length):
        """Start column of the latest (or leftmost) earlier occurrence of each row's last
        ``n`` tokens; ``length`` (so that ``start + n`` is past any draft) where there is none."""
        tail_columns = end[:, tf.newaxis] - n + tf.range(n)  # [B, n]
        clipped = tf.clip_by_value(tail_columns, 0, length - 1)
        tail = tf.gather(seq, clipped, batch_dims=1)
        tail_real = tf.reduce_all((tail_columns >= 0) & tf.gather(real, clipped, batch_dims=1), axis=1)
        # A window ending at column e matches when seq[e - d] == tail[n - 1 - d] for every d,
        # all its tokens are real, and it is not the tail itself (e <= end - 2).
        match = tail_real[:, tf.newaxis] & (columns <= end[:, tf.newaxis] - 2)
        for d in range(n):
            same = _shift_right(seq, d, -1) == tail[:, n - 1 - d, tf.newaxis]
            match &= same & _shift_right(real, d, False)
        if self.latest:
            window_end = tf.reduce_max(tf.where(match, columns, -1), axis=1)
            window_end = tf.where(window_end >= 0, window_end, length + n - 1)
        else:
            window_end = tf.reduce_min(tf.where(match, columns, length + n - 1), axis=1)
        return window_end - n + 1


# -------------------------------------------------------------- draft model
class ModelDrafter:
    """Drafts with a (smaller) model: ``k`` cached steps inside the loop.

    The draft model keeps its own cache, as long as the target's (prompt +
    buffer + ``k`` slots) and, like it, one write slot per row. Each
    iteration first feeds the row's last TWO tokens -- the one before may be
    the last draft of a fully accepted iteration, which the draft model never
    saw -- then its own proposals one at a time. Its tokens are chosen like
    plain decoding's (same processors, warpers and temperature), so a draft
    model equal to the target proposes exactly the target's tokens; ``probs``
    is the warped distribution each was sampled from (the ``q`` of the
    acceptance rule).

    Args:
      model: a ``protocol.VerifyingModel`` with the target's vocabulary.
      k: tokens per draft (transformers' ``num_assistant_tokens``).
    """

    def __init__(self, model, k: int):
        self.model = model
        self.k = validation.integer("num_assistant_tokens", k, 1, MAX_DRAFT_TOKENS)

    def compile_key(self) -> tuple:
        return ("model", id(self.model), self.k)

    def check(self, model) -> None:
        if not hasattr(self.model, "step_all"):
            validation.fail("assistant_model", type(self.model).__name__,
                            "must implement step_all (protocol.VerifyingModel)")
        if self.model.vocab_size != model.vocab_size:
            validation.fail("assistant_model", f"vocab_size {self.model.vocab_size}",
                            f"must equal the target's vocab_size {model.vocab_size}")

    def start(self, input_ids, attention_mask, key_mask):
        """Prefills the draft model's own cache with the prompt; the cache is the state."""
        cache = self.model.init_cache(input_ids.shape[0], key_mask.shape[1])
        _, cache = self.model.step(input_ids, pos.positions_from_mask(attention_mask), cache,
                                   tf.constant(0, tf.int32), key_mask)
        return cache

    def propose(self, context: DraftContext, cache) -> tuple[Draft, Any]:
        """See :class:`Drafter`."""
        c, g = context, context.generated
        end = c.prompt_mask.shape[1] + g  # [B]: column of the first draft token
        logits, cache = self._run(tf.gather(c.sequences, (end - 2)[:, None] + tf.range(2), batch_dims=1),
                                  end - 2, cache, c)
        token, q, seq = self._choose(logits[:, -1], c.sequences, 0, c)
        tokens = tf.zeros([g.shape[0], self.k], tf.int32)
        probs = tf.zeros([g.shape[0], self.k, self.model.vocab_size]) if c.do_sample else ()
        tokens, probs = _set_column(tokens, token, 0), _set_column(probs, q, 0)

        def body(j, token, cache, tokens, probs, seq):
            logits, cache = self._run(token[:, tf.newaxis], end + j - 1, cache, c)
            token, q, seq = self._choose(logits[:, 0], seq, j, c)
            return j + 1, token, cache, _set_column(tokens, token, j), _set_column(probs, q, j), seq

        _, _, cache, tokens, probs, _ = tf.while_loop(
            lambda j, *_: j < self.k, body, (tf.constant(1), token, cache, tokens, probs, seq),
            maximum_iterations=self.k - 1)
        draft = Draft(tokens, tf.ones([g.shape[0], self.k], tf.bool), probs if c.do_sample else None)
        return draft, cache

    def _run(self, ids, first_slot, cache, c: DraftContext):
        """The draft model on ``ids [B, t]`` at per-row slots ``first_slot [B] ..``."""
        slots = first_slot[:, tf.newaxis] + tf.range(ids.shape[1])
        # Clipped: the slot before a one-token prompt is padding (position -1, masked anyway).
        positions = tf.clip_by_value(pos.slot_positions(c.prompt_mask, slots), 0, self.model.max_positions - 1)
        return self.model.step_all(ids, positions, cache, first_slot, c.key_mask)

    def _choose(self, logits, seq, j, c: DraftContext):
        """Draft token ``j`` of each row as plain decoding would choose it; appends it to ``seq``."""
        g = c.generated
        column = c.prompt_mask.shape[1] + g + j
        mask = context_mask(c.prompt_mask, column, seq.shape[1])
        processed = decoding.process_logits(logits, seq, mask, column, g + j, c.options)
        token, _ = decoding.choose_tokens(processed, c.options, c.keys, rng_counter(g + j, DRAFT_STREAM),
                                          c.do_sample)
        q = tf.nn.softmax(decoding.warp_logits(processed, c.options)) if c.do_sample else ()
        return token, q, write_spans(seq, token[:, tf.newaxis], column, tf.ones_like(column))


def _set_column(buffer, column, j):
    """``buffer[:, j] = column`` for a ``[B, k]`` or ``[B, k, V]`` buffer (``()`` passes through)."""
    if isinstance(buffer, tuple):
        return buffer
    start = tf.stack([0, tf.cast(j, tf.int32)] + [0] * (len(buffer.shape) - 2))
    return xla.dynamic_update_slice(buffer, tf.expand_dims(column, 1), start)
