# shellcheck shell=bash disable=SC2154
# tether: one LUN assigned -> attached, by-path device reported, data round trip;
# then unassigned -> flushed, logged out, node record deleted, device gone, report updated.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:one
lio_target "$IQN"
lio_lun "$IQN" one0 64M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
tether_up

t0=$(now_ms)
target=$(assign vol-one --portal "$PORTAL" --iqn "$IQN" --lun 0)
wait_volume vol-one attached 60
note assign_to_report_ms $(($(now_ms) - t0))
dev=$(by_path "$PORTAL" "$IQN" 0)
expect_eq "reported device path is the by-path link" "$dev" "$(field device_path)"
expect_match "reported size" '"size_bytes": 67108864' "$REPORT"
expect_match "reported WWN" '"wwn": "naa\.' "$REPORT"
expect_eq "one session to the target" 1 "$(sessions_to "$IQN")"
expect_line "node record has node.startup = manual" "node.startup = manual" "$(iscsiadm -m node -T "$IQN" -p "$PORTAL")"
expect_line "node record scans manually" "node.session.scan = manual" "$(iscsiadm -m node -T "$IQN" -p "$PORTAL")"
roundtrip "$dev" "$LIO_BACKING_DIR/one0.img"
sd=$(readlink -f "$dev")

unassign "$target"
wait_volume vol-one gone 60
expect_eq "logged out" 0 "$(sessions_to "$IQN")"
expect_eq "node record deleted" no "$(has_record "$IQN" "$PORTAL")"
expect_eq "by-path link gone" no "$([[ -e $dev ]] && echo yes || echo no)"
expect_eq "disk gone" no "$([[ -e $sd ]] && echo yes || echo no)"
expect_eq "report lists no volume" "" "$(ctl status vm-guest --json | grep -F vol-one || true)"
tether_down
