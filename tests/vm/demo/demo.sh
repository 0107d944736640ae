# shellcheck shell=bash disable=SC2154
# The README's first command: a LIO target, the conductor and the agent in the guest; a volume
# assigned with tether ctl; the device path the agent reports. Writes a transcript.
# vm-timeout: 240
source "$SHARE/vm/tether.sh"
PORTAL=127.0.0.1:3260
IQN=iqn.2003-01.org.example.array:demo
transcript=$RESULT_DIR/transcript
: >"$transcript"
show() { # CMD... : runs a command and puts it and its output in the transcript
    printf '$ %s\n' "$*" >>"$transcript"
    "$@" >>"$transcript" 2>&1
    echo >>"$transcript"
}
say() { printf '# %s\n' "$*" >>"$transcript"; }

say "A LIO target (targetcli) exports a 256 MiB LUN on $PORTAL; open-iscsi and udev run here."
lio_target "$IQN"
lio_lun "$IQN" demo0 256M
lio_acl "$IQN" "$GUEST_INITIATOR"
lio_apply
say "The conductor serves HTTPS with a throwaway certificate; the agent and ctl trust its CA."
say "The node is enrolled and the agent started."
tether_up
tether() { "$TETHER" "$@"; }
show tether ctl node list
show tether ctl target create vm-guest --volume-id demo-volume --portal "$PORTAL" --iqn "$IQN" --lun 0 \
    --mount /srv/demo --fstype ext4 --mkfs
wait_volume demo-volume mounted 90
say "The agent logged in, waited for udev, formatted the empty volume, mounted it, and reported:"
show tether ctl status vm-guest
show tether status --state-dir "$TETHER_STATE"
show iscsiadm -m session
show findmnt /srv/demo
say "Unassigning: the agent unmounts, flushes, deletes the device and logs out."
show tether ctl target delete "$(ctl target list --json | sed -n 's/^      "uuid": "\(.*\)",$/\1/p' | head -n1)"
wait_volume demo-volume gone 60
show tether ctl status vm-guest
tether_down
