# shellcheck shell=bash
# Guest-side helpers for scenarios that run the real tether conductor and agent
# (built on the host, on the share as $TETHER). Sourced after lib.sh.

export TETHER_ADMIN_TOKEN=vm-admin-token-0123456789abcdef0123456789abcdef
# The conductor serves HTTPS with a throwaway certificate (tls_setup); the agent and ctl trust
# only the throwaway CA that signed it.
TLS_DIR=/etc/tether/tls
TLS_DROPIN=/etc/tether/config.d/50-tls.toml
export TETHER_URL=https://127.0.0.1:6387
export TETHER_CA_FILE=$TLS_DIR/ca.pem
NODE_UUID=7e0a1c4e-5d6f-4a8b-9c0d-1e2f3a4b5c6d
NODE_TOKEN_FILE=/etc/tether/node.token
TETHER_STATE=/var/lib/tether
CONDUCTOR_DB=/var/lib/tether-conductor/tether.db
CONDUCTOR_PID="" AGENT_PID=""

[[ -n $TETHER ]] || { fail "tether binary on the share" "a binary (scripts/vm-test --bin …)" "none"; exit 1; }

ctl() { "$TETHER" ctl "$@"; }

# Stop what this scenario started, however it ends.
trap tether_down EXIT

# tls_certs DIR SAN... : a throwaway CA (DIR/ca.pem) and a conductor certificate it signed for
# these subjectAltNames (DIR/conductor.pem, key DIR/conductor.key), e.g. `tls_certs DIR
# IP:127.0.0.1`. Made with openssl at test time, so no key is ever in the repository; every
# call makes a new CA (ECDSA P-256, valid 2 days), whose key is deleted once it signed. The
# conductor's key is mode 0600. openssl's output goes to $RESULT_DIR/tls.log.
tls_certs() {
    local dir=$1 san rc=0
    shift
    san=$(IFS=,; printf '%s' "$*")
    if ! command -v openssl >/dev/null; then
        fail "openssl in the guest" "the openssl CLI (GUEST_PACKAGES in scripts/vm/build-image)" "none"
        return 1
    fi
    rm -rf "$dir"
    install -d -m 0755 "$dir"
    # webpki (rustls) wants a v3 leaf that is not a CA and names the address in subjectAltName.
    # Each CA has a name of its own: a client that trusts another one finds no issuer
    # (UnknownIssuer), as with a real foreign CA, not a namesake whose signature does not match.
    printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/conductor.ext"
    # (&&, not set -e: errexit does not apply inside a subshell that is the left side of ||.)
    (
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=tether-vm-test-ca-$(openssl rand -hex 4)" -keyout "$dir/ca.key" -out "$dir/ca.pem" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=tether-conductor \
            -keyout "$dir/conductor.key" -out "$dir/conductor.csr" &&
        openssl x509 -req -in "$dir/conductor.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile "$dir/conductor.ext" \
            -out "$dir/conductor.pem"
    ) >>"$RESULT_DIR/tls.log" 2>&1 || rc=$?
    # Nothing else is ever signed with the CA's key.
    rm -f "$dir/conductor.csr" "$dir/conductor.ext" "$dir/ca.key"
    if ((rc != 0)); then
        fail "throwaway CA and conductor certificate for $san" "openssl exit 0" \
            "exit $rc: $(tail -n 5 "$RESULT_DIR/tls.log")"
        return 1
    fi
    chmod 0644 "$dir/ca.pem" "$dir/conductor.pem"
    log "tls: a CA and a conductor certificate for $san in $dir"
}

# tls_setup SAN... : certificates in $TLS_DIR (tls_certs) and the drop-in with which the
# conductor serves them and the agent trusts their CA (the dracut module takes that CA into
# the initramfs). Under /etc, not /tmp: the packaged conductor unit has a private /tmp.
tls_setup() {
    tls_certs "$TLS_DIR" "$@" || return 1
    install -d -m 0755 "$(dirname "$TLS_DROPIN")"
    cat >"$TLS_DROPIN" <<EOF
[agent]
conductor_ca_file = "$TETHER_CA_FILE"

[conductor]
tls_cert_file = "$TLS_DIR/conductor.pem"
tls_key_file = "$TLS_DIR/conductor.key"
EOF
}

