"""A scripted protocol model for exact decoder tests: no weights, no attention.

``TableModel``'s next-token logits are ``table[last token]``, so every expected
array of a test can be worked out by hand from its table.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


class TableModel:
    """A ``protocol.DecoderModel`` whose logits are ``table[input_ids[:, -1]]``.

    Args:
      table: float ``[V, V]``: row ``t`` holds the next-token logits after token ``t``.
    """

    max_positions = 64

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)
        self.vocab_size = int(self.table.shape[0])

    @classmethod
    def from_rows(cls, vocab_size: int, rows: dict) -> "TableModel":
        """``rows`` maps a token to its next-token probabilities; every other entry has logit -30
        (e**-30 changes no float32 log-prob here: a row {t: 1.0} gives log-prob exactly 0)."""
        table = np.full([vocab_size, vocab_size], -30.0, np.float32)
        for token, probs in rows.items():
            for nxt, p in probs.items():
                table[token, nxt] = math.log(p)
        return cls(table)

    def init_cache(self, batch_size: int, max_length: int):
        return tf.zeros([batch_size, max_length], tf.int32)  # unused; batch-leading, as the protocol asks

    def step(self, input_ids, positions, cache, cache_index, key_mask):
        return tf.gather(self.table, input_ids[:, -1]), cache
