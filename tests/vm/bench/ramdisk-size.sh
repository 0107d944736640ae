# shellcheck shell=bash disable=SC2154
# What tether adds to a dracut initramfs: the image's dracut builds the same initramfs (systemd,
# as tests/vm/ramdisk/40-dracut.sh does) without the tether module, with dracut's network module
# alone (what any ramdisk that reaches a conductor has), with tether as it comes, with
# tether_xfs=yes and with tether_rbd_cli=yes; each uncompressed and gzip-compressed (gzip -6,
# dracut's default where it finds no other compressor), and the largest files tether adds. Run
# through scripts/bench-ramdisk; numbers land in the result notes.
# vm-timeout: 1800

expect_rc "dpkg -i of the package" 0 dpkg -i "$SHARE/deb/tether.deb"
rm -rf /usr/lib/dracut/modules.d/95tether
cp -a "$SHARE/dracut/95tether" /usr/lib/dracut/modules.d/95tether
# A configuration that names a CA, as a real one would; the module takes it into the image.
mkdir -p /etc/tether/config.d
openssl_ca=/etc/tether/conductor-ca.pem
head -c 1200 /dev/urandom | base64 >"$openssl_ca"
printf '[agent]\nconductor_ca_file = "%s"\n' "$openssl_ca" >/etc/tether/config.d/50-ca.toml
MODULES="systemd systemd-initrd dracut-systemd base udev-rules"

# build NAME MODULES : builds $WORK/NAME.img, notes its sizes, lists it in $WORK/NAME.list.
build() {
    local name=$1 img=$WORK/$1.img t0
    t0=$(now_ms)
    if ! dracut --force --no-hostonly --no-hostonly-cmdline --no-early-microcode --no-compress \
        --kver "$(uname -r)" --modules "$2" --add-drivers "virtio_pci virtio_net" "$img" \
        >"$RESULT_DIR/dracut-$name.log" 2>&1; then
        fail "dracut builds $name" "exit 0" "$(tail -n 5 "$RESULT_DIR/dracut-$name.log")"
        return 1
    fi
    note "${name}_build_ms" $(($(now_ms) - t0))
    note "${name}_bytes" "$(stat -c %s "$img")"
    note "${name}_gzip_bytes" "$(gzip -6 -c "$img" | wc -c)"
    # size and path of every regular file
    cpio -itv --quiet <"$img" | awk '$1 ~ /^-/ {print $5, $9}' | sort -k2 >"$WORK/$name.list"
    pass "dracut builds $name"
}

# added BASE WITH : the files WITH has and BASE lacks, largest first, and their total.
added() {
    join -1 2 -2 2 -v 2 "$WORK/$1.list" "$WORK/$2.list" | awk '{print $2, $1}' | sort -n -r \
        >"$RESULT_DIR/added-$2-to-$1.txt"
    note "${2}_added_to_${1}_bytes" "$(awk '{s += $1} END {print s + 0}' "$RESULT_DIR/added-$2-to-$1.txt")"
    note "${2}_largest_added_to_${1}" "$(head -n 8 "$RESULT_DIR/added-$2-to-$1.txt" | awk '{printf "%s %.1fM; ", $2, $1 / 1048576}')"
}

mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

build without "$MODULES"
build network "$MODULES network"
build tether "$MODULES tether"
echo 'tether_xfs=yes' >/etc/dracut.conf.d/50-tether-xfs.conf
build tether_xfs "$MODULES tether"
rm -f /etc/dracut.conf.d/50-tether-xfs.conf
echo 'tether_rbd_cli=yes' >/etc/dracut.conf.d/50-tether-rbd-cli.conf
build tether_rbd_cli "$MODULES tether"
rm -f /etc/dracut.conf.d/50-tether-rbd-cli.conf
added without tether
added network tether
added without tether_xfs
added without tether_rbd_cli

# The summary scripts/bench-ramdisk prints.
{
    n() { sed -n "s/^$1: //p" "$RESULT_DIR/notes"; }
    base=$(n without_bytes) base_gz=$(n without_gzip_bytes)
    printf '%-34s %12s %12s %14s %14s\n' "dracut initramfs (systemd)" "MiB" "gzip MiB" "tether adds" "tether adds gz"
    for v in without network tether tether_xfs tether_rbd_cli; do
        b=$(n "${v}_bytes") g=$(n "${v}_gzip_bytes")
        printf '%-34s %12s %12s %14s %14s\n' "$v" "$(mib "$b")" "$(mib "$g")" \
            "$(mib $((b - base)))" "$(mib $((g - base_gz)))"
    done
    echo "largest files tether adds: $(n tether_largest_added_to_without)"
    echo "tether adds to the networked one (files): $(mib "$(n tether_added_to_network_bytes)") MiB, largest: $(n tether_largest_added_to_network)"
    echo "largest with tether_xfs=yes: $(n tether_xfs_largest_added_to_without)"
    echo "largest with tether_rbd_cli=yes: $(n tether_rbd_cli_largest_added_to_without)"
} >"$RESULT_DIR/sizes.txt"
cat "$RESULT_DIR/sizes.txt" >&2
