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


# In-process (cli.main): these are about the message and the exit status, not the process.
def test_bad_model_path_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["generate", "hi", "--model", str(tmp_path / "nope")]) == 2
    out, err = capsys.readouterr()
    assert "not a folder" in err and out == ""


def test_bad_option_value_is_a_clear_error(text_model, capsys):
    assert cli.main(["generate", "hi", "--model", str(text_model), "--top-p", "1.5", "--do-sample"]) == 2
    out, err = capsys.readouterr()
    assert "top_p=1.5" in err and out == ""


def test_new_sampler_flags_and_repeatable_stop():
    parser = cli.build_parser()
    text = parser._subparsers._group_actions[0].choices["generate"].format_help()
    for flag in ("--min-p", "--typical-p", "--epsilon-cutoff", "--eta-cutoff", "--renormalize-logits",
                 "--stop", "--keep-stop"):
        assert flag in text
    assert "--sequence-bias" not in text and "--stop-strings" not in text  # see cli.CLI_EXCLUDED
    args = parser.parse_args(["generate", "hi", "--min-p", "0.1", "--typical-p", "0.9", "--stop", "\n\n",
                              "--stop", "JULIET:", "--renormalize-logits"])
    assert cli.option_values(args) == {"min_p": 0.1, "typical_p": 0.9, "renormalize_logits": True}
    assert args.stop == ["\n\n", "JULIET:"] and not args.keep_stop


def test_stop_flag_matches_python_api(text_model, capsys):
    stops = ["6646", "y a", " the", "e"]
    assert cli.main(["generate", "ROMEO:", "The", "--model", str(text_model), "--max-new-tokens", "8",
                     "--no-do-sample", "--continuation-only"] + [a for s in stops for a in ("--stop", s)]) == 0
    printed = capsys.readouterr().out.split("\n\n")
    texts = xladecode.load(text_model).generate_text(["ROMEO:", "The"], max_new_tokens=8, do_sample=False,
                                                     stop_strings=stops)
    assert [p.strip("\n") for p in printed[:2]] == texts
