"""Speculative decoding inside the one ``tf.while_loop``: several tokens per weight read.

At batch 1 a decoder step reads every weight to produce ONE token, so it runs
at the memory roofline whatever the hardware. Speculation (Leviathan et al.
2023, Chen et al. 2023) guesses ``k`` tokens cheaply -- a drafter
(``drafters.py``): copied from the context, or a small model -- and checks all
of them with ONE target forward over ``k + 1`` positions. Each row keeps the
longest correct prefix plus one token from the target, so an iteration emits
between 1 and ``k + 1`` tokens, and the output is exactly plain decoding's:
greedy gives the same tokens, sampling the same distribution.

Why this stays one XLA graph, at any batch size:

* **Fixed k.** Every iteration drafts ``k`` tokens and verifies ``k + 1``
  positions, however many will be accepted: ``k`` is a compile key, the
  number accepted is data. A row that has nothing to propose marks its
  draft positions invalid (a mask), it does not propose fewer.
* **Masks instead of variable lengths.** Acceptance is a prefix mask; each
  row's emitted span is written with a select (``drafters.write_spans``);
  finished rows emit nothing. No tensor's shape ever depends on acceptance.
* **A cache index per row.** Rows drift apart: row ``b`` has generated
  ``generated[b]`` tokens, so its next write slot is its own. The target and
  draft models take ``cache_index [B]`` (``protocol.VerifyingModel.step_all``)
  and scatter their keys/values to per-row slots. Rejected drafts' slots are
  never seen: queries are causal, and the next iteration overwrites them
  (it starts at the first of them). The cache holds ``P + N + k`` slots.

Worked example, greedy, k = 2, batch 2, prompt width P = 3, buffer N = 4.
The loop state ends each row at column ``P + generated - 1`` (the newest
token, whose keys are not yet in the cache)::

    sequences  [[0, 5, 6, 7, _, _, _, _, _],    generated = [1, 1]
                [4, 5, 6, 3, _, _, _, _, _]]    (_ = pad; width P + N + k = 9)
    drafts     [[8, 9],                         e.g. prompt lookup
                [2, 2]]
    verify     ids [[7, 8, 9], [3, 2, 2]] at per-row slots [3, 3]
    argmax     [[8, 9, 4],                      row 0: both drafts right -> emit 8 9 4
                [2, 1, 0]]                      row 1: second draft wrong -> emit 2 1
    sequences  [[0, 5, 6, 7, 8, 9, 4, _, _],    generated = [4, 3]
                [4, 5, 6, 3, 2, 1, _, _, _]]
    next verify writes row 0 from slot 6, row 1 from slot 5 (over its rejected 2).

Sampling uses the rejection rule: draft ``d`` with draft probability ``q(d)``
is accepted with probability ``min(1, p(d) / q(d))``; the first rejected
position is resampled from ``norm(max(0, p - q))``; if all ``k`` pass, one
more token comes from ``p``. Every random number comes from the stateless
counter-based generator (``sampling.py``), keyed by the row's seed and the
index of the token it decides (``drafters.rng_counter``), so a seeded row is
reproducible and independent of its batch. Logits processors apply at every
verified position exactly as in plain decoding (per-row ``cur_len``/``step``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from . import decoding, drafters, sampling, validation
from . import positions as pos
from .drafters import Draft, DraftContext, ModelDrafter, PromptLookupDrafter, write_spans
from .protocol import Cache, DecoderModel

__all__ = ["speculative_loop", "check", "prepare", "SpeculationStats", "PromptLookupDrafter", "ModelDrafter",
           "acceptance_probabilities", "residual_distribution"]


class SpeculationStats(NamedTuple):
    """How much the drafts helped (per row: counted while the row was running)."""

    iterations: tf.Tensor  # int32 []: target forwards after the prefill
    proposed: tf.Tensor  # int32 [B]: valid draft tokens verified
    accepted: tf.Tensor  # int32 [B]: draft tokens accepted and emitted


class SpeculativeState(NamedTuple):
    """Loop state. L = P + N + k columns: room for a last full verify."""

    sequences: tf.Tensor  # int32 [B, L]: prompt, generated, pad
    scores: tf.Tensor  # float32 [B, N + k]: log-prob of each emitted token
    generated: tf.Tensor  # int32 [B]: tokens emitted so far
    finished: tf.Tensor  # bool [B]: EOS emitted or max_new_tokens reached
    cache: Cache  # the target's cache; slots < P + generated - 1 (before the newest token) are filled
    draft_state: Any  # the drafter's state (its model's cache, or ())
    stats: SpeculationStats


class _Constants(NamedTuple):
    model: DecoderModel
    drafter: Any
    options: decoding.DecodeOptions
    prompt_mask: tf.Tensor  # int32 [B, P]
    key_mask: tf.Tensor  # int32 [B, L]
    keys: tf.Tensor  # uint32 [B]
    do_sample: bool


def check(model, drafter, num_beams: int = 1) -> None:
    """Host-side checks before any trace: raises ``ValueError`` naming the argument.

    Refuses a target without ``step_all``, a drafter that cannot draft for it
    (e.g. another vocabulary), and beam search (speculation is for greedy
    and sampling).
    """
    if not hasattr(model, "step_all"):
        validation.fail("model", type(model).__name__, "speculation needs step_all (protocol.VerifyingModel)")
    if num_beams != 1:
        validation.fail("num_beams", num_beams, "must be 1 with prompt_lookup_num_tokens / assistant_model")
    drafter.check(model)


def prepare(model) -> None:
    """Host side: lets the target build what its verification needs, before any trace.

    Calls the optional ``model.prepare_verification()`` (``protocol.py``;
    GPT-2 makes a ``[vocab, C]`` copy of its LM head there, which makes the
    ``k + 1``-row head of each verify ~1.5x faster on XLA:CPU). A model
    without it is verified as it is. Idempotent; ``compiled.build_generate``
    calls it eagerly, and :func:`speculative_loop` again in case it is
    called directly. Wrapping :func:`speculative_loop` in your own
    ``tf.function``? Call this first, eagerly: a variable first made inside
    a trace makes TensorFlow trace the whole loop twice.
    """
    prepare_verification = getattr(model, "prepare_verification", None)
    if prepare_verification is not None:
        prepare_verification()


def speculative_loop(model, input_ids, attention_mask, options: decoding.DecodeOptions,
                     max_new_tokens_buffer: int, do_sample: bool, drafter):
    """Greedy or sampled decoding with drafts verified ``k`` at a time; one graph.

    Args:
      model: a ``protocol.VerifyingModel`` (has ``step_all``).
      input_ids / attention_mask: int32 ``[B, P]`` left-padded prompts.
      options: :class:`decoding.DecodeOptions`, as for ``decoding.sample_loop``.
      max_new_tokens_buffer: Python int N (``options.max_new_tokens <= N``).
      do_sample: Python bool. ``temperature == 0`` is greedy, as in plain decoding.
      drafter: a ``drafters.Drafter``; ``drafter.k`` and its ``compile_key()``
        are compile keys.

    Returns:
      ``(sequences int32 [B, P + N], scores float32 [B, N], stats)``: the same
      outputs as ``decoding.sample_loop`` plus :class:`SpeculationStats`.
    """
    check(model, drafter)
    prepare(model)
    n, extra = max_new_tokens_buffer, 0
    if input_ids.shape[1] == 1:  # a drafter re-reads the last TWO slots: add a (invisible) pad column
        input_ids = tf.pad(input_ids, [[0, 0], [1, 0]], constant_values=options.pad_token_id)
        attention_mask, extra = tf.pad(attention_mask, [[0, 0], [1, 0]]), 1
    state, c = _start(model, input_ids, attention_mask, options, n, do_sample, drafter)
    (final,) = tf.while_loop(lambda s: tf.logical_not(tf.reduce_all(s.finished)),
                             lambda s: (_iteration(s, c),), (state,), maximum_iterations=n)
    return final.sequences[:, extra:input_ids.shape[1] + n], final.scores[:, :n], final.stats


def _start(model, input_ids, attention_mask, options, n, do_sample, drafter):
    """Prefill of the target (all but the newest token) and of the drafter; the initial state."""
    batch, prompt_len = input_ids.shape
    width = prompt_len + n + drafter.k
    key_mask = tf.concat([tf.cast(attention_mask, tf.int32), tf.ones([batch, n + drafter.k], tf.int32)], 1)
    cache = model.init_cache(batch, width)
    # The first verify starts at the newest token (slot P - 1): its logits decide the first new token.
    _, cache = model.step(input_ids[:, :-1], pos.positions_from_mask(attention_mask)[:, :-1], cache,
                          tf.constant(0, tf.int32), key_mask)
    c = _Constants(model, drafter, options, tf.cast(attention_mask, tf.int32), key_mask,
                   sampling.row_keys(options.seeds, options.sample_index), do_sample)
    zero = tf.zeros([batch], tf.int32)
    state = SpeculativeState(
        sequences=tf.concat([input_ids, tf.fill([batch, n + drafter.k], options.pad_token_id)], 1),
        scores=tf.zeros([batch, n + drafter.k]),
        generated=zero, finished=tf.zeros([batch], tf.bool), cache=cache,
        draft_state=drafter.start(input_ids, attention_mask, key_mask),
        stats=SpeculationStats(tf.constant(0), zero, zero))
    return state, c


def _iteration(s: SpeculativeState, c: _Constants) -> SpeculativeState:
    """Draft ``k`` tokens, verify them in one target forward, emit each row's accepted span."""
    context = DraftContext(s.sequences, s.generated, c.prompt_mask, c.key_mask, c.options, c.keys, c.do_sample,
                           s.finished)
    draft, draft_state = c.drafter.propose(context, s.draft_state)
    k = c.drafter.k
    if draft.probs is None:  # a deterministic drafter may have nothing to propose: then verify 1 position
        anything = tf.reduce_any(draft.valid[:, 0] & tf.logical_not(s.finished))
        tokens, accepted, logprobs, cache = tf.cond(
            anything, lambda: _verify(s, c, draft, k + 1), lambda: _verify(s, c, draft, 1))
    else:
        tokens, accepted, logprobs, cache = _verify(s, c, draft, k + 1)
    s = s._replace(cache=cache, draft_state=draft_state)
    return _emit(s, c, tokens, accepted, logprobs, draft)


