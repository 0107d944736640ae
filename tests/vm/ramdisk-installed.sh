#!/bin/bash
# The installed system's side of the ramdisk suite's handover scenario (42-dracut-handover):
# runs on the node after the switch from the initramfs to its installed root (the image's
# Debian on the node's disk), started by the unit that ramdisk-pre-pivot.sh left in /run. The
# node's 9p share /mnt/node holds the package, the agent's configuration and the CA; this
# script installs them, starts the packaged agent (which adopts what the initramfs agent
# attached), and keeps copying what the scenario checks to the share until the scenario asks
# it to stop. Everything it writes is for the target side: see 42-dracut-handover.sh.
set -u
N=/mnt/node
exec >>"$N/installed.log" 2>&1
say() { printf 'installed [%s] %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*"; }

say "installed root is up: $(findmnt -n -o SOURCE /)"
# What the initramfs left, before anything reads it: modes and owners.
stat -c '%a %U %n' /run/tether-initramfs /run/tether-initramfs/* >"$N/handover-before.txt" 2>&1
ip -o addr show >"$N/addresses.txt" 2>&1
iscsiadm -m session >"$N/sessions-before.txt" 2>&1

# The node's identity and the agent's settings, as an installed system would have them.
install -m 0600 "$N/initiatorname.iscsi" /etc/iscsi/initiatorname.iscsi
install -D -m 0644 "$N/conductor-ca.pem" /etc/tether/conductor-ca.pem
install -D -m 0644 "$N/agent.toml" /etc/tether/config.d/50-node.toml
say "installing the package"
dpkg -i "$N/tether.deb" >"$N/dpkg.log" 2>&1 || say "dpkg -i exited $?"
t0=$(date +%s%N)
systemctl start tether-agent.service
say "systemctl start tether-agent exited $? after $((($(date +%s%N) - t0) / 1000000)) ms"
stat -c '%a %U %n' /var/lib/tether /var/lib/tether/volumes.json /var/lib/tether/token \
    >"$N/state-after.txt" 2>&1
ls -A /run/tether-initramfs >"$N/handover-after.txt" 2>&1
findmnt -n -o SOURCE,TARGET /mnt/data >"$N/mnt-data.txt" 2>&1
: >"$N/agent-started"

while [[ ! -e $N/stop ]]; do
    tether status --json >"$N/status.json.tmp" 2>&1 && mv -f "$N/status.json.tmp" "$N/status.json"
    iscsiadm -m session >"$N/sessions.txt.tmp" 2>&1
    mv -f "$N/sessions.txt.tmp" "$N/sessions.txt"
    # Renamed into place, like status.json: the scenario must never read a half-written file.
    journalctl -u tether-agent --no-pager -o short-monotonic >"$N/agent.log.tmp" 2>&1
    mv -f "$N/agent.log.tmp" "$N/agent.log"
    sleep 1
done
say "asked to stop"
