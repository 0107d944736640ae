# shellcheck shell=bash disable=SC2154
# Cinder stopped (API and volume service) while a volume is attached: nothing is detached, the
# list says Cinder is unreachable; a detach of that volume and an attach of another asked for
# meanwhile wait; when Cinder is back, both complete: the first volume `available` with no
# attachment, the second `in-use` and attached, no attachment leaked.
# vm-timeout: 1200
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"
source "$SHARE/vm/cinder-tether.sh"
openstack_up
a=$(cinder_create tether-down-a 1 rbd)
b=$(cinder_create tether-down-b 1 rbd)
vol_attach "$NODE" "$a" --timeout 300
expect_vol_rc "attach before Cinder stops" 0
expect_cinder "$a" in-use "in-use before Cinder stops"
dev_a=$(vol_get "$a" device)

cinder_stop
t_stop=$(now_ms)
vol_wait "$a" cinder_reachable false 120
note unreachable_shown_after_ms $(($(now_ms) - t_stop))
expect_eq "still attached while Cinder is away (agent)" attached "$(vol_get "$a" agent_state)"
expect_match "still mapped while Cinder is away" "volume-$a" "$(rbd_left)"
expect_eq "the device is still there" yes "$([[ -n $dev_a && -b $dev_a ]] && echo yes || echo no)"

# Work asked for while Cinder is away is accepted and waits.
vol_detach "$NODE" "$a" --no-wait
expect_vol_rc "detach --no-wait accepted while Cinder is away" 0
vol_attach "$NODE" "$b" --no-wait
expect_vol_rc "attach --no-wait accepted while Cinder is away" 0
sleep 20
expect_eq "nothing of the second volume attached without Cinder" "" "$(rbd_left | grep -F "volume-$b" || true)"
vol_wait "$b" cinder_reachable false 60

cinder_start
t_back=$(now_ms)
cinder_wait_status "$a" available 300 && pass "the pending detach completed: $a available"
note detach_completed_after_restart_ms $(($(now_ms) - t_back))
expect_no_attachment "$a"
cinder_wait_status "$b" in-use 300 && pass "the pending attach completed: $b in-use"
note attach_completed_after_restart_ms $(($(now_ms) - t_back))
vol_wait "$b" agent_state attached 120
vol_wait "$b" cinder_reachable true 60
expect_eq "one attachment of the second volume" 1 "$(cinder_attachments "$b" | grep -c . || true)"
expect_eq "the first volume's mapping is gone, the second's is there" "volume-$b" \
    "$(rbd_left | grep -o 'volume-[0-9a-f-]*' | tr '\n' ' ' | sed 's/ $//')"

vol_detach "$NODE" "$b" --timeout 300
expect_vol_rc "detach after Cinder is back" 0
expect_cinder "$b" available "available after the detach"
expect_no_attachment "$b"
expect_eq "no RBD mapping left" "" "$(rbd_left)"
