# shellcheck shell=bash disable=SC2154
# The conductor killed (SIGKILL) between Cinder's attachment creation and its completion, and
# again between the agent's detach and the attachment's deletion: after its restart the volume
# ends `in-use` (first case) or `available` (second), and Cinder lists no leaked attachment.
# To hold each window open: the agent is stopped before the attach (so the conductor cannot
# complete), and Cinder's API is stopped before the detach (so it cannot delete).
# vm-timeout: 900
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"
source "$SHARE/vm/cinder-tether.sh"
openstack_up
id=$(cinder_create tether-kill 1 rbd)
for ((i = 0; i < 60; i++)); do ctl status "$NODE" --json >/dev/null 2>&1 && break; sleep 1; done

kill_conductor() {
    kill -KILL "$CONDUCTOR_PID"
    wait "$CONDUCTOR_PID" 2>/dev/null || true
    CONDUCTOR_PID=""
    log "conductor killed (SIGKILL)"
}

# --- 1: between the attachment's creation and its completion -----------------------------------
tether_stop_agent
vol_attach "$NODE" "$id" --no-wait
expect_vol_rc "attach --no-wait" 0
for ((i = 0; i < 60; i++)); do [[ -n $(cinder_attachments "$id") ]] && break; sleep 1; done
expect_eq "Cinder has the attachment" 1 "$(cinder_attachments "$id" | grep -c . || true)"
# Exported and assigned (the id is recorded earlier, at the reservation): the agent would attach.
vol_wait "$id" phase attaching 300
expect_eq "the conductor holds Cinder's attachment" "$(cinder_attachments "$id" | head -n1)" \
    "$(vol_get "$id" attachment_id)"
expect_ne "not completed yet (the agent is stopped)" in-use "$(cinder_status "$id")"
kill_conductor
tether_start_conductor
tether_start_agent
cinder_wait_status "$id" in-use 300 && pass "after the restart the attach completed: in-use"
vol_wait "$id" agent_state attached 120
expect_eq "exactly one attachment (none leaked)" 1 "$(cinder_attachments "$id" | grep -c . || true)"
expect_eq "the list's attachment is Cinder's" "$(cinder_attachments "$id" | head -n1)" "$(vol_get "$id" attachment_id)"

# --- 2: between the agent's detach and the attachment's deletion -------------------------------
cinder_stop api
vol_detach "$NODE" "$id" --no-wait
expect_vol_rc "detach --no-wait while Cinder's API is away" 0
for ((i = 0; i < 60; i++)); do [[ -z $(rbd_left) ]] && break; sleep 1; done
expect_eq "the agent detached" "" "$(rbd_left)"
sleep 3
kill_conductor
cinder_start api
expect_eq "Cinder still has the attachment (the conductor could not delete it)" 1 \
    "$(cinder_attachments "$id" | grep -c . || true)"
tether_start_conductor
cinder_wait_status "$id" available 300 && pass "after the restart the detach completed: available"
expect_no_attachment "$id"
expect_eq "no RBD mapping left" "" "$(rbd_left)"
