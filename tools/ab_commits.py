"""Interleaved A/B timing of greedy decoding at two git revisions, in one run.

Usage::

    python tools/ab_commits.py 9da00fe~1 HEAD --batch 1 8 --repeats 7

Each revision is checked out (``git worktree add --detach``) into a temporary
folder and served by its own worker process, which imports *that* revision's
``xladecode``, builds the same random gpt2-small-shaped model (seeded), and
compiles greedy decoding once per batch size. The driver then asks the
workers in turn (A, B, A, B, ...) for one timed ``generate`` call each, so
both revisions see the same machine load; it reports the medians and the
ratio B / A in tokens/s. Machines drift (load, memory bandwidth): only the
ratio taken in one interleaved run means anything. Results as JSON on
stdout (and ``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The worker: reads "batch" lines on stdin, answers each with one timed call's seconds.
WORKER = r"""
import os, sys, time, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, sys.argv[1])
import numpy as np
from xladecode.config import GPT2Config
from xladecode.gpt2 import GPT2
from xladecode.lm import LanguageModel
n_layer, n_head, n_embd, prompt_len, new = (int(v) for v in sys.argv[2:7])
config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
lm = LanguageModel(GPT2(config, seed=0))
rng = np.random.default_rng(0)
prompts = {}
kw = dict(max_new_tokens=new, eos_token_id=[], pad_token_id=0, do_sample=False)
for line in sys.stdin:
    batch = int(line)
    if batch not in prompts:
        prompts[batch] = rng.integers(0, 50257, (batch, prompt_len)).astype(np.int32)
        lm.generate(prompts[batch], **kw)  # trace + compile, untimed
        tokens = lm.generate(prompts[batch], **kw).sequences
        print(json.dumps({"ready": batch, "checksum": int(tokens.sum())}), flush=True)
        continue
    start = time.perf_counter()
    lm.generate(prompts[batch], **kw)
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
"""


class Worker:
    def __init__(self, rev: str, folder: Path, shape: list[int]):
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), rev],
                       check=True, capture_output=True)
        self.rev, self.folder = rev, folder
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(folder), *map(str, shape)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, batch: int) -> dict:
        self.proc.stdin.write(f"{batch}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {self.rev} died")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.folder)],
                       capture_output=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="baseline revision")
    p.add_argument("b", help="revision compared with it")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--shape", type=int, nargs=3, default=[12, 12, 768], metavar=("N_LAYER", "N_HEAD", "N_EMBD"))
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    shape = [*args.shape, args.prompt_len, args.new_tokens]
    with tempfile.TemporaryDirectory() as tmp:
        workers = [Worker(args.a, Path(tmp) / "a", shape), Worker(args.b, Path(tmp) / "b", shape)]
        try:
            rows = []
            for batch in args.batch:
                ready = [w.ask(batch) for w in workers]
                times = [[], []]
                for _ in range(args.repeats):
                    for i, w in enumerate(workers):
                        times[i].append(w.ask(batch)["seconds"])
                med = [statistics.median(t) for t in times]
                tok_s = [batch * args.new_tokens / m for m in med]
                rows.append(dict(batch=batch, a_tok_s=round(tok_s[0], 1), b_tok_s=round(tok_s[1], 1),
                                 ratio_b_over_a=round(tok_s[1] / tok_s[0], 3),
                                 same_tokens=ready[0]["checksum"] == ready[1]["checksum"],
                                 a_seconds=[round(t, 3) for t in times[0]],
                                 b_seconds=[round(t, 3) for t in times[1]]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            for w in workers:
                w.close()
    result = dict(a=args.a, b=args.b, shape=dict(zip(["n_layer", "n_head", "n_embd"], args.shape)),
                  prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                  mode="greedy, jit_compile=True", rows=rows)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
