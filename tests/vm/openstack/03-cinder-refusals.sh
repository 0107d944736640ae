# shellcheck shell=bash disable=SC2154
# Attaches tether must refuse, clearly and without side effects: a volume in-use by another
# node's attachment (multiattach false), a missing volume (by id and by name), a volume in
# `error`, and a node that never reported (no connector to give Cinder). Each: ctl exits
# non-zero and says why, nothing is assigned (`ctl target list`), nothing logged in or mapped,
# and Cinder has no attachment from tether.
# vm-timeout: 600
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"
source "$SHARE/vm/cinder-tether.sh"
openstack_up
NO_SUCH=00000000-0000-4000-8000-00000000dead
OTHER='{"initiator": "iqn.2004-10.test.other:node", "ip": "192.0.2.10", "host": "other-node", "platform": "x86_64", "os_type": "linux", "multipath": false}'

# nothing_done DESC VOLUME_ID : no target, no session, no mapping.
nothing_done() {
    expect_eq "$1: nothing assigned" "" "$(ctl target list 2>&1 | grep -F -- "$2" || true)"
    expect_eq "$1: no iSCSI session or record" "" "$(iscsi_left)"
    expect_eq "$1: no RBD mapping" "" "$(rbd_left)"
}
# Wait until the agent's first report: before it, every attach is refused for that reason.
for ((i = 0; i < 60; i++)); do ctl status "$NODE" --json >/dev/null 2>&1 && break; sleep 1; done

# In use by another node: an attachment made and completed with Cinder's API directly.
busy=$(cinder_create tether-busy 1 rbd)
other_att=$(cinder_api POST attachments "{\"attachment\": {\"volume_uuid\": \"$busy\", \"connector\": $OTHER, \"mode\": \"rw\"}}" | jq -r .attachment.id)
cinder_api POST "attachments/$other_att/action" '{"os-complete": null}' >/dev/null
expect_cinder "$busy" in-use "the other node's attachment makes the volume in-use"
vol_attach "$NODE" "$busy" --timeout 120
expect_ne "attach of a volume in-use elsewhere is refused" 0 "$VOL_RC"
expect_match "the refusal says the volume is in use" '([Ii]n.?use|already attached|multiattach)' "$VOL_OUT"
nothing_done "in-use elsewhere" "$busy"
expect_eq "Cinder still has only the other node's attachment" "$other_att" "$(cinder_attachments "$busy" | tr '\n' ' ' | sed 's/ $//')"
expect_cinder "$busy" in-use "the volume stays in-use"

# Missing, by id and by name.
vol_attach "$NODE" "$NO_SUCH" --timeout 120
expect_ne "attach of a missing volume id is refused" 0 "$VOL_RC"
expect_match "the refusal says it is not found" '([Nn]ot.found|[Nn]o such|missing|does not exist)' "$VOL_OUT"
nothing_done "missing id" "$NO_SUCH"
vol_attach "$NODE" no-such-volume-name --timeout 120
expect_ne "attach of a missing volume name is refused" 0 "$VOL_RC"
expect_match "the refusal says it is not found" '([Nn]ot.found|[Nn]o such|missing|does not exist)' "$VOL_OUT"
nothing_done "missing name" no-such-volume-name

# In error.
bad=$(cinder_create tether-error 1 rbd)
cinder_api POST "volumes/$bad/action" '{"os-reset_status": {"status": "error"}}' >/dev/null
vol_attach "$NODE" "$bad" --timeout 120
expect_ne "attach of a volume in error is refused" 0 "$VOL_RC"
expect_match "the refusal names the status" 'error' "$VOL_OUT"
nothing_done "in error" "$bad"
expect_no_attachment "$bad"

# A node that never reported: no connector to build.
ctl node create never-seen --mac 52:54:00:00:00:99 >/dev/null
ok=$(cinder_create tether-ok 1 rbd)
vol_attach never-seen "$ok" --timeout 60
expect_ne "attach to a node that never reported is refused" 0 "$VOL_RC"
expect_match "the refusal says the node never reported" '(never reported|no report|not reported|heartbeat)' "$VOL_OUT"
expect_no_attachment "$ok"
expect_cinder "$ok" available "the volume stays available"
expect_eq "nothing assigned at all" "" "$(ctl target list 2>&1 | grep -E -- "$busy|$bad|$ok|$NO_SUCH" || true)"

cinder_api DELETE "attachments/$other_att" >/dev/null || true
