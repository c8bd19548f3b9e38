"""Why bf16 / int8 weights do not speed up batch-1 decoding on XLA:CPU (a measurement).

    python tools/bench_dot_dtypes.py [--batch 1 8] [--rounds 5]

A batch-1 decode step of gpt2-small is 49 matrix-vector products that stream
every weight once (~498 MB in float32). Halving the bytes (bfloat16) or
quartering them (int8) should make that up to 2-4x faster -- if the compiler
reads the narrow weights directly. This tool times the same chain of products
(the 48 block matrices and the 50257 x 768 LM head, with residual adds so
nothing can be skipped) under ``tf.function(jit_compile=True)`` in several
formulations, interleaved so machine noise hits all of them alike:

* ``f32 matmul``             -- what the model does today;
* ``bf16 matmul``            -- bf16 weights and activations, ``tf.matmul``;
* ``bf16 dot->f32``          -- ``xla.dot_general(bf16, bf16, preferred_element_type=f32)``;
* ``s8 dot->s32``            -- int8 weights, per-call int8 activations, int32 accumulation;
* ``bf16 mul+reduce``        -- ``reduce_sum(x[:, :, None] * cast(W))``: the widening cast
                                fuses into the reduction, so only bf16 bytes are read;
* ``numpy f32 (BLAS)``       -- the same products through numpy, a roofline reference.

It also times the LM head alone in the two layouts of the embedding matrix:
HF's ``[vocab, n_embd]`` (``x @ W^T``) and the transposed ``[n_embd, vocab]``
that ``gpt2.STORED_TRANSPOSED`` keeps.

It prints the median time per chain and the bytes it had to stream. On our
2-core AVX-512 machine (TF 2.21) every narrow formulation was SLOWER than
float32: XLA:CPU widens the weights to f32 before its dot, or emits a
reduction loop that is compute-bound (see README, "Measured").
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.compiler.tf2xla.python import xla  # noqa: E402
from tensorflow.compiler.xla import xla_data_pb2  # noqa: E402

EMBD, LAYERS, VOCAB = 768, 12, 50257
SHAPES = [(EMBD, 3 * EMBD), (EMBD, EMBD), (EMBD, 4 * EMBD), (4 * EMBD, EMBD)]  # c_attn, c_proj, c_fc, mlp c_proj
INT8_SCALE = 3000.0  # weights are N(0, 0.02): x3000 spreads them over the int8 range


def chain(dot, blocks, head, x, relu=tf.nn.relu):
    """x [M, 768] through every block matrix (with residual adds) and the head."""
    for w_qkv, w_proj, w_fc, w_out in blocks:
        x = x + dot(x, w_qkv)[:, :EMBD]
        x = x + dot(x, w_proj)
        x = x + dot(relu(dot(x, w_fc)), w_out)
    return dot(x, head)


def _contract_1_with_0():
    numbers = xla_data_pb2.DotDimensionNumbers()
    numbers.lhs_contracting_dimensions.append(1)
    numbers.rhs_contracting_dimensions.append(0)
    return numbers


DOT_NUMBERS = _contract_1_with_0()


def f32_matmul(x, w):
    return tf.matmul(x, w)


def bf16_matmul(x, w):
    return tf.cast(tf.matmul(tf.cast(x, tf.bfloat16), w), tf.float32)


def bf16_dot_f32(x, w):
    return xla.dot_general(tf.cast(x, tf.bfloat16), w, DOT_NUMBERS, preferred_element_type=tf.float32)


def s8_dot_s32(x, w):
    scale = tf.reduce_max(tf.abs(x)) / 127.0 + 1e-12
    xq = tf.cast(tf.round(x / scale), tf.int8)
    acc = xla.dot_general(xq, w, DOT_NUMBERS, preferred_element_type=tf.int32)
    return tf.cast(acc, tf.float32) * (scale / INT8_SCALE)


def mul_reduce(x, w):
    return tf.reduce_sum(x[:, :, None] * tf.cast(w, tf.float32)[None], axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of 5 calls each")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    f32_blocks = [[rng.normal(0, 0.02, s).astype(np.float32) for s in SHAPES] for _ in range(LAYERS)]
    f32_head = rng.normal(0, 0.02, (EMBD, VOCAB)).astype(np.float32)

    def as_dtype(convert):
        return [[convert(w) for w in block] for block in f32_blocks], convert(f32_head)

    def to_int8(w):
        return tf.constant(np.clip(np.round(w * INT8_SCALE), -127, 127).astype(np.int8))

    f32 = as_dtype(tf.constant)
    bf16 = as_dtype(lambda w: tf.constant(w, tf.bfloat16))
    int8 = as_dtype(to_int8)
    variants = {  # name -> (dot, weights, bytes per weight)
        "f32 matmul": (f32_matmul, f32, 4),
        "bf16 matmul": (bf16_matmul, bf16, 2),
        "bf16 dot->f32": (bf16_dot_f32, bf16, 2),
        "s8 dot->s32": (s8_dot_s32, int8, 1),
        "bf16 mul+reduce": (mul_reduce, bf16, 2),
    }
    n_weights = sum(w.size for block in f32_blocks for w in block) + f32_head.size

    for batch in args.batch:
        x = tf.constant(rng.normal(0, 1, (batch, EMBD)).astype(np.float32))
        fns = {}
        for name, (dot, (blocks, head), _) in variants.items():
            fn = tf.function(lambda x, d=dot, b=blocks, h=head: chain(d, b, h, x), jit_compile=True, autograph=False)
            fn(x).numpy()  # compile
            fns[name] = fn
        np_x = x.numpy()
        fns["numpy f32 (BLAS)"] = lambda _: chain(lambda a, w: a @ w, f32_blocks, f32_head, np_x,
                                                  relu=lambda a: np.maximum(a, 0))
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                for _ in range(5):
                    start = time.perf_counter()
                    np.asarray(fn(x))
                    times[name].append(time.perf_counter() - start)
        print(f"batch {batch}: one chain = {n_weights / 1e6:.1f} M weights")
        for name, ts in times.items():
            width = variants[name][2] if name in variants else 4
            ms = float(np.median(ts)) * 1e3
            print(f"  {name:18s} {ms:7.2f} ms   {n_weights * width / 1e6:5.0f} MB streamed   "
                  f"{n_weights * width / ms / 1e6:5.1f} GB/s effective")
        heads = {"head [V, C]^T (HF)": (tf.constant(np.ascontiguousarray(f32_head.T)), True),
                 "head [C, V]": (f32[1], False)}
        head_times = {name: [] for name in heads}
        head_fns = {name: tf.function(lambda x, w=w, t=t: tf.matmul(x, w, transpose_b=t), jit_compile=True)
                    for name, (w, t) in heads.items()}
        for fn in head_fns.values():
            fn(x).numpy()
        for _ in range(args.rounds):
            for name, fn in head_fns.items():
                for _ in range(10):
                    start = time.perf_counter()
                    fn(x).numpy()
                    head_times[name].append(time.perf_counter() - start)
        for name, ts in head_times.items():
            print(f"  LM head alone, {name:18s} {float(np.median(ts)) * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
