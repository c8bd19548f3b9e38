"""The guided tour's examples run, and the facts they print hold."""

import subprocess
import sys
from pathlib import Path

TOUR = Path(__file__).resolve().parent.parent / "tools" / "tour.py"


def test_tour_runs_and_its_claims_hold():
    result = subprocess.run([sys.executable, str(TOUR), "--quick"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for fact in ("Python floats 0.5, 0.7, 0.9 -> traces: 3",
                 "tensors 0.5, 0.7, 0.9 -> traces: 1",
                 "new temperature/top_p/seed values -> new compiles: 0",
                 "(same length bucket, 16) -> new compiles: 0",
                 "(next bucket, 32) -> new compiles: 1",
                 "the cache is [7.0, 8.0, 0.0, 0.0] with shape (1, 1, 4, 1)",
                 "mask [0, 0, 1, 1, 1] -> positions [0, 0, 0, 1, 2]",
                 "same continuation with and without 3 pad tokens: True",
                 "scores are sorted best first: True",
                 "each row's sample unchanged: True",
                 "cache rows [[7.0, 7.0, 0.0, 0.0], [0.0, 0.0, 7.0, 7.0]]",
                 "same tokens as plain greedy: True",
                 "chunk_size=5, 16 new tokens -> chunks of [5, 5, 5, 1] tokens",
                 "streamed tokens == generate's tokens: True",
                 "another chunk size -> new compiles: 0"):
        assert fact in out, f"tour no longer shows: {fact}\n{out}"
    row0 = out.split("row 0 after its EOS: ")[1].split(" (")[0]
    assert set(eval(row0)) == {0}
