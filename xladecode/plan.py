"""The shape plan: which static shapes a call compiles to, and how inputs are fitted to them.

XLA compiles one program per shape, so a stream of calls with varied batch
sizes and lengths must map onto a few shapes. :func:`plan_shapes` is the one
rule that picks them, for every entry point (``LanguageModel.generate``, batch
jobs, export, distributed decoding); :func:`fit_rows` and :func:`left_pad`
are the one place where inputs are widened to the plan. Neither changes any
row's result: extra left padding is invisible (padding-aware positions and
masks), and filler rows are copies of row 0, decoded and then dropped (rows
never influence each other).

Worked example, ``n_positions`` 256, 3 prompts of 5 tokens, 20 new tokens::

    plan_shapes(batch=3, prompt_len=5, max_new_tokens=20, max_positions=256)
      -> ShapePlan(batch=3, compiled_batch=4, prompt_len=5, width=16, buffer=32, max_new_tokens=20)
    input_ids [3, 5] --left_pad--> [3, 16] --fit_rows--> [4, 16]   (row 3 = copy of row 0)
    sequences [4, 16 + 32] --plan.visible--> [3, 5 + 20]
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

#: Floors of the shape buckets. The buffer's (32) is higher than the prompt's
#: (16): a wider buffer is nearly free -- the loop still stops after
#: ``max_new_tokens`` steps, only the masked cache grows -- while a wider
#: prompt costs prefill work.
PROMPT_BUCKET_MIN = 16
BUFFER_BUCKET_MIN = 32


def bucket(n: int, minimum: int) -> int:
    """Smallest ``minimum * 2**k`` that is >= n: with minimum 8, 5 -> 8, 8 -> 8, 9 -> 16."""
    size = minimum
    while size < n:
        size *= 2
    return size


@dataclasses.dataclass(frozen=True)
class ShapePlan:
    """The compiled shapes of one call, and what the caller sees.

    Attributes:
      batch: prompts the caller gave.
      compiled_batch: prompts in the compiled program (``>= batch``; the
        extra ones are filler rows, copies of row 0).
      prompt_len: the caller's prompt width.
      width: compiled prompt width (``>= prompt_len``; extra left padding).
      buffer: compiled new-token buffer (``>= max_new_tokens``).
      max_new_tokens: new tokens the caller asked for (a tensor bound in the loop).
    """

    batch: int
    compiled_batch: int
    prompt_len: int
    width: int
    buffer: int
    max_new_tokens: int

    @property
    def prompt_offset(self) -> int:
        """Columns of extra left padding."""
        return self.width - self.prompt_len

    @property
    def filler_rows(self) -> int:
        return self.compiled_batch - self.batch

    def visible(self, array, rows_per_prompt: int = 1, new_tokens_only: bool = False):
        """The caller's part of an output: no filler rows, no extra columns.

        Args:
          array: ``[compiled_batch * rows_per_prompt, ...]``; sequences
            ``[.., width + buffer]`` or, with ``new_tokens_only``, scores
            ``[.., buffer]``; 1-D arrays (``sequences_scores``) keep their rows only.
        """
        rows = self.batch * rows_per_prompt
        if array.ndim == 1:
            return array[:rows]
        if new_tokens_only:
            return array[:rows, :self.max_new_tokens]
        return array[:rows, self.prompt_offset:self.width + self.max_new_tokens]


def plan_shapes(batch: int, prompt_len: int, max_new_tokens: int, max_positions: int,
                bucketed: bool = True, row_multiple: int = 1) -> ShapePlan:
    """The compiled shapes for a call (the one bucketing rule).

    Batch and widths are rounded up to powers of two (floors
    :data:`PROMPT_BUCKET_MIN`, :data:`BUFFER_BUCKET_MIN`), so varied calls
    share compiled programs; ``max_new_tokens`` stays a tensor bound inside
    the buffer. Near ``n_positions`` the two buckets may not fit together;
    the program then spans exactly ``n_positions`` with one side still
    bucketed::

        n_positions 256, prompt 100, 20 new  -> (128, 32)    both bucketed
        n_positions 256, prompt 100, 100 new -> (128, 128)   both bucketed
        n_positions 256, prompt 60, 150 new  -> (64, 192)    256 - 64: width kept
        n_positions 256, prompt 150, 100 new -> (150, 106)   neither bucket fits:
                                                             width exact, rest to the buffer

    Args:
      batch, prompt_len, max_new_tokens: the call's sizes (checked: the
        prompt and the new tokens fit in ``max_positions``).
      bucketed: False compiles the exact shapes (the rows still get rounded
        up to ``row_multiple``).
      row_multiple: the compiled batch is a multiple of it (the replica
        count of distributed decoding).

    Returns:
      :class:`ShapePlan`.
    """
    width, buffer, rows = prompt_len, max_new_tokens, batch
    if bucketed:
        width, buffer = bucket(prompt_len, PROMPT_BUCKET_MIN), bucket(max_new_tokens, BUFFER_BUCKET_MIN)
        if width + buffer > max_positions:
            if max_positions - buffer >= prompt_len:
                width = max_positions - buffer
            elif max_positions - width >= max_new_tokens:
                buffer = max_positions - width
            else:
                width, buffer = prompt_len, max_positions - prompt_len
        rows = bucket(batch, 1)
    rows = -(-rows // row_multiple) * row_multiple
    return ShapePlan(batch, rows, prompt_len, width, buffer, max_new_tokens)


def prompt_widths(longest: int, max_positions: int, max_new_tokens_buffer: int) -> tuple[int, ...]:
    """Every compiled prompt width :func:`plan_shapes` can choose for prompts up to ``longest``.

    With the buffer fixed (as an export fixes it): the bucketed widths from
    :data:`PROMPT_BUCKET_MIN` up, capped at ``max_positions - buffer``.
    """
    cap = max_positions - max_new_tokens_buffer
    widths = []
    for length in range(1, min(longest, cap) + 1):
        w = min(bucket(length, PROMPT_BUCKET_MIN), cap)
        if not widths or widths[-1] != w:
            widths.append(w)
    return tuple(widths)


def left_pad(input_ids, attention_mask, width, pad_token_id):
    """Adds left padding up to ``width`` columns (mask 0: invisible to the model).

    Works on numpy arrays and tensors, eagerly or in a graph (``width`` may be
    a tensor). Returns int32 tensors ``[rows, width]``.
    """
    extra = width - tf.shape(input_ids)[1]
    ids = tf.pad(tf.cast(input_ids, tf.int32), [[0, 0], [extra, 0]], constant_values=pad_token_id)
    mask = tf.pad(tf.cast(attention_mask, tf.int32), [[0, 0], [extra, 0]])
    return ids, mask


def fit_rows(arrays, rows):
    """Appends filler rows (copies of row 0) to each array until it has ``rows`` rows.

    The ONE place filler rows are made. Row 0 is a valid prompt with a valid
    seed, so filler rows decode like any other, and rows never influence
    each other, so they change no real row's result; callers drop them
    (:meth:`ShapePlan.visible`). Works on numpy arrays and tensors.

    Args:
      arrays: a tuple of ``[n, ...]`` arrays with the same ``n <= rows``.
      rows: int (or int32 scalar tensor).

    Returns:
      A tuple of tensors ``[rows, ...]``.
    """
    out = []
    for array in arrays:
        array = tf.convert_to_tensor(array)
        extra = rows - tf.shape(array)[0]
        out.append(tf.concat([array, tf.repeat(array[:1], extra, axis=0)], axis=0))
    return tuple(out)
