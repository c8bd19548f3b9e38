"""Greedy and sampled decoding as one ``tf.while_loop`` over an explicit state.

Everything here is a pure function of tensors, so the whole call -- prefill,
loop, token choice, logits processors -- traces into ONE graph that XLA
compiles once per *shape*. Two rules make that work:

1. **Static shapes.** The output buffer ``sequences`` is allocated at its final
   size ``[batch, prompt_len + max_new_tokens_buffer]`` and written one column
   per step with ``dynamic_update_slice``; the KV cache likewise
   (``kv_cache.py``). Nothing grows inside the loop.
2. **Values are tensors, shapes are compile keys.** Every option that does not
   change a shape (temperature, top-k, seed, eos ids, ...) arrives in
   :class:`DecodeOptions` as a tensor, so changing it reuses the compiled
   program. Only batch, lengths, strategy and a few sizes are Python values.

Rows that finish early are not removed (that would change shapes): a
``finished`` flag masks them, they emit ``pad_token_id`` from then on, and the
loop exits as soon as every row is finished or the step bound is reached.

Worked example, greedy, batch 2, prompt length 3, 3 new tokens, eos=9, pad=0::

    prompt     [[0, 5, 6],        # row 0 is left-padded
                [4, 5, 6]]
    step 0 picks [7, 9]  -> row 1 finished (9 is EOS)
    step 1 picks [8, *]  -> row 1 emits pad
    step 2 picks [9, *]  -> row 0 finished; loop ends
    sequences  [[0, 5, 6, 7, 8, 9],
                [4, 5, 6, 9, 0, 0]]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from . import positions as pos
from . import processors, sampling, sequence_bias, stop_strings, truncation
from .protocol import Cache, DecoderModel


class DecodeOptions(NamedTuple):
    """Every decoding option as a tensor: changing a value never recompiles.

    Shapes use B = rows decoded (batch * num_return_sequences, or batch for
    beams) and V = vocab size.
    """

    max_new_tokens: tf.Tensor  # int32 []: loop bound, <= the buffer size
    pad_token_id: tf.Tensor  # int32 []
    eos_mask: tf.Tensor  # bool [V]: True for each EOS id (a list of ids, fixed shape)
    min_new_tokens: tf.Tensor  # int32 []: no EOS before this many new tokens
    forced_eos_mask: tf.Tensor  # bool [V]: forced_eos_token_id(s) to force at the last step; all False = off
    suppress_mask: tf.Tensor  # bool [V]: tokens never generated
    repetition_penalty: tf.Tensor  # float32 []: 1.0 = off
    no_repeat_ngram_size: tf.Tensor  # int32 []: 0 = off
    bad_words_ids: tf.Tensor  # int32 [n_words, max_word_len], right-padded
    bad_words_lengths: tf.Tensor  # int32 [n_words]
    temperature: tf.Tensor  # float32 []: 0 = greedy
    top_k: tf.Tensor  # int32 []: 0 = off
    top_p: tf.Tensor  # float32 []: 1.0 = off
    seeds: tf.Tensor  # int32 [B, 2]: per-row seed pairs
    sample_index: tf.Tensor  # int32 [B]: which return sequence of its prompt a row is
    length_penalty: tf.Tensor  # float32 []: beam search only
    early_stopping: tf.Tensor  # int32 []: beam search only; an options.EarlyStopping value
    # Truncation samplers (sampling only): each off value skips its warper.
    min_p: tf.Tensor  # float32 []: 0 = off
    typical_p: tf.Tensor  # float32 []: 1 = off (0 would be ON: use DecodeOptions.off, not zeros)
    epsilon_cutoff: tf.Tensor  # float32 []: 0 = off
    eta_cutoff: tf.Tensor  # float32 []: 0 = off
    renormalize_logits: tf.Tensor  # bool []: log-softmax at the end of the chain (beam search)
    # sequence_bias, packed like bad words (sequence_bias.pack_sequence_bias); zero rows = off.
    sequence_bias_ids: tf.Tensor  # int32 [n_seqs, max_len], right-padded
    sequence_bias_lengths: tf.Tensor  # int32 [n_seqs]
    sequence_bias_values: tf.Tensor  # float32 [n_seqs]
    # stop_strings: the fields of stop_strings.StopStringTables; zero strings = off.
    stop_bytes: tf.Tensor  # int32 [S, M]
    stop_lengths: tf.Tensor  # int32 [S]
    stop_token_lengths: tf.Tensor  # int32 [V] (or [0] when off)
    stop_heads: tf.Tensor  # uint8 [V, M - 1]
    stop_tails: tf.Tensor  # uint8 [V, M - 1]
    stop_contains: tf.Tensor  # bool [S, V]

    @classmethod
    def off(cls, vocab_size: int, **values) -> "DecodeOptions":
        """Every option at its off value (one row, 1 new token), then ``values`` on top.

        For tests and tools that build options by hand: an all-zeros tuple
        would switch some options ON (``typical_p=0``, ``temperature=0``).
        """
        def mask():
            return tf.zeros([vocab_size], tf.bool)

        base = dict(
            max_new_tokens=tf.constant(1), pad_token_id=tf.constant(0), eos_mask=mask(),
            min_new_tokens=tf.constant(0), forced_eos_mask=mask(), suppress_mask=mask(),
            repetition_penalty=tf.constant(1.0), no_repeat_ngram_size=tf.constant(0),
            bad_words_ids=tf.zeros([0, 1], tf.int32), bad_words_lengths=tf.zeros([0], tf.int32),
            temperature=tf.constant(1.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
            seeds=tf.zeros([1, 2], tf.int32), sample_index=tf.zeros([1], tf.int32),
            length_penalty=tf.constant(1.0), early_stopping=tf.constant(0),
            min_p=tf.constant(0.0), typical_p=tf.constant(1.0), epsilon_cutoff=tf.constant(0.0),
            eta_cutoff=tf.constant(0.0), renormalize_logits=tf.constant(False),
            **sequence_bias_fields(None), **stop_string_fields(None))
        return cls(**(base | values))


def sequence_bias_fields(packed) -> dict:
    """The ``sequence_bias_*`` fields of :class:`DecodeOptions` from
    ``sequence_bias.pack_sequence_bias``'s ``(ids, lengths, biases)``; None = off."""
    if packed is None:
        packed = (np.zeros([0, 1], np.int32), np.zeros([0], np.int32), np.zeros([0], np.float32))
    ids, lengths, biases = packed
    return dict(sequence_bias_ids=tf.constant(ids, tf.int32), sequence_bias_lengths=tf.constant(lengths, tf.int32),
                sequence_bias_values=tf.constant(biases, tf.float32))


