"""Hypothesis strategies for decoder laws: prompts, option sets, seeds, tiny models.

Compile budgets shape these strategies: a compiled decoder (XLA) builds one
graph per SHAPE, so every strategy here keeps shapes fixed by its arguments
(batch rows, prompt width, number of EOS ids, num_beams, do_sample) and
varies only values (token ids, prompt lengths inside the width, padding,
batch composition, option values, seeds).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

from .decoder import left_pad


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Prompts and their left-padded arrays.

    Attributes:
      prompts: the unpadded prompts (``rows`` of them, fillers included).
      input_ids: int32 ``[rows, width]``.
      attention_mask: int32 ``[rows, width]``.
    """

    prompts: tuple
    input_ids: np.ndarray
    attention_mask: np.ndarray

    def __repr__(self):
        return f"PromptBatch(prompts={[list(p) for p in self.prompts]})"


def prompts(vocab_size: int, max_len: int, min_len: int = 1) -> st.SearchStrategy[list[int]]:
    """One prompt: ``min_len..max_len`` token ids in ``[0, vocab_size)``."""
    return st.lists(st.integers(0, vocab_size - 1), min_size=min_len, max_size=max_len)


def prompt_batches(vocab_size: int, width: int, *, min_rows: int = 1, max_rows: int = 3,
                   fill_rows: int | None = None, pad_id: int = 0) -> st.SearchStrategy[PromptBatch]:
    """Batches of ``min_rows..max_rows`` prompts left-padded to ``width``.

    With ``fill_rows``, the batch is completed to exactly that many rows by
    repeating prompt 0 (a fixed batch shape: one compile).
    """

    def left_padded(rows):  # hypothesis prints falsifying batches as `left_padded([[...], ...])`
        rows = rows + [rows[0]] * ((fill_rows or 0) - len(rows))
        ids, mask = left_pad(rows, width, pad_id=pad_id)
        return PromptBatch(tuple(tuple(r) for r in rows), ids, mask)

    return st.lists(prompts(vocab_size, width), min_size=min_rows, max_size=max_rows).map(left_padded)


def seeds() -> st.SearchStrategy[tuple[int, int]]:
    """A sampling seed ``(a, b)``, both in ``[0, 2**31)``."""
    return st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))


def eos_sets(candidates, sizes=(0, 1, 2)) -> st.SearchStrategy[list[int]]:
    """EOS id lists drawn from ``candidates`` (e.g. the model's most frequent
    outputs, so EOS really fires), with a length in ``sizes``."""
    candidates = list(candidates)
    return st.sampled_from([s for s in sizes if s <= len(candidates)]).flatmap(
        lambda n: st.lists(st.sampled_from(candidates), min_size=n, max_size=n, unique=True))


def processor_options() -> st.SearchStrategy[dict]:
    """Logits processors that change no shape: repetition penalty, no-repeat n-grams, min new tokens."""
    return st.fixed_dictionaries({
        "repetition_penalty": st.sampled_from([1.0, 0.7, 1.5, 3.0]),
        "no_repeat_ngram_size": st.sampled_from([0, 0, 1, 2, 3]),
        "min_new_tokens": st.integers(0, 3),
    })


def decoding_options(kind: str, *, processors: bool = False, num_beams: int = 3,
                     num_return_sequences: int = 1) -> st.SearchStrategy[dict]:
    """A set of decoding options of one strategy: "greedy", "sample" or "beam".

    Shapes stay fixed (``do_sample``, ``num_beams``, ``num_return_sequences``
    are the arguments); values vary: temperature / top-k / top-p and a seed
    for sampling, length penalty and early stopping for beams, and with
    ``processors=True`` the shape-free logits processors.
    """
    if kind == "greedy":
        base = st.just({"do_sample": False})
    elif kind == "sample":
        base = st.fixed_dictionaries({
            "do_sample": st.just(True), "seed": seeds(),
            "temperature": st.sampled_from([1.0, 0.7, 1.3]),
            "top_k": st.sampled_from([0, 5, 20]),
            "top_p": st.sampled_from([1.0, 0.9, 0.5]),
            "num_return_sequences": st.just(num_return_sequences),
        })
    elif kind == "beam":
        base = st.fixed_dictionaries({
            "num_beams": st.just(num_beams), "num_return_sequences": st.just(num_return_sequences),
            "length_penalty": st.sampled_from([1.0, 0.0, -1.0, 2.0]),
            "early_stopping": st.sampled_from([False, True, "never"]),
        })
    else:
        raise ValueError(f"kind={kind!r}: must be 'greedy', 'sample' or 'beam'")
    if not processors:
        return base
    return st.tuples(base, processor_options()).map(lambda pair: pair[0] | pair[1])


def gpt2_configs(max_layers: int = 2, max_vocab: int = 64, n_positions: int = 64) -> st.SearchStrategy[dict]:
    """Keyword arguments of :func:`~.checkpoints.make_checkpoint` for a tiny random GPT-2."""
    return st.fixed_dictionaries({
        "n_layer": st.integers(1, max_layers),
        "n_head": st.sampled_from([1, 2, 4]),
        "vocab_size": st.integers(8, max_vocab),
        "seed": st.integers(0, 2**16),
        "n_positions": st.just(n_positions),
    }).flatmap(lambda c: st.sampled_from([8, 16]).map(lambda per_head: c | {"n_embd": c["n_head"] * per_head}))
