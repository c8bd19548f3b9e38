"""Decoder laws that hold for greedy, sampling and beam search alike.

Each ``assert_*`` states one law and checks it for one input; hypothesis
(:mod:`.strategies`) supplies the inputs. The decoder under test is a plain
callable (:mod:`.decoder`); ``logits`` is the reference forward used by the
near-tie rule (:mod:`.ties`); ``noise`` a Gumbel-max sampler's perturbation
(so that sampled rows, too, may differ only at a near-tie). Without
``logits`` (or, when sampling, without ``noise``) outputs must agree exactly.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .decoder import Decoded, Decoder, LogitsFn, eos_ids, left_pad, prompts_of, row_seed, run
from .reference import greedy_by_recompute
from .ties import NEAR_TIE, NoiseFn, assert_same_beams, assert_same_tokens, next_token_logits


def is_sampling(options: dict) -> bool:
    """True when ``options`` ask for sampling (``temperature=0`` means greedy)."""
    return bool(options.get("do_sample")) and options.get("temperature", 1.0) != 0


def assert_same_output(got: Decoded, want: Decoded, prompts: Sequence[Sequence[int]], options: dict, *,
                       logits: LogitsFn | None = None, noise: NoiseFn | None = None,
                       tie_margin: float = NEAR_TIE, what: str = "outputs"):
    """``got`` and ``want`` (two runs of the call ``options`` describe) agree.

    Beam search (``num_beams > 1``) compares hypotheses and their scores
    (:func:`~.ties.assert_same_beams`); greedy and sampling compare each row's
    tokens with the near-tie rule on the reference ``logits`` (sampling: on
    ``logits / temperature + noise`` of that row's seed and sample index).

    Args:
      got, want: the outputs; ``want`` is the reference.
      prompts: the unpadded prompt of each PROMPT (output row ``r`` continues
        ``prompts[r // num_return_sequences]``).
      options: the decoding options of ``want``'s call (seeds are read here).
    """
    if got.tokens.shape != want.tokens.shape:
        raise AssertionError(f"{what}: shapes differ: {got.tokens.shape} vs {want.tokens.shape}")
    if options.get("num_beams", 1) > 1:
        if got.sequence_scores is None or want.sequence_scores is None:
            np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=f"{what} (no sequence scores)")
            return
        assert_same_beams(got.tokens, got.sequence_scores, want.tokens, want.sequence_scores, what)
        return
    n = options.get("num_return_sequences", 1)
    sample = is_sampling(options)
    for r in range(len(got.tokens)):
        prompt = prompts[r // n]
        if logits is None or (sample and noise is None):
            fn = None  # nothing can excuse a difference: exact equality
        elif sample:
            fn = next_token_logits(logits, prompt, temperature=options.get("temperature", 1.0), noise=noise,
                                   seed=row_seed(options, r // n), sample_index=r % n)
        else:
            fn = next_token_logits(logits, prompt)
        assert_same_tokens(got.tokens[r], want.tokens[r], fn, tie_margin, f"{what}, row {r}")


def assert_decoders_agree(decode: Decoder, reference: Decoder, input_ids, attention_mask, *,
                          logits: LogitsFn | None = None, noise: NoiseFn | None = None, what: str = "decoders",
                          score_atol: float | None = None, **options) -> tuple[Decoded, Decoded]:
    """Law: two decoders claimed equivalent give the same output for one call.

    XLA == eager, bucketed shapes == exact shapes and speculative == plain are
    all this law with different pairs of callables.

    Args:
      score_atol: if given (and both return ``scores``), rows with the same
        tokens must also have per-token scores within this tolerance.

    Returns:
      ``(decode's output, reference's output)``, for further checks.
    """
    got = run(decode, input_ids, attention_mask, **options)
    want = run(reference, input_ids, attention_mask, **options)
    assert_same_output(got, want, prompts_of(input_ids, attention_mask), options, logits=logits, noise=noise,
                       what=what)
    if score_atol is not None and got.scores is not None and want.scores is not None:
        for r in range(len(got.tokens)):
            if np.array_equal(got.tokens[r], want.tokens[r]):
                np.testing.assert_allclose(got.scores[r], want.scores[r], atol=score_atol, rtol=0,
                                           err_msg=f"{what}, row {r} {got.tokens[r].tolist()}: scores")
    return got, want


def assert_speculative_equals_plain(plain: Decoder, speculative: Decoder, input_ids, attention_mask, *,
                                    logits: LogitsFn | None = None, noise: NoiseFn | None = None,
                                    score_atol: float | None = None, **options) -> tuple[Decoded, Decoded]:
    """Law: speculative decoding returns what plain decoding returns.

    Drafting and verifying several tokens per forward is an acceleration, not
    a new algorithm: greedy tokens equal plain greedy's (up to near-ties of
    the target model's logits, where the wider verify forward may round
    differently), with the same scores. Seeded speculative SAMPLING draws
    from the target's distribution but consumes randomness differently, so
    for it use :func:`~.sampling_laws.assert_sample_frequencies` on the
    speculative decoder instead. Both arguments are plain callables, e.g. for
    xladecode::

        plain = from_language_model(lm)
        speculative = lambda ids, mask, **o: plain(ids, mask, prompt_lookup_num_tokens=3, **o)

    Returns:
      ``(speculative output, plain output)``.
    """
    return assert_decoders_agree(speculative, plain, input_ids, attention_mask, logits=logits, noise=noise,
                                 what="speculative vs plain", score_atol=score_atol, **options)


def assert_cached_equals_recompute(decode: Decoder, logits: LogitsFn, input_ids, attention_mask, *,
                                   max_new_tokens: int, eos_token_id: Sequence[int] = (), pad_token_id: int = 0,
                                   tie_margin: float = NEAR_TIE) -> Decoded:
    """Law: greedy decoding (with its cache) gives the tokens of recomputing the whole text each step.

    The reference (:func:`~.reference.greedy_by_recompute`) is plain greedy,
    so no other option is taken.
    """
    eos = list(eos_token_id)
    out = run(decode, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
              pad_token_id=pad_token_id)
    for r, prompt in enumerate(prompts_of(input_ids, attention_mask)):
        want = greedy_by_recompute(logits, prompt, max_new_tokens, eos, pad_token_id)
        assert_same_tokens(out.tokens[r], want, next_token_logits(logits, prompt), tie_margin,
                           f"cache vs recompute, row {r}")
    return out


def assert_row_invariance(decode: Decoder, target: Sequence[int], *, pad_to: int | None = None,
                          neighbours: Sequence[Sequence[int]] | None = None, position: int = 0,
                          batch_width: int | None = None,
                          fill_rows: int | None = None, neighbour_seed: Callable[[int], tuple] | None = None,
                          alone_decode: Decoder | None = None, logits: LogitsFn | None = None,
                          noise: NoiseFn | None = None, **options):
    """Laws: padding invariance and batch-composition invariance.

    A prompt's continuation is the same decoded alone (unpadded, batch of one),

    * left-padded to ``pad_to`` columns (if given): **padding invariance**;
    * among ``neighbours`` (if given, possibly ``[]``), inserted at
      ``position``, the batch left-padded to ``batch_width`` columns (default:
      its longest prompt) and to ``fill_rows`` rows by repeating row 0:
      **batch composition**. With
      ``neighbour_seed(i)``, every other batch row ``i`` gets its own seed
      (the target keeps ``options["seed"]``): a row is also independent of
      its neighbours' seeds.

    Args:
      decode: the decoder under test; ``alone_decode`` (default ``decode``)
        runs the unpadded reference call.
      target: the prompt's tokens.
      **options: the decoding options of every call (``pad_token_id`` pads).
    """
    pad_id = options.get("pad_token_id") or 0
    ids, mask = left_pad([target], pad_id=pad_id)
    alone = run(alone_decode or decode, ids, mask, **options)
    n = len(alone.tokens)
    if pad_to is not None:
        ids, mask = left_pad([target], pad_to, pad_id=pad_id)
        padded = run(decode, ids, mask, **options)
        assert_same_output(padded, alone, [target], options, logits=logits, noise=noise,
                           what=f"left padding to {pad_to}")
    if neighbours is not None:
        rows = [list(r) for r in neighbours]
        index = min(position, len(rows))
        rows.insert(index, list(target))
        rows += [rows[0]] * ((fill_rows or 0) - len(rows))
        ids, mask = left_pad(rows, batch_width, pad_id=pad_id)
        call = dict(options)
        if neighbour_seed is not None:
            call["seed"] = np.asarray([row_seed(options, 0) if i == index else neighbour_seed(i)
                                       for i in range(len(rows))], np.int64)
        mixed = run(decode, ids, mask, **call)
        part = slice(index * n, (index + 1) * n)
        mine = Decoded(mixed.tokens[part], None if mixed.scores is None else mixed.scores[part],
                       None if mixed.sequence_scores is None else mixed.sequence_scores[part])
        assert_same_output(mine, alone, [target], options, logits=logits, noise=noise,
                           what=f"batch composition (row {index} of {len(rows)})")


def check_pad_after_eos(tokens, eos: Sequence[int], pad: int):
    """After a row's first EOS, every later token is ``pad``.

    Args:
      tokens: int ``[rows, N]`` new tokens.
    """
    eos = set(int(e) for e in eos)
    for r, row in enumerate(np.asarray(tokens)):
        hits = [i for i, t in enumerate(row.tolist()) if t in eos]
        if hits and not (row[hits[0] + 1:] == pad).all():
            raise AssertionError(f"row {r}: EOS {row[hits[0]]} at step {hits[0]} is followed by "
                                 f"{row[hits[0] + 1:].tolist()}, not only pad {pad}: {row.tolist()}")


def assert_pad_after_eos(decode: Decoder, input_ids, attention_mask, **options) -> Decoded:
    """Law: after a row's first EOS (``options["eos_token_id"]``) only ``pad_token_id`` follows."""
    out = run(decode, input_ids, attention_mask, **options)
    check_pad_after_eos(out.tokens, eos_ids(options), options.get("pad_token_id") or 0)
    return out
