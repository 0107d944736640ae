# shellcheck shell=bash disable=SC2154
# The ramdisk hands its volume to the installed system. The node boots the systemd initramfs
# of 40-dracut with root= on its disk (the image's Debian, as an installed system would be):
# in the initramfs the agent logs in, formats and mounts the volume (a test hook holds the
# switch until it is mounted); after the switch to the installed root, the packaged agent
# there adopts the initramfs agent's record and token (both 0600) from /run/tether-initramfs,
# reports the volume as its own (not foreign; attached, since the initramfs's mount did not
# survive the switch), and detaches it when the conductor unassigns it: the node's session to
# the target ends. The installed side is tests/vm/ramdisk-installed.sh
# on the node's 9p share ($RD/node).
# vm-timeout: 900
source "$SHARE/vm/ramdisk.sh"

ramdisk_prepare
build_initramfs "$RD_SYSTEMD_MODULES" "${RD_SYSTEMD_ARGS[@]}"
initramfs_has "the test's pre-pivot hook" 'hooks/pre-pivot/90-tether-test.sh$'
initramfs_has "the virtio disk driver" '/virtio_blk.ko'
ramdisk_serve

# The installed side's share: the package, and the node's settings as installing it would
# leave them (the same conductor and node as the initramfs's command line).
NODE_SHARE=$RD/node
rm -rf "$NODE_SHARE" && mkdir -p "$NODE_SHARE"
cp "$SHARE/deb/tether.deb" "$SHARE/vm/ramdisk-installed.sh" "$NODE_SHARE/"
cp "$TETHER_CA_FILE" "$NODE_SHARE/conductor-ca.pem"
echo "InitiatorName=$NODE_INITIATOR" >"$NODE_SHARE/initiatorname.iscsi"
printf '%s\n' '[agent]' "conductor_url = \"$TETHER_URL\"" \
    'conductor_ca_file = "/etc/tether/conductor-ca.pem"' "node_uuid = \"$RD_NODE_UUID\"" \
    >"$NODE_SHARE/agent.toml"

# node_file NAME TIMEOUT_S : waits for NAME on the node's share; 1 if it did not come.
node_file() {
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        [[ -e $NODE_SHARE/$1 ]] && return 0
        [[ -f $RD/node-exited ]] && return 1
        sleep 0.5
    done
    return 1
}
# node_volume_state : the volume's state in the installed agent's own status, or `gone`.
node_volume_state() {
    python3 - "$NODE_SHARE/status.json" "$RD_VOLUME" <<'PY' 2>/dev/null
import json, sys
status = json.load(open(sys.argv[1]))
states = [v["state"] for v in status["report"]["volumes"] if v["volume_id"] == sys.argv[2]]
print(states[0] if states else "gone")
PY
}
node_foreign() {
    python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["report"].get("foreign", [])))' \
        "$NODE_SHARE/status.json" 2>/dev/null
}
installed_logs() { printf 'installed side: %s (installed.log, agent.log); %s' "$NODE_SHARE" "$(node_console_tail)"; }

: >"$RD/node-disk"
boot_node "$(ramdisk_node_options) ipv6.disable=1 root=/dev/vda rw tether_test.installed=1 systemd.journald.forward_to_console=1"
wait_node_volume "$RD_NODE" "$RD_VOLUME" mounted 300
ramdisk_checks

if node_file agent-started 300; then
    note node_boot_to_installed_agent_ms $(($(now_ms) - NODE_T0))
    pass "the installed system's agent started"
else
    fail "the installed system's agent started" "$NODE_SHARE/agent-started within 300 s" \
        "none; $(tail -n 5 "$NODE_SHARE/installed.log" 2>&1); $(installed_logs)"
fi
expect_match "the installed root is the node's disk" 'installed root is up: /dev/vda' \
    "$(cat "$NODE_SHARE/installed.log" 2>&1)"
handover=$(cat "$NODE_SHARE/handover-before.txt" 2>&1)
expect_line "the initramfs's state directory in /run, 0700" '700 root /run/tether-initramfs' "$handover"
expect_line "its record, 0600" '600 root /run/tether-initramfs/volumes.json' "$handover"
expect_line "its token (issued in the initramfs), 0600" '600 root /run/tether-initramfs/token' "$handover"
state=$(cat "$NODE_SHARE/state-after.txt" 2>&1)
expect_line "the installed agent's record, 0600" '600 root /var/lib/tether/volumes.json' "$state"
expect_line "the installed agent's token, 0600" '600 root /var/lib/tether/token' "$state"
expect_match "the handover is taken once: gone from /run" 'No such file' \
    "$(cat "$NODE_SHARE/handover-after.txt" 2>&1)"

# Its own view: the volume attached, not mounted (the initramfs's mount on /mnt/data, outside
# the new root, did not survive the switch; the record's mount is forgotten), and nothing
# foreign.
for ((i = 0; i < 60; i++)); do
    seen=$(node_volume_state)
    [[ $seen == attached || $seen == mounted ]] && break
    sleep 1
done
expect_eq "the installed agent reports $RD_VOLUME as its own, attached" attached "${seen:-no status}"
expect_eq "nothing mounted on /mnt/data in the installed system" "" \
    "$(cat "$NODE_SHARE/mnt-data.txt" 2>&1)"
expect_eq "the installed agent lists nothing foreign" 0 "$(node_foreign)"
agent_log=$(cat "$NODE_SHARE/agent.log" 2>&1)
expect_match "it logged the adoption" 'adopted what the initramfs agent attached volumes=1 token=true' \
    "$agent_log"
expect_match "it took the initramfs's session as its volume" \
    'volume still attached from before' "$agent_log"
expect_eq "without attaching it again (the installed agent's log, host tether-vm)" "" \
    "$(grep -E 'tether-vm tether\[[0-9]+\]: attaching' <<<"$agent_log" || true)"
expect_match "and forgot the mount that did not survive the switch" \
    'no longer mounted where it was.*mountpoint=/mnt/data' "$agent_log"
expect_match "the initramfs's session was there when the installed system came up" "$RD_IQN" \
    "$(cat "$NODE_SHARE/sessions-before.txt" 2>&1)"
expect_match "the conductor has the installed agent's report, its device" \
    "$(by_path "$RD_PORTAL" "$RD_IQN" 0)" "$(ctl status "$RD_NODE" --json 2>&1)"

# Unassigned: the installed agent detaches what the initramfs attached.
t0=$(now_ms)
target=$(ctl target list --json | python3 -c 'import json, sys
print([t["uuid"] for t in json.load(sys.stdin)["targets"] if t["volume_id"] == sys.argv[1]][0])' "$RD_VOLUME")
ctl target delete "$target" >/dev/null
if ctl wait "$RD_NODE" "$RD_VOLUME" --state gone --timeout 120 >/dev/null 2>"$WORK/wait.err"; then
    note unassign_to_gone_ms $(($(now_ms) - t0))
    pass "$RD_VOLUME gone from the installed agent's report"
else
    fail "$RD_VOLUME gone from the installed agent's report" "gone within 120 s" \
        "$(cat "$WORK/wait.err"); $(installed_logs)"
fi
sleep 2
expect_match "no session from the node left at the target" 'No active iSCSI Session' \
    "$(cat "$CONFIGFS_ISCSI/$RD_IQN/tpgt_1/acls/$NODE_INITIATOR/info" 2>&1 || true)"
expect_eq "no session left on the node" "iscsiadm: No active sessions." \
    "$(cat "$NODE_SHARE/sessions.txt" 2>&1)"
: >"$NODE_SHARE/stop"
node_timings
node_done
tether_down
