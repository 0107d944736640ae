# shellcheck shell=bash disable=SC2034 # the variables are for the scenarios
# Helpers for the target side of the ramdisk scenarios (tests/vm/ramdisk/*.sh, run by
# scripts/vm/run-ramdisk). This guest has a NIC on a link to the node guest, which the host
# boots from the initramfs built here once `boot_node` asks for it. Sourced after lib.sh.

LINK_MAC=52:54:00:00:09:01
LINK_IP=10.0.9.1
NODE_MAC=52:54:00:00:09:02
NODE_IP=10.0.9.2
NODE_INITIATOR=iqn.2024-01.test.tether:ramdisk-node
RD_NODE_UUID=3c1d6f0e-9a2b-4c5d-8e7f-0a1b2c3d4e5f
RD_IQN=iqn.2003-01.test.tether:ramdisk
RD_PORTAL=$LINK_IP:3260
RD_VOLUME=vol-ramdisk
RD_NODE=ramdisk-node
RD=$SHARE/ramdisk
INITRAMFS=$RD/initramfs.img
# The systemd initramfs of 40-dracut and 42-dracut-handover (one build serves both): the root
# disk's modules for the handover's installed root, and its test-only pre-pivot hook.
RD_SYSTEMD_MODULES="systemd systemd-initrd dracut-systemd base udev-rules rootfs-block"
RD_SYSTEMD_ARGS=(--include "$SHARE/vm/ramdisk-pre-pivot.sh" /lib/dracut/hooks/pre-pivot/90-tether-test.sh)
# What tether adds at most to an initramfs by default (MiB, uncompressed; BENCHMARKS.md).
RD_TETHER_MAX_MIB=15
RD_TLS_KEEP=/var/tmp/tether-ramdisk-tls
NODE_T0=""
mkdir -p "$RD"

# link_up : address $LINK_IP/24 on the NIC with $LINK_MAC (udev may have renamed it), whose
# name is left in $LINK_DEV.
link_up() {
    local dev="" i
    modprobe virtio_net
    udevadm settle --timeout=30 || true
    for ((i = 0; i < 100; i++)); do
        dev=$(ip -o link | awk -v mac="$LINK_MAC" 'index($0, mac) { sub(/:$/, "", $2); print $2; exit }')
        [[ -n $dev ]] && break
        sleep 0.1
    done
    if [[ -z $dev ]]; then
        fail "the NIC on the link" "an interface with MAC $LINK_MAC" "$(ip -o link)"
        return 1
    fi
    ip addr replace "$LINK_IP/24" dev "$dev"
    ip link set "$dev" up
    LINK_DEV=$dev
    log "link: $dev $LINK_IP/24"
}

# ramdisk_prepare : the link up, the package installed (the module takes the binary and the
# unit from it), tether.sh loaded for the package's binary; a throwaway CA and the conductor's
# certificate for the link address, with the drop-in that names the CA for the agent, before
# dracut runs: the module takes the CA named by conductor_ca_file into the initramfs.
ramdisk_prepare() {
    link_up
    expect_rc "dpkg -i of the package" 0 dpkg -i "$SHARE/deb/tether.deb"
    ((LAST_RC == 0)) || return 1
    TETHER=/usr/bin/tether
    source "$SHARE/vm/tether.sh"
    # The node reaches the conductor over the link; ctl here goes the same way, so that the
    # certificate's one address serves both.
    TETHER_URL=https://$LINK_IP:6387
    tls_setup "IP:$LINK_IP" || return 1
    # One CA and conductor certificate for every scenario of this boot, kept on the guest's
    # disk: the initramfs holds the CA, and a build reused from an earlier scenario must trust
    # this scenario's conductor.
    if [[ -s $RD_TLS_KEEP/conductor.key ]]; then
        cp -p "$RD_TLS_KEEP/ca.pem" "$RD_TLS_KEEP/conductor.pem" "$RD_TLS_KEEP/conductor.key" "$TLS_DIR/"
        log "tls: the CA and certificate of an earlier scenario of this boot"
    else
        install -d -m 0700 "$RD_TLS_KEEP"
        cp -p "$TLS_DIR/ca.pem" "$TLS_DIR/conductor.pem" "$TLS_DIR/conductor.key" "$RD_TLS_KEEP/"
    fi
}

