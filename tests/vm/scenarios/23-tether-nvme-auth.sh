# shellcheck shell=bash disable=SC2154
# tether and NVMe/TCP with DH-HMAC-CHAP against the kernel's nvmet, both sides rebuilt with
# in-band authentication (the stock kernel has none; `vm-needs: nvme-auth`). Subsystem `one`
# admits only this host and wants its secret; `bidi` also answers with a controller secret.
# A wrong host secret -> failed, auth_failed, no controller; no secret -> failed, login_refused
# with a message that names DH-HMAC-CHAP, no controller; a wrong controller secret ->
# auth_failed, no controller; the right secrets -> attached (the kernel logs "authenticated"),
# the by-id uuid link reported, data round trip; unassign -> detached, controllers gone; the
# secrets in no log, report, state or world-readable file (the kernel's own sysfs copy aside:
# recorded in the notes).
# vm-timeout: 360
# vm-needs: nvme-auth
source "$SHARE/vm/tether.sh"
source "$SHARE/vm/nvmet.sh"
trap 'tether_down; nvmet_cleanup' EXIT
PORTAL=127.0.0.1:$NVME_PORT
ONE=nqn.2024-01.test.tether:auth-one
BIDI=nqn.2024-01.test.tether:auth-bidi

nvme_auth_modules_load
nvmet_up
nvmet_subsystem "$ONE"
one_uuid=$(nvmet_namespace "$ONE" 1 32M)
nvmet_subsystem "$BIDI"
bidi_uuid=$(nvmet_namespace "$BIDI" 1 32M)

# Secrets only in root-only files and shell variables: a check's arguments land on the share.
secret() { (umask 077 && dhchap_secret >"$WORK/$1") && cat "$WORK/$1"; }
host_key=$(secret host.key)
wrong_key=$(secret wrong.key)
ctrl_key=$(secret ctrl.key)
wrong_ctrl_key=$(secret wrong-ctrl.key)

tether_up
# The image's nvme-cli made one; the agent makes it at start when absent.
for ((i = 0; i < 100; i++)); do [[ -s /etc/nvme/hostnqn ]] && break; sleep 0.1; done
hostnqn=$(cat /etc/nvme/hostnqn)
nvmet_host_only "$ONE" "$hostnqn" "$host_key"
nvmet_host_only "$BIDI" "$hostnqn" "$host_key" "$ctrl_key"

# error_of KEY : the report's error.KEY.
error_of() {
    python3 -c 'import json, sys; e = json.loads(sys.argv[1]).get("error") or {}; print(e.get(sys.argv[2], ""))' \
        "$REPORT" "$1"
}
# expect_refused VOLUME KIND_ERE WHAT : failed with such a kind, and no controller of it left.
expect_refused() {
    wait_volume "$1" failed 90 || return 0
    expect_match "$3: the kind" "$2" "$(error_of kind)"
    note "$1_message" "$(error_of message)"
}

log "wrong host secret and no secret, to the subsystem that wants one"
wrong=$(assign vol-wrong --portal "$PORTAL" --nqn "$ONE" --ns-uuid "$one_uuid" --dhchap-secret-file "$WORK/wrong.key")
none=$(assign vol-none --portal "$PORTAL" --nqn "$ONE" --ns-uuid "$one_uuid")
expect_refused vol-wrong '^auth_failed$' "a wrong host secret"
# The kernel answers EIO as for a wrong secret; without secrets the agent cannot tell an
# authentication refusal from another, and says so.
expect_refused vol-none '^login_refused$' "no secret"
expect_match "no secret: the message points at DH-HMAC-CHAP" 'DH-HMAC-CHAP' "$(error_of message)"
expect_eq "no controller to $ONE after the refusals" 0 "$(nvme_controllers_to "$ONE")"
expect_match "the kernel logged the wrong secret" 'qid 0: authentication failed' "$(dmesg | grep 'qid 0')"
expect_match "the kernel logged the missing secret" 'qid 0: no key' "$(dmesg | grep 'qid 0')"
unassign "$wrong"
unassign "$none"
wait_volume vol-wrong gone 60
wait_volume vol-none gone 60

