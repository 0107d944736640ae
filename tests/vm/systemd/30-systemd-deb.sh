# shellcheck shell=bash disable=SC2154
# systemd as PID 1 and the Debian package, over three boots of one guest:
#  1. `dpkg -i` on the clean image gives an enabled, not yet started agent unit; LIO is set up
#     and saved (Debian's rtslib-fb-targetctl.service restores it at boot); the packaged
#     conductor unit is enabled and started, serving HTTPS with a throwaway certificate that
#     the agent and ctl verify against its CA; the node is enrolled and a volume assigned; the
#     agent attaches it and data is written through it. Both units run sandboxed: the conductor
#     as its own user, the agent with a reduced capability bounding set, its mount of a second
#     volume visible on the host; `systemd-analyze security` exposure is recorded. Reboot.
#  2. The agent attached both volumes at boot: active, notified ready, report at the conductor,
#     data back, the filesystem mounted on the host. A hung agent (SIGSTOP) is restarted by the watchdog without a second login.
#     Reboot.
#  3. The volume is back through the agent's own login (node.startup=manual, session created
#     after the agent started), not through iscsid's automatic login. The agent's target cache
#     holds both targets, root-only. A unit that needs the mounted volume is ordered after the
#     agent (fstab-like). The agent is stopped, the mounted volume unassigned, the conductor
#     disabled. Reboot.
#  4. The node boots with the conductor unreachable: the agent attaches both volumes again from
#     its target cache and mounts the second, reports them unconfirmed, READY once they are
#     there (the dependent unit found the mount), never restarted, nothing detached, data and
#     file intact. The conductor started: the still assigned volume stays on its session, the
#     unassigned one is unmounted and detached, its cached target removed.
# vm-timeout: 240
# vm-boots: 4
source "$SHARE/vm/systemd.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:boot
VOLUME=vol-boot
FS_VOLUME=vol-boot-fs
FS_MOUNT=/srv/vm-boot-fs
DEV=$(by_path "$PORTAL" "$IQN" 0)
DATA=/var/tmp/vm-boot-data
UNIT=tether-agent.service
# The fs volume's target uuid, kept on the disk for boot 3.
FS_TARGET_FILE=/var/tmp/vm-boot-fs-target
# A unit that needs the agent's mount, as one ordered after an fstab mount would.
NEEDS_UNIT=vm-needs-volume.service
CACHE=/var/lib/tether/targets
# The package's binary, not the share's: the suite runs without --bin.
TETHER=/usr/bin/tether

# data_back WHEN : the 1 MiB written in boot 1 reads back through the device.
data_back() {
    expect_eq "$1: data written before the reboot reads back" "$(sha256sum <"$DATA" | cut -d' ' -f1)" \
        "$(dd if="$DEV" bs=1M count=1 iflag=direct status=none | sha256sum | cut -d' ' -f1 || true)"
}

# agent_up_at_boot : the agent started at boot, is notified ready and got the volume attached.
agent_up_at_boot() {
    local started ready attached
    expect_eq "agent unit active after boot" active "$(unit_prop $UNIT ActiveState)"
    expect_eq "agent unit running" running "$(unit_prop $UNIT SubState)"
    # Type=notify: active only once READY=1 arrived; the status line comes with it.
    expect_eq "agent unit is Type=notify" notify "$(unit_prop $UNIT Type)"
    expect_eq "agent's status line (sent with READY)" "2 volumes" "$(unit_prop $UNIT StatusText)"
    wait_volume "$VOLUME" attached 60
    expect_eq "reported device path is the by-path link" "$DEV" "$(field device_path)"
    expect_true "by-path device present" test -b "$DEV"
    wait_volume "$FS_VOLUME" mounted 60
    expect_eq "one session to the target (two LUNs)" 1 "$(sessions_to "$IQN")"
    data_back "boot $VM_BOOT"
    mounted_on_host "boot $VM_BOOT"
    expect_eq "boot $VM_BOOT: file written through the agent's mount reads back" \
        "written in boot 1" "$(cat "$FS_MOUNT/proof" 2>&1)"
    started=$(unit_prop $UNIT ExecMainStartTimestampMonotonic)
    ready=$(unit_prop $UNIT ActiveEnterTimestampMonotonic)
    attached=$(journal_first_us $UNIT '(^|INFO )attached( |$)')
    note "boot${VM_BOOT}_agent_started_ms" $((started / 1000))
    note "boot${VM_BOOT}_agent_ready_ms" $((ready / 1000))
    note "boot${VM_BOOT}_volume_attached_ms" $((${attached:-0} / 1000))
    # The session is the agent's own: at its start the volume was gone from the host (no
    # automatic login before it), and the kernel created the session after the agent started.
    expect_match "agent found no session at start" 'no longer on the host' \
        "$(journalctl -b -u $UNIT --no-pager -g 'no longer on the host' 2>&1 || true)"
    local session_us
    session_us=$(journal_first_us -k 'iSCSI Initiator over TCP/IP')
    if [[ -n $session_us ]] && ((session_us > started)); then
        pass "session created after the agent started"
    else
        fail "session created after the agent started" "kernel's iSCSI host created after ${started} us" \
            "${session_us:-no 'iSCSI Initiator over TCP/IP' kernel message} us"
    fi
    expect_eq "iscsid's automatic login logged in nothing" "" \
        "$(journalctl -b -u open-iscsi.service -u iscsid.service --no-pager -g 'Logging in to|Login to \\[' 2>/dev/null || true)"
    expect_line "node record has node.startup = manual" "node.startup = manual" \
        "$(iscsiadm -m node -T "$IQN" -p "$PORTAL" 2>&1 || true)"
}

