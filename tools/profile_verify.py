"""What one speculative verify costs against one plain decoding step (the number that decides speculation).

    python tools/profile_verify.py [--batch 1 8] [--calls 32] [--rounds 9]

Times four compiled ``tf.while_loop`` programs over the shipped model's KV
cache, each making ``--calls`` model calls, interleaved, and prints the median
milliseconds per call and the ratio to the first:

* ``step``, 1 position          -- plain decoding's step;
* ``step``, 5 positions         -- the body over 5 positions, LM head on the last only;
* ``step_all``, 5 positions     -- verification of k = 4 drafts, ``[C, vocab]`` head on all five;
* ``step_all`` + verify head    -- the same after ``GPT2.prepare_verification`` (what
                                   speculation runs).

A verify iteration pays only when it emits more tokens than its ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import xladecode  # noqa: E402

PROMPT, WIDTH = 16, 5


def calls_loop(model, batch: int, calls: int, width: int, all_positions: bool):
    """A compiled loop of ``calls`` model calls of ``width`` new positions each; returns a scalar."""
    length = PROMPT + calls * width
    key_mask = tf.ones([batch, length], tf.int32)

    def run():
        def body(i, cache, total):
            first = PROMPT + i * width
            ids = tf.fill([batch, width], 100 + i)
            positions = tf.fill([batch, width], first) + tf.range(width)
            if all_positions:
                logits, cache = model.step_all(ids, positions, cache, tf.fill([batch], first), key_mask)
                logits = logits[:, -1]
            else:
                logits, cache = model.step(ids, positions, cache, first, key_mask)
            return i + 1, cache, total + tf.reduce_sum(logits[:, :4])  # use the logits: nothing is skipped

        start = (tf.constant(0), model.init_cache(batch, length), tf.constant(0.0))
        return tf.while_loop(lambda i, *_: i < calls, body, start)[2]

    return tf.function(run, jit_compile=True, autograph=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    model = xladecode.load().model
    programs = {batch: {
        "step, 1 position": calls_loop(model, batch, args.calls, 1, False),
        f"step, {WIDTH} positions": calls_loop(model, batch, args.calls, WIDTH, False),
        f"step_all, {WIDTH} positions": calls_loop(model, batch, args.calls, WIDTH, True),
    } for batch in args.batch}
    for program in (p for per_batch in programs.values() for p in per_batch.values()):
        program().numpy()  # traced and compiled while there is no verify head yet
    model.prepare_verification()
    for batch, per_batch in programs.items():
        per_batch["step_all + verify head"] = calls_loop(model, batch, args.calls, WIDTH, True)
        per_batch["step_all + verify head"]().numpy()
    for batch, per_batch in programs.items():
        times = {name: [] for name in per_batch}
        for _ in range(args.rounds):
            for name, program in per_batch.items():
                start = time.perf_counter()
                program().numpy()
                times[name].append((time.perf_counter() - start) / args.calls)
        base = statistics.median(times["step, 1 position"])
        for name, ts in times.items():
            ms = statistics.median(ts)
            print(f"batch {batch}: {name:26s} {ms * 1e3:6.2f} ms per call ({ms / base:.2f}x)", flush=True)

if __name__ == "__main__":
    main()
