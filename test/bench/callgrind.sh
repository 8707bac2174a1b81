#!/bin/bash
# Instructions per transaction (valgrind's callgrind), the deterministic side of the
# benchmark: unlike TPS on a shared 2-core machine it does not drift between runs.
# A single-user backend (postgres --single) runs prepared statements, as pgbench -M prepared
# sends them:
#   transfer  fintx.transfer with unique keys over the 1,000 accounts of accounts.sql
#   batch     fintx.transfer_batch, 100 transfers per call over the same accounts
#   tpcb      pgbench's TPC-B-like transaction (scale $SCALE), its five statements
# Each workload runs twice, N and 5N transactions (batch: ceil(N/10) and 5 ceil(N/10) calls
# of 100), on copies of one data directory; the difference divided by the difference in
# transactions is the cost of one transaction without start-up and loading. No worker runs
# in a single-user backend: sealing and outbox sequencing are not counted.
# What it does not show: WAL flushes, lock waits, and that valgrind counts a `rep stos`
# per byte and runs SHA-256 without the CPU's SHA extensions (both weigh more than they cost).
# Env: N (200), SCALE (32), BENCH_OUT (results/bench), KEEP=1 keeps the callgrind files (both
# sizes: test/bench/callgrind_diff.py compares them per function), WORKLOADS (tpcb transfer batch).
# Usage: test/bench/callgrind.sh (after make install); callgrind_annotate reads the files.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/test/scripts/cluster.sh"
N=${N:-200}
SCALE=${SCALE:-32}
OUT=${BENCH_OUT:-$ROOT/results/bench}
mkdir -p "$OUT"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }
WORK=$(mktemp -d /tmp/fintx-callgrind.XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" -eq 0 ] && chown postgres: "$WORK"   # the server writes the callgrind files
trap 'cluster_stop; [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"' EXIT

cluster_start "$WORK/pg" >/dev/null
"$PGBIN/createdb" bench
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d bench -f "$ROOT/test/bench/accounts.sql" >/dev/null
"$PGBIN/pgbench" -i -q -s "$SCALE" bench >"$WORK/init.log" 2>&1
"$PGBIN/psql" -X -q -d bench -c 'VACUUM ANALYZE' -c CHECKPOINT
cluster_stop

# script WORKLOAD COUNT: the statements, one per line (a line is a statement in single-user mode)
script() {
    python3 - "$1" "$2" "$SCALE" <<'PY'
import json, random, sys
w, n, scale = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(n)
def pair():
    a = random.randint(1, 1000)
    return a, 1 + (a + random.randint(0, 998)) % 1000
if w == "transfer":
    print("PREPARE t(text, text, text, bigint) AS SELECT transfer_id FROM fintx.transfer($1, $2, $3, $4);")
    for i in range(n):
        a, b = pair()
        print(f"EXECUTE t('t{n}-{i}', 'acct:{a}', 'acct:{b}', 1);")
elif w == "batch":
    print("PREPARE b(jsonb) AS SELECT count(*) FROM fintx.transfer_batch($1);")
    for i in range(n):
        reqs = []
        for j in range(100):
            a, b = pair()
            reqs.append({"idempotency_key": f"b{n}-{i}-{j}", "from_account": f"acct:{a}",
                         "to_account": f"acct:{b}", "amount": 1})
        print("EXECUTE b('" + json.dumps(reqs) + "');")
else:
    print("PREPARE u1(int, int) AS UPDATE pgbench_accounts SET abalance = abalance + $2 WHERE aid = $1;")
    print("PREPARE s1(int) AS SELECT abalance FROM pgbench_accounts WHERE aid = $1;")
    print("PREPARE u2(int, int) AS UPDATE pgbench_tellers SET tbalance = tbalance + $2 WHERE tid = $1;")
    print("PREPARE u3(int, int) AS UPDATE pgbench_branches SET bbalance = bbalance + $2 WHERE bid = $1;")
    print("PREPARE i1(int, int, int, int) AS INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
          " VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);")
    for i in range(n):
        aid, bid, tid = random.randint(1, 100000 * scale), random.randint(1, scale), random.randint(1, 10 * scale)
        d = random.randint(-5000, 5000)
        print(f"BEGIN; EXECUTE u1({aid}, {d}); EXECUTE s1({aid}); EXECUTE u2({tid}, {d}); "
              f"EXECUTE u3({bid}, {d}); EXECUTE i1({tid}, {bid}, {aid}, {d}); END;")
PY
}

# instructions WORKLOAD COUNT -> total instructions of a single-user run of COUNT transactions
instructions() {
    local data=$WORK/data-$1-$2
    cp -a "$WORK/pg/data" "$data"
    script "$1" "$2" >"$WORK/$1-$2.sql"
    as_pg valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$1.$2" \
        "$PGBIN/postgres" --single -D "$data" -c fsync=off bench <"$WORK/$1-$2.sql" >"$WORK/$1-$2.out" 2>"$WORK/$1-$2.err"
    if grep -q "ERROR" "$WORK/$1-$2.out" "$WORK/$1-$2.err"; then
        grep -m3 "ERROR" "$WORK/$1-$2.out" "$WORK/$1-$2.err" >&2; exit 1
    fi
    rm -rf "$data"
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$WORK/$1-$2.err"
}

printf '%-10s %14s\n' workload "instr/transaction"
declare -A per
for w in ${WORKLOADS:-tpcb transfer batch}; do
    n=$N; [ "$w" = batch ] && n=$(( (N + 9) / 10 ))
    small=$(instructions $w $n)
    large=$(instructions $w $((5 * n)))
    per[$w]=$(( (large - small) / (4 * n) ))
    printf '%-10s %14d\n' "$w" "${per[$w]}"
    [ "${KEEP:-0}" = 1 ] && cp "$WORK/callgrind.$w.$n" "$WORK/callgrind.$w.$((5 * n))" "$OUT/"
done
[ -n "${per[tpcb]:-}" ] && [ -n "${per[transfer]:-}" ] && [ -n "${per[batch]:-}" ] || exit 0
awk -v t="${per[transfer]}" -v b="${per[tpcb]}" -v x="${per[batch]}" 'BEGIN {
    printf "instructions per transaction: tpcb %d, transfer %d, batch of 100 %d\n", b, t, x
    printf "transfer / tpcb (instructions)              %.3f\n", t / b
    printf "batch, per transfer                         %d\n", x / 100
    printf "batch per transfer / single transfer        %.3f\n", x / 100 / t
}' | tee "$OUT/callgrind.txt"
