# shellcheck shell=bash disable=SC2154
# The dracut module on a diskless node, systemd in the initramfs: this guest installs the
# package, builds an initramfs with dracut (systemd, systemd-networkd for ip=, the tether
# module), serves a LUN with LIO on the link to the node and runs the conductor (HTTPS, a
# throwaway CA). scripts/vm/run-ramdisk boots the node from that initramfs alone: no root file
# system. Its agent (the packaged unit), configured by the kernel command line and trusting the
# CA the image carries, logs in, formats and mounts the volume; the report reaches the
# conductor here.
# vm-timeout: 600
source "$SHARE/vm/ramdisk.sh"

ramdisk_prepare
build_initramfs "$RD_SYSTEMD_MODULES" "${RD_SYSTEMD_ARGS[@]}"
initramfs_has "the tether binary" usr/bin/tether
initramfs_has "the agent-only binary under the unit's name too" 'usr/bin/tether-agent$'
initramfs_has_ca
initramfs_has "the agent's unit" 'lib/systemd/system/tether-agent.service$'
initramfs_has "the unit's initramfs drop-in" 'tether-agent.service.d/50-initrd.conf'
initramfs_has "the unit wanted by initrd.target" 'initrd.target.wants/tether-agent.service'
initramfs_has "iscsid's unit" 'lib/systemd/system/iscsid.service$'
initramfs_has "the configuration" 'etc/tether/tether.toml'
initramfs_has "iscsiadm" 'bin/iscsiadm$'
initramfs_has "iscsid" 'bin/iscsid$'
initramfs_has "iscsid.conf" 'etc/iscsi/iscsid.conf'
initramfs_has "the initiator name hook" 'hooks/cmdline/95-tether-cmdline.sh'
initramfs_has "blkid" 'bin/blkid$'
initramfs_has "mkfs.ext4" 'bin/mkfs.ext4$'
initramfs_lacks "no rbd CLI by default (ceph-common is installed here)" 'bin/rbd$'
initramfs_lacks "no Ceph library by default" '/lib(rados|rbd|ceph-common)\.so'
initramfs_has "the rbd udev rule, for /dev/rbd/<pool>/<image>" '50-rbd.rules$'
initramfs_has "the handover drop-in (state in /run)" 'etc/tether/config.d/99-initramfs-handover.toml$'
initramfs_has "the iscsi_tcp module" '/iscsi_tcp.ko'
initramfs_has "the rbd module" '/rbd.ko'
initramfs_lacks "no initiator name from the build host" 'etc/iscsi/initiatorname.iscsi'
initramfs_lacks "no token file" 'etc/tether/.*token'

ramdisk_serve
# No root=: the initramfs would look for one and hand over. rd.break=pre-mount holds it
# before that, with everything it started (the agent among them) still running. No IPv6:
# with no router on the link, systemd-networkd-wait-online would hold network-online.target
# (and so the agent) 12 s longer.
boot_node "$(ramdisk_node_options) ipv6.disable=1 rd.break=pre-mount systemd.journald.forward_to_console=1"
wait_node_volume "$RD_NODE" "$RD_VOLUME" mounted 300
ramdisk_checks
node_timings
node_done
tether_down
