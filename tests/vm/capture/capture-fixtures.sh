# shellcheck shell=bash disable=SC2154
# Capture real open-iscsi, sysfs and udev output for tether's parser tests.
# Everything goes to $RESULT_DIR/fixtures/; scripts/vm/capture-fixtures
# copies it into tests/fixtures/iscsi/. Checks only that the captures look
# sane (exit codes as expected, 2 LUNs in one session).
# vm-timeout: 300

PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:fixture
IQN_CHAP=iqn.2003-01.test.tether:fixture-chap
DEAD_PORTAL=127.0.0.1:3261
FIX=$RESULT_DIR/fixtures
mkdir -p "$FIX"

# capture NAME CMD... : NAME.stdout, NAME.stderr and NAME.exit in $FIX.
capture() {
    local name=$1 rc=0
    shift
    "$@" >"$FIX/$name.stdout" 2>"$FIX/$name.stderr" || rc=$?
    printf '%s\n' "$rc" >"$FIX/$name.exit"
    printf '%s\n' "$*" >"$FIX/$name.cmd"
    LAST_RC=$rc
    log "captured $name (exit $rc): $*"
}

# Text dump of a sysfs subtree: one line per entry, "d PATH", "l PATH -> TARGET"
# or "f PATH = VALUE" (newlines in values shown as \n; write-only, binary and
# unreadable files flagged). Symlinks are not followed. Uses bash builtins
# per entry: a fork per file costs ~0.1 s under TCG.
sysfs_dump() {
    local root=$1 depth=$2 type mode p link v
    while IFS=$'\t' read -r type mode p link; do
        case $type in
            l) printf 'l %s -> %s\n' "$p" "$link" ;;
            d) printf 'd %s\n' "$p" ;;
            f)
                if (((8#$mode & 8#444) == 0)); then
                    printf 'f %s (write-only)\n' "$p"
                elif ! read_attr "$p"; then
                    printf 'f %s (unreadable)\n' "$p"
                elif v=$ATTR && [[ $v == *[![:print:][:space:]]* ]]; then
                    printf 'f %s (binary)\n' "$p"
                else
                    v=${v%$'\n'}
                    printf 'f %s = %s\n' "$p" "${v//$'\n'/\\n}"
                fi
                ;;
        esac
    done < <(find "$root" -maxdepth "$depth" \( -name power -o -name mq -o -name iosched -o -name trace \
        -o -name integrity -o -name subsystem -o -name uevent -o -name bsg -o -name scsi_generic \
        -o -name vpd_pg\* -o -name inquiry \) -prune -o -printf '%y\t%m\t%p\t%l\n' | LC_ALL=C sort -t$'\t' -k3,3)
}
# read_attr FILE : read a sysfs attribute (first 2 KiB) into $ATTR without
# forking; fails if FILE cannot be opened.
ATTR=""
read_attr() {
    ATTR=""
    { : <"$1"; } 2>/dev/null || return 1
    IFS= read -r -d '' -n 2048 ATTR <"$1" 2>/dev/null || true
}

lio_target "$IQN"
lio_lun "$IQN" fix0 64M
lio_lun "$IQN" fix1 32M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_target "$IQN_CHAP"
lio_lun "$IQN_CHAP" fixchap0 16M
lio_acl "$IQN_CHAP" "$GUEST_INITIATOR" chap tether-user tether-secret-123
lio_apply

capture iscsiadm-version iscsiadm --version
capture iscsiadm-session-none iscsiadm -m session
expect_eq "iscsiadm -m session with no sessions exits 21" 21 "$LAST_RC"
capture iscsiadm-node-none iscsiadm -m node
expect_eq "iscsiadm -m node with no records exits 21" 21 "$LAST_RC"

capture iscsiadm-discovery-sendtargets iscsiadm -m discovery -t sendtargets -p "$PORTAL"
expect_eq "discovery exits 0" 0 "$LAST_RC"
capture iscsiadm-discovery-dead-portal timeout 120 iscsiadm -m discovery -t sendtargets -p "$DEAD_PORTAL"
expect_ne "discovery of a dead portal fails" 0 "$LAST_RC"
iscsiadm -m node -o delete >/dev/null

# Node records created the way tether creates them.
iscsi_node_new "$IQN" "$PORTAL"
iscsi_node_new "$IQN_CHAP" "$PORTAL"
iscsi_node_set "$IQN_CHAP" "$PORTAL" node.session.auth.authmethod CHAP \
    node.session.auth.username tether-user node.session.auth.password wrong-secret-000
iscsi_node_set "$IQN" "$PORTAL" node.session.timeo.replacement_timeout 77
capture iscsiadm-node-new-exists iscsiadm -m node -T "$IQN" -p "$PORTAL" -o new
note o_new_on_existing_record_exit "$LAST_RC"
note replacement_timeout_after_o_new_on_existing \
    "$(iscsiadm -m node -T "$IQN" -p "$PORTAL" | sed -n 's/^node.session.timeo.replacement_timeout = //p')"
iscsi_node_set "$IQN" "$PORTAL" node.startup manual
capture iscsiadm-node iscsiadm -m node
capture iscsiadm-node-record iscsiadm -m node -T "$IQN" -p "$PORTAL"
capture iscsiadm-node-record-chap iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL"
expect_eq "CHAP password is masked in the record dump" "" \
    "$(grep -F tether-secret "$FIX/iscsiadm-node-record-chap.stdout" || true)"
capture iscsiadm-node-record-unknown iscsiadm -m node -T iqn.2003-01.test.tether:nosuch -p "$PORTAL"
capture iscsiadm-logout-no-session iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout
expect_eq "logout without a session exits 21" 21 "$LAST_RC"

# One login, watched by udevadm monitor.
stdbuf -oL udevadm monitor --udev --property --subsystem-match=block >"$FIX/udevadm-monitor-login.txt" 2>&1 &
mon=$!
for _ in $(seq 100); do grep -q 'UDEV' "$FIX/udevadm-monitor-login.txt" 2>/dev/null && break; sleep 0.05; done
capture iscsiadm-login iscsiadm -m node -T "$IQN" -p "$PORTAL" --login
expect_eq "login exits 0" 0 "$LAST_RC"
wait_for_path "$(by_path "$PORTAL" "$IQN" 0)" 30
wait_for_path "$(by_path "$PORTAL" "$IQN" 1)" 30
udevadm settle --timeout=30
sleep 0.5
kill "$mon"; wait "$mon" 2>/dev/null || true

expect_eq "one session" 1 "$(session_count)"
sid=$(basename /sys/class/iscsi_session/session*)
sid=${sid#session}
mapfile -t disks < <(session_disks "$sid")
expect_eq "two LUNs in the session" 2 "${#disks[@]}"

capture iscsiadm-session iscsiadm -m session
capture iscsiadm-session-P1 iscsiadm -m session -P 1
capture iscsiadm-session-P3 iscsiadm -m session -P 3
capture iscsiadm-session-r iscsiadm -m session -r "$sid"
capture iscsiadm-login-again iscsiadm -m node -T "$IQN" -p "$PORTAL" --login
note login_when_logged_in_exit "$LAST_RC"
expect_eq "login while logged in exits 15 (session exists)" 15 "$LAST_RC"
expect_eq "still one session" 1 "$(session_count)"

lun=0
for d in "${disks[@]}"; do
    capture "udevadm-info-lun$lun" udevadm info --query=all --name="/dev/$d"
    lun=$((lun + 1))
done

# sysfs for one session with 2 LUNs: one merged tree, sorted by path.
sess=$(readlink -f "/sys/class/iscsi_session/session$sid")
sessdev=$(readlink -f "/sys/class/iscsi_session/session$sid/device")
hostdir=$(dirname "$sessdev")
{
    for c in iscsi_session iscsi_connection iscsi_host scsi_host scsi_device scsi_disk iscsi_transport; do
        sysfs_dump "/sys/class/$c" 1
    done
    for d in "${disks[@]}"; do sysfs_dump "/sys/block/$d" 0; done
    sysfs_dump "$hostdir" 3
    sysfs_dump "$sessdev" 4
    for d in "${disks[@]}"; do
        b=$(readlink -f "/sys/block/$d")
        sysfs_dump "$b" 1
        sysfs_dump "$b/queue" 1
    done
} 2>"$WORK/sysfs.err" | LC_ALL=C sort -u | LC_ALL=C sort -s -t' ' -k2,2 >"$WORK/sysfs.tree"
{
    echo "# sysfs of one iSCSI session with 2 LUNs (open-iscsi + iscsi_tcp, LIO target on 127.0.0.1:3260),"
    echo "# captured by tests/vm/capture/capture-fixtures.sh; kernel $(uname -r)."
    echo "# session$sid: class $sess, device $sessdev; disks: ${disks[*]} (LUN 0, LUN 1)"
    echo "# Lines: 'd DIR', 'l LINK -> TARGET' (readlink), 'r LINK => PATH' (readlink -f),"
    printf '%s\n' "# 'f FILE = VALUE' (first 2 KiB; newline shown as \\n, trailing spaces kept),"
    echo "# 'f FILE (write-only|binary|unreadable)'. Pruned: power, mq, iosched, trace, integrity,"
    echo "# subsystem, uevent, bsg, scsi_generic, vpd_pg*, inquiry."
    for l in /sys/class/iscsi_session/* /sys/class/iscsi_connection/* /sys/class/iscsi_host/* \
        /sys/class/scsi_host/* /sys/class/scsi_device/* /sys/class/scsi_disk/* /sys/block/sd*; do
        [[ -e $l ]] && printf 'r %s => %s\n' "$l" "$(readlink -f "$l")"
    done
    cat "$WORK/sysfs.tree"
} >"$FIX/sysfs-session-2luns.txt"

ls -l /dev/disk/by-path/ >"$FIX/dev-disk-by-path.txt"
ls -l /dev/disk/by-id/ >"$FIX/dev-disk-by-id.txt" 2>&1 || true
capture lsblk lsblk -b -o NAME,KNAME,MAJ:MIN,SIZE,TYPE,TRAN,VENDOR,MODEL,SERIAL,WWN,HCTL

# Logout, watched by udevadm monitor.
stdbuf -oL udevadm monitor --udev --property --subsystem-match=block >"$FIX/udevadm-monitor-logout.txt" 2>&1 &
mon=$!
for _ in $(seq 100); do grep -q 'UDEV' "$FIX/udevadm-monitor-logout.txt" 2>/dev/null && break; sleep 0.05; done
capture iscsiadm-logout iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout
expect_eq "logout exits 0" 0 "$LAST_RC"
wait_for_gone "$(by_path "$PORTAL" "$IQN" 0)" 30
wait_for_gone "$(by_path "$PORTAL" "$IQN" 1)" 30
udevadm settle --timeout=30
sleep 0.5
kill "$mon"; wait "$mon" 2>/dev/null || true
capture iscsiadm-logout-again iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout
expect_eq "second logout exits 21" 21 "$LAST_RC"

# Failed logins.
capture iscsiadm-login-wrong-chap iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" --login
expect_eq "login with a wrong CHAP secret exits 24" 24 "$LAST_RC"
iscsi_node_new "$IQN" "$DEAD_PORTAL"
# Keep the dead-portal login short: one attempt, 5 s login timeout.
iscsi_node_set "$IQN" "$DEAD_PORTAL" node.session.initial_login_retry_max 1 node.conn\[0\].timeo.login_timeout 5
t0=$(now_ms)
capture iscsiadm-login-dead-portal timeout 120 iscsiadm -m node -T "$IQN" -p "$DEAD_PORTAL" --login
note dead_portal_login_ms $(($(now_ms) - t0))
note dead_portal_login_exit "$LAST_RC"
expect_ne "login to a portal with nothing listening fails" 0 "$LAST_RC"
capture iscsiadm-node-delete iscsiadm -m node -T "$IQN" -p "$DEAD_PORTAL" -o delete
capture iscsiadm-node-delete-unknown iscsiadm -m node -T iqn.2003-01.test.tether:nosuch -p "$PORTAL" -o delete
capture iscsiadm-session-none-after iscsiadm -m session
expect_eq "no session at the end" 0 "$(session_count)"

# Drop empty stderr/stdout files to keep the fixture set small? No: an empty
# file is a fixture too (it says the command printed nothing).
{
    echo "kernel: $(uname -r)"
    echo "open-iscsi: $(dpkg-query -W -f '${Version}' open-iscsi)"
    echo "targetcli-fb: $(dpkg-query -W -f '${Version}' targetcli-fb)"
    echo "udev: $(dpkg-query -W -f '${Version}' udev)"
    echo "initiator: $GUEST_INITIATOR"
    echo "targets: $IQN (LUN 0 64 MiB, LUN 1 32 MiB), $IQN_CHAP (CHAP, LUN 0 16 MiB) on $PORTAL"
} >"$FIX/versions.txt"
