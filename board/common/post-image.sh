#!/bin/sh
# Buildroot post-image script: assembles sdcard.img (and sdcard.img.xz) with the
# board's genimage.cfg. $1 is the images directory, $2 the board
# (BR2_ROOTFS_POST_SCRIPT_ARGS).
set -eu

BINARIES=$1
BOARD_DIR=$(dirname "$0")/../${2:?the board, from BR2_ROOTFS_POST_SCRIPT_ARGS}

# The boot partition's skerry/ folder: where provision.toml goes.
rm -rf "$BINARIES/skerry"
cp -r "$(dirname "$0")/boot/skerry" "$BINARIES/skerry"

if [ -d "$BINARIES/rpi-firmware" ]; then
	# Only images built from Debian's kernel have an initramfs.
	if [ ! -e "$BINARIES/initrd.img" ]; then
		sed -i '/^initramfs /d' "$BINARIES/rpi-firmware/config.txt"
	fi
fi
if [ -f "$BOARD_DIR/boot.cmd" ]; then
	# U-Boot boards: the A/B boot script (host-uboot-tools' mkimage).
	"$HOST_DIR/bin/mkimage" -A arm64 -O linux -T script -C none \
		-n "Skerry A/B boot" -d "$BOARD_DIR/boot.cmd" "$BINARIES/boot.scr"
fi
# Slot B's boot partition, empty until an update writes it.
echo "Slot B: empty until an over-the-air update writes it." >"$BINARIES/EMPTY.TXT"

# genimage copies its root path; an empty one, as it only assembles images.
ROOTPATH=$(mktemp -d)
trap 'rm -rf "$ROOTPATH"' EXIT
rm -rf "$BUILD_DIR/genimage.tmp"
genimage \
	--rootpath "$ROOTPATH" \
	--tmppath "$BUILD_DIR/genimage.tmp" \
	--inputpath "$BINARIES" \
	--outputpath "$BINARIES" \
	--config "$BOARD_DIR/genimage.cfg"

if command -v xz >/dev/null; then
	xz -T 0 -k -f "$BINARIES/sdcard.img"
fi
