"""Command line: ``xladecode generate PROMPT [options]``, ``xladecode export PATH``, ``xladecode bench``.

Generated text goes to stdout and nothing else does: loading, compile and
timing diagnostics go to stderr, so ``xladecode generate ... > out.txt``
captures only text.

TensorFlow is imported only once the arguments are checked, so ``--help``
and argument errors answer at once; and its C++ start-up log lines (CUDA
probing and the like) are kept off the terminal unless ``--verbose``.

``xladecode generate --input prompts.jsonl --output results.jsonl`` runs a
batch job over a file instead (``batch.py``); ``xladecode export PATH``
writes a SavedModel (``export.py``); ``xladecode bench`` times a checkpoint
on this machine (``bench.py``).

On a terminal, ``generate`` streams: the first prompt's text appears as it is
decided (``streaming.py``); the other rows follow when decoding ends. The
bytes on stdout are the same as with ``--no-stream``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time


def _seed(text: str) -> tuple[int, int]:
    """``INT`` or ``INT,INT`` -> a seed pair (checked by ``validation.seed_pair``)."""
    from .validation import seed_pair

    try:
        parts = [int(p) for p in text.split(",")]
        return seed_pair("--seed", parts[0] if len(parts) == 1 else parts)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--seed={text!r}: expected INT or INT,INT ({error})")


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _early_stopping(text: str):
    table = {"true": True, "false": False, "never": "never"}
    if text.lower() not in table:
        raise argparse.ArgumentTypeError(f"--early-stopping={text!r}: expected true, false or never")
    return table[text.lower()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xladecode", description="Text generation whose whole decoding loop is one XLA graph.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's own log lines (hidden by default)")
    g = sub.add_parser("generate", help="continue one or more prompts", parents=[common],
                       description="Continue PROMPT(s) with a GPT-2 checkpoint; prints prompt + "
                                   "continuation on stdout, diagnostics on stderr.")
    g.add_argument("prompt", nargs="*", help="prompt text; several prompts are decoded as one batch "
                                             "(give PROMPTs or --input, not both)")
    g.add_argument("--model", default=None,
                   help="checkpoint folder or a model name in the local Hugging Face cache "
                        "(default: the shipped models/gpt2-shakespeare)")
    _add_option_flags(g)
    g.add_argument("--bad-words", action="append", default=None, metavar="TEXT",
                   help="a word or phrase never to generate (repeatable)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop a row once its text contains TEXT, even across tokens (repeatable); "
                        "the printed text ends just before it")
    g.add_argument("--keep-stop", action="store_true",
                   help="print (with --input: write) the text as generated, stop string included "
                        "(transformers' output)")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype")
    g.add_argument("--no-jit", action="store_true", help="run the same graph without XLA")
    g.add_argument("--continuation-only", action="store_true", help="print only the new text")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print the first prompt's text as it is generated; stdout gets the same text "
                        "either way (default: stream when stdout is a terminal, except for beam search "
                        "and speculative decoding)")
    g.add_argument("--stream-chunk-size", type=int, default=16, metavar="N",
                   help="decoding steps between two stream updates (default 16; smaller chunks cost "
                        "one host round trip each)")
    _add_batch_arguments(g)
    _add_export_parser(sub, common)
    _add_bench_parser(sub, common)
    return parser


#: Decoding options the CLI spells differently or leaves out, and why.
CLI_EXCLUDED = {
    "bad_words_ids": "given as text: --bad-words TEXT (tokenized, with and without a leading space)",
    "output_scores": "the CLI prints text, not scores",
    "stop_strings": "spelled --stop TEXT (repeatable), the common name for it",
    "sequence_bias": "a mapping of token-id sequences to biases has no readable flag form; "
                     "use the Python API or generation_config.json",
}

_FLAG_TYPES = {"int": int, "real": float, "ids": _int_list, "id": int, "seed": _seed,
               "early_stopping": _early_stopping, "model": str}


def _add_option_flags(g) -> None:
    """One flag per decoding option, from its definition in ``options.GenerationOptions``."""
    from .options import GenerationOptions  # no TensorFlow: --help stays instant

    for name in GenerationOptions.names():
        if name in CLI_EXCLUDED:
            continue
        spec = GenerationOptions.spec(name)
        flag = "--" + name.replace("_", "-")
        if spec.kind == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=spec.help)
        else:
            g.add_argument(flag, type=_FLAG_TYPES[spec.kind], default=None, help=spec.help,
                           metavar={"ids": "IDS", "model": "PATH"}.get(spec.kind))


def option_values(args) -> dict:
    """The decoding options given on the command line (flags left out are None)."""
    from .options import GenerationOptions

    return {name: getattr(args, name) for name in GenerationOptions.names()
            if name not in CLI_EXCLUDED and getattr(args, name) is not None}


def _add_batch_arguments(g) -> None:
    """``generate --input FILE --output FILE``: a batch job over a JSONL file (batch.py)."""
    b = g.add_argument_group("batch job over a file (instead of PROMPTs)")
    b.add_argument("--input", default=None, metavar="JSONL",
                   help='prompts, one JSON object a line: {"id": ..., "prompt": "...", "seed": [a, b]} '
                        "(id and seed optional)")
    b.add_argument("--output", default=None, metavar="JSONL",
                   help='results, one {"id", "prompt", "completion"} a line, in batch order (join on id)')
    b.add_argument("--resume", action="store_true",
                   help="continue an interrupted job: skip ids already in --output")
    b.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (default 8)")
    b.add_argument("--errors", default=None, metavar="JSONL",
                   help="where malformed lines are reported (default: OUTPUT.errors.jsonl)")
    b.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def _add_export_parser(sub, common) -> None:
    e = sub.add_parser("export", help="write a TensorFlow SavedModel with the decoding loop inside",
                       parents=[common],
                       description="Write the model and its whole XLA decoding loop as a SavedModel "
                                   "(serving_default signature; tokenizer files in PATH/assets/).")
    e.add_argument("path", help="directory to create; for TensorFlow Serving use .../NAME/1")
    e.add_argument("--model", default=None,
                   help="checkpoint folder or a model name in the local Hugging Face cache "
                        "(default: the shipped models/gpt2-shakespeare)")
    e.add_argument("--strategy", choices=["greedy", "sample", "beam"], default="greedy",
                   help="decoding strategy baked into the graph (default greedy)")
    e.add_argument("--num-beams", type=int, default=4, help="beam width for --strategy beam")
    e.add_argument("--max-new-tokens-buffer", type=int, default=None,
                   help="most new tokens a request may ask for (default: the model's max_new_tokens)")
    e.add_argument("--batch-size", type=int, default=None,
                   help="fix the signature's batch size (default: any batch size)")
    e.add_argument("--chunk-size", type=int, default=8,
                   help="rows per compiled call when the batch size is dynamic (default 8)")
    e.add_argument("--prompt-length", type=_int_list, default=None, metavar="N[,N...]",
                   help="prompt-length bucket(s); the largest is the longest prompt accepted "
                        "(default: powers of two up to n_positions - buffer)")
    e.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")
    e.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype")
    e.add_argument("--no-jit", action="store_true", help="export the same graph without XLA")


def _add_bench_parser(sub, common) -> None:
    from . import bench  # no TensorFlow, no numpy: --help stays instant

    b = sub.add_parser("bench", help="time a checkpoint on this machine (prefill, decode, compile)",
                       parents=[common],
                       description="Time prefill and decode tokens/s and compile time of a checkpoint at a "
                                   "few batch sizes. Progress on stderr, a table (or --json) on stdout.")
    b.add_argument("--model", default=None,
                   help="checkpoint folder or a model name in the local Hugging Face cache "
                        "(default: the shipped models/gpt2-shakespeare)")
    bench.add_arguments(b)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        _check_prompt_or_input(parser, args)
        _check_text_arguments(parser, args)
    if not args.verbose:
        _import_tensorflow_quietly()
    import xladecode  # imported late: --help stays instant

    def log(message):
        print(f"[xladecode] {message}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        lm = xladecode.load(args.model, dtype=args.dtype)
    except (FileNotFoundError, ValueError, NotADirectoryError) as error:
        print(f"xladecode: error: {error}", file=sys.stderr)
        return 2
    log(f"loaded {args.model or xladecode.default_model_path()} in {time.perf_counter() - start:.1f}s")
    if args.command == "export":
        return _export(args, lm, log)
    if args.command == "bench":
        return _bench(args, lm)
    options = option_values(args) | {"jit_compile": not args.no_jit}
    if "assistant_model" in options:  # a checkpoint folder or cached name, like --model
        try:
            options["assistant_model"] = xladecode.load(options["assistant_model"], dtype=args.dtype)
        except (FileNotFoundError, ValueError, NotADirectoryError) as error:
            print(f"xladecode: error: --assistant-model: {error}", file=sys.stderr)
            return 2
    if args.bad_words and lm.tokenizer is not None:
        # A phrase is banned with and without a leading space (BPE spells them differently).
        options["bad_words_ids"] = [lm.tokenizer.encode(v) for w in args.bad_words for v in (w, " " + w)]
    if args.stop:
        options["stop_strings"] = args.stop
    options = {k: v for k, v in options.items() if v is not None}
    if args.input is not None:
        return _generate_file(args, lm, options, log)
    if args.stream if args.stream is not None else (sys.stdout.isatty() and _streamable(lm, options)):
        return _stream_generate(args, lm, options, log)
    start = time.perf_counter()
    try:
        texts = lm.generate_text(args.prompt, trim_stop_strings=not args.keep_stop, **options)
    except ValueError as error:
        print(f"xladecode: error: {error}", file=sys.stderr)
        return 2
    log(f"generated in {time.perf_counter() - start:.1f}s (compile included; {lm.compile_count} compile(s))")
    _print_rows(args, texts)
    return 0


def _print_rows(args, texts: list[str], first: int = 0) -> None:
    """Prints rows ``first..``: prompt + text (or the text alone), a blank line between rows."""
    per_prompt = len(texts) // len(args.prompt)
    for i in range(first, len(texts)):
        prompt = args.prompt[i // per_prompt]
        print(texts[i] if args.continuation_only else prompt + texts[i])
        if len(texts) > 1:
            print()


def _streamable(lm, options: dict) -> bool:
    """Whether the auto mode streams these options: not beam search, not speculative decoding."""
    try:
        merged = lm.defaults.merged(**{k: v for k, v in options.items() if k != "jit_compile"})
    except ValueError:  # generate_text reports it
        return False
    return merged.num_beams == 1 and not merged.prompt_lookup_num_tokens and merged.assistant_model is None


def _stream_generate(args, lm, options: dict, log) -> int:
    """``generate`` with row 0 printed as it is decoded; stdout ends up as ``_print_rows`` writes it."""
    start = time.perf_counter()
    jit_compile = options.pop("jit_compile")
    try:  # everything is checked here, before anything is printed
        pieces = lm.stream_text(args.prompt, chunk_size=args.stream_chunk_size, jit_compile=jit_compile,
                                **options)
    except ValueError as error:
        print(f"xladecode: error: {error}", file=sys.stderr)
        return 2
    rows = len(args.prompt) * lm.defaults.merged(**options).num_return_sequences
    texts = [""] * rows
    if not args.continuation_only:
        sys.stdout.write(args.prompt[0])
        sys.stdout.flush()
    for row_pieces in pieces:
        texts = [text + piece for text, piece in zip(texts, row_pieces)]
        if row_pieces[0]:
            sys.stdout.write(row_pieces[0])
            sys.stdout.flush()
    print("\n" if rows > 1 else "", flush=True)
    _print_rows(args, texts, first=1)
    log(f"streamed in {time.perf_counter() - start:.1f}s (compile included; {lm.compile_count} compile(s))")
    return 0


def _check_prompt_or_input(parser, args) -> None:
    """Exactly one of PROMPT(s) or --input; the batch flags only with --input; --stream only without."""
    if bool(args.prompt) == (args.input is not None):
        parser.error("give exactly one of PROMPT (one or more) or --input FILE")
    if args.input is not None and args.stream:
        parser.error("--stream is only valid with PROMPTs (a batch job writes --output)")
    if args.stream_chunk_size < 1:
        parser.error(f"--stream-chunk-size={args.stream_chunk_size}: expected an integer >= 1")
    if args.input is not None and args.output is None:
        parser.error("--input needs --output FILE")
    if args.input is None:
        used = [flag for flag, value in (("--output", args.output), ("--resume", args.resume),
                                         ("--errors", args.errors)) if value]
        if used:
            parser.error(f"{used[0]} is only valid with --input")


def _check_text_arguments(parser, args) -> None:
    """Prompts, ``--bad-words`` and ``--stop`` must be UTF-8 text.

    Python decodes argv with ``surrogateescape``: a byte that is not UTF-8
    (``$'\\xff'`` in bash) becomes a lone surrogate, which no tokenizer or
    UTF-8 writer takes. Paths may hold such bytes (Linux file names are
    bytes), so only text arguments are checked.
    """
    texts = [(f"PROMPT {i + 1}", p) for i, p in enumerate(args.prompt)]
    texts += [(f"--bad-words #{i + 1}", w) for i, w in enumerate(args.bad_words or ())]
    texts += [(f"--stop #{i + 1}", w) for i, w in enumerate(args.stop or ())]
    for name, text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            code = ord(text[error.start])
            what = (f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF  # a surrogate-escaped byte
                    else f"lone surrogate U+{code:04X}")
            parser.error(f"{name} is not valid UTF-8 text ({what} at character {error.start}); "
                         "text arguments must be UTF-8")
        if not text:
            parser.error(f"{name} is empty")


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its log output off: C++ levels via the environment, and fd 2 muted.

    ``TF_CPP_MIN_LOG_LEVEL=3`` silences TF's own C++ logging (and the CUDA
    ``cuInit`` error of a machine without a GPU), but while TensorFlow's
    shared libraries load, Abseil logs to stderr before anything can set a
    level ("All log messages before absl::InitializeLog() ..."): so stderr
    is muted at the file-descriptor level for the import. If the import
    fails, what was muted is shown with the error.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for name in ("tensorflow", "absl"):  # Python-side loggers (warnings about retracing etc.)
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as muted:
        os.dup2(muted.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            muted.seek(0)
            sys.stderr.write(muted.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _generate_file(args, lm, options: dict, log) -> int:
    """``generate --input ... --output ...``: see xladecode/batch.py."""
    from . import batch

    seed = options.pop("seed", None)  # the global seed: per-line seeds derive from it
    try:
        report = batch.generate_file(lm, args.input, args.output, batch_size=args.batch_size,
                                     resume=args.resume, errors_path=args.errors,
                                     progress=not args.no_progress, seed=seed,
                                     trim_stop_strings=not args.keep_stop, **options)
    except KeyboardInterrupt:
        print(f"xladecode: interrupted; finished batches are saved in {args.output}: "
              "rerun with --resume to finish the rest", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:  # FileExistsError / FileNotFoundError are OSErrors
        print(f"xladecode: error: {error}", file=sys.stderr)
        return 2
    log(f"wrote {report.written} result(s) to {report.output_path} in {report.seconds:.1f}s "
        f"({report.prompts_per_second:.2f} prompts/s, {report.tokens_per_second:.0f} tokens/s); "
        f"skipped {report.skipped} already done; {report.errors} malformed line(s) -> "
        f"{report.errors_path}; seed {report.seed[0]},{report.seed[1]}")
    return 0


def _export(args, lm, log) -> int:
    """``xladecode export PATH``: see xladecode/export.py."""
    start = time.perf_counter()
    try:
        path = lm.export(args.path, strategy=args.strategy, num_beams=args.num_beams,
                         max_new_tokens_buffer=args.max_new_tokens_buffer, batch_size=args.batch_size,
                         chunk_size=args.chunk_size, prompt_length=args.prompt_length,
                         overwrite=args.overwrite, jit_compile=not args.no_jit)
    except (ValueError, OSError) as error:
        print(f"xladecode: error: {error}", file=sys.stderr)
        return 2
    log(f"exported to {path} in {time.perf_counter() - start:.1f}s "
        f"(saved_model_cli show --all --dir {path})")
    return 0


def _bench(args, lm) -> int:
    """``xladecode bench``: see xladecode/bench.py."""
    from . import bench

    try:
        print(bench.report_for_args(args, lm))
    except ValueError as error:
        print(f"xladecode: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
