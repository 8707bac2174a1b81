#!/bin/bash
# Audit log at scale, on one throwaway cluster (fsync=on): builds a log of N entries
# (default 1,000,000) from transfer batches, then measures
#   sealing throughput      entries/s of one fintx.seal() over the whole backlog
#   verification            fintx.verify_audit() over every entry (target <= 10 s for 1M)
#   proof latency           fintx.inclusion_proof / consistency_proof on the N-leaf log,
#                           pgbench, 1 client, 10 s each (target <= 5 ms)
# Env: ENTRIES (1000000) BATCH (10000) BENCH_OUT (results/bench-audit-scale)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/test/scripts/cluster.sh"
ENTRIES=${ENTRIES:-1000000}
BATCH=${BATCH:-10000}
OUT=${BENCH_OUT:-$ROOT/results/bench-audit-scale}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/fintx-audit-scale.XXXXXX)
chmod 755 "$WORK"
trap 'cluster_stop; rm -rf "$WORK"' EXIT
cluster_start "$WORK/pg" "fsync = on" "shared_buffers = '2GB'" "max_wal_size = '8GB'" \
    "checkpoint_timeout = '30min'" "fintx.database = 'bench'" "fintx.seal_interval = '1h'" \
    "work_mem = '256MB'" "maintenance_work_mem = '1GB'" >/dev/null
PSQL="$PGBIN/psql -X -q -At -v ON_ERROR_STOP=1 -d bench"
"$PGBIN/createdb" bench
$PSQL -c "CREATE EXTENSION fintx" \
      -c "SELECT fintx.open_account('s:bank', 'EUR', allow_negative => true)" \
      -c "SELECT count(fintx.open_account('s:' || i, 'EUR')) FROM generate_series(1, 100) i" >/dev/null
calls=$(( (ENTRIES + BATCH - 1) / BATCH ))
echo "audit scale: building $((calls * BATCH)) audit entries with $calls batches of $BATCH transfers"
start=$(date +%s.%N)
for c in $(seq 1 "$calls"); do
    $PSQL -c "SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
        'idempotency_key', 'k$c-' || i, 'from_account', 's:bank', 'to_account', 's:' || (1 + i % 100),
        'amount', 1)) FROM generate_series(1, $BATCH) i))" >/dev/null
done
echo "  load: $(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.3f", a - b }') s"
$PSQL -c "VACUUM ANALYZE" >/dev/null

start=$(date +%s.%N)
size=$($PSQL -c "SELECT fintx.seal()")
seal_s=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.3f", a - b }')
printf "  sealing: %d entries in %.2f s = %.0f entries/s\n" "$size" "$seal_s" "$(awk -v a="$size" -v b="$seal_s" 'BEGIN { print a / b }')" | tee "$OUT/summary.txt"

$PSQL -c "VACUUM ANALYZE" >/dev/null
start=$(date +%s.%N)
verdict=$($PSQL -c "SELECT ok || ' ' || entries_checked || ' ' || detail FROM fintx.verify_audit()")
verify_s=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.3f", a - b }')
printf "  verify_audit: %s; %.2f s (target <= 10 s for 1,000,000)\n" "$verdict" "$verify_s" | tee -a "$OUT/summary.txt"

cat > "$WORK/incl.sql" <<SQL
\\set i random(0, $size - 1)
SELECT fintx.inclusion_proof(:i, $size);
SQL
cat > "$WORK/cons.sql" <<SQL
\\set m random(1, $size)
SELECT fintx.consistency_proof(:m, $size);
SQL
for p in incl cons; do
    "$PGBIN/pgbench" -n -M prepared -c 1 -T 10 -f "$WORK/$p.sql" -r bench > "$OUT/$p.log" 2>&1
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$OUT/$p.log")
    printf "  %s proof on a %d-leaf log: %.3f ms average (target <= 5 ms)\n" \
        "$([ $p = incl ] && echo inclusion || echo consistency)" "$size" "$lat" | tee -a "$OUT/summary.txt"
done
