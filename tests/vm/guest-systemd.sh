#!/bin/bash
# Guest-side harness when systemd is PID 1 (scripts/vm/run --init systemd), started on every
# boot by tether-vm-harness.service from the image. Runs the scenarios of
# $SHARE/scenarios.list in order, each through `guest-main.sh --scenario` (same variables,
# helpers, checks and ERR trap as in the script-PID1 harness), and writes the same files under
# $SHARE/out.
#
# A scenario may span boots: `vm_reboot` (tests/vm/systemd.sh) ends the current phase and
# reboots the guest; on the next boot the harness runs the same scenario again with VM_BOOT
# one higher, appending to its log and checks. State that must survive lives on the disk
# (the overlay of snapshot=on outlives a guest reboot within one qemu process) or in
# $RESULT_DIR. When every scenario is done, the guest powers off.
set -uo pipefail

SHARE=${SHARE:-/mnt/share}
OUT=$SHARE/out
export SHARE
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[[ -d $SHARE/bin ]] && export PATH=$SHARE/bin:$PATH
SCENARIO_TIMEOUT=300
MAX_BOOTS=8
# shellcheck disable=SC1091
[[ -f $SHARE/config.env ]] && source "$SHARE/config.env"

mkdir -p "$OUT"
exec >>"$OUT/guest.log" 2>&1
say() { printf 'tether-vm [%s] %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*" | tee /dev/console; }

finish() { # POWEROFF: the last words of every boot that does not reboot
    dmesg >"$OUT/dmesg.log"
    ps -eo pid,ppid,stat,etime,args >"$OUT/ps.txt"
    # Every boot's journal (persistent): what ran before a reboot matters too.
    journalctl --no-pager -o short-monotonic >"$OUT/journal.log" 2>&1 || true
    date -u +%FT%TZ >"$OUT/DONE"
    say "all scenarios done"
    sync
    systemctl poweroff
    exit 0
}

boot=$(($(cat "$OUT/boots" 2>/dev/null || echo 0) + 1))
echo "$boot" >"$OUT/boots"
say "boot $boot: kernel $(uname -r); $(systemctl --version | head -n1)"
if ((boot > MAX_BOOTS)); then
    say "more than $MAX_BOOTS boots: a scenario reboots in a loop; giving up"
    echo "FAIL: more than $MAX_BOOTS boots" >>"$OUT/boot-loop"
    finish
fi
# The scenarios look at the system as it is once the boot is over.
state=$(timeout 300 systemctl is-system-running --wait 2>&1)
{
    echo "boot=$boot"
    echo "system_state=$state"
    echo "ready_uptime_s=$(cut -d' ' -f1 /proc/uptime)"
    systemd-analyze time 2>&1 | head -n1
    echo "failed_units=$(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')"
} >"$OUT/boot-$boot.txt"
if ((boot == 1)); then
    {
        echo "init=systemd"
        bash "$SHARE/vm/guest-main.sh" --boot-info
    } >"$OUT/boot.txt"
fi
say "ready (system $state)"

mapfile -t scenarios < <(grep -v '^[[:space:]]*$' "$SHARE/scenarios.list")
for name in "${scenarios[@]}"; do
    dir=$OUT/$name
    [[ -f $dir/result ]] && continue
    mkdir -p "$dir"
    phase=$(cat "$dir/phase" 2>/dev/null || echo 1)
    if [[ -f $dir/running ]]; then
        # The last boot ended while this scenario ran, and not through vm_reboot.
        printf 'FAIL: boot %s of the scenario ends through vm_reboot or by finishing\n  expected: no reboot while it runs\n  saw: the guest restarted (panic, crash or reboot by someone else); see console.log and the journal of that boot\n' \
            "$(cat "$dir/running")" >>"$dir/checks"
        {
            echo "FAIL $name (the guest restarted during its boot $(cat "$dir/running"))"
            awk '/^ok: /{skip=1; next} /^FAIL: /{skip=0} !skip' "$dir/checks"
        } >"$dir/result"
        rm -f "$dir/running"
        say "scenario $name: FAIL (unexpected restart)"
        continue
    fi
    if ((phase == 1)); then
        : >"$dir/checks"
        echo 0 >"$dir/elapsed_us"
    fi
    t=$(grep -m1 -oE '^# vm-timeout: [0-9]+' "$SHARE/scenarios/$name.sh" | grep -oE '[0-9]+$' || true)
    t=${t:-$SCENARIO_TIMEOUT}
    dmesg_before=$(dmesg | wc -l)
    say "scenario $name: boot $phase start (timeout ${t}s)"
    rm -f "$dir/reboot"
    echo "$phase" >"$dir/running"
    sync
    t0=${EPOCHREALTIME/./}
    rc=0
    VM_BOOT=$phase timeout -k 10 "$t" bash "$SHARE/vm/guest-main.sh" --scenario "$name" >>"$dir/log" 2>&1 || rc=$?
    t1=${EPOCHREALTIME/./}
    echo $(($(cat "$dir/elapsed_us") + t1 - t0)) >"$dir/elapsed_us"
    dmesg | tail -n +"$((dmesg_before + 1))" >>"$dir/dmesg.log"
    rm -f "$dir/running"
    if ((rc == 0)) && [[ -f $dir/reboot ]]; then
        echo $((phase + 1)) >"$dir/phase"
        say "scenario $name: boot $phase done in $(((t1 - t0) / 1000)) ms; rebooting"
        sync
        systemctl reboot
        exit 0
    fi
    us=$(cat "$dir/elapsed_us")
    secs=$(printf '%d.%03d' $((us / 1000000)) $(((us / 1000) % 1000)))
    status=PASS
    if ((rc == 124 || rc == 137)); then
        status=FAIL
        printf 'FAIL: scenario finished within %ss (boot %s)\n  expected: finish within %ss\n  saw: killed by timeout (exit %s); last log lines:\n    %s\n' \
            "$t" "$phase" "$t" "$rc" "$(tail -n 5 "$dir/log" | sed '2,$s/^/    /')" >>"$dir/checks"
    elif ((rc != 0)); then
        status=FAIL
        grep -q '^FAIL' "$dir/checks" || printf 'FAIL: scenario exited 0 (boot %s)\n  expected: exit 0\n  saw: exit %s; last log lines:\n    %s\n' \
            "$phase" "$rc" "$(tail -n 5 "$dir/log" | sed '2,$s/^/    /')" >>"$dir/checks"
    fi
    grep -q '^FAIL' "$dir/checks" && status=FAIL
    {
        echo "$status $name ${secs}s (in $phase boots, reboots not counted)"
        awk '/^ok: /{skip=1; next} /^FAIL: /{skip=0} !skip' "$dir/checks"
        [[ -f $dir/notes ]] && cat "$dir/notes"
    } >"$dir/result"
    # shellcheck disable=SC2016 # expanded by the inner shell
    SCENARIO=cleanup WORK=/tmp/vm-work/cleanup RESULT_DIR=/tmp/vm-work/cleanup \
        timeout -k 5 120 bash -c 'source "$SHARE/vm/lib.sh" && vm_cleanup' >"$dir/cleanup.log" 2>&1 \
        || say "cleanup after $name failed (see $name/cleanup.log)"
    say "scenario $name: $status in ${secs}s"
done
finish
