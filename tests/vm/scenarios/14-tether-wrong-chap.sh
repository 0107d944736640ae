# shellcheck shell=bash disable=SC2154
# tether: a wrong CHAP password on one volume -> that volume failed with auth_failed, the
# others attached.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN_OK=iqn.2003-01.test.tether:fine
IQN_CHAP=iqn.2003-01.test.tether:locked
lio_target "$IQN_OK"
lio_lun "$IQN_OK" fine0 16M
lio_acl "$IQN_OK" "$GUEST_INITIATOR"
lio_target "$IQN_CHAP"
lio_lun "$IQN_CHAP" locked0 16M
lio_acl "$IQN_CHAP" "$GUEST_INITIATOR" chap tether-user right-secret-0001
lio_apply
tether_up
printf 'wrong-secret-9999' >"$WORK/wrong.pw"
assign vol-locked --portal "$PORTAL" --iqn "$IQN_CHAP" --lun 0 \
    --chap-user tether-user --chap-password-file "$WORK/wrong.pw" >/dev/null
assign vol-fine --portal "$PORTAL" --iqn "$IQN_OK" --lun 0 >/dev/null
wait_volume vol-fine attached 60
wait_volume vol-locked failed 60
expect_match "failed with an authentication kind" '"kind": "auth_failed"' "$REPORT"
# The failed volume is retried every few seconds; stop the agent (which lets a running attempt
# finish) so that the look below does not race a retry.
tether_stop_agent
expect_eq "no session left by the failed login" 0 "$(sessions_to "$IQN_CHAP")"
expect_eq "no record left by the failed login" no "$(has_record "$IQN_CHAP" "$PORTAL")"
no_secret_leak wrong-secret-9999
tether_down
