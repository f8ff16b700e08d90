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
else
	# QEMU: the kernel command line sits next to the kernel, for the runner.
	cp "$BOARD_DIR/cmdline.txt" "$BINARIES/cmdline.txt"
fi

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
