# shellcheck shell=bash disable=SC2034 # variables for the scenarios that source this
# tether driven against the guest's real Cinder, as an operator would (tests/vm/openstack/).
# Sourced after lib.sh, tether.sh, ceph.sh and cinder.sh:
#     source "$SHARE/vm/tether.sh"; source "$SHARE/vm/ceph.sh"
#     source "$SHARE/vm/cinder.sh"; source "$SHARE/vm/cinder-tether.sh"
#
#   openstack_up             cinder_up, the conductor's [cinder] configuration (noauth against
#                            the guest's Cinder, client.cinder's key file), then tether_up
#   vol ARGS...              `tether ctl volume ARGS...`; stdout and stderr also go to ctl.log
#   vol_attach NODE VOLUME [ARGS...]   records exit code and output in $VOL_RC/$VOL_OUT
#   vol_detach NODE VOLUME [ARGS...]   (same); both note how long they took
#   vol_get VOLUME_ID FIELD  a field of the volume's object in `ctl volume list --json`
#   no_leak SECRET...        the secret is in no tether log, report, ctl output, and no
#                            world-readable file outside Cinder's own
#   iscsi_left / rbd_left    what is left on the node: sessions and node records / mappings
#   write_through MOUNT      4 MiB of random data to MOUNT/data.bin, read back past the page
#                            cache; sets DATA_SHA (empty when MOUNT is not mounted)
#   expect_data_on DEV DESC  DEV mounted read-only holds that data.bin

CONDUCTOR_CONFIG=/etc/tether/conductor.toml
CINDER_KEY_FILE=/etc/tether/ceph/cinder.key
CTL_LOG=$RESULT_DIR/ctl.log
# Where a failed check points (the results directory on the host: target/vm-results/<run>/).
TT_LOGS="logs: $SCENARIO/{ctl.log,conductor.log,agent.log,cinder/} in the results directory"
NODE=vm-guest

# openstack_up : Cinder up, then tether with a conductor that is Cinder's client.
openstack_up() {
    cinder_up || return 1
    cinder_ceph_keyfile "$CINDER_KEY_FILE" || return 1
    install -d -m 0755 "$(dirname "$CONDUCTOR_CONFIG")"
    cat >"$CONDUCTOR_CONFIG" <<EOF
# The conductor as a client of the guest's Cinder (tests/vm/cinder-tether.sh).
[cinder]
auth = "noauth"
endpoint = "$CINDER_URL/v3"
project_id = "$CINDER_PROJECT"
multipath = false

[[cinder.ceph_keys]]
monitors = ["$CEPH_MON"]
user = "$CINDER_CEPH_USER"
key_file = "$CINDER_KEY_FILE"
EOF
    tether_up
}

# vol ARGS... : tether ctl volume, its output also in ctl.log.
vol() {
    local rc=0
    printf '[%8s] $ tether ctl volume %s\n' "$(uptime_s)" "$*" >>"$CTL_LOG"
    "$TETHER" ctl volume "$@" >"$WORK/vol.out" 2>"$WORK/vol.err" || rc=$?
    cat "$WORK/vol.out" "$WORK/vol.err" >>"$CTL_LOG"
    printf '[%8s] exit %s\n' "$(uptime_s)" "$rc" >>"$CTL_LOG"
    cat "$WORK/vol.out"
    cat "$WORK/vol.err" >&2
    return $rc
}

VOL_RC=0 VOL_OUT="" VOL_MS=0
_vol_run() { # ARGS... (attach|detach NODE VOLUME ...)
    local t0
    t0=$(now_ms)
    VOL_RC=0
    VOL_OUT=$(vol "$@" 2>&1) || VOL_RC=$?
    VOL_MS=$(($(now_ms) - t0))
    note "ctl_volume_$1_ms" "${VOL_MS} ($3, exit $VOL_RC)"
}
vol_attach() { _vol_run attach "$@"; }
vol_detach() { _vol_run detach "$@"; }

# vol_list [NODE] : `ctl volume list --json`.
vol_list() { "$TETHER" ctl volume list "$@" --json 2>>"$CTL_LOG"; }

# vol_get VOLUME_ID FIELD : one field of that volume in the list (empty when it is not listed).
vol_get() {
    # (not `// empty`: that would hide a false)
    vol_list "$NODE" | jq -r --arg v "$1" --arg f "$2" \
        '[.[] | select(.volume_id == $v)][0] // {} | .[$f] | if . == null then empty else tostring end' 2>/dev/null
}

# vol_wait VOLUME_ID FIELD VALUE [TIMEOUT_S] : until the list shows it; records a check.
vol_wait() {
    local id=$1 f=$2 want=$3 t=${4:-120} end got=""
    end=$(($(now_ms) + t * 1000))
    while (($(now_ms) < end)); do
        got=$(vol_get "$id" "$f")
        [[ $got == "$want" ]] && { pass "volume list: $f of $id is $want"; return 0; }
        sleep 2
    done
    fail "volume list: $f of $id is $want" "$want within ${t}s" \
        "$got; list: $(vol_list "$NODE" | head -c 1500); $TT_LOGS"
    return 1
}

