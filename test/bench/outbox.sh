#!/bin/bash
# Outbox benchmarks on one throwaway cluster (fsync=on, synchronous_commit=on, fintx preloaded,
# so the worker sequences):
#   latency   pgbench runs fintx.transfer (each emits transfer.posted) at $CLIENTS clients for
#             $DURATION s while a consumer polls every 5 ms in its own session; for every
#             event: clock_timestamp() when poll() first returned it minus outbox.created_at
#             (the producer's transaction start, so the figure includes the transfer itself
#             and its commit). Prints P50/P99/max and the transfer TPS.
#   relay     $EVENTS events emitted and sequenced, then fintx-relay --once publishes them to a
#             nats-server with JetStream (file store, loopback); events/s.
# Env: CLIENTS (8) DURATION (15) EVENTS (100000) SEAL_INTERVAL (100ms) BATCH (1000)
#      VERBOSE=1 also prints the latency per second
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/test/scripts/cluster.sh"
CLIENTS=${CLIENTS:-8}
DURATION=${DURATION:-15}
EVENTS=${EVENTS:-100000}
SEAL_INTERVAL=${SEAL_INTERVAL:-100ms}
BATCH=${BATCH:-1000}
WORK=$(mktemp -d /tmp/fintx-bench-outbox.XXXXXX)
chmod 755 "$WORK"
NATS_PID=
trap '[ -n "$NATS_PID" ] && kill $NATS_PID 2>/dev/null; cluster_stop; rm -rf "$WORK"' EXIT

cluster_start "$WORK/pg" "fsync = on" "synchronous_commit = on" "shared_buffers = '512MB'" \
    "max_wal_size = '4GB'" "fintx.database = 'bench'" "fintx.seal_interval = '$SEAL_INTERVAL'" >/dev/null
PSQL="$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d bench"
"$PGBIN/createdb" bench
$PSQL -f "$ROOT/test/bench/accounts.sql" >/dev/null
$PSQL <<'SQL'
CREATE TABLE lat (position bigint, ms double precision, at timestamptz DEFAULT clock_timestamp());
-- a consumer polling every 5 ms, each poll in its own transaction
CREATE PROCEDURE consume(seconds double precision) LANGUAGE plpgsql AS $$
DECLARE
    stop timestamptz := clock_timestamp() + seconds * interval '1 second';
    last bigint;
BEGIN
    WHILE clock_timestamp() < stop LOOP
        WITH ev AS (SELECT position, created_at FROM fintx.poll('bench', 10000)),
             ins AS (INSERT INTO lat (position, ms) SELECT position, extract(epoch FROM clock_timestamp() - created_at) * 1000 FROM ev
                     RETURNING position)
        SELECT max(position) INTO last FROM ins;
        IF last IS NOT NULL THEN PERFORM fintx.ack('bench', last); END IF;
        COMMIT;
        PERFORM pg_sleep(0.005);
    END LOOP;
END $$;
VACUUM ANALYZE;
SQL
# the worker started before database "bench" existed; wait until it runs there (it restarts every 5 s)
for _ in $(seq 100); do
    [ "$($PSQL -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'fintx worker' AND datname = 'bench'")" = 1 ] && break
    sleep 0.2
done
$PSQL -c "SELECT fintx.create_consumer('bench')" -c "SELECT fintx.seal()" -c "SELECT fintx.ack('bench', fintx.outbox_tail())" >/dev/null
cat > "$WORK/transfer.sql" <<'SQL'
\set a random(1, 1000)
\set b 1 + (:a + random(0, 998)) % 1000
\set r random(1, 9000000000000000000)
SELECT transfer_id FROM fintx.transfer('t' || :client_id || '-' || :r, 'acct:' || :a, 'acct:' || :b, 1);
SQL
echo "outbox bench: $CLIENTS clients, ${DURATION}s, fsync=on, synchronous_commit=on, fintx.seal_interval=$SEAL_INTERVAL"
$PSQL -c "CALL consume($DURATION + 2)" &
CONSUMER=$!
"$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$WORK/transfer.sql" bench > "$WORK/pgbench.log" 2>&1
wait $CONSUMER
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/pgbench.log" | head -1)
$PSQL -At -F' ' -c "SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                           round(max(ms)::numeric, 1) FROM lat" | {
    read n p50 p99 max
    echo "latency   commit -> visible to poll: $n events, P50 $p50 ms, P99 $p99 ms, max $max ms (target P99 <= 100 ms); transfers $tps/s"
}

[ -n "${VERBOSE:-}" ] && $PSQL -c "SELECT date_trunc('second', at) AS second, count(*), round(avg(ms)) AS avg_ms, round(max(ms)) AS max_ms FROM lat GROUP BY 1 ORDER BY 1"

# relay throughput
RELAY=$("$PGBIN/pg_config" --bindir)/fintx-relay
[ -x "$RELAY" ] || RELAY=$ROOT/fintx-relay
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
NPORT=$(free_port)
mkdir -p "$WORK/nats"
"$NATS" -a 127.0.0.1 -p "$NPORT" -js -sd "$WORK/nats" > "$WORK/nats.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 50); do grep -q "Server is ready" "$WORK/nats.log" && break; sleep 0.1; done
$PSQL -c "SELECT fintx.create_consumer('relay-bench')" -c "SELECT fintx.seal()" -c "SELECT fintx.ack('relay-bench', fintx.outbox_tail())" >/dev/null
for i in $(seq 1 $(( (EVENTS + 9999) / 10000 ))); do
    $PSQL -c "SELECT count(fintx.emit('bench', 'b-' || g, 'bench.created', jsonb_build_object('g', g, 'note', 'payload of a typical size'))) FROM generate_series(1, 10000) g" >/dev/null
done
$PSQL -c "SELECT fintx.seal()" -c "VACUUM ANALYZE" >/dev/null
n=$($PSQL -At -c "SELECT fintx.outbox_tail() - committed_position FROM fintx.consumer_state('relay-bench')")
start=$(date +%s%N)
"$RELAY" --once -b "$BATCH" -c relay-bench -d "host=$PGHOST port=$PGPORT dbname=bench user=postgres" \
    -s "nats://127.0.0.1:$NPORT" -S BENCH -p bench 2> "$WORK/relay.log" || { cat "$WORK/relay.log"; exit 1; }
end=$(date +%s%N)
ms=$(( (end - start) / 1000000 ))
echo "relay     $n events to JetStream (file store) in $ms ms: $(( n * 1000 / (ms > 0 ? ms : 1) )) events/s (target >= 20,000/s), batch $BATCH"
