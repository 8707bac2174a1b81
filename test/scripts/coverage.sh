#!/bin/bash
# make coverage (after a --coverage build and check.sh with FINTX_COVERAGE=1):
# collects the .gcda files the servers wrote under GCOV_PREFIX, writes coverage.info and
# an HTML report in coverage/, and prints line coverage per C file.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PREFIX=/tmp/fintx-gcov
if [ -d "$PREFIX$ROOT/src" ]; then
    cp -f "$PREFIX$ROOT"/src/*.gcda src/ 2>/dev/null || true
fi
lcov --quiet --capture --directory src --base-directory "$ROOT" --output-file coverage.info --rc lcov_branch_coverage=0
lcov --quiet --extract coverage.info "$ROOT/src/*" --output-file coverage.info
genhtml --quiet coverage.info --output-directory coverage >/dev/null
echo "== line coverage of the C code (details: coverage/index.html)"
lcov --list coverage.info | sed -n '/Filename/,$p'
