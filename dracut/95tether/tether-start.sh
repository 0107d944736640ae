#!/bin/sh
# initqueue/online hook of the tether dracut module, for an initramfs without systemd: when a
# network interface is up, start iscsid and the agent in the background, once. The agent's
# output goes to the console and to /run/initramfs/tether-agent.log; its pid to
# /run/initramfs/tether-agent.pid, for the pre-pivot hook that stops it.

if [ ! -e /run/initramfs/tether-agent.started ]; then
    mkdir -p /run/initramfs /run/lock /var/lib/tether /run/tether
    : >/run/initramfs/tether-agent.started
    pgrep -x iscsid >/dev/null 2>&1 || iscsid
    setsid sh -c 'sh -c "echo \$\$ >/run/initramfs/tether-agent.pid; exec /usr/bin/tether agent" 2>&1 | tee -a /run/initramfs/tether-agent.log >/dev/console' </dev/null >/dev/null 2>&1 &
    info "tether: agent started (log: /run/initramfs/tether-agent.log)"
fi
