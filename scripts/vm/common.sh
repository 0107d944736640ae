# shellcheck shell=bash
# Host-side helpers shared by scripts/vm/*. Sourced, not executed.

# Logs go to stderr so that stdout stays machine-readable.
vm_log() { printf '[vm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
vm_die() { vm_log "error: $*"; exit 1; }

# Packages the host needs, as "command:package" pairs.
VM_HOST_NEEDS=(
    qemu-system-x86_64:qemu-system-x86
    mmdebstrap:mmdebstrap
    cpio:cpio
    mkfs.ext4:e2fsprogs
    depmod:kmod
    modprobe:kmod
    xz:xz-utils
    flock:util-linux
    timeout:coreutils
)

# apt-get on the host, one at a time: the IPA ramdisk builds in the background beside the
# suites (scripts/vm-test), and two apt-get at once fail on apt's locks instead of waiting.
# (The lock timeout is for an apt of someone else's, such as unattended-upgrades.)
vm_apt_get() {
    DEBIAN_FRONTEND=noninteractive flock -w 1800 /run/lock/tether-vm-apt.lock \
        apt-get -o DPkg::Lock::Timeout=600 "$@"
}

vm_apt_updated=0
vm_apt_update() {
    if [[ $vm_apt_updated == 0 ]]; then
        vm_log "apt-get update"
        vm_apt_get update -q >&2 || vm_die "apt-get update failed"
        vm_apt_updated=1
    fi
}

# Install whatever host tools are missing (CI runs on a fresh machine).
vm_ensure_host_packages() {
    local pair cmd pkg missing=()
    for pair in "${VM_HOST_NEEDS[@]}"; do
        cmd=${pair%%:*} pkg=${pair#*:}
        if ! command -v "$cmd" >/dev/null 2>&1 && ! [[ -x /usr/sbin/$cmd || -x /sbin/$cmd ]]; then
            [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
        fi
    done
    # seabios provides the firmware qemu needs even for a direct kernel boot.
    [[ -e /usr/share/seabios/bios.bin ]] || missing+=(seabios)
    if ((${#missing[@]})); then
        [[ $(id -u) == 0 ]] || vm_die "missing host packages (${missing[*]}); run as root or install them"
        vm_apt_update
        vm_log "installing host packages: ${missing[*]}"
        vm_apt_get install -y -q --no-install-recommends "${missing[@]}" >&2 \
            || vm_die "apt-get install ${missing[*]} failed"
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
}

# The Debian suite (codename) of the host; the guest uses the same one.
vm_host_suite() {
    local codename=""
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || vm_die "cannot tell the host's Debian codename from /etc/os-release"
    printf '%s\n' "$codename"
}

# Print the URI of the host's Debian archive for suite $1, read from the
# host's apt sources (deb822 *.sources and one-line *.list formats).
# TETHER_VM_MIRROR overrides it.
vm_debian_mirror() {
    local suite=$1 f
    if [[ -n ${TETHER_VM_MIRROR:-} ]]; then
        printf '%s\n' "$TETHER_VM_MIRROR"
        return
    fi
    local uri="" files=()
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        files+=("$f")
        if [[ $f == *.sources ]]; then
            # deb822: blank-line separated stanzas of "Key: value" fields.
            uri=$(awk -v suite="$suite" '
                function flush(   n, i, s, u) {
                    if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
                        n = split(suites, s, /[ \t]+/)
                        for (i = 1; i <= n; i++)
                            if (s[i] == suite) { split(uris, u, /[ \t]+/); print u[1]; found = 1; exit }
                    }
                    types = ""; uris = ""; suites = ""; enabled = ""
                }
                /^[ \t]*$/ { flush(); next }
                /^[ \t]*#/ { next }
                {
                    key = tolower($0); sub(/:.*/, "", key)
                    val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                END { if (!found) flush() }
            ' "$f")
        else
            # One-line format: deb [options] URI SUITE COMPONENT...
            uri=$(awk -v suite="$suite" '
                $1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit }
                }
            ' "$f")
        fi
        [[ -n $uri ]] && break
    done
    [[ -n $uri ]] || vm_die "no apt source for suite '$suite' found in ${files[*]:-/etc/apt}; set TETHER_VM_MIRROR"
    printf '%s\n' "${uri%/}"
}