def stop_string_fields(tables) -> dict:
    """The ``stop_*`` fields of :class:`DecodeOptions` from a ``stop_strings.StopStringTables``; None = off."""
    if tables is None:
        tables = stop_strings.StopStringTables(
            np.zeros([0, 2], np.int32), np.zeros([0], np.int32), np.zeros([0], np.int32),
            np.zeros([0, 1], np.uint8), np.zeros([0, 1], np.uint8), np.zeros([0, 0], bool))
    return dict(stop_bytes=tf.constant(tables.stop_bytes, tf.int32),
                stop_lengths=tf.constant(tables.stop_lengths, tf.int32),
                stop_token_lengths=tf.constant(tables.token_lengths, tf.int32),
                stop_heads=tf.constant(tables.heads, tf.uint8), stop_tails=tf.constant(tables.tails, tf.uint8),
                stop_contains=tf.constant(tables.contains, tf.bool))


def end_on_stop_strings(finished, tokens, token_mask, cur_len, options: DecodeOptions) -> tf.Tensor:
    """``finished`` OR "the newest token (slot ``cur_len - 1``) completes a stop string".

    Args:
      finished: bool ``[B]``.
      tokens / token_mask: int32 / bool ``[B, L]``, the newest token already
        written (see ``stop_strings.stop_string_hit``).

    Returns:
      bool ``[B]``; ``finished`` itself, tracing nothing, when ``options``
      has no stop strings (zero strings is a shape).
    """
    o = options
    if o.stop_bytes.shape[0] == 0:
        return finished
    tables = stop_strings.StopStringTables(o.stop_bytes, o.stop_lengths, o.stop_token_lengths,
                                           o.stop_heads, o.stop_tails, o.stop_contains)
    return finished | stop_strings.stop_string_hit(tokens, token_mask, cur_len, tables)


