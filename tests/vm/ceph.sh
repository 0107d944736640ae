# shellcheck shell=bash disable=SC2034 # variables for the scenarios that source this
# A one-node Ceph cluster inside the test guest, for RBD scenarios. Sourced
# after lib.sh:   source "$SHARE/vm/ceph.sh"
#
# One monitor (mon.a) and one bluestore OSD (osd.0, a 1 GiB sparse file),
# both on 127.0.0.1, started without systemd and without a mgr. The cluster
# lives for the whole boot: the first ceph_up creates it (about a minute
# under TCG), later calls (in this or later scenarios) only check it.
#
# The cluster's own configuration and admin keyring are kept out of
# /etc/ceph on purpose: the guest plays a bare-metal node, which has no
# ceph.conf, so whatever maps a volume must pass the monitor address, the
# user and the key itself. The helpers below use the admin identity
# explicitly (ceph_cli, ceph_rbd, ceph_rados).
#
# Functions (all ceph/rados/rbd calls run under `timeout`):
#   ceph_up                    create or check the cluster; prints nothing
#   ceph_pool NAME             replicated pool (size 1, 8 PGs), rbd-initialised,
#                              returns once an object write succeeds; idempotent
#   ceph_image POOL NAME SIZE [RBD_CREATE_ARGS...]   rbd create (SIZE as rbd takes it: 64M, 1G)
#   ceph_user NAME [CAPS...]   cephx user client.NAME; prints ONLY its key.
#                              Default caps: mon 'profile rbd' osd 'profile rbd'
#   ceph_keyfile FILE KEY      write KEY to FILE, mode 0600
#   ceph_unmap_all             unmount and force-remove every kernel RBD mapping
#   ceph_down                  unmap all, stop the daemons, delete the cluster
#   ceph_cli ARGS...           `ceph` as client.admin
#   ceph_rbd ARGS...           `rbd` as client.admin
#   ceph_rados ARGS...         `rados` as client.admin
#   ceph_gen_key               print a random, well-formed cephx key (not registered)
#
# Variables: CEPH_MON (msgr v1 address, what the kernel client uses by
# default), CEPH_MON_V2 (msgr v2, needs `-o ms_mode=crc|secure|prefer-crc|
# prefer-secure` in the kernel), CEPH_MON_IP, CEPH_FSID, CEPH_CONF_FILE,
# CEPH_ADMIN_KEYRING, CEPH_UP_MS (set by a ceph_up that created the cluster).
#
# Logs: $RESULT_DIR/ceph/ holds cli.log (every helper command and its
# stderr; keys never appear there) and the daemons' logs mon.a.log, osd.0.log
# while the current scenario runs (each ceph_up re-points the daemons' log
# files at the calling scenario's directory).

CEPH_MON_IP=127.0.0.1
CEPH_MON_PORT=6789
CEPH_MON_V2_PORT=3300
CEPH_MON=$CEPH_MON_IP:$CEPH_MON_PORT
CEPH_MON_V2=$CEPH_MON_IP:$CEPH_MON_V2_PORT
# Fixed, so that captured fixtures do not change from run to run.
CEPH_FSID=c0ffee00-7e7e-4e7e-8e7e-00000000c0de
CEPH_OSD_UUID=c0ffee00-7e7e-4e7e-8e7e-0000000000d0
CEPH_DIR=/var/lib/tether-ceph  # config, keyrings, OSD data (root disk)
CEPH_RUN=/run/tether-ceph      # pids, sockets, mon data (tmpfs), log link
CEPH_CONF_FILE=$CEPH_DIR/ceph.conf
CEPH_ADMIN_KEYRING=$CEPH_DIR/ceph.client.admin.keyring
CEPH_LOG_DIR=$RESULT_DIR/ceph
CEPH_CLI_TIMEOUT=${CEPH_CLI_TIMEOUT:-60}
CEPH_UP_MS=${CEPH_UP_MS:-}
mkdir -p "$CEPH_LOG_DIR"

# --- running commands -------------------------------------------------------------------

# _ceph_t SECS CMD... : run CMD under timeout; its stderr goes to cli.log.
_ceph_t() {
    local t=$1 rc=0
    shift
    printf '[%8s] $ %s\n' "$(uptime_s)" "$*" >>"$CEPH_LOG_DIR/cli.log"
    timeout -k 5 "$t" "$@" 2>>"$CEPH_LOG_DIR/cli.log" || rc=$?
    ((rc == 0)) || printf '[%8s] exit %s%s\n' "$(uptime_s)" "$rc" \
        "$( ((rc == 124 || rc == 137)) && echo " (timed out after ${t}s)")" >>"$CEPH_LOG_DIR/cli.log"
    return $rc
}

