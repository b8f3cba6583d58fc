#!/usr/bin/env bash
# A Raspberry-Pi-OS-like base image for virtual boards, made from Debian
# packages: an MBR disk with a FAT32 partition labelled `bootfs` (mounted
# at /boot/firmware; cmdline.txt, config.txt, cloud-init's NoCloud seed
# user-data/meta-data, read from there as on Trixie) and an ext4 root with
# systemd, udev, a Debian kernel, cloud-init, avahi-daemon and dbus.
#
# Usage: scripts/board-base.sh [--arch amd64|arm64]
# Prints the directory holding disk.img, vmlinuz and initrd.img (a virtual
# board's "firmware" boots the kernel with cmdline.txt, as a Pi's does).
#
# Built once per machine: the result is cached under
# ${SKELPI_BOARD_CACHE:-~/.cache/skelpi/boards}, named by a hash of this
# script and its arguments, so a change here builds a new one. No loop
# mounts: mmdebstrap into a directory, mkfs.ext4 -d, mkfs.vfat + mtools,
# sfdisk on a plain file. Needs root (mmdebstrap's root mode) and the
# Debian packages mmdebstrap, e2fsprogs, dosfstools, mtools, fdisk.
# SKELPI_MIRROR: the Debian mirror (default deb.debian.org).
set -euo pipefail

die() {
    echo "board-base: $*" >&2
    exit 2
}

arch=amd64
while (($#)); do
    case $1 in
    --arch)
        arch=${2:?--arch needs amd64 or arm64}
        shift 2
        ;;
    -h | --help)
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
case $arch in
amd64 | arm64) ;;
*) die "--arch $arch: virtual boards are amd64 or arm64" ;;
esac

suite=bookworm
mirror=${SKELPI_MIRROR:-http://deb.debian.org/debian}
cache=${SKELPI_BOARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skelpi/boards}
key=$({
    cat "$0"
    echo "$arch $suite"
} | sha256sum | cut -c1-16)
out=$cache/$suite-$arch-$key
if [[ -f $out/disk.img ]]; then
    echo "$out"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "building the base needs root (mmdebstrap's root mode); run as root"
for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy sfdisk; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing: apt-get install mmdebstrap e2fsprogs dosfstools mtools fdisk"
done
if [[ $arch != "$(dpkg --print-architecture)" ]] &&
    ! [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    die "building an $arch root here needs qemu-user-static registered in binfmt_misc"
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

packages=(systemd systemd-sysv udev dbus "linux-image-$arch" initramfs-tools
    cloud-init avahi-daemon libnss-mdns iproute2 netbase openssh-server sudo)
echo "board-base: mmdebstrap $suite $arch (${packages[*]})" >&2
mmdebstrap --quiet --variant=minbase --architectures="$arch" \
    --include="$(
        IFS=,
        echo "${packages[*]}"
    )" \
    --customize-hook='mkdir -p "$1/boot/firmware"' \
    --customize-hook='printf "%s\n" "LABEL=rootfs / ext4 defaults,noatime 0 1" "LABEL=bootfs /boot/firmware vfat defaults 0 2" > "$1/etc/fstab"' \
    --customize-hook='echo raspberrypi > "$1/etc/hostname"' \
    --customize-hook='printf "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n" > "$1/etc/hosts"' \
    --customize-hook='printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\nMulticastDNS=no\n" > "$1/etc/systemd/network/20-wired.network"' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service' \
    --customize-hook='mkdir -p "$1/etc/cloud/cloud.cfg.d" && printf "%s\n" "datasource_list: [ NoCloud, None ]" "datasource:" "  NoCloud:" "    seedfrom: file:///boot/firmware/" "network: {config: disabled}" > "$1/etc/cloud/cloud.cfg.d/99-skelpi-board.cfg"' \
    --customize-hook='mkdir -p "$1/etc/systemd/system/cloud-init-local.service.d" && printf "[Unit]\nRequiresMountsFor=/boot/firmware\n" > "$1/etc/systemd/system/cloud-init-local.service.d/boot-firmware.conf"' \
    --customize-hook=': > "$1/etc/machine-id"' \
    "$suite" "$root" "$mirror" >&2

cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"

# The boot partition: what a Pi's firmware reads, and the first-boot seed.
boot_mb=256
console=ttyS0
[[ $arch == arm64 ]] && console=ttyAMA0
echo "console=$console,115200 root=LABEL=rootfs rootfstype=ext4 fsck.repair=yes rootwait" >"$work/cmdline.txt"
printf '# A virtual board: qemu boots vmlinuz with cmdline.txt.\narm_64bit=1\n' >"$work/config.txt"
printf '#cloud-config\n' >"$work/user-data"
printf 'instance-id: base\ndsmode: local\n' >"$work/meta-data"
# The board's architecture, which `skelpi image` checks the agent against
# (a real Pi image has no such file: ARM agents only).
echo "$arch" >"$work/skelpi-board"
mkfs.vfat -n bootfs -F 32 -C "$work/boot.img" $((boot_mb * 1024)) >/dev/null
mcopy -i "$work/boot.img" "$work"/{cmdline.txt,config.txt,user-data,meta-data,skelpi-board} ::

# The root: its files plus room to grow (logs, the agent).
used_mb=$(du -sm "$root" | cut -f1)
root_mb=$((used_mb + used_mb / 3 + 256))
mkfs.ext4 -q -L rootfs -d "$root" "$work/root.img" "${root_mb}M"

# MBR: the FAT partition at 4 MiB, the root after it, as Raspberry Pi OS.
disk=$work/disk.img
truncate -s $((4 + boot_mb + root_mb))M "$disk"
sfdisk --quiet "$disk" <<EOF
label: dos
start=$((4 * 2048)), size=$((boot_mb * 2048)), type=c
start=$(((4 + boot_mb) * 2048)), size=$((root_mb * 2048)), type=83
EOF
dd if="$work/boot.img" of="$disk" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$disk" bs=1M seek=$((4 + boot_mb)) conv=notrunc,sparse status=none
rm -rf "$root" "$work/boot.img" "$work/root.img"

mv "$work" "$out"
trap - EXIT
# Bases this script made before it changed are of no further use.
for old in "$cache/$suite-$arch"-*; do
    [[ $old == "$out" ]] || rm -rf "$old"
done
echo "$out"
