# shellcheck shell=bash disable=SC2154
# The dracut module in an initramfs without systemd: dracut's shell init, network-legacy for
# ip=, and the module's initqueue/online hook that starts iscsid and the agent once the link
# is up. Same node, target and checks as 40-dracut.
# vm-timeout: 600
source "$SHARE/vm/ramdisk.sh"

ramdisk_prepare
# The operator's setting that adds the rbd CLI (and Ceph's libraries) to the image.
echo 'tether_rbd_cli=yes' >/etc/dracut.conf.d/50-tether-rbd-cli.conf
build_initramfs "base udev-rules network-legacy rootfs-block"
rm -f /etc/dracut.conf.d/50-tether-rbd-cli.conf
initramfs_has "the rbd CLI (tether_rbd_cli=yes)" 'bin/rbd$'
initramfs_has "Ceph's libraries with it" '/librados\.so'
initramfs_has "the stop hook (the record is final at the switch)" 'hooks/pre-pivot/90-tether-stop.sh'
initramfs_has "the tether binary" usr/bin/tether
initramfs_has_ca
initramfs_has "the start hook" 'hooks/initqueue/online/90-tether-start.sh'
initramfs_has "the initiator name hook" 'hooks/cmdline/95-tether-cmdline.sh'
initramfs_has "iscsid" 'bin/iscsid$'
initramfs_lacks "no systemd" 'lib/systemd/systemd$'
initramfs_lacks "no unit (nothing would run it)" 'tether-agent.service'

ramdisk_serve
# dracut's shell init stops at once without root=: give one that never appears, and time
# enough to wait for it. The initqueue keeps running meanwhile (network, the online hook).
boot_node "$(ramdisk_node_options) root=LABEL=tether-none rd.retry=600"
wait_node_volume "$RD_NODE" "$RD_VOLUME" mounted 300
ramdisk_checks
expect_match "the agent's output on the node's console" 'attached' \
    "$(grep -a 'INFO attached' "$RD/console.log" 2>&1 || true)"
node_timings
node_done
tether_down
