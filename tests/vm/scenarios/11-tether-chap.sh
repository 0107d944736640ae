# shellcheck shell=bash disable=SC2154
# tether: CHAP and mutual CHAP logins; the secrets stay out of logs, reports, the agent's
# files and world-readable files.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:chap
IQN_MUTUAL=iqn.2003-01.test.tether:mutual
CHAP_SECRET=chap-secret-7f3a91e0
MUTUAL_SECRET=mutual-secret-19c2b7
lio_target "$IQN"
lio_lun "$IQN" chap0 16M
lio_acl "$IQN" "$GUEST_INITIATOR" chap tether-user "$CHAP_SECRET"
lio_target "$IQN_MUTUAL"
lio_lun "$IQN_MUTUAL" mutual0 16M
lio_acl "$IQN_MUTUAL" "$GUEST_INITIATOR" chap tether-user "$CHAP_SECRET" mutual target-user "$MUTUAL_SECRET"
lio_apply
tether_up
printf '%s' "$CHAP_SECRET" >"$WORK/chap.pw"
printf '%s' "$MUTUAL_SECRET" >"$WORK/mutual.pw"

assign vol-chap --portal "$PORTAL" --iqn "$IQN" --lun 0 \
    --chap-user tether-user --chap-password-file "$WORK/chap.pw" >/dev/null
assign vol-mutual --portal "$PORTAL" --iqn "$IQN_MUTUAL" --lun 0 \
    --chap-user tether-user --chap-password-file "$WORK/chap.pw" \
    --mutual-chap-user target-user --mutual-chap-password-file "$WORK/mutual.pw" >/dev/null
wait_volume vol-chap attached 60
roundtrip "$(field device_path)" "$LIO_BACKING_DIR/chap0.img"
wait_volume vol-mutual attached 60
roundtrip "$(field device_path)" "$LIO_BACKING_DIR/mutual0.img"
expect_eq "one session per target" "1 1" "$(sessions_to "$IQN") $(sessions_to "$IQN_MUTUAL")"
expect_match "operators read the password masked" '"auth_password": "\*{6}"' "$(ctl target list --json)"
no_secret_leak "$CHAP_SECRET" "$MUTUAL_SECRET"
tether_down
