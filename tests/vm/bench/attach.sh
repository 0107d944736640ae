# shellcheck shell=bash disable=SC2154
# Attach latency: the real agent against LIO (iSCSI) and nvmet (NVMe/TCP), for 1 volume and
# for 16 volumes of one target (LUNs, namespaces) assigned at once, from the conductor accepting
# the assignment to the conductor receiving the report with the device paths, broken down from
# the two processes' logs; next to the raw baselines: `iscsiadm --login`, or a connect written
# to /dev/nvme-fabrics (what `nvme connect` does), plus waiting for udev's links.
# Run through scripts/bench-attach. Numbers land in the result notes.
# vm-timeout: 900
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/nvmet.sh"

PORTAL=127.0.0.1:3260
REPS=${BENCH_REPS:-3}
IQN1=iqn.2003-01.test.tether:bench1
IQN16=iqn.2003-01.test.tether:bench16
lio_target "$IQN1"
lio_lun "$IQN1" b1lun0 16M
lio_acl "$IQN1" "$GUEST_INITIATOR"
lio_target "$IQN16"
for i in $(seq 0 15); do lio_lun "$IQN16" "b16lun$i" 8M; done
lio_acl "$IQN16" "$GUEST_INITIATOR"
lio_apply

all_exist() { local p; for p; do [[ -e $p ]] || return 1; done; }
none_exist() { local p; for p; do [[ -e $p ]] && return 1; done; return 0; }

raw() { # IQN NLUNS
    local iqn=$1 n=$2 rep t0 t1 links=() i times=()
    for ((i = 0; i < n; i++)); do links+=("$(by_path "$PORTAL" "$iqn" "$i")"); done
    iscsi_node_new "$iqn" "$PORTAL"
    for ((rep = 1; rep <= REPS; rep++)); do
        t0=$(now_ms)
        iscsiadm -m node -T "$iqn" -p "$PORTAL" --login >/dev/null
        until all_exist "${links[@]}"; do sleep 0.005; done
        t1=$(now_ms)
        times+=($((t1 - t0)))
        iscsiadm -m node -T "$iqn" -p "$PORTAL" --logout >/dev/null
        until none_exist "${links[@]}"; do sleep 0.01; done
        udevadm settle
    done
    iscsiadm -m node -T "$iqn" -p "$PORTAL" -o delete >/dev/null
    note "raw_luns${n}_login_to_by_path_ms" "${times[*]}"
}

raw "$IQN1" 1
raw "$IQN16" 16

NQN1=nqn.2024-01.test.tether:bench1
NQN16=nqn.2024-01.test.tether:bench16
nvmet_up
nvmet_subsystem "$NQN1"
NS1=$(nvmet_namespace "$NQN1" 1 16M)
nvmet_subsystem "$NQN16"
NS16=()
for i in $(seq 1 16); do NS16+=("$(nvmet_namespace "$NQN16" "$i" 8M)"); done
mkdir -p /etc/nvme
[[ -s /etc/nvme/hostnqn ]] || echo "nqn.2014-08.org.nvmexpress:uuid:$(cat /proc/sys/kernel/random/uuid)" >/etc/nvme/hostnqn

raw_nvme() { # NQN UUID...
    local nqn=$1 rep t0 t1 links=() times=() u
    shift
    for u; do links+=("/dev/disk/by-id/nvme-uuid.$u"); done
    for ((rep = 1; rep <= REPS; rep++)); do
        t0=$(now_ms)
        nvme_connect_by_hand "$nqn" >/dev/null
        until all_exist "${links[@]}"; do sleep 0.005; done
        t1=$(now_ms)
        times+=($((t1 - t0)))
        for c in /sys/class/nvme/nvme*; do
            [[ $(cat "$c/subsysnqn") == "$nqn" ]] && echo 1 >"$c/delete_controller"
        done
        until none_exist "${links[@]}"; do sleep 0.01; done
        udevadm settle
    done
    note "raw_nvme_ns$#_connect_to_by_id_ms" "${times[*]}"
}
raw_nvme "$NQN1" "$NS1"
raw_nvme "$NQN16" "${NS16[@]}"

