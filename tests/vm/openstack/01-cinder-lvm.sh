# shellcheck shell=bash disable=SC2154
# A Cinder LVM volume (LIO target through Cinder's lioadm helper, CHAP credentials that Cinder
# made) attached by `tether ctl volume attach --mkfs --mount --grow`: Cinder `in-use`, the list
# agrees, data written through the mount reads back; extended in Cinder while attached: the
# device and the mounted ext4 grow online, the data still reads back; detached: Cinder `available` with no attachment,
# no iSCSI session or node record, no LIO target left, the data is in Cinder's logical volume,
# and Cinder's CHAP password is in no tether log, report, ctl output or world-readable file.
# vm-timeout: 1800
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"
source "$SHARE/vm/cinder-tether.sh"
source "$SHARE/vm/grow.sh"
openstack_up
MNT=/mnt/cinder-lvm
id=$(cinder_create tether-lvm 1 lvm)
iqn=iqn.2010-10.org.openstack:volume-$id

vol_attach "$NODE" tether-lvm --mount "$MNT" --fstype ext4 --mkfs --grow --timeout 600
expect_vol_rc "ctl volume attach (by name) --mkfs --mount" 0
expect_cinder "$id" in-use "Cinder shows the volume in-use after the attach"
mapfile -t atts < <(cinder_attachments "$id")
expect_eq "Cinder has one attachment" 1 "${#atts[@]}"
att=${atts[0]:-none}
expect_eq "list: the attachment id is Cinder's" "$att" "$(vol_get "$id" attachment_id)"
expect_eq "list: the name" tether-lvm "$(vol_get "$id" volume_name)"
expect_eq "list: agent_state" mounted "$(vol_get "$id" agent_state)"
expect_eq "list: cinder_status" in-use "$(vol_get "$id" cinder_status)"
expect_eq "list: cinder_reachable" true "$(vol_get "$id" cinder_reachable)"
expect_eq "one iSCSI session, to Cinder's target" 1 "$(sessions_to "$iqn")"
expect_eq "mounted at $MNT" ext4 "$(findmnt -n -o FSTYPE "$MNT" || true)"

# Cinder's own CHAP credentials, from the attachment's connection_info.
ci=$(cinder_api GET "attachments/$att" | jq -c '.attachment.connection_info')
expect_eq "Cinder's connection_info uses CHAP" CHAP "$(jq -r .auth_method <<<"$ci")"
chap_pass=$(jq -r '.auth_password // empty' <<<"$ci")
expect_eq "Cinder's CHAP password has 16 characters" 16 "${#chap_pass}"

write_through "$MNT"

# Cinder extends the attached volume (os-extend of an in-use volume, microversion 3.42 on):
# the conductor follows Cinder's size (read at most every 30 s), the agent rescans the LUN and
# grows the mounted file system.
fs_before=$(fs_bytes "$MNT")
t0=$(now_ms)
if cinder_api POST "volumes/$id/action" '{"os-extend": {"new_size": 2}}' >/dev/null; then
    cinder_wait_status "$id" in-use 300 && pass "Cinder shows the volume in-use after the extend"
    expect_eq "Cinder's size after the extend (GiB)" 2 \
        "$(cinder_api GET "volumes/$id" | jq -r .volume.size)"
    wait_report_match "$id" '"size_bytes": 2147483648' 180
    note cinder_extend_to_grown_ms $(($(now_ms) - t0))
    expect_match "still mounted after the extend" '"state": "mounted"' "$REPORT"
    expect_match "no error after the extend" '"error": null' "$REPORT"
    expect_eq "the device is 2 GiB" 2147483648 "$(blockdev --getsize64 "$(findmnt -n -o SOURCE "$MNT")")"
    fs_after=$(fs_bytes "$MNT")
    expect_true "the file system grew online ($fs_before -> $fs_after bytes)" \
        test "$fs_after" -gt $((fs_before + (1 << 29)))
    sync
    echo 3 >/proc/sys/vm/drop_caches
    expect_eq "data written before the extend reads back" "$DATA_SHA" \
        "$(sha256sum <"$MNT/data.bin" | cut -d' ' -f1)"
else
    _cinder_fail "Cinder extends the attached volume" "HTTP 202" \
        "HTTP $(cinder_last_status): $(cat "$WORK/cinder-api.body")"
fi

vol_detach "$NODE" "$id" --timeout 600
expect_vol_rc "ctl volume detach" 0
expect_cinder "$id" available "Cinder shows the volume available after the detach"
expect_no_attachment "$id"
expect_eq "not mounted any more" "" "$(findmnt -n "$MNT" || true)"
expect_eq "no iSCSI session or node record left" "" "$(iscsi_left)"
expect_eq "Cinder removed its LIO target" no "$([[ -e $CONFIGFS_ISCSI/$iqn ]] && echo yes || echo no)"

# The data is in Cinder's logical volume.
expect_data_on "/dev/$CINDER_VG/volume-$id" "the data is in Cinder's logical volume"

no_leak "$chap_pass"
# The volume stays (available): deleting an LVM volume costs minutes of rootwrap under TCG.
