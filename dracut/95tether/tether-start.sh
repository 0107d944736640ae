#!/bin/sh
# initqueue/online hook of the tether dracut module, for an initramfs without systemd: when a
# network interface is up, start iscsid and the agent in the background, once. The agent's
# output goes to /run/initramfs/tether-agent.log.

if [ ! -e /run/initramfs/tether-agent.started ]; then
    mkdir -p /run/initramfs /var/lib/tether /run/tether
    : >/run/initramfs/tether-agent.started
    pgrep -x iscsid >/dev/null 2>&1 || iscsid
    setsid /usr/bin/tether agent >>/run/initramfs/tether-agent.log 2>&1 </dev/null &
    info "tether: agent started (log: /run/initramfs/tether-agent.log)"
fi
