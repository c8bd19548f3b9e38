"""First-call (trace + XLA compile) time and steady decode speed under different ``XLA_FLAGS``.

    python tools/compile_time.py                       # tiny random checkpoint, the suite's flags vs none
    python tools/compile_time.py --model shipped --rounds 2
    python tools/compile_time.py --flags "" "--xla_backend_optimization_level=0"

TensorFlow reads ``XLA_FLAGS`` once per process, so every flag set runs in a
fresh child process (this script with ``--child``); the flag sets are
interleaved over ``--rounds``. Each child loads the model, then for each
strategy (greedy, top-k sampling, 3 beams, prompt lookup) times the first
``generate`` call (trace + compile) and the median of 5 more calls, and prints
one JSON line. The parent prints the median over rounds.

``--model tiny`` is a test-sized random GPT-2 (2 layers, width 16, vocabulary
37, written by transformers' ``save_pretrained``; needs torch and
transformers), where compiling is everything; ``--model shipped`` is
``models/gpt2-shakespeare``, where the run time of the generated code shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
SUITE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"  # tests/conftest.py
STRATEGIES = {
    "greedy": dict(),
    "sample top_k": dict(do_sample=True, top_k=3, seed=(1, 2)),
    "3 beams": dict(num_beams=3),
    "lookup k=3": dict(prompt_lookup_num_tokens=3),
}


def child(model: str, new_tokens: int) -> dict:
    """Runs in the child process: ``{strategy: {"first_s", "again_s"}}``."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    import xladecode
    from xladecode.testing.checkpoints import make_checkpoint

    if model == "tiny":
        folder = tempfile.mkdtemp()
        make_checkpoint(folder, n_layer=2, n_head=2, n_embd=16, vocab_size=37, n_positions=64, seed=7,
                        eos_token_id=5)
        lm = xladecode.load(folder)
    else:
        lm = xladecode.load()
    ids = np.ones([2, 5], np.int32)
    result = {}
    for name, strategy in STRATEGIES.items():
        kw = dict(max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0, **strategy)  # no EOS: fixed length
        start = time.perf_counter()
        lm.generate(ids, **kw)
        first = time.perf_counter() - start
        again = []
        for _ in range(5):
            start = time.perf_counter()
            lm.generate(ids, **kw)
            again.append(time.perf_counter() - start)
        result[name] = dict(first_s=round(first, 3), again_s=round(statistics.median(again), 4))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "shipped"], default="tiny")
    parser.add_argument("--flags", nargs="+", default=["", SUITE_FLAGS], help="XLA_FLAGS values to compare")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 6 (tiny), 64 (shipped)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    new_tokens = args.new_tokens or (6 if args.model == "tiny" else 64)
    if args.child:
        print(json.dumps(child(args.model, new_tokens)), flush=True)
        return
    runs = {flags: [] for flags in args.flags}
    for _ in range(args.rounds):
        for flags in args.flags:
            env = dict(os.environ, XLA_FLAGS=flags)
            out = subprocess.run([sys.executable, __file__, "--child", "--model", args.model,
                                  "--new-tokens", str(new_tokens)], env=env, capture_output=True, text=True,
                                 check=True)
            runs[flags].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"model {args.model}, batch 2, prompt 5, {new_tokens} new tokens; median of {args.rounds} round(s):")
    for flags, results in runs.items():
        print(f"XLA_FLAGS={flags!r}")
        for name in STRATEGIES:
            first = statistics.median(r[name]["first_s"] for r in results)
            again = statistics.median(r[name]["again_s"] for r in results)
            print(f"  {name:14s} first call {first:6.2f} s   later calls {again * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
