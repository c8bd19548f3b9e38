"""A second, deliberately different model behind the same decoder protocol.

Where GPT-2 (``gpt2.py``) has learned absolute positions, multi-head K/V,
LayerNorm and a per-layer tuple cache ``[batch, heads, slot, head_dim]``, this
model has

* **rotary positions** (RoPE): queries and keys are rotated by an angle
  proportional to their position id, so attention scores depend on relative
  distance and no position table exists;
* **multi-query attention**: all query heads share ONE key/value head, so the
  cache is ``n_head`` times smaller;
* **one cache tensor per K and V** for all layers: ``[batch, layer, slot,
  head_dim]`` -- batch still leads, the only rule of the protocol;
* RMSNorm, no biases, an untied output matrix.

It exists to prove the protocol: greedy, sampling and beam search run it with
no change to the decoder, and the same law tests pass (the ``law_lm`` fixture of
``tests/conftest.py`` runs every law test on both models).
Random init only (it is a test and teaching model).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from xladecode import positions as pos


class RopeCache(NamedTuple):
    keys: tf.Tensor  # [batch, n_layer, max_length, head_dim]
    values: tf.Tensor  # [batch, n_layer, max_length, head_dim]


class RopeDecoder(tf.Module):
    """Tiny rotary, multi-query decoder-only LM (random weights).

    Args:
      vocab_size, n_layer, n_head, dim, max_positions: shape.
      seed: weight seed. ``std`` scales the init (wide by default so greedy
        paths are not degenerate).
    """

    def __init__(self, vocab_size=37, n_layer=2, n_head=4, dim=32, max_positions=64, seed=0, std=1.0):
        super().__init__(name="rope_decoder")
        self.vocab_size, self.max_positions = vocab_size, max_positions
        self.n_layer, self.n_head, self.head_dim = n_layer, n_head, dim // n_head
        self.config = SimpleNamespace(eos_token_id=None, pad_token_id=None)
        rng = np.random.default_rng(seed)

        def w(*shape):
            return tf.Variable(rng.normal(0, std / math.sqrt(shape[0]), shape).astype(np.float32))

        self.embed = tf.Variable(rng.normal(0, 1, (vocab_size, dim)).astype(np.float32))
        self.wq = [w(dim, dim) for _ in range(n_layer)]
        self.wkv = [w(dim, 2 * self.head_dim) for _ in range(n_layer)]  # ONE shared K/V head
        self.wo = [w(dim, dim) for _ in range(n_layer)]
        self.w_up = [w(dim, 4 * dim) for _ in range(n_layer)]
        self.w_down = [w(4 * dim, dim) for _ in range(n_layer)]
        # An untied output matrix: with tied embeddings and a random init the
        # residual stream is dominated by the input token, which then repeats.
        self.unembed = w(dim, vocab_size)
        # inverse frequencies of the rotary embedding, one per pair of channels
        self.inv_freq = 1.0 / (10000.0 ** (np.arange(0, self.head_dim, 2) / self.head_dim))

    # ------------------------------------------------------------ protocol
    def init_cache(self, batch_size: int, max_length: int) -> RopeCache:
        shape = [batch_size, self.n_layer, max_length, self.head_dim]
        return RopeCache(tf.zeros(shape), tf.zeros(shape))

    def step(self, input_ids, positions, cache, cache_index, key_mask):
        mask = pos.attention_mask_for_slots(cache_index, tf.shape(input_ids)[1], key_mask)
        hidden, cache = self._body(input_ids, positions, mask, cache, cache_index)
        return self._head(hidden[:, -1]), cache

    def forward(self, input_ids, attention_mask=None):
        """All-position logits, no cache: float32 ``[batch, T, vocab]``."""
        input_ids, positions, mask = pos.full_sequence(input_ids, attention_mask)
        hidden, _ = self._body(input_ids, positions, mask)
        return self._head(hidden)

    # ---------------------------------------------------------------- body
    def _rotate(self, x, positions):
        """RoPE on the last axis of ``x [b, t, ..., head_dim]`` for ``positions [b, t]``."""
        angles = tf.cast(positions, tf.float32)[..., tf.newaxis] * self.inv_freq  # [b, t, hd/2]
        while len(angles.shape) < len(x.shape):
            angles = angles[:, :, tf.newaxis]  # broadcast over heads
        cos, sin = tf.cos(angles), tf.sin(angles)
        even, odd = x[..., 0::2], x[..., 1::2]
        rotated = tf.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
        return tf.reshape(rotated, tf.shape(x))

    def _body(self, input_ids, positions, mask, cache=None, cache_index=None):
        b, t = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        x = tf.gather(self.embed, input_ids)
        for i in range(self.n_layer):
            h = _rms_norm(x)
            q = self._rotate(tf.reshape(h @ self.wq[i], [b, t, self.n_head, self.head_dim]), positions)
            k, v = tf.split(h @ self.wkv[i], 2, axis=-1)  # [b, t, head_dim] each
            k = self._rotate(k, positions)
            if cache is not None:  # write layer i's slots, then attend over the whole cache
                start = tf.stack([0, i, tf.cast(cache_index, tf.int32), 0])
                cache = RopeCache(xla.dynamic_update_slice(cache.keys, k[:, tf.newaxis], start),
                                  xla.dynamic_update_slice(cache.values, v[:, tf.newaxis], start))
                k, v = cache.keys[:, i], cache.values[:, i]
            scores = tf.einsum("bthd,bsd->bhts", q, k) / math.sqrt(self.head_dim)
            probs = tf.nn.softmax(tf.where(mask, scores, tf.float32.min), axis=-1)
            attended = tf.reshape(tf.einsum("bhts,bsd->bthd", probs, v), [b, t, -1])
            x = x + attended @ self.wo[i]
            x = x + tf.nn.silu(_rms_norm(x) @ self.w_up[i]) @ self.w_down[i]
        return _rms_norm(x), cache

    def _head(self, hidden):
        return hidden @ self.unembed


def _rms_norm(x, eps=1e-6):
    return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + eps)
