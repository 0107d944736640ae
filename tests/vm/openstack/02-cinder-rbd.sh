# shellcheck shell=bash disable=SC2154
# A Cinder RBD volume on the guest's Ceph attached by `tether ctl volume attach --mkfs --mount`:
# Cinder sends no cephx key, the conductor takes client.cinder's from its key file
# ([[cinder.ceph_keys]]). Cinder `in-use`, the list agrees, data written through the mount reads
# back; detached: Cinder `available` with no attachment, no mapping left, the data is in the
# image, and the cephx key is in no tether log, report, ctl output or world-readable file.
# vm-timeout: 900
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"
source "$SHARE/vm/cinder-tether.sh"
openstack_up
MNT=/mnt/cinder-rbd
id=$(cinder_create tether-rbd 1 rbd)

vol_attach "$NODE" "$id" --mount "$MNT" --fstype ext4 --mkfs --timeout 300
expect_vol_rc "ctl volume attach --mkfs --mount" 0
expect_cinder "$id" in-use "Cinder shows the volume in-use after the attach"
mapfile -t atts < <(cinder_attachments "$id")
expect_eq "Cinder has one attachment" 1 "${#atts[@]}"
expect_eq "list: the attachment id is Cinder's" "${atts[0]:-none}" "$(vol_get "$id" attachment_id)"
expect_eq "list: agent_state" mounted "$(vol_get "$id" agent_state)"
expect_eq "list: cinder_status" in-use "$(vol_get "$id" cinder_status)"
expect_eq "list: device" "/dev/rbd/$CINDER_CEPH_POOL/volume-$id" "$(vol_get "$id" device)"
expect_match "one mapping, of Cinder's image" "^rbd[0-9]+=$CINDER_CEPH_POOL/volume-$id $" "$(rbd_left)"
ci=$(cinder_api GET "attachments/${atts[0]:-none}" | jq -c '.attachment.connection_info')
expect_eq "Cinder's connection_info has no key" "" "$(jq -r '.keyring // empty' <<<"$ci")"
expect_eq "Cinder's connection_info names client.cinder" "$CINDER_CEPH_USER" "$(jq -r '.auth_username' <<<"$ci")"

write_through "$MNT"

vol_detach "$NODE" "$id" --timeout 300
expect_vol_rc "ctl volume detach" 0
expect_cinder "$id" available "Cinder shows the volume available after the detach"
expect_no_attachment "$id"
expect_eq "not mounted any more" "" "$(findmnt -n "$MNT" || true)"
expect_eq "no RBD mapping left" "" "$(rbd_left)"

# The data is in Cinder's image (mapped read-only as client.admin, unmapped again).
if dev=$(ceph_rbd device map -o ro "$CINDER_CEPH_POOL/volume-$id"); then
    udevadm settle --timeout=30 || true
    expect_data_on "$dev" "the data is in Cinder's RBD image"
    ceph_rbd device unmap "$dev" || ceph_unmap_all
else
    fail "map Cinder's image as client.admin" "rbd device map exit 0" "failed; see ceph/cli.log"
fi

no_leak "$(cinder_ceph_key)"
cinder_delete "$id"
