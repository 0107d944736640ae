# shellcheck shell=bash disable=SC2154
# tether: a portal named by host name (an /etc/hosts entry). One LUN attaches while another LUN
# of the same target detaches, five times over: every step reaches its state, and the one
# session stays the same throughout (the detach never logs it out from under the attach,
# because both name it by the resolved address). At the end no session and no node record.
# vm-timeout: 300
source "$SHARE/vm/tether.sh"
NAME=array.tether.test
grep -q " $NAME\$" /etc/hosts || echo "127.0.0.1 $NAME" >>/etc/hosts
PORTAL=$NAME:3260
IQN=iqn.2003-01.test.tether:named
lio_target "$IQN"
lio_lun "$IQN" n0 16M 0
lio_lun "$IQN" n1 16M 1
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
tether_up

first=$(assign vol-n0 --portal "$PORTAL" --iqn "$IQN" --lun 0)
wait_volume vol-n0 attached 60
expect_eq "the device is named by the resolved address" "$(by_path 127.0.0.1:3260 "$IQN" 0)" \
    "$(field device_path)"
session=$(session_ids "$IQN")
expect_eq "one session" 1 "$(sessions_to "$IQN")"

going=$first
for round in 1 2 3 4 5; do
    # LUN 1 comes while LUN 0 goes, in one change of the assignment as the agent sees it.
    coming=$(assign vol-n1 --portal "$PORTAL" --iqn "$IQN" --lun 1)
    unassign "$going"
    wait_volume vol-n1 attached 60
    wait_volume vol-n0 gone 60
    expect_eq "round $round, LUN 1 in, LUN 0 out: the same session" "$session" \
        "$(session_ids "$IQN")"
    going=$coming
    coming=$(assign vol-n0 --portal "$PORTAL" --iqn "$IQN" --lun 0)
    unassign "$going"
    wait_volume vol-n0 attached 60
    wait_volume vol-n1 gone 60
    expect_eq "round $round, LUN 0 in, LUN 1 out: the same session" "$session" \
        "$(session_ids "$IQN")"
    going=$coming
done
expect_eq "no attach or detach failed" 0 \
    "$(grep -cE 'attach failed|detach failed' "$RESULT_DIR/agent.log" || true)"

unassign "$going"
wait_volume vol-n0 gone 60
expect_eq "logged out at the last unassign" 0 "$(sessions_to "$IQN")"
expect_eq "node record deleted" no "$(has_record "$IQN" 127.0.0.1:3260)"
tether_down
