#!/bin/bash
# Throwaway PostgreSQL 15 cluster helpers, sourced by check.sh, demo.sh and bench.
# Works as root (the server runs as the "postgres" user) and as a normal user.
# Usage: source cluster.sh; cluster_start DIR [extra postgresql.conf lines...]; cluster_stop

# UTF-8 everywhere, also for the clusters the TAP tests create, whatever the host locale
export LC_ALL=C.UTF-8 LANG=C.UTF-8
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGXS_LIB=${PGXS_LIB:-/usr/lib/postgresql/15/lib/pgxs}

# Runs a command as the cluster's OS user.
# As root, from / when the postgres user cannot enter the current directory.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        ( runuser -u postgres -- test -x "$PWD" || cd /; exec runuser -u postgres -- "$@" )
    else
        "$@"
    fi
}

# Picks a free TCP port on loopback.
free_port() {
    local p
    for p in $(seq 54320 54400); do
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && [ ! -e "/tmp/.s.PGSQL.$p" ]; then
            echo $p; return 0
        fi
    done
    return 1
}

cluster_start() {
    CLUSTER_DIR=$1; shift
    mkdir -p "$CLUSTER_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$CLUSTER_DIR"
    chmod 755 "$CLUSTER_DIR"
    PGPORT=$(free_port)
    PGHOST=$CLUSTER_DIR
    PGUSER=postgres
    export PGPORT PGHOST PGUSER
    as_pg "$PGBIN/initdb" -D "$CLUSTER_DIR/data" -U postgres -A trust --no-sync --encoding=UTF8 --locale=C.UTF-8 >"$CLUSTER_DIR/initdb.log" 2>&1 \
        || { cat "$CLUSTER_DIR/initdb.log" >&2; return 1; }
    {
        echo "port = $PGPORT"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$CLUSTER_DIR'"
        echo "shared_preload_libraries = 'fintx'"
        echo "max_connections = 100"
        echo "log_min_messages = warning"
        for line in "$@"; do echo "$line"; done
    } | as_pg tee -a "$CLUSTER_DIR/data/postgresql.conf" >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w start >/dev/null \
        || { cat "$CLUSTER_DIR/server.log" >&2; return 1; }
}

cluster_stop() {
    [ -n "${CLUSTER_DIR:-}" ] && [ -d "$CLUSTER_DIR/data" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
}
