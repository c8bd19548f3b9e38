"""Slow, obviously-correct reference algorithms the laws compare against.

Plain numpy over a reference forward (``logits(input_ids, attention_mask)``,
no cache), written for clarity, not speed: greedy by recomputing the whole
text each step, the sampling warpers, exhaustive beam search, and the
chi-square test.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from .decoder import LogitsFn, end_of, left_pad


def log_softmax(x) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def greedy_by_recompute(logits: LogitsFn, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int],
                        pad: int) -> list[int]:
    """Greedy decoding with a full forward over the whole text at every step.

    Returns:
      ``max_new_tokens`` ints: argmax tokens, ``pad`` after the first EOS.
    """
    out: list[int] = []
    finished = False
    for _ in range(max_new_tokens):
        if finished:
            token = pad
        else:
            full = np.asarray([list(prompt) + out], np.int32)
            token = int(np.argmax(np.asarray(logits(full, np.ones_like(full)))[0, -1]))
        finished = finished or token in set(eos)
        out.append(token)
    return out


def warp(logits_row, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """The sampling warpers in transformers' order: temperature, top-k, top-p.

    Ties at a cut are kept whole: a token survives top-k if its score is >= the
    k-th largest; top-p keeps every token whose score is >= the smallest score
    of the shortest most-likely prefix holding probability ``p``.

    Returns:
      float64 ``[vocab]``, ``-inf`` where filtered.
    """
    x = np.asarray(logits_row, np.float64) / temperature
    if top_k > 0:
        x = np.where(x >= np.sort(x)[::-1][min(top_k, x.size) - 1], x, -np.inf)
    if top_p < 1.0:
        order = np.argsort(-x, kind="stable")
        probs = np.exp(x[order] - x[order[0]])
        probs /= probs.sum()
        # The tokens ranked above position i hold `before[i]`; keep i while that is < p
        # (and always the top token).
        before = np.concatenate([[0.0], np.cumsum(probs)[:-1]])
        kept = order[:max(1, int((before < top_p).sum()))]
        x = np.where(x >= x[kept].min(), x, -np.inf)
    return x


def softmax(x) -> np.ndarray:
    """float64 softmax of a row that may hold ``-inf``."""
    x = np.asarray(x, np.float64)
    p = np.exp(x - x.max())
    return p / p.sum()


def _chi_square_cdf(x: float, df: int) -> float:
    """P(chi2_df <= x): the regularized lower incomplete gamma P(df/2, x/2), by its power series
    ``z^a e^-z / Gamma(a+1) * sum_n z^n / ((a+1)...(a+n))`` (exact to float64 for df, x < ~500)."""
    a, z = df / 2, x / 2
    if z <= 0:
        return 0.0
    term, total, n = 1.0, 1.0, 0
    while term > 1e-17 * total:
        n += 1
        term *= z / (a + n)
        total += term
    return math.exp(a * math.log(z) - z - math.lgamma(a + 1) + math.log(total))


def chi_square_critical(df: int, alpha: float) -> float:
    """The ``1 - alpha`` quantile of chi-square with ``df`` degrees of freedom (by bisection).

    Examples: ``chi_square_critical(2, 1e-3)`` = 13.816, ``(10, 1e-3)`` = 29.588.
    """
    low, high = 0.0, df + 20.0 * math.sqrt(2 * df) + 50.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if _chi_square_cdf(mid, df) < 1 - alpha else (low, mid)
    return (low + high) / 2


def chi_square(counts, probs, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic of observed ``counts`` against ``probs``.

    Tokens with probability 0 are left out (the caller checks they were never
    drawn); tokens expected fewer than ``min_expected`` times are pooled into
    one bin, so the chi-square approximation holds.

    Returns:
      ``(statistic, degrees of freedom)``.
    """
    counts, probs = np.asarray(counts, np.float64), np.asarray(probs, np.float64)
    keep = probs > 0
    counts, expected = counts[keep], probs[keep] * counts[keep].sum() / probs[keep].sum()
    small = expected < min_expected
    if small.sum() > 0:
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return float(((counts - expected) ** 2 / expected).sum()), len(counts) - 1


def _continuations(vocab_size: int, max_new: int, eos: set[int], prefix=()):
    """Every ended continuation: at its first EOS, or after ``max_new`` tokens."""
    if len(prefix) == max_new or (prefix and prefix[-1] in eos):
        yield prefix
        return
    for token in range(vocab_size):
        yield from _continuations(vocab_size, max_new, eos, prefix + (token,))


def brute_force_beams(logits: LogitsFn, prompt: Sequence[int], *, vocab_size: int, max_new_tokens: int,
                      eos: Sequence[int], length_penalty: float, pad: int = 0,
                      width: int | None = None) -> list[tuple[float, tuple]]:
    """Every hypothesis with its exact score ``sum(logprob) / new_length ** length_penalty``.

    One no-cache forward over ``prompt + p`` for every ``(max_new_tokens - 1)``
    token prefix ``p`` gives every next-token distribution needed. Feasible
    for ``vocab_size ** max_new_tokens`` in the low thousands. ``width`` pins
    the padded width of that forward (one shape for every prompt length).

    Returns:
      ``[(score, hypothesis tuple)]``, best first.
    """
    prefixes = list(itertools.product(range(vocab_size), repeat=max_new_tokens - 1))
    ids, mask = left_pad([list(prompt) + list(p) for p in prefixes], width, pad_id=pad)
    logp = dict(zip(prefixes, log_softmax(np.asarray(logits(ids, mask)))))
    last = ids.shape[1] - max_new_tokens  # position that predicts new token 0
    hyps = []
    for seq in _continuations(vocab_size, max_new_tokens, set(eos)):
        row = logp[(seq[:-1] + (0,) * max_new_tokens)[:max_new_tokens - 1]]  # a prefix row starting with seq[:-1]
        total = sum(row[last + t, token] for t, token in enumerate(seq))
        hyps.append((total / len(seq) ** length_penalty, seq))
    return sorted(hyps, key=lambda h: -h[0])


def token_logprobs(logits: LogitsFn, input_ids, attention_mask, new_tokens, eos: Sequence[int]) -> list[np.ndarray]:
    """Per row, the model log-probs of its new tokens through the first EOS (no cache).

    Args:
      input_ids, attention_mask: int ``[rows, P]`` the left-padded prompt of each row.
      new_tokens: int ``[rows, N]``.

    Returns:
      one float64 array per row, of length :func:`~.decoder.end_of` that row.
    """
    new_tokens = np.asarray(new_tokens)
    ids = np.concatenate([np.asarray(input_ids), new_tokens], 1).astype(np.int32)
    mask = np.concatenate([np.asarray(attention_mask), np.ones_like(new_tokens)], 1).astype(np.int32)
    logp = log_softmax(np.asarray(logits(ids, mask)))
    width = np.asarray(input_ids).shape[1]
    return [np.array([logp[r, width - 1 + t, new_tokens[r, t]] for t in range(end_of(new_tokens[r], eos))])
            for r in range(len(new_tokens))]