def _verify(s, c: _Constants, draft: Draft, width: int):
    """One target forward over each row's newest token and the first ``width - 1`` drafts.

    Returns ``(tokens [B, k + 1], accepted [B], logprobs [B, k + 1], cache)``,
    padded to ``k + 1`` columns so that both widths give the same shapes.
    """
    first = c.prompt_mask.shape[1] + s.generated - 1  # [B] slot of the newest token
    slots = first[:, tf.newaxis] + tf.range(width)
    newest = tf.gather(s.sequences, first[:, tf.newaxis], batch_dims=1)
    ids = tf.concat([newest, draft.tokens[:, :width - 1]], 1)
    positions = tf.minimum(pos.slot_positions(c.prompt_mask, slots), c.model.max_positions - 1)
    logits, cache = c.model.step_all(ids, positions, s.cache, first, c.key_mask)
    narrow = Draft(draft.tokens[:, :width - 1], draft.valid[:, :width - 1],
                   None if draft.probs is None else draft.probs[:, :width - 1])
    tokens, accepted, logprobs = decide(logits, s, c, narrow)
    pad = c.drafter.k + 1 - width
    return (tf.pad(tokens, [[0, 0], [0, pad]], constant_values=c.options.pad_token_id), accepted,
            tf.pad(logprobs, [[0, 0], [0, pad]]), cache)


