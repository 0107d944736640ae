# shellcheck shell=bash
# Guest-side helpers for tether's VM scenarios (sourced inside the guest).
#
# A scenario is a bash script run with `set -Eeuo pipefail`, this file
# already sourced, and these variables set:
#   SCENARIO    scenario name (file name without .sh)
#   RESULT_DIR  per-scenario output directory on the 9p share (host-visible)
#   WORK        scratch directory inside the guest (tmpfs)
#   SHARE       the share's mount point (/mnt/share)
#   GUEST_INITIATOR  the guest's iSCSI initiator name
#   TETHER      path of the tether binary, or empty when none was given
#
# Checks (expect_*) record "ok"/"FAIL" with expected and seen values in
# $RESULT_DIR/checks and do not stop the scenario; a command that fails
# outside a check stops it (set -e) and is recorded by the ERR trap.

SHARE=${SHARE:-/mnt/share}
WORK=${WORK:-/tmp/vm-work}
RESULT_DIR=${RESULT_DIR:-$WORK/result}
SCENARIO=${SCENARIO:-adhoc}
LIO_BATCH=${LIO_BATCH:-$WORK/lio.batch}
LIO_BACKING_DIR=${LIO_BACKING_DIR:-/var/tmp/lio}
CONFIGFS_ISCSI=/sys/kernel/config/target/iscsi
mkdir -p "$WORK" "$RESULT_DIR"
GUEST_INITIATOR=$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi 2>/dev/null || true)
if [[ -x $SHARE/bin/tether ]]; then TETHER=$SHARE/bin/tether; else TETHER=""; fi
export SHARE WORK RESULT_DIR SCENARIO GUEST_INITIATOR TETHER

# --- logging and time -----------------------------------------------------------------

uptime_s() { local u _; read -r u _ </proc/uptime; printf '%s' "$u"; }
log() { printf '[%8s %s] %s\n' "$(uptime_s)" "$SCENARIO" "$*" >&2; }
# Milliseconds since the epoch, without forking.
now_ms() { local t=${EPOCHREALTIME/./}; printf '%d\n' $((t / 1000)); }

# --- checks -----------------------------------------------------------------------------

