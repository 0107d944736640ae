# shellcheck shell=bash disable=SC2154
# tether: two LUNs of one target plus a second target, assigned together -> all attached,
# exactly one session per target; unassigning one LUN keeps the session for the other.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN_A=iqn.2003-01.test.tether:a
IQN_B=iqn.2003-01.test.tether:b
lio_target "$IQN_A"
lio_lun "$IQN_A" a0 16M 0
lio_lun "$IQN_A" a1 16M 1
lio_acl "$IQN_A" "$GUEST_INITIATOR"
lio_target "$IQN_B"
lio_lun "$IQN_B" b0 16M
lio_acl "$IQN_B" "$GUEST_INITIATOR"
lio_apply
tether_up

a0=$(assign vol-a0 --portal "$PORTAL" --iqn "$IQN_A" --lun 0)
assign vol-a1 --portal "$PORTAL" --iqn "$IQN_A" --lun 1 >/dev/null
assign vol-b0 --portal "$PORTAL" --iqn "$IQN_B" --lun 0 >/dev/null
for v in vol-a0 vol-a1 vol-b0; do wait_volume "$v" attached 60; done
expect_eq "exactly one session to $IQN_A" 1 "$(sessions_to "$IQN_A")"
expect_eq "exactly one session to $IQN_B" 1 "$(sessions_to "$IQN_B")"
wait_volume vol-a1 attached 5
roundtrip "$(field device_path)" "$LIO_BACKING_DIR/a1.img"

unassign "$a0"
wait_volume vol-a0 gone 60
expect_eq "the session stays for LUN 1" 1 "$(sessions_to "$IQN_A")"
expect_eq "LUN 0's link is gone" no "$([[ -e $(by_path "$PORTAL" "$IQN_A" 0) ]] && echo yes || echo no)"
expect_eq "LUN 1's link is still there" yes "$([[ -e $(by_path "$PORTAL" "$IQN_A" 1) ]] && echo yes || echo no)"
tether_down
