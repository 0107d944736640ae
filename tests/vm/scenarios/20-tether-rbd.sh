# shellcheck shell=bash disable=SC2154
# tether and Ceph RBD: an image assigned -> mapped, /dev/rbd/<pool>/<image> reported, data round
# trip checked with `rbd export`; agent restart -> no second mapping; an iSCSI volume beside it;
# a wrong key -> failed with auth_failed, the others fine; a foreign mount -> detach_blocked, then
# detached after the unmount; unassign -> unmapped, device gone; an image mounted with grow,
# `rbd resize` and `ctl target resize` -> the new size reported and ext4 grown online, the data
# intact; the cephx key nowhere.
# vm-timeout: 600
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/grow.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:beside-rbd
lio_target "$IQN"
lio_lun "$IQN" beside0 16M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
ceph_up
ceph_pool volumes
ceph_image volumes vol-a 64M
ceph_image volumes vol-b 64M
ceph_image volumes vol-grow 64M
key=$(ceph_user tether-node "mon" "profile rbd" "osd" "profile rbd pool=volumes")
ceph_keyfile "$WORK/key" "$key"
ceph_gen_key >"$WORK/wrong.key"
chmod 600 "$WORK/wrong.key"
tether_up
mappings() { find /sys/bus/rbd/devices -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

rbd_a=$(assign vol-a --rbd-name volumes/vol-a --mon "$CEPH_MON" --ceph-user tether-node --ceph-key-file "$WORK/key")
assign vol-iscsi --portal "$PORTAL" --iqn "$IQN" --lun 0 >/dev/null
wrong=$(assign vol-wrong --rbd-name volumes/vol-b --mon "$CEPH_MON" --ceph-user tether-node --ceph-key-file "$WORK/wrong.key")
wait_volume vol-a attached 120
expect_eq "reported device path" /dev/rbd/volumes/vol-a "$(field device_path)"
expect_match "reported size" '"size_bytes": 67108864' "$REPORT"
dev=$(field device_path)
dd if=/dev/urandom of="$WORK/data" bs=1M count=2 status=none
dd if="$WORK/data" of="$dev" bs=1M oflag=direct conv=fsync status=none
expect_eq "data written through the mapping is in the image (rbd export)" \
    "$(sha256sum <"$WORK/data" | cut -d' ' -f1)" \
    "$(ceph_rbd export volumes/vol-a "$WORK/export.img" >/dev/null 2>&1; head -c 2097152 "$WORK/export.img" | sha256sum | cut -d' ' -f1)"
wait_volume vol-iscsi attached 60
pass "an iSCSI and an RBD volume attached side by side"
wait_volume vol-wrong failed 90
expect_match "a wrong key fails with an authentication kind" '"kind": "auth_failed"' "$REPORT"
expect_eq "one mapping (the wrong key mapped nothing)" 1 "$(mappings)"

tether_stop_agent
tether_start_agent
sleep 3
wait_volume vol-a attached 30
expect_eq "still one mapping after the agent restarted" 1 "$(mappings)"
expect_eq "same device after the restart" /dev/rbd/volumes/vol-a "$(field device_path)"

mkfs.ext4 -q "$dev"
mkdir -p /mnt/admin-rbd
mount "$dev" /mnt/admin-rbd
unassign "$rbd_a"
wait_volume vol-a detach_blocked 60
expect_match "the report names the holder" 'mounted at /mnt/admin-rbd' "$REPORT"
expect_eq "still mapped while blocked" 1 "$(mappings)"
umount /mnt/admin-rbd
wait_volume vol-a gone 60
expect_eq "unmapped after the unmount" 0 "$(mappings)"
expect_eq "device gone" no "$([[ -e /dev/rbd/volumes/vol-a ]] && echo yes || echo no)"

# An unreachable cluster: a clear failure after the bounded wait, then retries; no hang.
t0=$(now_ms)
far=$(assign vol-far --rbd-name volumes/vol-b --mon 127.0.0.1:6799 --ceph-user tether-node --ceph-key-file "$WORK/key")
wait_volume vol-far failed 90
expect_match "an unreachable monitor fails as cluster_unreachable" '"kind": "cluster_unreachable"' "$REPORT"
note unreachable_cluster_failed_after_ms $(($(now_ms) - t0))
unassign "$far"
wait_volume vol-far gone 60

# Without the rbd CLI (as in a ramdisk) the agent maps through /sys/bus/rbd/add_single_major.
tether_stop_agent
mount --bind /dev/null /usr/bin/rbd
tether_start_agent
b=$(assign vol-b --rbd-name volumes/vol-b --mon "$CEPH_MON" --ceph-user tether-node --ceph-key-file "$WORK/key")
wait_volume vol-b attached 60
expect_eq "mapped through sysfs: reported device" /dev/rbd/volumes/vol-b "$(field device_path)"
expect_eq "the mapping's config_info (which holds the key) is root-only" 400 \
    "$(stat -c %a /sys/bus/rbd/devices/*/config_info | head -n1)"
unassign "$b"
wait_volume vol-b gone 60
expect_eq "unmapped through sysfs" 0 "$(mappings)"
tether_stop_agent
umount /usr/bin/rbd
tether_start_agent

# An image that grows while mounted: the kernel learns the size by itself, the agent grows ext4.
grow=$(assign vol-grow --rbd-name volumes/vol-grow --mon "$CEPH_MON" --ceph-user tether-node \
    --ceph-key-file "$WORK/key" --mount /srv/grow-rbd --mkfs --grow)
wait_volume vol-grow mounted 90
grow_write /srv/grow-rbd
ceph_rbd resize --size 128M volumes/vol-grow >/dev/null 2>&1
expect_grown vol-grow "$grow" /srv/grow-rbd $((128 << 20))
unassign "$grow"
wait_volume vol-grow gone 60

# The key: in no log, report, state file, world-readable file, or key file left behind (a key
# file lives only while a map runs: stop the failing volume's retries first).
unassign "$wrong"
wait_volume vol-wrong gone 60
no_secret_leak "$key"
where=$(grep -rlF -- "$key" /run /tmp /var/lib/tether /etc 2>/dev/null | grep -v "^$WORK/key$" | grep -v "^/var/lib/tether-ceph/" || true)
expect_eq "no file outside the test's own keeps the key" "" "$where"
expect_eq "no key file left in the agent's runtime directory" "" "$(find /run/tether -type f 2>/dev/null)"
tether_down
