#!/bin/bash
# make check: runs every suite against throwaway clusters and writes test_results.json.
#   1. pg_regress   sql/*.sql -> expected/*.out
#   2. pgTAP        test/pgtap/*.sql through pg_prove
#   3. TAP          test/t/*.pl with PostgreSQL::Test::Cluster (crash, concurrency)
#   4. valgrind     the regression SQL in a single-user backend under memcheck
# Exit status is non-zero if any test failed. Set FINTX_SUITES="regress pgtap tap" to choose.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
source test/scripts/cluster.sh

SUITES=${FINTX_SUITES:-regress pgtap tap valgrind}
OUT=$ROOT/results
rm -rf "$OUT"; mkdir -p "$OUT"
# until the run writes its own, the machine-readable result says the harness failed: a build
# or cluster failure (which exits early) must not leave an old, green test_results.json behind
cat > "$ROOT/test_results.json" <<'JSON'
{"exitcode": 1, "summary": {"passed": 0, "failed": 1, "total": 1, "collected": 1},
 "tests": [{"nodeid": "harness", "outcome": "failed", "duration": 0,
            "call": {"outcome": "failed", "duration": 0, "longrepr": "make check stopped before it ran the suites (see its output)"}}]}
JSON
# every runner gets a time limit: a hung test must fail the run, not use up CI's time
T_FILE=${FINTX_TIMEOUT_FILE:-900}
[[ "$T_FILE" =~ ^[1-9][0-9]*$ ]] || { echo "FINTX_TIMEOUT_FILE must be a positive number of seconds"; exit 1; }
WORK=$(mktemp -d /tmp/fintx-check.XXXXXX)
chmod 755 "$WORK"
trap 'cluster_stop; rm -rf "$WORK"' EXIT
INDEX=$OUT/index.tsv          # suite <TAB> name <TAB> rc <TAB> ms <TAB> log
: > "$INDEX"
now_ms() { date +%s%3N; }

# coverage builds: server processes (another OS user when run as root) write .gcda files
# under GCOV_PREFIX; test/scripts/coverage.sh collects them
if [ -n "${FINTX_COVERAGE:-}" ]; then
    export GCOV_PREFIX=/tmp/fintx-gcov GCOV_PREFIX_STRIP=0
    rm -rf "$GCOV_PREFIX"; mkdir -p "$GCOV_PREFIX"; chmod 777 "$GCOV_PREFIX"
fi

REGRESS_TESTS=$(sed -n 's/^REGRESS *= *//p' Makefile)

cluster_start "$WORK/pg" "fintx.database = 'fintx_regress'" "fintx.expire_interval = '1h'" || exit 1
echo "== throwaway cluster on port $PGPORT (shared_preload_libraries = 'fintx')"

if [[ " $SUITES " == *" regress "* ]]; then
    echo "== pg_regress"
    "$PGBIN/createdb" fintx_regress
    start=$(now_ms)
    timeout -k 30 "$T_FILE" "$PGXS_LIB/src/test/regress/pg_regress" --inputdir="$ROOT" --outputdir="$OUT/regress" \
        --bindir="$PGBIN" --host="$PGHOST" --port="$PGPORT" --user=postgres \
        --use-existing --dbname=fintx_regress $REGRESS_TESTS 2>&1 | tee "$OUT/regress.log"
    rc=${PIPESTATUS[0]}
    printf 'regress\tpg_regress\t%s\t%s\t%s\n' "$rc" "$(( $(now_ms) - start ))" "$OUT/regress.log" >> "$INDEX"
    [ -f "$OUT/regress/regression.diffs" ] && cat "$OUT/regress/regression.diffs"
fi