tether_up
marks=$RESULT_DIR/marks
: >"$marks"
run_tether() { # KIND(luns|ns) TARGET N REP
    local kind=$1 target=$2 n=$3 rep=$4 i uuids=() pids=()
    echo "begin $kind$n $n $rep $(now_ms)" >>"$marks"
    for ((i = 0; i < n; i++)); do
        if [[ $kind == luns ]]; then
            assign "bench-$kind$n-$i" --portal "$PORTAL" --iqn "$target" --lun "$i" >"$WORK/uuid.$i" &
        else
            assign "bench-$kind$n-$i" --nqn "$target" --portal 127.0.0.1:$NVME_PORT --nsid $((i + 1)) >"$WORK/uuid.$i" &
        fi
        pids+=($!)
    done
    wait "${pids[@]}"
    for ((i = 0; i < n; i++)); do wait_volume "bench-$kind$n-$i" attached 120 >/dev/null; uuids+=("$(cat "$WORK/uuid.$i")"); done
    echo "end $kind$n $n $rep $(now_ms)" >>"$marks"
    for u in "${uuids[@]}"; do unassign "$u"; done
    for ((i = 0; i < n; i++)); do wait_volume "bench-$kind$n-$i" gone 120 >/dev/null; done
    if [[ $kind == luns ]]; then
        expect_eq "$n LUN(s): logged out after the run" 0 "$(sessions_to "$target")"
    else
        expect_eq "$n namespace(s): disconnected after the run" 0 "$(nvme_controllers_to "$target")"
    fi
}
for ((rep = 1; rep <= REPS; rep++)); do
    run_tether luns "$IQN1" 1 "$rep"
    run_tether luns "$IQN16" 16 "$rep"
    run_tether ns "$NQN1" 1 "$rep"
    run_tether ns "$NQN16" 16 "$rep"
done
tether_down

# Break each run down from the logs (same clock: both processes run in this guest).
python3 - "$marks" "$RESULT_DIR/conductor.log" "$RESULT_DIR/agent.log" >"$WORK/breakdown" <<'PY'
import re, sys, datetime
def ms(line):
    m = re.match(r"(\S+Z)", line)
    if not m: return None
    t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() * 1000
def events(path, pattern):
    out = []
    for line in open(path, errors="replace"):
        if re.search(pattern, line):
            t = ms(line)
            if t is not None: out.append((t, line))
    return out
marks = [l.split() for l in open(sys.argv[1])]
cond, agent = sys.argv[2], sys.argv[3]
assigned = events(cond, r"target assigned")
reports = events(cond, r"report received")
received = events(agent, r"assignment received")
attaching = events(agent, r'state="attaching"')
logged = events(agent, r"logged in|connected")
ready = events(agent, r"device ready")
attached = events(agent, r' attached .*state="attached"')
runs = {}
for begin, finish in zip(marks[0::2], marks[1::2]):
    label, n, start, end = begin[1], begin[2], float(begin[4]), float(finish[4]) + 1
    win = lambda evs: [t for t, _ in evs if start - 5 <= t <= end]
    a = win(assigned); r = [t for t, l in reports if start <= t <= end and l.count('"attached"') >= int(n)]
    if not a or not r: continue
    t0 = a[0]
    rec = [t for t in win(received) if t >= t0]
    att = win(attaching); lg = win(logged); rd = win(ready); done = win(attached)
    row = dict(total=r[0] - t0, delivery=(rec[0] - t0) if rec else float("nan"),
               login=(lg[0] - att[0]) if lg and att else float("nan"),
               devices=(max(rd) - (lg[0] if lg else att[0])) if rd else float("nan"),
               report=(r[0] - max(done)) if done else float("nan"))
    runs.setdefault(label, []).append(row)
for label, rows in runs.items():
    for key in ["total", "delivery", "login", "devices", "report"]:
        print(f"tether_{label}_{key}_ms: " + " ".join(f"{row[key]:.0f}" for row in rows))
PY
while IFS=: read -r key value; do note "$key" "${value# }"; done <"$WORK/breakdown"
expect_ne "the logs gave a breakdown" "" "$(cat "$WORK/breakdown")"
