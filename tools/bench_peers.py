"""Benchmarks xladecode against peer generation systems on identical random weights.

One random GPT-2 checkpoint (transformers ``GPT2LMHeadModel(config)`` +
``save_pretrained`` -> ``model.safetensors``) is loaded by every system, and
every system gets the same random prompts. Each measurement is one process
(``tools/peers/run_peer.py``) in the interpreter the system needs, so peak
RSS is per system. Repeats are interleaved across systems: round 1 runs every
system once, round 2 again, ...; the reported numbers are medians over rounds.

First time only: ``bash tools/peers/setup.sh`` (makes the venvs for the
transformers 4.57 TF and keras-hub systems).

Usage::

    python tools/bench_peers.py                                   # gpt2, greedy+beam4, batch 1
    python tools/bench_peers.py --size distilgpt2 --batch 1 8 --rounds 5
    python tools/bench_peers.py --systems xladecode_xla torch_eager --modes greedy
    python tools/bench_peers.py --sweep                           # xladecode vs batch / length / size
    python tools/bench_peers.py --size tiny --new-tokens 4 --rounds 1 --repeats 1   # smoke test

Writes ``tools/results/peers.json`` and ``tools/results/peers.md`` (or, with
``--sweep``, ``tools/results/sweep.json`` and ``tools/results/sweep.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "tools" / "peers"
RESULTS = REPO / "tools" / "results"
WORKER = PEERS / "run_peer.py"

# (n_layer, n_head, n_embd); vocab 50257 and n_positions 1024 for all.
# "tiny" is for smoke tests only.
SIZES = {"tiny": (2, 4, 128), "distilgpt2": (6, 12, 768), "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024)}
SYSTEMS = ("xladecode_xla", "xladecode_noxla", "torch_eager", "torch_compile", "tf_eager", "tf_xla", "kerashub",
           "kerashub_xla")
VENV = {"tf_eager": ".venv-tf457", "tf_xla": ".venv-tf457", "kerashub": ".venv-kerashub", "kerashub_xla": ".venv-kerashub"}
LABELS = {
    "xladecode_xla": "xladecode (XLA)",
    "xladecode_noxla": "xladecode (no XLA)",
    "torch_eager": "transformers 5 PyTorch eager",
    "torch_compile": "transformers 5 PyTorch static cache + torch.compile",
    "tf_eager": "transformers 4.57 TF eager",
    "tf_xla": "transformers 4.57 TF tf.function(jit_compile=True)",
    "kerashub": "keras-hub GPT2CausalLM (TF backend, default: no XLA on CPU)",
    "kerashub_xla": "keras-hub GPT2CausalLM (TF backend, jit_compile=True)",
}
REFERENCE = "xladecode_xla"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ checkpoint
def make_checkpoint(size: str, seed: int = 0, init_std: float = 0.3) -> Path:
    """The shared random checkpoint for ``size`` (made once, then reused).

    ``init_std`` is transformers' ``initializer_range``. It changes no timing;
    GPT-2's 0.02 makes an untrained model emit one token over and over, so the
    default is wider: greedy outputs then depend on the prompt and the weights,
    and the report's "matches" column really checks that every system runs the
    same weights.
    """
    n_layer, n_head, n_embd = SIZES[size]
    folder = PEERS / f".ckpt-{size}-seed{seed}-std{init_std:g}"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    log(f"[bench_peers] making random {size} checkpoint in {folder}")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=50257, n_positions=1024,
                        initializer_range=init_std)
    model = GPT2LMHeadModel(config).eval()
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    if not (tmp / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {tmp}")
    tmp.rename(folder)
    return folder


def weight_arrays(folder: Path) -> list:
    from safetensors.numpy import load_file
    tensors = load_file(str(folder / "model.safetensors"))
    seen, arrays = set(), []
    for name, a in tensors.items():  # a tied lm_head is the same bytes as wte: count once
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue
        arrays.append(a.astype("float32"))
        seen.add(name)
    return arrays


def roofline(folder: Path, repeats: int = 5) -> dict:
    """Time to stream every fp32 weight once -> a batch-1 tokens/s ceiling.

    Decoding one token at batch 1 must read every weight at least once (the
    tied embedding once, as the LM head). A numpy ``sum`` over one contiguous
    copy of all weights measures how fast this machine can do that, on one
    thread and split over all CPUs (numpy releases the GIL in reductions);
    a float32 matrix-vector product over the same bytes (BLAS, the decoding
    access pattern) is the third probe. The fastest sets the ceiling (median
    of ``repeats`` each). A soft ceiling: a tuned kernel may stream faster.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    flat = np.concatenate([a.ravel() for a in weight_arrays(folder)])
    n = os.cpu_count() or 1
    chunks = np.array_split(flat, n)

    def timed(fn):
        fn()  # warm: page in, start threads
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    one = timed(flat.sum)
    with ThreadPoolExecutor(n) as pool:
        every = timed(lambda: sum(pool.map(np.sum, chunks)))
    cols = 1024
    matrix = flat[: flat.size // cols * cols].reshape(-1, cols)
    ones = np.ones(cols, np.float32)
    gemv = timed(lambda: matrix @ ones) * flat.size / matrix.size
    t = min(one, every, gemv)
    return dict(weight_bytes=int(flat.nbytes), stream_s=round(t, 5),
                stream_s_1_thread=round(one, 5), stream_s_all_threads=round(every, 5),
                stream_s_gemv=round(gemv, 5), threads=n,
                bandwidth_gb_s=round(flat.nbytes / t / 1e9, 2), ceiling_tokens_per_s=round(1 / t, 2))


# ---------------------------------------------------------------------- worker
def interpreter(system: str) -> Path | None:
    if system not in VENV:
        return Path(sys.executable)
    py = PEERS / VENV[system] / "bin" / "python"
    return py if py.exists() else None


def run_worker(system, ckpt, batch, prompt_len, new_tokens, mode, repeats, prompts, timeout, extra=(), threads=None):
    py = interpreter(system)
    base = dict(system=system, batch=batch, mode=mode, prompt_len=prompt_len, new_tokens=new_tokens)
    if py is None:
        return dict(base, error=f"{PEERS / VENV[system]} missing: run bash tools/peers/setup.sh")
    cmd = [str(py), str(WORKER), "--system", system, "--checkpoint", str(ckpt), "--batch", str(batch),
           "--prompt-len", str(prompt_len), "--new-tokens", str(new_tokens), "--mode", mode,
           "--repeats", str(repeats), "--prompts", str(prompts), *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(base, error=f"timed out after {timeout}s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"system"'):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return dict(base, error=f"worker exited {proc.returncode} without a result: " + " | ".join(tail))


def prompts_file(batch, prompt_len, vocab=50257, seed=0) -> Path:
    import numpy as np
    path = PEERS / f".ckpt-prompts-{batch}x{prompt_len}-seed{seed}.npy"
    if not path.exists():
        rng = np.random.default_rng(seed)
        np.save(path, rng.integers(1, vocab, (batch, prompt_len)).astype(np.int32))
    return path


def combine(runs: list[dict]) -> dict:
    """Median over rounds of one (system, mode, batch, ...) point."""
    ok = [r for r in runs if "error" not in r]
    out = dict(runs[-1] if not ok else ok[-1])
    out["rounds"] = len(runs)
    out["rounds_ok"] = len(ok)
    if ok:
        for key in ("first_call_s", "median_s", "tokens_per_s", "peak_rss_mb", "load_s"):
            out[key] = round(statistics.median(r[key] for r in ok), 4)
        out["tokens_per_s_rounds"] = [r["tokens_per_s"] for r in ok]
        out["produced_new_tokens"] = min(r["produced_new_tokens"] for r in ok)
        out.pop("times_s", None)
        if len(ok) < len(runs):
            out["error_some_rounds"] = next(r["error"] for r in runs if "error" in r)
    return out


def run_points(points, ckpts, args, progress_desc):
    """Runs every point once per round, rounds interleaved; returns combined results."""
    from tqdm import tqdm
    runs = {i: [] for i in range(len(points))}
    bar = tqdm(total=len(points) * args.rounds, desc=progress_desc, file=sys.stderr, dynamic_ncols=True)
    for rnd in range(args.rounds):
        for i, p in enumerate(points):
            bar.set_postfix_str(f"round {rnd + 1} {p['system']} {p['size']} {p['mode']} b={p['batch']}")
            r = run_worker(p["system"], ckpts[p["size"]], p["batch"], p["prompt_len"], p["new_tokens"], p["mode"],
                           args.repeats, prompts_file(p["batch"], p["prompt_len"]), args.timeout, p.get("extra", ()),
                           args.threads)
            r["size"] = p["size"]
            if "error" in r:
                bar.write(f"  ! {p['system']} {p['mode']} b={p['batch']}: {r['error'][:300]}")
            elif r.get("produced_new_tokens") != p["new_tokens"]:
                bar.write(f"  ! WARNING {p['system']} {p['mode']} b={p['batch']}: produced "
                          f"{r.get('produced_new_tokens')} new tokens per row, expected {p['new_tokens']}")
            runs[i].append(r)
            bar.update(1)
    bar.close()
    return [combine(runs[i]) for i in range(len(points))]


# ------------------------------------------------------------------- reporting
def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def markdown(results, roof, args, meta) -> str:
    lines = [f"# Peer benchmark: {args.size}, prompt {args.prompt_len}, {args.new_tokens} new tokens", "",
             f"Identical random weights (`{meta['checkpoint']}`) and prompts in every system; "
             f"median over {args.rounds} interleaved round(s) of the median of {args.repeats} timed call(s). "
             f"Machine: {meta['cpus']} CPU(s), {meta['platform']}. Tokens/s = batch × new tokens / s "
             f"(beams not counted). \"matches\": first row's new tokens equal xladecode (XLA)'s.", ""]
    for mode in args.modes:
        for batch in args.batch:
            rows = [r for r in results if r["mode"] == mode and r["batch"] == batch]
            ref = next((r for r in rows if r["system"] == REFERENCE and "error" not in r), None)
            lines += [f"## {mode}, batch {batch}", "",
                      "| system | tokens/s | vs xladecode (XLA) | first call s | peak RSS MB | new tokens | matches |",
                      "|---|---:|---:|---:|---:|---:|:---:|"]
            for r in rows:
                name = LABELS[r["system"]]
                if "error" in r:
                    lines.append(f"| {name} | failed | | | {fmt(r.get('peak_rss_mb'), '.0f')} | | "
                                 f"{r['error'][:160].replace('|', '/')} |")
                    continue
                ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
                same = "—" if not ref else ("yes" if r["first_row_tokens"] == ref["first_row_tokens"] else "no")
                flag = "" if r["produced_new_tokens"] == r["new_tokens"] else " ⚠"
                lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {fmt(ratio, '.2f')}× | {r['first_call_s']:.2f} | "
                             f"{r['peak_rss_mb']:.0f} | {r['produced_new_tokens']}{flag} | {same} |")
            lines.append("")
    if roof:
        lines += ["## Roofline (batch 1)", "",
                  f"Streaming all {roof['weight_bytes'] / 1e6:.0f} MB of fp32 weights once takes "
                  f"{roof['stream_s'] * 1e3:.1f} ms ({roof['bandwidth_gb_s']} GB/s; numpy sum 1 thread "
                  f"{roof['stream_s_1_thread'] * 1e3:.1f} ms, {roof['threads']} threads "
                  f"{roof['stream_s_all_threads'] * 1e3:.1f} ms, BLAS gemv {roof['stream_s_gemv'] * 1e3:.1f} ms): "
                  f"a ceiling of **{roof['ceiling_tokens_per_s']:.1f} tokens/s** at batch 1."]
        for mode in args.modes:
            ref = next((r for r in results if r["system"] == REFERENCE and r["batch"] == 1 and r["mode"] == mode
                        and "error" not in r), None)
            if ref:
                lines.append(f"- xladecode (XLA) {mode}, batch 1: {ref['tokens_per_s']:.1f} tokens/s = "
                             f"{ref['tokens_per_s'] / roof['ceiling_tokens_per_s']:.0%} of the ceiling")
        lines.append("")
    notes = sorted({r.get("kerashub_weights") for r in results if r.get("kerashub_weights")})
    if notes:
        lines += ["Notes:", ""] + [f"- keras-hub weights: {n}" for n in notes] + [""]
    return "\n".join(lines)


def meta_info(ckpts, load_before) -> dict:
    return dict(cpus=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
                checkpoint=", ".join(str(p.relative_to(REPO)) for p in ckpts.values()),
                time=time.strftime("%Y-%m-%d %H:%M:%S"), load_average_before=load_before,
                load_average_after=round(os.getloadavg()[0], 2))


def check_idle() -> float:
    """1-minute load average; warns when other work is running (timings would be contaminated)."""
    load = round(os.getloadavg()[0], 2)
    if load > 0.5:
        log(f"[bench_peers] WARNING: load average {load} on {os.cpu_count()} CPU(s): something else is running, "
            "timings will be contaminated (frameworks that spin on OpenMP barriers, e.g. PyTorch, suffer most)")
    return load


def main_peers(args):
    load_before = check_idle()
    ckpt = make_checkpoint(args.size, args.seed, args.init_std)
    ckpts = {args.size: ckpt}
    points = [dict(system=s, size=args.size, mode=m, batch=b, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                   extra=("--kerashub-weights", args.kerashub_weights) if s.startswith("kerashub") else ())
              for m in args.modes for b in args.batch for s in args.systems]
    results = run_points(points, ckpts, args, "peers")
    roof = None if args.no_roofline else roofline(ckpt)
    meta = meta_info(ckpts, load_before)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = dict(meta=meta, args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               roofline=roof, results=results)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=2))
    md = markdown(results, roof, args, meta)
    (RESULTS / f"{args.out}.md").write_text(md)
    print(md)
    log(f"[bench_peers] wrote {RESULTS / (args.out + '.json')} and {RESULTS / (args.out + '.md')}")


