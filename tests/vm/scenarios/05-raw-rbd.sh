# shellcheck shell=bash disable=SC2154
# Raw kernel RBD against the one-node Ceph in the guest (tests/vm/ceph.sh), no
# tether: a pool, an image and a user restricted to the pool; map with the
# rbd CLI (keyfile, no ceph.conf), udev link, sysfs attributes, data round
# trip, unmap; msgr v2; map and unmap through /sys/bus/rbd without the CLI;
# unmap while mounted (EBUSY), a wrong key, an unreachable monitor, and a
# dead monitor listed next to a live one.
# vm-timeout: 480

source "$SHARE/vm/ceph.sh"

POOL=tether-raw
IMG=vol0
SIZE=67108864
USER=raw-node
DEAD_MON=127.0.0.1:6799
# Bounds for the failure cases: the kernel's mount_timeout (default 60 s) and
# the rbd CLI's client_mount_timeout (default 300 s; the CLI authenticates in
# user space before it asks the kernel to map).
BOUND=10
LINK=/dev/rbd/$POOL/$IMG
SYSFS=/sys/bus/rbd

trap 'ceph_unmap_all || true' EXIT

ms_since() { printf '%d\n' $(($(now_ms) - $1)); }
# Mappings by id, sorted.
rbd_ids() {
    local d
    for d in "$SYSFS"/devices/*; do
        if [[ -e $d ]]; then printf '%s\n' "${d##*/}"; fi
    done | sort -n
}
# The new id in the second list of ids (one per line) that is not in the first.
new_id() { comm -13 <(printf '%s\n' "$1" | sort) <(printf '%s\n' "$2" | sort) | head -n1; }
# sysfs writes take their text from a variable so that the key never appears
# in a command line that the checks or the log record.
ADD_LINE=""
sysfs_add() { printf '%s' "$ADD_LINE" >"$SYSFS/add_single_major"; }
sysfs_remove() { printf '%s' "$1" >"$SYSFS/remove_single_major"; }
mask_secret() { sed -E 's/secret=[^, ]+/secret=<key>/g' <<<"$1"; }
attr() { cat "$SYSFS/devices/$1/$2"; }

# --- cluster, pool, image, user ---------------------------------------------------------
t0=$(now_ms)
ceph_up
note ceph_up_ms "$(ms_since "$t0")${CEPH_UP_MS:+ (cluster created: ${CEPH_UP_MS} ms)}"
t0=$(now_ms)
ceph_pool "$POOL"
note pool_writable_ms "$(ms_since "$t0")"
ceph_image "$POOL" "$IMG" 64M
key=$(ceph_user "$USER" mon 'profile rbd' osd "profile rbd pool=$POOL")
expect_match "ceph_user prints only a cephx key" '^AQ[A-Za-z0-9+/]{36}==$' "$key"
keyfile=$WORK/$USER.key
ceph_keyfile "$keyfile" "$key"
expect_eq "keyfile mode" 600 "$(stat -c %a "$keyfile")"
expect_eq "the node has no /etc/ceph/ceph.conf" no "$([[ -e /etc/ceph/ceph.conf ]] && echo yes || echo no)"

# --- map with the rbd CLI, no ceph.conf -------------------------------------------------
t0=$(now_ms)
expect_rc "rbd device map (keyfile, -m $CEPH_MON, no ceph.conf)" 0 \
    timeout 120 rbd device map --id "$USER" --keyfile "$keyfile" -m "$CEPH_MON" "$POOL/$IMG"