def decide(logits, s, c: _Constants, draft: Draft):
    """Processes the target's logits at every verified position and applies the acceptance rule.

    Args:
      logits: float32 ``[B, w, V]``; position ``j`` follows the newest token
        and drafts ``0 .. j - 1``. ``draft`` has ``w - 1`` positions.

    Returns:
      ``(tokens int32 [B, w], accepted int32 [B], logprobs float32 [B, w])``:
      tokens ``0 .. accepted`` are emitted (the drafts that passed, then the
      target's own token); ``logprobs`` as plain decoding's scores.
    """
    processed = _process(logits, s, c, draft)
    greedy = _greedy_rule(processed, draft)
    if not c.do_sample:
        return greedy
    warped = tf.reshape(decoding.warp_logits(tf.reshape(processed, [-1, processed.shape[-1]]), c.options),
                        tf.shape(processed))
    sampled = _sampling_rule(warped, s, c, draft)
    use_greedy = c.options.temperature <= 0
    return tuple(tf.where(use_greedy, g, r) for g, r in zip(greedy, sampled))


def _process(logits, s, c: _Constants, draft: Draft):
    """Logits processors at every position, each in its own context: the row plus drafts ``< j``.

    The ``w`` positions of each row become ``B * w`` rows of one
    ``decoding.process_logits`` call, each with its own ``cur_len`` and ``step``.
    """
    batch, w, vocab = logits.shape
    end = c.prompt_mask.shape[1] + s.generated
    length = s.sequences.shape[1]
    context = write_spans(s.sequences, draft.tokens, end, tf.fill([batch], w - 1))
    cur_len = tf.reshape(end[:, tf.newaxis] + tf.range(w), [-1])  # [B * w]
    step = tf.reshape(s.generated[:, tf.newaxis] + tf.range(w), [-1])
    prompt_mask = tf.repeat(c.prompt_mask, w, axis=0)
    processed = decoding.process_logits(
        tf.reshape(logits, [-1, vocab]), tf.repeat(context, w, axis=0),
        drafters.context_mask(prompt_mask, cur_len, length), cur_len, step, c.options)
    return tf.reshape(processed, [batch, w, vocab])


