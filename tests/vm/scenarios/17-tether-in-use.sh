# shellcheck shell=bash disable=SC2154
# tether: a volume in use by a mount the agent did not make -> unassign leaves it attached in
# detach_blocked naming the holder; after the unmount it detaches by itself.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:busy
lio_target "$IQN"
lio_lun "$IQN" busy0 64M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
tether_up

target=$(assign vol-busy --portal "$PORTAL" --iqn "$IQN" --lun 0)
wait_volume vol-busy attached 60
dev=$(field device_path)
mkfs.ext4 -q "$dev"
mkdir -p /mnt/admin
mount "$dev" /mnt/admin
unassign "$target"
wait_volume vol-busy detach_blocked 60
expect_match "the report names the holder" 'mounted at /mnt/admin' "$REPORT"
expect_eq "still logged in while blocked" 1 "$(sessions_to "$IQN")"
umount /mnt/admin
wait_volume vol-busy gone 30
expect_eq "detached after the unmount" 0 "$(sessions_to "$IQN")"
tether_down
