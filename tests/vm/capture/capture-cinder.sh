# shellcheck shell=bash disable=SC2154
# Capture real Cinder API answers (Debian 12's Cinder 21.x in the guest, tests/vm/cinder.sh) for
# tether's Cinder client tests: attachments with a connector for an LVM (LIO, CHAP) and an RBD
# volume, os-complete, the volume and attachment before and after, the lists, and the errors.
# Everything goes to $RESULT_DIR/fixtures/; `scripts/vm/capture-fixtures --cinder` copies it
# into tests/fixtures/cinder/. Plain curl (cinder_api), microversion 3.70 unless stated.
# CHAP credentials and the cephx key are replaced by fixed fakes of the same shape at the end.
# vm-timeout: 1500

source "$SHARE/vm/ceph.sh"
source "$SHARE/vm/cinder.sh"

FIX=$RESULT_DIR/fixtures
mkdir -p "$FIX"
INDEX=$FIX/index.txt
printf '# name | HTTP status | method path | microversion | ms (see README.md)\n' >"$INDEX"
CONNECTOR='{"initiator": "iqn.2004-10.com.ubuntu:01:abc", "ip": "127.0.0.1", "host": "vm-guest", "platform": "x86_64", "os_type": "linux", "multipath": false}'
OTHER_CONNECTOR='{"initiator": "iqn.2004-10.com.ubuntu:01:other", "ip": "127.0.0.2", "host": "other-node", "platform": "x86_64", "os_type": "linux", "multipath": false}'
# Fixed ids that exist nowhere.
NO_SUCH=00000000-0000-4000-8000-00000000dead

