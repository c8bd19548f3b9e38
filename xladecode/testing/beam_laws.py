"""Laws of beam search: one beam, scores, exhaustive search."""

from __future__ import annotations

import numpy as np

from .decoder import Decoder, LogitsFn, end_of, eos_ids, prompts_of, run
from .reference import brute_force_beams, token_logprobs
from .ties import SCORE_ATOL, assert_same_beams, assert_same_tokens, next_token_logits


def assert_one_beam_equals_greedy(beam_decode: Decoder, greedy_decode: Decoder, logits: LogitsFn, input_ids,
                                  attention_mask, *, atol: float = 1e-5, **options):
    """Law: beam search with ONE beam is greedy decoding.

    ``beam_decode`` is called with ``num_beams=1`` (pass a callable that
    forces the beam code path if your ``num_beams=1`` dispatches to greedy),
    ``greedy_decode`` without; both must return scores. Tokens follow the
    near-tie rule; where they agree the per-token scores agree within
    ``atol`` and the beam score is their sum / new_length ** length_penalty.
    """
    beam = run(beam_decode, input_ids, attention_mask, **(options | dict(num_beams=1, num_return_sequences=1)))
    greedy = run(greedy_decode, input_ids, attention_mask, **options)
    if beam.scores is None or beam.sequence_scores is None or greedy.scores is None:
        raise AssertionError("one beam vs greedy needs scores from both and sequence scores from the beam")
    if beam.tokens.shape != greedy.tokens.shape:
        raise AssertionError(f"shapes differ: {beam.tokens.shape} vs {greedy.tokens.shape}")
    eos, lp = eos_ids(options), options.get("length_penalty", 1.0)
    for r, prompt in enumerate(prompts_of(input_ids, attention_mask)):
        assert_same_tokens(beam.tokens[r], greedy.tokens[r], next_token_logits(logits, prompt),
                           what=f"1 beam vs greedy, row {r}")
        if np.array_equal(beam.tokens[r], greedy.tokens[r]):
            np.testing.assert_allclose(beam.scores[r], greedy.scores[r], atol=atol, rtol=0)
            length = end_of(beam.tokens[r], eos)
            np.testing.assert_allclose(beam.sequence_scores[r], greedy.scores[r].sum() / length ** lp,
                                       atol=atol, rtol=1e-6)


def assert_beam_scores_are_logprobs(decode: Decoder, logits: LogitsFn, input_ids, attention_mask, *,
                                    atol: float = SCORE_ATOL, **options):
    """Law: beam scores are the model's log-probs, recomputed independently.

    For every returned hypothesis of new length ``L`` (through its first EOS):
    ``scores[:L]`` are the no-cache log-probs of its tokens, ``scores[L:]`` are
    0, and ``sequence_scores = sum(scores) / L ** length_penalty``.
    """
    out = run(decode, input_ids, attention_mask, **options)
    if out.scores is None or out.sequence_scores is None:
        raise AssertionError("the decoder returned no scores / sequence scores")
    n = len(out.tokens) // len(input_ids)
    eos, lp = eos_ids(options), options.get("length_penalty", 1.0)
    wanted = token_logprobs(logits, np.repeat(input_ids, n, 0), np.repeat(attention_mask, n, 0), out.tokens, eos)
    for r, token_logp in enumerate(wanted):
        length, what = len(token_logp), f"row {r} {out.tokens[r].tolist()}"
        np.testing.assert_allclose(out.sequence_scores[r], token_logp.sum() / length ** lp, atol=atol, rtol=1e-5,
                                   err_msg=f"{what}: sequence score")
        np.testing.assert_allclose(out.scores[r, :length], token_logp, atol=atol, rtol=0,
                                   err_msg=f"{what}: token scores")
        if (out.scores[r, length:] != 0).any():
            raise AssertionError(f"{what}: scores after the end are not 0: {out.scores[r].tolist()}")
        np.testing.assert_allclose(out.scores[r].sum(), out.sequence_scores[r] * length ** lp, atol=atol, rtol=1e-5,
                                   err_msg=f"{what}: scores do not sum to the sequence score")
    return out


def assert_beam_equals_brute_force(decode: Decoder, logits: LogitsFn, input_ids, attention_mask, *,
                                   vocab_size: int, width: int | None = None, atol: float = SCORE_ATOL, **options):
    """Law: with beams enough to hold every prefix and ``early_stopping="never"``,
    beam search is exact search: its hypotheses are the best ones of
    :func:`~.reference.brute_force_beams`, with their exact scores.

    Args:
      vocab_size: the model's vocabulary (tiny: the tree is enumerated).
      width: padded width of the reference forward (one shape for all prompts).
      **options: must hold ``num_beams`` (>= vocab_size ** (max_new_tokens-1)),
        ``num_return_sequences``, ``max_new_tokens``, ``eos_token_id``, ``pad_token_id``.
    """
    out = run(decode, input_ids, attention_mask, **options)
    if out.sequence_scores is None:
        raise AssertionError("the decoder returned no sequence scores")
    n, eos, pad = options["num_return_sequences"], eos_ids(options), options.get("pad_token_id") or 0
    new = options["max_new_tokens"]
    for i, prompt in enumerate(prompts_of(input_ids, attention_mask)):
        hyps = brute_force_beams(logits, prompt, vocab_size=vocab_size, max_new_tokens=new, eos=eos,
                                 length_penalty=options.get("length_penalty", 1.0), pad=pad, width=width)
        want_tokens = np.full([n, new], pad, np.int64)
        for r, (_, seq) in enumerate(hyps[:n]):
            want_tokens[r, :len(seq)] = seq
        want_scores = np.array([s for s, _ in hyps[:n]])
        part = slice(i * n, (i + 1) * n)
        got, got_scores = out.tokens[part], out.sequence_scores[part]
        what = f"brute force, prompt {prompt}, length_penalty {options.get('length_penalty', 1.0)}"
        assert_same_beams(got, got_scores, want_tokens, want_scores, what)
        np.testing.assert_allclose(got_scores, want_scores, atol=atol, rtol=1e-5, err_msg=what)
        # A hypothesis swapped in by a tie must still be a real hypothesis with that score.
        exact = {seq: s for s, seq in hyps}
        for row, score in zip(got, got_scores):
            seq = tuple(int(t) for t in row[:end_of(row, eos)])
            if seq not in exact or abs(exact[seq] - score) > atol:
                raise AssertionError(f"{what}: {seq} with score {score:.7g} is not a hypothesis of that score")
