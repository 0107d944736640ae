# shellcheck shell=bash disable=SC2154,SC2034
# The dracut module on a diskless node: this guest installs the package, builds an initramfs
# with dracut (systemd in the initramfs, the network from ip=, the tether module), serves a
# LUN with LIO on the link to the node, and runs the conductor. scripts/vm/run-ramdisk boots
# the node from that initramfs alone: no root file system. Its agent, configured by the kernel
# command line, logs in, formats and mounts the volume; the report reaches the conductor here.
# vm-timeout: 480
source "$SHARE/vm/ramdisk.sh"
IQN=iqn.2003-01.test.tether:ramdisk
PORTAL=$LINK_IP:3260
VOLUME=vol-ramdisk
NODE=ramdisk-node

link_up
expect_rc "dpkg -i of the package" 0 dpkg -i "$SHARE/deb/tether.deb"
((LAST_RC == 0)) || exit 1
TETHER=/usr/bin/tether
source "$SHARE/vm/tether.sh"

build_initramfs
initramfs_has "the tether binary" usr/bin/tether
initramfs_has "the agent's unit" 'usr/lib/systemd/system/tether-agent.service|lib/systemd/system/tether-agent.service'
initramfs_has "the unit's initramfs drop-in" 'tether-agent.service.d/50-initrd.conf'
initramfs_has "the unit wanted by initrd.target" 'initrd.target.wants/tether-agent.service'
initramfs_has "the configuration" 'etc/tether/tether.toml'
initramfs_has "iscsiadm" '(s)?bin/iscsiadm'
initramfs_has "iscsid" '(s)?bin/iscsid'
initramfs_has "iscsid.conf" 'etc/iscsi/iscsid.conf'
initramfs_has "the initiator name hook" 'hooks/cmdline/95-tether-cmdline.sh'
initramfs_has "blkid" 'bin/blkid'
initramfs_has "mkfs.ext4" 'bin/mkfs.ext4'
initramfs_has "the rbd CLI (ceph-common is installed here)" 'bin/rbd'
initramfs_has "the iscsi_tcp module" 'iscsi_tcp.ko'
initramfs_has "the rbd module" '/rbd.ko'
initramfs_lacks "no initiator name from the build host" 'etc/iscsi/initiatorname.iscsi'

lio_target "$IQN" "$LINK_IP" 3260
lio_lun "$IQN" rd0 64M
lio_acl "$IQN" "$NODE_INITIATOR"
lio_apply
conductor_on_link
ctl node create "$NODE" --mac "$NODE_MAC" --uuid "$RD_NODE_UUID" >/dev/null
ctl target create "$NODE" --volume-id "$VOLUME" --portal "$PORTAL" --iqn "$IQN" --lun 0 \
    --mount /mnt/data --fstype ext4 --mkfs >/dev/null

# No root=: the initramfs would look for one and hand over. rd.break=pre-mount holds it
# before that, with everything it started (the agent among them) still running. No IPv6:
# with no router on the link, systemd-networkd-wait-online would hold network-online.target
# (and so the agent) 12 s longer.
boot_node "ip=$NODE_IP::$LINK_IP:255.255.255.0:$NODE:eth0:off net.ifnames=0 ipv6.disable=1" \
    "rd.iscsi.initiator=$NODE_INITIATOR tether.conductor=http://$LINK_IP:6387 tether.node=$RD_NODE_UUID" \
    "rd.break=pre-mount systemd.journald.forward_to_console=1"
wait_node_volume "$NODE" "$VOLUME" mounted 300
expect_eq "reported device path is the by-path link on the link's portal" \
    "$(by_path "$PORTAL" "$IQN" 0)" "$(field device_path)"
expect_match "reported mount point" '"mountpoint": "/mnt/data"' "$REPORT"
expect_eq "the node's mkfs.ext4 formatted the LUN" ext4 \
    "$(blkid -p -o value -s TYPE "$LIO_BACKING_DIR/rd0.img" 2>&1 || true)"
expect_match "LIO session from the node's initiator name, over the link" "$NODE_IP" \
    "$(cat "$CONFIGFS_ISCSI/$IQN/tpgt_1/acls/$NODE_INITIATOR/info" 2>&1 || true)"
expect_match "the node reported its initiator name" "$NODE_INITIATOR" \
    "$(ctl status "$NODE" --json 2>&1 || true)"
node_timings
node_done
tether_down