# mounted_on_host WHEN : the agent's mount, made inside its unit's namespace, is in PID 1's.
mounted_on_host() {
    expect_eq "$1: the agent's mount is in the host's mount namespace" ext4 \
        "$(findmnt -N 1 -n -o FSTYPE "$FS_MOUNT" 2>&1 || true)"
    expect_match "$1: mounted nosuid,nodev" 'nosuid,nodev' \
        "$(findmnt -N 1 -n -o OPTIONS "$FS_MOUNT" 2>&1 || true)"
    # ProtectHome's and ProtectSystem's read-only views stay the unit's own.
    expect_eq "$1: /home is not read-only on the host" "" \
        "$(findmnt -N 1 -n -o OPTIONS /home 2>/dev/null | grep -o '^ro' || true)"
    expect_eq "$1: /usr is not read-only on the host" "" \
        "$(findmnt -N 1 -n -o OPTIONS /usr 2>/dev/null | grep -o '^ro' || true)"
}

# sandboxed : the two units run as their files say.
sandboxed() {
    local pid user exposure unit
    pid=$(unit_prop tether-conductor.service MainPID)
    user=$(unit_prop tether-conductor.service User)
    expect_eq "the conductor unit names its own user" tether-conductor "$user"
    expect_eq "the conductor runs as that user" "$user" "$(ps -o user= -p "$pid" 2>&1 | tr -d ' ')"
    expect_eq "the conductor has no capability" 0000000000000000 \
        "$(awk '/^CapEff:/{print $2}' "/proc/$pid/status")"
    expect_eq "its state directory is its own, mode 0700" "tether-conductor 700" \
        "$(stat -c '%U %a' /var/lib/tether-conductor)"
    expect_eq "the database is its own, mode 0600 (UMask)" "tether-conductor 600" \
        "$(stat -c '%U %a' /var/lib/tether-conductor/tether.db)"
    expect_eq "a file left by the root-owned conductor of an older package is chowned" \
        tether-conductor "$(stat -c '%U' /var/lib/tether-conductor/left-by-root)"
    # The agent: root, with the bounding set its unit names (and its children with it).
    pid=$(unit_prop $UNIT MainPID)
    expect_eq "the agent's capability bounding set is its unit's" "$(agent_capabilities hex)" \
        "$(awk '/^CapBnd:/{print $2}' "/proc/$pid/status")"
    for unit in tether-conductor.service $UNIT; do
        exposure=$(systemd-analyze security --no-pager "$unit" 2>&1 | tail -n1 |
            grep -oE '[0-9]+\.[0-9]+' || true)
        note "exposure_${unit%%.service}" "${exposure:-none}"
        expect_true "$unit: systemd-analyze security gives an exposure level" test -n "$exposure"
    done
    exposure=$(systemd-analyze security --no-pager tether-conductor.service 2>&1 | tail -n1)
    expect_match "the conductor's exposure is OK (below 2.0)" 'level for .*: 1\.[0-9] OK' "$exposure"
    # 4.9 until CAP_SYS_RESOURCE (an online resize2fs needs it) made it 5.0: no higher.
    exposure=$(systemd-analyze security --no-pager $UNIT 2>&1 | tail -n1)
    expect_match "the agent's exposure is at most 5.0" 'level for .*: ([0-4]\.[0-9]|5\.0) ' "$exposure"
}

