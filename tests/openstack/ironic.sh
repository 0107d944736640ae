# shellcheck shell=bash
# A real Ironic on loopback for the host tests, from the environment scripts/openstack-venv
# builds: API and conductor in one process (`ironic`, `rpc_transport = none`), noauth, SQLite,
# the fake-hardware type (no BMC, no kernel support), a free port, everything in one directory.
# Source it, then
#
#   ironic_start VENV DIR   starts it (migrating DIR/ironic.db first when it is new); sets
#                           IRONIC_URL (the root, http://127.0.0.1:PORT) and IRONIC_PID
#   ironic_stop             stops it (the database stays: ironic_start DIR again resumes it)
#
# Its log stays in DIR/ironic.log.

ironic_start() {
    local venv=$1 dir=$2 port start=$SECONDS
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ -f $dir/port ]]; then
        port=$(cat "$dir/port")
    else
        # Bound and released at once: the small race with another process is not worth more.
        port=$("$venv/bin/python" -c \
            'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        echo "$port" >"$dir/port"
    fi
    IRONIC_URL=http://127.0.0.1:$port
    cat >"$dir/ironic.conf" <<EOF
[DEFAULT]
auth_strategy = noauth
rpc_transport = none
host = tether-test
log_file = $dir/ironic.log
state_path = $dir/state
enabled_hardware_types = fake-hardware
enabled_bios_interfaces = no-bios
enabled_boot_interfaces = fake
enabled_console_interfaces = no-console
enabled_deploy_interfaces = fake
enabled_firmware_interfaces = no-firmware
enabled_inspect_interfaces = no-inspect
enabled_management_interfaces = fake
enabled_network_interfaces = noop
enabled_power_interfaces = fake
enabled_raid_interfaces = no-raid
enabled_rescue_interfaces = no-rescue
enabled_storage_interfaces = noop
enabled_vendor_interfaces = no-vendor
[api]
host_ip = 127.0.0.1
port = $port
[database]
connection = sqlite:///$dir/ironic.db
[conductor]
automated_clean = false
[dhcp]
dhcp_provider = none
[oslo_concurrency]
lock_path = $dir/locks
EOF
    export PYTHONWARNINGS=ignore # eventlet's deprecation notice, at every start
    if [[ ! -f $dir/ironic.db ]] &&
        ! "$venv/bin/ironic-dbsync" --config-file "$dir/ironic.conf" create_schema \
            >>"$dir/dbsync.log" 2>&1; then
        echo "ironic: creating the database failed; $dir/dbsync.log says:" >&2
        tail -n 30 "$dir/dbsync.log" >&2
        return 1
    fi
    "$venv/bin/ironic" --config-file "$dir/ironic.conf" >"$dir/server.log" 2>&1 </dev/null &
    IRONIC_PID=$!
    local deadline=$((SECONDS + 90))
    until curl -sf -o /dev/null "$IRONIC_URL/v1"; do
        if ! kill -0 "$IRONIC_PID" 2>/dev/null || ((SECONDS > deadline)); then
            echo "ironic: not answering on $IRONIC_URL; $dir/ironic.log says:" >&2
            tail -n 30 "$dir/ironic.log" "$dir/server.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "ironic: answering on $IRONIC_URL, up in $((SECONDS - start)) s" >&2
}

ironic_stop() {
    if [[ -n ${IRONIC_PID:-} ]]; then
        kill -TERM "$IRONIC_PID" 2>/dev/null || true
        wait "$IRONIC_PID" 2>/dev/null || true
        # Started by another shell, it is no child of this one: wait until its port is free.
        local deadline=$((SECONDS + 30))
        while kill -0 "$IRONIC_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$IRONIC_PID" 2>/dev/null || true
        IRONIC_PID=
    fi
}