ceph_cli() { _ceph_t "$CEPH_CLI_TIMEOUT" ceph -c "$CEPH_CONF_FILE" -n client.admin -k "$CEPH_ADMIN_KEYRING" --connect-timeout 30 "$@"; }
ceph_rbd() { _ceph_t "$CEPH_CLI_TIMEOUT" rbd -c "$CEPH_CONF_FILE" -n client.admin -k "$CEPH_ADMIN_KEYRING" "$@"; }
ceph_rados() { _ceph_t "$CEPH_CLI_TIMEOUT" rados -c "$CEPH_CONF_FILE" -n client.admin -k "$CEPH_ADMIN_KEYRING" "$@"; }

# ceph_gen_key : a random cephx key in Ceph's format (base64 of: u16 type 1
# = AES, u32 sec + u32 nsec creation time, u16 length 16, 16 random bytes).
ceph_gen_key() {
    { printf '\001\000\000\000\000\000\000\000\000\000\020\000'; head -c 16 /dev/urandom; } | base64 -w0
    echo
}

# ceph_keyfile FILE KEY : a keyfile for `rbd --keyfile` (mode 0600).
ceph_keyfile() {
    (umask 077 && printf '%s\n' "$2" >"$1")
    chmod 0600 "$1"
}

_ceph_fail() { # DESC WHAT : record a failed check with the daemon logs' tails
    fail "$1" "$2" "$3; see ceph/cli.log, ceph/mon.a.log, ceph/osd.0.log"
    return 1
}

# --- cluster ---------------------------------------------------------------------------

_ceph_pid_alive() { [[ -f $CEPH_RUN/$1.pid ]] && kill -0 "$(cat "$CEPH_RUN/$1.pid")" 2>/dev/null; }

# Point the daemons' log files (log_file = $CEPH_RUN/log/$name.log) at this
# scenario's result directory; SIGHUP makes running daemons reopen them.
_ceph_relink_logs() {
    local cur
    cur=$(readlink "$CEPH_RUN/log" 2>/dev/null || true)
    [[ $cur == "$CEPH_LOG_DIR" ]] && return 0
    ln -sfn "$CEPH_LOG_DIR" "$CEPH_RUN/log"
    local d
    for d in mon.a osd.0; do
        _ceph_pid_alive "$d" && kill -HUP "$(cat "$CEPH_RUN/$d.pid")" 2>/dev/null
    done
    return 0
}

_ceph_write_conf() {
    cat >"$CEPH_CONF_FILE" <<EOF
# One-node test cluster (tests/vm/ceph.sh). Not /etc/ceph/ceph.conf on purpose.
[global]
fsid = $CEPH_FSID
mon host = [v2:$CEPH_MON_IP:$CEPH_MON_V2_PORT,v1:$CEPH_MON_IP:$CEPH_MON_PORT]
public addr = $CEPH_MON_IP
cluster addr = $CEPH_MON_IP
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $CEPH_RUN
admin socket = $CEPH_RUN/\$name.asok
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
debug rocksdb = 1/5

[client.admin]
keyring = $CEPH_ADMIN_KEYRING

[mon]
mon data = $CEPH_RUN/mon-\$id
pid file = $CEPH_RUN/\$name.pid
log file = $CEPH_RUN/log/\$name.log
mon cluster log file = $CEPH_RUN/log/cluster.log
mon data avail warn = 2
mon data avail crit = 1

[osd]
osd data = $CEPH_DIR/osd-\$id
keyring = $CEPH_DIR/osd-\$id/keyring
pid file = $CEPH_RUN/\$name.pid
log file = $CEPH_RUN/log/\$name.log
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 1073741824
bluestore cache autotune = false
bluestore cache size = 67108864
osd crush update on start = true
EOF
}

# _ceph_wait_log FILE PATTERN SECS PID : wait for a line in a daemon log
# while the daemon PID lives. Polls with builtins only.
_ceph_wait_log() {
    local f=$1 pat=$2 secs=$3 pid=$4 end
    end=$(($(now_ms) + secs * 1000))
    while (($(now_ms) < end)); do
        [[ -f $f ]] && grep -qF -- "$pat" "$f" && return 0
        kill -0 "$pid" 2>/dev/null || return 2
        sleep 0.2
    done
    return 1
}

