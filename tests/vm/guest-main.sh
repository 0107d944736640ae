#!/bin/bash
# Guest-side harness, run by the guest's PID 1 (/sbin/tether-init) from the
# 9p share. Brings up udevd, D-Bus and iscsid, runs every scenario listed in
# $SHARE/scenarios.list in order, each under `timeout`, writes
# $SHARE/out/<scenario>/{result,checks,notes,log,cleanup.log,dmesg.log},
# and finally $SHARE/out/DONE.
#
# `guest-main.sh --scenario NAME` runs one scenario (used internally), `--boot-info` prints
# what boot.txt records (used by guest-systemd.sh too).
set -uo pipefail

SHARE=${SHARE:-/mnt/share}
OUT=$SHARE/out
export SHARE
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[[ -d $SHARE/bin ]] && export PATH=$SHARE/bin:$PATH
SCENARIO_TIMEOUT=300
# shellcheck disable=SC1091
[[ -f $SHARE/config.env ]] && source "$SHARE/config.env"

# boot_info : what boot.txt records of the guest once it is ready (both harnesses).
boot_info() {
    echo "ready_uptime_s=$(cut -d' ' -f1 /proc/uptime)"
    echo "kernel=$(uname -r)"
    echo "initiator=$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi)"
    cat /etc/tether-vm-image 2>/dev/null
    if [[ -x $SHARE/bin/tether ]]; then
        echo "tether=$SHARE/bin/tether"
        echo "tether_version=$(timeout 30 "$SHARE/bin/tether" --version 2>&1 | head -n1)"
    fi
}
if [[ ${1:-} == --boot-info ]]; then
    boot_info
    exit 0
fi