# tether_start_conductor [CONDUCTOR_ARGS...] : starts it and waits until it answers. With
# CONDUCTOR_CONFIG set, the conductor reads that file instead of /etc/tether/tether.toml (the
# drop-ins still apply), e.g. its [cinder] section (tests/vm/cinder-tether.sh).
CONDUCTOR_CONFIG=${CONDUCTOR_CONFIG:-}
tether_start_conductor() {
    mkdir -p "$(dirname "$CONDUCTOR_DB")"
    TETHER_LOG=tether=debug "$TETHER" conductor --database "$CONDUCTOR_DB" \
        ${CONDUCTOR_CONFIG:+--config "$CONDUCTOR_CONFIG"} "$@" >>"$RESULT_DIR/conductor.log" 2>&1 &
    CONDUCTOR_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        ctl node list >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "conductor starts" "an answer on $TETHER_URL" "none in 30 s; see conductor.log"
    return 1
}

tether_stop_conductor() {
    [[ -n $CONDUCTOR_PID ]] || return 0
    kill -TERM "$CONDUCTOR_PID" 2>/dev/null || true
    wait "$CONDUCTOR_PID" 2>/dev/null || true
    CONDUCTOR_PID=""
}

# The guest has no NIC, so the agent finds its node by uuid. A uuid alone never gets the node's
# token, so the token is provisioned: the conductor gets it with the node (and keeps its hash),
# the agent reads it from $NODE_TOKEN_FILE.
tether_enroll() {
    mkdir -p "$(dirname "$NODE_TOKEN_FILE")"
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$NODE_TOKEN_FILE")
    ctl node create vm-guest --mac 52:54:00:00:00:01 --uuid "$NODE_UUID" \
        --agent-token-file "$NODE_TOKEN_FILE" >/dev/null
}

tether_start_agent() {
    mkdir -p /etc/tether
    cat >/etc/tether/tether.toml <<EOF
[agent]
conductor_url = "$TETHER_URL"
node_uuid = "$NODE_UUID"
token_file = "$NODE_TOKEN_FILE"
state_dir = "$TETHER_STATE"
device_timeout_s = 30
retry_initial_s = ${RETRY_INITIAL_S:-1}
retry_max_s = ${RETRY_MAX_S:-4}
EOF
    # Within its unit's capability bounding set: every scenario proves the set is enough.
    local caps
    caps=$(agent_capabilities setpriv)
    TETHER_LOG=tether=debug setpriv --bounding-set "$caps" \
        "$TETHER" agent >>"$RESULT_DIR/agent.log" 2>&1 &
    AGENT_PID=$!
}

# The kernel's capability numbers (include/uapi/linux/capability.h): CAP_CHOWN is 0.
CAPABILITY_NAMES=(chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap
    linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner
    sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice
    sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap
    mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf
    checkpoint_restore)

# agent_capabilities setpriv|hex : the CapabilityBoundingSet= of the agent's unit (the
# package's once installed, else the repository's on the share), as setpriv's --bounding-set
# argument or as the hex mask of /proc/PID/status.
agent_capabilities() {
    local unit=/lib/systemd/system/tether-agent.service names name i mask=0 arg=-all
    [[ -f $unit ]] || unit=$SHARE/vm/tether-agent.service
    names=$(sed -n 's/^CapabilityBoundingSet=//p' "$unit" | tr 'A-Z ' 'a-z\n' | sed 's/^cap_//')
    for name in $names; do
        for i in "${!CAPABILITY_NAMES[@]}"; do
            [[ ${CAPABILITY_NAMES[$i]} == "$name" ]] || continue
            mask=$((mask | 1 << i))
            arg+=",+$name"
        done
    done
    if [[ $1 == hex ]]; then printf '%016x\n' "$mask"; else printf '%s\n' "$arg"; fi
}

tether_stop_agent() {
    [[ -n $AGENT_PID ]] || return 0
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=""
}

# tether_up : a fresh conductor (HTTPS, a new CA) with the guest enrolled, and the agent running.
tether_up() {
    # Whatever an earlier scenario left running goes first.
    pkill -TERM -x tether 2>/dev/null && sleep 1
    rm -rf "$TETHER_STATE" "$(dirname "$CONDUCTOR_DB")"
    tls_setup IP:127.0.0.1
    tether_start_conductor
    tether_enroll
    tether_start_agent
}

tether_down() {
    # Only the scenario's own shell stops them: a subshell that exits must not.
    [[ $BASHPID == "$$" ]] || return 0
    tether_stop_agent
    tether_stop_conductor
}

# assign VOLUME_ID OPTIONS... : assigns a volume to the guest; prints the target uuid.
assign() {
    local volume=$1
    shift
    ctl target create vm-guest --volume-id "$volume" "$@" | awk '{print $NF}'
}

unassign() { ctl target delete "$1" >/dev/null; }