boot1() {
    expect_eq "systemd is PID 1" systemd "$(cat /proc/1/comm)"
    expect_rc "dpkg -i of the package" 0 dpkg -i "$SHARE/deb/tether.deb"
    ((LAST_RC == 0)) || exit 1
    source "$SHARE/vm/tether.sh"
    expect_eq "agent unit enabled by the package" enabled "$(systemctl is-enabled $UNIT 2>&1 || true)"
    expect_eq "agent unit not started by the package" inactive "$(systemctl is-active $UNIT 2>&1 || true)"
    expect_eq "systemd-analyze verify of both units" "" \
        "$(systemd-analyze verify $UNIT tether-conductor.service 2>&1 || true)"
    expect_eq "LIO restore unit enabled" enabled "$(systemctl is-enabled rtslib-fb-targetctl.service 2>&1 || true)"

    # The target, saved for rtslib-fb-targetctl.service to restore at boot.
    lio_target "$IQN"
    lio_lun "$IQN" boot0 64M
    lio_lun "$IQN" boot1 64M
    lio_acl "$IQN" "$GUEST_INITIATOR"
    lio_cmd "saveconfig"
    LIO_OK_OUTPUT='^(Configuration saved to|Last [0-9]+ configs saved)' lio_apply
    expect_true "LIO configuration saved" test -s /etc/rtslib-fb-target/saveconfig.json
    # Here the target shares the node with its initiator. Cleared at shutdown, it would leave
    # the kernel's final cache flush of the iSCSI disk waiting out the 120 s replacement
    # timeout on every reboot; a real target outlives its initiators' reboots.
    mkdir -p /etc/systemd/system/rtslib-fb-targetctl.service.d
    printf '[Service]\nExecStop=\n' >/etc/systemd/system/rtslib-fb-targetctl.service.d/50-vm-test.conf

    # The conductor from the package's unit, with the test's admin token provisioned, serving
    # HTTPS (tls_setup's drop-in; the agent's URL below and ctl's are https://).
    install -d -m 0755 /etc/tether/config.d
    (umask 077 && printf '%s\n' "$TETHER_ADMIN_TOKEN" >/etc/tether/admin.token)
    tls_setup IP:127.0.0.1
    # The conductor runs as its own user (made by the package), who must own its key and
    # token files, mode 0600 (docs/operations.md).
    expect_eq "the package made the conductor's system user" /usr/sbin/nologin \
        "$(getent passwd tether-conductor | cut -d: -f7)"
    chown tether-conductor: "$TLS_DIR/conductor.key" /etc/tether/admin.token
    # What an older package's conductor, run as root, left behind.
    install -d -m 0700 /var/lib/tether-conductor
    : >/var/lib/tether-conductor/left-by-root
    cat >/etc/tether/config.d/50-vm-test.toml <<EOF
[agent]
conductor_url = "$TETHER_URL"
node_uuid = "$NODE_UUID"
token_file = "$NODE_TOKEN_FILE"
device_timeout_s = 30
retry_initial_s = 1
retry_max_s = 4

[conductor]
admin_token_file = "/etc/tether/admin.token"
EOF
    expect_rc "tether check-config" 0 "$TETHER" check-config
    expect_rc "systemctl enable --now tether-conductor" 0 systemctl enable --now tether-conductor.service
    expect_eq "conductor active (READY)" active "$(unit_prop tether-conductor.service ActiveState)"
    expect_match "the conductor unit serves HTTPS" 'tls=true' \
        "$(journalctl -b -u tether-conductor.service --no-pager -g 'conductor serving' 2>&1 || true)"
    tether_enroll
    assign "$VOLUME" --portal "$PORTAL" --iqn "$IQN" --lun 0 >/dev/null
    assign "$FS_VOLUME" --portal "$PORTAL" --iqn "$IQN" --lun 1 --mount "$FS_MOUNT" \
        --fstype ext4 --mkfs >"$FS_TARGET_FILE"

    # The test's target and conductor run on this node, so the agent starts after them; the
    # watchdog is shortened so that the hung-agent check takes seconds.
    mkdir -p /etc/systemd/system/$UNIT.d
    cat >/etc/systemd/system/$UNIT.d/50-vm-test.conf <<EOF
[Unit]
After=rtslib-fb-targetctl.service tether-conductor.service
[Service]
WatchdogSec=10s
EOF
    systemctl daemon-reload
    expect_rc "systemctl start tether-agent" 0 systemctl start $UNIT
    wait_volume "$VOLUME" attached 60
    expect_eq "reported device path is the by-path link" "$DEV" "$(field device_path)"
    dd if=/dev/urandom of="$DATA" bs=1M count=1 status=none
    dd if="$DATA" of="$DEV" bs=1M oflag=direct conv=fsync status=none
    data_back "boot 1"
    wait_volume "$FS_VOLUME" mounted 60
    mounted_on_host "boot 1"
    echo "written in boot 1" >"$FS_MOUNT/proof"
    sync
    sandboxed
    vm_reboot
}

