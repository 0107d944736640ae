# shellcheck shell=bash disable=SC2154
# Capture real rbd CLI, sysfs and udev output for tether's RBD parser tests.
# Everything goes to $RESULT_DIR/fixtures/; `scripts/vm/capture-fixtures --rbd`
# copies it into tests/fixtures/rbd/. Checks only that the captures look
# sane (exit codes as expected, three mappings listed).
# vm-timeout: 480

source "$SHARE/vm/ceph.sh"

POOL=fixpool
NS=fixns
USER=fixture
DEAD_MON=127.0.0.1:6799
BOUND=10
FIX=$RESULT_DIR/fixtures
SYSFS=/sys/bus/rbd
mkdir -p "$FIX"
trap 'ceph_unmap_all || true' EXIT

# capture NAME CMD... : NAME.stdout, NAME.stderr and NAME.exit in $FIX;
# NAME.cmd is the command line with any key masked.
capture() {
    local name=$1 rc=0 t0
    shift
    t0=$(now_ms)
    "$@" >"$FIX/$name.stdout" 2>"$FIX/$name.stderr" || rc=$?
    printf '%s\n' "$rc" >"$FIX/$name.exit"
    printf '%s\n' "$*" | sed -E 's/secret=[^, ]+/secret=<key>/g' >"$FIX/$name.cmd"
    LAST_RC=$rc
    log "captured $name (exit $rc, $(($(now_ms) - t0)) ms)"
}
# sysfs_write FILE TEXT : one write(2) of TEXT to FILE; errors read
# "sysfs-write: line 1: printf: write error: <strerror>".
sysfs_write() { bash -c 'printf "%s" "$2" >"$1"' sysfs-write "$@"; }
mask_secret() { sed -E 's/secret=[^, ]+/secret=<key>/g'; }
map() { # NAME SPEC [OPTS...] : map with the CLI (no ceph.conf), capture as NAME
    local name=$1 spec=$2
    shift 2
    capture "$name" timeout 120 rbd device map "$@" --id "$USER" --keyfile "$keyfile" -m "$CEPH_MON" "$spec"
}