_ceph_create() {
    local t0 key_mon key_admin key_osd mkfs_pid rc
    t0=$(now_ms)
    ceph_down_quiet
    mkdir -p "$CEPH_DIR/osd-0" "$CEPH_RUN"
    ln -sfn "$CEPH_LOG_DIR" "$CEPH_RUN/log"
    _ceph_write_conf
    key_mon=$(ceph_gen_key) key_admin=$(ceph_gen_key) key_osd=$(ceph_gen_key)
    (
        umask 077
        cat >"$CEPH_ADMIN_KEYRING" <<EOF
[client.admin]
	key = $key_admin
	caps mds = "allow *"
	caps mgr = "allow *"
	caps mon = "allow *"
	caps osd = "allow *"
EOF
        cat >"$CEPH_DIR/osd-0/keyring" <<EOF
[osd.0]
	key = $key_osd
EOF
        {
            printf '[mon.]\n\tkey = %s\n\tcaps mon = "allow *"\n' "$key_mon"
            cat "$CEPH_ADMIN_KEYRING"
            printf '[osd.0]\n\tkey = %s\n\tcaps mgr = "allow profile osd"\n\tcaps mon = "allow profile osd"\n\tcaps osd = "allow *"\n' "$key_osd"
        } >"$CEPH_DIR/mon.keyring"
    )
    _ceph_t 30 monmaptool --create --fsid "$CEPH_FSID" \
        --addv a "[v2:$CEPH_MON_IP:$CEPH_MON_V2_PORT,v1:$CEPH_MON_IP:$CEPH_MON_PORT]" \
        "$CEPH_DIR/monmap" >>"$CEPH_LOG_DIR/cli.log" \
        || { _ceph_fail "ceph: monmaptool" "exit 0" "failed"; return 1; }

    # The OSD's bluestore mkfs does not need the monitor (it gets the monmap
    # file), so it runs while the monitor starts.
    _ceph_t 180 ceph-osd -c "$CEPH_CONF_FILE" -i 0 --mkfs --osd-uuid "$CEPH_OSD_UUID" \
        --monmap "$CEPH_DIR/monmap" --no-mon-config >>"$CEPH_LOG_DIR/osd-mkfs.out" &
    mkfs_pid=$!

    _ceph_t 60 ceph-mon -c "$CEPH_CONF_FILE" -i a --mkfs --monmap "$CEPH_DIR/monmap" \
        --keyring "$CEPH_DIR/mon.keyring" >>"$CEPH_LOG_DIR/cli.log" \
        || { wait "$mkfs_pid" || true; _ceph_fail "ceph: ceph-mon --mkfs" "exit 0" "failed"; return 1; }
    # Daemons fork into the background once initialised; setsid keeps them
    # out of the scenario's process group (which `timeout` kills).
    _ceph_t 60 setsid -w ceph-mon -c "$CEPH_CONF_FILE" -i a >>"$CEPH_LOG_DIR/cli.log" \
        || { wait "$mkfs_pid" || true; _ceph_fail "ceph: start ceph-mon" "exit 0" "failed"; return 1; }

    # First monitor command: register osd.0 (waits for the monitor to form
    # its quorum of one).
    rc=0
    _ceph_t 120 ceph -c "$CEPH_CONF_FILE" -n client.admin --connect-timeout 110 \
        osd new "$CEPH_OSD_UUID" 0 >>"$CEPH_LOG_DIR/cli.log" || rc=$?
    if ((rc != 0)); then
        wait "$mkfs_pid" || true
        _ceph_fail "ceph: monitor answers (ceph osd new)" "exit 0 within 120s" "exit $rc"
        return 1
    fi
    CEPH_MON_MS=$(($(now_ms) - t0))
    rc=0
    wait "$mkfs_pid" || rc=$?
    ((rc == 0)) || { _ceph_fail "ceph: ceph-osd --mkfs" "exit 0" "exit $rc (osd-mkfs.out, osd.0.log)"; return 1; }
    _ceph_t 120 setsid -w ceph-osd -c "$CEPH_CONF_FILE" -i 0 >>"$CEPH_LOG_DIR/cli.log" \
        || { _ceph_fail "ceph: start ceph-osd" "exit 0" "failed"; return 1; }
    rc=0
    _ceph_wait_log "$CEPH_LOG_DIR/osd.0.log" "state: booting -> active" 180 "$(cat "$CEPH_RUN/osd.0.pid")" || rc=$?
    if ((rc != 0)); then
        _ceph_fail "ceph: osd.0 boots" "'state: booting -> active' in osd.0.log within 180s" \
            "$( ((rc == 2)) && echo "ceph-osd exited" || echo "not seen")"
        return 1
    fi
    CEPH_UP_MS=$(($(now_ms) - t0))
    date -u +%FT%TZ >"$CEPH_RUN/up"
    log "ceph: cluster up in ${CEPH_UP_MS} ms (monitor answered after ${CEPH_MON_MS} ms)"
}