def _logprobs(chosen_from, tokens):
    """log_softmax(chosen_from)[token] at each position: ``[B, w, V]``, ``[B, w]`` -> ``[B, w]``."""
    return tf.gather(chosen_from, tokens, batch_dims=2) - tf.reduce_logsumexp(chosen_from, axis=-1)


def _greedy_rule(processed, draft: Draft):
    """Longest prefix of drafts equal to the target's argmax, plus the target's next token."""
    best = tf.argmax(processed, axis=-1, output_type=tf.int32)  # [B, w]
    accepted = drafters.leading_run(draft.valid & tf.equal(draft.tokens, best[:, :-1]))
    return best, accepted, _logprobs(processed, best)


def acceptance_probabilities(p, q_at_draft, draft_tokens, valid):
    """``min(1, p(d) / q(d))`` per draft position; 0 where the draft is invalid.

    Args:
      p: float32 ``[B, m, V]`` target probabilities at the drafted positions.
      q_at_draft: float32 ``[B, m]`` draft probability of each drafted token
        (1 for a deterministic drafter).
      draft_tokens: int32 ``[B, m]``; valid: bool ``[B, m]``.

    Returns:
      float32 ``[B, m]``. A token the target forbids (``p(d) = 0``) is never
      accepted; one whose ``q(d)`` underflowed to 0 always is.
    """
    p_d = tf.gather(p, draft_tokens, batch_dims=2)
    ratio = tf.where(q_at_draft > 0, tf.minimum(1.0, p_d / tf.maximum(q_at_draft, 1e-30)), 1.0)
    return tf.where(valid & (p_d > 0), ratio, 0.0)


def residual_distribution(p, q):
    """``norm(max(0, p - q))``, the distribution of a rejected position; ``p`` if that is empty.

    Args:
      p, q: float32 ``[B, V]`` (``q`` all zero where no draft was proposed).

    Returns:
      float32 ``[B, V]`` summing to 1. (Empty only if ``p == q`` up to rounding,
      when a rejection has probability ~0; ``p`` is then the right answer.)
    """
    r = tf.maximum(p - q, 0.0)
    total = tf.reduce_sum(r, axis=-1, keepdims=True)
    return tf.where(total > 0, r / tf.maximum(total, 1e-30), p)


