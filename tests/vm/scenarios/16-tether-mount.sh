# shellcheck shell=bash disable=SC2154
# tether: extra.mount with ext4 and mkfs -> formatted once, mounted; data survives
# unassign and reassign (no reformat). A mount point reached through a link is refused by the
# node's own rules before anything is formatted.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.test.tether:fs
lio_target "$IQN"
lio_lun "$IQN" fs0 64M
lio_lun "$IQN" fs1 16M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
tether_up

target=$(assign vol-fs --portal "$PORTAL" --iqn "$IQN" --lun 0 --mount /srv/vol-fs --fstype ext4 --mkfs)
wait_volume vol-fs mounted 90
expect_eq "reported mountpoint" /srv/vol-fs "$(field mountpoint)"
expect_eq "mounted as ext4" ext4 "$(findmnt -n -o FSTYPE /srv/vol-fs)"
echo "kept across reassignment" >/srv/vol-fs/proof
uuid_before=$(blkid -o value -s UUID "$(field device_path)")
sync

unassign "$target"
wait_volume vol-fs gone 60
expect_eq "unmounted on unassign" "" "$(findmnt -n -o TARGET /srv/vol-fs || true)"
expect_eq "logged out on unassign" 0 "$(sessions_to "$IQN")"

assign vol-fs --portal "$PORTAL" --iqn "$IQN" --lun 0 --mount /srv/vol-fs --fstype ext4 --mkfs >/dev/null
wait_volume vol-fs mounted 90
expect_eq "the data survived (no reformat)" "kept across reassignment" "$(cat /srv/vol-fs/proof 2>&1)"
expect_eq "same filesystem UUID" "$uuid_before" "$(blkid -o value -s UUID "$(field device_path)")"

# A link on the way to the mount point: refused, nothing formatted, nothing made under /etc.
ln -sfn /etc /srv/link-to-etc
linked=$(assign vol-link --portal "$PORTAL" --iqn "$IQN" --lun 1 --mount /srv/link-to-etc/vol \
    --fstype ext4 --mkfs)
wait_volume vol-link failed 90
expect_match "refused by the node's mount rules" '"kind": "mount_refused"' "$REPORT"
expect_eq "nothing made through the link" "" "$(ls -d /etc/vol 2>/dev/null || true)"
expect_eq "the refused LUN was not formatted" "" \
    "$(blkid -p -o value -s TYPE "$LIO_BACKING_DIR/fs1.img" 2>/dev/null || true)"
unassign "$linked"
wait_volume vol-link gone 60
rm -f /srv/link-to-etc
tether_down
umount /srv/vol-fs 2>/dev/null || true
