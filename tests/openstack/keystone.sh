# shellcheck shell=bash
# A real Keystone on loopback for the host tests, from the environment scripts/openstack-venv
# builds: SQLite, fernet tokens, a free port, everything in one directory. Source it, then
#
#   keystone_start VENV DIR   starts it; sets KEYSTONE_URL (ending in /v3) and KEYSTONE_PID,
#                             and writes DIR/env: TETHER_KEYSTONE_* assignments for the tests
#                             (URL, admin password, the seeded project, user, application
#                             credential, block-storage service), mode 0600
#   keystone_stop             stops it
#
# Its logs stay in DIR: keystone.log (Keystone's own), server.log (gunicorn, with an access log).

keystone_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

keystone_start() {
    local venv=$1 dir=$2 port admin_password start=$SECONDS
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # Bound and released at once: the small race with another process is not worth more.
    port=$("$venv/bin/python" -c \
        'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    KEYSTONE_URL=http://127.0.0.1:$port/v3
    admin_password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
    cat >"$dir/keystone.conf" <<EOF
[DEFAULT]
log_file = $dir/keystone.log
[database]
connection = sqlite:///$dir/keystone.db
[fernet_tokens]
key_repository = $dir/fernet-keys
[fernet_receipts]
key_repository = $dir/fernet-receipts
[credential]
key_repository = $dir/credential-keys
EOF
    local owner=(--keystone-user "$(id -un)" --keystone-group "$(id -gn)")
    # Each keystone-manage costs about 3 s of imports: the key repositories do not need the
    # database, so they are made while it is migrated.
    local manage=("$venv/bin/keystone-manage" --config-file "$dir/keystone.conf")
    local log=$dir/keystone-manage.log
    export PYTHONWARNINGS=ignore # eventlet's deprecation notice, at every start
    "${manage[@]}" fernet_setup "${owner[@]}" >>"$log" 2>&1 &
    local fernet=$!
    "${manage[@]}" credential_setup "${owner[@]}" >>"$log" 2>&1 &
    local credential=$!
    if ! "${manage[@]}" db_sync >>"$log" 2>&1 || ! wait "$fernet" || ! wait "$credential" ||
        ! OS_BOOTSTRAP_PASSWORD=$admin_password "${manage[@]}" bootstrap \
            --bootstrap-region-id RegionOne \
            --bootstrap-public-url "$KEYSTONE_URL" >>"$log" 2>&1; then
        echo "keystone: setting up failed; $log says:" >&2
        tail -n 30 "$log" >&2
        return 1
    fi

    OS_KEYSTONE_CONFIG_FILES=$dir/keystone.conf "$venv/bin/gunicorn" \
        --no-control-socket --pythonpath "$keystone_here" --bind "127.0.0.1:$port" \
        --workers 1 --threads 8 --access-logfile - \
        keystone_app:application >"$dir/server.log" 2>&1 </dev/null &
    KEYSTONE_PID=$!
    local deadline=$((SECONDS + 60))
    until curl -sf -o /dev/null "$KEYSTONE_URL"; do
        if ! kill -0 "$KEYSTONE_PID" 2>/dev/null || ((SECONDS > deadline)); then
            echo "keystone: not answering on $KEYSTONE_URL; $dir/server.log says:" >&2
            tail -n 30 "$dir/server.log" >&2
            return 1
        fi
        sleep 0.1
    done

    (
        umask 077
        {
            echo "TETHER_KEYSTONE_URL=$KEYSTONE_URL"
            echo "TETHER_KEYSTONE_ADMIN_PASSWORD=$admin_password"
            KEYSTONE_ADMIN_PASSWORD=$admin_password \
                "$venv/bin/python" "$keystone_here/keystone_seed.py" "$KEYSTONE_URL"
        } >"$dir/env"
    )
    echo "keystone: answering on $KEYSTONE_URL, set up in $((SECONDS - start)) s" >&2
}

keystone_stop() {
    if [[ -n ${KEYSTONE_PID:-} ]]; then
        kill -TERM "$KEYSTONE_PID" 2>/dev/null || true
        wait "$KEYSTONE_PID" 2>/dev/null || true
        KEYSTONE_PID=
    fi
}
