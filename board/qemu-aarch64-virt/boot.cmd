# Skerry's A/B boot, run by U-Boot from the boot partition as boot.scr
# (scripts/image-build makes it with mkimage). U-Boot's distro boot found it on
# ${devtype} ${devnum}; the slots are on the same disk:
#   slot A: kernel and initramfs on partition 5 (FAT), root on 2
#   slot B: kernel and initramfs on partition 6 (FAT), root on 3
# The boot state (BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT) is a U-Boot environment
# with a CRC (env export -c), kept twice in raw sectors before partition 1:
# copy 1 at sector 2048, copy 2 at sector 2176, 8 sectors each. It is written
# copy 1 then copy 2 and read copy 1 first, so a power cut during either write
# leaves one whole copy (the new state or the one before). The agent reads and
# writes the same two copies (the agent's os::boot): it resets the running slot's
# count once the device is healthy, and reads the fallback from BOOT_ORDER.
# Each boot takes one try from the first slot in BOOT_ORDER that has tries
# left; a slot whose tries are spent is skipped, so three failed boots of a new
# slot boot the other. No boot delay: nothing waits for a key.

# Scratch memory for the state: not scriptaddr, where this script is.
setenv skerry_addr ${pxefile_addr_r}
setenv BOOT_ORDER "A B"
setenv BOOT_A_LEFT 3
setenv BOOT_B_LEFT 3
${devtype} dev ${devnum}
if ${devtype} read ${skerry_addr} 0x800 0x8 && env import -c ${skerry_addr} 0x1000 BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; then
	echo "skerry: boot state from copy 1"
elif ${devtype} read ${skerry_addr} 0x880 0x8 && env import -c ${skerry_addr} 0x1000 BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; then
	echo "skerry: boot state from copy 2 (copy 1 is damaged)"
else
	echo "skerry: no boot state on the card: first boot, slot A first"
fi
# What an import may lack or garble, made whole again.
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 0
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 0

setenv skerry_save 'env export -c -s 0x1000 ${skerry_addr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT && ${devtype} write ${skerry_addr} 0x800 0x8 && ${devtype} write ${skerry_addr} 0x880 0x8'

setenv skerry_slot
for s in ${BOOT_ORDER}; do
	if test -z "${skerry_slot}"; then
		if test "${s}" = A && test ${BOOT_A_LEFT} -gt 0; then
			setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
			setenv skerry_slot A
			setenv skerry_bootpart 5
			setenv skerry_rootpart 02
		elif test "${s}" = B && test ${BOOT_B_LEFT} -gt 0; then
			setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
			setenv skerry_slot B
			setenv skerry_bootpart 6
			setenv skerry_rootpart 03
		fi
	fi
done
if test -z "${skerry_slot}"; then
	# Every try of both slots spent: start over rather than stop a device
	# nobody watches (the cause may have been a power cut, not the slot).
	echo "skerry: no slot has tries left; three more each"
	setenv BOOT_A_LEFT 3
	setenv BOOT_B_LEFT 3
	run skerry_save
	reset
fi
# The try is counted before it is taken.
run skerry_save || echo "skerry: cannot write the boot state"
echo "skerry: booting slot ${skerry_slot} (tries left: A ${BOOT_A_LEFT}, B ${BOOT_B_LEFT}; order ${BOOT_ORDER})"

if load ${devtype} ${devnum}:${skerry_bootpart} ${kernel_addr_r} Image; then
	setenv bootargs "console=ttyAMA0 root=PARTUUID=536b7279-${skerry_rootpart} rootfstype=squashfs ro rootwait skerry.slot=${skerry_slot}"
	if load ${devtype} ${devnum}:${skerry_bootpart} ${ramdisk_addr_r} initrd.img; then
		booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
	else
		booti ${kernel_addr_r} - ${fdtcontroladdr}
	fi
fi
# Reached only when the slot has no kernel or it does not start: spend its
# tries now rather than one per reset.
echo "skerry: slot ${skerry_slot} does not boot"
if test "${skerry_slot}" = A; then
	setenv BOOT_A_LEFT 0
else
	setenv BOOT_B_LEFT 0
fi
run skerry_save
reset
