# shellcheck shell=bash disable=SC2034 # variables for the scenarios that source this
# A real OpenStack Cinder inside the test guest (image flavour `openstack`: Debian 12's Cinder
# 21.x), for tests/vm/openstack/. Sourced after lib.sh and ceph.sh:
#     source "$SHARE/vm/ceph.sh"; source "$SHARE/vm/cinder.sh"
#
# cinder_up sets up, on its first call in a boot: rabbitmq, a cinder.conf of our own (noauth,
# SQLite, debug off), cinder-api (uwsgi), cinder-scheduler and cinder-volume started through the
# packages' own init scripts, two backends and a volume type for each:
#   lvm  LVM on a loop device, LIO target (lioadm) on 127.0.0.1:3260: Cinder makes the CHAP
#        credentials itself
#   rbd  the guest's one-node Ceph (ceph.sh), pool `cinder`, cephx user client.cinder
# Cinder's database and rabbitmq's Mnesia come made with the image (build-image runs
# scripts/vm/flavours/openstack.prepare natively; in the guest each costs minutes): checked.
# It returns once both pools are in scheduler-stats/get_pools. Later calls (in this or later
# scenarios of the boot) only check that the services still run and answer.
#
# Functions:
#   cinder_up                       set up or check Cinder (see above)
#   cinder_project                  the project id (32 hex: noauth routes only those)
#   cinder_api METHOD PATH [JSON]   curl; PATH is relative to /v3/<project>/ unless it starts
#                                   with /. Prints the body; returns 0 for 2xx, 1 otherwise.
#                                   The status is in $CINDER_STATUS_FILE (cinder_last_status).
#                                   CINDER_API_VERSION (default 3.70) is the microversion sent.
#   cinder_create NAME SIZE_GB TYPE waits for `available`; prints the id
#   cinder_status ID                the volume's status (`missing` for a 404)
#   cinder_attachments ID           the ids of the volume's attachments, one a line
#   cinder_wait_status ID STATUS [TIMEOUT]   records a failed check on timeout
#   cinder_delete ID                deletes the volume (after deleting its attachments)
#   cinder_stop / cinder_start [api] [volume]   the API and/or the volume service (default
#                                   both; the scheduler and rabbitmq stay)
#   cinder_ceph_keyfile FILE        the cephx key of client.cinder, bare, mode 0600
#   cinder_collect_logs             copies what Cinder logged during this scenario to
#                                   $RESULT_DIR/cinder/ (runs at the scenario's exit)
#
# Timings of every step go to $RESULT_DIR/cinder/timings.log (and, for the set-up, to notes).
# Logs: $RESULT_DIR/cinder/{cinder-api,cinder-scheduler,cinder-volume,cinder-manage}.log,
# rabbitmq.log, api.log (every cinder_api call: method, path, status, time; no bodies).
# Cinder's debug logging stays off: with it, cinder-volume logs the CHAP password in command
# lines. Cinder's own files and logs are the only places allowed to hold its secrets.

CINDER_PROJECT=${CINDER_PROJECT:-c1de7e7e5a5a4b4b8c8c0d0d0e0e0f0f}
CINDER_URL=http://127.0.0.1:8776
CINDER_API_VERSION=${CINDER_API_VERSION:-3.70}
CINDER_CONF=/etc/cinder/cinder.conf
CINDER_CEPH_CONF=/etc/cinder/ceph.conf
CINDER_CEPH_KEYRING=/etc/cinder/ceph.client.cinder.keyring
CINDER_CEPH_USER=cinder
CINDER_CEPH_POOL=cinder
# Fixed: it is in every RBD connection_info (libvirt's secret; tether does not use it).
CINDER_SECRET_UUID=c1de0000-7e7e-4e7e-8e7e-00000000cef0
CINDER_VG=cinder-volumes
CINDER_LVM_FILE=/var/lib/tether-cinder/lvm.img
CINDER_LVM_SIZE=6G
CINDER_RUN=/run/tether-cinder
CINDER_LOG_DIR=$RESULT_DIR/cinder
CINDER_STATUS_FILE=$WORK/cinder-api.status
CINDER_HOST=tether-vm
CINDER_SERVICES=(cinder-api cinder-scheduler cinder-volume)
mkdir -p "$CINDER_LOG_DIR"

cinder_project() { printf '%s\n' "$CINDER_PROJECT"; }

# _cinder_time STEP MS : one line of the timings log.
_cinder_time() {
    printf '%s %s %s ms\n' "$(uptime_s)" "$1" "$2" >>"$CINDER_LOG_DIR/timings.log"
    log "cinder: $1 took $2 ms"
}

