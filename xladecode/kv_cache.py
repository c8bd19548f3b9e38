"""The preallocated, fixed-size key/value cache.

Autoregressive decoding re-reads the keys and values of every earlier token at
each step. Keeping them in a cache makes a step cost O(length) instead of
O(length^2), but the obvious implementation -- concatenate the new key onto
the cache -- changes a tensor's shape every step, and XLA compiles one program
per shape. So the cache is allocated ONCE per call at its final size
``[batch, heads, max_length, head_dim]`` and each step writes its keys into
slot ``cache_index`` in place with ``dynamic_update_slice``. Slots not yet
written hold zeros; the attention mask (see ``positions.py``) hides them.

Layout: ``[batch, heads, slot, head_dim]`` is what attention consumes
(``q @ k^T`` contracts the last axis of both), so no transpose of the cache is
ever needed. Batch is the leading axis of every cache tensor: beam search
reorders a cache with one gather on axis 0 (see ``beam_search.reorder_cache``).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla  # dynamic_update_slice; also runs without XLA


class KVCache(NamedTuple):
    """Per-layer keys and values, each ``[batch, heads, max_length, head_dim]``."""

    keys: tuple[tf.Tensor, ...]
    values: tuple[tf.Tensor, ...]


def allocate(n_layer: int, batch_size: int, n_head: int, max_length: int, head_dim: int,
             dtype=tf.float32) -> KVCache:
    """A zero cache for ``n_layer`` layers; its shapes never change afterwards."""
    shape = [batch_size, n_head, max_length, head_dim]
    return KVCache(
        keys=tuple(tf.zeros(shape, dtype) for _ in range(n_layer)),
        values=tuple(tf.zeros(shape, dtype) for _ in range(n_layer)),
    )


def write(cache_tensor: tf.Tensor, new: tf.Tensor, cache_index: tf.Tensor) -> tf.Tensor:
    """Writes ``new`` into ``cache_tensor`` at slots ``cache_index .. cache_index + t - 1``.

    Args:
      cache_tensor: ``[batch, heads, max_length, head_dim]``.
      new: ``[batch, heads, t, head_dim]``, same dtype.
      cache_index: int32 scalar, the first slot to write for every row; or
        int32 ``[batch]``, a first slot PER ROW (speculative decoding, where
        each row has accepted its own number of tokens; see :func:`write_rows`).

    Returns:
      The updated cache tensor, same shape. Under XLA inside a while loop this
      is an in-place update of the loop buffer, not a copy.

    Example (one head, head_dim 1, max_length 4)::

      write([[[[0],[0],[0],[0]]]], [[[[7]]]], 2) -> [[[[0],[0],[7],[0]]]]
    """
    cache_index = tf.convert_to_tensor(cache_index, tf.int32)
    if cache_index.shape.rank == 1:
        return write_rows(cache_tensor, new, cache_index)
    zero = tf.zeros([], tf.int32)
    start = tf.stack([zero, zero, cache_index, zero])
    return xla.dynamic_update_slice(cache_tensor, tf.cast(new, cache_tensor.dtype), start)


def write_rows(cache_tensor: tf.Tensor, new: tf.Tensor, first_slots: tf.Tensor) -> tf.Tensor:
    """Row ``b`` of ``new`` goes to slots ``first_slots[b] .. first_slots[b] + t - 1``.

    One ``dynamic_update_slice`` cannot do this (its start is shared by all
    rows), so it is a scatter: every (row, head, slot) triple gets its
    ``head_dim`` vector. The shapes stay static; only the indices are data.
    XLA updates the loop buffer in place, as for the shared-slot write.

    Args:
      cache_tensor: ``[batch, heads, max_length, head_dim]``.
      new: ``[batch, heads, t, head_dim]``.
      first_slots: int32 ``[batch]``; every slot written must be < max_length.

    Example (batch 2, one head, head_dim 1, max_length 3, t = 1)::

      write_rows(zeros, [[[[7]]], [[[8]]]], [0, 2]) -> [[[[7],[0],[0]]], [[[0],[0],[8]]]]
    """
    shape = tf.shape(new)[:3]  # [b, heads, t]
    batch, heads, t = shape[0], shape[1], shape[2]
    slots = tf.cast(first_slots, tf.int32)[:, tf.newaxis] + tf.range(t)  # [b, t]
    rows = tf.broadcast_to(tf.range(batch)[:, tf.newaxis, tf.newaxis], shape)
    head_ids = tf.broadcast_to(tf.range(heads)[tf.newaxis, :, tf.newaxis], shape)
    slot_ids = tf.broadcast_to(slots[:, tf.newaxis, :], shape)
    indices = tf.stack([rows, head_ids, slot_ids], axis=-1)  # [b, heads, t, 3]
    return tf.tensor_scatter_nd_update(cache_tensor, indices, tf.cast(new, cache_tensor.dtype))
