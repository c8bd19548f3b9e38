"""Hostile and malformed input to batch jobs and the command line (issue 13, items 4-6, 13-15).

Batch jobs: every bad line is one line in the errors file and the run goes
on; nothing the user owns is overwritten or cut; error positions are exact.
The CLI: invalid UTF-8 in argv is an argument error; ``--help`` and argument
errors never import TensorFlow; a plain run prints only our own lines.

Decoding uses the shapes of ``test_batch.py`` (batch 4, prompts under 16
tokens, 6 new tokens), so the session's ``text_lm`` compiles once.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xladecode
from xladecode import cli, jsonl
from xladecode.batch import generate_file

REPO = Path(__file__).resolve().parent.parent
GREEDY = dict(max_new_tokens=6, do_sample=False)


def run_job(lm, source: Path, out: Path, **kwargs):
    return generate_file(lm, source, out, batch_size=4, progress=False, **GREEDY, **kwargs)


def results(path: Path) -> dict:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len({json.dumps(r["id"]) for r in records}), "an id was written twice"
    return {r["id"]: r for r in records}


def reasons(path: Path) -> dict:
    """line number -> reason, from an errors file."""
    return {r["line"]: r["reason"] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


class _PickyTokenizer:
    """The real tokenizer, except for three prompts a stranger's tokenizer.json could produce."""

    def __init__(self, real):
        self._real = real

    def encode(self, text):
        if text == "BOOM":
            raise Exception("tokenizers said no")  # tokenizers raises bare Exceptions
        if text == "NOTHING":
            return []  # a normalizer that drops everything
        if text == "HUGE":
            return [60000]  # a vocabulary larger than the model's
        return self._real.encode(text)

    def __getattr__(self, name):
        return getattr(self._real, name)


