# shellcheck shell=bash disable=SC2154
# The fault matrix, iSCSI: the agent killed (SIGKILL, from a crash point) at each step of an
# attach (node record created, logged in, device seen, mkfs done, mounted, record written,
# report sent) and of a detach (unmounted, flushed, device deleted, logged out, record written),
# then started again: the volume ends attached exactly once (one session, one mount), or gone
# with no session, node record or mount left. A session someone else logged in stays throughout.
# vm-timeout: 900
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/faults.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:faults
FOREIGN=iqn.2003-01.test.tether:faults-foreign
lio_target "$IQN"
lio_lun "$IQN" f0 32M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_target "$FOREIGN"
lio_lun "$FOREIGN" g0 16M
lio_acl "$FOREIGN" "$GUEST_INITIATOR"
lio_apply
iscsi_node_new "$FOREIGN" "$PORTAL" >/dev/null
iscsiadm -m node -T "$FOREIGN" -p "$PORTAL" --login >/dev/null
foreign_session=$(session_ids "$FOREIGN")
tether_up

ASSIGN="--portal $PORTAL --iqn $IQN --lun 0"
MOUNT=/srv/fault-iscsi
ATTACHED_PARTS="session record"
on_host() {
    local parts=() n
    n=$(sessions_to "$IQN")
    ((n == 1)) && parts+=(session)
    ((n > 1)) && parts+=("$n-sessions")
    [[ $(has_record "$IQN" "$PORTAL") == yes ]] && parts+=(record)
    echo "${parts[*]}"
}
reset_volume() {
    dd if=/dev/zero of="$LIO_BACKING_DIR/f0.img" bs=1M count=4 conv=notrunc status=none
}

for point in iscsi.record_created iscsi.logged_in iscsi.device_seen mount.mkfs_done \
    mount.mounted agent.attach_recorded agent.report_sent; do
    attach_cell "$point"
done
for point in mount.unmounted iscsi.flushed iscsi.device_deleted iscsi.logged_out \
    agent.detach_recorded; do
    detach_cell "$point"
done
expect_eq "the session someone else logged in is untouched" "$foreign_session" \
    "$(session_ids "$FOREIGN")"
iscsiadm -m node -T "$FOREIGN" -p "$PORTAL" --logout >/dev/null 2>&1 || true
tether_down
