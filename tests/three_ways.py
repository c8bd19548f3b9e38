"""``ThreeWays``: a function run eagerly, as a graph and under XLA, each traced once; and the
two comparisons the processor tests make of its three outputs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def traced_once(fn) -> bool:
    """``fn`` (a ``tf.function``) was traced exactly once. Trivially true in the eager mutation run
    (``XLADECODE_TEST_EAGER=1``, see conftest.py), where nothing is traced."""
    return tf.config.functions_run_eagerly() or fn.experimental_get_tracing_count() == 1


class ThreeWays:
    """Run a processor eagerly, as a graph and under XLA.

    The two ``tf.function`` wrappers are built once, so they are traced (and
    XLA-compiled) on the first call only; later calls with new option values
    must hit the cache, which ``__call__`` checks.
    """

    def __init__(self, fn):
        self.fn = fn
        self.graph = tf.function(fn, jit_compile=False)
        self.xla = tf.function(fn, jit_compile=True)

    def __call__(self, *args):
        args = [tf.constant(a) for a in args]
        outs = [self.fn(*args).numpy(), self.graph(*args).numpy(), self.xla(*args).numpy()]
        assert traced_once(self.graph), "graph retraced"
        assert traced_once(self.xla), "XLA function retraced"
        return outs


def assert_matches(outs, ref):
    """Every output has -inf exactly where ``ref`` does and agrees to 1e-5."""
    for out in outs:
        np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def assert_bit_identical(outs, logits):
    """Every output equals ``logits`` bit for bit (a processor that is off)."""
    for out in outs:
        np.testing.assert_array_equal(out.view(np.uint32), np.asarray(logits, np.float32).view(np.uint32))