def main_sweep(args):
    load_before = check_idle()
    sizes = list(dict.fromkeys(args.sweep_sizes + [args.size]))
    ckpts = {s: make_checkpoint(s, args.seed, args.init_std) for s in sizes}
    system, mode = "xladecode_xla", args.modes[0]
    points = []
    for b in args.sweep_batches:  # vs batch
        points.append(dict(system=system, size=args.size, mode=mode, batch=b, prompt_len=args.prompt_len,
                           new_tokens=args.new_tokens, axis="batch", x=b))
    for total in args.sweep_lengths:  # vs total length: prompt fixed, new tokens fill the rest
        points.append(dict(system=system, size=args.size, mode=mode, batch=1, prompt_len=args.prompt_len,
                           new_tokens=total - args.prompt_len, axis="length", x=total))
    for s in args.sweep_sizes:  # vs model size
        points.append(dict(system=system, size=s, mode=mode, batch=1, prompt_len=args.prompt_len,
                           new_tokens=args.new_tokens, axis="size", x=s))
    results = run_points(points, ckpts, args, "sweep")
    for p, r in zip(points, results):
        r["axis"], r["x"] = p["axis"], p["x"]
    roofs = {s: roofline(ckpts[s]) for s in sizes} if not args.no_roofline else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = dict(meta=meta_info(ckpts, load_before), args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               roofline=roofs, results=results)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=2))
    png = plot_sweep(results, roofs, args)
    for r in results:
        tps = "failed: " + r["error"][:120] if "error" in r else f"{r['tokens_per_s']:.1f} tok/s"
        print(f"{r['axis']:>6} {str(r['x']):>12}  {tps}")
    log(f"[bench_peers] wrote {RESULTS / (args.out + '.json')} and {png}")


