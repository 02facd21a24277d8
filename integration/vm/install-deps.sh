#!/usr/bin/env bash
# install-deps.sh - host packages for the VM path (build a Debian 12 image, boot it under
# QEMU). Idempotent, non-interactive, root. See integration/vm/README.md.
#
# qemu-system-x86 must match the installed qemu-utils: on machines where qemu-utils comes
# from bookworm-backports, bookworm's qemu-system-common 7.2 conflicts with it, so
# qemu-system is then taken from backports too. The backports source is derived from the
# machine's own Debian sources file (same archive, suite bookworm-backports); no mirror
# host is written here.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
APT=(apt-get -o DPkg::Lock::Timeout=600 -q -y --no-install-recommends)
export DEBIAN_FRONTEND=noninteractive

have() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

BASE=(mmdebstrap fdisk e2fsprogs openssh-client qemu-utils)
missing=()
for p in "${BASE[@]}" qemu-system-x86; do have "$p" || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && { echo "[vm deps] all present"; exit 0; }

backports=0
case $(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null) in *bpo*) backports=1 ;; esac
SRC=/etc/apt/sources.list.d/debian.sources
BPO=/etc/apt/sources.list.d/bookworm-backports.sources
if [ $backports = 1 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  [ -r "$SRC" ] || { echo "no $SRC to derive a backports source from" >&2; exit 1; }
  # First stanza of the machine's own sources (its archive), with the suite replaced.
  awk 'BEGIN { RS = ""; ORS = "\n" } NR == 1' "$SRC" \
    | sed 's/^Suites:.*/Suites: bookworm-backports/' >"$BPO"
fi
"${APT[@]}" update
"${APT[@]}" install "${BASE[@]}"
if [ $backports = 1 ]; then
  "${APT[@]}" install -t bookworm-backports qemu-system-x86
else
  "${APT[@]}" install qemu-system-x86
fi
echo "[vm deps] done"
