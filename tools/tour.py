"""A guided tour of XLA-friendly decoding, as runnable examples.

    python tools/tour.py            # every section, with timings on this machine
    python tools/tour.py --quick    # smaller model (what the test suite runs)

Each section prints what it measured and names the function in xladecode that
implements the idea. ``tests/test_tour.py`` runs it and checks the facts it
prints (not the timings).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from xladecode import debug, kv_cache, positions, speculative  # noqa: E402
from xladecode.config import GPT2Config  # noqa: E402
from xladecode.gpt2 import GPT2  # noqa: E402
from xladecode.lm import LanguageModel  # noqa: E402


def section(title):
    print(f"\n== {title} ==")


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tiny model (for CI)")
    args = parser.parse_args()
    shape = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512) if args.quick else \
        dict(n_layer=6, n_head=12, n_embd=768, vocab_size=50257)  # distilgpt2 shape
    # A wide random init: GPT-2's own 0.02 makes an untrained model repeat one token.
    lm = LanguageModel(GPT2(GPT2Config(**shape, n_positions=256), seed=0, init_std=0.3))
    ids = np.random.default_rng(0).integers(0, shape["vocab_size"], (1, 8)).astype(np.int32)
    greedy = dict(max_new_tokens=16, eos_token_id=[], pad_token_id=0)

    section("1. Why eager decoding is slow  (decoding.decode_step, debug.step_through)")
    _, eager = timed(lambda: list(debug.step_through(lm, ids, **greedy)))
    _, first = timed(lambda: lm.generate(ids, **greedy))
    out, compiled = timed(lambda: lm.generate(ids, **greedy))
    print(f"eager, one Python iteration per token: {eager / 16 * 1000:.1f} ms/token")
    print(f"one XLA graph (first call incl. compile {first:.1f} s): {compiled / 16 * 1000:.1f} ms/token")
    print("Eager TF dispatches every op from Python, one at a time; the compiled loop runs "
          "the same ops fused, with no Python between steps.")

    section("2. Retraces: what makes tf.function build a new graph  (lm.LanguageModel.prepare)")
    scale = tf.function(lambda x, t: x / t)
    for t in (0.5, 0.7, 0.9):
        scale(tf.ones([2]), t)  # a Python float is part of the trace key
    print(f"Python floats 0.5, 0.7, 0.9 -> traces: {scale.experimental_get_tracing_count()}")
    scale = tf.function(lambda x, t: x / t)
    for t in (0.5, 0.7, 0.9):
        scale(tf.ones([2]), tf.constant(t))  # a tensor: only its dtype/shape matter
    print(f"tensors 0.5, 0.7, 0.9 -> traces: {scale.experimental_get_tracing_count()}")
    lm.generate(ids, do_sample=True, temperature=0.7, seed=(0, 1), **greedy)  # sampling graph: compiles once
    before = lm.compile_count
    for t in (0.5, 0.9):
        lm.generate(ids, do_sample=True, temperature=t, top_p=t, seed=(int(t * 10), 1), **greedy)
    print(f"lm.generate with new temperature/top_p/seed values -> new compiles: {lm.compile_count - before}")
    lm.generate(ids[:, :7], do_sample=True, seed=(0, 1), **greedy)
    print(f"a prompt one token shorter (same length bucket, 16) -> new compiles: {lm.compile_count - before}")
    lm.generate(np.tile(ids, (1, 3))[:, :17], do_sample=True, seed=(0, 1), **greedy)
    print(f"a 17-token prompt (next bucket, 32) -> new compiles: {lm.compile_count - before}")

    section("3. A fixed-size cache written in place  (kv_cache.write)")
    cache = tf.zeros([1, 1, 4, 1])
    for slot, value in enumerate([7.0, 8.0]):
        cache = kv_cache.write(cache, tf.fill([1, 1, 1, 1], value), tf.constant(slot))
    print(f"after 2 writes the cache is {cache.numpy().ravel().tolist()} with shape {cache.shape} "
          "(allocated once; concatenation would change the shape -> a new graph every step)")

    section("4. Left padding and position ids  (positions.positions_from_mask)")
    mask = tf.constant([[0, 0, 1, 1, 1]])
    print(f"mask {mask.numpy()[0].tolist()} -> positions {positions.positions_from_mask(mask).numpy()[0].tolist()}")
    padded_ids = np.concatenate([np.zeros([1, 3], np.int32), ids], 1)
    padded_mask = np.concatenate([np.zeros([1, 3], np.int32), np.ones_like(ids)], 1)
    padded = lm.generate(padded_ids, padded_mask, **greedy).sequences[0, 11:]
    print(f"same continuation with and without 3 pad tokens: {bool((padded == out.sequences[0, 8:]).all())}")

    section("5. Masks instead of early exits  (decoding.decode_step: finished rows emit pad)")
    eos = int(out.sequences[0, 10])  # the 3rd generated token becomes the EOS
    two = np.concatenate([ids, ids[:, ::-1]], 0)
    stopped = lm.generate(two, eos_token_id=eos, pad_token_id=0, max_new_tokens=16).sequences
    print(f"row 0 after its EOS: {stopped[0, 11:].tolist()} (shape stays {stopped.shape})")

    section("6. Beam bookkeeping with masked finished beams  (beam_search.beam_search)")
    beams = lm.generate(ids, num_beams=3, num_return_sequences=3, eos_token_id=eos, pad_token_id=0,
                        max_new_tokens=8)
    for row, score in zip(beams.sequences[:, 8:], beams.sequences_scores):
        print(f"  {row.tolist()}  score {score:.3f}")
    print("scores are sorted best first:", bool(np.all(np.diff(beams.sequences_scores) <= 0)))

    section("7. Stateless RNG  (sampling.row_keys, sampling.gumbel_sample)")
    a = lm.generate(two, do_sample=True, seed=(5, 6), **greedy).sequences
    b = lm.generate(two[::-1], do_sample=True, seed=(5, 6), **greedy).sequences
    print(f"same seed, rows swapped -> each row's sample unchanged: {bool((a == b[::-1]).all())}")

    section("8. Speculation: per-row lengths in one graph  (speculative.speculative_loop, kv_cache.write_rows)")
    cache = kv_cache.write(tf.zeros([2, 1, 4, 1]), tf.fill([2, 1, 2, 1], 7.0), tf.constant([0, 2]))
    print(f"one write, a slot per row [0, 2] -> cache rows {cache.numpy()[..., 0].reshape(2, 4).tolist()}")
    grounded = np.tile(ids, (1, 2))  # the prompt repeats itself: prompt lookup has something to find
    plain = lm.generate(grounded, **greedy).sequences[:, 16:]
    call = lm.prepare(grounded, **greedy)
    drafter = speculative.PromptLookupDrafter(4)
    speculative.prepare(lm.model)  # the verify head, made eagerly (see speculative.prepare)
    graph = tf.function(lambda i, m, o: speculative.speculative_loop(lm.model, i, m, o, call.plan.buffer, False, drafter),
                        jit_compile=True, autograph=False)
    seq, _, stats = graph(tf.constant(call.input_ids), tf.constant(call.attention_mask), call.options)
    width = call.input_ids.shape[1]
    same = bool((seq.numpy()[:1, width:width + 16] == plain).all())
    print(f"prompt lookup (k=4): same tokens as plain greedy: {same}; "
          f"16 tokens in {int(stats.iterations)} target forwards instead of 16")

    section("9. Streaming from a compiled loop  (streaming.stream, decoding.decode_until)")
    print("A compiled program cannot call back into Python, so the host takes control between")
    print("chunks: `begin` runs the prefill and returns the loop state (a SamplingState: tokens,")
    print("KV cache, finished flags); `advance` resumes that state for chunk_size steps and")
    print("returns it. Both are XLA programs; the host yields each chunk's tokens in between.")
    sampled = dict(greedy, do_sample=True, seed=(5, 6))
    whole = lm.generate(two, **sampled).sequences[:, 8:]
    chunks = list(lm.stream(two, chunk_size=5, **sampled))
    joined = np.concatenate([c.tokens for c in chunks], axis=1)
    print(f"chunk_size=5, 16 new tokens -> chunks of {[c.tokens.shape[1] for c in chunks]} tokens")
    print(f"streamed tokens == generate's tokens: {bool((joined == whole).all())}")
    before = lm.compile_count
    list(lm.stream(two, chunk_size=3, **sampled))
    print(f"another chunk size -> new compiles: {lm.compile_count - before} "
          "(the pause step is a tensor, not a compile key)")


if __name__ == "__main__":
    main()
