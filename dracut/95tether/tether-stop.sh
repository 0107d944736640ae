#!/bin/sh
# pre-pivot hook of the tether dracut module, for an initramfs without systemd: stop the agent
# (which detaches nothing) and wait for it, so that the ownership record it leaves in
# /run/tether-initramfs is final when the installed system's agent adopts it. The agent lets
# operations under way finish first, for up to 30 s.

if [ -s /run/initramfs/tether-agent.pid ]; then
    tether_pid=$(cat /run/initramfs/tether-agent.pid)
    if kill -TERM "$tether_pid" 2>/dev/null; then
        tether_wait=0
        while [ "$tether_wait" -lt 40 ] && kill -0 "$tether_pid" 2>/dev/null; do
            sleep 1
            tether_wait=$((tether_wait + 1))
        done
        if kill -0 "$tether_pid" 2>/dev/null; then
            warn "tether: the agent did not stop within 40 s; its record may be incomplete"
        else
            info "tether: agent stopped; the installed system's agent adopts its volumes"
        fi
    fi
    rm -f /run/initramfs/tether-agent.pid
    unset tether_pid tether_wait
fi
