#!/bin/sh
# Buildroot post-build script: $1 is the target directory, $2 the board
# (BR2_ROOTFS_POST_SCRIPT_ARGS).
set -eu

TARGET=$1

# Skerry's own start scripts mount the card, log to the data partition and bring
# the network up; these package scripts would do it too early, or twice.
for s in S01syslogd S02klogd S35iptables S40network; do
	rm -f "$TARGET/etc/init.d/$s"
done

# Root's console password comes from the boot partition at each boot (S04console
# writes /run/skerry/shadow); the image's own shadow is only its template.
if [ ! -L "$TARGET/etc/shadow" ]; then
	mv "$TARGET/etc/shadow" "$TARGET/etc/shadow.image"
fi
ln -sfn /run/skerry/shadow "$TARGET/etc/shadow"

# The clock's floor on a board without a real-time clock (see S01storage).
mkdir -p "$TARGET/etc/skerry"
echo "${SOURCE_DATE_EPOCH:-$(date +%s)}" > "$TARGET/etc/skerry/build-time"

# The agent's bridge networks need these plugins; Buildroot's cni-plugins package
# leaves out host-local, which external.mk adds back.
for p in bridge host-local loopback portmap; do
	if [ ! -x "$TARGET/opt/cni/bin/$p" ]; then
		echo "post-build: CNI plugin $p is missing from /opt/cni/bin" >&2
		exit 1
	fi
done
