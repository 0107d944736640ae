# shellcheck shell=bash
# A throwaway PostgreSQL 15 server on loopback, for scripts/test-postgres and
# scripts/bench-conductor. Sourced; the caller stops it (postgres_stop) in its EXIT trap.

PG_BIN=/usr/lib/postgresql/15/bin

# postgres_install [PACKAGE...] : Debian's postgresql-15 (and PACKAGEs) when absent.
postgres_install() {
    local need=() p sudo=()
    [[ -x $PG_BIN/pg_ctl ]] || need+=(postgresql-15)
    for p in "$@"; do command -v "$p" >/dev/null || need+=("$p"); done
    ((${#need[@]})) || return 0
    echo "installing ${need[*]}" >&2
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${need[@]}"
}

# postgres_init DIR : a new cluster in DIR/data (DIR made by the caller, removed by
# postgres_stop) with the superuser `tether`, its random password in PG_PASSWORD (never on a
# command line), listening on a free loopback port (PG_PORT) and on a socket in DIR. Run as
# `postgres` (or `nobody`) when root, since the server refuses root: PG_OWNER, PG_RUN_AS. PG_CTL
# starts and stops it. The caller may add to DIR/data/postgresql.conf and pg_hba.conf, then
# calls postgres_start.
postgres_init() {
    PG_DIR=$1
    PG_OWNER=$(id -un) PG_RUN_AS=()
    if ((EUID == 0)); then
        PG_OWNER=postgres
        id -u "$PG_OWNER" >/dev/null 2>&1 || PG_OWNER=nobody
        PG_RUN_AS=(runuser -u "$PG_OWNER" --)
    fi
    chown "$PG_OWNER" "$PG_DIR"
    # A free loopback port: bound by the kernel, then released for the server.
    PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    PG_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    (umask 077 && printf '%s\n' "$PG_PASSWORD" >"$PG_DIR/pwfile")
    chown "$PG_OWNER" "$PG_DIR/pwfile"
    "${PG_RUN_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U tether --pwfile="$PG_DIR/pwfile" \
        --auth=scram-sha-256 -E UTF8 >"$PG_DIR/initdb.log"
    rm -f "$PG_DIR/pwfile"
    cat >>"$PG_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
max_connections = 400
CONF
    PG_CTL="${PG_RUN_AS[*]} $PG_BIN/pg_ctl -D $PG_DIR/data -l $PG_DIR/server.log -w"
}

postgres_start() { $PG_CTL start >/dev/null; }

# postgres_stop : stops the server at once and removes its directory.
postgres_stop() {
    [[ -n ${PG_DIR:-} ]] || return 0
    if [[ -f $PG_DIR/data/postmaster.pid ]]; then
        $PG_CTL -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PG_DIR"
}

# postgres_pid : the server's (postmaster's) pid.
postgres_pid() { head -n1 "$PG_DIR/data/postmaster.pid"; }
