"""Position ids and attention masks that make left padding invisible.

Decoder-only models pad prompts on the LEFT so every row's next token lands in
the same column. A padded row must then behave exactly like the unpadded one:

* its position ids start at 0 at its first real token, not at column 0;
* no query may attend to a pad slot;
* no query may attend to a slot that is later in the sequence (causality),
  which also hides cache slots that have not been written yet.

Example, one row padded by two::

    attention_mask = [0, 0, 1, 1, 1]
    position_ids   = [0, 0, 0, 1, 2]    # pads get 0; they are masked anyway

The next generated token of that row has position 3 == its number of real
tokens so far (:func:`next_positions`).
"""

from __future__ import annotations

import tensorflow as tf


def positions_from_mask(attention_mask: tf.Tensor) -> tf.Tensor:
    """Position ids for a left-padded prompt.

    Args:
      attention_mask: int ``[batch, T]``, 1 for real tokens, 0 for padding.

    Returns:
      int32 ``[batch, T]``: 0, 1, 2, ... over the real tokens; 0 on pads.
    """
    mask = tf.cast(attention_mask, tf.int32)
    return tf.maximum(tf.cumsum(mask, axis=-1) - 1, 0)


def next_positions(attention_mask: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Position id of generated token number ``step`` (0-based) of each row.

    Args:
      attention_mask: int ``[batch, T]`` prompt mask.
      step: int32 scalar.

    Returns:
      int32 ``[batch, 1]``: the row's real prompt length + ``step``.
    """
    lengths = tf.reduce_sum(tf.cast(attention_mask, tf.int32), axis=-1, keepdims=True)
    return lengths + tf.cast(step, tf.int32)


def attention_matrix(query_slots: tf.Tensor, key_mask: tf.Tensor) -> tf.Tensor:
    """Which key slot each query may attend to: causal AND not padding.

    Named a *matrix* to keep it apart from ``attention_mask``, which everywhere
    else in xladecode (and transformers) is the ``[batch, T]`` padding mask.

    Args:
      query_slots: int32 ``[t]``, the cache slot of each query token.
      key_mask: ``[batch, S]``, nonzero where a slot holds a real token (or
        will, once written: causality hides the future).

    Returns:
      bool ``[batch, 1, t, S]`` (the 1 broadcasts over heads).

    Example: query_slots=[3], key_mask=[[0, 1, 1, 1, 1]] ->
      [[[[False, True, True, True, False]]]]   # pad at 0, slot 4 is the future
    """
    key_slots = tf.range(tf.shape(key_mask)[-1])
    causal = key_slots[tf.newaxis, :] <= query_slots[:, tf.newaxis]  # [t, S]
    not_pad = tf.cast(key_mask, tf.bool)[:, tf.newaxis, tf.newaxis, :]  # [b, 1, 1, S]
    return tf.logical_and(causal[tf.newaxis, tf.newaxis], not_pad)


def full_sequence(input_ids, attention_mask=None):
    """Inputs for running a model over a whole (left-padded) sequence without a cache.

    Args:
      input_ids: int ``[batch, T]``.
      attention_mask: int ``[batch, T]`` or None (no padding).

    Returns:
      ``(input_ids int32 [batch, T], positions int32 [batch, T], mask bool [batch, 1, T, T])``.
    """
    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    if attention_mask is None:
        attention_mask = tf.ones_like(input_ids)
    mask = attention_matrix_for_slots(tf.constant(0), tf.shape(input_ids)[1], attention_mask)
    return input_ids, positions_from_mask(attention_mask), mask


def attention_matrix_for_slots(first_slot, t, key_mask):
    """:func:`attention_matrix` for ``t`` queries written at slots ``first_slot ..``."""
    return attention_matrix(tf.cast(first_slot, tf.int32) + tf.range(t), key_mask)


# ------------------------------------------------- per-row slots (speculative)
# Speculative decoding lets each row accept its own number of tokens, so rows
# stop sharing a write slot: row b's next token goes to its own slot. These two
# functions are the per-row forms of ``next_positions`` and ``attention_matrix``.


def slot_positions(attention_mask: tf.Tensor, slots: tf.Tensor) -> tf.Tensor:
    """Position id of the token held in cache slot ``slots[b, j]`` of row ``b``.

    A left-padded row of real length ``n`` in a prompt buffer of width ``P``
    holds position ``n - 1`` at slot ``P - 1``, so slot ``s >= P`` holds
    position ``n + s - P`` (:func:`next_positions` with ``step = s - P``).

    Args:
      attention_mask: int ``[batch, P]`` prompt mask.
      slots: int32 ``[batch, t]`` cache slots (each row its own).

    Returns:
      int32 ``[batch, t]``.

    Example: attention_mask=[[0, 1, 1]], slots=[[3, 4]] -> [[2, 3]].
    """
    mask = tf.cast(attention_mask, tf.int32)
    lengths = tf.reduce_sum(mask, axis=-1, keepdims=True)
    return lengths + tf.cast(slots, tf.int32) - mask.shape[-1]


def attention_matrix_per_row(query_slots: tf.Tensor, key_mask: tf.Tensor) -> tf.Tensor:
    """:func:`attention_matrix` when every row has its own query slots.

    Args:
      query_slots: int32 ``[batch, t]``, the cache slot of each query token.
      key_mask: ``[batch, S]``, nonzero where a slot holds a real token (or will).

    Returns:
      bool ``[batch, 1, t, S]``: causal (key slot <= query slot) AND not padding.
      Causality is also what hides a rejected speculative token: its slot lies
      after the row's new query slots until a later step overwrites it.

    Example: query_slots=[[1], [3]], key_mask=[[1, 1, 1, 1], [0, 1, 1, 1]] ->
      [[[[True, True, False, False]]], [[[False, True, True, True]]]]
    """
    key_slots = tf.range(tf.shape(key_mask)[-1])
    causal = key_slots[tf.newaxis, tf.newaxis, :] <= tf.cast(query_slots, tf.int32)[:, :, tf.newaxis]  # [b, t, S]
    not_pad = tf.cast(key_mask, tf.bool)[:, tf.newaxis, :]  # [b, 1, S]
    return tf.logical_and(causal, not_pad)[:, tf.newaxis]