_cinder_fail() { # DESC EXPECTED SAW
    fail "$1" "$2" "$3; logs: $SCENARIO/cinder/{cinder-volume,cinder-api}.log, timings.log in the results directory"
    return 1
}

# --- the API --------------------------------------------------------------------------------

# cinder_api METHOD PATH [JSON]
cinder_api() {
    local method=$1 path=$2 body=${3:-} url code t0 rc=0
    if [[ $path == /* ]]; then url=$CINDER_URL$path; else url=$CINDER_URL/v3/$CINDER_PROJECT/$path; fi
    local args=(-sS -m "${CINDER_API_TIMEOUT:-400}" -X "$method" -o "$WORK/cinder-api.body"
        -D "$WORK/cinder-api.headers" -w '%{http_code}'
        -H "X-Auth-Token: admin:$CINDER_PROJECT" -H "OpenStack-API-Version: volume $CINDER_API_VERSION"
        -H 'Accept: application/json')
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    local try
    # A 500 is tried again (twice, 3 s apart): Cinder on SQLite answers "database is locked" when
    # two of its services write at once (oslo.db opens deferred transactions that cannot upgrade
    # to a write), and the call it failed did nothing. tether's conductor retries 5xx itself.
    for try in 1 2 3; do
        rc=0
        t0=$(now_ms)
        code=$(curl "${args[@]}" "$url" 2>"$WORK/cinder-api.err") || rc=$?
        ((rc == 0)) || code=000
        printf '%s %s %s %s -> %s in %s ms%s\n' "$(uptime_s)" "$method" "${url#"$CINDER_URL"}" \
            "$CINDER_API_VERSION" "$code" "$(($(now_ms) - t0))" \
            "$( ((rc == 0)) || printf ' (curl exit %s: %s)' "$rc" "$(head -c 200 "$WORK/cinder-api.err")")" \
            >>"$CINDER_LOG_DIR/api.log"
        [[ $code == 500 && $try -lt 3 ]] || break
        sleep 3
    done
    printf '%s\n' "$code" >"$CINDER_STATUS_FILE"
    cat "$WORK/cinder-api.body" 2>/dev/null || true
    [[ $code == 2?? ]]
}

cinder_last_status() { cat "$CINDER_STATUS_FILE" 2>/dev/null || echo 000; }

# cinder_status ID : the volume's status, `missing` for a 404, `unreachable` when no answer.
cinder_status() {
    local out
    if out=$(cinder_api GET "volumes/$1"); then
        jq -r '.volume.status' <<<"$out"
    elif [[ $(cinder_last_status) == 404 ]]; then
        echo missing
    elif [[ $(cinder_last_status) == 000 ]]; then
        echo unreachable
    else
        echo "http-$(cinder_last_status)"
    fi
}

# cinder_attachments ID : the ids of the volume's attachments (Cinder's own list), one a line.
cinder_attachments() {
    cinder_api GET "attachments?volume_id=$1" | jq -r '.attachments[].id'
}

# cinder_wait_status ID STATUS [TIMEOUT_S] : polls every 2 s. Records a failed check (expected,
# seen, where the logs are) on timeout or when the volume goes to `error` unasked.
cinder_wait_status() {
    local id=$1 want=$2 t=${3:-300} end st=""
    end=$(($(now_ms) + t * 1000))
    while :; do
        st=$(cinder_status "$id")
        [[ $st == "$want" ]] && return 0
        if [[ $st == error* && $want != error* ]]; then break; fi
        (($(now_ms) < end)) || break
        sleep 2
    done
    _cinder_fail "Cinder volume $id becomes $want" "status $want within ${t}s" "status $st"
}

# cinder_create NAME SIZE_GB TYPE : prints the new volume's id once it is `available`.
cinder_create() {
    local name=$1 size=$2 type=$3 out id t0
    t0=$(now_ms)
    out=$(cinder_api POST volumes "{\"volume\": {\"name\": \"$name\", \"size\": $size, \"volume_type\": \"$type\"}}") \
        || { _cinder_fail "Cinder creates volume $name" "HTTP 202" "HTTP $(cinder_last_status): $out"; return 1; }
    id=$(jq -r '.volume.id' <<<"$out")
    # Deleted at the scenario's end if it is still there (_cinder_exit).
    printf '%s\n' "$id" >>"$WORK/cinder-created"
    cinder_wait_status "$id" available 300 || return 1
    _cinder_time "create-$type($name)" $(($(now_ms) - t0))
    printf '%s\n' "$id"
}

# cinder_delete ID : deletes the volume's attachments (if any), then the volume; waits until
# it is gone.
cinder_delete() {
    local id=$1 a i
    for a in $(cinder_attachments "$id" 2>/dev/null); do
        cinder_api DELETE "attachments/$a" >/dev/null || true
    done
    cinder_api POST "volumes/$id/action" '{"os-reset_status": {"status": "available", "attach_status": "detached"}}' >/dev/null || true
    cinder_api DELETE "volumes/$id" >/dev/null || true
    for ((i = 0; i < 90; i++)); do
        [[ $(cinder_status "$id") == missing ]] && return 0
        sleep 2
    done
    log "cinder: volume $id not deleted after 180 s"
    return 1
}

# --- logs ------------------------------------------------------------------------------------

# The logs' sizes when this scenario began: cinder_collect_logs copies only what came after.
_cinder_log_files() {
    # cinder-api.log is uwsgi's (requests); the API's own log is cinder-wsgi's, under its name.
    printf '%s\n' /var/log/cinder/cinder-api.log /var/log/cinder/cinder-scheduler.log \
        /var/log/cinder/cinder-volume.log /var/log/cinder/cinder-manage.log
    compgen -G '/var/log/cinder/*.log' | grep -vxE '/var/log/cinder/cinder-(api|scheduler|volume|manage)\.log' || true
    compgen -G '/var/log/rabbitmq/rabbit@*.log' || true
}
_cinder_mark_logs() {
    local f
    : >"$WORK/cinder-log-offsets"
    while read -r f; do
        printf '%s %s\n' "$(stat -c %s "$f" 2>/dev/null || echo 0)" "$f" >>"$WORK/cinder-log-offsets"
    done < <(_cinder_log_files)
}
cinder_collect_logs() {
    local f off name
    while read -r f; do
        [[ -f $f ]] || continue
        off=$(awk -v f="$f" '$2 == f {print $1}' "$WORK/cinder-log-offsets" 2>/dev/null)
        name=$(basename "$f")
        # rabbit@tether-vm.log -> rabbitmq.log, rabbit@tether-vm_upgrade.log -> rabbitmq_upgrade.log
        [[ $name == rabbit@* ]] && name=rabbitmq${name#rabbit@"$CINDER_HOST"}
        tail -c +"$((${off:-0} + 1))" "$f" >"$CINDER_LOG_DIR/$name" 2>/dev/null || true
    done < <(_cinder_log_files)
    cp "$CINDER_CONF" "$CINDER_LOG_DIR/cinder.conf" 2>/dev/null || true
    # Who used the guest's two CPUs (TCG is slow; Cinder's periodic tasks add up).
    ps -eo pid,time,etime,rss,args --sort=-time 2>/dev/null | head -n 25 | cut -c1-200 >"$CINDER_LOG_DIR/ps-cpu.txt" || true
    [[ -f $CINDER_RUN/timings.log ]] && cp "$CINDER_RUN/timings.log" "$CINDER_LOG_DIR/boot-timings.log"
    return 0
}
_cinder_mark_logs

# At the scenario's end: tether's own teardown (tether.sh), the volumes the scenario created
# and left attached or half attached (with their attachments: the next scenario starts with no
# export and no attachment), then Cinder's logs into the results.
_cinder_exit() {
    local id s stopped=()
    [[ $BASHPID == "$$" ]] || return 0
    # Clean-up is best effort: its failures are no failed checks.
    trap - ERR
    set +eE
    # First, in case the scenario's timeout kills what follows (it allows 10 s after SIGTERM).
    cinder_collect_logs
    if declare -F tether_down >/dev/null; then tether_down; fi
    # A scenario that stopped Cinder and failed before starting it again: later scenarios need
    # it (their cinder_up waits until the pools are back).
    if [[ -f $CINDER_RUN/up ]]; then
        for s in api volume; do _cinder_pid_alive "cinder-$s" || stopped+=("$s"); done
        if ((${#stopped[@]})); then
            log "cinder: starting ${stopped[*]} again for the next scenarios"
            for s in "${stopped[@]}"; do _cinder_init "cinder-$s" start; done
            _cinder_wait_api 180
        fi
    fi
    if [[ -f $WORK/cinder-created ]]; then
        while read -r id; do
            # An available volume harms no later scenario (and an LVM delete costs minutes).
            [[ $(cinder_status "$id") =~ ^(missing|available)$ ]] && continue
            log "cinder: deleting volume $id left by the scenario"
            cinder_delete "$id" || true
        done < <(sort -u "$WORK/cinder-created")
    fi
    cinder_collect_logs
}
trap _cinder_exit EXIT

# --- set-up -------------------------------------------------------------------------------------

_cinder_write_conf() {
    install -d -m 0750 -o cinder -g cinder /var/lib/cinder/tmp
    cat >"$CINDER_CONF" <<EOF
# Written by tests/vm/cinder.sh: the packaged file is for a keystone deployment.
[DEFAULT]
auth_strategy = noauth
transport_url = rabbit://guest:guest@127.0.0.1:5672/
# An LVM export takes about a minute under TCG, past the 60 s default.
rpc_response_timeout = 300
my_ip = 127.0.0.1
host = $CINDER_HOST
state_path = /var/lib/cinder
log_dir = /var/log/cinder
# Never on: cinder-volume would log CHAP passwords in command lines.
debug = false
osapi_volume_listen = 127.0.0.1
osapi_volume_workers = 1
# Every service writes its heartbeat row each report_interval (10 s by default); fewer writes,
# fewer of SQLite's "database is locked" and less CPU: each is seconds of Python under TCG, for
# the scheduler and each backend (service_down_time must stay 2.5 times above it).
report_interval = 60
service_down_time = 180
enabled_backends = lvm,rbd
# Each LVM stats run is several \`sudo cinder-rootwrap\` calls, 30-45 s of CPU under TCG: once a
# minute (the default) it takes half the guest. Capacity is not under test.
backend_stats_polling_interval = 900
# The one-node Ceph has no mgr, so its pool reports no free space; capacity is not under test.
scheduler_default_filters = AvailabilityZoneFilter,CapabilitiesFilter
# Cinder sends no cephx key (OSSN-0085); the node's key comes from tether's conductor.

[database]
# timeout: SQLite is shared by three services; without it "database is locked" (and WAL mode,
# set when the image was built).
connection = sqlite:////var/lib/cinder/cinder.sqlite?timeout=120

[oslo_concurrency]
lock_path = /var/lib/cinder/tmp

[oslo_messaging_notifications]
driver = noop

[oslo_messaging_rabbit]
# The services start before rabbitmq is up: retry the connection every few seconds, not with
# a backoff up to 30 s.
rabbit_interval_max = 3

[lvm]
volume_driver = cinder.volume.drivers.lvm.LVMVolumeDriver
volume_backend_name = lvm
volume_group = $CINDER_VG
lvm_type = default
# LVM_SYSTEM_DIR for Cinder's LVM commands: scan only loop devices, not the iSCSI and RBD disks
# the scenarios attach (a dead session's disk would hang every scan).
lvm_conf_file = /etc/cinder/lvm.conf
# Zeroing a whole deleted volume costs minutes under TCG. Its first MiB is enough: with none,
# the next lvcreate on the same extents finds the old file system's signature and, asked to
# wipe it with no one to answer, fails the volume.
volume_clear = zero
volume_clear_size = 1
target_helper = lioadm
target_protocol = iscsi
target_ip_address = 127.0.0.1
target_port = 3260

[rbd]
volume_driver = cinder.volume.drivers.rbd.RBDDriver
volume_backend_name = rbd
rbd_pool = $CINDER_CEPH_POOL
rbd_ceph_conf = $CINDER_CEPH_CONF
rbd_user = $CINDER_CEPH_USER
rbd_secret_uuid = $CINDER_SECRET_UUID
rados_connect_timeout = 30
EOF
    chown root:cinder "$CINDER_CONF"
    chmod 0640 "$CINDER_CONF"
    printf 'devices {\n\tglobal_filter = [ "a|^/dev/loop[0-9]+$|", "r|.*|" ]\n}\n' >/etc/cinder/lvm.conf
    # One uwsgi process: the guest has two slow CPUs and 2 GiB.
    sed -i -e 's/^processes = .*/processes = 1/' -e 's/^threads = .*/threads = 8/' /etc/cinder/cinder-api-uwsgi.ini
}

# Cinder's own view of the Ceph cluster: a ceph.conf and client.cinder's keyring that only
# root and the cinder group read, outside /etc/ceph (the guest plays a node without one).
_cinder_ceph() {
    local key
    ceph_up || return 1
    ceph_pool "$CINDER_CEPH_POOL" || return 1
    key=$(ceph_user "$CINDER_CEPH_USER" mon 'profile rbd' osd "profile rbd pool=$CINDER_CEPH_POOL") || return 1
    cat >"$CINDER_CEPH_CONF" <<EOF
[global]
fsid = $CEPH_FSID
mon host = [v2:$CEPH_MON_V2,v1:$CEPH_MON]
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
log file = /var/log/cinder/ceph-client.log

[client.$CINDER_CEPH_USER]
keyring = $CINDER_CEPH_KEYRING
EOF
    (umask 027 && printf '[client.%s]\n\tkey = %s\n' "$CINDER_CEPH_USER" "$key" >"$CINDER_CEPH_KEYRING")
    chown root:cinder "$CINDER_CEPH_CONF" "$CINDER_CEPH_KEYRING"
    chmod 0644 "$CINDER_CEPH_CONF"
    chmod 0640 "$CINDER_CEPH_KEYRING"
}

# cinder_ceph_keyfile FILE : client.cinder's bare key in FILE (mode 0600), as tether's
# conductor reads it ([[cinder.ceph_keys]] key_file).
cinder_ceph_keyfile() {
    local key
    key=$(sed -n 's/^[[:space:]]*key = //p' "$CINDER_CEPH_KEYRING")
    [[ -n $key ]] || { _cinder_fail "client.cinder's key" "a key in $CINDER_CEPH_KEYRING" "none"; return 1; }
    install -d -m 0700 "$(dirname "$1")"
    (umask 077 && printf '%s\n' "$key" >"$1")
    chmod 0600 "$1"
}

# cinder_ceph_key : client.cinder's key (for leak checks).
cinder_ceph_key() { sed -n 's/^[[:space:]]*key = //p' "$CINDER_CEPH_KEYRING"; }

# The LVM backend's volume group on a sparse loop file (on the root disk, not in memory).
_cinder_lvm() {
    local dev
    if vgs "$CINDER_VG" >/dev/null 2>&1; then return 0; fi
    install -d -m 0700 "$(dirname "$CINDER_LVM_FILE")"
    truncate -s "$CINDER_LVM_SIZE" "$CINDER_LVM_FILE"
    dev=$(losetup -f --show "$CINDER_LVM_FILE")
    if ! { pvcreate -q "$dev" && vgcreate -q "$CINDER_VG" "$dev"; } >>"$CINDER_LOG_DIR/setup.log" 2>&1; then
        _cinder_fail "LVM volume group $CINDER_VG" "pvcreate and vgcreate exit 0" "failed (setup.log)"
        return 1
    fi
}

_cinder_pid_alive() { # SERVICE
    local f=/run/cinder/$1.pid
    [[ $1 == rabbitmq-server ]] && f=/run/rabbitmq/pid
    [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

_cinder_init() { # SERVICE ACTION : the package's own init script
    local rc=0 t0
    t0=$(now_ms)
    printf '[%8s] $ /etc/init.d/%s %s\n' "$(uptime_s)" "$1" "$2" >>"$CINDER_LOG_DIR/setup.log"
    # The volume service runs as root (the init script reads SYSTEM_USER before anything
    # else): oslo.concurrency then runs privileged commands directly instead of through
    # `sudo cinder-rootwrap`, a Python start of 5-12 s under TCG for each lvcreate, export or
    # stats call. What Cinder does is unchanged, only who runs it; the API and scheduler stay
    # the cinder user's.
    local user=()
    [[ $1 == cinder-volume ]] && user=(SYSTEM_USER=root SYSTEM_GROUP=root)
    # SETUPTOOLS_USE_DISTUTILS=stdlib: `import distutils` (eventlet does it) gets Python's own
    # instead of setuptools' copy, which imports pkg_resources, a scan of every installed
    # package: 1.0 of the 1.5 s that each cinder-rtstool call (five an LVM export) takes to
    # start natively, a minute under TCG. Cinder's code and what it runs stay the same.
    # setsid: the daemons must outlive the scenario's process group (which `timeout` kills).
    setsid -w env SETUPTOOLS_USE_DISTUTILS=stdlib "${user[@]}" "/etc/init.d/$1" "$2" \
        >>"$CINDER_LOG_DIR/setup.log" 2>&1 </dev/null || rc=$?
    # (It also gave /run/cinder and the lock and cache directories to root: the others write
    # their pid files there.)
    ((${#user[@]} == 0)) || chown cinder:cinder /var/lock/cinder /var/run/cinder /var/cache/cinder
    _cinder_time "$1-$2" $(($(now_ms) - t0))
    return $rc
}

# cinder-volume's parent process only waits for its children (one a backend), but it polls for
# them every 10 ms (oslo.service's ProcessLauncher): a tenth of a vCPU under TCG. Once they run,
# it gets the lowest priority: it then polls when nothing else wants the CPU. (Not before: the
# children it forks would inherit the priority.)
_cinder_volume_parent_nice() { # [NICENESS]
    local pid
    pid=$(cat /run/cinder/cinder-volume.pid 2>/dev/null) || return 0
    renice -n "${1:-19}" -p "$pid" >/dev/null 2>&1 || true
}

# _cinder_wait_api SECS : until the API answers its version document.
_cinder_wait_api() {
    local end
    end=$(($(now_ms) + $1 * 1000))
    while (($(now_ms) < end)); do
        curl -sf -m 10 -o /dev/null "$CINDER_URL/" 2>/dev/null && return 0
        sleep 1
    done
    return 1
}

# _cinder_pools : the pool names in scheduler-stats/get_pools, one a line.
_cinder_pools() { cinder_api GET scheduler-stats/get_pools 2>/dev/null | jq -r '.pools[].name' 2>/dev/null; }

_cinder_wait_pools() { # SECS
    local end pools collected=0
    end=$(($(now_ms) + $1 * 1000))
    while (($(now_ms) < end)); do
        pools=$(_cinder_pools || true)
        if grep -qx "$CINDER_HOST@lvm#lvm" <<<"$pools" && grep -qx "$CINDER_HOST@rbd#rbd" <<<"$pools"; then
            return 0
        fi
        # The logs so far, on the share: readable on the host while this waits (every 30 s:
        # a copy is a dozen processes, which the TCG guest's CPUs feel).
        if (($(now_ms) - collected >= 30000)); then
            cinder_collect_logs
            collected=$(now_ms)
        fi
        sleep 3
    done
    _cinder_fail "both Cinder pools ready" "$CINDER_HOST@lvm#lvm and $CINDER_HOST@rbd#rbd in get_pools within $1 s" \
        "pools: $(tr '\n' ' ' <<<"$pools")"
}

# _cinder_type NAME : a volume type whose volumes go to the backend of the same name.
_cinder_type() {
    local out id
    out=$(cinder_api GET types) || { _cinder_fail "list volume types" "HTTP 200" "HTTP $(cinder_last_status)"; return 1; }
    jq -e --arg n "$1" '.volume_types[] | select(.name == $n)' <<<"$out" >/dev/null && return 0
    out=$(cinder_api POST types "{\"volume_type\": {\"name\": \"$1\", \"extra_specs\": {\"volume_backend_name\": \"$1\"}}}") \
        || { _cinder_fail "create volume type $1" "HTTP 200" "HTTP $(cinder_last_status): $out"; return 1; }
    id=$(jq -r '.volume_type.id' <<<"$out")
    log "cinder: volume type $1 is $id"
}

# The image's rabbitmq, through /etc/rabbitmq/rabbitmq-env.conf:
#   one scheduler (and one dirty CPU scheduler, two dirty I/O ones), not bound to a CPU: the
#   guest's two vCPUs have Ceph and three Python services to run too;
#   no busy-waiting of idle schedulers (it burnt CPU the others need under TCG);
#   Erlang distribution started with the VM, under the node name rabbitmq would give it
#   (rabbit@ the short host name) and on its port: rabbitmq then finds it running, instead of
#   booting a second Erlang VM only to have it start epmd (`epmd-starter`, 10-30 s of CPU under
#   TCG; erl starts epmd itself when given -sname);
#   once booted (-eval runs after `-s rabbit boot` returns), no rabbit_epmd_monitor: every
#   60 s it boots such an `epmd-starter` VM again, to keep an epmd alive that nothing here
#   stops (10 s of CPU a minute, a sixth of a vCPU, for the whole suite).
_cinder_rabbitmq_env() {
    local node
    node=rabbit@$(hostname -s)
    cat >/etc/rabbitmq/rabbitmq-env.conf <<EOF
# Written by tests/vm/cinder.sh: a test guest under TCG.
SCHEDULER_BIND_TYPE=u
SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +SDcpu 1:1 +SDio 2 +sbwt none +sbwtdcpu none +sbwtdio none"
SERVER_START_ARGS="-sname $node -kernel inet_dist_listen_min 25672 -kernel inet_dist_listen_max 25672 -eval supervisor:terminate_child(rabbit_sup,rabbit_epmd_monitor_sup)"
EOF
}

# rabbitmq as its init script starts it (start-stop-daemon as the rabbitmq user, its pid file),
# without the script's two rabbitmqctl runs, `status` before and `wait` during the start: each
# is an Erlang VM of its own that loads Elixir, minutes of CPU under TCG beside the server's
# own start. Ready once it accepts connections on 5672 (its listener starts last).
_cinder_rabbitmq_start() {
    local t0 end rc=0
    t0=$(now_ms)
    install -d -m 0755 -o rabbitmq -g rabbitmq /run/rabbitmq
    printf '[%8s] $ start-stop-daemon --start --chuid rabbitmq --exec /usr/sbin/rabbitmq-server --background\n' \
        "$(uptime_s)" >>"$CINDER_LOG_DIR/setup.log"
    RABBITMQ_PID_FILE=/run/rabbitmq/pid setsid -w start-stop-daemon --quiet --chuid rabbitmq --start \
        --exec /usr/sbin/rabbitmq-server --pidfile /run/rabbitmq/pid --background \
        >>"$CINDER_LOG_DIR/setup.log" 2>&1 </dev/null || rc=$?
    ((rc == 0)) || return 1
    end=$(($(now_ms) + 600000))
    while (($(now_ms) < end)); do
        if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && _cinder_pid_alive rabbitmq-server; then
            _cinder_time rabbitmq-server-start $(($(now_ms) - t0))
            return 0
        fi
        sleep 1
    done
    return 1
}

# The database comes with the image: scripts/vm/flavours/openstack.prepare ran `cinder-manage db
# sync` at build time, natively, in 5 s (150-350 s in the guest). Checked here: at the revision
# the build reached (/etc/tether-vm-cinder-db), in WAL mode, the cinder user's.
_cinder_sqlite() { # SQL : as the cinder user (a WAL database's -wal and -shm files are made by
    # whoever opens it; Cinder must be able to write them)
    su -s /bin/sh -c "sqlite3 /var/lib/cinder/cinder.sqlite '$1'" cinder 2>&1 </dev/null
}
_cinder_db() {
    local t want="" got mode owner
    t=$(now_ms)
    [[ -f /etc/tether-vm-cinder-db ]] && want=$(sed -n 's/^revision=//p' /etc/tether-vm-cinder-db)
    got=$(_cinder_sqlite 'SELECT version_num FROM alembic_version;') || got="error: $got"
    mode=$(_cinder_sqlite 'PRAGMA journal_mode;') || mode="error: $mode"
    owner=$(stat -c %U /var/lib/cinder/cinder.sqlite 2>&1)
    printf 'the image'"'"'s database: revision %s (the build reached %s), journal mode %s, owner %s\n' \
        "$got" "${want:-nothing: no /etc/tether-vm-cinder-db}" "$mode" "$owner" >>"$CINDER_LOG_DIR/db-sync.log"
    _cinder_time db-check $(($(now_ms) - t))
    [[ -n $want && $got == "$want" && $mode == wal && $owner == cinder ]] && return 0
    _cinder_fail "Cinder's database from the image (scripts/vm/flavours/openstack.prepare)" \
        "revision ${want:-(none recorded)}, journal mode wal, owner cinder" \
        "revision $got, journal mode $mode, owner $owner"
}

_cinder_create() {
    local t0 t t_api t_volume rabbit_pid rc=0
    t0=$(now_ms)
    mkdir -p "$CINDER_RUN"
    install -d -m 0755 /etc/rabbitmq
    _cinder_rabbitmq_env
    # rabbitmq (the slowest) starts while everything else is set up.
    ( _cinder_rabbitmq_start ) &
    rabbit_pid=$!
    _cinder_write_conf
    _cinder_db || return 1
    # The scheduler and the API need the database, not yet rabbitmq (they retry until it
    # answers): their minutes of Python imports under TCG run while LVM and Ceph are set up.
    t_api=$(now_ms)
    _cinder_init cinder-scheduler start || { _cinder_fail "cinder-scheduler starts" "exit 0" "failed"; return 1; }
    _cinder_init cinder-api start || { _cinder_fail "cinder-api starts" "exit 0" "failed (setup.log)"; return 1; }
    t=$(now_ms)
    _cinder_lvm || rc=1
    _cinder_time lvm-setup $(($(now_ms) - t))
    t=$(now_ms)
    _cinder_ceph || rc=1
    _cinder_time ceph-setup $(($(now_ms) - t))
    ((rc == 0)) || return 1
    # The volume service needs Ceph too (the RBD driver connects at its start), not yet
    # rabbitmq: the drivers' set-up runs before it connects.
    t_volume=$(now_ms)
    _cinder_init cinder-volume start || { _cinder_fail "cinder-volume starts" "exit 0" "failed"; return 1; }
    wait "$rabbit_pid" || { _cinder_fail "rabbitmq-server starts" "connections accepted on 5672 within 600 s" "none (setup.log, rabbitmq.log)"; return 1; }
    _cinder_wait_api 180 || { _cinder_fail "cinder-api answers" "an answer on $CINDER_URL within 180 s" "none (cinder-api.log)"; return 1; }
    _cinder_time api-answers $(($(now_ms) - t_api))
    _cinder_type lvm || return 1
    _cinder_type rbd || return 1
    _cinder_wait_pools 300 || return 1
    _cinder_time pools-ready $(($(now_ms) - t_volume))
    _cinder_volume_parent_nice
    CINDER_UP_MS=$(($(now_ms) - t0))
    _cinder_time cinder-up "$CINDER_UP_MS"
    cp "$CINDER_LOG_DIR/timings.log" "$CINDER_RUN/timings.log"
    note cinder_up_ms "$CINDER_UP_MS"
    date -u +%FT%TZ >"$CINDER_RUN/up"
}

# cinder_up : set Cinder up on the first call of a boot; later, check that it runs.
cinder_up() {
    local s
    if [[ -f $CINDER_RUN/up ]]; then
        ceph_up || return 1
        for s in rabbitmq-server "${CINDER_SERVICES[@]}"; do
            _cinder_pid_alive "$s" || { _cinder_fail "Cinder service $s runs" "running since cinder_up" "not running"; return 1; }
        done
        _cinder_wait_api 180 || { _cinder_fail "cinder-api answers" "an answer within 180 s" "none"; return 1; }
        # (A volume service restarted by an earlier scenario is down until its drivers started.)
        _cinder_wait_pools 300 || return 1
        return 0
    fi
    command -v cinder-manage >/dev/null \
        || { fail "Cinder in the guest" "the openstack image flavour (scripts/vm/run --flavour openstack)" "no cinder-manage"; return 1; }
    _cinder_create
}

# cinder_stop [api] [volume] : stop the API and the volume service (default both: the "Cinder
# unreachable" case); the scheduler and rabbitmq keep running.
cinder_stop() {
    local s
    (($#)) || set -- api volume
    # (The volume service's parent stops its children: back to normal priority for that.)
    [[ " $* " == *" volume "* ]] && _cinder_volume_parent_nice 0
    for s in "$@"; do _cinder_init "cinder-$s" stop || true; done
    if [[ " $* " == *" api "* ]] && curl -s -m 5 -o /dev/null "$CINDER_URL/"; then
        _cinder_fail "cinder-api stopped" "no answer on $CINDER_URL" "an answer"
        return 1
    fi
}

# cinder_start [api] [volume] : start them again (default both); returns once the API answers
# and, for the volume service, the drivers in CINDER_START_DRIVERS (default both:
# "LVMVolumeDriver RBDDriver") serve RPC again. The LVM driver's start takes minutes under TCG
# (rootwrap calls): a scenario that only uses RBD volumes waits for RBDDriver alone.
cinder_start() {
    local t0 off end n=0
    (($#)) || set -- api volume
    t0=$(now_ms)
    off=$(stat -c %s /var/log/cinder/cinder-volume.log 2>/dev/null || echo 0)
    if [[ " $* " == *" volume "* ]]; then
        _cinder_init cinder-volume start || { _cinder_fail "cinder-volume starts again" "exit 0" "failed"; return 1; }
    fi
    if [[ " $* " == *" api "* ]]; then
        _cinder_init cinder-api start || { _cinder_fail "cinder-api starts again" "exit 0" "failed"; return 1; }
        _cinder_wait_api 180 || { _cinder_fail "cinder-api answers again" "an answer within 180 s" "none"; return 1; }
    fi
    if [[ " $* " != *" volume "* ]]; then
        _cinder_time "cinder-restart($*)" $(($(now_ms) - t0))
        return 0
    fi
    # A driver serves RPC once its "Initializing RPC dependent components" line is logged.
    local d want=() missing=()
    read -r -a want <<<"${CINDER_START_DRIVERS:-LVMVolumeDriver RBDDriver}"
    end=$(($(now_ms) + 300000))
    while (($(now_ms) < end)); do
        missing=()
        for d in "${want[@]}"; do
            tail -c +"$((off + 1))" /var/log/cinder/cinder-volume.log \
                | grep -q "Initializing RPC dependent components of volume driver $d" || missing+=("$d")
        done
        ((${#missing[@]} == 0)) && break
        sleep 2
    done
    ((${#missing[@]} == 0)) || { _cinder_fail "cinder-volume's drivers start again" "${want[*]} serving within 300 s" "not: ${missing[*]}"; return 1; }
    _cinder_time "cinder-restart($*)" $(($(now_ms) - t0))
    _cinder_volume_parent_nice
}
