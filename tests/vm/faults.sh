# shellcheck shell=bash disable=SC2154
# The fault matrix's cells (tests/vm/scenarios/3*-faults-*.sh). Sourced after tether.sh.
#
# The agent is the build with crash points (`cargo build --features failpoints`, on the share as
# bin/tether-faults): started with FAILPOINTS="<point>=return", it kills itself with SIGKILL when
# it reaches <point>. Each cell kills it there once, starts it again without crash points, and
# checks the end state against the assignment: attached exactly once, or gone leaving nothing.
#
# A scenario sets ASSIGN (the `tether ctl target create` options of its one volume, after the
# volume id), MOUNT (the volume's mount point), ATTACHED_PARTS (what `on_host` prints while the
# volume is attached), and the functions `on_host` (prints what of the volume the host has, one
# word per part, e.g. "session record") and `reset_volume` (wipes the volume's data, so that
# every cell formats it again).

[[ -x $SHARE/bin/tether-faults ]] || {
    fail "the agent with crash points on the share" "bin/tether-faults (scripts/vm-test builds it)" "none"
    exit 1
}
TETHER=$SHARE/bin/tether-faults
FAULT_VOLUME=vol-fault
TARGET=""

agent_alive() { [[ -n $AGENT_PID ]] && kill -0 "$AGENT_PID" 2>/dev/null; }

# start_agent_at POINT : the agent, to die at POINT ("" for none).
start_agent_at() {
    tether_stop_agent
    # The status file is the new agent's from its first write on.
    rm -f "$TETHER_STATE/status.json"
    if [[ -n $1 ]]; then
        FAILPOINTS="$1=return" tether_start_agent
    else
        tether_start_agent
    fi
}

# died_at POINT : waits for the agent to kill itself at POINT.
died_at() {
    local i
    for ((i = 0; i < 240; i++)); do
        agent_alive || break
        sleep 0.25
    done
    if agent_alive; then
        fail "$1: the agent reached its crash point" "the agent dead within 60 s" "still running"
        return 1
    fi
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=""
    expect_match "$1: the agent killed itself there" "crash point reached.*$1" \
        "$(grep -a 'crash point reached' "$RESULT_DIR/agent.log" | tail -n1)"
}

# local_state / wait_local STATE WHAT : the fault volume's state in the agent's status file.
local_state() { agent_state "$FAULT_VOLUME"; }
wait_local() { wait_agent_state "$FAULT_VOLUME" "$1" "$2"; }

# expect_attached_once WHAT : one of each part, mounted once, no intent left.
expect_attached_once() {
    expect_eq "$1: attached once" "$ATTACHED_PARTS" "$(on_host)"
    expect_eq "$1: mounted once" 1 "$(findmnt -n -o TARGET "$MOUNT" 2>/dev/null | grep -c . || true)"
    expect_eq "$1: no intent left in the record" "" "$(grep -o '"intents"' "$TETHER_STATE/volumes.json" || true)"
}

# expect_gone WHAT : nothing of the volume left.
expect_gone() {
    expect_eq "$1: nothing left on the host" "" "$(on_host)"
    expect_eq "$1: not mounted" "" "$(findmnt -n -o TARGET "$MOUNT" 2>/dev/null || true)"
    expect_eq "$1: the record lists nothing" "" \
        "$(grep -oE '"(volume_id|intents)"' "$TETHER_STATE/volumes.json" || true)"
    expect_eq "$1: no key file" "" "$(find /run/tether -name '*rbd-key*' 2>/dev/null || true)"
}

# assign_fault_volume : the cell's one volume, formatted and mounted; sets TARGET.
assign_fault_volume() {
    # shellcheck disable=SC2086 # ASSIGN is a list of options
    TARGET=$(assign "$FAULT_VOLUME" $ASSIGN --mount "$MOUNT" --fstype ext4 --mkfs)
}

# attach_cell POINT : killed at POINT while attaching; started again, the volume is attached.
attach_cell() {
    local point=$1
    log "cell: attach, killed at $point"
    reset_volume
    start_agent_at "$point"
    assign_fault_volume
    died_at "$point" || return 0
    start_agent_at ""
    wait_local mounted "attach killed at $point" || return 0
    expect_attached_once "attach killed at $point"
    unassign "$TARGET"
    wait_local gone "attach killed at $point, then unassigned" || return 0
    expect_gone "attach killed at $point, then unassigned"
}

# detach_cell POINT : attached, then killed at POINT while detaching; started again, it is gone.
detach_cell() {
    local point=$1
    log "cell: detach, killed at $point"
    reset_volume
    start_agent_at ""
    assign_fault_volume
    wait_local mounted "before the detach killed at $point" || return 0
    start_agent_at "$point"
    wait_local mounted "the agent with the crash point adopted it" || return 0
    unassign "$TARGET"
    died_at "$point" || return 0
    start_agent_at ""
    wait_local gone "detach killed at $point" || return 0
    expect_gone "detach killed at $point"
}