boot2() {
    source "$SHARE/vm/tether.sh"
    agent_up_at_boot

    # Hung agent: the watchdog (10 s here) kills it and Restart= starts a new one, which
    # adopts the volume from its ownership record.
    expect_eq "watchdog armed" 10s "$(unit_prop $UNIT WatchdogUSec)"
    local pid restarts sessions t0
    pid=$(unit_prop $UNIT MainPID)
    restarts=$(unit_prop $UNIT NRestarts)
    sessions=$(session_ids "$IQN")
    t0=$(now_ms)
    kill -STOP "$pid"
    if wait_unit_restarted $UNIT "$pid" 45; then
        note watchdog_stop_to_restarted_ms $(($(now_ms) - t0))
    fi
    expect_eq "NRestarts went up by one" $((restarts + 1)) "$(unit_prop $UNIT NRestarts)"
    expect_ne "new main process" "$pid" "$(unit_prop $UNIT MainPID)"
    expect_match "systemd saw the watchdog timeout" 'Watchdog timeout' \
        "$(journalctl -b -u $UNIT --no-pager -g 'Watchdog timeout' 2>&1 || true)"
    expect_match "the new agent adopted the volume" 'still attached from before' \
        "$(journalctl -b -u $UNIT --no-pager -g 'still attached from before' 2>&1 || true)"
    wait_volume "$VOLUME" attached 30
    expect_eq "same session after the restart (no second login)" "$sessions" "$(session_ids "$IQN")"
    expect_true "by-path device still present" test -b "$DEV"
    vm_reboot
}

boot3() {
    source "$SHARE/vm/tether.sh"
    expect_eq "agent unit still enabled" enabled "$(systemctl is-enabled $UNIT 2>&1 || true)"
    agent_up_at_boot
    expect_match "ownership record lists the volume" "\"volume_id\": *\"$VOLUME\"" \
        "$(cat /var/lib/tether/volumes.json 2>&1 || true)"
    expect_match "journald has the agent's structured fields" "\"VOLUME_ID\":\"$VOLUME\"" \
        "$(journalctl -b -u $UNIT -o json --no-pager 2>&1 | grep -m1 "\"VOLUME_ID\":\"$VOLUME\"" || true)"
    expect_eq "the target cache is root-only" "root 700" "$(stat -c '%U %a' "$CACHE" 2>&1)"
    expect_eq "one cached target per volume, each mode 0600" "600 600" \
        "$(stat -c '%a' "$CACHE"/*.json 2>&1 | tr '\n' ' ' | sed 's/ $//')"
    cat >/etc/systemd/system/$NEEDS_UNIT <<EOF
[Unit]
Description=needs the volume tether mounts at $FS_MOUNT
Requires=$UNIT
After=$UNIT
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'findmnt -n $FS_MOUNT && cat $FS_MOUNT/proof'
[Install]
WantedBy=multi-user.target
EOF
    expect_rc "systemctl enable $NEEDS_UNIT" 0 systemctl enable $NEEDS_UNIT
    # Stopped first, so that the agent does not see the unassign: at the next boot only its
    # cache knows the volume.
    expect_rc "systemctl stop tether-agent" 0 systemctl stop $UNIT
    expect_rc "unassign $FS_VOLUME while the agent is stopped" 0 unassign "$(cat "$FS_TARGET_FILE")"
    expect_rc "systemctl disable tether-conductor (unreachable at the next boot)" 0 \
        systemctl disable tether-conductor.service
    vm_reboot
}

# unconfirmed VOLUME : the agent's status file's `unconfirmed` of VOLUME (False when absent).
unconfirmed() {
    python3 - /var/lib/tether/status.json "$1" <<'PY' 2>&1
import json, sys
volumes = json.load(open(sys.argv[1]))["report"]["volumes"]
print([v.get("unconfirmed", False) for v in volumes if v["volume_id"] == sys.argv[2]])
PY
}