# expect_cinder ID STATUS DESC : Cinder's status of the volume, with where to look on failure.
expect_cinder() {
    local got
    got=$(cinder_status "$1")
    if [[ $got == "$2" ]]; then
        pass "$3"
    else
        fail "$3" "Cinder status $2" "$got; attachments: $(cinder_attachments "$1" | tr '\n' ' '); $TT_LOGS"
    fi
}

# expect_no_attachment ID : Cinder lists no attachment for the volume.
expect_no_attachment() {
    expect_eq "Cinder lists no attachment of $1 (GET attachments?volume_id=)" "" \
        "$(cinder_attachments "$1" | tr '\n' ' ')"
}

# iscsi_left : sessions and node records on the node (empty when none).
iscsi_left() {
    local out=""
    (($(session_count) == 0)) || out+="sessions: $(iscsiadm -m session 2>&1 | tr '\n' ';') "
    if compgen -G '/etc/iscsi/nodes/*' >/dev/null; then out+="node records: $(ls /etc/iscsi/nodes)"; fi
    printf '%s' "$out"
}

# rbd_left : kernel RBD mappings (empty when none).
rbd_left() {
    local d out=""
    for d in /sys/bus/rbd/devices/*; do
        [[ -e $d ]] && out+="rbd${d##*/}=$(cat "$d/pool" 2>/dev/null)/$(cat "$d/name" 2>/dev/null) "
    done
    printf '%s' "$out"
}

# no_leak SECRET... : nowhere but in Cinder's own files and logs (and LIO's configuration,
# which Cinder's target helper writes, and the test Ceph cluster's own files): not in tether's
# logs, reports, `ctl` output, state files, the conductor's database file unless it is
# private, or any world-readable file.
no_leak() {
    local s where
    for s in "$@"; do
        [[ -n $s ]] || { fail "secret to search for" "a non-empty secret" "empty"; continue; }
        where=$(grep -rlF -- "$s" "$RESULT_DIR"/agent.log "$RESULT_DIR"/conductor.log "$CTL_LOG" \
            "$TETHER_STATE" 2>/dev/null || true)
        expect_eq "secret in no tether log, ctl output or agent state file" "" "$where"
        expect_eq "secret not in the node's report" "" "$(ctl status "$NODE" --json 2>&1 | grep -F -- "$s" || true)"
        expect_eq "secret not in ctl volume list" "" "$(vol_list 2>&1 | grep -F -- "$s" || true)"
        expect_eq "secret not in ctl target list" "" "$(ctl target list 2>&1 | grep -F -- "$s" || true)"
        where=$(find /etc /var /tmp /run /root /mnt -xdev \( -path /etc/cinder -o -path /var/lib/cinder \
            -o -path /var/log/cinder -o -path /etc/target -o -path /mnt/share \
            -o -path /var/lib/tether-ceph -o -path /run/tether-ceph \) -prune \
            -o -type f -perm -o+r -size -20M -print0 2>/dev/null | xargs -0 -r grep -lF -- "$s" 2>/dev/null || true)
        expect_eq "secret in no world-readable file outside Cinder's" "" "$where"
    done
}

# expect_vol_rc DESC RC : the last vol_attach/vol_detach exited RC; on failure the check shows
# its output (phases, error kind) and where the logs are.
expect_vol_rc() {
    if [[ $VOL_RC == "$2" ]]; then
        pass "$1"
    else
        fail "$1" "exit $2" "exit $VOL_RC after $VOL_MS ms; output: $VOL_OUT; $TT_LOGS"
    fi
}

DATA_SHA=""
# write_through MOUNT
write_through() {
    DATA_SHA=""
    mountpoint -q "$1" || return 0
    dd if=/dev/urandom of="$WORK/data" bs=1M count=4 status=none
    DATA_SHA=$(sha256sum <"$WORK/data" | cut -d' ' -f1)
    cp "$WORK/data" "$1/data.bin"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    expect_eq "data written through the mount reads back" "$DATA_SHA" "$(sha256sum <"$1/data.bin" | cut -d' ' -f1)"
}

# expect_data_on DEV DESC : the data of the last write_through is on DEV (after the detach: in
# Cinder's own volume).
expect_data_on() {
    mkdir -p /mnt/check
    if mount -o ro,noload "$1" /mnt/check 2>"$WORK/mount.err"; then
        expect_eq "$2" "$DATA_SHA" "$(sha256sum </mnt/check/data.bin 2>&1 | cut -d' ' -f1)"
        umount /mnt/check
    else
        fail "$2" "$1 mounts read-only" "$(cat "$WORK/mount.err")"
    fi
}