# build_initramfs MODULES [DRACUT_ARG...] : dracut with these modules and the tether module
# (from the share) into $INITRAMFS, uncompressed (the kernel unpacks it faster under TCG), with
# the drivers for the link and for a node's disk, and the settings in /etc/dracut.conf.d. The
# file list goes to $RESULT_DIR/initramfs.list. Builds are kept on the guest's disk by what they
# were built from (the CA included, which ramdisk_prepare keeps for the boot): a scenario
# reuses an earlier one's of this boot (42 reuses 40's after 41 built another).
build_initramfs() {
    local modules=$1 t0 rc=0 key cache
    shift
    # (The CA too: the image holds it.)
    key="$modules $* $(cat /etc/dracut.conf.d/*.conf 2>/dev/null | tr '\n' ' ') $(sha256sum "$TETHER_CA_FILE" 2>&1)"
    cache=/var/tmp/tether-initramfs/$(printf '%s' "$key" | sha256sum | cut -c1-16)
    if [[ -s $cache.img && -s $cache.list ]]; then
        cp "$cache.img" "$INITRAMFS"
        cp "$cache.list" "$RESULT_DIR/initramfs.list"
        note initramfs_reused "the same build as an earlier scenario's"
        note initramfs_mib $(($(stat -c %s "$cache.img") / 1048576))
        pass "dracut builds the initramfs"
        return 0
    fi
    mkdir -p "${cache%/*}"
    # Built and listed on the guest's disk: reading it back through 9p took minutes under load.
    local img=$cache.tmp
    rm -rf /usr/lib/dracut/modules.d/95tether
    cp -a "$SHARE/dracut/95tether" /usr/lib/dracut/modules.d/95tether
    t0=$(now_ms)
    dracut --force --no-hostonly --no-hostonly-cmdline --no-early-microcode --no-compress \
        --kver "$(uname -r)" --modules "$modules tether" \
        --add-drivers "virtio_pci virtio_net virtio_blk" "$@" "$img" >"$RESULT_DIR/dracut.log" 2>&1 || rc=$?
    note dracut_build_ms $(($(now_ms) - t0))
    if ((rc != 0)); then
        fail "dracut builds the initramfs" "exit 0" "exit $rc: $(tail -n 20 "$RESULT_DIR/dracut.log")"
        return 1
    fi
    note initramfs_mib $(($(stat -c %s "$img") / 1048576))
    # (cpio itself: lsinitrd takes a minute over an uncompressed image under TCG.)
    cpio -it --quiet <"$img" >"$RESULT_DIR/initramfs.list" 2>&1
    cp "$RESULT_DIR/initramfs.list" "$cache.list"
    mv "$img" "$cache.img"
    cp "$cache.img" "$INITRAMFS"
    pass "dracut builds the initramfs"
}

# initramfs_under_mib DESC MIB : the initramfs is at most MIB MiB (uncompressed).
initramfs_under_mib() {
    local mib
    mib=$(($(stat -c %s "$INITRAMFS") / 1048576))
    if ((mib <= $2)); then
        pass "$1: $mib MiB <= $2 MiB"
    else
        fail "$1" "at most $2 MiB" "$mib MiB; the largest files: $(
            cpio -itv --quiet <"$INITRAMFS" 2>/dev/null | sort -k5 -n -r | head -n 8 | awk '{print $5, $9}' | tr '\n' ';')"
    fi
}

# initramfs_has DESC ERE / initramfs_lacks DESC ERE : a path in the initramfs matches ERE (or none).
initramfs_has() {
    local got
    got=$(grep -E -- "$2" "$RESULT_DIR/initramfs.list" | head -n 3 || true)
    if [[ -n $got ]]; then pass "initramfs has $1"; else fail "initramfs has $1" "a path matching /$2/" "none (see initramfs.list)"; fi
}
initramfs_lacks() {
    local got
    got=$(grep -E -- "$2" "$RESULT_DIR/initramfs.list" | head -n 3 || true)
    expect_eq "initramfs: $1" "" "$got"
}

# conductor_on_link : the conductor (tether.sh's database and admin token, HTTPS with
# tls_setup's certificate) on every address.
conductor_on_link() {
    rm -rf "$(dirname "$CONDUCTOR_DB")"
    tether_start_conductor --listen 0.0.0.0:6387
}

# ramdisk_serve : LIO serves a 64M LUN of $RD_IQN on the link to $NODE_INITIATOR only; the
# conductor runs; the node is enrolled and $RD_VOLUME assigned, to be formatted and mounted.
ramdisk_serve() {
    lio_target "$RD_IQN" "$LINK_IP" 3260
    lio_lun "$RD_IQN" rd0 64M
    lio_acl "$RD_IQN" "$NODE_INITIATOR"
    lio_apply
    conductor_on_link
    ctl node create "$RD_NODE" --mac "$NODE_MAC" --uuid "$RD_NODE_UUID" >/dev/null
    ctl target create "$RD_NODE" --volume-id "$RD_VOLUME" --portal "$RD_PORTAL" --iqn "$RD_IQN" --lun 0 \
        --mount /mnt/data --fstype ext4 --mkfs >/dev/null
}

# ramdisk_node_options : the kernel options every node boot gets: static address on the
# link, the agent's settings (the conductor over HTTPS; the CA comes with the image's
# configuration), the initiator name.
ramdisk_node_options() {
    printf '%s' "ip=$NODE_IP::$LINK_IP:255.255.255.0:$RD_NODE:eth0:off net.ifnames=0" \
        " rd.iscsi.initiator=$NODE_INITIATOR tether.conductor=$TETHER_URL tether.node=$RD_NODE_UUID"
}

