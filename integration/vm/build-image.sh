#!/usr/bin/env bash
# build-image.sh - a bootable Debian 12 (bookworm) qcow2 for fwagent's VM test, built from
# Debian's packages with mmdebstrap. Root; about 4 minutes; needs Debian's archive.
#
#   integration/vm/build-image.sh [OUTDIR]      (default /var/tmp/fwagent-vm)
#
# Result in OUTDIR: fwagent-bookworm.qcow2 (BIOS/GRUB, one ext4 partition, serial console,
# DHCP via systemd-networkd, user vagrant with passwordless sudo) and id_fwagent{,.pub}
# (the ssh key boot.sh uses; generated once). The image already holds everything the lab
# needs (Exim, swaks, nftables, python3 ...): the VM itself gets no network at test time.
#
# Pitfalls handled here, in the order they bite (found on this machine kind, see
# ../shared/vm/README.md of the project workspace for the measurements):
#   - other processes here create mount namespaces (`ip netns exec`) that would pin our
#     mounts and let the image be converted dirty: everything runs in a private mount
#     namespace, the file system is remounted read-only and fsck'ed before conversion;
#   - the host kernel has no partition-table support: the partition is attached by offset;
#   - grub-mkconfig ignores file-backed /dev/loopN and wants /dev/disk/by-uuid (no udev):
#     the partition is mounted through a node of another name plus a temporary link;
#   - grub-install cannot see the disk: core.img and boot.img are written by hand.
set -euo pipefail

OUT=${1:-/var/tmp/fwagent-vm}
SIZE=${SIZE:-4G}
SUITE=bookworm
# The archive this machine already uses (its own sources file), so no host is written here.
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
SECMIRROR=${SECMIRROR:-$MIRROR-security}
[ -n "$MIRROR" ] || { echo "set MIRROR to a Debian archive URI" >&2; exit 1; }
IMG=$OUT/fwagent-bookworm.qcow2
RAW=$OUT/fwagent-bookworm.raw
MNT=$OUT/mnt
VAGRANT_PUB=${VAGRANT_PUB:-/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys/vagrant.pub}

# System, then what the lab needs (same list as integration/install-deps.sh), then Exim.
PKGS=(linux-image-amd64 systemd systemd-sysv systemd-resolved udev dbus kmod initramfs-tools
      grub-pc e2fsprogs openssh-server sudo apt ca-certificates netbase less rsync
      nftables iproute2 iputils-ping procps util-linux python3 swaks libio-socket-inet6-perl
      exim4-daemon-light)

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if [ -z "${FWAGENT_IMAGE_NS:-}" ]; then
  exec env FWAGENT_IMAGE_NS=1 unshare -m --propagation private "$0" "$@"
fi
mkdir -p "$OUT"
t0=$(date +%s)

LOOP='' UUID='' PART=/dev/fwagent-image-root
cleanup() {
  set +e
  local m
  for m in run sys proc dev/pts dev; do mountpoint -q "$MNT/$m" && umount "$MNT/$m"; done
  mountpoint -q "$MNT" && umount "$MNT"
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  rm -f "$PART"
  [ -n "$UUID" ] && rm -f "/dev/disk/by-uuid/$UUID"
}
trap cleanup EXIT

[ -f "$OUT/id_fwagent" ] || ssh-keygen -q -t ed25519 -N '' -C fwagent-vm -f "$OUT/id_fwagent"