class SamplingState(NamedTuple):
    """Loop state of greedy / sampled decoding."""

    step: tf.Tensor  # int32 []: new tokens generated so far
    sequences: tf.Tensor  # int32 [B, P + N]: prompt, then generated tokens, pad after EOS
    token_mask: tf.Tensor  # bool [B, P + N]: real tokens written so far (for processors)
    logits: tf.Tensor  # float32 [B, V]: the model's next-token logits
    cache: Cache  # the model's cache, fixed size
    finished: tf.Tensor  # bool [B]: row has emitted EOS
    scores: tf.Tensor  # float32 [B, N]: log-prob of each chosen token (0 after EOS)


def process_logits(logits, tokens, token_mask, cur_len, step, options: DecodeOptions):
    """Applies the logits processors, in transformers' order.

    Args:
      logits: float32 ``[B, V]`` raw next-token logits.
      tokens / token_mask: int32 / bool ``[B, L]``: prompt + generated so far.
      cur_len: int32 scalar, slots written; step: int32 scalar, new tokens so far.
        Either may also be int32 ``[B]``, one value per row (speculative
        decoding, where rows have accepted different numbers of tokens).

    Returns:
      float32 ``[B, V]``; forbidden tokens are ``-inf``.

    Speed: a processor that is off (``repetition_penalty == 1``,
    ``no_repeat_ngram_size == 0``, ...) is skipped with a ``tf.cond`` on its
    option *value*, so it costs nothing per step yet switching it on needs no
    recompile. (Measured on gpt2-small: within noise under XLA, which already
    fused the off processors well; a large gain with ``jit_compile=False``.)
    """
    o = options
    if o.sequence_bias_ids.shape[0] != 0:  # first, as in transformers; zero sequences trace nothing
        logits = sequence_bias.sequence_bias(logits, tokens, token_mask, cur_len, o.sequence_bias_ids,
                                          o.sequence_bias_lengths, o.sequence_bias_values)
    logits = _when(o.repetition_penalty != 1.0, logits, lambda x: processors.repetition_penalty(
        x, tokens, token_mask, o.repetition_penalty))
    logits = _when(o.no_repeat_ngram_size > 0, logits, lambda x: processors.no_repeat_ngram(
        x, tokens, token_mask, cur_len, o.no_repeat_ngram_size))
    if o.bad_words_ids.shape[0] != 0:  # no bad words is a shape: nothing to trace
        logits = processors.bad_words(logits, tokens, token_mask, cur_len, o.bad_words_ids, o.bad_words_lengths)
    logits = _when(tf.reduce_any(step < o.min_new_tokens), logits, lambda x: processors.min_new_tokens(
        x, step, o.min_new_tokens, o.eos_mask))
    logits = _when(tf.reduce_any(o.suppress_mask), logits, lambda x: processors.suppress_tokens(
        x, o.suppress_mask))
    last_step = tf.logical_and(tf.reduce_any(o.forced_eos_mask), tf.reduce_any(step == o.max_new_tokens - 1))
    return _when(last_step, logits, lambda x: processors.forced_eos(x, step, o.max_new_tokens, o.forced_eos_mask))


def _when(active, logits, processor):
    """``processor(logits)`` if the boolean scalar tensor ``active``, else ``logits`` untouched."""
    return tf.cond(active, lambda: processor(logits), lambda: logits)


#: Candidate pool of the fast top-k path in :func:`warp_logits`.
TOP_K_FAST_PATH = 256