# initramfs_has_ca : the conductor's CA is in the image, where the configuration names it; the
# conductor's key (beside it on this guest) is not.
initramfs_has_ca() {
    initramfs_has "the conductor's CA (conductor_ca_file)" "${TETHER_CA_FILE#/}\$"
    initramfs_has "the drop-in naming the CA" "${TLS_DROPIN#/}\$"
    initramfs_lacks "no conductor key" "${TLS_DIR#/}/.*\.key\$"
}

# ramdisk_checks : once the node reported $RD_VOLUME mounted: what the conductor and the
# target see.
ramdisk_checks() {
    expect_eq "reported device path is the by-path link on the link's portal" \
        "$(by_path "$RD_PORTAL" "$RD_IQN" 0)" "$(field device_path)"
    expect_match "reported mount point" '"mountpoint": "/mnt/data"' "$REPORT"
    expect_eq "the node's mkfs.ext4 formatted the LUN" ext4 \
        "$(blkid -p -o value -s TYPE "$LIO_BACKING_DIR/rd0.img" 2>&1 || true)"
    expect_match "LIO session from the node's initiator name, over the link" "$NODE_IP" \
        "$(cat "$CONFIGFS_ISCSI/$RD_IQN/tpgt_1/acls/$NODE_INITIATOR/info" 2>&1 || true)"
    expect_match "the node reported its initiator name" "$NODE_INITIATOR" \
        "$(ctl status "$RD_NODE" --json 2>&1 || true)"
}

# boot_node OPTION... : have the host boot the node from $INITRAMFS with these kernel command
# line options; returns once its qemu started.
boot_node() {
    local i
    printf '%s\n' "$*" >"$RD/cmdline"
    rm -f "$RD/booting" "$RD/node-exited"
    # Renamed into place: the host removes `ready` as soon as it sees it, and a plain create
    # could then fail in the middle of its 9p calls (ENOENT, seen once).
    : >"$RD/ready.tmp"
    mv -f "$RD/ready.tmp" "$RD/ready"
    for ((i = 0; i < 300; i++)); do
        if [[ -f $RD/booting ]]; then
            NODE_T0=$(now_ms)
            log "node booting: $*"
            return 0
        fi
        sleep 0.1
    done
    fail "the host boots the node" "$RD/booting within 30 s" "nothing: is this run through scripts/vm/run-ramdisk?"
    return 1
}

# node_console_tail : the last lines of the node's console.
node_console_tail() {
    printf 'node console (node-console.log in the results directory), last lines:\n%s' \
        "$(tail -n 25 "$RD/console.log" 2>/dev/null | cut -c1-200)"
}

# wait_node_volume NODE VOLUME STATE TIMEOUT_S : the conductor has the node's report of VOLUME
# in STATE; leaves it in $REPORT and notes the time since the node's qemu started.
wait_node_volume() {
    local node=$1 volume=$2 state=$3 t=$4 deadline
    deadline=$(($(now_ms) + t * 1000))
    while (($(now_ms) < deadline)); do
        if REPORT=$(ctl wait "$node" "$volume" --state "$state" --timeout 5 2>"$WORK/wait.err"); then
            note "node_boot_to_${state}_report_ms" $(($(now_ms) - NODE_T0))
            pass "$volume reported $state by the node"
            return 0
        fi
        if [[ -f $RD/node-exited ]]; then
            fail "$volume reported $state by the node" "state $state within ${t}s" \
                "the node's qemu exited ($(cat "$RD/node-exited")) first; $(node_console_tail)"
            return 1
        fi
    done
    fail "$volume reported $state by the node" "state $state within ${t}s" \
        "$(cat "$WORK/wait.err"); status: $(ctl status "$node" 2>&1 || true); $(node_console_tail)"
    return 1
}

# node_timings : times the node's console shows (seconds since its kernel started).
node_timings() {
    local t
    t=$(sed -n 's/^\[ *\([0-9.]*\)\] sd .*Attached SCSI disk.*/\1/p' "$RD/console.log" | head -n1)
    [[ -n $t ]] && note node_kernel_to_disk_s "$t"
    t=$(sed -n 's/^\[ *\([0-9.]*\)\] tether\[[0-9]*\]: *\(INFO \)\{0,1\}attached .*/\1/p' "$RD/console.log" | head -n1)
    [[ -n $t ]] && note node_kernel_to_attached_s "$t"
    return 0
}

# node_done : let the host stop the node.
node_done() {
    local i
    : >"$RD/done"
    for ((i = 0; i < 100; i++)); do
        [[ -f $RD/done ]] || return 0
        sleep 0.1
    done
}
