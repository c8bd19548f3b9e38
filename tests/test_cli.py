"""The ``xladecode`` command: text on stdout, diagnostics on stderr, clear errors."""

from __future__ import annotations

import subprocess
import sys

import xladecode
from xladecode import cli


def _run(*args):
    return subprocess.run([sys.executable, "-m", "xladecode.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_help_documents_every_option():
    text = cli.build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    for flag in ("--model", "--max-new-tokens", "--do-sample", "--temperature", "--top-k", "--top-p",
                 "--seed", "--num-beams", "--repetition-penalty", "--no-repeat-ngram-size",
                 "--bad-words", "--min-new-tokens", "--eos-token-id", "--num-return-sequences"):
        assert flag in text


def test_generate_prints_only_text_on_stdout(text_model):
    result = _run("generate", "Hello there", "--model", str(text_model), "--max-new-tokens", "5",
                  "--do-sample", "--seed", "3,4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello there")
    assert "[xladecode]" not in result.stdout and "[xladecode] generated" in result.stderr
    again = _run("generate", "Hello there", "--model", str(text_model), "--max-new-tokens", "5",
                 "--do-sample", "--seed", "3,4")
    assert again.stdout == result.stdout  # seeded: reproducible across processes


def test_cli_matches_python_api(text_model, capsys):
    assert cli.main(["generate", "One", "Two three", "--model", str(text_model), "--max-new-tokens", "4",
                     "--no-do-sample", "--continuation-only"]) == 0
    printed = capsys.readouterr().out.split("\n\n")
    texts = xladecode.load(text_model).generate_text(["One", "Two three"], max_new_tokens=4, do_sample=False)
    assert [p.strip("\n") for p in printed[:2]] == texts


def test_bad_model_path_is_a_clear_error(tmp_path):
    result = _run("generate", "hi", "--model", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "not a folder" in result.stderr and result.stdout == ""


def test_bad_option_value_is_a_clear_error(text_model):
    result = _run("generate", "hi", "--model", str(text_model), "--top-p", "1.5", "--do-sample")
    assert result.returncode == 2 and "top_p=1.5" in result.stderr
