"""``xladecode bench``: the table and the JSON have their structure (no timing is asserted)."""

from __future__ import annotations

import json
import math

from xladecode import bench, cli

KEYS = {"batch", "compile_s", "first_call_s", "prefill_s", "prefill_tokens_per_s", "decode_s",
        "decode_tokens_per_s", "generate_s"}


def test_bench_json_table_and_progress(tiny_dir, capsys, monkeypatch):
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    assert cli.main(["bench", "--model", str(tiny_dir), "--batch-sizes", "1,2", "--prompt-length", "3",
                     "--new-tokens", "4", "--repeats", "1", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["model"] == str(tiny_dir) and report["prompt_length"] == 3 and report["new_tokens"] == 4
    assert report["model_shape"] == {"n_layer": 2, "n_head": 2, "n_embd": 16, "vocab_size": 37, "n_positions": 64}
    assert report["persistent_cache"] == {"directory": None, "entries": None, "entries_at_start": None}
    assert [r["batch"] for r in report["results"]] == [1, 2]
    for row in report["results"]:
        assert set(row) == KEYS
        assert all(math.isfinite(v) and v >= 0 for v in row.values())
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
    progress = [line for line in captured.err.splitlines() if line.startswith("[xladecode bench]")]
    assert len(progress) == 7 and "6/6 done" in progress[-1]  # 3 phases per batch size, then done

    table = bench.format_table(report).splitlines()
    heading = next(i for i, line in enumerate(table) if line.split()[:1] == ["batch"])
    assert table[heading].split("  ")[0].strip() == "batch" and "decode tok/s" in table[heading]
    assert [line.split()[0] for line in table[heading + 1:heading + 3]] == ["1", "2"]
    assert "persistent compilation cache: off" in "\n".join(table) and bench.CACHE_FLAG in table[-1]


def test_persistent_cache_is_read_from_tf_xla_flags(tmp_path, monkeypatch):
    (tmp_path / "a.pb").write_text("x")
    monkeypatch.setenv("TF_XLA_FLAGS", f"--tf_xla_enable_lazy_compilation=false {bench.CACHE_FLAG}={tmp_path}")
    assert bench.persistent_cache() == {"directory": str(tmp_path), "entries": 1}
    report = {"model": "m", "model_shape": {}, "dtype": "float32", "jit_compile": True, "device": "CPU",
              "prompt_length": 1, "new_tokens": 1, "repeats": 1, "results": [],
              "persistent_cache": dict(bench.persistent_cache(), entries_at_start=0)}
    assert bench.format_table(report).splitlines()[-1] == (
        f"persistent compilation cache: {tmp_path} (0 files at the start, 1 now; "
        "compiles found there are not repeated)")


def test_bench_rejects_a_length_over_n_positions(tiny_dir, capsys):
    assert cli.main(["bench", "--model", str(tiny_dir), "--prompt-length", "40", "--new-tokens", "40"]) == 2
    captured = capsys.readouterr()
    assert "--new-tokens=40" in captured.err and "n_positions=64" in captured.err and captured.out == ""
