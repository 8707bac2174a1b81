#!/bin/bash
# make demo: the main job as a user sees it, on a throwaway cluster.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/test/scripts/cluster.sh"
WORK=$(mktemp -d /tmp/fintx-demo.XXXXXX)
chmod 755 "$WORK"
trap 'cluster_stop; rm -rf "$WORK"' EXIT
# the audit log's signing key: an Ed25519 key made with the openssl CLI, readable by the server only
mkdir -p "$WORK/keys"
openssl genpkey -algorithm ed25519 -out "$WORK/keys/audit.pem" 2>/dev/null
chmod 600 "$WORK/keys/audit.pem"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK/keys"
cluster_start "$WORK/pg" "fintx.database = 'postgres'" "fintx.signing_key_file = '$WORK/keys/audit.pem'" \
    "fintx.checkpoint_origin = 'demo.fintx.example/audit'" >/dev/null
echo "fintx demo on a throwaway PostgreSQL 15 cluster (port $PGPORT, shared_preload_libraries = 'fintx')"
echo
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=0 -d postgres -f "$ROOT/test/scripts/demo.sql" 2>&1