def plot_sweep(results, roofs, args) -> Path:
    try:
        import matplotlib
    except ImportError:
        log("[bench_peers] installing matplotlib (plot only)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    titles = {"batch": f"vs batch ({args.size}, {args.new_tokens} new)",
              "length": f"vs total length ({args.size}, batch 1, prompt {args.prompt_len})",
              "size": f"vs model size (batch 1, {args.new_tokens} new)"}
    for ax, axis in zip(axes, ("batch", "length", "size")):
        rows = [r for r in results if r["axis"] == axis and "error" not in r]
        xs = [str(r["x"]) if axis == "size" else r["x"] for r in rows]
        ys = [r["tokens_per_s"] for r in rows]
        ax.plot(xs, ys, "o-", label="xladecode (XLA)")
        if axis == "batch" and xs:
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
        if axis == "size" and roofs:
            ax.plot(xs, [roofs[r["x"]]["ceiling_tokens_per_s"] for r in rows], "k--x", label="weight-streaming ceiling")
        elif roofs and args.size in roofs and axis == "length":
            ax.axhline(roofs[args.size]["ceiling_tokens_per_s"], color="k", ls="--", label="weight-streaming ceiling")
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8)
        ax.set_title(titles[axis], fontsize=10)
        ax.set_ylabel("new tokens/s")
        ax.set_xlabel({"batch": "batch", "length": "prompt + new tokens", "size": "model"}[axis])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"xladecode {args.modes[0]} decoding, {os.cpu_count()} CPU(s); median of {args.rounds} round(s)")
    fig.tight_layout()
    png = RESULTS / f"{args.out}.png"
    fig.savefig(png, dpi=110)
    return png