# Indent every line of a (possibly multi-line) value, truncated to 4000 bytes.
_indent() {
    local v=$1
    ((${#v} > 4000)) && v="${v:0:4000}...(truncated)"
    [[ -z $v ]] && v="(empty)"
    printf '%s\n' "$v" | sed '2,$s/^/    /'
}

_record() { # STATUS DESC [EXPECTED SAW]
    local status=$1 desc=$2
    {
        printf '%s: %s\n' "$status" "$desc"
        if (($# >= 4)); then
            printf '  expected: %s\n' "$(_indent "$3")"
            printf '  saw: %s\n' "$(_indent "$4")"
        fi
    } >>"$RESULT_DIR/checks"
    if [[ $status == FAIL ]]; then
        log "FAIL: $desc"
        (($# >= 4)) && { log "  expected: $3"; log "  saw: $4"; }
    else
        log "ok: $desc"
    fi
    return 0
}

# expect_eq DESC EXPECTED ACTUAL
expect_eq() {
    if [[ $2 == "$3" ]]; then _record ok "$1"; else _record FAIL "$1" "$2" "$3"; fi
}

# expect_ne DESC UNEXPECTED ACTUAL
expect_ne() {
    if [[ $2 != "$3" ]]; then _record ok "$1"; else _record FAIL "$1" "anything but $2" "$3"; fi
}

# expect_match DESC ERE ACTUAL
expect_match() {
    if [[ $3 =~ $2 ]]; then _record ok "$1"; else _record FAIL "$1" "match /$2/" "$3"; fi
}

# expect_line DESC LINE TEXT : TEXT has a line equal to LINE.
expect_line() {
    if grep -qxF -- "$2" <<<"$3"; then _record ok "$1"; else _record FAIL "$1" "a line '$2'" "$3"; fi
}

# expect_true DESC CMD... : the command must exit 0.
expect_true() {
    local desc=$1 rc=0
    shift
    "$@" >"$WORK/expect.out" 2>&1 || rc=$?
    if ((rc == 0)); then
        _record ok "$desc"
    else
        _record FAIL "$desc" "exit 0 from: $*" "exit $rc: $(cat "$WORK/expect.out")"
    fi
}

# expect_rc DESC RC CMD... : run CMD; check its exit code. Leaves stdout in
# $LAST_OUT, stderr in $LAST_ERR (file contents) and the code in $LAST_RC.
LAST_OUT="" LAST_ERR="" LAST_RC=0
expect_rc() {
    local desc=$1 want=$2
    shift 2
    run_capture "$@"
    if [[ $LAST_RC == "$want" ]]; then
        _record ok "$desc"
    else
        _record FAIL "$desc" "exit $want from: $*" "exit $LAST_RC; stderr: $LAST_ERR; stdout: $LAST_OUT"
    fi
}

# run_capture CMD... : run without failing; sets LAST_OUT, LAST_ERR, LAST_RC.
run_capture() {
    LAST_RC=0
    "$@" >"$WORK/last.out" 2>"$WORK/last.err" || LAST_RC=$?
    LAST_OUT=$(cat "$WORK/last.out")
    LAST_ERR=$(cat "$WORK/last.err")
    log "ran (exit $LAST_RC): $*"
}

# fail DESC [EXPECTED SAW] : record a failed check.
fail() { _record FAIL "$@"; }
# pass DESC : record a passed check.
pass() { _record ok "$1"; }

# note KEY VALUE : an informational line shown in the result (e.g. timings).
note() {
    printf '%s: %s\n' "$1" "$2" >>"$RESULT_DIR/notes"
    log "note $1: $2"
}

# --- waiting for devices ----------------------------------------------------------------

# wait_for_path PATH TIMEOUT_S : wait until udev has created and initialised
# PATH (a device node or a /dev/disk/... link). Records a failed check and
# returns 1 on timeout.
wait_for_path() {
    local path=$1 t=${2:-30}
    if udevadm wait --timeout="$t" "$path" 2>"$WORK/wait.err"; then
        return 0
    fi
    fail "wait for $path" "$path to appear within ${t}s" \
        "not there; $(cat "$WORK/wait.err"); by-path: $(printf '%s ' /dev/disk/by-path/*)"
    return 1
}

# wait_for_gone PATH TIMEOUT_S : wait until PATH is removed.
wait_for_gone() {
    local path=$1 t=${2:-30}
    if udevadm wait --removed --timeout="$t" "$path" 2>"$WORK/wait.err"; then
        return 0
    fi
    fail "wait for $path to go" "$path removed within ${t}s" "still there: $(ls -l "$path" 2>&1)"
    return 1
}

# by_path PORTAL IQN LUN : the udev by-path link of an iSCSI LUN.
by_path() { printf '/dev/disk/by-path/ip-%s-iscsi-%s-lun-%s\n' "$1" "$2" "$3"; }

# iscsi_node_set IQN PORTAL NAME VALUE [NAME VALUE...] : update a node record.
iscsi_node_set() {
    local iqn=$1 portal=$2
    shift 2
    while (($# >= 2)); do
        iscsiadm -m node -T "$iqn" -p "$portal" -o update -n "$1" -v "$2" >/dev/null
        shift 2
    done
}

# iscsi_node_new IQN PORTAL : create a node record with node.startup=manual.
iscsi_node_new() {
    iscsiadm -m node -T "$1" -p "$2" -o new >/dev/null
    iscsi_node_set "$1" "$2" node.startup manual
}

# session_disks SID : the sdX names of a session's LUNs, sorted by LUN.
session_disks() {
    local sid=$1 d
    for d in /sys/class/iscsi_session/session"$sid"/device/target*/*:*:*:*/block/*; do
        [[ -e $d ]] && printf '%s %s\n' "$(basename "$(dirname "$(dirname "$d")")")" "$(basename "$d")"
    done | sort -t: -k4,4n | awk '{print $2}'
}

# --- services ---------------------------------------------------------------------------

start_dbus() {
    [[ -S /run/dbus/system_bus_socket ]] && return 0
    mkdir -p /run/dbus
    dbus-daemon --system --fork
}

# start_iscsid : start iscsid (without systemd) and wait until it answers.
start_iscsid() {
    local i rc
    if ! pgrep -x iscsid >/dev/null; then
        iscsid
    fi
    for ((i = 0; i < 200; i++)); do
        rc=0
        iscsiadm -m session >/dev/null 2>&1 || rc=$?
        # 0: sessions listed, 21: no sessions; anything else: not ready yet.
        if ((rc == 0 || rc == 21)); then return 0; fi
        sleep 0.05
    done
    log "iscsid did not answer (last iscsiadm exit $rc)"
    return 1
}

# session_count : number of iSCSI sessions in sysfs.
session_count() {
    local n=0 s
    for s in /sys/class/iscsi_session/session*; do [[ -e $s ]] && n=$((n + 1)); done
    printf '%d\n' "$n"
}

# --- LIO (targetcli) --------------------------------------------------------------------
# Commands accumulate in one batch file and run with a single targetcli
# start (Python start-up costs seconds under TCG). Create LUNs before ACLs:
# ACLs map the LUNs that exist when they are created (and, with
# auto_add_mapped_luns, LUNs created later too).

LIO_CHECKS=()
lio_cmd() { printf '%s\n' "$*" >>"$LIO_BATCH"; }

# lio_target IQN [IP [PORT]] : a target with tpg1 and one portal, no auth.
lio_target() {
    local iqn=$1 ip=${2:-127.0.0.1} port=${3:-3260}
    lio_cmd "/iscsi create $iqn"
    lio_cmd "/iscsi/$iqn/tpg1 set attribute authentication=0"
    lio_portal "$iqn" "$ip" "$port"
    LIO_CHECKS+=("$CONFIGFS_ISCSI/$iqn/tpgt_1/enable=1")
}

# lio_portal IQN IP PORT : one more portal on tpg1.
lio_portal() {
    lio_cmd "/iscsi/$1/tpg1/portals create $2 $3"
    LIO_CHECKS+=("$CONFIGFS_ISCSI/$1/tpgt_1/np/$2:$3")
}

# lio_lun IQN NAME SIZE [LUN] : a sparse fileio backstore NAME of SIZE (e.g.
# 64M) exported as the next LUN (or LUN number LUN) of IQN's tpg1.
lio_lun() {
    local iqn=$1 name=$2 size=$3 lun=${4:-}
    mkdir -p "$LIO_BACKING_DIR"
    lio_cmd "/backstores/fileio create name=$name file_or_dev=$LIO_BACKING_DIR/$name.img size=$size sparse=true"
    lio_cmd "/iscsi/$iqn/tpg1/luns create /backstores/fileio/$name${lun:+ lun=$lun}"
    LIO_CHECKS+=("/sys/kernel/config/target/core/fileio_*/$name/enable=1")
}

# lio_acl IQN INITIATOR [chap USER PASS [mutual MUSER MPASS]] : allow
# INITIATOR, optionally with (mutual) CHAP. CHAP turns on authentication for
# the whole TPG.
lio_acl() {
    local iqn=$1 init=$2
    shift 2
    lio_cmd "/iscsi/$iqn/tpg1/acls create $init"
    LIO_CHECKS+=("$CONFIGFS_ISCSI/$iqn/tpgt_1/acls/$init")
    if [[ ${1:-} == chap ]]; then
        lio_cmd "/iscsi/$iqn/tpg1/acls/$init set auth userid=$2 password=$3"
        if [[ ${4:-} == mutual ]]; then
            lio_cmd "/iscsi/$iqn/tpg1/acls/$init set auth mutual_userid=$5 mutual_password=$6"
        fi
        lio_cmd "/iscsi/$iqn/tpg1 set attribute authentication=1"
    fi
}

# lio_demo IQN : let any initiator in without an ACL (demo mode, read-write).
lio_demo() {
    lio_cmd "/iscsi/$1/tpg1 set attribute generate_node_acls=1 demo_mode_write_protect=0 cache_dynamic_acls=1 authentication=0"
}

# lio_apply : run the accumulated batch in one targetcli call and verify the
# result in configfs. Records a failed check and returns 1 on error.
lio_apply() {
    local batch="$WORK/lio.apply" c path want got bad=()
    start_dbus
    mkdir -p /etc/target
    {
        echo "set global auto_add_default_portal=false"
        echo "set global auto_save_on_exit=false"
        echo "set global auto_add_mapped_luns=true"
        cat "$LIO_BATCH" 2>/dev/null
        echo "exit"
    } >"$batch"
    rm -f "$LIO_BATCH"
    local rc=0 t0
    t0=$(now_ms)
    targetcli <"$batch" >"$WORK/targetcli.out" 2>&1 || rc=$?
    cat "$WORK/targetcli.out" >>"$RESULT_DIR/targetcli.log"
    log "targetcli batch of $(wc -l <"$batch") lines: exit $rc in $(($(now_ms) - t0)) ms"
    for c in "${LIO_CHECKS[@]}"; do
        path=${c%=*} want=""
        [[ $c == *=* ]] && want=${c##*=}
        # shellcheck disable=SC2086 # the fileio check uses a glob
        path=$(compgen -G "$path" | head -n1 || true)
        if [[ -z $path || ! -e $path ]]; then
            bad+=("missing ${c%=*}")
        elif [[ -n $want ]]; then
            got=$(cat "$path" 2>/dev/null || true)
            [[ $got == "$want" ]] || bad+=("$path is '$got', not '$want'")
        fi
    done
    LIO_CHECKS=()
    # targetcli exits 0 even when a batch command fails, and its error
    # messages vary ("No such path", "WWN not valid as: ..."), so every
    # output line must be a known success message (extend with
    # LIO_OK_OUTPUT, an ERE).
    local errs ok_re='^(Parameter .* is now|Created |Using default IP port|Deleted |All configuration cleared|Default portal not created|Warning: Could not load preferences file|targetcli shell version|Copyright |For help on commands|Global pref )'
    [[ -n ${LIO_OK_OUTPUT:-} ]] && ok_re="$ok_re|$LIO_OK_OUTPUT"
    errs=$(sed -e 's|^\(/[^ ]*> \)*||' "$WORK/targetcli.out" | grep -vE "$ok_re" | grep -v '^[[:space:]]*$' || true)
    if ((rc != 0 || ${#bad[@]} > 0)) || [[ -n $errs ]]; then
        fail "targetcli configuration applied" "targetcli exit 0 and configfs entries present" \
            "targetcli exit $rc${bad[*]:+; ${bad[*]}}${errs:+; unexpected output: $errs} (full output: targetcli.log)"
        return 1
    fi
}

# lio_clear : remove all LIO configuration and backing files.
lio_clear() {
    start_dbus
    rm -f "$LIO_BATCH"
    LIO_CHECKS=()
    if compgen -G "$CONFIGFS_ISCSI/iqn.*" >/dev/null || compgen -G "/sys/kernel/config/target/core/*_*/*" >/dev/null; then
        printf 'set global auto_save_on_exit=false\nclearconfig confirm=True\nexit\n' \
            | targetcli >"$WORK/targetcli-clear.out" 2>&1 || true
    fi
    rm -rf "$LIO_BACKING_DIR"
    # Discovery authentication is fabric-wide, not per target: clearconfig keeps it.
    local enforce=/sys/kernel/config/target/iscsi/discovery_auth/enforce_discovery_auth
    [[ -e $enforce ]] && echo 0 >"$enforce"
    if compgen -G "$CONFIGFS_ISCSI/iqn.*" >/dev/null; then
        log "lio_clear: targets left: $(ls "$CONFIGFS_ISCSI")"
        return 1
    fi
}

# --- initiator cleanup ------------------------------------------------------------------

# iscsi_cleanup : log out of every session and delete all node and
# discovery records.
iscsi_cleanup() {
    iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true
    iscsiadm -m session -u >/dev/null 2>&1 || true
    iscsiadm -m node -o delete >/dev/null 2>&1 || true
    rm -rf /etc/iscsi/nodes/* /etc/iscsi/send_targets/* 2>/dev/null || true
    udevadm settle --timeout=30 || true
    if [[ $(session_count) != 0 ]]; then
        log "iscsi_cleanup: sessions left: $(ls /sys/class/iscsi_session)"
        return 1
    fi
}

# rbd_cleanup : remove every kernel RBD mapping (unmounting first).
rbd_cleanup() {
    local d
    for d in /sys/bus/rbd/devices/*; do
        [[ -e $d ]] || continue
        umount -q "/dev/rbd${d##*/}" 2>/dev/null || true
        udevadm settle --timeout=10 || true
        echo "${d##*/} force" >/sys/bus/rbd/remove_single_major 2>/dev/null || true
    done
}

# multipath_cleanup : flush every multipath map, stop multipathd, forget registered WWIDs.
multipath_cleanup() {
    command -v multipath >/dev/null || return 0
    multipath -F >/dev/null 2>&1 || true
    multipathd shutdown >/dev/null 2>&1 || true
    rm -f /etc/multipath/wwids
}

# vm_cleanup : tear down everything a scenario may have set up.
vm_cleanup() {
    local rc=0
    rbd_cleanup
    multipath_cleanup
    if [[ -d /sys/kernel/config/nvmet || -e /sys/class/nvme ]]; then
        grep -o '^/dev/nvme[^ ]*' /proc/mounts | xargs -r umount -q 2>/dev/null || true
        # shellcheck source=nvmet.sh
        source "$SHARE/vm/nvmet.sh"
        nvmet_cleanup || rc=1
    fi
    iscsi_cleanup || rc=1
    lio_clear || rc=1
    return $rc
}