log "the right host secret"
t0=$(now_ms)
right=$(assign vol-right --portal "$PORTAL" --nqn "$ONE" --ns-uuid "$one_uuid" --dhchap-secret-file "$WORK/host.key")
wait_volume vol-right attached 90
note attach_with_dhchap_ms $(($(now_ms) - t0))
expect_eq "reported device path" "/dev/disk/by-id/nvme-uuid.$one_uuid" "$(field device_path)"
expect_match "reported size" '"size_bytes": 33554432' "$REPORT"
expect_eq "one controller to $ONE" 1 "$(nvme_controllers_to "$ONE")"
expect_match "the kernel authenticated the admin queue" 'qid 0: authenticated' "$(dmesg | grep 'qid 0')"
roundtrip "$(field device_path)" "$NVMET_DIR/${ONE//[:.]/_}-1.img"
# The kernel shows a controller's secrets in sysfs, mode 0644: the agent makes them root's only.
for c in /sys/class/nvme/nvme*; do
    [[ $(cat "$c/subsysnqn" 2>/dev/null) == "$ONE" && -e $c/dhchap_secret ]] || continue
    expect_eq "the controller's secret in sysfs is root's only" 600 "$(stat -c %a "$c/dhchap_secret")"
    expect_eq "another user cannot read it" "" \
        "$(setpriv --reuid=65534 --regid=65534 --clear-groups cat "$c/dhchap_secret" 2>/dev/null || true)"
done

log "bidirectional: a wrong controller secret, then the right one"
badctrl=$(assign vol-badctrl --portal "$PORTAL" --nqn "$BIDI" --ns-uuid "$bidi_uuid" \
    --dhchap-secret-file "$WORK/host.key" --dhchap-ctrl-secret-file "$WORK/wrong-ctrl.key")
expect_refused vol-badctrl '^auth_failed$' "a wrong controller secret"
expect_eq "no controller to $BIDI after the refusal" 0 "$(nvme_controllers_to "$BIDI")"
expect_match "the kernel logged the controller's wrong answer" 'qid 0: controller authentication failed' \
    "$(dmesg | grep 'qid 0')"
unassign "$badctrl"
wait_volume vol-badctrl gone 60
bidi=$(assign vol-bidi --portal "$PORTAL" --nqn "$BIDI" --ns-uuid "$bidi_uuid" \
    --dhchap-secret-file "$WORK/host.key" --dhchap-ctrl-secret-file "$WORK/ctrl.key")
wait_volume vol-bidi attached 90
expect_eq "bidirectional: reported device path" "/dev/disk/by-id/nvme-uuid.$bidi_uuid" "$(field device_path)"
expect_eq "one controller to $BIDI" 1 "$(nvme_controllers_to "$BIDI")"
roundtrip "$(field device_path)" "$NVMET_DIR/${BIDI//[:.]/_}-1.img"

log "unassign"
unassign "$right"
unassign "$bidi"
wait_volume vol-right gone 60
wait_volume vol-bidi gone 60
expect_eq "no controller to $ONE after the detach" 0 "$(nvme_controllers_to "$ONE")"
expect_eq "no controller to $BIDI after the detach" 0 "$(nvme_controllers_to "$BIDI")"
udevadm settle --timeout=30 || true
expect_eq "the by-id links are gone" "" \
    "$(ls "/dev/disk/by-id/nvme-uuid.$one_uuid" "/dev/disk/by-id/nvme-uuid.$bidi_uuid" 2>/dev/null || true)"

no_secret_leak "$host_key" "$wrong_key" "$ctrl_key" "$wrong_ctrl_key"
for s in "$host_key" "$wrong_key" "$ctrl_key" "$wrong_ctrl_key"; do
    where=$(find /etc /run /tmp /var -xdev -type f -perm /o+r -exec grep -lF -- "$s" {} + 2>/dev/null || true)
    expect_eq "secret in no world-readable file" "" "$where"
    expect_eq "secret not in the kernel log" "" "$(dmesg | grep -F -- "$s" || true)"
done
tether_down
