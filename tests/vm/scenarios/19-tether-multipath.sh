# shellcheck shell=bash disable=SC2154
# tether: a volume with two paths (two portals of one target) under multipathd -> both paths
# logged in at once, the dm map reported as the device with every path listed, data through
# the map; a mount on the map blocks the detach; unassign flushes the map, logs out both paths
# and takes back the WWID it registered.
# vm-timeout: 300
source "$SHARE/vm/tether.sh"
IQN=iqn.2003-01.test.tether:multi
lio_target "$IQN" 127.0.0.1 3260
lio_portal "$IQN" 127.0.0.2 3260
lio_lun "$IQN" multi0 64M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
modprobe -a dm_multipath dm_service_time
multipathd
for ((i = 0; i < 50; i++)); do multipathd show daemon >/dev/null 2>&1 && break; sleep 0.1; done
expect_rc "multipathd answers" 0 multipathd show daemon
registered_wwids() { cat /etc/multipath/wwids 2>/dev/null | grep -c '^/' || true; }
wwids_before=$(registered_wwids)
tether_up

cat >"$WORK/multi.json" <<JSON
{"target_portals": ["127.0.0.1:3260", "127.0.0.2:3260"],
 "target_iqns": ["$IQN", "$IQN"], "target_luns": [0, 0]}
JSON
target=$(assign vol-multi --type iscsi --properties-file "$WORK/multi.json")
wait_volume vol-multi attached 90
dev=$(field device_path)
expect_match "the map is reported as the device" '^/dev/mapper/3' "$dev"
expect_eq "two sessions, one per portal" 2 "$(sessions_to "$IQN")"
expect_match "both paths are reported" "ip-127.0.0.1:3260-iscsi-$IQN-lun-0\".*ip-127.0.0.2:3260-iscsi-$IQN-lun-0" \
    "$(tr -d '\n' <<<"$REPORT")"
map=${dev#/dev/mapper/}
expect_eq "multipathd has the map with two active paths" 2 \
    "$(multipath -ll "$map" 2>/dev/null | grep -c 'active ready running')"
roundtrip "$dev" "$LIO_BACKING_DIR/multi0.img"
expect_eq "the agent registered the WWID" 1 "$(grep -c "^/$map/\$" /etc/multipath/wwids)"

# In use through the map: the detach waits for the mount to go.
mkfs.ext4 -q "$dev"
mkdir -p /mnt/multi
mount "$dev" /mnt/multi
unassign "$target"
wait_volume vol-multi detach_blocked 60
expect_match "the report names the holder" 'mounted at /mnt/multi' "$REPORT"
expect_eq "both paths still logged in while blocked" 2 "$(sessions_to "$IQN")"
umount /mnt/multi
wait_volume vol-multi gone 60
expect_eq "map flushed" "" "$(multipath -ll "$map" 2>/dev/null)"
expect_eq "no dm device left" "" "$(ls /sys/block | grep '^dm-' || true)"
expect_eq "both paths logged out" 0 "$(sessions_to "$IQN")"
expect_eq "node records deleted" "no no" \
    "$(has_record "$IQN" 127.0.0.1:3260) $(has_record "$IQN" 127.0.0.2:3260)"
expect_eq "the WWID the agent registered is forgotten" "$wwids_before" \
    "$(registered_wwids)"
tether_down
