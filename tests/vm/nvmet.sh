# shellcheck shell=bash
# The kernel's own NVMe over TCP target (nvmet, nvmet-tcp), configured through configfs, for
# the NVMe scenarios. Sourced after lib.sh. Namespaces are sparse files under $NVMET_DIR.

NVMET=/sys/kernel/config/nvmet
NVMET_DIR=/var/tmp/nvmet
NVME_PORT=4420

# nvmet_up : the target and host modules, configfs, and port 1 on 127.0.0.1:$NVME_PORT.
nvmet_up() {
    local t0
    t0=$(now_ms)
    modprobe -a nvmet nvmet-tcp nvme-tcp nvme-fabrics
    mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
    mkdir -p "$NVMET_DIR"
    nvmet_port 1 127.0.0.1 "$NVME_PORT"
    note nvmet_up_ms $(($(now_ms) - t0))
}

# _nvme_rmmod MODULE : unloads it after whatever holds it (nvme, nvme-rdma… hold nvme-core).
_nvme_rmmod() {
    local h
    [[ -d /sys/module/$1 ]] || return 0
    for h in /sys/module/"$1"/holders/*; do
        if [[ -e $h ]]; then _nvme_rmmod "$(basename "$h")"; fi
    done
    rmmod "$1"
}

# nvme_auth_modules_load : the NVMe host and target modules rebuilt with DH-HMAC-CHAP
# (scripts/vm/build-nvme-auth; the guest's stock kernel has none) in place of the stock ones,
# before nvmet_up. The scenario declares `# vm-needs: nvme-auth` so that the host puts them in
# $SHARE/nvme-auth. They stay loaded for the rest of the boot.
nvme_auth_modules_load() {
    local dir=$SHARE/nvme-auth order=() m name dep mine=1 t0
    t0=$(now_ms)
    if [[ ! -f $dir/modules.order ]]; then
        fail "rebuilt NVMe modules on the share" "$dir/modules.order (# vm-needs: nvme-auth)" "none"
        return 1
    fi
    if [[ $(cat "$dir/kernel") != "$(uname -r)" ]]; then
        fail "rebuilt NVMe modules match the kernel" "$(uname -r)" "$(cat "$dir/kernel")"
        return 1
    fi
    mapfile -t order <"$dir/modules.order"
    # Already ours (an earlier scenario of this boot): the same srcversion. The stock kernel
    # has no nvme-common module.
    [[ -d /sys/module/nvme_common ]] || mine=0
    for m in "${order[@]}"; do
        ((mine)) || break
        [[ $(cat "/sys/module/${m//-/_}/srcversion" 2>/dev/null) == "$(modinfo -F srcversion "$dir/$m.ko")" ]] || mine=0
    done
    ((mine)) && return 0
    # Stock modules out (their controllers and target first), each after whatever holds it.
    log "nvme-auth: unloading the stock NVMe modules"
    nvmet_cleanup
    for ((m = ${#order[@]} - 1; m >= 0; m--)); do
        _nvme_rmmod "${order[m]//-/_}"
    done
    for m in "${order[@]}"; do
        # The stock dependencies (configfs, t10-pi…) by modprobe; the rebuilt ones are loaded
        # already, in order.
        for dep in $(modinfo -F depends "$dir/$m.ko" | tr ',' ' '); do
            grep -qx -- "$dep" "$dir/modules.order" || modprobe "$dep"
        done
        log "nvme-auth: insmod $m.ko"
        insmod "$dir/$m.ko"
    done
    # nvmet's configfs attribute exists only with CONFIG_NVME_TARGET_AUTH.
    mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
    name=$NVMET/hosts/nqn.2014-08.test.tether:probe
    mkdir "$name"
    [[ -e $name/dhchap_key ]] || { rmdir "$name"; fail "nvmet with DH-HMAC-CHAP" "$name/dhchap_key" "absent"; return 1; }
    rmdir "$name"
    note nvme_auth_modules_load_ms $(($(now_ms) - t0))
}

# nvmet_port ID ADDRESS PORT : a TCP listener.
nvmet_port() {
    local dir=$NVMET/ports/$1
    mkdir -p "$dir"
    echo tcp >"$dir/addr_trtype"
    echo ipv4 >"$dir/addr_adrfam"
    echo "$2" >"$dir/addr_traddr"
    echo "$3" >"$dir/addr_trsvcid"
}

# nvmet_subsystem NQN [PORT_ID] : a subsystem any host may connect to, exported on the port.
nvmet_subsystem() {
    local dir=$NVMET/subsystems/$1
    mkdir -p "$dir"
    echo 1 >"$dir/attr_allow_any_host"
    ln -s "$dir" "$NVMET/ports/${2:-1}/subsystems/$1"
}

# nvmet_namespace NQN NSID SIZE : a namespace on a sparse file; prints its UUID.
nvmet_namespace() {
    local dir=$NVMET/subsystems/$1/namespaces/$2 file=$NVMET_DIR/${1//[:.]/_}-$2.img
    truncate -s "$3" "$file"
    mkdir -p "$dir"
    echo "$file" >"$dir/device_path"
    echo 1 >"$dir/enable"
    cat "$dir/device_uuid"
}

# nvmet_resize NQN NSID SIZE : grows the namespace's file and tells the target (revalidate).
nvmet_resize() {
    local dir=$NVMET/subsystems/$1/namespaces/$2
    truncate -s "$3" "$(cat "$dir/device_path")"
    if [[ -e $dir/revalidate_size ]]; then echo 1 >"$dir/revalidate_size"; fi
}

# nvmet_host_only NQN HOSTNQN [HOST_SECRET [CTRL_SECRET]] : only this host may connect, with
# DH-HMAC-CHAP when a secret is given.
nvmet_host_only() {
    local sub=$NVMET/subsystems/$1 host=$NVMET/hosts/$2
    mkdir -p "$host"
    if [[ -n ${3:-} ]]; then
        echo "hmac(sha256)" >"$host/dhchap_hash"
        echo "$3" >"$host/dhchap_key"
    fi
    if [[ -n ${4:-} ]]; then echo "$4" >"$host/dhchap_ctrl_key"; fi
    echo 0 >"$sub/attr_allow_any_host"
    ln -s "$host" "$sub/allowed_hosts/$2"
}

# dhchap_secret : a fresh DH-HMAC-CHAP secret (32 random bytes and their CRC-32, little
# endian), as `nvme gen-dhchap-key` makes one.
dhchap_secret() {
    python3 -c '
import base64, os, struct, zlib
key = os.urandom(32)
print("DHHC-1:00:" + base64.b64encode(key + struct.pack("<I", zlib.crc32(key))).decode() + ":")'
}

# nvme_controllers_to NQN : how many controllers of this host reach the subsystem.
nvme_controllers_to() {
    local n=0 c
    for c in /sys/class/nvme/nvme*; do
        [[ -e $c/subsysnqn ]] || continue
        [[ $(cat "$c/subsysnqn") == "$1" ]] && n=$((n + 1))
    done
    echo "$n"
}

# nvme_connect_by_hand NQN : what an administrator's `nvme connect` does (not the agent).
nvme_connect_by_hand() {
    local hostnqn
    hostnqn=$(cat /etc/nvme/hostnqn)
    exec 7<>/dev/nvme-fabrics
    printf 'nqn=%s,transport=tcp,traddr=127.0.0.1,trsvcid=%s,hostnqn=%s' "$1" "$NVME_PORT" "$hostnqn" >&7
    local answer=""
    read -r -u 7 answer || true
    exec 7>&-
    printf '%s\n' "$answer"
}

# nvmet_cleanup : every controller disconnected, the target taken down.
nvmet_cleanup() {
    local c d
    for c in /sys/class/nvme/nvme*; do
        [[ $(cat "$c/transport" 2>/dev/null) == tcp ]] && echo 1 >"$c/delete_controller" 2>/dev/null
    done
    [[ -d $NVMET ]] || return 0
    find "$NVMET/ports" -mindepth 3 -maxdepth 3 -type l -delete 2>/dev/null
    for d in "$NVMET"/subsystems/*; do
        [[ -d $d ]] || continue
        find "$d/allowed_hosts" -mindepth 1 -maxdepth 1 -type l -delete 2>/dev/null
        for n in "$d"/namespaces/*; do
            [[ -d $n ]] && { echo 0 >"$n/enable"; rmdir "$n"; }
        done
        rmdir "$d"
    done
    for d in "$NVMET"/hosts/* "$NVMET"/ports/*; do [[ -d $d ]] && rmdir "$d"; done
    rm -rf "$NVMET_DIR"
}