# ceph_up : make sure the cluster runs (create it on first use). Prints nothing.
ceph_up() {
    if [[ -f $CEPH_RUN/up ]] && _ceph_pid_alive mon.a && _ceph_pid_alive osd.0; then
        _ceph_relink_logs
        return 0
    fi
    [[ -f $CEPH_RUN/up ]] && log "ceph: a daemon died; recreating the cluster"
    _ceph_create
}

# ceph_pool NAME : create (if needed) and rbd-initialise a pool, then wait
# until an object can be written to it.
ceph_pool() {
    local pool=$1 rc=0 t0
    t0=$(now_ms)
    ceph_cli osd pool create "$pool" 8 8 replicated >>"$CEPH_LOG_DIR/cli.log" 2>&1 \
        || { _ceph_fail "ceph: create pool $pool" "exit 0" "failed"; return 1; }
    # Pool I/O needs the PGs to peer; this write waits for that (no mgr, so
    # no PG statistics to poll).
    printf 'probe\n' >"$WORK/ceph-probe"
    _ceph_t 180 rados -c "$CEPH_CONF_FILE" -n client.admin -p "$pool" put tether-probe "$WORK/ceph-probe" || rc=$?
    ((rc == 0)) || { _ceph_fail "ceph: pool $pool writable" "rados put exit 0 within 180s" "exit $rc"; return 1; }
    ceph_rados -p "$pool" rm tether-probe || true
    ceph_rbd pool init "$pool" >>"$CEPH_LOG_DIR/cli.log" \
        || { _ceph_fail "ceph: rbd pool init $pool" "exit 0" "failed"; return 1; }
    log "ceph: pool $pool writable after $(($(now_ms) - t0)) ms"
}

# ceph_image POOL NAME SIZE [ARGS...] : rbd create.
ceph_image() {
    local pool=$1 name=$2 size=$3
    shift 3
    ceph_rbd create --size "$size" "$@" "$pool/$name" >>"$CEPH_LOG_DIR/cli.log" \
        || { _ceph_fail "ceph: rbd create $pool/$name" "exit 0" "failed"; return 1; }
}

# ceph_user NAME [CAPS...] : get or create client.NAME; prints its key only.
# CAPS as `ceph auth` takes them, e.g. mon 'profile rbd' osd 'profile rbd pool=p'.
ceph_user() {
    local name=$1 key
    shift
    (($#)) || set -- mon 'profile rbd' osd 'profile rbd'
    key=$(ceph_cli auth get-or-create-key "client.$name" "$@") \
        || { _ceph_fail "ceph: user client.$name" "exit 0" "failed"; return 1; }
    [[ $key =~ ^[A-Za-z0-9+/=]{20,}$ ]] \
        || { _ceph_fail "ceph: user client.$name" "a base64 key" "something else"; return 1; }
    printf '%s\n' "$key"
}

# ceph_unmap_all : unmount and force-remove every kernel RBD mapping.
ceph_unmap_all() {
    local d id dev mnt rc=0
    [[ -d /sys/bus/rbd/devices ]] || return 0
    for d in /sys/bus/rbd/devices/*; do
        [[ -e $d ]] || continue
        id=${d##*/} dev=/dev/rbd${d##*/}
        while read -r mnt; do
            [[ -n $mnt ]] && { umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; }
        done < <(findmnt -rn -S "$dev" -o TARGET 2>/dev/null || true)
        if ! { printf '%s force' "$id" >/sys/bus/rbd/remove_single_major; } 2>/dev/null; then
            { printf '%s force' "$id" >/sys/bus/rbd/remove; } 2>/dev/null || rc=1
        fi
    done
    udevadm settle --timeout=30 || true
    return $rc
}

_ceph_stop() { # NAME
    local pid i
    [[ -f $CEPH_RUN/$1.pid ]] || return 0
    pid=$(cat "$CEPH_RUN/$1.pid")
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

ceph_down_quiet() {
    ceph_unmap_all || true
    _ceph_stop osd.0
    _ceph_stop mon.a
    rm -rf "$CEPH_RUN" "$CEPH_DIR"
}

# ceph_down : remove all mappings, stop the daemons and delete the cluster
# (the next ceph_up creates a new one).
ceph_down() {
    ceph_down_quiet
    log "ceph: cluster stopped and removed"
}
