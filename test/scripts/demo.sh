#!/bin/bash
# make demo: the main job as a user sees it, on a throwaway cluster.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/test/scripts/cluster.sh"
WORK=$(mktemp -d /tmp/fintx-demo.XXXXXX)
chmod 755 "$WORK"
trap 'cluster_stop; rm -rf "$WORK"' EXIT
cluster_start "$WORK/pg" "fintx.database = 'postgres'" >/dev/null
echo "fintx demo on a throwaway PostgreSQL 15 cluster (port $PGPORT, shared_preload_libraries = 'fintx')"
echo
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=0 -d postgres -f "$ROOT/test/scripts/demo.sql" 2>&1
