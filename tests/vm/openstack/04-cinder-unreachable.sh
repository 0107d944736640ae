# shellcheck shell=bash disable=SC2154
# Cinder stopped (API and volume service) while volumes are attached: nothing is detached, the
# list says Cinder is unreachable, a new attach is refused clearly (the volume cannot even be
# looked up). Work pending when Cinder went away completes once it is back: a volume the agent
# attached meanwhile is completed (`in-use`), a volume detached meanwhile has its attachment
# deleted (`available`); no attachment leaked.
# vm-timeout: 1200
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"
source "$SHARE/vm/cinder-tether.sh"
openstack_up
a=$(cinder_create tether-down-a 1 rbd)
b=$(cinder_create tether-down-b 1 rbd)
c=$(cinder_create tether-down-c 1 rbd)
vol_attach "$NODE" "$a" --timeout 300
expect_vol_rc "attach of the first volume before Cinder stops" 0
expect_cinder "$a" in-use "in-use before Cinder stops"
dev_a=$(vol_get "$a" device)

# The second volume's attachment is made, but with the agent stopped it cannot complete yet.
tether_stop_agent
vol_attach "$NODE" "$b" --no-wait
expect_vol_rc "attach --no-wait of the second volume" 0
# (The attachment id is recorded at the reservation, before the export: wait for the target.)
vol_wait "$b" phase attaching 300
expect_eq "the conductor holds Cinder's attachment of the second volume" \
    "$(cinder_attachments "$b" | head -n1)" "$(vol_get "$b" attachment_id)"

cinder_stop
t_stop=$(now_ms)
vol_wait "$a" cinder_reachable false 120
note unreachable_shown_after_ms $(($(now_ms) - t_stop))
expect_eq "the first volume is still attached (agent)" attached "$(vol_get "$a" agent_state)"
expect_match "still mapped while Cinder is away" "volume-$a" "$(rbd_left)"
expect_eq "its device is still there" yes "$([[ -n $dev_a && -b $dev_a ]] && echo yes || echo no)"

# A new attach needs Cinder: refused, nothing recorded.
vol_attach "$NODE" "$c" --timeout 60
expect_ne "an attach while Cinder is away is refused" 0 "$VOL_RC"
expect_match "the refusal says Cinder is unreachable" '([Uu]nreachable|cinder_unreachable|connect)' "$VOL_OUT"
expect_eq "nothing listed for it" "" "$(vol_get "$c" volume_id)"

# The agent comes back and attaches the second volume; the first is detached meanwhile.
tether_start_agent
vol_wait "$b" agent_state attached 120
vol_detach "$NODE" "$a" --no-wait
expect_vol_rc "detach --no-wait accepted while Cinder is away" 0
for ((i = 0; i < 90; i++)); do [[ $(rbd_left) != *"volume-$a"* ]] && break; sleep 1; done
expect_eq "the agent let the first volume go without Cinder" "" "$(rbd_left | grep -oF "volume-$a" || true)"
expect_eq "the first volume is still listed (its attachment is not deleted yet)" "$a" "$(vol_get "$a" volume_id)"
sleep 10
expect_ne "the second volume is not completed without Cinder" attached "$(vol_get "$b" phase)"

# Only RBD volumes here: do not wait for the LVM driver's minutes-long start.
CINDER_START_DRIVERS=RBDDriver cinder_start
t_back=$(now_ms)
cinder_wait_status "$a" available 300 && pass "the pending detach completed: the first volume available"
note detach_completed_after_restart_ms $(($(now_ms) - t_back))
expect_no_attachment "$a"
cinder_wait_status "$b" in-use 300 && pass "the pending attach completed: the second volume in-use"
note attach_completed_after_restart_ms $(($(now_ms) - t_back))
vol_wait "$b" phase attached 120
vol_wait "$b" cinder_reachable true 120
expect_eq "one attachment of the second volume" 1 "$(cinder_attachments "$b" | grep -c . || true)"
expect_no_attachment "$c"
expect_eq "only the second volume is mapped" "volume-$b" \
    "$(rbd_left | grep -o 'volume-[0-9a-f-]*' | tr '\n' ' ' | sed 's/ $//')"

vol_detach "$NODE" "$b" --timeout 300
expect_vol_rc "detach after Cinder is back" 0
expect_cinder "$b" available "available after the detach"
expect_no_attachment "$b"
expect_eq "no RBD mapping left" "" "$(rbd_left)"
