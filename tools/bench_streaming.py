"""What streaming costs: ``lm.stream`` against one-shot ``lm.generate``, same model, same tokens.

Usage::

    python tools/bench_streaming.py                        # the shipped model, batch 1 and 8, chunk 8
    python tools/bench_streaming.py --chunk-sizes 4 8 16 --rounds 9
    python tools/bench_streaming.py --model ./my-gpt2      # any checkpoint folder
    python tools/bench_streaming.py --size tiny --rounds 2 --new-tokens 16   # random weights: a smoke run

Random prompt ids, EOS off (every row decodes every step), greedy. For each
(batch, chunk size) both paths are compiled first, then timed in interleaved
rounds (generate, stream, generate, stream, ...) so a busy machine slows both
alike; the medians are compared. The stream is timed until its last chunk is
in host memory as numpy arrays, which is what a consumer gets.

Reports tokens/s of each path, the overhead ``1 - stream / generate`` in
percent, and the median time to the first chunk. Writes JSON to
``tools/results/bench_streaming.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from xladecode.config import GPT2Config  # noqa: E402
from xladecode.gpt2 import GPT2  # noqa: E402
from xladecode.lm import LanguageModel, default_model_path, load  # noqa: E402

SIZES = {"tiny": (2, 2, 64), "distilgpt2": (6, 12, 768), "gpt2": (12, 12, 768)}
RESULTS = Path(__file__).resolve().parent / "results" / "bench_streaming.json"


def time_generate(lm, ids, options) -> float:
    start = time.perf_counter()
    lm.generate(ids, **options)
    return time.perf_counter() - start


def time_stream(lm, ids, options, chunk_size) -> tuple[float, float]:
    """(seconds to the last chunk, seconds to the first chunk)."""
    start = time.perf_counter()
    first = None
    for _ in lm.stream(ids, chunk_size=chunk_size, **options):
        first = first if first is not None else time.perf_counter() - start
    return time.perf_counter() - start, first


def measure(lm, batch, chunk_size, prompt_len, new_tokens, rounds) -> dict:
    ids = np.random.default_rng(batch).integers(0, lm.model.vocab_size, (batch, prompt_len)).astype(np.int32)
    options = dict(max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0)
    time_generate(lm, ids, options)  # compile both paths before timing
    time_stream(lm, ids, options, chunk_size)
    generate_s, stream_s, first_s = [], [], []
    for _ in range(rounds):
        generate_s.append(time_generate(lm, ids, options))
        total, first = time_stream(lm, ids, options, chunk_size)
        stream_s.append(total)
        first_s.append(first)
    g, s = statistics.median(generate_s), statistics.median(stream_s)
    return dict(batch=batch, chunk_size=chunk_size, prompt_len=prompt_len, new_tokens=new_tokens, rounds=rounds,
                generate_median_s=round(g, 4), stream_median_s=round(s, 4),
                generate_tokens_per_s=round(batch * new_tokens / g, 1),
                stream_tokens_per_s=round(batch * new_tokens / s, 1),
                overhead_pct=round(100 * (1 - g / s), 2),
                # per-round stream/generate time ratios: neighbours in time share the machine's load
                paired_overhead_pct=round(100 * (1 - 1 / statistics.median(
                    t / u for t, u in zip(stream_s, generate_s))), 2),
                first_chunk_median_s=round(statistics.median(first_s), 4),
                generate_s=[round(t, 4) for t in generate_s], stream_s=[round(t, 4) for t in stream_s])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="random weights of this shape instead of a checkpoint")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.size is not None:
        n_layer, n_head, n_embd = SIZES[args.size]
        vocab = 512 if args.size == "tiny" else 50257
        lm = LanguageModel(GPT2(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab), seed=0))
        name = f"random {args.size}"
    else:
        lm = load(args.model)
        name = str(args.model or default_model_path().relative_to(Path(__file__).resolve().parent.parent))
    results = []
    for batch in args.batch:
        for chunk_size in args.chunk_sizes:
            r = measure(lm, batch, chunk_size, args.prompt_len, args.new_tokens, args.rounds)
            results.append(r)
            print(f"{name} batch={batch:<3} chunk={chunk_size:<3} generate {r['generate_tokens_per_s']:8.1f} "
                  f"tok/s  stream {r['stream_tokens_per_s']:8.1f} tok/s  overhead {r['overhead_pct']:6.2f}% "
                  f"(paired {r['paired_overhead_pct']:6.2f}%)  "
                  f"first chunk {r['first_chunk_median_s']:.3f}s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    loads = os.getloadavg()
    args.json.write_text(json.dumps(dict(model=name, cpus=os.cpu_count(), load_average_at_end=loads,
                                         note="interleaved rounds on a shared machine: compare ratios",
                                         results=results), indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
