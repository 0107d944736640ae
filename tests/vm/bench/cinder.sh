# shellcheck shell=bash disable=SC2154
# Time from `tether ctl volume attach` to Cinder `in-use`, for an LVM (LIO) and an RBD volume of
# the guest's real Cinder, broken down from the volume's phases as the conductor recorded them:
#   cinder_create   creating -> attaching: Cinder's attachment create (export, CHAP, connection_info)
#   tether_attach   attaching -> completing: the agent's login or map, device, mkfs and mount
#   cinder_complete completing -> attached: Cinder's os-complete
# plus the whole command (`ctl_total`, which also polls every 0.5 s) and the detach. Run through
# scripts/bench-cinder; the numbers land in the result notes.
# vm-timeout: 1800
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"
source "$SHARE/vm/cinder-tether.sh"
REPS=${BENCH_REPS:-3}
openstack_up

# phases_ms VOLUME_ID : "creating attaching completing" durations in ms from the list's phases.
phases_ms() {
    vol_list "$NODE" | python3 -c '
import json, sys
from datetime import datetime
vol = [v for v in json.load(sys.stdin) if v["volume_id"] == sys.argv[1]][0]
at = {p["phase"]: datetime.strptime(p["at"], "%Y-%m-%dT%H:%M:%S.%fZ") for p in vol["phases"]}
ms = lambda a, b: round((at[b] - at[a]).total_seconds() * 1000)
print(ms("creating", "attaching"), ms("attaching", "completing"), ms("completing", "attached"))
' "$1"
}

for type in lvm rbd; do
    create=() attach=() complete=() total=() detach=()
    for ((rep = 1; rep <= REPS; rep++)); do
        id=$(cinder_create "bench-$type-$rep" 1 "$type") || continue
        vol_attach "$NODE" "$id" --mount "/mnt/bench-$type" --fstype ext4 --mkfs --timeout 600
        expect_eq "$type #$rep: attach" 0 "$VOL_RC"
        total+=("$VOL_MS")
        read -r c a p <<<"$(phases_ms "$id")"
        create+=("$c") attach+=("$a") complete+=("$p")
        vol_detach "$NODE" "$id" --timeout 600
        expect_eq "$type #$rep: detach" 0 "$VOL_RC"
        detach+=("$VOL_MS")
        cinder_delete "$id" || true
    done
    note "${type}_cinder_create_ms" "${create[*]}"
    note "${type}_tether_attach_ms" "${attach[*]}"
    note "${type}_cinder_complete_ms" "${complete[*]}"
    note "${type}_ctl_total_ms" "${total[*]}"
    note "${type}_ctl_detach_ms" "${detach[*]}"
done
