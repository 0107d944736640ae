# shellcheck shell=bash disable=SC2154
# The fault matrix, Ceph RBD: the agent killed (SIGKILL, from a crash point) at each step of an
# attach (mapped, device seen, mkfs done, mounted, record written, report sent) and of a detach
# (unmounted, flushed, unmapped, record written), then started again: the image ends mapped
# exactly once and mounted once, or unmapped with no mount and no key file left. A mapping
# someone else made stays throughout.
# vm-timeout: 900
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/faults.sh"
ceph_up
ceph_pool volumes
ceph_image volumes fault 64M
ceph_image volumes by-hand 16M
key=$(ceph_user tether-faults "mon" "profile rbd" "osd" "profile rbd pool=volumes")
ceph_keyfile "$WORK/key" "$key"
foreign_dev=$(ceph_rbd map volumes/by-hand 2>/dev/null)
tether_up

ASSIGN="--rbd-name volumes/fault --mon $CEPH_MON --ceph-user tether-faults --ceph-key-file $WORK/key"
MOUNT=/srv/fault-rbd
ATTACHED_PARTS="mapping"
on_host() {
    local n=0 d
    for d in /sys/bus/rbd/devices/*; do
        [[ -e $d/name && $(cat "$d/name") == fault && $(cat "$d/pool") == volumes ]] && n=$((n + 1))
    done
    ((n == 1)) && echo mapping
    ((n > 1)) && echo "$n-mappings"
    return 0
}
reset_volume() {
    local dev
    dev=$(ceph_rbd map volumes/fault 2>/dev/null) || return 0
    dd if=/dev/zero of="$dev" bs=1M count=4 oflag=direct status=none
    ceph_rbd unmap "$dev" >/dev/null 2>&1
}

for point in rbd.mapped rbd.device_seen mount.mkfs_done mount.mounted agent.attach_recorded \
    agent.report_sent; do
    attach_cell "$point"
done
for point in mount.unmounted rbd.flushed rbd.unmapped agent.detach_recorded; do
    detach_cell "$point"
done
expect_true "the mapping someone else made is untouched" test -b "$foreign_dev"
ceph_rbd unmap "$foreign_dev" >/dev/null 2>&1 || true
tether_down
