# shellcheck shell=bash disable=SC2154
# The diskimage-builder element in the ramdisk operators boot: an ironic-python-agent ramdisk
# built with ironic-python-agent-builder and `-e tether` (scripts/vm/build-dib-ramdisk, on the
# host, with the same package as the other scenarios). The node boots that image's own kernel
# and initramfs, diskless, as Ironic would: DHCP on the link (busybox udhcpd here), BOOTIF and
# the agent's settings on the kernel command line. Its agent (the packaged unit the element
# enabled) looks the node up, reports the initiator name open-iscsi generated at boot (the
# element leaves none in the image), and once LIO lets that name in and the volume is
# assigned, logs in, formats and mounts it and reports the device path.
# The throwaway CA of this run is not in the image (an operator adds theirs with an element of
# their own): it comes as a small cpio archive appended to the image's initramfs.
# vm-timeout: 600
# vm-node: dib
source "$SHARE/vm/ramdisk.sh"

DIB=$SHARE/dib
DIB_CA=/etc/tether/conductor-ca.pem
UDHCPD_PID=""
# (Set as the EXIT trap once tether.sh, which sets its own, is loaded.)
dib_down() {
    [[ -n $UDHCPD_PID ]] && kill "$UDHCPD_PID" 2>/dev/null
    tether_down
}

# What the image holds (its file list, made on the host: listing 300+ MiB here takes minutes).
dib_image_checks() {
    local key value
    cp "$DIB/initramfs.list" "$RESULT_DIR/initramfs.list"
    while read -r key value; do note "dib_$key" "$value"; done <"$DIB/sizes"
    initramfs_has "the tether binary" '^(\./)?usr/bin/tether$'
    initramfs_has "the agent's binary, as its unit names it" '^(\./)?usr/bin/tether-agent$'
    initramfs_has "the agent's unit" 'lib/systemd/system/tether-agent.service$'
    initramfs_has "the unit enabled" 'multi-user.target.wants/tether-agent.service$'
    initramfs_has "ironic-python-agent" 'opt/ironic-python-agent/bin/ironic-python-agent$'
    initramfs_has "iscsiadm" 'bin/iscsiadm$'
    initramfs_has "iscsid" 'bin/iscsid$'
    initramfs_has "mkfs.ext4" 'bin/mkfs.ext4$'
    initramfs_lacks "no configuration (DIB_TETHER_CONFIG not given)" 'etc/tether/tether.toml$'
    initramfs_lacks "no token" 'etc/tether/.*token'
    initramfs_lacks "no rbd CLI by default" 'bin/rbd$'
}

# dhcp_serve : what Ironic's DHCP does for a deploy ramdisk: the node's MAC gets $NODE_IP.
dhcp_serve() {
    local conf=$WORK/udhcpd.conf
    cat >"$conf" <<EOF
interface $LINK_DEV
start $NODE_IP
end $NODE_IP
max_leases 1
lease_file $WORK/udhcpd.leases
pidfile $WORK/udhcpd.pid
static_lease $NODE_MAC $NODE_IP
option subnet 255.255.255.0
option lease 3600
EOF
    : >"$WORK/udhcpd.leases"
    modprobe af_packet 2>/dev/null || true
    busybox udhcpd -f "$conf" >"$RESULT_DIR/udhcpd.log" 2>&1 &
    UDHCPD_PID=$!
}

# node_reported_iqn : the iqn connector of the node's last report, or nothing.
node_reported_iqn() {
    ctl status "$RD_NODE" --json 2>/dev/null | python3 -c '
import json, sys
def walk(v):
    if isinstance(v, dict):
        if v.get("type") == "iqn" and "connector_id" in v:
            print(v["connector_id"]); sys.exit(0)
        for x in v.values(): walk(x)
    elif isinstance(v, list):
        for x in v: walk(x)
walk(json.load(sys.stdin))' 2>/dev/null || true
}

if [[ -f $DIB/build-failed ]]; then
    fail "the host built the IPA ramdisk" "scripts/vm/build-dib-ramdisk exit 0" \
        "it failed (dib-build.log in the results directory): $(tail -n 15 "$DIB/build-failed")"
    exit 0
