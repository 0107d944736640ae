# shellcheck shell=bash disable=SC2154
# Raw open-iscsi against LIO on loopback, no tether: discovery, a manual node
# record, login, by-path link, data round trip, logout, record removal; then
# the same with CHAP, mutual CHAP and a wrong CHAP secret.
# vm-timeout: 240

PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:raw
IQN_CHAP=iqn.2003-01.test.tether:chap
IQN_MUTUAL=iqn.2003-01.test.tether:mutual

lio_target "$IQN"
lio_lun "$IQN" raw0 64M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_target "$IQN_CHAP"
lio_lun "$IQN_CHAP" chap0 16M
lio_acl "$IQN_CHAP" "$GUEST_INITIATOR" chap tether-user tether-secret-123
lio_target "$IQN_MUTUAL"
lio_lun "$IQN_MUTUAL" mutual0 16M
lio_acl "$IQN_MUTUAL" "$GUEST_INITIATOR" chap tether-user tether-secret-123 mutual target-user target-secret-456
lio_apply

# --- discovery ---------------------------------------------------------------------------
run_capture iscsiadm -m discovery -t sendtargets -p "$PORTAL"
expect_eq "sendtargets discovery exits 0" 0 "$LAST_RC"
expect_line "discovery lists $IQN" "$PORTAL,1 $IQN" "$LAST_OUT"
expect_line "discovery lists $IQN_CHAP" "$PORTAL,1 $IQN_CHAP" "$LAST_OUT"
# Discovery stored records; start from a clean, explicitly created one.
iscsiadm -m node -o delete >/dev/null

# --- plain login -----------------------------------------------------------------------------
iscsi_node_new "$IQN" "$PORTAL"
run_capture iscsiadm -m node -T "$IQN" -p "$PORTAL"
expect_line "node record has node.startup = manual" "node.startup = manual" "$LAST_OUT"

dev=$(by_path "$PORTAL" "$IQN" 0)
t0=$(now_ms)
expect_rc "login to $IQN" 0 iscsiadm -m node -T "$IQN" -p "$PORTAL" --login
t1=$(now_ms)
wait_for_path "$dev" 30
t2=$(now_ms)
note login_ms $((t1 - t0))
note login_to_by_path_ms $((t2 - t0))
expect_eq "one session in /sys/class/iscsi_session" 1 "$(session_count)"
sd=$(readlink -f "$dev")
expect_match "by-path link points at a SCSI disk" '^/dev/sd[a-z]+$' "$sd"
expect_eq "LUN size" 67108864 "$(blockdev --getsize64 "$dev")"
expect_eq "session targetname" "$IQN" "$(cat /sys/class/iscsi_session/session*/targetname)"

dd if=/dev/urandom of="$WORK/data" bs=1M count=4 status=none
dd if="$WORK/data" of="$dev" bs=1M oflag=direct conv=fsync status=none
dd if="$dev" of="$WORK/back" bs=1M count=4 iflag=direct status=none
want=$(sha256sum <"$WORK/data" | cut -d' ' -f1)
expect_eq "data read back through iSCSI" "$want" "$(sha256sum <"$WORK/back" | cut -d' ' -f1)"
expect_eq "data reached the LIO backing file" "$want" \
    "$(head -c 4194304 "$LIO_BACKING_DIR/raw0.img" | sha256sum | cut -d' ' -f1)"

t0=$(now_ms)
expect_rc "logout from $IQN" 0 iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout
wait_for_gone "$dev" 30
note logout_to_gone_ms $(($(now_ms) - t0))
expect_eq "no session after logout" 0 "$(session_count)"
expect_eq "disk gone after logout" no "$([[ -e $sd ]] && echo yes || echo no)"
expect_rc "delete node record" 0 iscsiadm -m node -T "$IQN" -p "$PORTAL" -o delete
expect_rc "no node records left (exit 21)" 21 iscsiadm -m node

# --- CHAP -------------------------------------------------------------------------------------
iscsi_node_new "$IQN_CHAP" "$PORTAL"
iscsi_node_set "$IQN_CHAP" "$PORTAL" node.session.auth.authmethod CHAP \
    node.session.auth.username tether-user node.session.auth.password tether-secret-123
dev=$(by_path "$PORTAL" "$IQN_CHAP" 0)
expect_rc "CHAP login" 0 iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" --login
wait_for_path "$dev" 30
expect_eq "one session with CHAP" 1 "$(session_count)"
expect_rc "CHAP logout" 0 iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" --logout
wait_for_gone "$dev" 30

# Wrong secret: the target refuses the login with an authorization failure.
iscsi_node_set "$IQN_CHAP" "$PORTAL" node.session.auth.password wrong-secret-000
expect_rc "login with a wrong CHAP secret exits 24" 24 iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" --login
expect_match "wrong CHAP error names authorization" 'authorization failure|24' "$LAST_ERR"
expect_eq "no session after failed CHAP login" 0 "$(session_count)"
expect_eq "no device after failed CHAP login" no "$([[ -e $dev ]] && echo yes || echo no)"
expect_rc "delete CHAP node record" 0 iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" -o delete

# No CHAP at all against a CHAP target.
iscsi_node_new "$IQN_CHAP" "$PORTAL"
expect_rc "login without CHAP to a CHAP target exits 24" 24 iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" --login
iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" -o delete >/dev/null

# --- mutual CHAP --------------------------------------------------------------------------
iscsi_node_new "$IQN_MUTUAL" "$PORTAL"
iscsi_node_set "$IQN_MUTUAL" "$PORTAL" node.session.auth.authmethod CHAP \
    node.session.auth.username tether-user node.session.auth.password tether-secret-123 \
    node.session.auth.username_in target-user node.session.auth.password_in target-secret-456
dev=$(by_path "$PORTAL" "$IQN_MUTUAL" 0)
expect_rc "mutual CHAP login" 0 iscsiadm -m node -T "$IQN_MUTUAL" -p "$PORTAL" --login
wait_for_path "$dev" 30
expect_rc "mutual CHAP logout" 0 iscsiadm -m node -T "$IQN_MUTUAL" -p "$PORTAL" --logout
wait_for_gone "$dev" 30
# The target proves itself with a secret the initiator does not expect.
iscsi_node_set "$IQN_MUTUAL" "$PORTAL" node.session.auth.password_in wrong-target-secret
run_capture iscsiadm -m node -T "$IQN_MUTUAL" -p "$PORTAL" --login
note mutual_chap_wrong_target_secret_exit "$LAST_RC"
expect_ne "login with a wrong mutual CHAP secret fails" 0 "$LAST_RC"
expect_eq "no session after failed mutual CHAP login" 0 "$(session_count)"
iscsiadm -m node -T "$IQN_MUTUAL" -p "$PORTAL" -o delete >/dev/null
