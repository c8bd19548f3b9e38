#!/usr/bin/env bash
# Check one mutant against chosen tests, outside `mutmut run` (tools/results/mutation.md).
#
#   tools/mutation_check.sh MUTANTS_DIR MUTANT_NAME PYTEST_ARGS...
#
# MUTANTS_DIR is mutmut's `mutants/` folder or a copy of it (a copy lets the
# check run while mutmut works on its own). The repository's current tests are
# copied in first, so a test written after the run is checked against the
# mutant. Prints "killed" (a test failed) or "survived", and exits 0 either way;
# any other pytest outcome (collection error, usage error) is printed and exits 2.
set -u
dir=$(cd "$1" && pwd) || { echo "no such folder: $1"; exit 2; }
name=$2; shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
# The tests folder in MUTANTS_DIR is replaced below: never let that be the repository's own.
if [ "$dir" = "$repo" ] || [ ! -d "$dir/xladecode" ]; then
  echo "MUTANTS_DIR must be mutmut's mutants/ folder or a copy of it, not $dir"; exit 2
fi
rm -rf "$dir/tests" && cp -r "$repo/tests" "$dir/tests"
cd "$dir" || exit 2
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \
  TF_CPP_MIN_LOG_LEVEL=3 XLADECODE_TEST_EAGER="${XLADECODE_TEST_EAGER-1}" \
  MUTANT_UNDER_TEST="$name" PYTHONPATH="$dir" \
  python -m pytest -q -x -n 0 -p no:cacheprovider "$@" > "$dir/.check.log" 2>&1
rc=$?
case $rc in
  0) echo "survived $name";;
  1) echo "killed $name";;
  *) echo "error $rc $name"; tail -20 "$dir/.check.log"; exit 2;;
esac
