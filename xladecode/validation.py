"""Checks of user input, run on the host BEFORE anything is traced or compiled.

Every error names the argument, the offending value and what is allowed, so a
user never has to read an XLA stack trace to find a typo. Nothing here touches
TensorFlow: a bad call fails fast and leaves no state behind.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def fail(argument: str, value, allowed: str):
    """Raises ``ValueError`` in the house style."""
    shown = value if isinstance(value, (int, float, str, bool, type(None))) else _short(value)
    raise ValueError(f"{argument}={shown!r} is invalid: {allowed}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def token_array(input_ids, vocab_size: int) -> np.ndarray:
    """``input_ids`` as int32 ``[batch, T]``; 1-D input becomes one row."""
    array = _rectangular("input_ids", input_ids)
    if array.dtype == object or array.dtype.kind in "bUS" or array.size and not np.issubdtype(array.dtype, np.integer):
        if array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0):
            fail("input_ids", array.tolist(), "token ids must be integers, got floats")
        fail("input_ids", array.tolist() if array.size < 20 else array, "token ids must be integers")
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2:
        fail("input_ids", f"array of shape {array.shape}", "expected shape [batch, length]")
    if array.shape[0] < 1:
        fail("input_ids", f"array of shape {array.shape}", "need at least one row")
    if array.shape[1] < 1:
        fail("input_ids", f"array of shape {array.shape}", "prompts must have at least one token")
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        bad = int(array.min()) if array.min() < 0 else int(array.max())
        fail("input_ids", bad, f"token ids must be in [0, {vocab_size - 1}]")
    return array.astype(np.int32)


def _rectangular(name: str, value) -> np.ndarray:
    """``np.asarray(value)``, refusing ragged rows, strings and bytes with a clear message."""
    if isinstance(value, (str, bytes)):
        fail(name, value, "must be token ids, not text (use generate_text for strings)")
    try:
        return np.asarray(value)
    except (ValueError, TypeError):  # numpy: "inhomogeneous shape"
        lengths = sorted({len(row) for row in value if hasattr(row, "__len__")})
        fail(name, f"rows of lengths {lengths}",
             "all rows must have the same length: left-pad them and pass attention_mask")


def mask_array(attention_mask, input_ids: np.ndarray) -> np.ndarray:
    """Checks a left-padding mask: 0/1, same shape, no 0 after a 1, no empty row."""
    if attention_mask is None:
        return np.ones_like(input_ids, np.int32)
    mask = _rectangular("attention_mask", attention_mask)
    if mask.ndim == 1:
        mask = mask[np.newaxis, :]
    if mask.shape != input_ids.shape:
        fail("attention_mask", f"array of shape {mask.shape}",
             f"must have the shape of input_ids {input_ids.shape}")
    if not np.isin(mask, (0, 1)).all():
        bad = mask[~np.isin(mask, (0, 1))].flat[0]
        fail("attention_mask", bad.item(), "values must be 0 or 1")
    mask = mask.astype(np.int32)
    empty = np.flatnonzero(mask.sum(1) == 0)
    if empty.size:
        fail("attention_mask", f"row {empty[0]} all zeros", "every prompt needs at least one real token")
    # Left padding: once a row has seen a 1, it never goes back to 0.
    right_padded = np.flatnonzero((np.diff(mask, axis=1) < 0).any(1))
    if right_padded.size:
        fail("attention_mask", f"row {right_padded[0]} = {mask[right_padded[0]].tolist()}",
             "padding must be on the LEFT (a 0 after a 1 is right padding); use left padding")
    return mask


INT32_MAX = 2**31 - 1


def integer(name: str, value, low: int = 1, high: int = INT32_MAX) -> int:
    """An int (not a bool, not a float) in ``[low, high]``; numpy ints are fine.

    The upper bound defaults to int32's: every option becomes an int32 tensor,
    and a larger value would silently wrap around (2**32 + 1 -> 1).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        fail(name, value, f"must be an integer >= {low} and <= {high}")
    value = int(value)
    if not low <= value <= high:
        fail(name, value, f"must be >= {low} and <= {high}")
    return value


def boolean(name: str, value) -> bool:
    """``True`` or ``False`` (numpy bools too); strings and numbers are refused.

    ``bool("False")`` is True: coercing would silently invert a user's intent.
    """
    if not isinstance(value, (bool, np.bool_)):
        fail(name, value, "must be True or False")
    return bool(value)