def _sampling_rule(warped, s, c: _Constants, draft: Draft):
    """Leviathan/Chen rejection sampling with counter-based uniforms (see module docstring)."""
    w = warped.shape[1]
    p = tf.nn.softmax(warped)
    index = s.generated[:, tf.newaxis] + tf.range(w - 1)  # new-token index of each draft position
    if draft.probs is None:
        q_at_draft = tf.ones_like(draft.tokens, tf.float32)
    else:
        q_at_draft = tf.gather(draft.probs, draft.tokens, batch_dims=2)
    alpha = acceptance_probabilities(p[:, :-1], q_at_draft, draft.tokens, draft.valid)
    u = tf.stack([_uniform(c.keys, index[:, j], drafters.ACCEPT_STREAM) for j in range(w - 1)], 1) \
        if w > 1 else tf.zeros_like(alpha)
    accepted = drafters.leading_run(u < alpha)
    # Position `accepted`: a rejected draft (resample from the residual) or, past the drafts, the bonus (from p).
    p_next = tf.gather(p, accepted, batch_dims=1)  # [B, V]
    rejected = accepted < w - 1
    at = tf.minimum(accepted, max(w - 2, 0))
    if w == 1:
        q_next = tf.zeros_like(p_next)
    elif draft.probs is None:
        q_next = tf.one_hot(tf.gather(draft.tokens, at[:, None], batch_dims=1)[:, 0], p.shape[-1])
    else:
        q_next = tf.gather(draft.probs, at, batch_dims=1)
    drafted = rejected & (tf.gather(draft.valid, at[:, None], batch_dims=1)[:, 0] if w > 1 else False)
    q_next = tf.where(drafted[:, tf.newaxis], q_next, 0.0)
    nxt = sampling.gumbel_sample(tf.math.log(residual_distribution(p_next, q_next)), c.keys,
                                 drafters.rng_counter(s.generated + accepted, drafters.RESAMPLE_STREAM))
    positions = tf.range(w)[tf.newaxis, :]
    padded = tf.pad(draft.tokens, [[0, 0], [0, 1]])
    tokens = tf.where(positions < accepted[:, None], padded, nxt[:, None])
    return tokens, accepted, _logprobs(warped, tokens)


def _uniform(keys, index, stream):
    """One uniform in (0, 1) per row for the decision about new token ``index [B]``."""
    return sampling.uniform(keys, drafters.rng_counter(index, stream), 1)[:, 0]


def _emit(s: SpeculativeState, c: _Constants, tokens, accepted, logprobs, draft):
    """Writes each row's span ``tokens[:, :count]``; ``count`` stops at EOS and max_new_tokens."""
    o, w = c.options, tokens.shape[1]
    j = tf.range(w)[tf.newaxis, :]
    is_eos = tf.gather(o.eos_mask, tokens)
    eos_before = tf.cumsum(tf.cast(is_eos, tf.int32), axis=1, exclusive=True) > 0
    keep = ((j <= accepted[:, None]) & (j < (o.max_new_tokens - s.generated)[:, None])
            & ~eos_before & ~s.finished[:, None])
    count = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    generated = s.generated + count
    end = c.prompt_mask.shape[1] + s.generated
    running = tf.cast(~s.finished, tf.int32)
    stats = SpeculationStats(
        s.stats.iterations + 1,
        s.stats.proposed + running * tf.reduce_sum(tf.cast(draft.valid, tf.int32), axis=1),
        s.stats.accepted + running * tf.minimum(accepted, count))
    return s._replace(
        sequences=write_spans(s.sequences, tokens, end, count),
        scores=write_spans(s.scores, logprobs, s.generated, count),
        generated=generated,
        finished=s.finished | tf.reduce_any(keep & is_eos, axis=1) | (generated >= o.max_new_tokens),
        stats=stats)
