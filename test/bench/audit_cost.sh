#!/bin/bash
# Cost of the audit log on transfer throughput: alternates, in one run, the ledger-only
# build of BASELINE_REF (default: the commit before the audit log was wired into the
# ledger) and the current tree, each on a fresh cluster (fsync=on, synchronous_commit=on),
# and prints the throughput ratio. Env: BASELINE_REF, ROUNDS (2), DURATION (30), CLIENTS (32),
# WORKLOADS ("transfer batch-local").
# BASELINE_REF=marginal: the baseline is the current tree itself with the audit writes cut
# out of a throwaway copy (no entry hash, no audit_entries row, so nothing to seal):
# the marginal cost of the audit log in today's code. fintx has no switch for this; the
# copy is edited by this script only and fails loudly if the lines moved.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BASELINE_REF=${BASELINE_REF:-cda49e0}
ROUNDS=${ROUNDS:-2}
export DURATION=${DURATION:-30} CLIENTS=${CLIENTS:-32} WORKLOADS=${WORKLOADS:-transfer batch-local}
OUT=${BENCH_OUT:-$ROOT/results/bench-audit}
mkdir -p "$OUT"
BASE=$(mktemp -d /tmp/fintx-baseline.XXXXXX)
trap 'git -C "$ROOT" worktree remove --force "$BASE" >/dev/null 2>&1 || rm -rf "$BASE"; make -C "$ROOT" install >/dev/null' EXIT
if [ "$BASELINE_REF" = marginal ]; then
    git -C "$ROOT" worktree add --detach "$BASE" HEAD >/dev/null 2>&1
    grep -q '^	fintx_audit_hash(e);$' "$BASE/src/audit.c" &&
        grep -q '^	fintx_audit_write(estate, entries, n);$' "$BASE/src/ledger.c" ||
        { echo "audit_cost.sh: the audit write lines moved; update BASELINE_REF=marginal" >&2; exit 1; }
    sed -i 's/^	fintx_audit_hash(e);$/	memset(e->hash, 0, sizeof(e->hash));/' "$BASE/src/audit.c"
    sed -i 's/^	fintx_audit_write(estate, entries, n);$//' "$BASE/src/ledger.c"
else
    git -C "$ROOT" worktree add --detach "$BASE" "$BASELINE_REF" >/dev/null 2>&1
fi
make -C "$BASE" >/dev/null 2>&1
make -C "$ROOT" >/dev/null 2>&1
: > "$OUT/all.tsv"
for round in $(seq 1 "$ROUNDS"); do
    # ABBA order: the machine drifts, so neither variant always runs first
    order="ledger-only audit"; [ $((round % 2)) -eq 0 ] && order="audit ledger-only"
    for variant in $order; do
        tree=$ROOT; [ $variant = ledger-only ] && tree=$BASE
        make -C "$tree" install >/dev/null 2>&1
        SKIP_RECONCILE=1 ROUNDS=1 BENCH_OUT="$OUT/$variant-$round" "$ROOT/test/bench/run.sh" >/dev/null 2>&1
        sed "s/^/$variant\t/" "$OUT/$variant-$round/runs.tsv" >> "$OUT/all.tsv"
        awk -F'\t' -v v=$variant -v r=$round '{ printf "  %-11s round %d %-11s %10.1f tx/s  P99 %s ms\n", v, r, $2, $4, $5 }' \
            <(sed "s/^/$variant\t/" "$OUT/$variant-$round/runs.tsv")
    done
done
awk -F'\t' '{ s[$1 FS $2] += $4; n[$1 FS $2]++ }
  END {
    printf "\naudit cost (mean of rounds, same run; target <= 10%%)\n"
    split("transfer batch-local", ws, " ")
    for (i in ws) { w = ws[i]; a = s["audit" FS w] / n["audit" FS w]; b = s["ledger-only" FS w] / n["ledger-only" FS w]
      if (b > 0) printf "  %-11s ledger-only %10.1f  audit %10.1f  cost %5.1f%%\n", w, b, a, 100 * (1 - a / b) }
  }' "$OUT/all.tsv" | tee "$OUT/summary.txt"
