"""Summarise a mutmut run: counts per file and one line per surviving (or untested) mutant.

Usage (from the repository root, after ``mutmut run``; see tools/results/mutation.md)::

    python tools/mutation_summary.py            # counts per file
    python tools/mutation_summary.py --list     # ... and each survivor's changed line

Reads mutmut's own result files (``mutants/xladecode/*.py.meta``) and, for
``--list``, asks ``mutmut show`` for each survivor's diff. Exit codes are
mutmut's: 1 killed, 0 survived, 33 no test calls the function, negative or
24/152 a timeout, None not run yet.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
from pathlib import Path

STATUS = {0: "survived", 1: "killed", 33: "no tests", None: "not run", -24: "timeout", 24: "timeout",
          152: "timeout", -9: "killed by signal 9", 34: "skipped"}


def results(root: Path) -> dict[str, dict[str, int | None]]:
    """``{file: {mutant name: exit code}}`` from mutmut's ``.meta`` files."""
    out = {}
    for meta in sorted((root / "mutants" / "xladecode").glob("*.py.meta")):
        out[meta.name.removesuffix(".meta")] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def changed_lines(name: str) -> str:
    """The ``+`` lines of ``mutmut show NAME``, whitespace squeezed."""
    diff = subprocess.run(["mutmut", "show", name], capture_output=True, text=True).stdout
    added = [" ".join(line[1:].split()) for line in diff.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(added)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="one line per survivor and untested mutant")
    p.add_argument("--root", type=Path, default=Path("."))
    args = p.parse_args(argv)
    total = collections.Counter()
    for file, codes in results(args.root).items():
        counts = collections.Counter(STATUS.get(code, str(code)) for code in codes.values())
        total += counts
        print(f"{file}: {len(codes)} mutants, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if args.list:
            for name, code in codes.items():
                if code in (0, 33):
                    print(f"  {STATUS[code]:9s} {name}: {changed_lines(name)}")
    print("total: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))


if __name__ == "__main__":
    main()