boot4() {
    source "$SHARE/vm/tether.sh"
    local t0 started ready sessions
    expect_eq "conductor down this boot" inactive \
        "$(systemctl is-active tether-conductor.service 2>&1 || true)"
    # The harness runs after multi-user.target, which waited for the agent's READY: sent once
    # the volumes from its target cache were attached, long before agent.ready_timeout_s.
    expect_eq "agent ready without the conductor" active "$(unit_prop $UNIT ActiveState)"
    expect_eq "agent's status line: the volumes are back, unconfirmed" \
        "2 volumes, unconfirmed: waiting for the conductor" "$(unit_prop $UNIT StatusText)"
    expect_eq "agent never restarted" 0 "$(unit_prop $UNIT NRestarts)"
    started=$(unit_prop $UNIT ExecMainStartTimestampMonotonic)
    ready=$(unit_prop $UNIT ActiveEnterTimestampMonotonic)
    note boot4_offline_start_to_ready_ms $(((ready - started) / 1000))
    expect_true "READY before agent.ready_timeout_s (90 s)" test $((ready - started)) -lt 90000000
    expect_eq "the unit ordered after the agent found the mount" "active success" \
        "$(unit_prop $NEEDS_UNIT ActiveState) $(unit_prop $NEEDS_UNIT Result)"
    expect_match "it read the file through the mount" 'written in boot 1' \
        "$(journalctl -b -u $NEEDS_UNIT --no-pager -o cat 2>&1 || true)"
    expect_eq "both volumes back over one session" 1 "$(sessions_to "$IQN")"
    expect_true "by-path device present" test -b "$DEV"
    data_back "boot 4, before the conductor answered"
    mounted_on_host "boot 4"
    expect_eq "the agent reports $VOLUME unconfirmed" "[True]" "$(unconfirmed "$VOLUME")"
    expect_eq "the agent reports $FS_VOLUME unconfirmed" "[True]" "$(unconfirmed "$FS_VOLUME")"
    expect_match "tether status: mounted (unconfirmed)" \
        "$FS_VOLUME +iscsi +mounted \\(unconfirmed\\)" "$($TETHER status 2>&1 || true)"
    expect_match "tether status: why" 'not answering yet; volumes attached again' \
        "$($TETHER status 2>&1 | sed -n 2p || true)"
    expect_eq "nothing detached while the conductor is unreachable" "" \
        "$(journalctl -b -u $UNIT --no-pager -o cat -g '^(detaching|detached)' 2>&1 | grep -v '^-- No entries --$' || true)"
    expect_match "the agent retries its lookup meanwhile" 'lookup failed; retrying' \
        "$(journalctl -b -u $UNIT --no-pager -o cat -g 'lookup failed' 2>&1 || true)"

    sessions=$(session_ids "$IQN")
    t0=$(now_ms)
    expect_rc "systemctl start tether-conductor" 0 systemctl start tether-conductor.service
    wait_agent_state "$FS_VOLUME" gone "conductor back, $FS_VOLUME unassigned" 120
    note conductor_back_to_detached_ms $(($(now_ms) - t0))
    expect_eq "the unassigned volume is unmounted" "" "$(findmnt -N 1 -n "$FS_MOUNT" 2>&1 || true)"
    expect_true "its LUN's device is gone" test ! -e "$(by_path "$PORTAL" "$IQN" 1)"
    expect_eq "its cached target removed, the other kept" 1 "$(find "$CACHE" -name '*.json' | wc -l)"
    expect_eq "$VOLUME confirmed" "[False]" "$(unconfirmed "$VOLUME")"
    expect_eq "$VOLUME still attached" attached "$(agent_state "$VOLUME")"
    expect_eq "the same session (no second login)" "$sessions" "$(session_ids "$IQN")"
    expect_eq "one attach of $VOLUME this boot" 1 \
        "$(journalctl -b -u $UNIT --no-pager -o json -g '(^|INFO )attached( |$)' 2>&1 |
            grep -c "\"VOLUME_ID\":\"$VOLUME\"" || true)"
    expect_match "agent's status line once the conductor answered" '^[0-9]+ volumes$' \
        "$(unit_prop $UNIT StatusText)"
    data_back "boot 4, after the conductor came back"
}

"boot$VM_BOOT"