# ------------------------------------------------------------------ item 4
def test_rejected_prompts_are_line_errors_and_their_chunk_is_written(text_lm, tmp_path):
    lm = copy.copy(text_lm)  # shares the compiled functions; only the tokenizer differs
    lm.tokenizer = _PickyTokenizer(text_lm.tokenizer)
    lines = [
        '{"id": "a", "prompt": "To be"}',
        '{"id": "s", "prompt": "a\\ud800b"}',  # a lone surrogate escape: not Unicode text
        '{"id": "b", "prompt": "or not"}',
        '{"id": "\\udcff", "prompt": "that is"}',  # an id that cannot be written as UTF-8
        '{"id": "t", "prompt": "BOOM"}',
        '{"id": "c", "prompt": "the mind"}',
        '{"id": "u", "prompt": "NOTHING"}',
        '{"id": "v", "prompt": "HUGE"}',
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    report = run_job(lm, source, out, chunk_batches=4)  # all in one chunk
    assert set(results(out)) == {"a", "b", "c"} and report.errors == 5
    why = reasons(tmp_path / "out.jsonl.errors.jsonl")
    assert why[2] == ("prompt='a\\ud800b' is invalid: contains a lone surrogate U+D800 at index 1: "
                      "not valid Unicode text")
    assert why[4].startswith("id='\\udcff' is invalid: contains a lone surrogate U+DCFF")
    assert why[5] == "the tokenizer rejected the prompt: Exception: tokenizers said no"
    assert why[7] == "the prompt encodes to no tokens"
    assert why[8].startswith("the tokenizer gave token id 60000, outside the model's vocabulary [0, 50256]")
    # Resume finds everything done and reports nothing twice.
    again = run_job(lm, source, out, resume=True)
    assert (again.written, again.errors, again.skipped) == (0, 0, 3)
    assert len(reasons(tmp_path / "out.jsonl.errors.jsonl")) == 5


def test_generate_text_names_the_bad_prompt(text_lm):
    before = text_lm.compile_count
    with pytest.raises(ValueError, match=r"prompts\[1\]='a\\ud800b' is invalid: contains a lone surrogate "
                                         r"U\+D800 at index 1"):
        text_lm.generate_text(["fine", "a\ud800b"], **GREEDY)
    with pytest.raises(ValueError, match=r"prompts\[0\]=b'hi' is invalid: must be a str, not bytes"):
        text_lm.generate_text([b"hi"], **GREEDY)
    with pytest.raises(ValueError, match=r"prompts\[2\]='' is invalid: must be a non-empty string"):
        text_lm.generate_text(["a", "b", ""], **GREEDY)
    assert text_lm.compile_count == before  # refused before any trace


# ------------------------------------------------------------------ item 5
def _overlapping_paths(tmp_path: Path) -> dict:
    """name -> (input, output, errors) where two of them are one file."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "To be"}\n{"prompt": "or not"}\n')
    (tmp_path / "link.jsonl").symlink_to(source)
    os.link(source, tmp_path / "hard.jsonl")
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "new-target.jsonl")
    return {
        "output is input": (source, source, None),
        "output is a symlink to input": (source, tmp_path / "link.jsonl", None),
        "output is a hard link to input": (source, tmp_path / "hard.jsonl", None),
        "output is input via ..": (source, tmp_path / "sub" / ".." / "in.jsonl", None),
        "errors is input": (source, tmp_path / "o1.jsonl", source),
        "errors is output": (source, tmp_path / "o2.jsonl", tmp_path / "o2.jsonl"),
        "errors and output are one new file": (source, tmp_path / "dangling.jsonl", tmp_path / "new-target.jsonl"),
    }


@pytest.mark.parametrize("resume", [False, True])
def test_overlapping_paths_are_refused_before_anything_is_touched(text_lm, tmp_path, resume):
    (tmp_path / "sub").mkdir()
    for case, (source, out, errors) in _overlapping_paths(tmp_path).items():
        before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        with pytest.raises(ValueError, match="is the same file as") as info:
            run_job(text_lm, source, out, errors_path=errors, resume=resume)
        after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        assert after == before, case  # nothing created, truncated or appended
        assert ("errors_path=" if errors else "output_path=") in str(info.value), (case, info.value)


def test_cli_refuses_overlapping_paths_with_exit_2(text_model, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "To be"}\n' * 3)
    (tmp_path / "link.jsonl").symlink_to(source)
    before = source.read_bytes()
    base = ["generate", "--model", str(text_model), "--max-new-tokens", "6", "--no-progress"]
    for extra in (["--input", str(source), "--output", str(source), "--resume"],
                  ["--input", str(source), "--output", str(tmp_path / "link.jsonl"), "--resume"],
                  ["--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--errors", str(source)]):
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert "xladecode: error: " in err and "is the same file as input_path=" in err, err
    assert source.read_bytes() == before
    assert not (tmp_path / "o.jsonl").exists()


def test_directories_and_foreign_files_are_refused_untouched(text_lm, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "To be"}\n')
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError, match="output_path=.*is a directory"):
        run_job(text_lm, source, tmp_path / "dir")
    with pytest.raises(IsADirectoryError, match="errors_path=.*is a directory"):
        run_job(text_lm, source, tmp_path / "out.jsonl", errors_path=tmp_path / "dir")
    # --resume on a file that is not ours: no line of it is cut.
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nmore notes")
    with pytest.raises(ValueError, match=r"output_path=.*notes.txt.*line 1 is not a record written by xladecode"):
        run_job(text_lm, source, notes, resume=True)
    # ... nor on one whose records are ours but whose middle is not.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"id": 7, "prompt": "x", "completion": "y"}\n{"prompt": "To be"}\n'
                     '{"id": 8, "prompt": "x", "completion": "y"}\n')
    with pytest.raises(ValueError, match="line 2 is not a record written by xladecode"):
        run_job(text_lm, source, mixed, resume=True)
    # An errors file that is someone's data is not overwritten by a fresh run.
    with pytest.raises(ValueError, match="errors_path=.*notes.txt.*not a record written by xladecode"):
        run_job(text_lm, source, tmp_path / "out.jsonl", errors_path=notes)
    assert notes.read_text() == "my notes\nmore notes"
    assert mixed.read_text().count("\n") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "in.jsonl", "mixed.jsonl", "notes.txt"]


def test_devices_are_fine_outputs(text_lm, tmp_path):
    # /dev/null as output and errors: the same "file" twice is harmless, and fsync is skipped.
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "To be"}\n[1]\n')
    report = run_job(text_lm, source, Path(os.devnull), errors_path=Path(os.devnull))
    assert (report.written, report.errors) == (1, 1)


# ------------------------------------------------------------------ item 6 and other line formats
def test_line_formats_and_exact_error_positions(text_lm, tmp_path):
    huge = '{"id": "big", "prompt": "' + "x" * jsonl.MAX_LINE_BYTES + '"}'
    lines = [
        b'\xef\xbb\xbf{"id": "bom", "prompt": "To be"}\n',  # 1: a BOM at the start of the file is fine
        b'{"id": "crlf", "prompt": "or not"}\r\n',  # 2: CRLF line end
        b'{"prompt": "x"\n',  # 3: unfinished: the error is where the text stops, not after the newline
        b'{"prompt": "x"\r\n',  # 4: the same with CRLF
        b'\xef\xbb\xbf{"prompt": "x"}\n',  # 5: a BOM anywhere else is an error
        b'{"prompt": "a\x00b"}\n',  # 6: a raw NUL inside a string
        b'{"id": "nul", "prompt": "a\\u0000b"}\n',  # 7: an escaped NUL is text like any other
        b'[1, 2]\n', b'3\n', b'null\n', b'"text"\n', b'true\n',  # 8-12: not objects
        b'{"id": 1.5, "prompt": "x"}\n', b'{"id": true, "prompt": "x"}\n',  # 13, 14
        b'{"id": [1], "prompt": "x"}\n', b'{"id": null, "prompt": "x"}\n',  # 15, 16
        b'{"id": "d", "prompt": "x", "prompt": "y"}\n',  # 17: a key given twice
        b'{"prompt": "x", "seed": true}\n', b'{"prompt": "x", "seed": 4294967296}\n',  # 18, 19
        b'{"prompt": "x", "seed": [1, 2, 3]}\n',  # 20
        b'[' * 200_000 + b'\n',  # 21: nested too deep for the parser
        b'{"id": 1' + b'0' * 5000 + b', "prompt": "x"}\n',  # 22: an integer over Python's digit limit
        huge.encode() + b'\n',  # 23: longer than MAX_LINE_BYTES: reported, never held whole
        b'{"id": 100000000000000000000000000000, "prompt": "the mind", "extra": {"kept": false}}\n',  # 24
        b'\xc3\x28\n',  # 25: invalid UTF-8
        b'   \n',  # 26: blank: skipped silently
        b'{"id": "last", "prompt": "to suffer"}',  # 27: no newline at the end of the file
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(lines))
    out = tmp_path / "out.jsonl"
    report = run_job(text_lm, source, out)
    written = results(out)
    assert set(written) == {"bom", "crlf", "nul", 10**29, "last"}
    assert written["nul"]["prompt"] == "a\x00b" and written["crlf"]["prompt"] == "or not"
    why = reasons(tmp_path / "out.jsonl.errors.jsonl")
    assert report.errors == len(why) == 21
    assert why[3] == why[4] == "invalid JSON: Expecting ',' delimiter at column 15"
    assert why[5] == "invalid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig) at column 1"
    assert why[6] == "invalid JSON: Invalid control character at column 14"
    assert [why[n] for n in range(8, 13)] == [f"expected a JSON object, got {kind}" for kind in
                                              ("an array", "a number", "null", "a string", "true")]
    assert why[13] == "id=1.5 is invalid: must be a string or an integer"
    assert why[14] == "id=True is invalid: must be a string or an integer"
    assert why[15] == "id=[1] is invalid: must be a string or an integer"
    assert why[16] == "id=None is invalid: must be a string or an integer"
    assert why[17] == "invalid JSON object: key 'prompt' appears twice"
    assert all("seed" in why[n] for n in (18, 19, 20)), why
    assert why[21] == "invalid JSON: nested too deeply"
    assert why[22].startswith("invalid JSON: Exceeds the limit (4300 digits)")
    assert why[23] == f"line longer than {jsonl.MAX_LINE_BYTES} bytes (not read)"
    assert why[25] == "invalid UTF-8 at byte 1 of the line"


def test_crlf_file_gives_the_same_results_as_lf(text_lm, tmp_path):
    body = ['{"id": 1, "prompt": "To be"}', '{"id": 2, "prompt": "or not to be"}']
    (tmp_path / "lf.jsonl").write_bytes(("\n".join(body) + "\n").encode())
    (tmp_path / "crlf.jsonl").write_bytes(("\r\n".join(body) + "\r\n").encode())
    run_job(text_lm, tmp_path / "lf.jsonl", tmp_path / "lf.out")
    run_job(text_lm, tmp_path / "crlf.jsonl", tmp_path / "crlf.out")
    assert results(tmp_path / "lf.out") == results(tmp_path / "crlf.out")
    assert len(results(tmp_path / "lf.out")) == 2


def test_read_lines_bounds_every_line():
    import io
    data = b"a\n" + b"b" * 10 + b"\n" + b"c" * 11 + b"\nd" + b"e" * 20
    assert list(jsonl.read_lines(io.BytesIO(data), max_bytes=10)) == [
        (1, b"a\n"), (2, b"b" * 10 + b"\n"), (3, None), (4, None)]
    assert list(jsonl.read_lines(io.BytesIO(b"x" * 10), max_bytes=10)) == [(1, b"x" * 10)]


def test_errors_file_records_stay_valid_json_whatever_the_text():
    # A record that cannot be UTF-8 is written with \u escapes instead of crashing the writer.
    line = jsonl.dumps({"id": "\udcff", "reason": "é"})
    assert line == '{"id": "\\udcff", "reason": "\\u00e9"}\n' and json.loads(line)["reason"] == "é"
    assert jsonl.dumps({"id": 1, "reason": "é"}) == '{"id": 1, "reason": "é"}\n'


# ------------------------------------------------------------------ items 13 and 14: the CLI
def _python(code: str, *args, env=None):
    environment = dict(os.environ, PYTHONPATH=str(REPO)) if env is None else env
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=environment,
                          capture_output=True, timeout=600)


_NO_TENSORFLOW = """
import contextlib, io, json, sys
from xladecode import cli
runs = {}
for name, argv in {"help": ["--help"], "generate help": ["generate", "--help"],
                   "export help": ["export", "--help"], "bench help": ["bench", "--help"],
                   "bad batch sizes": ["bench", "--batch-sizes", "1,0"], "no prompt": ["generate"],
                   "bad int": ["generate", "hi", "--max-new-tokens", "many"],
                   "empty prompt": ["generate", ""], "surrogate": ["generate", "a\\ud800"],
                   "both": ["generate", "hi", "--input", "x.jsonl"], "nothing": []}.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(argv)
        except SystemExit as exit:
            runs[name] = {"code": exit.code, "out": out.getvalue(), "err": err.getvalue()}
import xladecode
public = sorted(xladecode.__all__)
print(json.dumps({"runs": runs, "tensorflow": "tensorflow" in sys.modules, "public": public}))
"""


def test_help_and_argument_errors_do_not_import_tensorflow():
    run = _python(_NO_TENSORFLOW)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    got = json.loads(run.stdout)
    assert got["tensorflow"] is False
    runs = got["runs"]
    assert runs["help"]["code"] == 0 and runs["help"]["out"].startswith("usage: xladecode")
    assert "{generate,export,bench}" in runs["help"]["out"]
    assert runs["generate help"]["code"] == 0 and "--verbose" in runs["generate help"]["out"]
    assert "--max-new-tokens" in runs["generate help"]["out"] and "--input" in runs["generate help"]["out"]
    assert runs["export help"]["code"] == 0 and "--strategy" in runs["export help"]["out"]
    assert runs["bench help"]["code"] == 0 and "--batch-sizes" in runs["bench help"]["out"]
    assert "--stream" in runs["generate help"]["out"]
    for name in ("bad batch sizes", "no prompt", "bad int", "empty prompt", "surrogate", "both", "nothing"):
        assert runs[name]["code"] == 2, (name, runs[name])
        assert runs[name]["out"] == "" and "error: " in runs[name]["err"], (name, runs[name])
    assert "xladecode: error: PROMPT 1 is empty" in runs["empty prompt"]["err"]
    assert "PROMPT 1 is not valid UTF-8 text (lone surrogate U+D800 at character 1)" in runs["surrogate"]["err"]
    assert got["public"] == sorted(["load", "LanguageModel", "GenerateOutput", "DecoderModel", "Tokenizer",
                                    "default_model_path"])


def test_invalid_utf8_in_argv_is_an_argument_error():
    # Real bytes from the shell: Python decodes them with surrogateescape.
    for argv, expected in (([b"generate", b"\xff\xfe"], "PROMPT 1 is not valid UTF-8 text (byte 0xff at character 0)"),
                           ([b"generate", b"ok", b"--bad-words", b"caf\xe9"],
                            "--bad-words #1 is not valid UTF-8 text (byte 0xe9 at character 3)")):
        run = subprocess.run([sys.executable, b"-m", b"xladecode.cli", *argv], cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, timeout=600)
        err = run.stderr.decode()
        assert run.returncode == 2 and "Traceback" not in err, err
        assert f"xladecode: error: {expected}" in err and run.stdout == b""


def test_lazy_package_keeps_its_public_names():
    from xladecode import lm, protocol, tokenizer
    assert xladecode.load is lm.load and xladecode.LanguageModel is lm.LanguageModel
    assert xladecode.GenerateOutput is lm.GenerateOutput
    assert xladecode.default_model_path is lm.default_model_path
    assert xladecode.DecoderModel is protocol.DecoderModel and xladecode.Tokenizer is tokenizer.Tokenizer
    assert xladecode.debug.step_through  # submodules resolve as attributes, as before
    assert set(xladecode.__all__) <= set(dir(xladecode))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        xladecode.nope


def test_plain_generate_prints_only_our_lines(text_model):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}  # the CLI's own defaults
    env["PYTHONPATH"] = str(REPO)
    run = subprocess.run([sys.executable, "-m", "xladecode.cli", "generate", "ROMEO:", "--model", str(text_model),
                          "--max-new-tokens", "4", "--no-do-sample"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    expected = xladecode.load(text_model).generate_text("ROMEO:", max_new_tokens=4, do_sample=False)[0]
    assert run.stdout == "ROMEO:" + expected + "\n"
    lines = run.stderr.splitlines()
    assert 1 <= len(lines) <= 2 and all(line.startswith("[xladecode] ") for line in lines), run.stderr


_VERBOSE = """
import os, sys
from xladecode import cli
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
levels = []
for flags in (["--verbose"], []):
    assert cli.main(["generate", "hi", "--model", sys.argv[1], *flags]) == 2
    levels.append(os.environ["TF_CPP_MIN_LOG_LEVEL"])
print(levels)
"""


def test_verbose_leaves_tensorflow_logging_alone(tmp_path):
    run = _python(_VERBOSE, str(tmp_path / "no-model"))  # fails at load, after TensorFlow is imported
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert run.stdout.decode().split() == ["['0',", "'3']"]
    assert run.stderr.decode().count("xladecode: error:") == 2
