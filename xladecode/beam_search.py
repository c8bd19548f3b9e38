"""Beam search as one ``tf.while_loop``: fixed-size live and finished beam sets.

Semantics follow transformers' (vectorised, v4.50+) beam search so results
match it token for token; the code is ours and every step is shape-static.

Per prompt we keep two sets of ``num_beams`` hypotheses:

* **live** beams: still being extended, scored by the plain sum of token
  log-probabilities;
* **finished** beams: hypotheses that ended (EOS, or the length bound), scored
  by ``sum_logprob / new_length ** length_penalty``. A finished beam is never
  extended: it lives in its own buffer and only ever moves by being
  out-ranked.

One step, for each prompt (K = (1 + number of EOS ids, at least 2) * num_beams)::

    candidates = top K of  live_score[beam] + logprob[beam, token]   over beams x vocab
    hits       = candidate ends in EOS, or the length bound is reached
    live       = best num_beams candidates that did NOT hit        (-1e9 masks hits)
    finished   = best num_beams of (old finished, hits among the top num_beams candidates)
    cache      = cache gathered by each new live beam's parent (one gather on axis 0)

Worked example, num_beams=2, vocab {a, b, EOS}, one prompt, length_penalty 0::

    live  [(a, -0.1), (b, -0.5)]
    step logprobs  a->{a:-0.2, b:-2, EOS:-0.3}   b->{a:-0.1, b:-3, EOS:-1}
    top-4 candidates  aa -0.3, aEOS -0.4, ba -0.6, bEOS -1.5
    live      [(aa, -0.3), (ba, -0.6)]           # aEOS hit EOS, bEOS too
    finished  [(aEOS, -0.4)]                     # bEOS is not in the top 2, so dropped

The loop stops once no live beam can still beat the worst finished one
(``early_stopping``: True = as soon as num_beams hypotheses are finished;
False = transformers' heuristic at the current length; "never" = the
canonical bound at the maximum length when length_penalty > 0).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from . import positions as pos
from . import sampling
from . import truncation
from .decoding import DecodeOptions, end_on_stop_strings, prefill, process_logits, warp_logits
from .options import EarlyStopping
from .protocol import Cache, DecoderModel

NEG = -1.0e9  # "impossible" score; finite, as in transformers, so sums stay ordered


class BeamState(NamedTuple):
    """Loop state. b = prompts, nb = num_beams, L = P + N slots, N = new-token buffer."""

    step: tf.Tensor  # int32 []: new tokens so far
    live_seqs: tf.Tensor  # int32 [b, nb, L]
    live_scores: tf.Tensor  # float32 [b, nb]: sum of token log-probs
    live_token_scores: tf.Tensor  # float32 [b, nb, N]: per-token log-probs
    finished_seqs: tf.Tensor  # int32 [b, nb, L]
    finished_scores: tf.Tensor  # float32 [b, nb]: length-penalised
    finished_token_scores: tf.Tensor  # float32 [b, nb, N]
    finished_flags: tf.Tensor  # bool [b, nb]: slot holds a real finished hypothesis
    improvable: tf.Tensor  # bool [b]: a live beam could still beat the worst finished one
    all_candidates_hit: tf.Tensor  # bool []: every candidate of the last step ended
    logits: tf.Tensor  # float32 [b * nb, V]: next-token logits of the live beams
    cache: Cache  # [b * nb, ...]


def gather_beams(tensor: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """``out[i, j] = tensor[i, indices[i, j]]`` for ``[b, n, ...]`` tensors and ``[b, k]`` indices."""
    return tf.gather(tensor, indices, batch_dims=1)


def reorder_cache(cache: Cache, flat_indices: tf.Tensor) -> Cache:
    """Gathers every cache tensor along its leading (batch * beam) axis."""
    return tf.nest.map_structure(lambda t: tf.gather(t, flat_indices, axis=0), cache)


def _set_column(seqs: tf.Tensor, column: tf.Tensor, index) -> tf.Tensor:
    """``seqs[:, :, index] = column`` for ``[b, k, L]`` seqs and ``[b, k]`` column."""
    hit = tf.equal(tf.range(tf.shape(seqs)[-1]), index)
    return tf.where(hit, column[:, :, tf.newaxis], seqs)


def _length_power(length, length_penalty):
    return tf.pow(tf.cast(length, tf.float32), length_penalty)


def _end_on_stop_strings(hits, cand_seqs, prompt_slots, cur_len, options: DecodeOptions) -> tf.Tensor:
    """``hits`` (bool ``[b, K]``) OR "candidate (``[b, K, L]``, new token at
    slot ``cur_len``) completes a stop string": transformers checks its
    stopping criteria on the candidates, and a hit ends a hypothesis as EOS does.

    ``prompt_slots``: bool ``[b, L]``, the prompt's real tokens and every new slot.
    """
    batch, k, length = cand_seqs.shape
    written = prompt_slots & (tf.range(length) <= cur_len)[tf.newaxis, :]
    flat = end_on_stop_strings(tf.reshape(hits, [batch * k]), tf.reshape(cand_seqs, [batch * k, length]),
                               tf.repeat(written, k, axis=0), cur_len + 1, options)
    return tf.reshape(flat, [batch, k])


def beam_search(model: DecoderModel, input_ids, attention_mask, options: DecodeOptions,
                max_new_tokens_buffer: int, num_beams: int, num_return_sequences: int,
                do_sample: bool = False, num_eos_ids: int = 1):
    """Beam search (or beam sampling with ``do_sample``) over ``[b, P]`` prompts.

    Args:
      model: any :class:`protocol.DecoderModel`.
      input_ids / attention_mask: int32 ``[b, P]`` left-padded prompts.
      options: tensors; uses eos/pad, processors, length_penalty,
        early_stopping (an ``options.EarlyStopping`` value), and for sampling the
        warpers and ``seeds[:b]``.
      max_new_tokens_buffer: Python int N.
      num_beams, num_return_sequences: Python ints (compile keys).
      num_eos_ids: Python int, how many EOS ids ``options.eos_mask`` marks. It
        sizes the candidate pool K = max(2, 1 + num_eos_ids) * num_beams, which
        guarantees num_beams candidates that did not end; the ids' values stay
        tensors.

    Returns:
      ``(sequences int32 [b * nrs, P + N], token_scores float32 [b * nrs, N],
      sequences_scores float32 [b * nrs])``, best hypothesis first per prompt.
    """
    batch, prompt_len = input_ids.shape
    nb, n = num_beams, max_new_tokens_buffer
    vocab = model.vocab_size
    k = min(max(2, 1 + num_eos_ids) * nb, nb * vocab)  # candidates per prompt per step
    flat_mask = tf.repeat(attention_mask, nb, axis=0)  # [b * nb, P]

    state, key_mask = _initial_state(model, input_ids, attention_mask, options, n, nb)
    keys = sampling.row_keys(options.seeds[:batch], options.sample_index[:batch])
    slots = tf.range(prompt_len + n)
    prompt_slots = tf.cast(key_mask, tf.bool)  # [b * nb, L]

    def not_done(s: BeamState):
        exists_open_beam = tf.logical_not(tf.logical_and(
            tf.reduce_all(s.finished_flags), tf.equal(options.early_stopping, int(EarlyStopping.ON_FULL))))
        return tf.reduce_all([
            s.step < options.max_new_tokens, tf.reduce_any(s.improvable), exists_open_beam,
            tf.logical_not(s.all_candidates_hit)])

    def one_step(s: BeamState):
        cur_len = prompt_len + s.step
        # 1. Next-token log-probs of every live beam, processed like transformers
        #    (processors act on log-probs in beam search).
        flat_seqs = tf.reshape(s.live_seqs, [batch * nb, -1])
        token_mask = tf.logical_and(prompt_slots, slots[tf.newaxis, :] < cur_len)
        logprobs = process_logits(tf.nn.log_softmax(s.logits), flat_seqs, token_mask, cur_len,
                                  s.step, options)
        if do_sample:  # at least one non-EOS token survives truncation, as in transformers
            # Keep one token more than there are EOS ids, so a beam can always go on;
            # 2 when there is no EOS id at all (transformers' rule).
            logprobs = warp_logits(logprobs, options, min_tokens_to_keep=max(num_eos_ids, 1) + 1)
        logprobs = tf.cond(options.renormalize_logits, lambda: truncation.renormalize_logits(logprobs),
                           lambda: logprobs)  # the last processor, as in transformers
        logprobs = tf.reshape(logprobs, [batch, nb, vocab])
        totals = tf.reshape(logprobs + s.live_scores[:, :, tf.newaxis], [batch, nb * vocab])
        logprobs = tf.reshape(logprobs, [batch, nb * vocab])

        # 2. The K best candidates (or K sampled without replacement: Gumbel-top-k).
        cand_scores, cand = _candidates(totals, k, keys if do_sample else None, s.step)
        parent = cand // vocab  # [b, K]
        token = cand % vocab
        cand_token_logprob = tf.gather(logprobs, cand, batch_dims=1)
        cand_seqs = _set_column(gather_beams(s.live_seqs, parent), token, cur_len)
        cand_token_scores = _set_column(gather_beams(s.live_token_scores, parent), cand_token_logprob, s.step)
        hits = tf.logical_or(tf.gather(options.eos_mask, token), s.step + 1 >= options.max_new_tokens)
        hits = _end_on_stop_strings(hits, cand_seqs, prompt_slots[::nb], cur_len, options)

        # 3. Live beams for the next step: the best candidates that did not end.
        live_cand_scores = cand_scores + tf.cast(hits, tf.float32) * NEG
        best_live = tf.math.top_k(live_cand_scores, nb).indices
        live_seqs = gather_beams(cand_seqs, best_live)
        live_scores = gather_beams(live_cand_scores, best_live)
        live_token_scores = gather_beams(cand_token_scores, best_live)
        live_parent = gather_beams(parent, best_live)  # [b, nb]

        # 4. Finished set: merge hypotheses that just ended (only among the top
        #    num_beams candidates) into the old finished set, keep the best nb.
        finished = _merge_finished(s, cand_scores, cand_seqs, cand_token_scores, hits, options)

        # 5. Reorder the cache by parent beam (one gather) and run the model.
        flat_parent = tf.reshape(live_parent + tf.range(batch)[:, tf.newaxis] * nb, [-1])
        cache = reorder_cache(s.cache, flat_parent)
        last = tf.reshape(live_seqs[:, :, cur_len], [batch * nb, 1])
        logits, cache = model.step(last, pos.next_positions(flat_mask, s.step), cache, cur_len, key_mask)

        # 6. Can any live beam still beat the worst finished hypothesis?
        improvable = _still_improvable(s, live_scores, finished, options)
        return (BeamState(
            step=s.step + 1, live_seqs=live_seqs, live_scores=live_scores,
            live_token_scores=live_token_scores, finished_seqs=finished.seqs,
            finished_scores=finished.scores, finished_token_scores=finished.token_scores,
            finished_flags=finished.flags, improvable=improvable,
            all_candidates_hit=tf.reduce_all(hits), logits=logits, cache=cache),)

    (final,) = tf.while_loop(not_done, one_step, (state,), maximum_iterations=n)
    r = num_return_sequences
    return (tf.reshape(final.finished_seqs[:, :r], [batch * r, -1]),
            tf.reshape(final.finished_token_scores[:, :r], [batch * r, n]),
            tf.reshape(final.finished_scores[:, :r], [batch * r]))


def _initial_state(model, input_ids, attention_mask, options, n: int, nb: int):
    """Prefills each prompt ONCE and copies its cache and logits to its ``nb`` beams.

    Returns ``(BeamState, key_mask int32 [b * nb, P + n])``. Only beam 0 of a
    prompt is live at the start (the others are copies, scored -1e9 so they
    produce no duplicate candidates); the finished set is empty.
    """
    batch, prompt_len = input_ids.shape
    logits, cache, key_mask = prefill(model, input_ids, attention_mask, prompt_len + n)
    cache = reorder_cache(cache, tf.repeat(tf.range(batch), nb))
    prompt = tf.concat([input_ids, tf.fill([batch, n], options.pad_token_id)], 1)
    seqs = tf.repeat(prompt[:, tf.newaxis, :], nb, axis=1)
    first_live = tf.concat([tf.zeros([batch, 1]), tf.fill([batch, nb - 1], NEG)], 1)
    state = BeamState(
        step=tf.constant(0, tf.int32),
        live_seqs=seqs, live_scores=first_live, live_token_scores=tf.zeros([batch, nb, n]),
        finished_seqs=seqs, finished_scores=tf.fill([batch, nb], NEG),
        finished_token_scores=tf.zeros([batch, nb, n]),
        finished_flags=tf.zeros([batch, nb], tf.bool),
        improvable=tf.ones([batch], tf.bool), all_candidates_hit=tf.constant(False),
        logits=tf.repeat(logits, nb, axis=0), cache=cache,
    )
    return state, tf.repeat(key_mask, nb, axis=0)


class _Finished(NamedTuple):
    """The finished set after one step (see :class:`BeamState`)."""

    seqs: tf.Tensor  # int32 [b, nb, L]
    scores: tf.Tensor  # float32 [b, nb]
    token_scores: tf.Tensor  # float32 [b, nb, N]
    flags: tf.Tensor  # bool [b, nb]


def _candidates(totals, k: int, keys, step):
    """The ``k`` best of ``totals`` float32 ``[b, nb * V]``, or (``keys`` given) ``k`` sampled.

    Sampling draws ``k`` without replacement by Gumbel-top-k on the stateless
    noise of ``keys`` at ``step``, then orders them by score (stable).
    Returns ``(scores float32 [b, k], flat indices int32 [b, k])``, best first.
    """
    if keys is None:
        return tf.math.top_k(totals, k)
    noisy = totals - tf.math.log(-tf.math.log(sampling.uniform(keys, step, totals.shape[-1])))
    cand = tf.math.top_k(noisy, k).indices
    cand_scores = tf.gather(totals, cand, batch_dims=1)
    order = tf.argsort(cand_scores, axis=-1, direction="DESCENDING", stable=True)
    return gather_beams(cand_scores, order), gather_beams(cand, order)


def _merge_finished(s: BeamState, cand_scores, cand_seqs, cand_token_scores, hits, options) -> _Finished:
    """Hypotheses that just ended (only among the top ``nb`` candidates) join the finished set.

    A candidate enters with its length-penalised score, unless its prompt's
    set is full under ``early_stopping=True`` or can no longer improve; the
    best ``nb`` of old and new are kept. ``cand_*``: ``[b, K, ...]``, ``hits`` bool ``[b, K]``.
    """
    nb = s.finished_flags.shape[1]
    just_finished = tf.logical_and(hits, tf.range(hits.shape[1])[tf.newaxis, :] < nb)
    finished_cand = cand_scores / _length_power(s.step + 1, options.length_penalty)
    full = tf.logical_and(tf.reduce_all(s.finished_flags, axis=1),
                          tf.equal(options.early_stopping, int(EarlyStopping.ON_FULL)))
    finished_cand += tf.cast(full, tf.float32)[:, tf.newaxis] * NEG
    finished_cand += tf.cast(tf.logical_not(s.improvable), tf.float32)[:, tf.newaxis] * NEG
    finished_cand += tf.cast(tf.logical_not(just_finished), tf.float32) * NEG
    merged_scores = tf.concat([s.finished_scores, finished_cand], 1)
    best = tf.math.top_k(merged_scores, nb).indices
    return _Finished(
        seqs=gather_beams(tf.concat([s.finished_seqs, cand_seqs], 1), best),
        scores=gather_beams(merged_scores, best),
        token_scores=gather_beams(tf.concat([s.finished_token_scores, cand_token_scores], 1), best),
        flags=gather_beams(tf.concat([s.finished_flags, just_finished], 1), best))


def _still_improvable(s: BeamState, live_scores, finished: _Finished, options):
    """bool ``[b]``: can a prompt's best live beam still beat its worst finished hypothesis?

    The live beam's best possible final score is its score at the current
    length, or (``early_stopping="never"`` with ``length_penalty > 0``) at the
    maximum length, as in transformers.
    """
    at_max = tf.logical_and(tf.equal(options.early_stopping, int(EarlyStopping.NEVER)), options.length_penalty > 0)
    best_len = tf.where(at_max, options.max_new_tokens, s.step + 1)
    best_possible = live_scores[:, 0] / _length_power(best_len, options.length_penalty)
    worst_finished = tf.where(finished.flags, tf.reduce_min(finished.scores, axis=1, keepdims=True), NEG)
    return tf.logical_and(s.improvable, tf.reduce_any(best_possible[:, tf.newaxis] > worst_finished, axis=1))