if [[ " $SUITES " == *" pgtap "* ]]; then
    echo "== pgTAP (pg_prove)"
    "$PGBIN/createdb" fintx_tap
    for f in test/pgtap/*.sql; do
        [ -e "$f" ] || continue
        log=$OUT/pgtap-$(basename "$f" .sql).log
        start=$(now_ms)
        timeout -k 30 "$T_FILE" pg_prove --psql-bin "$PGBIN/psql" -v -h "$PGHOST" -p "$PGPORT" -U postgres \
            -d fintx_tap "$f" > "$log" 2>&1
        rc=$?
        printf 'pgtap\t%s\t%s\t%s\t%s\n' "$f" "$rc" "$(( $(now_ms) - start ))" "$log" >> "$INDEX"
        if [ $rc -eq 0 ]; then echo "ok     $f"; else echo "FAILED $f"; cat "$log"; fi
    done
fi
cluster_stop

if [[ " $SUITES " == *" tap "* ]]; then
    echo "== TAP (PostgreSQL::Test::Cluster)"
    TAPWORK=$WORK/tap
    mkdir -p "$TAPWORK"
    cp -r test/t "$TAPWORK/t"
    [ -d test/perl ] && cp -r test/perl "$TAPWORK/perl"
    # the documentation tests (030, 031) read the pages; the source tree may not be
    # readable by the cluster's OS user (root's clone in CI)
    cp -r docs "$TAPWORK/docs"
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$TAPWORK"
    for f in test/t/*.pl; do
        [ -e "$f" ] || continue
        name=$(basename "$f")
        # FINTX_TAP="012 013" runs only those TAP files (for development)
        if [ -n "${FINTX_TAP:-}" ] && [[ " $FINTX_TAP " != *" ${name:0:3} "* ]]; then continue; fi
        log=$OUT/tap-${name%.pl}.log
        mkdir -p "$TAPWORK/run-${name%.pl}"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$TAPWORK/run-${name%.pl}"
        start=$(now_ms)
        ( cd "$TAPWORK" && as_pg timeout -k 30 "$T_FILE" env PATH="$PGBIN:$PATH" \
            PERL5LIB="$PGXS_LIB/src/test/perl:$TAPWORK/perl" \
            PG_REGRESS="$PGXS_LIB/src/test/regress/pg_regress" \
            TESTDIR="$TAPWORK/run-${name%.pl}" FINTX_ROOT="$ROOT" FINTX_DOCS="$TAPWORK/docs" \
            prove -v "t/$name" ) > "$log" 2>&1
        rc=$?
        printf 'tap\t%s\t%s\t%s\t%s\n' "$f" "$rc" "$(( $(now_ms) - start ))" "$log" >> "$INDEX"
        if [ $rc -eq 0 ]; then echo "ok     $f"; else
            echo "FAILED $f"; cat "$log"
            for l in "$TAPWORK/run-${name%.pl}"/tmp_check/log/*; do
                [ -f "$l" ] && { echo "--- $l"; tail -n 40 "$l"; }
            done
        fi
    done
fi

if [[ " $SUITES " == *" valgrind "* ]] && [ -z "${FINTX_COVERAGE:-}" ]; then
    echo "== valgrind (memcheck)"
    log=$OUT/valgrind.log
    start=$(now_ms)
    timeout -k 30 $((2 * T_FILE)) test/scripts/valgrind.sh > "$log" 2>&1
    rc=$?
    printf 'valgrind\ttest/scripts/valgrind.sh\t%s\t%s\t%s\n' "$rc" "$(( $(now_ms) - start ))" "$log" >> "$INDEX"
    if [ $rc -eq 0 ]; then tail -n 1 "$log"; else echo "FAILED valgrind"; cat "$log"; fi
fi

perl test/scripts/results_json.pl "$INDEX" > "$ROOT/test_results.json"
perl -MJSON::PP -e 'local $/; my $j = decode_json(<STDIN>); my $s = $j->{summary};
    printf "== %d tests: %d passed, %d failed\n", $s->{total}, $s->{passed}, $s->{failed} // 0;
    print "== no test ran\n" if !$s->{total};
    exit($s->{failed} || !$s->{total} ? 1 : 0)' < "$ROOT/test_results.json"
status=$?
# any runner that failed without a failing test line (crash, bad plan) also fails the run
if awk -F'\t' '$3 != 0 { bad = 1 } END { exit !bad }' "$INDEX"; then status=1; fi
exit $status