def warp_logits(logits, options: DecodeOptions, min_tokens_to_keep: int = 1):
    """Sampling warpers: temperature, top-k, top-p, then min-p, typical, epsilon, eta
    (transformers' order; the last four are ``truncation.truncate``).

    ``min_tokens_to_keep``: Python int, every filter's floor (top-k, top-p and
    the truncation warpers; 1 when sampling; beam sampling passes the number of
    EOS ids + 1, as transformers).

    A temperature of 0 is handled by the caller (greedy); here it is replaced
    by 1 so nothing divides by zero.

    Speed: top-k and top-p as written in ``processors.py`` sort the whole
    vocabulary (50k entries per row, every step: ~55 ms at batch 8 on our
    2-core CPU). When ``0 < k <= 256`` (``k`` = ``top_k`` raised to
    ``min_tokens_to_keep``) -- the usual case -- only the 256
    best scores can survive, so we run both filters on
    ``tf.math.top_k(logits, 256)`` (a partial sort, ~1.5 ms) and scatter the
    survivors back into a row of ``-inf``. Two details matter:

    * scatter, don't compare: ``logits >= threshold`` would read ``logits`` a
      second time, and XLA:CPU then lowers ``top_k`` as a full sort (measured:
      no faster than sorting);
    * one documented difference: if the k-th best score is tied with scores
      outside the 256 best (256 - k + 1 exactly equal floats), only the tied
      tokens inside the pool survive, where the full filters keep the whole
      tie group. Any fallback that reads ``logits`` again (a full sort, a
      comparison) brings the full sort back for every step (measured), so we
      accept this edge case; it needs hundreds of bit-identical logits.

    Filters that are off are skipped. Each branch is a ``tf.cond`` on tensor
    values: still one graph (the four truncation warpers share one outer
    ``tf.cond``, so when all are off they cost one predicate per step).
    """
    safe_t = tf.where(options.temperature > 0, options.temperature, 1.0)
    logits = processors.temperature(logits, safe_t)
    k, p = options.top_k, options.top_p
    # Raised to the floor here, once: the raised k decides the path below, and top_k applies it as is.
    k = processors.raised_top_k(k, min_tokens_to_keep)
    pool = min(TOP_K_FAST_PATH, logits.shape[-1])

    def on_full_vocabulary():
        return processors.top_p(processors.top_k(logits, k), p, min_tokens_to_keep)

    def on_top_candidates():
        top = tf.math.top_k(logits, pool)  # values descending, [B, pool]
        kept = processors.top_p(processors.top_k(top.values, k), p, min_tokens_to_keep)
        rows = tf.broadcast_to(tf.range(tf.shape(logits)[0])[:, tf.newaxis], tf.shape(top.indices))
        where = tf.stack([rows, top.indices], axis=-1)
        return tf.tensor_scatter_nd_update(tf.fill(tf.shape(logits), float("-inf")), where, kept)

    filters_off = tf.logical_and(k <= 0, p >= 1)
    fast = tf.logical_and(k > 0, k <= pool)
    logits = tf.cond(filters_off, lambda: logits,
                     lambda: tf.cond(fast, on_top_candidates, on_full_vocabulary))
    o = options
    return truncation.truncate(logits, o.min_p, o.typical_p, o.epsilon_cutoff, o.eta_cutoff, min_tokens_to_keep)


def choose_tokens(processed, options: DecodeOptions, keys, step, do_sample: bool):
    """Picks each row's next token and its log-probability.

    Args:
      processed: float32 ``[B, V]`` processed logits.
      keys: uint32 ``[B]`` RNG row keys (unused when ``do_sample`` is False).
      do_sample: Python bool (a compile key: it changes the graph).

    Returns:
      ``(tokens int32 [B], logprobs float32 [B])``: the log-probability is
      taken under the distribution the token was drawn from (warped when
      sampling).
    """
    greedy = tf.argmax(processed, axis=-1, output_type=tf.int32)
    if not do_sample:
        chosen_from, tokens = processed, greedy
    else:
        warped = warp_logits(processed, options)
        sampled = sampling.gumbel_sample(warped, keys, step)
        use_greedy = options.temperature <= 0
        tokens = tf.where(use_greedy, greedy, sampled)
        chosen_from = tf.where(use_greedy, processed, warped)
    # log_softmax(x)[token] without writing out the whole [B, V] log_softmax.
    logprobs = tf.gather(chosen_from, tokens, batch_dims=1) - tf.reduce_logsumexp(chosen_from, axis=-1)
    return tokens, logprobs


