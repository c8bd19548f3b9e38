"""Batch jobs over JSONL files (``xladecode.batch``): same results as one prompt at a
time, whatever the batching; resumable after a kill; bad lines reported, not fatal.

Every test uses the same shapes (batch 4, prompts of 2-3 tokens -> width 16,
6 new tokens) on the session's ``text_lm``, so they share a few compiles.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from xladecode import batch, cli
from xladecode.batch import generate_file, line_seed

REPO = Path(__file__).resolve().parent.parent

PROMPTS = ["To be", "or not", "that is", "the question", "Whether tis", "nobler in", "the mind",
           "to suffer", "the slings"]  # 2 or 3 tokens each
GREEDY = dict(max_new_tokens=6, do_sample=False)
SAMPLE = dict(max_new_tokens=6, do_sample=True, top_k=20)
SEED = (3, 4)


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read_results(path: Path) -> dict:
    """id -> completion, checking that every id appears exactly once."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"an id was written twice: {sorted(ids)}"
    return {r["id"]: r["completion"] for r in records}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    # No "id": ids are line numbers. Line 2 carries its own seed.
    lines = [{"prompt": p} for p in PROMPTS]
    lines[1]["seed"] = [7, 8]
    return write_lines(tmp_path_factory.mktemp("batch") / "prompts.jsonl", lines)


@pytest.fixture(scope="module")
def greedy_results(text_lm, prompts_file, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("greedy") / "out.jsonl"
    report = generate_file(text_lm, prompts_file, out, batch_size=4, progress=False, **GREEDY)
    assert (report.written, report.batches, report.errors) == (9, 3, 0)
    return read_results(out)


@pytest.fixture(scope="module")
def sampled_results(text_lm, prompts_file, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sampled") / "out.jsonl"
    generate_file(text_lm, prompts_file, out, batch_size=4, progress=False, seed=SEED, **SAMPLE)
    return read_results(out)


def test_results_equal_single_prompt_generate_text(text_lm, greedy_results, sampled_results):
    assert sorted(greedy_results) == list(range(1, 10))
    for line, prompt in enumerate(PROMPTS, start=1):
        assert greedy_results[line] == text_lm.generate_text(prompt, **GREEDY)[0]
        seed = (7, 8) if line == 2 else line_seed(SEED, line)  # the line's own seed wins
        assert sampled_results[line] == text_lm.generate_text(prompt, seed=seed, **SAMPLE)[0]
    assert len(set(sampled_results.values())) > 1


def test_shuffled_input_gives_the_same_results(text_lm, sampled_results, tmp_path):
    # Other neighbours, other batches, other padding: the same id -> completion map.
    lines = [{"id": i, "prompt": p} | ({"seed": [7, 8]} if i == 2 else {})
             for i, p in enumerate(PROMPTS, start=1)]
    random.Random(0).shuffle(lines)
    source = write_lines(tmp_path / "shuffled.jsonl", lines)
    generate_file(text_lm, source, tmp_path / "out.jsonl", batch_size=4, progress=False, seed=SEED,
                  chunk_batches=1, **SAMPLE)  # chunks of 4 lines: batches differ from the unshuffled run
    assert read_results(tmp_path / "out.jsonl") == sampled_results


def test_output_is_written_batch_by_batch_in_length_order(text_lm, prompts_file, tmp_path):
    seen = []
    generate_file(text_lm, prompts_file, tmp_path / "out.jsonl", batch_size=4, progress=False,
                  on_batch=lambda report: seen.append(len((tmp_path / "out.jsonl").read_text().splitlines())),
                  **GREEDY)
    assert seen == [4, 8, 9]  # each batch is on disk when the next starts
    order = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    lengths = [len(text_lm.tokenizer.encode(PROMPTS[i - 1])) for i in order]
    assert lengths == sorted(lengths)  # one chunk, sorted by token length


def test_resume_after_a_kill_completes_the_rest_exactly_once(text_lm, prompts_file, greedy_results, tmp_path):
    out = tmp_path / "out.jsonl"

    class Killed(Exception):
        pass

    def killed_after_first_batch(report):
        raise Killed  # as if the process died right after batch 1 was saved

    with pytest.raises(Killed):
        generate_file(text_lm, prompts_file, out, batch_size=4, progress=False,
                      on_batch=killed_after_first_batch, **GREEDY)
    assert len(out.read_text().splitlines()) == 4
    report = generate_file(text_lm, prompts_file, out, batch_size=4, progress=False, resume=True, **GREEDY)
    assert (report.skipped, report.written) == (4, 5)
    assert read_results(out) == greedy_results


def test_resume_cuts_a_truncated_last_line(text_lm, prompts_file, greedy_results, tmp_path):
    lines = [json.dumps({"id": i, "prompt": PROMPTS[i - 1], "completion": greedy_results[i]})
             for i in (1, 2, 3)]
    out = tmp_path / "out.jsonl"
    out.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:15])  # killed mid-write
    report = generate_file(text_lm, prompts_file, out, batch_size=4, progress=False, resume=True, **GREEDY)
    assert (report.skipped, report.written) == (2, 7)  # line 3's half-written result is redone
    assert read_results(out) == greedy_results


