"""``xladecode generate`` streams on a terminal, and its stdout is the same text either way."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from xladecode import cli

REPO = Path(__file__).resolve().parent.parent
ARGV = ["--max-new-tokens", "10", "--do-sample", "--seed", "3,4", "--stream-chunk-size", "2"]


def _expected(capsys, argv) -> str:
    """stdout of the same command without streaming (in this process)."""
    capsys.readouterr()
    assert cli.main(argv + ["--no-stream"]) == 0
    return capsys.readouterr().out


def _run_on_a_terminal(argv) -> tuple[str, str, int]:
    """Runs the CLI with stdout on a pseudo-terminal; reads until the child closes it."""
    master, slave = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "xladecode.cli", *argv], cwd=REPO, stdin=subprocess.DEVNULL,
                             stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not data:
            break
        out += data
    os.close(master)
    err = child.stderr.read()
    child.wait(timeout=600)
    return out.decode().replace("\r\n", "\n"), err.decode(), child.returncode  # the tty writes \n as \r\n


def test_streams_by_default_on_a_terminal(text_model, capsys):
    argv = ["generate", "Hello there", "--model", str(text_model), *ARGV]
    want = _expected(capsys, argv)
    out, err, code = _run_on_a_terminal(argv)
    assert code == 0, err
    assert out == want
    assert "[xladecode] streamed in" in err and "[xladecode]" not in out


class _Recorder:
    """A stdout that keeps every write, to see text arrive in pieces."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text):
        self.writes.append(text)
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


@pytest.mark.parametrize("extra", [[], ["--continuation-only", "--num-return-sequences", "2"]])
def test_forced_stream_prints_what_no_stream_prints(text_model, capsys, monkeypatch, extra):
    argv = ["generate", "Hello there", "Zz 日本", "--model", str(text_model), *ARGV, *extra]
    want = _expected(capsys, argv)
    recorder = _Recorder()
    monkeypatch.setattr(sys, "stdout", recorder)
    assert cli.main(argv + ["--stream"]) == 0
    assert "".join(recorder.writes) == want
    first_row = want.split("\n")[0]
    row_writes = [w for w in recorder.writes[:-1] if w and w != "\n"]
    assert len(row_writes) >= 3 and "".join(row_writes).startswith(first_row)  # the prompt, then pieces


def test_stream_refusals_are_argument_errors(text_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["generate", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"),
                  "--stream"])
    assert exit.value.code == 2 and "--stream is only valid with PROMPTs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        cli.main(["generate", "hi", "--stream-chunk-size", "0"])
    assert exit.value.code == 2 and "--stream-chunk-size=0" in capsys.readouterr().err
    assert cli.main(["generate", "hi", "--model", str(text_model), "--num-beams", "2", "--stream"]) == 2
    captured = capsys.readouterr()
    assert "num_beams=2" in captured.err and captured.out == ""