# wait_volume VOLUME STATE [TIMEOUT] : records a check; leaves the volume's report in $REPORT.
REPORT=""
wait_volume() {
    local volume=$1 state=$2 t=${3:-60} rc=0
    REPORT=$(ctl wait vm-guest "$volume" --state "$state" --timeout "$t" 2>"$WORK/wait.err") || rc=$?
    if ((rc == 0)); then
        pass "$volume reported $state"
    else
        fail "$volume reported $state" "state $state within ${t}s" "$(cat "$WORK/wait.err")"
        return 1
    fi
}

# agent_state VOLUME : the volume's state in the agent's own status file (fresh, unlike the
# conductor's last report), or `gone`; nothing while there is no status file.
agent_state() {
    python3 - "$TETHER_STATE/status.json" "$1" <<'PY' 2>/dev/null
import json, sys
try:
    status = json.load(open(sys.argv[1]))
except OSError:
    sys.exit(0)
states = [v["state"] for v in status["report"]["volumes"] if v["volume_id"] == sys.argv[2]]
print(states[0] if states else "gone")
PY
}

# wait_agent_state VOLUME STATE WHAT [TIMEOUT_S] : records a check that the agent's status file
# says STATE for VOLUME within TIMEOUT_S (90).
wait_agent_state() {
    local i state t=${4:-90}
    for ((i = 0; i < t * 4; i++)); do
        state=$(agent_state "$1")
        [[ $state == "$2" ]] && { pass "$3: the agent reports $1 $2"; return 0; }
        sleep 0.25
    done
    fail "$3: the agent reports $1 $2" "$2 within $t s" "${state:-no status}; agent log: $RESULT_DIR/agent.log"
    return 1
}

# field KEY : a string field of $REPORT (null prints nothing).
field() { sed -n "s/^  \"$1\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" <<<"$REPORT"; }

# sessions_to IQN : how many sessions sysfs has to IQN.
sessions_to() {
    local n=0 f
    for f in /sys/class/iscsi_session/session*/targetname; do
        [[ -e $f && $(cat "$f") == "$1" ]] && n=$((n + 1))
    done
    echo "$n"
}

# session_ids IQN : the session numbers of IQN's sessions.
session_ids() {
    local f
    for f in /sys/class/iscsi_session/session*/targetname; do
        [[ -e $f && $(cat "$f") == "$1" ]] && basename "$(dirname "$f")"
    done | tr '\n' ' '
}

has_record() { iscsiadm -m node -T "$1" -p "$2" >/dev/null 2>&1 && echo yes || echo no; }

# roundtrip DEVICE BACKING : writes random data through DEVICE and checks it in LIO's backing file.
roundtrip() {
    local dev=$1 backing=$2 want
    dd if=/dev/urandom of="$WORK/data" bs=1M count=2 status=none
    dd if="$WORK/data" of="$dev" bs=1M oflag=direct conv=fsync status=none
    want=$(sha256sum <"$WORK/data" | cut -d' ' -f1)
    expect_eq "data written through $dev reads back" "$want" \
        "$(dd if="$dev" bs=1M count=2 iflag=direct status=none | sha256sum | cut -d' ' -f1)"
    expect_eq "data reached the target's backing file" "$want" \
        "$(head -c 2097152 "$backing" | sha256sum | cut -d' ' -f1)"
}

# no_secret_leak SECRET... : none of the secrets is in the agent's or conductor's log, the
# agent's state files, the report, or a world-readable open-iscsi file. The target cache (the
# state directory's targets/, for re-attaching without the conductor) keeps them by design:
# there they must be root's only.
no_secret_leak() {
    local s where cached f
    for s in "$@"; do
        where=$(grep -rlF --exclude-dir=targets -- "$s" "$RESULT_DIR"/agent.log "$RESULT_DIR"/conductor.log "$TETHER_STATE" 2>/dev/null || true)
        expect_eq "secret not in logs or state files" "" "$where"
        cached=$(grep -rlF -- "$s" "$TETHER_STATE/targets" 2>/dev/null || true)
        for f in $cached; do
            expect_eq "a cached target with the secret is root's only: $f" "600 700" \
                "$(stat -c %a "$f") $(stat -c %a "$(dirname "$f")")"
        done
        expect_eq "secret not in the report" "" "$(ctl status vm-guest --json | grep -F -- "$s" || true)"
        where=$(find /etc/iscsi -type f -perm /o+r -exec grep -lF -- "$s" {} + 2>/dev/null || true)
        expect_eq "secret in no world-readable open-iscsi file" "" "$where"
    done
}
