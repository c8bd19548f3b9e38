"""The near-tie rule: when two decoders that should agree may still differ.

Float rounding differs between paths that are mathematically equal (XLA vs
eager, padded vs unpadded, cached vs recomputed, batched vs alone), so a
near-tie can flip an argmax. The rule, used by every law and never loosened:

* **tokens** (:func:`assert_same_tokens`): two token rows agree, or at their
  FIRST differing step the reference's next-token logits have a top-2 gap
  below ``tie_margin`` (:data:`NEAR_TIE`). Anything else is a bug.
* **beams** (:func:`assert_same_beams`): the same hypothesis with scores
  within :data:`SCORE_ATOL`, or two different hypotheses whose scores differ by
  less than :data:`BEAM_TIE` (rounding reordered near-equal scores).

For sampling, the "logits" whose tie matters are the ones the sampler takes
the argmax of: ``logits / temperature + noise`` (Gumbel-max), so a decoder
that exposes its noise (``noise=`` in :func:`next_token_logits`) gets the
same rule; one that does not must agree exactly.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .decoder import LogitsFn

#: Largest top-2 logit gap at which two paths may pick different tokens.
NEAR_TIE = 1e-4
#: Largest score gap at which two different beam hypotheses count as tied.
BEAM_TIE = 1e-5
#: Tolerance for one hypothesis' score computed along two paths.
SCORE_ATOL = 1e-4

#: ``prefix -> float [vocab]``: the reference's next-token logits after the
#: prompt plus the generated ``prefix`` (the prompt is bound inside).
PrefixLogits = Callable[[Sequence[int]], np.ndarray]
#: ``noise(seed, sample_index, step, vocab_size) -> float [vocab]``: the
#: perturbation a sampler adds before its argmax (Gumbel-max samplers).
NoiseFn = Callable[[tuple, int, int, int], np.ndarray]


def top2_gap(logits_row) -> float:
    """Gap between the two largest entries of a logits row."""
    top = np.sort(np.asarray(logits_row, np.float64))[-2:]
    return float(top[1] - top[0])


def next_token_logits(logits: LogitsFn, prompt: Sequence[int], *, temperature: float = 1.0,
                      noise: NoiseFn | None = None, seed=None, sample_index: int = 0) -> PrefixLogits:
    """Makes the ``logits_fn`` of :func:`assert_same_tokens` for one prompt.

    Args:
      logits: the reference forward (no cache), see :mod:`.decoder`.
      prompt: the unpadded prompt tokens.
      temperature: divides the logits (sampling).
      noise: the sampler's perturbation, added after the division; with it
        ``seed`` (the row's ``(a, b)``) and ``sample_index`` (which of its
        return sequences) select the row's stream.

    Returns:
      ``prefix -> float64 [vocab]``: next-token (perturbed) logits after
      ``prompt + prefix``, recomputed without cache on the unpadded row.
    """
    prompt = [int(t) for t in prompt]

    def fn(prefix: Sequence[int]) -> np.ndarray:
        full = np.asarray([prompt + [int(t) for t in prefix]], np.int32)
        row = np.asarray(logits(full, np.ones_like(full)), np.float64)[0, -1] / temperature
        if noise is not None:
            row = row + np.asarray(noise(seed, sample_index, len(prefix), row.shape[-1]), np.float64)
        return row

    return fn


def assert_same_tokens(a, b, logits_fn: PrefixLogits | None, tie_margin: float = NEAR_TIE, what: str = "tokens"):
    """``a == b``, or they first differ at a near-tie of the reference's logits.

    Args:
      a: int ``[N]``: the new tokens of the path under test.
      b: int ``[N]``: the reference path's new tokens (same length).
      logits_fn: ``prefix -> [vocab]`` the reference's next-token logits
        after the prompt plus ``prefix`` (see :func:`next_token_logits`);
        None demands exact equality.
      tie_margin: largest top-2 gap that counts as a near-tie.
      what: names the comparison in the failure message.

    Raises:
      AssertionError: naming the step, the two tokens and the logit gap.
    """
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise AssertionError(f"{what}: lengths differ: {a.tolist()} vs {b.tolist()}")
    if np.array_equal(a, b):
        return
    step = int(np.flatnonzero(a != b)[0])
    head = (f"{what}: first differ at step {step}: token {int(a[step])} vs reference token {int(b[step])} "
            f"(got {a.tolist()}, reference {b.tolist()})")
    if logits_fn is None:
        raise AssertionError(f"{head}; no reference logits, so no tie can excuse it")
    row = np.asarray(logits_fn([int(t) for t in b[:step]]), np.float64)
    gap = top2_gap(row)
    if not gap < tie_margin:
        raise AssertionError(
            f"{head}; reference logits there: top-2 gap {gap:.4g}, logit[{int(b[step])}] - "
            f"logit[{int(a[step])}] = {row[b[step]] - row[a[step]]:.4g}; not a near-tie (< {tie_margin:g}): a bug")


def assert_same_beams(got_tokens, got_scores, want_tokens, want_scores, what: str = "beams",
                      tie: float = BEAM_TIE, atol: float = SCORE_ATOL):
    """Row by row: the same hypothesis with scores within ``atol``, or a tie.

    Args:
      got_tokens, want_tokens: int ``[rows, N]`` hypotheses (new tokens).
      got_scores, want_scores: float ``[rows]`` their sequence scores.
      tie: two different hypotheses are accepted if their scores differ by
        less than this.

    Raises:
      AssertionError: naming the row, both hypotheses and the score gap.
    """
    got_tokens, want_tokens = np.asarray(got_tokens), np.asarray(want_tokens)
    if got_tokens.shape != want_tokens.shape:
        raise AssertionError(f"{what}: shapes differ: {got_tokens.shape} vs {want_tokens.shape}")
    for r in range(len(got_tokens)):
        diff = abs(float(got_scores[r]) - float(want_scores[r]))
        if np.array_equal(got_tokens[r], want_tokens[r]):
            if not diff <= atol:
                raise AssertionError(f"{what}: row {r} {got_tokens[r].tolist()}: scores {float(got_scores[r]):.7g} "
                                     f"vs {float(want_scores[r]):.7g} differ by {diff:.3g} > {atol:g}")
        elif not diff <= tie:
            raise AssertionError(
                f"{what}: row {r} differs (got {got_tokens[r].tolist()} score {float(got_scores[r]):.7g}, want "
                f"{want_tokens[r].tolist()} score {float(want_scores[r]):.7g}): score gap {diff:.3g} is not a tie "
                f"(<= {tie:g})")
