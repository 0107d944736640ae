# shellcheck shell=bash
# Helpers for scenarios that run with systemd as PID 1 (tests/vm/systemd/*.sh, run by
# scripts/vm/run --init systemd and tests/vm/guest-systemd.sh). Sourced after lib.sh.
#
# VM_BOOT is 1 on the scenario's first boot; `vm_reboot` ends this boot's part and the
# scenario runs again after the reboot with VM_BOOT one higher. Keep what later boots need
# on the disk (the snapshot overlay outlives a guest reboot) or in $RESULT_DIR.

VM_BOOT=${VM_BOOT:-1}

# vm_reboot : end this boot's part of the scenario and reboot the guest.
vm_reboot() {
    log "end of boot $VM_BOOT: rebooting"
    : >"$RESULT_DIR/reboot"
    exit 0
}

# unit_prop UNIT PROPERTY : one property as systemctl show prints it.
unit_prop() { systemctl show --value -p "$2" "$1"; }

# journal_first_us UNIT ERE : the monotonic time (µs since boot) of the first entry of this
# boot's journal for UNIT (or "-k" for the kernel) whose message matches ERE; empty if none.
journal_first_us() {
    local sel=(-u "$1")
    [[ $1 == -k ]] && sel=(-k)
    journalctl -b "${sel[@]}" -o json --no-pager 2>/dev/null | python3 -c '
import json, re, sys
pat = re.compile(sys.argv[1])
for line in sys.stdin:
    e = json.loads(line)
    m = e.get("MESSAGE")
    if isinstance(m, list):
        m = bytes(m).decode("utf-8", "replace")
    if m and pat.search(m):
        print(e["__MONOTONIC_TIMESTAMP"])
        break
' "$2"
}

# wait_unit_restarted UNIT OLD_PID TIMEOUT_S : wait until UNIT is active again with a main
# process other than OLD_PID.
wait_unit_restarted() {
    local unit=$1 old=$2 t=$3 i pid state
    for ((i = 0; i < t * 4; i++)); do
        pid=$(unit_prop "$unit" MainPID)
        state=$(unit_prop "$unit" ActiveState)
        if [[ $pid != 0 && $pid != "$old" && $state == active ]]; then
            return 0
        fi
        sleep 0.25
    done
    fail "$unit restarted" "active with a new main process within ${t}s" \
        "state $state, main pid $pid (was $old); journal: $(journalctl -b -u "$unit" -n 8 --no-pager 2>&1)"
    return 1
}
