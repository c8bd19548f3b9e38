"""``xladecode bench``: how fast is a checkpoint on this machine?

The first thing to run on a new box, like llama.cpp's ``llama-bench``::

    xladecode bench                                  # the shipped model, batch 1 and 8
    xladecode bench --model ./my-gpt2 --batch-sizes 1,4,16 --prompt-length 128 --new-tokens 128
    xladecode bench --json > bench.json

For each batch size it measures, on random prompt ids with EOS switched off
(so every row decodes every step):

* **compile s**: the first ``generate`` call minus a warm one (tracing plus
  the XLA compile; per shape bucket, once per process -- or once per machine
  with the persistent compilation cache);
* **prefill tok/s**: prompt tokens the model reads per second (the compiled
  prefill alone: ``compiled.StreamPrograms.begin``);
* **decode tok/s**: new tokens per second, all rows together, from the
  compiled loop alone (``StreamPrograms.advance`` over every step);
* **generate s**: a whole warm ``generate`` call, what an application waits.

Timings are medians of ``repeats`` calls. Progress goes to stderr, the table
(or ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import time
from typing import Callable, Sequence

CACHE_FLAG = "--tf_xla_persistent_cache_directory"
CACHE_HINT = (f"export TF_XLA_FLAGS={CACHE_FLAG}=$HOME/.cache/xladecode-xla   "
              '(README: "Compile time and the persistent compilation cache")')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` flags (``--model`` is the CLI's, shared with ``generate``)."""
    parser.add_argument("--batch-sizes", type=_positive_list, default=[1, 8], metavar="N[,N...]",
                        help="batch sizes to time (default 1,8)")
    parser.add_argument("--prompt-length", type=_positive, default=64, metavar="N",
                        help="prompt tokens per row (default 64)")
    parser.add_argument("--new-tokens", type=_positive, default=64, metavar="N",
                        help="new tokens per row (default 64)")
    parser.add_argument("--repeats", type=_positive, default=3, metavar="N",
                        help="timed calls per measurement; the median is reported (default 3)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype")
    parser.add_argument("--no-jit", action="store_true", help="time the same graphs without XLA")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def _positive_list(text: str) -> list[int]:
    values = [_positive(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or N,N,...")
    return values


def report_for_args(args, lm) -> str:
    """Runs the bench the parsed ``args`` ask for; returns the table (or JSON) to print."""
    from .lm import default_model_path

    meter = ProgressBar(PHASES * len(args.batch_sizes)) if not args.no_progress else (lambda label: None)
    name = args.model if args.model is not None else f"{default_model_path()} (default)"
    report = run(lm, str(name), args.batch_sizes,
                 args.prompt_length, args.new_tokens, args.repeats, not args.no_jit, args.dtype, progress=meter)
    if not args.no_progress:
        meter.finish()
    return json.dumps(report, indent=2) if args.json else format_table(report)


#: Progress-bar phases per batch size (compile, generate, prefill and decode).
PHASES = 3


@dataclasses.dataclass
class BenchRow:
    """The measurements at one batch size (seconds are medians)."""

    batch: int
    compile_s: float
    first_call_s: float
    prefill_s: float
    prefill_tokens_per_s: float
    decode_s: float
    decode_tokens_per_s: float
    generate_s: float


def persistent_cache() -> dict:
    """The persistent XLA cache this process uses: ``{"directory": str | None, "entries": int | None}``.

    Read from ``TF_XLA_FLAGS`` (it must be set before TensorFlow starts).
    """
    found = re.search(re.escape(CACHE_FLAG) + r"[= ](\S+)", os.environ.get("TF_XLA_FLAGS", ""))
    if not found:
        return {"directory": None, "entries": None}
    folder = found.group(1)
    entries = len(os.listdir(folder)) if os.path.isdir(folder) else 0
    return {"directory": folder, "entries": entries}


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(_timed(fn) for _ in range(repeats))


def bench_batch(lm, batch: int, prompt_length: int, new_tokens: int, repeats: int, jit_compile: bool,
                progress: Callable[[str], None]) -> BenchRow:
    """Measures one batch size (see the module docstring); ``progress(label)`` marks each phase."""
    import numpy as np
    import tensorflow as tf


    rng = np.random.default_rng(batch)
    ids = rng.integers(0, lm.model.vocab_size, (batch, prompt_length)).astype(np.int32)
    options = dict(max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0, do_sample=False)

    progress(f"batch {batch}: compile")
    first = _timed(lambda: lm.generate(ids, jit_compile=jit_compile, **options))
    progress(f"batch {batch}: generate")
    generate_s = _median_time(lambda: lm.generate(ids, jit_compile=jit_compile, **options), repeats)

    progress(f"batch {batch}: prefill and decode")
    call = lm.prepare(ids, **options)
    programs = lm.compiled_stream(call, jit_compile)  # the streaming halves: prefill, then the loop
    stop = tf.constant(new_tokens, tf.int32)

    def begin():
        state = programs.begin(call.input_ids, call.attention_mask, call.options)
        int(state.step)  # waits for the program (results come back together)
        return state

    def decode_time():
        state = begin()  # a fresh state, untimed: decoding starts at step 0
        return _timed(lambda: int(programs.advance(state, call.attention_mask, call.options, stop).step))

    decode_time()  # compiles both programs
    prefill_s = _median_time(begin, repeats)
    decode_s = statistics.median(decode_time() for _ in range(repeats))
    return BenchRow(batch=batch, compile_s=max(first - generate_s, 0.0), first_call_s=first,
                    prefill_s=prefill_s, prefill_tokens_per_s=batch * prompt_length / prefill_s,
                    decode_s=decode_s, decode_tokens_per_s=batch * new_tokens / decode_s,
                    generate_s=generate_s)


def run(lm, model_name: str, batch_sizes: Sequence[int], prompt_length: int, new_tokens: int,
        repeats: int, jit_compile: bool, dtype: str, progress: Callable[[str], None]) -> dict:
    """Benchmarks ``lm`` at every batch size; returns the report (what ``--json`` prints).

    Raises:
      ValueError: a prompt plus new tokens longer than the model's ``n_positions``.
    """
    from . import validation

    limit = lm.model.max_positions
    if prompt_length + new_tokens > limit:
        validation.fail("--new-tokens", new_tokens,
                        f"--prompt-length {prompt_length} + --new-tokens must be <= n_positions={limit}")
    cache_at_start = persistent_cache()
    rows = [bench_batch(lm, b, prompt_length, new_tokens, repeats, jit_compile, progress) for b in batch_sizes]
    cache = dict(persistent_cache(), entries_at_start=cache_at_start["entries"])
    config = getattr(lm.model, "config", None)
    shape = {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")
             if hasattr(config, k)}
    return {"model": model_name, "model_shape": shape, "dtype": dtype, "jit_compile": jit_compile,
            "device": _device(), "prompt_length": prompt_length, "new_tokens": new_tokens,
            "repeats": repeats, "persistent_cache": cache,
            "results": [dataclasses.asdict(r) for r in rows]}


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return f"{len(gpus)} GPU(s)"
    return f"CPU ({os.cpu_count()} cores)"


#: The table's columns: (heading, result key, format).
COLUMNS = (("batch", "batch", "{:d}"), ("compile s", "compile_s", "{:.2f}"),
           ("prefill tok/s", "prefill_tokens_per_s", "{:.1f}"), ("decode tok/s", "decode_tokens_per_s", "{:.1f}"),
           ("generate s", "generate_s", "{:.3f}"))


def format_table(report: dict) -> str:
    """The report as a few lines of text: a header, one row per batch size, the cache line."""
    shape = ", ".join(f"{k} {v}" for k, v in report["model_shape"].items())
    lines = [f"model  {report['model']}: {shape}",
             f"setup  {report['dtype']}, {'XLA' if report['jit_compile'] else 'no XLA'}, {report['device']}; "
             f"prompt {report['prompt_length']} tokens, {report['new_tokens']} new tokens; "
             f"median of {report['repeats']} calls", ""]
    cells = [[h for h, _, _ in COLUMNS]] + [[f.format(r[k]) for _, k, f in COLUMNS] for r in report["results"]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    cache = report["persistent_cache"]
    if cache["directory"] is None:
        lines += ["", "persistent compilation cache: off (compiled programs die with the process); to keep them:",
                  "  " + CACHE_HINT]
    else:
        lines += ["", f"persistent compilation cache: {cache['directory']} ({cache['entries_at_start']} files "
                      f"at the start, {cache['entries']} now; compiles found there are not repeated)"]
    return "\n".join(lines)


class ProgressBar:
    """``[#####.....] 3/6 batch 8: generate`` on stderr: redrawn in place on a terminal, a line per phase otherwise."""

    def __init__(self, total: int, stream=None, width: int = 20):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, label: str) -> None:
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        end = "\r" if self.tty else "\n"
        print(f"[xladecode bench] [{bar}] {self.done}/{self.total} {label}".ljust(70), end=end,
              file=self.stream, flush=True)
        self.done += 1

    def finish(self) -> None:
        print(f"[xladecode bench] [{'#' * self.width}] {self.total}/{self.total} done".ljust(70),
              file=self.stream, flush=True)
