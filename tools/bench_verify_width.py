"""Cost of one forward over 5 positions vs 1: the number that decides whether speculation can pay.

Usage::

    python tools/bench_verify_width.py

Speculative decoding verifies ``k + 1`` positions per target forward; it wins
only if that forward costs about as much as a 1-position step (a step bound by
reading the weights). This times the cache-free ``forward`` of the shipped
model and of a random gpt2-small-shaped model at widths 1 and 5, compiled,
interleaved (1, 5, 1, 5, ...), 15 rounds, and prints the medians and ratio.
"""
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import xladecode  # noqa: E402
from xladecode.config import GPT2Config  # noqa: E402
from xladecode.gpt2 import GPT2  # noqa: E402


def main():
    models = {"shipped": xladecode.load().model,
              "gpt2-small": GPT2(GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12,
                                            n_head=12), seed=0)}
    for name, model in models.items():
        forward = tf.function(model.forward, jit_compile=True)
        inputs = {w: tf.constant(np.arange(w, dtype=np.int32)[None] + 100) for w in (1, 5)}
        for x in inputs.values():
            forward(x).numpy()  # compile, untimed
        times = {1: [], 5: []}
        for _ in range(15):
            for w, x in inputs.items():
                start = time.perf_counter()
                forward(x).numpy()
                times[w].append(time.perf_counter() - start)
        one, five = statistics.median(times[1]), statistics.median(times[5])
        print(f"{name}: width 1 {one * 1e3:.2f} ms, width 5 {five * 1e3:.2f} ms, ratio {five / one:.2f}")


if __name__ == "__main__":
    main()