def write_column(buffer: tf.Tensor, column: tf.Tensor, index) -> tf.Tensor:
    """``buffer[:, index] = column`` for a ``[B, L]`` buffer, without changing its shape."""
    start = tf.stack([tf.constant(0, tf.int32), tf.cast(index, tf.int32)])
    return xla.dynamic_update_slice(buffer, column[:, tf.newaxis], start)


def cache_key_mask(attention_mask, buffer_len: int):
    """int32 ``[B, buffer_len]``: the prompt's mask, then 1 for every slot a new token will fill."""
    batch, prompt_len = attention_mask.shape
    return tf.concat([tf.cast(attention_mask, tf.int32), tf.ones([batch, buffer_len - prompt_len], tf.int32)], 1)


def prefill(model: DecoderModel, input_ids, attention_mask, buffer_len: int):
    """Allocates the cache and runs the prompt through the model once.

    Returns:
      ``(logits [B, V], cache, key_mask [B, P + N])``: ``key_mask`` marks the
      prompt's real tokens and every slot a generated token will occupy.
    """
    batch = input_ids.shape[0]
    key_mask = cache_key_mask(attention_mask, buffer_len)
    cache = model.init_cache(batch, buffer_len)
    logits, cache = model.step(input_ids, pos.positions_from_mask(attention_mask), cache,
                               tf.constant(0, tf.int32), key_mask)
    return logits, cache, key_mask


class LoopConstants(NamedTuple):
    """What every step of the sampling loop reads but never changes."""

    model: DecoderModel
    options: DecodeOptions
    attention_mask: tf.Tensor  # int32 [B, P] prompt mask
    key_mask: tf.Tensor  # int32 [B, P + N] cache slots holding (or to hold) real tokens
    keys: tf.Tensor  # uint32 [B] RNG row keys
    prompt_len: int
    do_sample: bool


def start(model: DecoderModel, input_ids, attention_mask, options: DecodeOptions,
          max_new_tokens_buffer: int, do_sample: bool) -> tuple[SamplingState, LoopConstants]:
    """Prefill and the initial loop state (see :func:`sample_loop` for shapes)."""
    batch, prompt_len = input_ids.shape
    n = max_new_tokens_buffer
    logits, cache, _ = prefill(model, input_ids, attention_mask, prompt_len + n)
    pad = tf.fill([batch, n], options.pad_token_id)
    state = SamplingState(
        step=tf.constant(0, tf.int32),
        sequences=tf.concat([input_ids, pad], 1),
        token_mask=tf.concat([tf.cast(attention_mask, tf.bool), tf.zeros([batch, n], tf.bool)], 1),
        logits=logits,
        cache=cache,
        finished=tf.zeros([batch], tf.bool),
        scores=tf.zeros([batch, n], tf.float32),
    )
    return state, loop_constants(model, attention_mask, options, n, do_sample)


def loop_constants(model: DecoderModel, attention_mask, options: DecodeOptions, max_new_tokens_buffer: int,
                   do_sample: bool) -> LoopConstants:
    """The :class:`LoopConstants` of a loop over ``attention_mask`` ``[B, P]``.

    Everything in them is derived from the arguments, so a loop state made
    by :func:`start` in one compiled call can be resumed in another
    (``streaming.py``) by rebuilding its constants there.
    """
    prompt_len = attention_mask.shape[1]
    key_mask = cache_key_mask(attention_mask, prompt_len + max_new_tokens_buffer)
    keys = sampling.row_keys(options.seeds, options.sample_index)
    return LoopConstants(model, options, attention_mask, key_mask, keys, prompt_len, do_sample)


def not_done(s: SamplingState, c: LoopConstants) -> tf.Tensor:
    """Loop condition: steps left and at least one row still running."""
    return tf.logical_and(s.step < c.options.max_new_tokens, tf.logical_not(tf.reduce_all(s.finished)))


