"""The decoder under test, as the laws see it: a plain callable.

Every law in :mod:`xladecode.testing` takes the decoder under test as a
function of this form (no class to subclass, nothing xladecode-specific)::

    decode(input_ids, attention_mask, **options) -> Decoded  (or just the tokens)

* ``input_ids``: int32 ``[B, P]``, prompts LEFT-padded to one width ``P``.
* ``attention_mask``: int32 ``[B, P]``, 1 on prompt tokens, 0 on padding.
* ``options``: decoding options named as in transformers' ``generate()``:
  ``max_new_tokens``, ``eos_token_id`` (a list of ids; ``[]`` = no EOS),
  ``pad_token_id``, ``do_sample``, ``temperature``, ``top_k`` (0 = off),
  ``top_p``, ``seed`` (``(a, b)`` for every row, or int ``[B, 2]`` one pair
  per prompt), ``num_beams``, ``num_return_sequences``, ``length_penalty``,
  ``early_stopping``, ``repetition_penalty``, ``no_repeat_ngram_size``, ...
  A decoder that cannot honour an option raises ``NotImplementedError``; the
  laws let it propagate (``tools/law_report.py`` reports the law as n/a).
* Returns a :class:`Decoded`, or a bare int array of new tokens (then the
  laws that need scores fail with a clear message).

The reference forward, for the laws that recompute things without a cache::

    logits(input_ids, attention_mask) -> float [B, T, vocab]

next-token logits at every position (row ``b``, position ``t`` predicts the
token after ``t``); values at padded positions are ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Decoded:
    """What a decoder under test returns.

    Attributes:
      tokens: int ``[B * n, max_new_tokens]``: only the NEW tokens, rows grouped
        by prompt (rows ``i*n .. i*n+n-1`` continue prompt ``i``; ``n`` =
        ``num_return_sequences``); ``pad_token_id`` after a row's first EOS and
        after an early stop.
      scores: float ``[B * n, max_new_tokens]`` or None: the log-probability of
        each chosen token under the processed distribution, 0 after the end.
      sequence_scores: float ``[B * n]`` or None: beam search's
        length-penalised hypothesis score.
    """

    tokens: np.ndarray
    scores: np.ndarray | None = None
    sequence_scores: np.ndarray | None = None


class Decoder(Protocol):
    """The callable form of a decoder under test (see the module docstring)."""

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, **options: Any) -> Decoded | np.ndarray:
        ...


#: ``logits(input_ids [B, T] int32, attention_mask [B, T] int32) -> float [B, T, vocab]``.
LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def run(decode: Decoder, input_ids, attention_mask, **options) -> Decoded:
    """Calls ``decode`` and normalises its answer to a :class:`Decoded` of numpy arrays."""
    out = decode(np.asarray(input_ids, np.int32), np.asarray(attention_mask, np.int32), **options)
    if not isinstance(out, Decoded):
        out = Decoded(tokens=out)
    tokens = np.asarray(out.tokens)
    if tokens.ndim != 2:
        raise AssertionError(f"decoder returned tokens of shape {tokens.shape}, want [rows, max_new_tokens]")
    return Decoded(tokens, None if out.scores is None else np.asarray(out.scores, np.float64),
                   None if out.sequence_scores is None else np.asarray(out.sequence_scores, np.float64))


def left_pad(rows: Sequence[Sequence[int]], width: int | None = None, pad_id: int = 0):
    """Left-pads token lists to ``width`` (default: the longest).

    Returns:
      ``(input_ids, attention_mask)``, both int32 ``[len(rows), width]``.
    """
    width = width or max(len(r) for r in rows)
    ids = np.full([len(rows), width], pad_id, np.int32)
    mask = np.zeros([len(rows), width], np.int32)
    for i, r in enumerate(rows):
        if len(r) > width:
            raise ValueError(f"row {i} has {len(r)} tokens, more than width={width}")
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def prompts_of(input_ids, attention_mask) -> list[list[int]]:
    """The unpadded prompt of every row: its tokens where the mask is 1."""
    return [[int(t) for t in row[m == 1]] for row, m in zip(np.asarray(input_ids), np.asarray(attention_mask))]


def eos_ids(options: dict) -> list[int]:
    """``options["eos_token_id"]`` as a list (None or missing = no EOS)."""
    eos = options.get("eos_token_id")
    if eos is None:
        return []
    return [int(eos)] if np.ndim(eos) == 0 else [int(e) for e in eos]


def row_seed(options: dict, prompt_index: int):
    """The ``(a, b)`` seed that prompt ``prompt_index`` is sampled with, or None."""
    seed = options.get("seed")
    if seed is None:
        return None
    seed = np.asarray(seed)
    return tuple(int(s) for s in (seed if seed.ndim == 1 else seed[prompt_index]))


def end_of(new_row, eos: Sequence[int]) -> int:
    """Length of a row of new tokens: through its first EOS, else the whole row."""
    eos = set(int(e) for e in eos)
    for i, t in enumerate(np.asarray(new_row).tolist()):
        if t in eos:
            return i + 1
    return len(new_row)
