"""How many graphs do 100 mixed generate calls compile? (performance issue: no surprise compiles)

    python tools/compile_count.py [--calls 100] [--model PATH]

Mixes prompt lengths 1..200, batch 1..8, max_new_tokens 1..128 and random option
values on one LanguageModel, then prints the number of traces (``compile_count``)
and of distinct shape buckets, and every call that traced a bucket it had seen.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import xladecode  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    lm = xladecode.load(args.model)
    limit = lm.model.max_positions
    rng = np.random.default_rng(0)
    seen, start = {}, time.perf_counter()
    for i in range(args.calls):
        batch, new = int(rng.integers(1, 9)), int(rng.integers(1, min(128, limit - 1) + 1))
        length = int(rng.integers(1, min(200, limit - new) + 1))
        ids = rng.integers(0, lm.model.vocab_size, (batch, length)).astype(np.int32)
        options = dict(max_new_tokens=new, temperature=float(rng.uniform(0, 1.5)), top_k=int(rng.integers(0, 100)),
                       top_p=float(rng.uniform(0.5, 1)), repetition_penalty=float(rng.uniform(1, 1.3)),
                       seed=(i, 0), min_new_tokens=int(rng.integers(0, 3)),
                       no_repeat_ngram_size=int(rng.integers(0, 4)))
        key = lm.prepare(ids, **options).compile_key
        before = lm.compile_count
        lm.generate(ids, **options)
        if lm.compile_count > before and key in seen:
            print(f"call {i}: bucket {key} traced again (first traced by call {seen[key]})")
        seen.setdefault(key, i)
    rss_mb = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024
    print(f"{args.calls} mixed calls: {lm.compile_count} traces for {len(seen)} shape buckets "
          f"({time.perf_counter() - start:.0f} s); {len(lm.functions)} compiled functions kept "
          f"(cap {lm.max_compiled_functions}); process RSS {rss_mb} MB")


if __name__ == "__main__":
    main()