def real(name: str, value, low=None, high=None, low_open=False, high_open=False) -> float:
    """A finite float inside the given bounds (inf and NaN are refused)."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value))):
        fail(name, value, "must be a finite real number")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        fail(name, value, f"must be {'>' if low_open else '>='} {low}")
    if high is not None and (value > high or (high_open and value == high)):
        fail(name, value, f"must be {'<' if high_open else '<='} {high}")
    return value


def token_id(name: str, value, vocab_size: int) -> int:
    """One token id: an int in ``[0, vocab_size)`` (a list is refused, not truncated)."""
    return integer(name, value, 0, vocab_size - 1)


def token_ids(name: str, value, vocab_size: int) -> list[int]:
    """An int or a list/tuple/array of ints, each in ``[0, vocab_size)``; None -> []."""
    if value is None:
        return []
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        values = [value]
    elif isinstance(value, (list, tuple, np.ndarray)):
        values = list(np.asarray(value).reshape(-1)) if isinstance(value, np.ndarray) else list(value)
    else:
        fail(name, value, f"must be an int or a list of ints in [0, {vocab_size - 1}]")
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or not 0 <= v < vocab_size:
            fail(name, value, f"ids must be integers in [0, {vocab_size - 1}]")
    return [int(v) for v in values]


def token_sequences(name: str, value, vocab_size: int) -> list[list[int]]:
    """A non-empty list of non-empty lists of token ids (e.g. ``bad_words_ids``)."""
    if not isinstance(value, (list, tuple)) or not value:
        fail(name, value, "must be a non-empty list of token-id lists, e.g. [[12], [7, 9]]")
    out = []
    for i, word in enumerate(value):
        if not isinstance(word, (list, tuple)):
            fail(f"{name}[{i}]", word, "each word must be a list of token ids")
        if not word:
            fail(f"{name}[{i}]", word, "an empty word: each word must be a non-empty list of token ids")
        out.append(token_ids(f"{name}[{i}]", list(word), vocab_size))
    return out


def seed_pair(name: str, value) -> tuple[int, int]:
    """An int ``a`` -> ``(a, 0)``; ``(a, b)`` -> ``(a, b)``; each fitting in 32 bits.

    The one parser of a single seed (API, batch-job lines and the CLI's
    ``INT`` / ``INT,INT`` after splitting).
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = (value, 0)
    if (not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 2
            or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) for v in value)):
        fail(name, value, "must be an int or two ints [a, b]")
    if any(not -(2**31) <= int(v) < 2**32 for v in value):
        fail(name, [int(v) for v in value], "each seed must fit in 32 bits")
    return int(value[0]), int(value[1])


def seeds(value, rows: int) -> np.ndarray:
    """``seed`` as int32 ``[rows, 2]``: one pair (or an int ``a`` = ``(a, 0)``) for all
    rows, or an int array ``[rows, 2]`` with one pair per row."""
    if isinstance(value, numbers.Integral) or (isinstance(value, (list, tuple)) and len(value) == 2
                                               and not isinstance(value[0], (list, tuple, np.ndarray))):
        value = seed_pair("seed", value)
    array = np.asarray(value)
    if array.dtype == object or not np.issubdtype(array.dtype, np.integer):
        fail("seed", value, "must be two ints (a, b) or an int array of shape [batch, 2]")
    if array.shape == (2,):
        array = np.broadcast_to(array, (rows, 2))
    if array.shape != (rows, 2):
        fail("seed", f"array of shape {array.shape}", f"must have shape (2,) or ({rows}, 2)")
    if array.min() < -(2**31) or array.max() >= 2**32:
        fail("seed", value, "each seed must fit in 32 bits")
    # Values >= 2^31 wrap to negative int32: the bits are what matter.
    return array.astype(np.int64).astype(np.uint32).view(np.int32).reshape(rows, 2).copy()


def unicode_text(name: str, value: str) -> str:
    """``value`` if it is valid Unicode text, i.e. it can be written as UTF-8.

    A lone surrogate (U+D800..U+DFFF) cannot: it comes from a JSON escape such
    as ``"\\ud800"``, or from bytes that were not UTF-8 (Python decodes argv
    and file names with ``surrogateescape``). Tokenizers reject it with a
    bare ``TypeError`` and UTF-8 writers with ``UnicodeEncodeError``.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        shown = value if len(value) <= 80 else value[:77] + "..."
        fail(name, shown, f"contains a lone surrogate U+{ord(value[error.start]):04X} at index "
                          f"{error.start}: not valid Unicode text")
    return value


def prompt_text(name: str, value) -> str:
    """A prompt: a non-empty ``str`` of valid Unicode (see :func:`unicode_text`)."""
    if isinstance(value, (bytes, bytearray)):
        # (not fail(): it would show the bytes' repr as a quoted string)
        raise ValueError(f"{name}={_short(value)} is invalid: must be a str, not bytes: decode it first "
                         "(e.g. .decode('utf-8'))")
    if not isinstance(value, str) or not value:
        fail(name, value, "must be a non-empty string")
    return unicode_text(name, value)


def prompt_texts(name: str, value) -> list[str]:
    """A string or a non-empty list of prompts (see :func:`prompt_text`), as a list."""
    if isinstance(value, (str, bytes, bytearray)):
        return [prompt_text(name, value)]
    if not isinstance(value, (list, tuple)) or not value:
        fail(name, value, "must be a non-empty string or a non-empty list of strings")
    return [prompt_text(f"{name}[{i}]", text) for i, text in enumerate(value)]