note map_ms "$(ms_since "$t0")"
dev=$LAST_OUT
expect_match "map prints the device" '^/dev/rbd[0-9]+$' "$dev"
expect_match "without any ceph.conf rbd still warns on stderr" 'did not load config file' "$LAST_ERR"
wait_for_path "$LINK" 30
note map_to_link_ms "$(ms_since "$t0")"
expect_eq "$LINK points at the device" "$dev" "$(readlink -f "$LINK")"
id=${dev#/dev/rbd}
expect_eq "sysfs pool" "$POOL" "$(attr "$id" pool)"
expect_eq "sysfs name" "$IMG" "$(attr "$id" name)"
expect_eq "sysfs pool_ns (none)" "" "$(attr "$id" pool_ns)"
expect_eq "sysfs size" "$SIZE" "$(attr "$id" size)"
expect_eq "sysfs current_snap (head)" "-" "$(attr "$id" current_snap)"
expect_eq "sysfs cluster_fsid" "$CEPH_FSID" "$(attr "$id" cluster_fsid)"
# The CLI hands the key to the kernel keyring and passes key=, not secret=.
expect_eq "config_info of a CLI mapping" "$CEPH_MON name=$USER,key=client.$USER $POOL $IMG -" "$(attr "$id" config_info)"
expect_eq "block device size" "$SIZE" "$(blockdev --getsize64 "$dev")"

expect_rc "rbd device list --format json (-c /dev/null)" 0 rbd -c /dev/null device list --format json
expect_eq "device list json" "[{\"id\":\"$id\",\"pool\":\"$POOL\",\"namespace\":\"\",\"name\":\"$IMG\",\"snap\":\"-\",\"device\":\"$dev\"}]" "$LAST_OUT"
expect_eq "-c /dev/null silences the config warnings" "" "$LAST_ERR"

# Data: write through the device, read it back, and read it from the cluster.
dd if=/dev/urandom of="$WORK/data" bs=1M count=4 status=none
want=$(sha256sum <"$WORK/data" | cut -d' ' -f1)
dd if="$WORK/data" of="$dev" bs=1M oflag=direct conv=fsync status=none
dd if="$dev" of="$WORK/back" bs=1M count=4 iflag=direct status=none
expect_eq "data read back through the device" "$want" "$(sha256sum <"$WORK/back" | cut -d' ' -f1)"
# rbd export of the whole image = our 4 MiB followed by 60 MiB of zeros.
want_img=$({ cat "$WORK/data"; head -c $((SIZE - 4194304)) /dev/zero; } | sha256sum | cut -d' ' -f1)
expect_eq "rbd export sees the data" "$want_img" \
    "$(ceph_rbd export "$POOL/$IMG" - | sha256sum | cut -d' ' -f1)"

# udevd holds block devices open while it handles their events (EBUSY for a
# remove meanwhile): settle first.
udevadm settle --timeout=30
t0=$(now_ms)
expect_rc "rbd device unmap" 0 rbd -c /dev/null device unmap "$dev"
wait_for_gone "$LINK" 30
note unmap_to_gone_ms "$(ms_since "$t0")"
expect_eq "sysfs device gone" no "$([[ -e $SYSFS/devices/$id ]] && echo yes || echo no)"
expect_eq "no mappings" "" "$(rbd_ids)"

# --- msgr v2 ----------------------------------------------------------------------------------
dmesg_n=$(dmesg | wc -l)
expect_rc "rbd device map -o ms_mode=crc -m $CEPH_MON_V2" 0 \
    timeout 120 rbd -c /dev/null device map -o ms_mode=crc --id "$USER" --keyfile "$keyfile" -m "$CEPH_MON_V2" "$POOL/$IMG"
dev=$LAST_OUT
wait_for_path "$LINK" 30
expect_match "kernel session over msgr v2" "libceph: mon0 \\(2\\)$CEPH_MON_V2 session established" \
    "$(dmesg | tail -n +"$((dmesg_n + 1))")"
expect_match "config_info carries ms_mode" 'ms_mode=crc' "$(attr "${dev#/dev/rbd}" config_info)"
udevadm settle --timeout=30
expect_rc "unmap (v2 mapping)" 0 rbd -c /dev/null device unmap "$dev"
wait_for_gone "$LINK" 30

# --- the kernel's sysfs interface, no CLI ---------------------------------------------------
modprobe rbd
expect_eq "rbd single_major" Y "$(cat /sys/module/rbd/parameters/single_major)"
before=$(rbd_ids)
ADD_LINE="$CEPH_MON name=$USER,secret=$key $POOL $IMG -"
t0=$(now_ms)
expect_rc "write '<mon> name=<user>,secret=<key> <pool> <image> -' to add_single_major" 0 sysfs_add
note sysfs_add_ms "$(ms_since "$t0")"
id=$(new_id "$before" "$(rbd_ids)")
expect_match "a new device id" '^[0-9]+$' "$id"
wait_for_path "$LINK" 30
note sysfs_add_to_link_ms "$(ms_since "$t0")"
expect_eq "link of the sysfs mapping" "/dev/rbd$id" "$(readlink -f "$LINK")"
expect_eq "sysfs mapping: pool/name/snap" "$POOL $IMG -" "$(attr "$id" pool) $(attr "$id" name) $(attr "$id" current_snap)"
# config_info (mode 0400) holds the secret in plain text: never dump it.
expect_eq "config_info (secret masked here)" "$CEPH_MON name=$USER,secret=<key> $POOL $IMG -" \
    "$(mask_secret "$(attr "$id" config_info)")"
dd if="/dev/rbd$id" of="$WORK/back2" bs=1M count=4 iflag=direct status=none
expect_eq "data read through the sysfs mapping" "$want" "$(sha256sum <"$WORK/back2" | cut -d' ' -f1)"
udevadm settle --timeout=30
t0=$(now_ms)
expect_rc "write the id to remove_single_major" 0 sysfs_remove "$id"
wait_for_gone "$LINK" 30
note sysfs_remove_to_gone_ms "$(ms_since "$t0")"
expect_eq "no mappings after sysfs remove" "" "$(rbd_ids)"

# The snapshot field is optional.
ADD_LINE="$CEPH_MON name=$USER,secret=$key $POOL $IMG"
expect_rc "add_single_major without the snapshot field" 0 sysfs_add
id=$(rbd_ids | head -n1)
wait_for_path "$LINK" 30
expect_eq "without the snapshot field: head" "-" "$(attr "$id" current_snap)"
udevadm settle --timeout=30
expect_rc "remove it" 0 sysfs_remove "$id"
wait_for_gone "$LINK" 30

# --- unmap while mounted: EBUSY -------------------------------------------------------------
expect_rc "map for the mount test" 0 \
    timeout 120 rbd -c /dev/null device map --id "$USER" --keyfile "$keyfile" -m "$CEPH_MON" "$POOL/$IMG"
dev=$LAST_OUT id=${dev#/dev/rbd}
wait_for_path "$LINK" 30
mkfs.ext4 -q -F "$dev"
mkdir -p "$WORK/mnt"
mount "$dev" "$WORK/mnt"
expect_rc "rbd device unmap while mounted exits 16" 16 rbd -c /dev/null device unmap "$dev"
expect_eq "unmap while mounted: stderr" $'rbd: sysfs write failed\nrbd: unmap failed: (16) Device or resource busy' "$LAST_ERR"
note unmap_busy "exit $LAST_RC: ${LAST_ERR//$'\n'/ | }"
expect_rc "remove_single_major while mounted fails" 1 sysfs_remove "$id"
expect_match "remove_single_major while mounted: EBUSY" 'write error: Device or resource busy$' "$LAST_ERR"
expect_eq "still mapped and mounted" "$dev" "$(findmnt -rn -o SOURCE "$WORK/mnt")"
umount "$WORK/mnt"
udevadm settle --timeout=30
expect_rc "unmap after umount" 0 rbd -c /dev/null device unmap "$dev"
wait_for_gone "$LINK" 30

# --- wrong key ------------------------------------------------------------------------------------
ceph_keyfile "$WORK/wrong.key" "$(ceph_gen_key)"
t0=$(now_ms)
expect_rc "rbd device map with a wrong key exits 13" 13 \
    timeout 120 rbd -c /dev/null device map --id "$USER" --keyfile "$WORK/wrong.key" -m "$CEPH_MON" "$POOL/$IMG"
ms=$(ms_since "$t0")
expect_eq "wrong key: stderr" "rbd: couldn't connect to the cluster!" "$LAST_ERR"
expect_true "wrong key fails fast (${ms} ms)" test "$ms" -lt 30000
note map_wrong_key "exit $LAST_RC in $ms ms: $LAST_ERR"
dmesg_n=$(dmesg | wc -l)
ADD_LINE="$CEPH_MON name=$USER,secret=$(ceph_gen_key) $POOL $IMG -"
t0=$(now_ms)
expect_rc "add_single_major with a wrong key fails" 1 sysfs_add
ms=$(ms_since "$t0")
expect_match "add_single_major with a wrong key: EACCES" 'write error: Permission denied$' "$LAST_ERR"
expect_true "sysfs wrong key fails fast (${ms} ms)" test "$ms" -lt 30000
expect_match "kernel logs the auth failure" "libceph: auth protocol 'cephx' mauth authentication failed: -13" \
    "$(dmesg | tail -n +"$((dmesg_n + 1))")"
note sysfs_wrong_key "write error EACCES in $ms ms"
expect_eq "no mappings after the wrong key" "" "$(rbd_ids)"

# --- unreachable monitor --------------------------------------------------------------------
t0=$(now_ms)
expect_rc "rbd device map with an unreachable monitor exits 110" 110 \
    timeout 120 rbd -c /dev/null device map --client_mount_timeout "$BOUND" -o "mount_timeout=$BOUND" \
    --id "$USER" --keyfile "$keyfile" -m "$DEAD_MON" "$POOL/$IMG"
ms=$(ms_since "$t0")
expect_line "unreachable monitor: stderr" "rbd: couldn't connect to the cluster!" "$LAST_ERR"
expect_match "unreachable monitor: the CLI's own timeout" "monclient\\(hunting\\): authenticate timed out after $BOUND" "$LAST_ERR"
expect_true "unreachable monitor bounded by client_mount_timeout=$BOUND (${ms} ms)" test "$ms" -lt $(((BOUND + 20) * 1000))
note map_dead_mon "exit $LAST_RC in $ms ms (--client_mount_timeout $BOUND)"
ADD_LINE="$DEAD_MON name=$USER,secret=$key,mount_timeout=$BOUND $POOL $IMG -"
t0=$(now_ms)
expect_rc "add_single_major with an unreachable monitor fails" 1 sysfs_add
ms=$(ms_since "$t0")
expect_match "add_single_major with an unreachable monitor: ETIMEDOUT" 'write error: Connection timed out$' "$LAST_ERR"
expect_true "bounded by mount_timeout=$BOUND (${ms} ms)" test "$ms" -ge $((BOUND * 1000 - 500)) -a "$ms" -lt $(((BOUND + 20) * 1000))
note sysfs_dead_mon "write error ETIMEDOUT in $ms ms (mount_timeout=$BOUND)"
expect_eq "no mappings after the unreachable monitor" "" "$(rbd_ids)"

# --- a dead and a live monitor ----------------------------------------------------------------
t0=$(now_ms)
expect_rc "rbd device map -m $DEAD_MON,$CEPH_MON" 0 \
    timeout 120 rbd -c /dev/null device map --client_mount_timeout 30 -o mount_timeout=30 \
    --id "$USER" --keyfile "$keyfile" -m "$DEAD_MON,$CEPH_MON" "$POOL/$IMG"
note map_dead_and_live_mon_ms "$(ms_since "$t0")"
dev=$LAST_OUT
wait_for_path "$LINK" 30
udevadm settle --timeout=30
expect_rc "unmap (dead+live)" 0 rbd -c /dev/null device unmap "$dev"
wait_for_gone "$LINK" 30
ADD_LINE="$DEAD_MON,$CEPH_MON name=$USER,secret=$key,mount_timeout=30 $POOL $IMG -"
t0=$(now_ms)
expect_rc "add_single_major with a dead and a live monitor" 0 sysfs_add
note sysfs_dead_and_live_mon_ms "$(ms_since "$t0")"
id=$(rbd_ids | head -n1)
wait_for_path "$LINK" 30
udevadm settle --timeout=30
expect_rc "remove (dead+live)" 0 sysfs_remove "$id"
wait_for_gone "$LINK" 30

expect_eq "no mappings at the end" "" "$(rbd_ids)"
