"""Which layout of the LM head XLA:CPU multiplies fastest, by number of rows.

    python tools/bench_head_layout.py [--embd 192 768] [--rows 1 2 5 8 40] [--rounds 40]

The LM head is a ``[rows, C] x [C, 50257]`` product. Plain decoding runs it on
one row per sequence; speculative verification (``speculative.py``) on
``batch x (k + 1)`` rows at once. This times three formulations of the same
product under ``tf.function(jit_compile=True)``, interleaved, and prints the
medians and each one's ratio to the first:

* ``[C, V]:  x @ W``           -- the layout ``gpt2.STORED_TRANSPOSED`` keeps (one row);
* ``[V, C]:  (W' @ x^T)^T``    -- ``GPT2.prepare_verification``'s copy, as ``step_all`` uses it;
* ``[V, C]:  x @ W'^T``        -- the same copy, contracted the other way round.

Output layout matters as much as the weight layout: the second form has the
vocabulary as the dot's leading output axis.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

VOCAB = 50257


def formulations(head_cv: tf.Tensor, head_vc: tf.Tensor) -> dict:
    return {
        "[C, V]:  x @ W": lambda x: tf.matmul(x, head_cv),
        "[V, C]:  (W' @ x^T)^T": lambda x: tf.transpose(tf.matmul(head_vc, x, transpose_b=True)),
        "[V, C]:  x @ W'^T": lambda x: tf.matmul(x, head_vc, transpose_b=True),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embd", type=int, nargs="+", default=[192, 768], help="n_embd values (C)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 5, 8, 40])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    for embd in args.embd:
        cv = rng.normal(0, 0.02, (embd, VOCAB)).astype(np.float32)
        forms = formulations(tf.constant(cv), tf.constant(np.ascontiguousarray(cv.T)))
        print(f"C = {embd}, vocab = {VOCAB}: median ms (ratio to the first)")
        for rows in args.rows:
            x = tf.constant(rng.normal(0, 1, (rows, embd)).astype(np.float32))
            fns = {name: tf.function(f, jit_compile=True, autograph=False) for name, f in forms.items()}
            reference = fns["[C, V]:  x @ W"](x).numpy()
            for name, fn in fns.items():  # compile, and check all three compute the same product
                np.testing.assert_allclose(fn(x).numpy(), reference, rtol=1e-4, atol=1e-4, err_msg=name)
            times = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn(x).numpy()
                    times[name].append(time.perf_counter() - start)
            medians = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
            first = medians["[C, V]:  x @ W"]
            cells = "   ".join(f"{name} {ms:7.2f} ({ms / first:.2f})" for name, ms in medians.items())
            print(f"  {rows:3d} rows   {cells}", flush=True)


if __name__ == "__main__":
    main()
