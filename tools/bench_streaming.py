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

Reports tokens/s of each path, the overhead (the stream's extra time over
generate's, in %: from the medians and as the median of per-round ratios, by
wall clock and by this process's CPU time, which other jobs on a shared
machine disturb far less), and the median time to the first chunk. Writes JSON to
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


def _clock() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds, all threads)."""
    return time.perf_counter(), time.process_time()


def _since(start) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def time_generate(lm, ids, options) -> tuple[float, float]:
    """(wall s, CPU s) of one ``generate`` call."""
    start = _clock()
    lm.generate(ids, **options)
    return _since(start)


def time_stream(lm, ids, options, chunk_size) -> tuple[float, float, float]:
    """(wall s, CPU s) to the last chunk, and wall seconds to the first chunk."""
    start = _clock()
    first = None
    for _ in lm.stream(ids, chunk_size=chunk_size, **options):
        first = first if first is not None else _since(start)[0]
    return (*_since(start), first)


def _overhead(generate, stream) -> dict:
    """Overhead in % of the stream against generate: from medians, and the median of per-round ratios."""
    g, s = statistics.median(generate), statistics.median(stream)
    paired = statistics.median(t / u for t, u in zip(stream, generate))
    return dict(median_pct=round(100 * (s / g - 1), 2), paired_pct=round(100 * (paired - 1), 2))


def measure(lm, batch, chunk_size, prompt_len, new_tokens, rounds) -> dict:
    """Interleaved rounds (generate, stream, generate, stream, ...) after compiling both paths.

    Overheads are extra time of the stream over generate, in %: wall clock,
    and CPU time of this process, which a busy machine disturbs much less
    (what the host loop adds is CPU work: round trips, copies).
    """
    ids = np.random.default_rng(batch).integers(0, lm.model.vocab_size, (batch, prompt_len)).astype(np.int32)
    options = dict(max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0)
    time_generate(lm, ids, options)  # compile both paths before timing
    time_stream(lm, ids, options, chunk_size)
    gen, st = [], []
    for _ in range(rounds):
        gen.append(time_generate(lm, ids, options))
        st.append(time_stream(lm, ids, options, chunk_size))
    g_wall, g_cpu = [t[0] for t in gen], [t[1] for t in gen]
    s_wall, s_cpu, first = [t[0] for t in st], [t[1] for t in st], [t[2] for t in st]
    tokens = batch * new_tokens
    return dict(batch=batch, chunk_size=chunk_size, prompt_len=prompt_len, new_tokens=new_tokens, rounds=rounds,
                generate_tokens_per_s=round(tokens / statistics.median(g_wall), 1),
                stream_tokens_per_s=round(tokens / statistics.median(s_wall), 1),
                wall_overhead=_overhead(g_wall, s_wall), cpu_overhead=_overhead(g_cpu, s_cpu),
                first_chunk_median_s=round(statistics.median(first), 4),
                generate_wall_s=[round(t, 4) for t in g_wall], stream_wall_s=[round(t, 4) for t in s_wall],
                generate_cpu_s=[round(t, 4) for t in g_cpu], stream_cpu_s=[round(t, 4) for t in s_cpu])


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
                  f"tok/s  stream {r['stream_tokens_per_s']:8.1f} tok/s  overhead wall "
                  f"{r['wall_overhead']['median_pct']:6.2f}% (paired {r['wall_overhead']['paired_pct']:6.2f}%)  "
                  f"CPU {r['cpu_overhead']['median_pct']:6.2f}% (paired {r['cpu_overhead']['paired_pct']:6.2f}%)  "
                  f"first chunk {r['first_chunk_median_s']:.3f}s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    loads = os.getloadavg()
    args.json.write_text(json.dumps(dict(model=name, cpus=os.cpu_count(), load_average_at_end=loads,
                                         note="interleaved rounds on a shared machine: compare ratios",
                                         results=results), indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
