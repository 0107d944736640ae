# shellcheck shell=bash disable=SC2154
# Checks for volumes that grow while mounted (scenarios 20 and 24). Sourced after tether.sh.

# grow_write MOUNT : 4 MiB of random data in MOUNT/before-grow.bin, synced; its sum in $GROW_SUM.
GROW_SUM=""
grow_write() {
    dd if=/dev/urandom of="$1/before-grow.bin" bs=1M count=4 conv=fsync status=none
    GROW_SUM=$(sha256sum <"$1/before-grow.bin" | cut -d' ' -f1)
}

# fs_bytes MOUNT : the file system's size as statfs says it.
fs_bytes() { echo $(($(stat -f -c '%b * %S' "$1"))); }

# expect_grown VOLUME TARGET MOUNT SIZE_BYTES : after `ctl target resize`, the agent reports the
# device at SIZE_BYTES with no error, still mounted, the file system grew, the data reads back
# (dropping the page cache first, so it comes from the device).
expect_grown() {
    local volume=$1 target=$2 mount=$3 size=$4 fs_before t0
    fs_before=$(fs_bytes "$mount")
    t0=$(now_ms)
    ctl target resize "$target" --size "$size" >/dev/null
    wait_report_match "$volume" "\"size_bytes\": $size" 90
    note "${volume}_grow_ms" $(($(now_ms) - t0))
    expect_match "$volume: still mounted" '"state": "mounted"' "$REPORT"
    expect_match "$volume: no error after the grow" '"error": null' "$REPORT"
    expect_eq "$volume: the device is the new size" "$size" \
        "$(blockdev --getsize64 "$(readlink -f "$(field device_path)")")"
    local fs_after
    fs_after=$(fs_bytes "$mount")
    expect_true "$volume: the file system grew online ($fs_before -> $fs_after bytes)" \
        test "$fs_after" -gt $((fs_before + size / 4))
    sync
    echo 3 >/proc/sys/vm/drop_caches
    expect_eq "$volume: the data written before the grow reads back" "$GROW_SUM" \
        "$(sha256sum <"$mount/before-grow.bin" | cut -d' ' -f1)"
}

# wait_report_match VOLUME REGEX TIMEOUT : waits until the volume's report matches; leaves it in
# $REPORT and records a check.
wait_report_match() {
    local volume=$1 want=$2 t=$3 i
    for ((i = 0; i < t * 2; i++)); do
        REPORT=$(ctl status vm-guest --json | python3 -c '
import json, sys
volume = sys.argv[1]
for v in (json.load(sys.stdin).get("report") or {}).get("volumes", []):
    if v["volume_id"] == volume:
        print(json.dumps(v, indent=2))' "$volume")
        if [[ $REPORT =~ $want ]]; then
            pass "$volume: report matches $want"
            return 0
        fi
        sleep 0.5
    done
    fail "$volume: report matches within ${t}s" "$want" "$REPORT"
    return 1
}