# 1. Disk: DOS label, one bootable partition from sector 2048, ext4 on it.
rm -f "$RAW"
truncate -s "$SIZE" "$RAW"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$RAW"
offset=$((2048 * 512))
LOOP=$(losetup --show -f -o "$offset" --sizelimit "$(($(stat -c %s "$RAW") - offset))" "$RAW")
read -r maj min < <(stat -c '%t %T' "$LOOP")
rm -f "$PART"
mknod "$PART" b $((16#$maj)) $((16#$min))
mkfs.ext4 -q -L fwagent-root "$PART"
UUID=$(blkid -s UUID -o value "$PART")
mkdir -p /dev/disk/by-uuid "$MNT"
ln -sf "$PART" "/dev/disk/by-uuid/$UUID"
mount "$PART" "$MNT"

# 2. Root file system (mmdebstrap keeps services from starting inside the chroot).
t1=$(date +%s)
mmdebstrap --variant=minbase --components=main --include="$(IFS=,; echo "${PKGS[*]}")" \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  "$SUITE" "$MNT" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
  "deb $SECMIRROR $SUITE-security main"
t2=$(date +%s)

# 3. Configuration: identity, fstab, network, ssh, the vagrant user, GRUB on serial.
echo fwagent-vm >"$MNT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 fwagent-vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$MNT/etc/hosts"
echo "UUID=$UUID / ext4 errors=remount-ro 0 1" >"$MNT/etc/fstab"
: >"$MNT/etc/machine-id" # each VM generates its own at first boot
printf '[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n' >"$MNT/etc/systemd/network/50-dhcp.network"
ln -sf /run/systemd/resolve/stub-resolv.conf "$MNT/etc/resolv.conf"
chroot "$MNT" systemctl enable systemd-networkd systemd-resolved ssh >/dev/null 2>&1
# Less to do at boot: it all runs under software emulation.
chroot "$MNT" systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer \
  e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-networkd-wait-online.service \
  >/dev/null 2>&1 || true
chroot "$MNT" useradd -m -s /bin/bash -G sudo vagrant
echo vagrant:vagrant | chroot "$MNT" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$MNT/etc/sudoers.d/vagrant"
chmod 0440 "$MNT/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$MNT/home/vagrant/.ssh"
{ [ -f "$VAGRANT_PUB" ] && cat "$VAGRANT_PUB"; cat "$OUT/id_fwagent.pub"; } >"$MNT/home/vagrant/.ssh/authorized_keys"
chown 1000:1000 "$MNT/home/vagrant/.ssh/authorized_keys"
chmod 0600 "$MNT/home/vagrant/.ssh/authorized_keys"
echo 'UseDNS no' >"$MNT/etc/ssh/sshd_config.d/vagrant.conf"
cat >"$MNT/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
for m in dev dev/pts proc sys run; do mount --bind "/$m" "$MNT/$m"; done
chroot "$MNT" grub-mkimage -O i386-pc -o /boot/grub/core.img -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2
mkdir -p "$MNT/boot/grub/i386-pc"
cp "$MNT"/usr/lib/grub/i386-pc/*.mod "$MNT"/usr/lib/grub/i386-pc/*.lst "$MNT/boot/grub/i386-pc/"
chroot "$MNT" update-grub >/dev/null 2>&1 || true
grep -q "root=UUID=$UUID" "$MNT/boot/grub/grub.cfg" || { echo "grub.cfg lacks root=UUID=$UUID" >&2; exit 1; }
echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | chroot "$MNT" debconf-set-selections
chroot "$MNT" apt-get clean
rm -rf "$MNT"/var/lib/apt/lists/* "$MNT"/tmp/*
cp "$MNT/boot/grub/core.img" "$OUT/core.img"
cp "$MNT/usr/lib/grub/i386-pc/boot.img" "$OUT/boot.img"
for m in run sys proc dev/pts dev; do umount "$MNT/$m"; done
sync -f "$MNT"
mount -o remount,ro "$MNT"
umount "$MNT"
e2fsck -fy "$LOOP" >/dev/null 2>&1 || true # 1 = fixed, fine
e2fsck -fn "$LOOP" >/dev/null 2>&1 || { echo "file system not clean" >&2; exit 1; }
cleanup
LOOP='' UUID=''
trap - EXIT

# 4. Boot code by hand (boot.img's first 440 bytes into the MBR, core.img into the gap),
#    then compress to qcow2.
[ "$(stat -c %s "$OUT/core.img")" -lt $((2047 * 512)) ] || { echo "core.img too big" >&2; exit 1; }
dd if="$OUT/boot.img" of="$RAW" bs=440 count=1 conv=notrunc status=none
dd if="$OUT/core.img" of="$RAW" bs=512 seek=1 conv=notrunc status=none
rm -f "$OUT/core.img" "$OUT/boot.img"
qemu-img convert -c -O qcow2 "$RAW" "$IMG.tmp"
mv -f "$IMG.tmp" "$IMG"
rm -f "$RAW"
t3=$(date +%s)
echo "image: $IMG ($(du -h "$IMG" | cut -f1)); mmdebstrap $((t2 - t1)) s, total $((t3 - t0)) s"
