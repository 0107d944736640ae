# shellcheck shell=bash disable=SC2154
# tether: SendTargets discovery with discovery CHAP before the (CHAP) login; the discovery
# record that carries the secret is gone afterwards; a wrong discovery password fails that
# volume with auth_failed and nothing else.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:disc
IQN_OTHER=iqn.2003-01.test.tether:disc-other
DISC_SECRET=disc-secret-4b1e77a2
CHAP_SECRET=chap-secret-0c93de51
lio_target "$IQN"
lio_lun "$IQN" disc0 16M
lio_acl "$IQN" "$GUEST_INITIATOR" chap tether-user "$CHAP_SECRET"
lio_target "$IQN_OTHER"
lio_lun "$IQN_OTHER" other0 16M
lio_acl "$IQN_OTHER" "$GUEST_INITIATOR"
lio_cmd "/iscsi set discovery_auth enable=1 userid=disc-user password=$DISC_SECRET"
lio_apply
expect_eq "the target enforces discovery authentication" 1 \
    "$(cat /sys/kernel/config/target/iscsi/discovery_auth/enforce_discovery_auth)"
tether_up

# properties IQN DISCOVERY_PASSWORD [CHAP_PASSWORD] : a target's properties as JSON.
properties() {
    printf '{"target_portal": "%s", "target_iqn": "%s", "target_lun": 0, "discovery": "sendtargets",
  "discovery_auth_method": "CHAP", "discovery_auth_username": "disc-user", "discovery_auth_password": "%s"' \
        "$PORTAL" "$1" "$2"
    [[ -n ${3:-} ]] && printf ', "auth_method": "CHAP", "auth_username": "tether-user", "auth_password": "%s"' "$3"
    printf '}\n'
}
properties "$IQN" "$DISC_SECRET" "$CHAP_SECRET" >"$WORK/disc.json"
properties "$IQN_OTHER" wrong-disc-secret-1111 >"$WORK/wrong.json"
chmod 600 "$WORK"/*.json

assign vol-disc --type iscsi --properties-file "$WORK/disc.json" >/dev/null
assign vol-wrong-disc --type iscsi --properties-file "$WORK/wrong.json" >/dev/null
wait_volume vol-disc attached 60
roundtrip "$(field device_path)" "$LIO_BACKING_DIR/disc0.img"
wait_volume vol-wrong-disc failed 60
expect_match "a wrong discovery password fails with an authentication kind" '"kind": "auth_failed"' "$REPORT"
expect_match "the error names the discovery credentials" 'discovery_auth_password' "$REPORT"
tether_stop_agent
expect_eq "one session to the discovered target" 1 "$(sessions_to "$IQN")"
expect_eq "no session to the target behind the failed discovery" 0 "$(sessions_to "$IQN_OTHER")"
expect_eq "no discovery record left behind" "" "$(find /etc/iscsi/send_targets -type f 2>/dev/null)"
expect_eq "node record only for the attached volume" "yes no" \
    "$(has_record "$IQN" "$PORTAL") $(has_record "$IQN_OTHER" "$PORTAL")"
no_secret_leak "$DISC_SECRET" wrong-disc-secret-1111 "$CHAP_SECRET"
tether_down
