#!/bin/bash
# fintx benchmark (make bench): one throwaway cluster with fsync=on and synchronous_commit=on,
# interleaved runs of
#   tpcb      pgbench's built-in TPC-B-like script (the baseline)
#   transfer  single-call fintx.transfer with unique keys over 1,000 accounts
#   batch     fintx.transfer_batch with 100 transfers per call
# each at $CLIENTS clients for $DURATION seconds, $ROUNDS rounds. Prints TPS, P99 latency
# and the ratios against the baseline of the same run.
# Env: CLIENTS (32) DURATION (30) ROUNDS (2) SCALE (32) BENCH_OUT (results/bench)
# WORKLOADS: tpcb transfer transfer-svc batch batch-local batch-few batch-1000 (transfer-svc:
# the same transfers made by a registered service, through its grant and the access log;
# batch-few: batch-local at BATCH_CLIENTS (8) clients, the latency side of the target, as a
# service would size its pool on 2 cores; batch-1000: 1,000 transfers per call on each
# client's own accounts, BATCH_CLIENTS clients; these two are not in the default list,
# whose single-call figures stay comparable with earlier runs: every batch round adds
# the pages it leaves dirty to what the next rounds write)
#      WORKLOADS ("tpcb transfer transfer-svc batch batch-local")
#      EXTRA_CONF (one more postgresql.conf line)
#      BATCH_QUEUE (fintx.max_active_batches: default twice the CPU cores; 0 runs every batch at
#      once, as all runs before the seventeenth session did; docs/operations.md)
#      CHECKPOINT_EACH=1: a CHECKPOINT before every run (diagnostic, not the default: every
#      run then starts with a clean buffer pool and writes none of its new pages within its
#      window, which flatters append-heavy workloads; docs/benchmarks.md)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/test/scripts/cluster.sh"
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-2}
SCALE=${SCALE:-32}
THREADS=${THREADS:-2}
BATCH_QUEUE=${BATCH_QUEUE:-$((2 * $(nproc)))}
OUT=${BENCH_OUT:-$ROOT/results/bench}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/fintx-bench.XXXXXX)
chmod 755 "$WORK"
trap 'cluster_stop; cp "$WORK/pg/server.log" "$OUT/server.log" 2>/dev/null; rm -rf "$WORK"' EXIT

cluster_start "$WORK/pg" "fsync = on" "synchronous_commit = on" "full_page_writes = on" \
    "shared_buffers = '1GB'" "wal_buffers = '16MB'" "max_wal_size = '8GB'" \
    "checkpoint_timeout = '30min'" "fintx.database = 'bench'" "fintx.max_active_batches = $BATCH_QUEUE" \
    ${EXTRA_CONF:+"$EXTRA_CONF"} >/dev/null
PSQL="$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d bench"
"$PGBIN/createdb" bench
echo "fintx bench: $CLIENTS clients, ${DURATION}s x $ROUNDS rounds, fsync=on, synchronous_commit=on, TPC-B scale $SCALE, fintx.max_active_batches = $BATCH_QUEUE"
WORKLOADS=${WORKLOADS:-tpcb transfer transfer-svc batch batch-local}
if [[ " $WORKLOADS " == *" tpcb "* ]]; then
    "$PGBIN/pgbench" -i -q -s "$SCALE" bench >"$OUT/init.log" 2>&1
fi
$PSQL -f "$ROOT/test/bench/accounts.sql" >/dev/null
$PSQL -c 'VACUUM ANALYZE'
if [[ " $WORKLOADS " == *" transfer-svc "* ]]; then
    # the production path: a registered service whose grant covers the accounts
    $PSQL <<'SQL'
DROP ROLE IF EXISTS bench_svc;
CREATE ROLE bench_svc LOGIN;
SELECT fintx.register_service('bench', 'bench_svc');
SELECT fintx.grant_permission('bench', 'transfer', 'acct:%', max_amount => 1000000);
SQL
fi
$PSQL -c CHECKPOINT
# The worker seals the audit log and sequences the outbox during the runs, as in production.
# Its first start failed (database bench did not exist yet); the postmaster starts it again
# 5 s later: wait for it, so that no run is measured without it.
for i in $(seq 1 60); do
    [ "$($PSQL -At -c "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'fintx worker' AND datname = 'bench'")" = 1 ] && break
    [ "$i" = 60 ] && { echo "run.sh: the fintx worker did not start in database bench" >&2; exit 1; }
    sleep 1
