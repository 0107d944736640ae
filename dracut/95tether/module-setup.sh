#!/bin/bash
# shellcheck disable=SC2154 # initdir, moddir, systemdsystemunitdir... come from dracut
# dracut module "tether": the tether agent in the initramfs. It attaches the volumes that the
# conductor assigns to this node (iSCSI, Ceph RBD), mounts them if asked, and reports them,
# before any root file system is needed. Configuration comes from the kernel command line
# (tether.conductor=, tether.node=, ...) merged over the TOML files installed here; the iSCSI
# initiator name from rd.iscsi.initiator=. See docs/operations.md, "dracut module".
#
# Not added by itself: build with `dracut --add tether` or add_dracutmodules+=" tether ".
#
# Settings (dracut.conf.d or the environment):
#   tether_rbd_cli=yes   also install the rbd CLI, which brings Ceph's libraries (tens of MiB).
#                        By default the agent maps RBD images through /sys/bus/rbd without it.
#   tether_xfs=yes       also install XFS (its kernel module, 4 MiB, and mkfs.xfs), to make or
#                        mount XFS volumes in the initramfs; ext4 is always there.

# called by dracut
check() {
    require_binaries tether-agent iscsiadm iscsid iscsi-iname || return 1
    return 255
}

# called by dracut
depends() {
    echo network
    return 0
}

# called by dracut
installkernel() {
    # Loaded on demand: iscsi_tcp by iscsid at login, rbd by the map, nvme_tcp by the agent's
    # connect, the file system by mount.
    local filesystems=ext4
    [[ ${tether_xfs:-no} == yes ]] && filesystems+=" xfs"
    # shellcheck disable=SC2086 # one word a module
    hostonly='' instmods iscsi_tcp sd_mod crc32c rbd libceph nvme_tcp $filesystems
}

# The programs a unit runs (ExecStart=, ExecStartPre=...), for units that call helper scripts
# (Debian's iscsid.service runs /lib/open-iscsi/startup-checks.sh first).
_tether_unit_programs() {
    sed -n 's/^Exec[A-Za-z]*=[-@+!:]*\([^ ]*\).*/\1/p' "$1"
}

# called by dracut
install() {
    local f unit

    # The agent-only binary (no conductor, no ctl: a third of the size) under both names: the
    # hooks and operators run `tether agent` and `tether status`, the unit tether-agent.
    inst_binary "$(find_binary tether-agent)" /usr/bin/tether
    ln -sf tether "${initdir}/usr/bin/tether-agent"
    # What the agent runs (resolved from /usr/sbin, /sbin, /usr/bin, /bin, never $PATH).
    inst_multiple iscsiadm iscsid iscsi-iname blkid blockdev mount umount udevadm modprobe grep
    inst_multiple -o mkfs.ext4 mke2fs
    if [[ ${tether_xfs:-no} == yes ]] && ! inst_multiple mkfs.xfs; then
        derror "tether: tether_xfs=yes but there is no mkfs.xfs (install xfsprogs)"
        return 1
    fi
    # The /dev/rbd/<pool>/<image> links: a shell script and a rule, no Ceph library.
    inst_multiple -o ceph-rbdnamer
    inst_rules 50-rbd.rules
    if [[ ${tether_rbd_cli:-no} == yes ]]; then
        if ! inst_multiple rbd; then
            derror "tether: tether_rbd_cli=yes but there is no rbd CLI (install ceph-common)"
            return 1
        fi
    fi
    inst_simple /etc/iscsi/iscsid.conf
    # A node's own initiator name belongs in its own image only; a shared ramdisk gets one
    # from rd.iscsi.initiator= or generates one at boot (tether-cmdline.sh).
    if [[ $hostonly ]]; then
        inst_simple /etc/iscsi/initiatorname.iscsi
    fi
    inst_dir /etc/iscsi/nodes
    inst_dir /var/lib/iscsi

    # Configuration: TOML only. Token files stay out of the image: tokens are per node, and the
    # conductor issues one at the first lookup.
    for f in /etc/tether/tether.toml /etc/tether/config.d/*.toml /usr/lib/tether/config.d/*.toml; do
        [[ -f $f ]] && inst_simple "$f"
    done
    # The conductor's CA, where the configuration names one (tether.conductor_ca_file= on the
    # kernel command line may name another file, which must then be in the image too).
    local ca
    for ca in $(sed -n 's/^[[:space:]]*conductor_ca_file[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' \
        /etc/tether/tether.toml /etc/tether/config.d/*.toml /usr/lib/tether/config.d/*.toml 2>/dev/null); do
        if [[ -f $ca ]]; then
            inst_simple "$ca"
        else
            dwarn "tether: conductor_ca_file $ca does not exist; the agent will not start"
        fi
    done

    # State in /run, which the initramfs hands to the installed system at switch-root: its
    # agent adopts what this one attached (the record and the token, both mode 0600).
    mkdir -p "${initdir}/etc/tether/config.d"
    printf '%s\n' "# dracut module tether: the installed system's agent adopts this state" \
        "[agent]" 'state_dir = "/run/tether-initramfs"' \
        >"${initdir}/etc/tether/config.d/99-initramfs-handover.toml"

    # The agent always needs the network, even without a network root.
    mkdir -p "${initdir}/etc/cmdline.d"
    echo "rd.neednet=1" >"${initdir}/etc/cmdline.d/95tether.conf"
    inst_hook cmdline 95 "$moddir/tether-cmdline.sh"

    if dracut_module_included "systemd"; then
        unit="$systemdsystemunitdir/tether-agent.service"
        if [[ ! -f $unit ]]; then
            derror "tether: $unit is missing (install the tether package)"
            return 1
        fi
        inst_simple "$unit"
        for f in iscsid.service iscsid.socket; do
            [[ -f $systemdsystemunitdir/$f ]] || continue
            inst_simple "$systemdsystemunitdir/$f"
            for p in $(_tether_unit_programs "$systemdsystemunitdir/$f"); do
                inst_multiple -o "$p"
            done
        done
        inst_simple "$moddir/tether-agent-initrd.conf" "$systemdsystemunitdir/tether-agent.service.d/50-initrd.conf"
        inst_simple "$moddir/iscsid-initrd.conf" "$systemdsystemunitdir/iscsid.service.d/50-tether-initrd.conf"
        $SYSTEMCTL -q --root "$initdir" add-wants initrd.target tether-agent.service
    else
        # No systemd: iscsid and the agent start from the hook run when an interface is up.
        inst_multiple setsid pgrep tee
        inst_hook initqueue/online 90 "$moddir/tether-start.sh"
        # Stopped before the switch, so that its record is final when the next agent reads it.
        inst_hook pre-pivot 90 "$moddir/tether-stop.sh"
    fi
}
