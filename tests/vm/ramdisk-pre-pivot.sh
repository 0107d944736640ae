#!/bin/sh
# Test-only dracut pre-pivot hook of the ramdisk suite's handover scenario (42-dracut-handover),
# put into the initramfs with `dracut --include`. Acts only with tether_test.installed=1 on the
# node's command line: holds the switch to the installed root until the initramfs agent reports
# its volume mounted (the initramfs's work is done), then leaves a runtime unit in
# /run/systemd/system (which the installed system's systemd reads) that runs the installed
# side, ramdisk-installed.sh, from the node's 9p share.

if getargbool 0 tether_test.installed; then
    tether_i=0
    while [ "$tether_i" -lt 240 ] && ! grep -qs '"state": "mounted"' /run/tether-initramfs/status.json; do
        sleep 1
        tether_i=$((tether_i + 1))
    done
    info "tether test: switching root after ${tether_i}s; initramfs agent status: $(grep -o '"state": "[a-z_]*"' /run/tether-initramfs/status.json 2>&1)"
    mkdir -p /run/systemd/system/multi-user.target.wants
    cat >/run/systemd/system/tether-test-installed.service <<'UNIT'
[Unit]
Description=tether VM test: the installed system's side of the ramdisk handover
After=basic.target

[Service]
Type=exec
ExecStart=/bin/bash -c 'modprobe -a 9pnet_virtio 9p && mkdir -p /mnt/node && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 node /mnt/node && exec bash /mnt/node/ramdisk-installed.sh'
StandardOutput=journal+console
StandardError=journal+console
UNIT
    ln -sf ../tether-test-installed.service /run/systemd/system/multi-user.target.wants/
    unset tether_i
fi