done

# The key and account codes are text, as a client binds them: the casts keep the
# planner from inlining PostgreSQL's SQL-language text || integer (textanycat) four times
# per call, a parse and analysis each that was 10-13 % of all CPU time (docs/benchmarks.md).
cat > "$WORK/transfer.sql" <<'SQL'
\set a random(1, 1000)
\set b 1 + (:a + random(0, 998)) % 1000
\set r random(1, 9000000000000000000)
SELECT transfer_id FROM fintx.transfer('t' || :client_id::text || '-' || :r::text, 'acct:' || :a::text, 'acct:' || :b::text, 1);
SQL
cat > "$WORK/batch.sql" <<'SQL'
\set a random(1, 1000)
\set r random(1, 9000000000000000000)
SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
    'idempotency_key', 'b' || :client_id || '-' || :r || '-' || i,
    'from_account', 'acct:' || (1 + (:a + i * 7) % 1000),
    'to_account',   'acct:' || (1 + (:a + i * 7 + 1 + i % 997) % 1000),
    'amount', 1)) FROM generate_series(1, 100) i));
SQL

# the same batch, but each client moves money among its own 31 accounts (no lock contention
# between clients, as when each service owns its accounts); batch-1000, the large-batch
# target, has 1,000 transfers per call (not in the default WORKLOADS: WORKLOADS=batch-1000;
# BATCH_CLIENTS clients, default 8)
local_batch() {  # KEY_PREFIX SIZE
    cat <<SQL
\\set r random(1, 9000000000000000000)
\\set base ((:client_id % 32) * 31)
SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
    'idempotency_key', '$1' || :client_id || '-' || :r || '-' || i,
    'from_account', 'acct:' || (1 + :base + (i * 7) % 31),
    'to_account',   'acct:' || (1 + :base + (i * 7 + 1 + i % 29) % 31),
    'amount', 1)) FROM generate_series(1, $2) i));
SQL
}
local_batch l 100 > "$WORK/batch-local.sql"
local_batch L 1000 > "$WORK/batch-1000.sql"

# run NAME ROUND ARGS... -> appends "name round tps p99_ms" to $OUT/runs.tsv
run() {
    local name=$1 round=$2; shift 2
    local dir=$WORK/log-$name-$round
    mkdir -p "$dir"; [ "$(id -u)" -eq 0 ] && chmod 777 "$dir"
    # Each round starts with the kernel's dirty page cache written out: a batch round leaves
    # up to 2 GB of it, and its writeback would otherwise land on whichever round comes next
    # (WAL fsyncs queue behind it), not on the round that wrote it. sync changes nothing in
    # PostgreSQL (no checkpoint, no full-page images); a round's own writeback starts after
    # about 30 s (vm.dirty_expire_centisecs) either way.
    sync
    if [ -n "${CHECKPOINT_EACH:-}" ]; then $PSQL -c CHECKPOINT; fi
    ( cd "$dir" && "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -l "$@" bench ) \
        > "$OUT/$name-$round.log" 2>&1
    local tps p99
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$OUT/$name-$round.log" | head -1)
    p99=$(cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}')
    printf '%s\t%s\t%s\t%s\n' "$name" "$round" "$tps" "$p99" >> "$OUT/runs.tsv"
    printf '  %-11s round %d: %10.1f tx/s   P99 %8s ms   (ended %s)\n' "$name" "$round" "$tps" "$p99" "$(date +%T)"
}
: > "$OUT/runs.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for w in $WORKLOADS; do
        case $w in
            tpcb) run tpcb "$round" -b tpcb-like ;;
            transfer-svc) run transfer-svc "$round" -U bench_svc -f "$WORK/transfer.sql" ;;
            batch-1000) run batch-1000 "$round" -c "${BATCH_CLIENTS:-8}" -f "$WORK/batch-1000.sql" ;;
            batch-few) run batch-few "$round" -c "${BATCH_CLIENTS:-8}" -f "$WORK/batch-local.sql" ;;
            *) run "$w" "$round" -f "$WORK/$w.sql" ;;
        esac
    done
