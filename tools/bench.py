"""Benchmark xladecode generation on a gpt2-small-shaped model with random weights.

Usage::

    python tools/bench.py                       # greedy + sampling + beam-4, batch 1 and 8
    python tools/bench.py --batch 1 8 --modes greedy --no-xla-too
    python tools/bench.py --json tools/results/bench.json

For every (mode, batch, jit) it reports the first call (trace + XLA compile +
one run), then the median tokens/s of ``--repeats`` timed calls, and the peak
RSS of the process. Tokens/s counts new tokens of all rows: batch *
max_new_tokens / seconds (EOS is disabled so every row runs to the end).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from xladecode.config import GPT2Config  # noqa: E402
from xladecode.gpt2 import GPT2  # noqa: E402
from xladecode.lm import LanguageModel  # noqa: E402

SIZES = {"distilgpt2": (6, 12, 768), "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024)}
MODES = {
    "greedy": dict(),
    "sample": dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, seed=(1, 2)),
    "beam4": dict(num_beams=4),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(lm, batch, prompt_len, new, mode, jit, repeats):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, lm.model.vocab_size, (batch, prompt_len)).astype(np.int32)
    kwargs = dict(MODES[mode], max_new_tokens=new, eos_token_id=[], pad_token_id=0, jit_compile=jit)
    start = time.perf_counter()
    lm.generate(ids, **kwargs)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lm.generate(ids, **kwargs)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return dict(mode=mode, batch=batch, prompt_len=prompt_len, new_tokens=new, jit_compile=jit,
                first_call_s=round(first, 3), median_s=round(median, 4),
                tokens_per_s=round(batch * new / median, 1),
                compile_s_estimate=round(first - median, 3), peak_rss_mb=round(peak_rss_mb()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["greedy", "sample", "beam4"])
    parser.add_argument("--no-xla-too", action="store_true", help="also time jit_compile=False")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()

    n_layer, n_head, n_embd = SIZES[args.size]
    import tensorflow as tf
    model = GPT2(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd), dtype=getattr(tf, args.dtype))
    lm = LanguageModel(model)
    results = []
    for mode in args.modes:
        for batch in args.batch:
            for jit in ([True, False] if args.no_xla_too else [True]):
                r = run(lm, batch, args.prompt_len, args.new_tokens, mode, jit, args.repeats)
                results.append(r)
                print(f"{args.size:>10} {args.dtype:>8} {mode:>7} batch={batch:<3} jit={str(jit):<5} "
                      f"first call {r['first_call_s']:7.2f}s  median {r['median_s']:7.3f}s  "
                      f"{r['tokens_per_s']:8.1f} tok/s  peak RSS {r['peak_rss_mb']} MB", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(size=args.size, dtype=args.dtype, cpus=os.cpu_count(),
                                             results=results), indent=2))


if __name__ == "__main__":
    main()
