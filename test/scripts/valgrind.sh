#!/bin/bash
# make valgrind: runs the pg_regress SQL (psql meta-commands stripped) through a single-user
# PostgreSQL backend under valgrind memcheck with fintx preloaded, and fails on any error
# report other than PostgreSQL's own known WAL-padding false positive (see PostgreSQL's
# src/tools/valgrind.supp).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/test/scripts/cluster.sh"
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }
WORK=$(mktemp -d /tmp/fintx-valgrind.XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" -eq 0 ] && chown postgres: "$WORK"
trap 'rm -rf "$WORK"' EXIT
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust --no-sync --encoding=UTF8 --locale=C.UTF-8 >/dev/null
{
    echo "CREATE EXTENSION fintx;"
    for t in accounts transfer idempotency pending batch reconcile audit authorization outbox; do
        grep -v '^\\' "$ROOT/sql/$t.sql" | grep -v '^--' | sed 's/;\s*$/;\n/'
    done
} > "$WORK/script.sql"
chmod 644 "$WORK/script.sql"
set +e
as_pg valgrind --quiet --error-exitcode=42 --log-file="$WORK/valgrind.log" \
    "$PGBIN/postgres" --single -j -D "$WORK/data" -c shared_preload_libraries=fintx postgres \
    < "$WORK/script.sql" > "$WORK/out.txt" 2>&1
rc=$?
set -e
# a run that tested nothing must not pass: the backend must have started, run the script to
# its end (it stops only at EOF or on FATAL/PANIC) and created the extension
fail() { echo "valgrind: $*"; tail -n 40 "$WORK/out.txt"; [ -f "$WORK/valgrind.log" ] && tail -n 40 "$WORK/valgrind.log"; exit 1; }
[ -f "$WORK/valgrind.log" ] || fail "valgrind wrote no log"
[ "$rc" -eq 0 ] || [ "$rc" -eq 42 ] || fail "the backend exited with status $rc"
grep -qE '(FATAL|PANIC):' "$WORK/out.txt" && fail "the backend stopped with FATAL or PANIC"
grep -qE 'ERROR: .*(extension "fintx"|fintx\.so)' "$WORK/out.txt" && fail "CREATE EXTENSION fintx failed"
errors=$(grep -E '^==[0-9]+== [A-Z]' "$WORK/valgrind.log" | grep -vc 'Syscall param pwrite64(buf) points to uninitialised byte' || true)
fintx_frames=$(grep -c 'fintx' "$WORK/valgrind.log" || true)
statements=$(grep -c '^backend>' "$WORK/out.txt" || true)
echo "valgrind: $statements statements, $errors unexpected error reports, $fintx_frames reports in fintx code"
# the script holds about 356 statements; far fewer means the backend did not read it
[ "$statements" -ge 300 ] || fail "only $statements statements ran"
if [ "$errors" -ne 0 ] || [ "$fintx_frames" -ne 0 ]; then cat "$WORK/valgrind.log"; exit 1; fi
