# shellcheck shell=bash disable=SC2154
# tether: the agent restarted while volumes are attached -> no new login, no duplicate
# session, same report; the conductor stopped for 30 s -> nothing detached, reports resume.
# vm-timeout: 300
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:restart
lio_target "$IQN"
lio_lun "$IQN" r0 16M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
tether_up

assign vol-r --portal "$PORTAL" --iqn "$IQN" --lun 0 >/dev/null
wait_volume vol-r attached 60
before=$REPORT
sessions_before=$(session_ids "$IQN")

tether_stop_agent
expect_eq "stopping the agent detaches nothing" "$sessions_before" "$(session_ids "$IQN")"
tether_start_agent
sleep 3
wait_volume vol-r attached 30
expect_eq "same session after the restart (no new login)" "$sessions_before" "$(session_ids "$IQN")"
expect_eq "same device after the restart" "$(REPORT=$before field device_path)" "$(field device_path)"
expect_eq "no login in the restarted agent's log" 0 "$(sed -n '/agent stopped/,$p' "$RESULT_DIR/agent.log" | grep -c '"attaching"' || true)"

tether_stop_conductor
sleep 30
expect_eq "conductor down 30 s: still logged in" "$sessions_before" "$(session_ids "$IQN")"
expect_eq "conductor down 30 s: device still there" yes "$([[ -e $(by_path "$PORTAL" "$IQN" 0) ]] && echo yes || echo no)"
seen_before=$(ctl status vm-guest --json 2>/dev/null | grep -F last_seen || true)
tether_start_conductor
t0=$(now_ms)
for ((i = 0; i < 300; i++)); do
    seen=$(ctl status vm-guest --json | grep -F last_seen || true)
    [[ -n $seen && $seen != "$seen_before" ]] && break
    sleep 0.1
done
expect_ne "reports resume after the conductor returns" "$seen_before" "$seen"
note report_resumed_after_ms $(($(now_ms) - t0))
wait_volume vol-r attached 10
tether_down
