"""Decoder laws as reusable checks, for any ``LanguageModel``.

Each function states one law and asserts it for one input. They know nothing
about GPT-2: any model behind the decoder protocol can be held to them (the
property tests call them with hypothesis-drawn inputs).

Float rounding differs between paths that are mathematically equal (XLA vs
non-XLA, padded vs unpadded, cached vs recomputed), so a near-tie can flip an
argmax. The rule, applied everywhere and never loosened: where two token
sequences differ, the law still holds only if, at the FIRST differing step,
the reference logits' top-2 gap is below :data:`NEAR_TIE`. Anything else is a
bug.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from xladecode import sampling

NEAR_TIE = 1e-4


def left_pad(rows: list[list[int]], width: int | None = None, pad_id: int = 0):
    """Left-pads token lists to ``width``; returns int32 (ids, mask)."""
    width = width or max(len(r) for r in rows)
    ids = np.full([len(rows), width], pad_id, np.int32)
    mask = np.zeros([len(rows), width], np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def new_tokens(out_sequences: np.ndarray, prompt_width: int) -> np.ndarray:
    return out_sequences[:, prompt_width:]


def top2_gap(logits_row: np.ndarray) -> float:
    top = np.sort(logits_row)[-2:]
    return float(top[1] - top[0])


def recompute_logits(lm, prompt: list[int], generated: list[int]) -> np.ndarray:
    """Next-token logits after ``prompt + generated``, recomputed with no cache."""
    full = np.asarray([prompt + generated], np.int32)
    return lm.logits(full, jit_compile=False)[0, -1]


def assert_same_tokens(lm, prompt: list[int], got: np.ndarray, want: np.ndarray, what: str):
    """``got == want`` for one row, or they differ first at a near-tie.

    ``want`` is the reference path's new tokens; the tie is measured on the
    logits recomputed without cache for the shared prefix.
    """
    got, want = np.asarray(got), np.asarray(want)
    if np.array_equal(got, want):
        return
    step = int(np.flatnonzero(got != want)[0])
    gap = top2_gap(recompute_logits(lm, prompt, [int(t) for t in want[:step]]))
    assert gap < NEAR_TIE, (
        f"{what}: tokens differ at step {step} (got {got.tolist()}, want {want.tolist()}) "
        f"with a top-2 logit gap of {gap:.3g} >= {NEAR_TIE}: not a near-tie, a bug")


def greedy_by_recompute(lm, prompt: list[int], max_new_tokens: int, eos: set[int], pad: int) -> list[int]:
    """The slow, obviously-correct greedy: full forward on the whole text every step."""
    out: list[int] = []
    finished = False
    for _ in range(max_new_tokens):
        token = pad if finished else int(np.argmax(recompute_logits(lm, prompt, out)))
        finished = finished or token in eos
        out.append(token)
    return out


def assert_pad_after_eos(new: np.ndarray, eos: set[int], pad: int):
    """After a row's first EOS, every later token is ``pad``."""
    for row in np.asarray(new):
        hits = [i for i, t in enumerate(row) if int(t) in eos]
        if hits:
            assert (row[hits[0] + 1:] == pad).all(), f"tokens after EOS in {row.tolist()}"


def assert_same_sample(lm, row, got, want, s, temperature=1.0):
    """Sampled tokens agree, or first differ where the Gumbel-perturbed logits nearly tie."""
    got, want = np.asarray(got), np.asarray(want)
    if np.array_equal(got, want):
        return
    step = int(np.flatnonzero(got != want)[0])
    logits = recompute_logits(lm, row, [int(t) for t in want[:step]]) / temperature
    keys = sampling.row_keys(tf.constant([s], tf.int32), tf.constant([0]))
    noise = -np.log(-np.log(sampling.uniform(keys, tf.constant(step), logits.shape[-1]).numpy()[0]))
    perturbed = np.sort(logits + noise)
    assert perturbed[-1] - perturbed[-2] < NEAR_TIE, f"sampled tokens differ at step {step}: {got} vs {want}"
