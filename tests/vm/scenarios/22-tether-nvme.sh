# shellcheck shell=bash disable=SC2154
# tether and NVMe over TCP against the kernel's own target (nvmet): the host NQN made by the
# agent and reported; one namespace attached by UUID, /dev/disk/by-id/nvme-uuid.* reported, data
# round trip; a second namespace of the same subsystem (by nsid) shares the one controller;
# unassigning the first keeps it, the second's unassign disconnects it; a subsystem that does
# not exist -> login_refused, a portal nobody listens on -> portal_unreachable, the others
# fine; a mounted namespace -> detach_blocked, then detached; a controller connected by hand is
# reported as foreign and left alone.
# vm-timeout: 420
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/nvmet.sh"
NQN=nqn.2024-01.test.tether:two-ns
NQN_HAND=nqn.2024-01.test.tether:by-hand
nvmet_up
nvmet_subsystem "$NQN"
uuid1=$(nvmet_namespace "$NQN" 1 64M)
nvmet_namespace "$NQN" 2 32M >/dev/null
nvmet_subsystem "$NQN_HAND"
nvmet_namespace "$NQN_HAND" 1 16M >/dev/null
rm -f /etc/nvme/hostnqn /etc/nvme/hostid
tether_up
controllers() { nvme_controllers_to "$1"; }

t0=$(now_ms)
one=$(assign vol-nvme-1 --nqn "$NQN" --portal 127.0.0.1:$NVME_PORT --ns-uuid "$uuid1")
wait_volume vol-nvme-1 attached 60
note nvme_attach_ms $(($(now_ms) - t0))
expect_eq "reported device path: udev's link by the namespace UUID" \
    "/dev/disk/by-id/nvme-uuid.$uuid1" "$(field device_path)"
expect_match "reported size" '"size_bytes": 67108864' "$REPORT"
expect_match "reported WWID" "\"wwn\": \"uuid.$uuid1\"" "$REPORT"
hostnqn=$(cat /etc/nvme/hostnqn)
expect_match "the agent made a host NQN" '^nqn\.2014-08\.org\.nvmexpress:uuid:' "$hostnqn"
expect_eq "it is the NQN the controller connected with" "$hostnqn" \
    "$(cat /sys/class/nvme/nvme*/hostnqn | sort -u)"
expect_match "the host NQN is reported as a connector" "\"connector_id\": \"$hostnqn\"" \
    "$(ctl status vm-guest --json)"
dev=$(field device_path)
roundtrip "$dev" "$NVMET_DIR/${NQN//[:.]/_}-1.img"

two=$(assign vol-nvme-2 --nqn "$NQN" --portal 127.0.0.1:$NVME_PORT --nsid 2)
wait_volume vol-nvme-2 attached 60
expect_match "the second namespace is its own device" '"size_bytes": 33554432' "$REPORT"
expect_eq "one controller for both namespaces" 1 "$(controllers "$NQN")"

# Refusals: one bad volume never stops the others.
nope=$(assign vol-nope --nqn nqn.2024-01.test.tether:nope --portal 127.0.0.1:$NVME_PORT --nsid 1)
far=$(assign vol-far --nqn "$NQN" --portal 127.0.0.1:4421 --nsid 1)
wait_volume vol-nope failed 60
expect_match "a subsystem the target does not have is refused" '"kind": "login_refused"' "$REPORT"
expect_match "the message names this host" "$hostnqn" "$REPORT"
wait_volume vol-far failed 60
expect_match "a portal nobody listens on is unreachable" '"kind": "portal_unreachable"' "$REPORT"
wait_volume vol-nvme-1 attached 5
wait_volume vol-nvme-2 attached 5
unassign "$nope"
unassign "$far"
wait_volume vol-nope gone 60
wait_volume vol-far gone 60

unassign "$one"
wait_volume vol-nvme-1 gone 60
expect_eq "the controller stays while namespace 2 is attached" 1 "$(controllers "$NQN")"
wait_volume vol-nvme-2 attached 5
mkfs.ext4 -q "/dev/disk/by-id/nvme-uuid.$(cat "$NVMET/subsystems/$NQN/namespaces/2/device_uuid")"
mkdir -p /mnt/admin-nvme
mount "$(readlink -f "$(field device_path)")" /mnt/admin-nvme
unassign "$two"
wait_volume vol-nvme-2 detach_blocked 60
expect_match "the report names the holder" 'mounted at /mnt/admin-nvme' "$REPORT"
expect_eq "still connected while blocked" 1 "$(controllers "$NQN")"
umount /mnt/admin-nvme
wait_volume vol-nvme-2 gone 60
expect_eq "disconnected with its last namespace" 0 "$(controllers "$NQN")"

# A controller an administrator connected stays connected, and is reported as foreign.
answer=$(nvme_connect_by_hand "$NQN_HAND")
expect_match "connected by hand" '^instance=' "$answer"
# The agent looks for foreign attachments after each operation.
again=$(assign vol-nvme-again --nqn "$NQN" --portal 127.0.0.1:$NVME_PORT --nsid 1)
wait_volume vol-nvme-again attached 60
for ((i = 0; i < 30; i++)); do
    ctl status vm-guest --json | grep -qF "$NQN_HAND" && break
    sleep 0.5
done
expect_match "the hand-made controller is reported as foreign" "controller nvme.* to $NQN_HAND" \
    "$(ctl status vm-guest --json | grep -F description || true)"
unassign "$again"
wait_volume vol-nvme-again gone 60
expect_eq "the hand-made controller is untouched" 1 "$(controllers "$NQN_HAND")"
expect_eq "the agent's own is gone" 0 "$(controllers "$NQN")"
tether_down
nvmet_cleanup