def main(argv=None):
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--modes", nargs="+", choices=["greedy", "beam4"], default=["greedy", "beam4"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over them)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per worker after its first call")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--init-std", type=float, default=0.3,
                        help="std of the random weights (transformers' initializer_range; no effect on speed)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for every system (default: each framework's own default)")
    parser.add_argument("--kerashub-weights", choices=("shared", "random"), default="shared")
    parser.add_argument("--no-roofline", action="store_true")
    parser.add_argument("--out", default=None, help="results file stem (default peers / sweep)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where results go (default tools/results)")
    parser.add_argument("--sweep", action="store_true", help="xladecode tokens/s vs batch, length and model size")
    parser.add_argument("--sweep-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--sweep-lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--sweep-sizes", nargs="+", choices=sorted(SIZES), default=["distilgpt2", "gpt2", "gpt2-medium"])
    args = parser.parse_args(argv)
    RESULTS = args.results_dir.resolve()
    if args.sweep:
        args.out = args.out or "sweep"
        bad = [t for t in args.sweep_lengths if not args.prompt_len < t <= 1024]
        if bad:
            parser.error(f"--sweep-lengths {bad}: each must be > --prompt-len and <= 1024")
        main_sweep(args)
    else:
        args.out = args.out or "peers"
        main_peers(args)


if __name__ == "__main__":
    main()