fi
ramdisk_prepare
trap dib_down EXIT
dib_image_checks
# The test's files for the node: the CA that signed the conductor's certificate.
mkdir -p "$WORK/overlay${DIB_CA%/*}"
cp "$TETHER_CA_FILE" "$WORK/overlay$DIB_CA"
(cd "$WORK/overlay" && find . | cpio -o -H newc --quiet) >"$RD/node-overlay.cpio"

dhcp_serve
lio_target "$RD_IQN" "$LINK_IP" 3260
lio_lun "$RD_IQN" rd0 64M
lio_apply
conductor_on_link
ctl node create "$RD_NODE" --mac "$NODE_MAC" --uuid "$RD_NODE_UUID" >/dev/null

: >"$RD/node-dib"
# ipa-api-url: where Ironic would be (nothing answers; IPA keeps retrying its lookup, as it
# does while Ironic is down). BOOTIF: the MAC the node booted from, which Ironic's network boot
# always passes (pxelinux `ipappend 3`, iPXE `BOOTIF=${mac}`); without it the image waits 30
# tries for a virtual-media config drive (ironic-agent-resolve-config-drive, 38 s here).
boot_node "tether.conductor=$TETHER_URL tether.node=$RD_NODE_UUID tether.conductor_ca_file=$DIB_CA" \
    "ipa-api-url=http://$LINK_IP:6385 BOOTIF=01-${NODE_MAC//:/-}" \
    "systemd.journald.forward_to_console=1"

# The node's agent looks it up and reports; then the target lets its initiator in.
node_iqn="" deadline=$(($(now_ms) + 420000))
while (($(now_ms) < deadline)) && [[ ! -f $RD/node-exited ]]; do
    node_iqn=$(node_reported_iqn)
    [[ -n $node_iqn ]] && break
    sleep 2
done
if [[ -z $node_iqn ]]; then
    fail "the node's agent looked the node up and reported its initiator name" \
        "an iqn connector in the node's report within 420 s" \
        "status: $(ctl status "$RD_NODE" 2>&1 || true); udhcpd: $(tail -n 5 "$RESULT_DIR/udhcpd.log" 2>/dev/null | tr '\n' ' '); $(node_console_tail)"
    node_done
    exit 0
fi
note node_boot_to_lookup_ms $(($(now_ms) - NODE_T0))
pass "the node's agent looked the node up and reported its initiator name"
expect_match "the initiator name open-iscsi generated at boot (none in the image)" \
    '^iqn\.[0-9]{4}-[0-9]{2}\.[^:]+:[0-9]+:[0-9a-f]+$' "$node_iqn"
expect_ne "not this guest's initiator name" "$GUEST_INITIATOR" "$node_iqn"
expect_match "the node reports the address DHCP gave it" "\"$NODE_IP\"" \
    "$(ctl status "$RD_NODE" --json 2>&1 || true)"

lio_acl "$RD_IQN" "$node_iqn"
lio_apply
ctl target create "$RD_NODE" --volume-id "$RD_VOLUME" --portal "$RD_PORTAL" --iqn "$RD_IQN" --lun 0 \
    --mount /mnt/data --fstype ext4 --mkfs >/dev/null
wait_node_volume "$RD_NODE" "$RD_VOLUME" mounted 300
expect_eq "reported device path is the by-path link on the link's portal" \
    "$(by_path "$RD_PORTAL" "$RD_IQN" 0)" "$(field device_path)"
expect_match "reported mount point" '"mountpoint": "/mnt/data"' "$REPORT"
expect_eq "the node's mkfs.ext4 formatted the LUN" ext4 \
    "$(blkid -p -o value -s TYPE "$LIO_BACKING_DIR/rd0.img" 2>&1 || true)"
expect_match "LIO session from the node's initiator name, over the link" "$NODE_IP" \
    "$(cat "$CONFIGFS_ISCSI/$RD_IQN/tpgt_1/acls/$node_iqn/info" 2>&1 || true)"
expect_match "ironic-python-agent ran beside it" 'ironic-python-agent' \
    "$(grep -a -m1 -E 'ironic-python-agent\[[0-9]+\]|Started ironic-python-agent' "$RD/console.log" 2>&1 || true)"
node_timings
node_done