# Text dump of a sysfs subtree, like tests/vm/capture/capture-fixtures.sh:
# "d PATH", "l PATH -> TARGET", "f PATH = VALUE" (\n for newlines), write-only
# and unreadable files flagged; secret=... in values masked.
ATTR=""
read_attr() {
    ATTR=""
    { : <"$1"; } 2>/dev/null || return 1
    IFS= read -r -d '' -n 2048 ATTR <"$1" 2>/dev/null || true
}
sysfs_dump() {
    local root=$1 depth=$2 type mode p link v
    while IFS=$'\t' read -r type mode p link; do
        case $type in
            l) printf 'l %s -> %s\n' "$p" "$link" ;;
            d) printf 'd %s\n' "$p" ;;
            f)
                if (((8#$mode & 8#444) == 0)); then
                    printf 'f %s (write-only)\n' "$p"
                elif ! read_attr "$p"; then
                    printf 'f %s (unreadable)\n' "$p"
                elif v=$ATTR && [[ $v == *[![:print:][:space:]]* ]]; then
                    printf 'f %s (binary)\n' "$p"
                else
                    v=${v%$'\n'}
                    v=${v//$'\n'/\\n}
                    [[ $v == *secret=* ]] && v=$(mask_secret <<<"$v")
                    printf 'f %s = %s\n' "$p" "$v"
                fi
                ;;
        esac
    done < <(find "$root" -maxdepth "$depth" \( -name power -o -name mq -o -name iosched -o -name trace \
        -o -name integrity -o -name subsystem -o -name uevent \) -prune -o -printf '%y\t%m\t%p\t%l\n' \
        | LC_ALL=C sort -t$'\t' -k3,3)
}

# --- cluster: a pool with a namespace, three images, a snapshot, a user ----------------
ceph_up
ceph_pool "$POOL"
ceph_rbd namespace create "$POOL/$NS"
ceph_image "$POOL" vol0 64M
ceph_image "$POOL" vol1 32M
ceph_image "$POOL/$NS" vol2 16M
ceph_rbd snap create "$POOL/vol1@snap1" >/dev/null
key=$(ceph_user "$USER" mon 'profile rbd' osd "profile rbd pool=$POOL")
keyfile=$WORK/$USER.key
ceph_keyfile "$keyfile" "$key"
ceph_keyfile "$WORK/wrong.key" "$(ceph_gen_key)"

capture rbd-version rbd --version
capture rbd-device-list-none rbd device list
capture rbd-device-list-none-json rbd device list --format json
capture rbd-showmapped-none rbd showmapped

# --- three mappings (plain, snapshot, namespace), the first watched by udevadm monitor ---
stdbuf -oL udevadm monitor --udev --property --subsystem-match=block --subsystem-match=rbd \
    >"$FIX/udevadm-monitor-map.txt" 2>&1 &
mon=$!
for _ in $(seq 100); do grep -q 'UDEV' "$FIX/udevadm-monitor-map.txt" 2>/dev/null && break; sleep 0.05; done
map rbd-device-map "$POOL/vol0"
expect_eq "map exits 0" 0 "$LAST_RC"
wait_for_path "/dev/rbd/$POOL/vol0" 30
udevadm settle --timeout=30
sleep 0.5
kill "$mon"; wait "$mon" 2>/dev/null || true
map rbd-device-map-snap "$POOL/vol1@snap1"
expect_eq "map of a snapshot exits 0" 0 "$LAST_RC"
map rbd-device-map-namespace "$POOL/$NS/vol2"
expect_eq "map of an image in a namespace exits 0" 0 "$LAST_RC"
capture rbd-device-map-conf-devnull timeout 120 rbd -c /dev/null device map --id "$USER" --keyfile "$keyfile" \
    -m "$CEPH_MON" "$POOL/vol0" -o ro
expect_eq "a second, read-only mapping of vol0 exits 0" 0 "$LAST_RC"
udevadm settle --timeout=30

capture rbd-device-list rbd device list
capture rbd-device-list-json rbd device list --format json
capture rbd-device-list-json-pretty rbd device list --format json --pretty-format
capture rbd-showmapped rbd showmapped
expect_eq "four mappings listed" 4 "$(grep -c '/dev/rbd' "$FIX/rbd-device-list.stdout")"
capture udevadm-info-rbd0 udevadm info --query=all --name=/dev/rbd0
capture udevadm-info-rbd1-snap udevadm info --query=all --name=/dev/rbd1
capture udevadm-info-rbd2-namespace udevadm info --query=all --name=/dev/rbd2
find /dev/rbd \( -type l -printf 'l %p -> %l\n' \) -o -printf '%y %p\n' | LC_ALL=C sort -k2 >"$FIX/dev-rbd.txt"
capture lsblk lsblk -b -o NAME,KNAME,MAJ:MIN,SIZE,RO,TYPE,MOUNTPOINT

# sysfs: the bus, and every mapping (devices and their block devices).
{
    echo "# sysfs of 4 RBD mappings (kernel $(uname -r), ceph-common $(dpkg-query -W -f '${Version}' ceph-common)),"
    echo "# captured by tests/vm/capture/capture-rbd.sh. rbd0 = $POOL/vol0, rbd1 = $POOL/vol1@snap1,"
    echo "# rbd2 = $POOL/$NS/vol2, rbd3 = $POOL/vol0 read-only (-o ro); all mapped by the rbd CLI."
    echo "# Lines: 'd DIR', 'l LINK -> TARGET' (readlink), 'r LINK => PATH' (readlink -f),"
    printf '%s\n' "# 'f FILE = VALUE' (first 2 KiB; newline shown as \\n), 'f FILE (write-only|unreadable)'."
    echo "# Pruned: power, mq, iosched, trace, integrity, subsystem, uevent. secret=... masked."
    for l in "$SYSFS"/devices/* /sys/block/rbd*; do
        [[ -e $l ]] && printf 'r %s => %s\n' "$l" "$(readlink -f "$l")"
    done
    {
        sysfs_dump "$SYSFS" 1
        sysfs_dump "$SYSFS/devices" 1
        sysfs_dump /sys/devices/rbd 2
        for b in /sys/block/rbd*; do
            b=$(readlink -f "$b")
            sysfs_dump "$b" 1
            sysfs_dump "$b/queue" 1
        done
        sysfs_dump /sys/module/rbd/parameters 1
    } 2>"$WORK/sysfs.err" | LC_ALL=C sort -u | LC_ALL=C sort -s -t' ' -k2,2
} >"$FIX/sysfs-rbd-4maps.txt"

# --- unmap while mounted --------------------------------------------------------------------
mkfs.ext4 -q -F /dev/rbd0
mkdir -p "$WORK/mnt"
mount /dev/rbd0 "$WORK/mnt"
capture rbd-device-unmap-busy rbd device unmap /dev/rbd0
expect_eq "unmap while mounted exits 16" 16 "$LAST_RC"
capture sysfs-remove-busy sysfs_write "$SYSFS/remove_single_major" 0
expect_eq "remove_single_major while mounted fails" 1 "$LAST_RC"
umount "$WORK/mnt"
udevadm settle --timeout=30

# --- unmap, watched --------------------------------------------------------------------------------
capture rbd-device-unmap-by-spec rbd device unmap "$POOL/vol1@snap1"
capture rbd-device-unmap-by-spec-namespace rbd device unmap "$POOL/$NS/vol2"
capture rbd-device-unmap-ro rbd device unmap /dev/rbd3
udevadm settle --timeout=30
stdbuf -oL udevadm monitor --udev --property --subsystem-match=block --subsystem-match=rbd \
    >"$FIX/udevadm-monitor-unmap.txt" 2>&1 &
mon=$!
for _ in $(seq 100); do grep -q 'UDEV' "$FIX/udevadm-monitor-unmap.txt" 2>/dev/null && break; sleep 0.05; done
capture rbd-device-unmap rbd device unmap /dev/rbd0
expect_eq "unmap exits 0" 0 "$LAST_RC"
wait_for_gone "/dev/rbd/$POOL/vol0" 30
udevadm settle --timeout=30
sleep 0.5
kill "$mon"; wait "$mon" 2>/dev/null || true
capture rbd-device-unmap-not-mapped rbd device unmap "$POOL/vol0"
capture rbd-device-unmap-not-a-device rbd device unmap /dev/rbd7
capture rbd-device-list-after rbd device list

# --- map failures through the CLI ------------------------------------------------------------------
capture rbd-device-map-wrong-key timeout 120 rbd device map --id "$USER" --keyfile "$WORK/wrong.key" -m "$CEPH_MON" "$POOL/vol0"
expect_eq "wrong key exits 13" 13 "$LAST_RC"
capture rbd-device-map-unknown-user timeout 120 rbd device map --id nosuch --keyfile "$keyfile" -m "$CEPH_MON" "$POOL/vol0"
capture rbd-device-map-no-image timeout 120 rbd device map --id "$USER" --keyfile "$keyfile" -m "$CEPH_MON" "$POOL/nosuch"
capture rbd-device-map-no-pool timeout 120 rbd device map --id "$USER" --keyfile "$keyfile" -m "$CEPH_MON" nopool/vol0
capture rbd-device-map-dead-mon timeout 120 rbd device map --client_mount_timeout "$BOUND" -o "mount_timeout=$BOUND" \
    --id "$USER" --keyfile "$keyfile" -m "$DEAD_MON" "$POOL/vol0"
expect_eq "unreachable monitor exits 110" 110 "$LAST_RC"
capture rbd-device-map-dead-and-live-mon timeout 120 rbd device map --id "$USER" --keyfile "$keyfile" \
    -m "$DEAD_MON,$CEPH_MON" "$POOL/vol0"
expect_eq "dead+live monitors map" 0 "$LAST_RC"
udevadm settle --timeout=30
ceph_unmap_all

# --- sysfs add/remove -----------------------------------------------------------------------------
capture sysfs-add sysfs_write "$SYSFS/add_single_major" "$CEPH_MON name=$USER,secret=$key $POOL vol0 -"
expect_eq "sysfs add" 0 "$LAST_RC"
# Removing at once meets udev's first probe of the new device (EBUSY) on this VM.
capture sysfs-remove-right-after-add sysfs_write "$SYSFS/remove_single_major" 0
wait_for_path "/dev/rbd/$POOL/vol0" 30
udevadm settle --timeout=30
[[ -e $SYSFS/devices/0 ]] && capture sysfs-remove sysfs_write "$SYSFS/remove_single_major" 0
capture sysfs-add-namespace sysfs_write "$SYSFS/add_single_major" "$CEPH_MON name=$USER,secret=$key,_pool_ns=$NS $POOL vol2 -"
expect_eq "sysfs add in a namespace" 0 "$LAST_RC"
wait_for_path "/dev/rbd/$POOL/$NS/vol2" 30
udevadm settle --timeout=30
ceph_unmap_all
capture sysfs-add-v2 sysfs_write "$SYSFS/add_single_major" "$CEPH_MON_V2 name=$USER,secret=$key,ms_mode=crc $POOL vol0 -"
expect_eq "sysfs add over msgr v2" 0 "$LAST_RC"
wait_for_path "/dev/rbd/$POOL/vol0" 30
udevadm settle --timeout=30
ceph_unmap_all
capture sysfs-add-wrong-key sysfs_write "$SYSFS/add_single_major" "$CEPH_MON name=$USER,secret=$(ceph_gen_key) $POOL vol0 -"
capture sysfs-add-dead-mon sysfs_write "$SYSFS/add_single_major" "$DEAD_MON name=$USER,secret=$key,mount_timeout=$BOUND $POOL vol0 -"
capture sysfs-add-no-image sysfs_write "$SYSFS/add_single_major" "$CEPH_MON name=$USER,secret=$key $POOL nosuch -"
capture sysfs-add-no-pool sysfs_write "$SYSFS/add_single_major" "$CEPH_MON name=$USER,secret=$key nopool vol0 -"
capture sysfs-add-bad-option sysfs_write "$SYSFS/add_single_major" "$CEPH_MON name=$USER,secret=$key,bogus=1 $POOL vol0 -"
capture sysfs-add-too-few-fields sysfs_write "$SYSFS/add_single_major" "$CEPH_MON name=$USER,secret=$key $POOL"
capture sysfs-remove-no-device sysfs_write "$SYSFS/remove_single_major" 7
capture rbd-device-list-end rbd device list
expect_eq "no mappings at the end" "" "$(cat "$FIX/rbd-device-list-end.stdout")"

{
    echo "kernel: $(uname -r)"
    echo "ceph-common: $(dpkg-query -W -f '${Version}' ceph-common)"
    echo "ceph-mon/ceph-osd: $(dpkg-query -W -f '${Version}' ceph-mon) (one mon, one bluestore OSD, no mgr)"
    echo "udev: $(dpkg-query -W -f '${Version}' udev)"
    echo "cluster: fsid $CEPH_FSID, monitor v2:$CEPH_MON_V2 v1:$CEPH_MON; dead monitor address $DEAD_MON"
    echo "pool: $POOL (namespace $NS); images vol0 64 MiB, vol1 32 MiB (snapshot snap1), $NS/vol2 16 MiB"
    echo "user: client.$USER, caps mon 'profile rbd' osd 'profile rbd pool=$POOL'"
    echo "no /etc/ceph/ceph.conf in the guest"
} >"$FIX/versions.txt"
