# shellcheck shell=bash disable=SC2154
# tether: a session logged in by hand before the agent starts is reported as foreign and
# left untouched through assign and unassign of other volumes.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN_HAND=iqn.2003-01.test.tether:byhand
IQN=iqn.2003-01.test.tether:managed
lio_target "$IQN_HAND"
lio_lun "$IQN_HAND" hand0 16M
lio_acl "$IQN_HAND" "$GUEST_INITIATOR"
lio_target "$IQN"
lio_lun "$IQN" managed0 16M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
iscsi_node_new "$IQN_HAND" "$PORTAL"
iscsiadm -m node -T "$IQN_HAND" -p "$PORTAL" --login >/dev/null
wait_for_path "$(by_path "$PORTAL" "$IQN_HAND" 0)" 30
hand_sessions=$(session_ids "$IQN_HAND")
tether_up

target=$(assign vol-managed --portal "$PORTAL" --iqn "$IQN" --lun 0)
wait_volume vol-managed attached 60
for ((i = 0; i < 50; i++)); do
    ctl status vm-guest --json | grep -qF "$IQN_HAND" && break
    sleep 0.1
done
expect_match "the hand-made session is reported as foreign" "$IQN_HAND" "$(ctl status vm-guest --json | grep -F description || true)"
unassign "$target"
wait_volume vol-managed gone 60
expect_eq "the hand-made session is untouched" "$hand_sessions" "$(session_ids "$IQN_HAND")"
expect_eq "its record is untouched" yes "$(has_record "$IQN_HAND" "$PORTAL")"
expect_eq "its device is still there" yes "$([[ -e $(by_path "$PORTAL" "$IQN_HAND" 0) ]] && echo yes || echo no)"
tether_down