def test_existing_output_needs_resume(text_lm, prompts_file, tmp_path):
    out = write_lines(tmp_path / "out.jsonl", [{"id": 1, "prompt": "x", "completion": "y"}])
    before = out.read_text()
    with pytest.raises(FileExistsError, match="resume"):
        generate_file(text_lm, prompts_file, out, progress=False, **GREEDY)
    assert out.read_text() == before


def test_malformed_lines_are_reported_and_the_run_goes_on(text_lm, tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "prompt": "To be"}),
        "{not json",
        json.dumps({"id": "b"}),
        json.dumps({"id": "c", "prompt": ""}),
        json.dumps({"id": "d", "prompt": "word " * 70}),  # 70 tokens + 6 > n_positions=64
        json.dumps({"id": "a", "prompt": "or not"}),
        json.dumps(["a list"]),
        json.dumps({"id": "e", "prompt": "that is", "seed": "abc"}),
        json.dumps({"id": 1.5, "prompt": "the mind"}),
        "",  # blank lines are skipped silently
        json.dumps({"id": "f", "prompt": "the question"}),
    ]
    source.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "g", "prompt": "\xff"}\n')
    out = tmp_path / "out.jsonl"
    report = generate_file(text_lm, source, out, batch_size=4, progress=False, **GREEDY)
    assert set(read_results(out)) == {"a", "f"}
    errors = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    reasons = {e["line"]: e["reason"] for e in errors}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 12] and report.errors == 9
    assert "invalid JSON" in reasons[2]
    assert "missing \"prompt\"" in reasons[3]
    assert "prompt='' is invalid: must be a non-empty string" in reasons[4]
    assert "too long" in reasons[5] and "n_positions=64" in reasons[5]
    assert "duplicate id 'a' (first on line 1)" in reasons[6]
    assert "JSON object" in reasons[7]
    assert "seed" in reasons[8]
    assert "id=1.5" in reasons[9]
    assert "UTF-8" in reasons[12]
    # A resumed run neither redoes results nor reports the same lines twice.
    report = generate_file(text_lm, source, out, batch_size=4, progress=False, resume=True, **GREEDY)
    assert (report.written, report.errors, report.skipped) == (0, 0, 2)
    assert len((tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()) == 9


def test_unreadable_input_is_a_clear_error(text_lm, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot read input_path=.*nope.jsonl"):
        generate_file(text_lm, tmp_path / "nope.jsonl", tmp_path / "out.jsonl", progress=False)
    with pytest.raises(IsADirectoryError, match="cannot read input_path"):
        generate_file(text_lm, tmp_path, tmp_path / "out.jsonl", progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_options_fail_before_anything_is_written(text_lm, prompts_file, tmp_path):
    with pytest.raises(ValueError, match="top_p=1.5"):
        generate_file(text_lm, prompts_file, tmp_path / "out.jsonl", do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="batch_size=0"):
        generate_file(text_lm, prompts_file, tmp_path / "out.jsonl", batch_size=0)
    with pytest.raises(ValueError, match="temprature"):
        generate_file(text_lm, prompts_file, tmp_path / "out.jsonl", temprature=0.5)
    assert not (tmp_path / "out.jsonl").exists()


def test_disk_error_is_clear_and_loses_nothing(text_lm, prompts_file, greedy_results, tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    real_write = batch._ResultWriter.write_batch
    calls = []

    def disk_full_on_second_batch(self, data):
        calls.append(len(data))
        if len(calls) == 2:
            self._out.write(data[:10])  # half a line reaches the disk, then ENOSPC
            self._out.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(batch._ResultWriter, "write_batch", disk_full_on_second_batch)
    with pytest.raises(OSError, match=r"(?s)out\.jsonl.*No space left.*4 result\(s\).*resume") as info:
        generate_file(text_lm, prompts_file, out, batch_size=4, progress=False, **GREEDY)
    assert info.value.errno == errno.ENOSPC
    saved = out.read_text().splitlines()
    assert len(saved) == 5 and all(json.loads(line) for line in saved[:4])  # batch 1 intact
    monkeypatch.setattr(batch._ResultWriter, "write_batch", real_write)
    generate_file(text_lm, prompts_file, out, batch_size=4, progress=False, resume=True, **GREEDY)
    assert read_results(out) == greedy_results


def test_stop_strings_cut_like_generate_text_and_keep_stop_keeps_them(text_lm, text_model, prompts_file,
                                                                       greedy_results, tmp_path):
    # Stop strings cut from the job's own greedy texts, so that they are hit mid-way.
    stops = sorted({text[2:4] for text in greedy_results.values() if len(text) >= 6})[:3]
    opts = dict(GREEDY, stop_strings=stops)
    base = ["generate", "--input", str(prompts_file), "--model", str(text_model), "--no-progress",
            "--max-new-tokens", "6", "--no-do-sample", "--batch-size", "4"] + [f"--stop={s}" for s in stops]
    for keep in (False, True):
        out = tmp_path / f"keep{keep}.jsonl"
        assert cli.main(base + ["--output", str(out)] + (["--keep-stop"] if keep else [])) == 0
        got = read_results(out)
        texts = text_lm.generate_text(PROMPTS, trim_stop_strings=not keep, **opts)  # greedy: batch-invariant
        want = dict(enumerate(texts, start=1))
        assert got == want
        stopped = [line for line, text in greedy_results.items() if any(s in text for s in stops)]
        assert stopped  # the strings were hit: the rows below ended on them
        for line in stopped:
            assert len(got[line]) < len(greedy_results[line]) or keep
            assert any(s in got[line] for s in stops) == keep


def test_cli_needs_exactly_one_of_prompt_or_input(capsys):
    for argv in (["generate"], ["generate", "hi", "--input", "x.jsonl", "--output", "y.jsonl"],
                 ["generate", "--input", "x.jsonl"], ["generate", "hi", "--resume"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    assert "--input" in capsys.readouterr().err


# Runs the real CLI. Its second batch announces itself on stdout (the CLI prints
# nothing else there in batch mode) and waits for a signal: the test's SIGINT
# lands mid-job by construction, however busy the machine.
_INTERRUPTIBLE_CLI = """
import signal, sys
# A job started in the background by a shell without job control inherits SIGINT
# ignored, and Python then installs no KeyboardInterrupt handler: restore it.
signal.signal(signal.SIGINT, signal.default_int_handler)
from xladecode import lm
generate = lm.LanguageModel.generate
calls = []
def generate_then_wait_for_sigint(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # batch 1 is written and fsync-ed before batch 2 starts
        print("batch 2 started", flush=True)
        signal.pause()  # Python's SIGINT handler raises KeyboardInterrupt here (or before, if early)
    return generate(self, *args, **kwargs)
lm.LanguageModel.generate = generate_then_wait_for_sigint
from xladecode.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_keeps_finished_batches_and_resume_finishes(text_model, prompts_file, greedy_results, tmp_path):
    out = tmp_path / "out.jsonl"
    args = ["generate", "--input", str(prompts_file), "--output", str(out), "--model", str(text_model),
            "--batch-size", "4", "--max-new-tokens", "6", "--no-do-sample"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    job = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE_CLI, *args], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(600, job.kill)  # a safety net against a hang, not a timing assumption
    watchdog.start()
    try:
        marker = job.stdout.readline()  # blocks until batch 2 starts (or the job dies: "")
        if marker != "batch 2 started\n":
            job.kill()
            pytest.fail(f"no marker from the job: {marker!r} {job.communicate()}")
        job.send_signal(signal.SIGINT)
        _, stderr = job.communicate()
    finally:
        watchdog.cancel()
        job.kill()  # no-op once it has exited; never leave a blocked job behind
    assert job.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr
    assert len(read_results(out)) == 4  # batch 1 exactly: whole batches only
    assert cli.main(args + ["--resume", "--no-progress"]) == 0
    assert read_results(out) == greedy_results
