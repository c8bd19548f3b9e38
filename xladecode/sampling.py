"""Stateless, per-row reproducible sampling: a counter-based hash + Gumbel-max.

Why not ``tf.random.stateless_categorical(logits, seed)``? Its draws for a row
depend on the whole ``[batch, vocab]`` call: change the batch size or the row's
position in the batch and the row's sample changes. We want a row's sample to
depend only on (its seed, which of its return sequences it is, the step, the
token id), so that batching, padding and neighbours never change a result.

A *counter-based* generator gives exactly that: the random number for
``(seed, sample, step, token)`` is a hash of those integers -- no state is
carried, every element is computed independently, so it vectorises over
``[batch, vocab]`` and runs identically with and without XLA (integer ops are
exact). Philox, behind ``tf.random.stateless_*``, is such a generator too; we
use a smaller 32-bit avalanche hash (not cryptographic, statistically fine for
sampling: ``tests/test_sampling.py`` checks the frequencies).

Gumbel-max turns uniforms into a categorical sample with no cumsum or search:
``argmax(logits + g)`` with ``g = -log(-log(u))`` is distributed as
``softmax(logits)``; ``-inf`` logits (filtered tokens) are never chosen.
"""

from __future__ import annotations

import tensorflow as tf

_GOLDEN = 0x9E3779B9  # 2^32 / phi: spreads consecutive counters apart


def _mix(x: tf.Tensor) -> tf.Tensor:
    """A 32-bit avalanche hash ("lowbias32"): every input bit flips ~half the output bits."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _u32(x) -> tf.Tensor:
    return tf.bitcast(tf.cast(x, tf.int32), tf.uint32)


def row_keys(seeds: tf.Tensor, sample_index: tf.Tensor) -> tf.Tensor:
    """One 32-bit key per row from its seed pair and its return-sequence index.

    Args:
      seeds: int32 ``[batch, 2]``.
      sample_index: int32 ``[batch]``: 0..num_return_sequences-1.

    Returns:
      uint32 ``[batch]``.
    """
    k = _mix(_u32(seeds[:, 0]) + tf.constant(_GOLDEN, tf.uint32))
    k = _mix(tf.bitwise.bitwise_xor(k, _u32(seeds[:, 1])))
    return _mix(tf.bitwise.bitwise_xor(k, _u32(sample_index) * tf.constant(_GOLDEN, tf.uint32)))


def uniform(keys: tf.Tensor, step: tf.Tensor, vocab_size: int) -> tf.Tensor:
    """Uniform floats in (0, 1), one per (row, token), fresh at every step.

    Args:
      keys: uint32 ``[batch]`` from :func:`row_keys`.
      step: int32 scalar, the decoding step (a new stream every step).
      vocab_size: Python int.

    Returns:
      float32 ``[batch, vocab_size]``, strictly inside (0, 1).
    """
    step_key = _mix(tf.bitwise.bitwise_xor(keys, _u32(step) * tf.constant(_GOLDEN, tf.uint32)))
    token = _u32(tf.range(vocab_size)) * tf.constant(0x85EBCA6B, tf.uint32)
    bits = _mix(tf.bitwise.bitwise_xor(step_key[:, tf.newaxis], _mix(token)[tf.newaxis, :]))
    # Top 24 bits -> (k + 0.5) / 2^24: exactly representable in float32, never 0 or 1.
    top = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32)
    return (top + 0.5) * (1.0 / 16777216.0)


def gumbel_sample(logits: tf.Tensor, keys: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Draws one token per row from ``softmax(logits)``.

    Args:
      logits: float32 ``[batch, vocab]``, ``-inf`` where a token is forbidden
        (at least one finite entry per row).
      keys: uint32 ``[batch]`` row keys.
      step: int32 scalar.

    Returns:
      int32 ``[batch]`` token ids.
    """
    u = uniform(keys, step, logits.shape[-1])
    gumbel = -tf.math.log(-tf.math.log(u))
    return tf.argmax(logits + gumbel, axis=-1, output_type=tf.int32)
