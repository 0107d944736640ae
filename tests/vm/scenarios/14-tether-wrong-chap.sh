# shellcheck shell=bash disable=SC2154
# tether: a wrong CHAP password on one volume -> that volume failed with auth_failed, the
# others attached. Wrong trust on the agent's side too: an agent that trusts another CA than
# the conductor's gets nothing (a certificate error, no lookup, no report, no login); plain
# http:// to another machine is refused as config_invalid unless allow_insecure_http is set;
# the conductor does not answer plain http.
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
# Failed logins are retried after 3 to 6 s, not 1: the guest's 6.1 iscsi_tcp can oops
# (NULL pointer in iscsi_sw_tcp_release_conn) when a refused login closes its connection while
# another target's session is being set up, and an oops wedges iscsid for every later scenario.
# A slower retry keeps the refused logins few and apart from vol-fine's login.
RETRY_INITIAL_S=6 RETRY_MAX_S=12
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

# An agent that trusts another CA: the TLS handshake fails, so it never looks its node up and
# never sees the target assigned to it (with the right CHAP password). Kernel command line keys
# win over the files: tether.conductor_ca_file= replaces the drop-in's CA, and tether.node= and
# tether.state_dir= make it another node than the guest's.
UNTRUSTING_UUID=0d7c2b1a-3e4f-4a5b-8c6d-7e8f9a0b1c2d
ctl node create untrusting --mac 52:54:00:00:00:0e --uuid "$UNTRUSTING_UUID" >/dev/null
printf 'right-secret-0001' >"$WORK/right.pw"
ctl target create untrusting --volume-id vol-untrusted --portal "$PORTAL" --iqn "$IQN_CHAP" \
    --lun 0 --chap-user tether-user --chap-password-file "$WORK/right.pw" >/dev/null
tls_certs "$WORK/other-ca" IP:127.0.0.1
printf 'tether.node=%s tether.state_dir=%s tether.conductor_ca_file=%s\n' \
    "$UNTRUSTING_UUID" "$WORK/untrusting" "$WORK/other-ca/ca.pem" >"$WORK/untrusting.cmdline"
untrusting_log=$RESULT_DIR/agent-other-ca.log
TETHER_LOG=tether=debug "$TETHER" --cmdline "$WORK/untrusting.cmdline" agent >"$untrusting_log" 2>&1 &
AGENT_PID=$!
# Three failed lookups (0.5 s backoff, doubling) are a few seconds of trying.
for ((i = 0; i < 300; i++)); do
    (($(grep -c 'lookup failed' "$untrusting_log" || true) >= 3)) && break
    sleep 0.1
done
tether_stop_agent
expect_match "the agent trusting another CA logs the certificate error" \
    'lookup failed.*invalid peer certificate: UnknownIssuer' "$(grep -m1 'lookup failed' "$untrusting_log" || true)"
expect_eq "it never looked its node up" "" "$(grep 'conductor knows this node' "$untrusting_log" || true)"
run_capture ctl status untrusting
expect_line "the conductor has no report from it" "no report from the agent yet" "$LAST_OUT"
expect_match "nor saw it" 'last seen never' "$LAST_OUT"
expect_eq "no login to the target assigned to it" 0 "$(sessions_to "$IQN_CHAP")"

# The conductor speaks only TLS.
expect_rc "ctl over plain http:// gets no answer" 1 env TETHER_URL="http://127.0.0.1:6387" \
    timeout 30 "$TETHER" ctl node list

# Plain http:// to another machine: a configuration error (check-config and the agent stop at
# once), unless allowed in so many words.
printf '[agent]\nconductor_url = "http://192.0.2.1:6387"\n' >"$WORK/insecure.toml"
expect_rc "check-config refuses http:// to another machine" 1 \
    "$TETHER" --config "$WORK/insecure.toml" check-config
expect_match "check-config: config_invalid, naming allow_insecure_http" \
    'allow_insecure_http.*\[config_invalid\]' "$LAST_ERR"
expect_rc "the agent refuses to start with it" 1 \
    timeout 30 "$TETHER" --config "$WORK/insecure.toml" agent
expect_match "agent: config_invalid, naming allow_insecure_http" \
    'allow_insecure_http.*\[config_invalid\]' "$LAST_ERR"
printf 'allow_insecure_http = true\n' >>"$WORK/insecure.toml"
expect_rc "check-config takes it with allow_insecure_http = true" 0 \
    "$TETHER" --config "$WORK/insecure.toml" check-config
tether_down
