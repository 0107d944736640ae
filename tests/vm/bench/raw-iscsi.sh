# shellcheck shell=bash disable=SC2154
# Raw open-iscsi baseline (no tether): time from the start of
# `iscsiadm --login` to every by-path link existing, for a target with 1 LUN
# and one with 16 LUNs, and from `--logout` to the links being gone.
# Run through scripts/vm/bench-raw-iscsi. Numbers land in the result notes.
# vm-timeout: 300

PORTAL=127.0.0.1:3260
REPS=${BENCH_REPS:-3}

lio_target iqn.2003-01.test.tether:bench1
lio_lun iqn.2003-01.test.tether:bench1 b1lun0 16M
lio_acl iqn.2003-01.test.tether:bench1 "$GUEST_INITIATOR"
lio_target iqn.2003-01.test.tether:bench16
for i in $(seq 0 15); do
    lio_lun iqn.2003-01.test.tether:bench16 "b16lun$i" 8M
done
lio_acl iqn.2003-01.test.tether:bench16 "$GUEST_INITIATOR"
lio_apply

# all_exist PATH... / none_exist PATH... (builtins only, for tight polling)
all_exist() { local p; for p; do [[ -e $p ]] || return 1; done; }
none_exist() { local p; for p; do [[ -e $p ]] && return 1; done; return 0; }

bench() { # IQN NLUNS
    local iqn=$1 n=$2 rep t0 t1 t2 t3 t4 links=() i
    for ((i = 0; i < n; i++)); do links+=("$(by_path "$PORTAL" "$iqn" "$i")"); done
    iscsi_node_new "$iqn" "$PORTAL"
    local logins=() visible=() logouts=()
    for ((rep = 1; rep <= REPS; rep++)); do
        t0=$(now_ms)
        iscsiadm -m node -T "$iqn" -p "$PORTAL" --login >/dev/null
        t1=$(now_ms)
        until all_exist "${links[@]}"; do
            (($(now_ms) - t0 > 60000)) && { fail "$n LUN(s) of $iqn visible within 60 s"; return 1; }
            sleep 0.01
        done
        t2=$(now_ms)
        udevadm settle
        t3=$(now_ms)
        iscsiadm -m node -T "$iqn" -p "$PORTAL" --logout >/dev/null
        until none_exist "${links[@]}"; do
            (($(now_ms) - t3 > 60000)) && { fail "$n LUN(s) of $iqn gone within 60 s"; return 1; }
            sleep 0.01
        done
        t4=$(now_ms)
        udevadm settle
        logins+=($((t1 - t0))) visible+=($((t2 - t0))) logouts+=($((t4 - t3)))
        log "$n LUN(s) rep $rep: iscsiadm --login ${logins[-1]} ms, links ${visible[-1]} ms, logout->gone ${logouts[-1]} ms"
    done
    note "luns${n}_iscsiadm_login_ms" "${logins[*]}"
    note "luns${n}_login_to_all_by_path_ms" "${visible[*]}"
    note "luns${n}_logout_to_all_gone_ms" "${logouts[*]}"
    expect_eq "$n LUN(s): no session left" 0 "$(session_count)"
    iscsiadm -m node -T "$iqn" -p "$PORTAL" -o delete >/dev/null
}

bench iqn.2003-01.test.tether:bench1 1
bench iqn.2003-01.test.tether:bench16 16
