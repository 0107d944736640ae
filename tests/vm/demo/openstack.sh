# shellcheck shell=bash disable=SC2154
# scripts/demo --openstack: a real OpenStack Cinder in the guest creates a volume, tether attaches
# it to the guest (the node) with `tether ctl volume attach`, the mount is shown, then it is
# detached and Cinder has it back. Writes a transcript.
# vm-timeout: 1800
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"
source "$SHARE/vm/cinder-tether.sh"
BACKEND=${DEMO_BACKEND:-lvm}
transcript=$RESULT_DIR/transcript
: >"$transcript"
show() { # CMD... : runs a command and puts it and its output in the transcript
    {
        printf '$ %s\n' "$*"
        "$@" 2>&1
        echo
    } >>"$transcript"
}
say() { printf '# %s\n' "$*" >>"$transcript"; }
tether() { "$TETHER" "$@"; }
# The volume as Cinder sees it (its API, as any OpenStack client would read it).
cinder_show() {
    cinder_api GET "volumes/$1" | jq '.volume | {id, name, status, volume_type, size, attachments: [.attachments[] | {attachment_id, host_name}]}'
}

say "This guest plays a bare-metal node and the cloud at once. Cinder (Debian 12's 21.x: API,"
say "scheduler, volume service; an LVM backend exported by LIO over iSCSI with CHAP, and an RBD"
say "backend on a one-node Ceph) starts here with rabbitmq: a few minutes under emulation."
t0=$(now_ms)
openstack_up
say "Cinder and tether are up after $((($(now_ms) - t0) / 1000)) s. The conductor is Cinder's client:"
show cat "$CONDUCTOR_CONFIG"
say "Cinder creates a 1 GB volume on its $BACKEND backend."
id=$(cinder_create demo-volume 1 "$BACKEND")
show cinder_show "$id"
say "The operator asks tether for it on the node, formatted and mounted. tether builds the"
say "node's connector from its agent's last report, creates the Cinder attachment, hands the"
say "connection info (with Cinder's CHAP secret, or the cephx key from the conductor's key file)"
say "to the agent, which logs in or maps, mounts, and reports; then Cinder is told (os-complete)."
show tether ctl volume attach vm-guest demo-volume --mount /srv/demo --fstype ext4 --mkfs
show tether ctl volume list
show findmnt /srv/demo
show df -h /srv/demo
say "Cinder's view: in-use, attached to host vm-guest."
show cinder_show "$id"
say "Detach: the agent unmounts and lets the volume go first; only then is the attachment deleted."
show tether ctl volume detach vm-guest demo-volume
show cinder_show "$id"
cinder_delete "$id"
