"""Laws of seeded sampling: reproducibility, independence, limits, frequencies."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .decoder import Decoder, LogitsFn, left_pad, prompts_of, run
from .reference import chi_square, chi_square_critical, softmax, warp

#: Default false-failure rate of :func:`assert_sample_frequencies`.
CHI_SQUARE_ALPHA = 1e-3


def assert_sampling_reproducible(decode: Decoder, input_ids, attention_mask, **options):
    """Law: the same seeded call twice gives identical tokens (and scores) bit for bit."""
    first = run(decode, input_ids, attention_mask, **options)
    again = run(decode, input_ids, attention_mask, **options)
    np.testing.assert_array_equal(first.tokens, again.tokens, err_msg="same seed, different tokens")
    for name in ("scores", "sequence_scores"):
        a, b = getattr(first, name), getattr(again, name)
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=f"same seed, different {name}")
    return first


def assert_return_sequences_independent(decode: Decoder, input_ids, attention_mask, *,
                                        counts: Sequence[int] = (2, 3), **options):
    """Law: return sequence ``j`` of a prompt does not depend on how many are drawn.

    Each sample of a prompt is its own stream: asking for more samples adds
    rows, it does not change the earlier ones.
    """
    outs = {n: run(decode, input_ids, attention_mask, **(options | {"num_return_sequences": n})).tokens
            for n in counts}
    fewest = min(counts)
    for n, tokens in outs.items():
        for p in range(len(input_ids)):
            got, want = tokens[p * n:p * n + fewest], outs[fewest][p * fewest:(p + 1) * fewest]
            np.testing.assert_array_equal(
                got, want, err_msg=f"prompt {p}: its first {fewest} samples change when {n} are drawn")


def assert_sampling_limits_are_greedy(decode: Decoder, input_ids, attention_mask, *,
                                      limits: Sequence[str] = ("top_k=1", "temperature=0"),
                                      logits: LogitsFn | None = None, cold_temperature: float | None = None,
                                      noise_span: float | None = None, **options):
    """Law: sampling with ``top_k=1`` or ``temperature=0`` IS greedy decoding, exactly.

    With ``cold_temperature`` (and ``logits``, ``noise_span``) also: sampling
    at a tiny temperature ``t`` with no top-k differs from greedy only where the
    greedy step's top-2 logit gap is below ``noise_span * t`` (``noise_span``
    bounds the difference of two noise values, e.g. of Gumbel noise from
    24-bit uniforms).

    Args:
      limits: which limits to check, of "top_k=1" and "temperature=0".
      **options: the common options (``seed``, ``max_new_tokens``, EOS, pad);
        ``do_sample`` is set here.
    """
    greedy = run(decode, input_ids, attention_mask, **(options | {"do_sample": False})).tokens
    sample = options | {"do_sample": True}
    for limit in limits:
        change = {"top_k=1": {"top_k": 1}, "temperature=0": {"temperature": 0.0}}[limit]
        got = run(decode, input_ids, attention_mask, **(sample | change)).tokens
        np.testing.assert_array_equal(got, greedy, err_msg=f"sampling with {limit} is not greedy")
    if cold_temperature is not None:
        t = cold_temperature
        cold = run(decode, input_ids, attention_mask, **(sample | {"temperature": t, "top_k": 0})).tokens
        for r, prompt in enumerate(prompts_of(input_ids, attention_mask)):
            if np.array_equal(cold[r], greedy[r]):
                continue
            step = int(np.flatnonzero(cold[r] != greedy[r])[0])
            full = np.asarray([prompt + greedy[r, :step].tolist()], np.int32)
            top = np.sort(np.asarray(logits(full, np.ones_like(full)), np.float64)[0, -1])
            if not top[-1] - top[-2] < noise_span * t:
                raise AssertionError(f"row {r}: temperature {t:g} sampled {cold[r].tolist()}, greedy "
                                     f"{greedy[r].tolist()}; at step {step} the top-2 gap {top[-1] - top[-2]:.3g} "
                                     f">= {noise_span:g} * {t:g}")


def assert_sample_frequencies(decode: Decoder, logits: LogitsFn, prompt: Sequence[int], *, draws: int,
                              seed=(0, 0), temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                              alpha: float = CHI_SQUARE_ALPHA, min_expected: float = 5.0, **options):
    """Law: first-token sample frequencies match the filtered softmax.

    Draws ``draws`` samples of one new token (``num_return_sequences=draws``)
    and checks (1) no token removed by top-k / top-p is ever drawn, (2)
    Pearson's chi-square against ``softmax(warp(logits))`` (the numpy reference
    :func:`~.reference.warp`) stays below its ``1 - alpha`` quantile.

    False-failure rate: a correct sampler fails (2) with probability
    ``alpha`` (default 1e-3) over random seeds. For a FIXED seed the stream is
    deterministic, so a passing (seed, input) passes forever; derandomized
    hypothesis runs are reproducible.

    Returns:
      ``(statistic, critical value, degrees of freedom)``.
    """
    ids, mask = left_pad([prompt], pad_id=options.get("pad_token_id") or 0)
    out = run(decode, ids, mask, **(options | dict(do_sample=True, num_return_sequences=draws, max_new_tokens=1,
                                                   seed=seed, temperature=temperature, top_k=top_k, top_p=top_p)))
    row = np.asarray(logits(ids, mask), np.float64)[0, -1]
    warped = warp(row, temperature, top_k, top_p)
    vocab = row.shape[-1]
    counts = np.bincount(out.tokens[:, 0], minlength=vocab)
    removed = ~np.isfinite(warped)
    if counts[removed].any():
        raise AssertionError(f"filtered tokens were sampled: {np.flatnonzero(removed & (counts > 0)).tolist()}")
    stat, df = chi_square(counts, softmax(warped), min_expected)
    if df == 0:  # one possible token: (1) said it all
        return stat, 0.0, df
    critical = chi_square_critical(df, alpha)
    if not stat < critical:
        raise AssertionError(f"sample frequencies do not match the filtered softmax: chi2 = {stat:.1f} >= "
                             f"{critical:.1f} (df {df}, alpha {alpha:g}); counts {counts.tolist()}")
    return stat, critical, df
