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
#     after the agent started), not through iscsid's automatic login. The conductor is
#     disabled. Reboot.
#  4. The node boots with the conductor unreachable: the agent reports READY after
#     agent.ready_timeout_s so that the boot goes on, is never restarted, detaches nothing and
#     keeps its record; once the conductor is started both volumes come back, data and file
#     intact.
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
    exposure=$(systemd-analyze security --no-pager $UNIT 2>&1 | tail -n1)
    expect_match "the agent's exposure is OK (below 5.0)" 'level for .*: [0-4]\.[0-9] OK' "$exposure"
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
        --fstype ext4 --mkfs >/dev/null

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
    expect_rc "systemctl disable tether-conductor (unreachable at the next boot)" 0 \
        systemctl disable tether-conductor.service
    vm_reboot
}

boot4() {
    source "$SHARE/vm/tether.sh"
    local t0
    expect_eq "conductor down this boot" inactive \
        "$(systemctl is-active tether-conductor.service 2>&1 || true)"
    # The harness runs after multi-user.target, which waited for the agent's READY: sent after
    # agent.ready_timeout_s without an assignment, so that the boot went on.
    expect_eq "agent ready without the conductor (boot not held)" active "$(unit_prop $UNIT ActiveState)"
    expect_eq "agent's status line says what it waits for" \
        "waiting for the conductor; volumes attach once it answers" "$(unit_prop $UNIT StatusText)"
    expect_eq "agent never restarted (no start timeout)" 0 "$(unit_prop $UNIT NRestarts)"
    expect_eq "no session while the assignment is unknown" 0 "$(sessions_to "$IQN")"
    expect_eq "the node record is kept (nothing detached)" yes "$(has_record "$IQN" "$PORTAL")"
    expect_match "the ownership record keeps the volume whose node record it made" \
        "\"volume_id\": *\"$VOLUME\"" "$(cat /var/lib/tether/volumes.json 2>&1 || true)"
    expect_eq "nothing detached while the conductor is unreachable" "" \
        "$(journalctl -b -u $UNIT --no-pager -o cat -g '^(detaching|detached)' 2>&1 | grep -v '^-- No entries --$' || true)"
    expect_match "tether status: the conductor not reached yet" 'not contacted yet' \
        "$($TETHER status 2>&1 | sed -n 2p || true)"
    expect_match "the agent retries its lookup" 'lookup failed; retrying' \
        "$(journalctl -b -u $UNIT --no-pager -o cat -g 'lookup failed' 2>&1 || true)"

    t0=$(now_ms)
    expect_rc "systemctl start tether-conductor" 0 systemctl start tether-conductor.service
    # The conductor's last report is from before the reboot: the agent's own status is fresh.
    wait_agent_state "$VOLUME" attached "conductor back" 120
    wait_agent_state "$FS_VOLUME" mounted "conductor back" 60
    note conductor_back_to_mounted_ms $(($(now_ms) - t0))
    expect_eq "agent's status line once the conductor answered" "2 volumes" "$(unit_prop $UNIT StatusText)"
    expect_eq "one session to the target (two LUNs)" 1 "$(sessions_to "$IQN")"
    data_back "boot 4, after the conductor came back"
    mounted_on_host "boot 4"
    expect_eq "boot 4: file written in boot 1 reads back (no mkfs over it)" \
        "written in boot 1" "$(cat "$FS_MOUNT/proof" 2>&1)"
}

"boot$VM_BOOT"