# --- one scenario (child of `timeout`) -------------------------------------------------
if [[ ${1:-} == --scenario ]]; then
    export SCENARIO=$2
    export RESULT_DIR=$OUT/$SCENARIO
    export WORK=/tmp/vm-work/$SCENARIO
    rm -rf "$WORK"
    mkdir -p "$WORK" "$RESULT_DIR"
    cd "$WORK" || exit 1
    # shellcheck source=lib.sh
    source "$SHARE/vm/lib.sh"
    # shellcheck disable=SC2317 # called from the ERR trap
    _on_err() {
        local rc=$1 cmd=$2 where="" i
        # Call stack from the failing line up to the scenario file.
        for ((i = 1; i < ${#BASH_SOURCE[@]}; i++)); do
            [[ ${BASH_SOURCE[i]} == */guest-main.sh ]] && break
            where+="${where:+ <- }${BASH_SOURCE[i]##*/}:${BASH_LINENO[i - 1]}"
        done
        # A helper that already recorded why it failed only needs the place.
        if [[ $cmd == return* && $(grep -E '^(ok|FAIL): ' "$RESULT_DIR/checks" | tail -n1) == FAIL:* ]]; then
            printf 'stopped at %s (exit %s)\n' "$where" "$rc" >>"$RESULT_DIR/checks"
            log "stopped at $where (exit $rc)"
        else
            _record FAIL "command failed at $where: $cmd" "exit 0" "exit $rc"
        fi
    }
    set -Eeuo pipefail
    trap '_on_err "$?" "$BASH_COMMAND"' ERR
    log "start (tether: ${TETHER:-none})"
    # shellcheck disable=SC1090
    source "$SHARE/scenarios/$SCENARIO.sh"
    trap - ERR
    log "end"
    exit 0
fi

# --- the whole run -------------------------------------------------------------------------
mkdir -p "$OUT"
exec >>"$OUT/guest.log" 2>&1
say() { printf 'tether-vm [%s] %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*" | tee /dev/console; }

say "guest up; kernel $(uname -r); $(tr '\n' ' ' </etc/tether-vm-image)"
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add --subsystem-match=block
udevadm settle --timeout=60 || say "udevadm settle timed out"
modprobe -a sd_mod scsi_transport_iscsi iscsi_tcp target_core_mod target_core_file target_core_iblock \
    iscsi_target_mod dm_mod loop || say "modprobe failed"
mkdir -p /run/dbus
dbus-daemon --system --fork || say "dbus-daemon failed"
# shellcheck disable=SC2016 # expanded by the inner shell
SCENARIO=boot WORK=/tmp/vm-work/boot RESULT_DIR=/tmp/vm-work/boot \
    bash -c 'source "$SHARE/vm/lib.sh" && start_iscsid' || say "iscsid did not start"
boot_info >"$OUT/boot.txt"
say "ready"

mapfile -t scenarios < <(grep -v '^[[:space:]]*$' "$SHARE/scenarios.list")
oopsed=""
for name in "${scenarios[@]}"; do
    dir=$OUT/$name
    mkdir -p "$dir"
    : >"$dir/checks"
    # After a kernel oops the iSCSI stack is wedged: later scenarios would only time out.
    if [[ -n $oopsed ]]; then
        printf 'FAIL %s 0s\nFAIL: not run\n  expected: a working guest kernel\n  saw: the kernel oopsed during %s (see %s/dmesg.log)\n' \
            "$name" "$oopsed" "$oopsed" >"$dir/result"
        say "scenario $name: FAIL (not run: the kernel oopsed during $oopsed)"
        continue
    fi
    t=$(grep -m1 -oE '^# vm-timeout: [0-9]+' "$SHARE/scenarios/$name.sh" | grep -oE '[0-9]+$' || true)
    t=${t:-$SCENARIO_TIMEOUT}
    dmesg_before=$(dmesg | wc -l)
    say "scenario $name: start (timeout ${t}s)"
    t0=${EPOCHREALTIME/./}
    rc=0
    timeout -k 10 "$t" bash "$SHARE/vm/guest-main.sh" --scenario "$name" >"$dir/log" 2>&1 || rc=$?
    t1=${EPOCHREALTIME/./}
    secs=$(printf '%d.%03d' $(((t1 - t0) / 1000000)) $((((t1 - t0) / 1000) % 1000)))
    status=PASS
    if ((rc == 124 || rc == 137)); then
        status=FAIL
        printf 'FAIL: scenario finished within %ss\n  expected: finish within %ss\n  saw: killed by timeout after %ss (exit %s); last log lines:\n    %s\n' \
            "$t" "$t" "$secs" "$rc" "$(tail -n 5 "$dir/log" | sed '2,$s/^/    /')" >>"$dir/checks"
    elif ((rc != 0)); then
        status=FAIL
        grep -q '^FAIL' "$dir/checks" || printf 'FAIL: scenario exited 0\n  expected: exit 0\n  saw: exit %s; last log lines:\n    %s\n' \
            "$rc" "$(tail -n 5 "$dir/log" | sed '2,$s/^/    /')" >>"$dir/checks"
    fi
    grep -q '^FAIL' "$dir/checks" && status=FAIL
    {
        echo "$status $name ${secs}s"
        awk '/^ok: /{skip=1; next} /^FAIL: /{skip=0} !skip' "$dir/checks"
        [[ -f $dir/notes ]] && cat "$dir/notes"
    } >"$dir/result"
    # Tear down whatever the scenario left behind, so the next one starts clean.
    # shellcheck disable=SC2016 # expanded by the inner shell
    SCENARIO=cleanup WORK=/tmp/vm-work/cleanup RESULT_DIR=/tmp/vm-work/cleanup \
        timeout -k 5 120 bash -c 'source "$SHARE/vm/lib.sh" && vm_cleanup' >"$dir/cleanup.log" 2>&1 \
        || say "cleanup after $name failed (see $name/cleanup.log)"
    dmesg | tail -n +"$((dmesg_before + 1))" >"$dir/dmesg.log"
    if grep -qE '^\[[ 0-9.]+\] (BUG:|Oops:|kernel BUG)' "$dir/dmesg.log"; then
        oopsed=$name
        status=FAIL
        sed -i '1s/^PASS/FAIL/' "$dir/result"
        printf 'FAIL: the guest kernel ran without an oops\n  expected: no BUG/Oops in dmesg\n  saw: %s\n' \
            "$(grep -m1 -E 'BUG:|Oops:' "$dir/dmesg.log")" >>"$dir/result"
    fi
    say "scenario $name: $status in ${secs}s"
done

dmesg >"$OUT/dmesg.log"
ps -eo pid,ppid,stat,etime,args >"$OUT/ps.txt"
date -u +%FT%TZ >"$OUT/DONE"
say "all scenarios done"