# cap NAME METHOD PATH [JSON] : NAME.json (the body as Cinder sent it, if any) and NAME.http
# (request line, microversion, request body, status, response headers); a line in index.txt.
cap() {
    local name=$1 method=$2 path=$3 body=${4:-} t0 ms code
    t0=$(now_ms)
    cinder_api "$method" "$path" "$body" >"$FIX/$name.json" || true
    ms=$(($(now_ms) - t0))
    code=$(cinder_last_status)
    [[ -s $FIX/$name.json ]] || rm -f "$FIX/$name.json"
    {
        if [[ $path == /* ]]; then printf '%s %s\n' "$method" "$path"; else printf '%s /v3/{project_id}/%s\n' "$method" "$path"; fi
        printf 'OpenStack-API-Version: volume %s\n' "$CINDER_API_VERSION"
        [[ -n $body ]] && printf 'request body: %s\n' "$body"
        printf 'status: %s\n\n' "$code"
        tr -d '\r' <"$WORK/cinder-api.headers"
    } >"$FIX/$name.http"
    printf '%s | %s | %s %s | %s | %s\n' "$name" "$code" "$method" "$path" "$CINDER_API_VERSION" "$ms" >>"$INDEX"
    log "captured $name: HTTP $code in $ms ms"
    CAP_STATUS=$code
}
attach_body() { # VOLUME_ID [CONNECTOR] [MODE]
    printf '{"attachment": {"volume_uuid": "%s", "connector": %s, "mode": "%s"}}' "$1" "${2:-$CONNECTOR}" "${3:-rw}"
}
jfield() { jq -r "$2" "$FIX/$1.json"; }

cinder_up

lvm=$(cinder_create fx-lvm 1 lvm)
rbd=$(cinder_create fx-rbd 1 rbd)

cap versions GET /
cap volume-lvm-available GET "volumes/$lvm"
cap volume-rbd-available GET "volumes/$rbd"
cap volume-types GET types

# --- LVM: attachment with a connector (the export: ~60 s under TCG), os-complete -------------
cap attachment-create-lvm POST attachments "$(attach_body "$lvm")"
expect_eq "LVM attachment created" 200 "$CAP_STATUS"
att_lvm=$(jfield attachment-create-lvm .attachment.id)
_cinder_time attachment-create-lvm "$(awk -F' [|] ' '$1 == "attachment-create-lvm" {print $5}' "$INDEX")"
cap volume-lvm-attaching GET "volumes/$lvm"
cap attachment-lvm-before-complete GET "attachments/$att_lvm"
cap attachment-complete-lvm POST "attachments/$att_lvm/action" '{"os-complete": null}'
expect_eq "LVM attachment completed" 204 "$CAP_STATUS"
cap volume-lvm-in-use GET "volumes/$lvm"
cap attachment-lvm-after-complete GET "attachments/$att_lvm"
expect_eq "LVM volume in-use after os-complete" in-use "$(jfield volume-lvm-in-use .volume.status)"
ls -R /sys/kernel/config/target/iscsi >"$FIX/lio-configfs-lvm-attached.txt" 2>&1 || true

# --- RBD ---------------------------------------------------------------------------------------
cap attachment-create-rbd POST attachments "$(attach_body "$rbd")"
expect_eq "RBD attachment created" 200 "$CAP_STATUS"
att_rbd=$(jfield attachment-create-rbd .attachment.id)
cap volume-rbd-attaching GET "volumes/$rbd"
cap attachment-rbd-before-complete GET "attachments/$att_rbd"
cap attachment-complete-rbd POST "attachments/$att_rbd/action" '{"os-complete": null}'
cap volume-rbd-in-use GET "volumes/$rbd"
cap attachment-rbd-after-complete GET "attachments/$att_rbd"
expect_eq "RBD volume in-use after os-complete" in-use "$(jfield volume-rbd-in-use .volume.status)"

# --- lists --------------------------------------------------------------------------------------
cap attachments-by-volume-lvm GET "attachments?volume_id=$lvm"
cap attachments-detail-by-volume-lvm GET "attachments/detail?volume_id=$lvm"
cap attachments-by-volume-rbd GET "attachments?volume_id=$rbd"
cap volumes-detail GET volumes/detail
cap volumes-detail-by-name GET "volumes/detail?name=fx-rbd"
cap volumes-detail-by-name-none GET "volumes/detail?name=no-such-volume"

# --- errors ---------------------------------------------------------------------------------------
cap error-attachment-create-missing-volume POST attachments "$(attach_body "$NO_SUCH")"
err=$(cinder_create fx-error 1 rbd)
cap volume-reset-status-error POST "volumes/$err/action" '{"os-reset_status": {"status": "error"}}'
cap volume-error GET "volumes/$err"
cap error-attachment-create-volume-error POST attachments "$(attach_body "$err")"
# The RBD volume is in-use (multiattach false) by the attachment above: a second node asks.
cap error-attachment-create-in-use POST attachments "$(attach_body "$rbd" "$OTHER_CONNECTOR")"
# (Should Cinder ever accept it, do not leak it.)
if [[ $CAP_STATUS == 200 ]]; then cinder_api DELETE "attachments/$(jfield error-attachment-create-in-use .attachment.id)" >/dev/null || true; fi
cap error-attachment-create-no-volume-uuid POST attachments "{\"attachment\": {\"connector\": $CONNECTOR, \"mode\": \"rw\"}}"
cap error-attachment-create-bad-mode POST attachments "$(attach_body "$lvm" "$CONNECTOR" rx)"
cap error-attachment-create-bad-json POST attachments '{"attachment": {"volume_uuid": '
cap error-attachment-create-not-a-uuid POST attachments "$(attach_body not-a-uuid)"
CINDER_API_VERSION=3.71 cap error-microversion-3.71 POST attachments "$(attach_body "$lvm")"
CINDER_API_VERSION=3.26 cap error-microversion-3.26-attachments POST attachments "$(attach_body "$lvm")"
CINDER_API_VERSION=3.53 cap error-microversion-3.53-mode POST attachments "$(attach_body "$err")"
cap error-attachment-show-missing GET "attachments/$NO_SUCH"
cap error-attachment-complete-missing POST "attachments/$NO_SUCH/action" '{"os-complete": null}'
cap error-attachment-delete-missing DELETE "attachments/$NO_SUCH"
cap error-volume-show-missing GET "volumes/$NO_SUCH"
cinder_delete "$err" || true

# --- delete the attachments (LVM: the unexport, ~50 s) --------------------------------------------
cap attachment-delete-lvm DELETE "attachments/$att_lvm"
_cinder_time attachment-delete-lvm "$(awk -F' [|] ' '$1 == "attachment-delete-lvm" {print $5}' "$INDEX")"
cap attachment-delete-rbd DELETE "attachments/$att_rbd"
cinder_wait_status "$lvm" available 120 || true
cinder_wait_status "$rbd" available 120 || true
cap volume-lvm-after-delete GET "volumes/$lvm"
cap attachments-by-volume-lvm-after-delete GET "attachments?volume_id=$lvm"
expect_eq "no attachment left on the LVM volume" '[]' "$(jq -c .attachments "$FIX/attachments-by-volume-lvm-after-delete.json")"
ls -R /sys/kernel/config/target/iscsi >"$FIX/lio-configfs-lvm-detached.txt" 2>&1 || true

# A reservation without a connector (what Nova does first), on the now available RBD volume:
# no connection_info yet.
cap attachment-create-no-connector POST attachments "{\"attachment\": {\"volume_uuid\": \"$rbd\", \"mode\": \"rw\"}}"
if [[ $CAP_STATUS == 200 ]]; then
    res=$(jfield attachment-create-no-connector .attachment.id)
    cap volume-rbd-reserved GET "volumes/$rbd"
    cap attachment-reserved-no-connector GET "attachments/$res"
    # Then the connector (Nova's second step): `PUT /attachments/{id}` exports the volume and
    # answers with the connection_info.
    cap attachment-update-connector-rbd PUT "attachments/$res" "{\"attachment\": {\"connector\": $CONNECTOR}}"
    cap volume-rbd-after-update GET "volumes/$rbd"
    cap attachment-update-connector-again PUT "attachments/$res" "{\"attachment\": {\"connector\": $CONNECTOR}}"
    cap attachment-complete-after-update POST "attachments/$res/action" '{"os-complete": null}'
    cap volume-rbd-in-use-after-update GET "volumes/$rbd"
    cap attachment-delete-after-update DELETE "attachments/$res"
fi
cap error-attachment-update-missing PUT "attachments/$NO_SUCH" "{\"attachment\": {\"connector\": $CONNECTOR}}"
# With an instance_uuid (what Nova sends): since the fix of bug #2004555 Cinder lets a user (not
# a service with a service token) delete such an attachment only when Nova says the server
# does not have it. Without Nova to ask, the owner cannot delete it (500), nor force-detach it.
INSTANCE=7e0a1c4e-5d6f-4a8b-9c0d-1e2f3a4b5c6d
cap instance-uuid-attachment-create POST attachments \
    "{\"attachment\": {\"volume_uuid\": \"$rbd\", \"instance_uuid\": \"$INSTANCE\", \"connector\": $CONNECTOR, \"mode\": \"rw\"}}"
if [[ $CAP_STATUS == 200 ]]; then
    inst_att=$(jfield instance-uuid-attachment-create .attachment.id)
    cap instance-uuid-attachment-delete DELETE "attachments/$inst_att"
    cap instance-uuid-attachments-by-instance GET "attachments?instance_id=$INSTANCE"
    cap instance-uuid-force-detach POST "volumes/$rbd/action" "{\"os-force_detach\": {\"attachment_id\": \"$inst_att\"}}"
fi

cinder_delete "$lvm" || true
cinder_delete "$rbd" || true

# --- secrets: fixed fakes of the same shape ---------------------------------------------------------
chap_user=$(jfield attachment-create-lvm .attachment.connection_info.auth_username)
chap_pass=$(jfield attachment-create-lvm .attachment.connection_info.auth_password)
expect_eq "CHAP user is 20 characters" 20 "${#chap_user}"
expect_eq "CHAP password is 16 characters" 16 "${#chap_pass}"
cephx=$(cinder_ceph_key)
CHAP_USER=$chap_user CHAP_PASS=$chap_pass CEPHX=$cephx FIX=$FIX python3 - <<'EOF'
import os, pathlib
fakes = {
    os.environ["CHAP_USER"]: "FakeChapUser20chars0",
    os.environ["CHAP_PASS"]: "FakeChapPass16ch",
    os.environ["CEPHX"]: "AQAAAAAAAAAAABAAZmFrZS1jZXBoeC1rZXkhIQ==",
}
for p in pathlib.Path(os.environ["FIX"]).iterdir():
    t = p.read_text()
    for real, fake in fakes.items():
        if real:
            t = t.replace(real, fake)
    p.write_text(t)
EOF
for s in "$chap_user" "$chap_pass" "$cephx"; do
    expect_eq "no real secret left in the fixtures" "" "$(grep -rlF -- "$s" "$FIX" || true)"
done

{
    echo "cinder: $(dpkg-query -W -f '${Version}' python3-cinder)"
    echo "rabbitmq-server: $(dpkg-query -W -f '${Version}' rabbitmq-server)"
    echo "ceph: $(dpkg-query -W -f '${Version}' ceph-mon) (one mon, one bluestore OSD, no mgr)"
    echo "python3-rtslib-fb: $(dpkg-query -W -f '${Version}' python3-rtslib-fb)"
    echo "kernel: $(uname -r)"
    echo "backends: lvm (LVMVolumeDriver, target_helper lioadm, 127.0.0.1:3260), rbd (pool $CINDER_CEPH_POOL, user $CINDER_CEPH_USER)"
    echo "project: $CINDER_PROJECT (noauth; X-Auth-Token: admin:<project>)"
} >"$FIX/versions.txt"
cp "$CINDER_CONF" "$FIX/cinder.conf"
