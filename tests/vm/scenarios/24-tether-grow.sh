# shellcheck shell=bash disable=SC2154
# Volumes that grow while mounted with extra.mount.grow: an iSCSI LUN (a LIO block backstore on a
# loop device, grown with its file) and an NVMe/TCP namespace (nvmet, its file grown and the
# size revalidated). After `ctl target resize` the agent rescans, reports the new size, grows
# ext4 online, the data reads back; a resize the storage has not made yet is an error on a
# volume that stays mounted. (RBD's grow is in 20-tether-rbd.sh, beside its Ceph.)
# vm-timeout: 420
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/nvmet.sh"
source "$SHARE/vm/grow.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:grow
NQN=nqn.2024-01.test.tether:grow
MIB=$((1 << 20))

mkdir -p "$LIO_BACKING_DIR"
truncate -s 64M "$LIO_BACKING_DIR/grow.img"
loop=$(losetup --find --show "$LIO_BACKING_DIR/grow.img")
lio_target "$IQN"
lio_cmd "/backstores/block create name=grow dev=$loop"
lio_cmd "/iscsi/$IQN/tpg1/luns create /backstores/block/grow"
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
nvmet_up
nvmet_subsystem "$NQN"
ns_uuid=$(nvmet_namespace "$NQN" 1 64M)
tether_up

iscsi=$(assign vol-grow-iscsi --portal "$PORTAL" --iqn "$IQN" --lun 0 \
    --mount /srv/grow-iscsi --mkfs --grow)
nvme=$(assign vol-grow-nvme --nqn "$NQN" --portal 127.0.0.1:$NVME_PORT --ns-uuid "$ns_uuid" \
    --mount /srv/grow-nvme --mkfs --grow)
wait_volume vol-grow-iscsi mounted 90
expect_match "vol-grow-iscsi: the first size" "\"size_bytes\": $((64 * MIB))" "$REPORT"
wait_volume vol-grow-nvme mounted 90

# The conductor is told before the storage grew: the rescan finds the old size.
ctl target resize "$iscsi" --size 128M >/dev/null
wait_report_match vol-grow-iscsi '"kind": "device_timeout"' 90
expect_match "vol-grow-iscsi: still mounted while the grow waits" '"state": "mounted"' "$REPORT"

grow_write /srv/grow-iscsi
truncate -s 128M "$LIO_BACKING_DIR/grow.img"
losetup --set-capacity "$loop"
expect_grown vol-grow-iscsi "$iscsi" /srv/grow-iscsi $((128 * MIB))

grow_write /srv/grow-nvme
nvmet_resize "$NQN" 1 128M
expect_grown vol-grow-nvme "$nvme" /srv/grow-nvme $((128 * MIB))

unassign "$iscsi"
unassign "$nvme"
wait_volume vol-grow-iscsi gone 60
wait_volume vol-grow-nvme gone 60
tether_down
nvmet_cleanup
lio_clear
losetup -d "$loop"