done

echo
# what the worker sealed while the runs went on (read before anything seals on demand)
$PSQL -At -c "SELECT 'audit entries ' || (SELECT count(*) FROM fintx.audit_entries) || ', sealed by the worker during the runs '
              || COALESCE((SELECT max(tree_size) FROM fintx.audit_blocks), 0)
              || '; fintx workers running: ' || (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'fintx worker')"
# (audit_cost.sh measures throughput only and skips it: its marginal baseline has no audit
# entries and identical entry hashes, and reconcile() would list every transfer against
# every entry)
if [ -z "${SKIP_RECONCILE:-}" ]; then
    $PSQL -c "SELECT count(*) AS transfers, (SELECT count(*) FROM fintx.reconcile()) AS reconcile_rows FROM fintx.transfers"
fi
# checkpoints make every workload pay full-page images again; say how many fell into the run
# and who wrote dirty pages out: once the buffer pool is full, backends evict them themselves
$PSQL -At -c "SELECT 'checkpoints during the run: ' || checkpoints_timed || ' timed, ' || checkpoints_req
              || ' requested (WAL volume or CHECKPOINT; server log in $OUT/server.log); pages written by'
              || ' backends ' || buffers_backend || ', the background writer ' || buffers_clean
              || ', checkpoints ' || buffers_checkpoint FROM pg_stat_bgwriter"
# the batch queue: how many batches waited longer than fintx.batch_queue_timeout (ran anyway)
$PSQL -At -c "SELECT 'batch queue: limit ' || max_active || ', batches admitted ' || admitted
              || ', of them after the queue timeout ' || timed_out FROM fintx.batch_queue()"
awk -F'\t' -v fc="${BATCH_CLIENTS:-8}" '
  function mean(w) { return n[w] ? tps[w] / n[w] : 0 }
  { tps[$1] += $3; n[$1]++; if ($4 > p99[$1]) p99[$1] = $4 }
  END {
    t = mean("tpcb"); s = mean("transfer"); b = mean("batch"); l = mean("batch-local")
    printf "\nsummary (mean of rounds; P99 = worst round)\n"
    if (n["tpcb"]) printf "  TPC-B-like            %10.1f tx/s          P99 %s ms\n", t, p99["tpcb"]
    if (n["transfer"]) printf "  fintx.transfer        %10.1f transfers/s   P99 %s ms%s\n", s, p99["transfer"], t ? sprintf("   ratio vs TPC-B %.2f (target >= 1.5)", s / t) : ""
    v = mean("transfer-svc")
    if (n["transfer-svc"]) printf "  transfer as a service %10.1f transfers/s   P99 %s ms%s\n", v, p99["transfer-svc"], t ? sprintf("   ratio vs TPC-B %.2f", v / t) : ""
    if (n["batch"]) printf "  fintx.transfer_batch  %10.1f transfers/s   P99 %s ms   (%.1f calls/s x 100, random accounts: every batch contends)\n", b * 100, p99["batch"], b
    if (n["batch-local"]) printf "  batch, own accounts   %10.1f transfers/s   P99 %s ms   (%.1f calls/s x 100; target >= 10,000, aim 50,000)\n", l * 100, p99["batch-local"], l
    f = mean("batch-few")
    if (n["batch-few"]) printf "  batch, own, %2d clients %9.1f transfers/s   P99 %s ms   (%.1f calls/s x 100; target >= 10,000 with P99 < 100 ms)\n", fc, f * 100, p99["batch-few"], f
    k = mean("batch-1000")
    if (n["batch-1000"]) printf "  batches of 1,000      %10.1f transfers/s   P99 %s ms   (%.1f calls/s x 1,000, own accounts; target 50,000)\n", k * 1000, p99["batch-1000"], k
  }' "$OUT/runs.tsv" | tee "$OUT/summary.txt"