def decode_step(s: SamplingState, c: LoopConstants) -> tuple[SamplingState, tf.Tensor]:
    """One step: choose each row's token, write it, run the model on it.

    The compiled loop (:func:`sample_loop`) and the eager stepper
    (``debug.step_through``) both call exactly this function.

    Returns:
      ``(next_state, processed)``: ``processed`` are the float32 ``[B, V]``
      processed logits the tokens were chosen from (for inspection).
    """
    options, batch = c.options, s.sequences.shape[0]
    slot = c.prompt_len + s.step
    processed = process_logits(s.logits, s.sequences, s.token_mask, slot, s.step, options)
    tokens, logprobs = choose_tokens(processed, options, c.keys, s.step, c.do_sample)
    # Finished rows keep emitting pad and score nothing.
    tokens = tf.where(s.finished, options.pad_token_id, tokens)
    logprobs = tf.where(s.finished, 0.0, logprobs)
    sequences = write_column(s.sequences, tokens, slot)
    token_mask = write_column(s.token_mask, tf.ones([batch], tf.bool), slot)
    # A row ends on EOS, or once its text contains a stop string (transformers'
    # StopStringCriteria: checked on the sequence with the new token written).
    finished = end_on_stop_strings(s.finished | tf.gather(options.eos_mask, tokens), sequences, token_mask,
                                   slot + 1, options)
    logits, cache = c.model.step(tokens[:, tf.newaxis], pos.next_positions(c.attention_mask, s.step),
                                 s.cache, slot, c.key_mask)
    next_state = SamplingState(
        step=s.step + 1,
        sequences=sequences,
        token_mask=token_mask,
        logits=logits,
        cache=cache,
        finished=finished,
        scores=write_column(s.scores, logprobs, s.step),
    )
    return next_state, processed


def sample_loop(model: DecoderModel, input_ids, attention_mask, options: DecodeOptions,
                max_new_tokens_buffer: int, do_sample: bool):
    """Greedy (``do_sample=False``) or sampled decoding.

    Args:
      model: any :class:`protocol.DecoderModel`.
      input_ids: int32 ``[B, P]`` left-padded prompts (static shape).
      attention_mask: int32 ``[B, P]``.
      options: :class:`DecodeOptions`; ``options.max_new_tokens`` <= buffer.
      max_new_tokens_buffer: Python int N, the output buffer's new-token width.
      do_sample: Python bool.

    Returns:
      ``(sequences int32 [B, P + N], scores float32 [B, N])``. Columns past
      ``options.max_new_tokens`` hold ``pad_token_id``.
    """
    state, constants = start(model, input_ids, attention_mask, options, max_new_tokens_buffer, do_sample)
    # loop_vars is a 1-tuple holding the state (a bare NamedTuple would be
    # unpacked into its fields); the body returns the same 1-tuple.
    (final,) = tf.while_loop(lambda s: not_done(s, constants),
                             lambda s: (decode_step(s, constants)[0],),
                             (state,), maximum_iterations=max_new_tokens_buffer)
    return final.sequences, final.scores


def decode_until(state: SamplingState, constants: LoopConstants, stop_step, max_new_tokens_buffer: int):
    """Resumes the loop of :func:`sample_loop` from ``state`` and pauses it at ``stop_step``.

    Args:
      state: a :class:`SamplingState` from :func:`start` or an earlier call.
      constants: :func:`loop_constants` of the same call.
      stop_step: int32 scalar tensor: run until ``state.step == stop_step``
        (or every row finished, or ``options.max_new_tokens``). A tensor, so
        every pause point shares one compiled program.
      max_new_tokens_buffer: Python int, the loop's static trip-count bound.

    Returns:
      The :class:`SamplingState` at the pause. Running ``decode_until`` to
      ``k1``, then ``k2``, ... runs exactly :func:`sample_loop`'s steps.
    """
    def running(s):
        return tf.logical_and(not_done(s, constants), s.step < stop_step)

    (paused,) = tf.while_loop(running, lambda s: (decode_step(s, constants)[0],), (state,),
                              maximum_iterations=max_new_tokens_buffer)
    return paused
