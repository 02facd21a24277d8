#!/usr/bin/env bash
# box.sh - check the top-level Vagrantfile with a box built locally from build-image.sh's
# image (no Vagrant Cloud download), using Debian's vagrant + vagrant-libvirt. Root.
#
#   integration/vm/box.sh deps       install vagrant, vagrant-libvirt, libvirt (no network setup)
#   integration/vm/box.sh package    image -> $VMDIR/fwagent-bookworm.box (libvirt provider)
#   integration/vm/box.sh up         libvirtd in its own network namespace, box add,
#                                    `vagrant up` (provisions and runs the lab), destroy
#   integration/vm/box.sh down       stop that libvirtd (by pid) and delete its namespace
#
# Environment: FWAGENT_BIN (binary the Vagrantfile installs), VMDIR (/var/tmp/fwagent-vm).
#
# On machines without systemd and with PVM-backed /dev/kvm (this project's), libvirtd is
# started by hand inside a network namespace of its own, so vagrant-libvirt's NAT network,
# dnsmasq and iptables rules live there and lead nowhere; the domain type is qemu (TCG).
# libvirt's qemu driver is told not to use a security driver or virtlogd (neither runs).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VMDIR=${VMDIR:-/var/tmp/fwagent-vm}
IMG=$VMDIR/fwagent-bookworm.qcow2
BOX=$VMDIR/fwagent-bookworm.box
NS=fwagent-vagrant
PIDFILE=/run/libvirtd-$NS.pid
export VAGRANT_HOME=$VMDIR/vagrant.d
export VAGRANT_DOTFILE_PATH=$VMDIR/dot-vagrant # keeps .vagrant/ out of the source tree
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt
export LIBVIRT_DEFAULT_URI=qemu:///system
export FWAGENT_BOX=fwagent/bookworm FWAGENT_LIBVIRT_DRIVER=qemu

log() { printf '[box %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
in_ns() { ip netns exec "$NS" "$@"; }

cmd_deps() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q -y --no-install-recommends \
    install vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base iptables rsync
}

cmd_package() {
  [ -f "$IMG" ] || { log "no $IMG: run build-image.sh"; exit 1; }
  local d vsize
  d=$(mktemp -d "$VMDIR/box.XXXXXX")
  ln "$IMG" "$d/box.img" 2>/dev/null || cp "$IMG" "$d/box.img"
  vsize=$(qemu-img info --output=json "$IMG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] // 2**30)')
  printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$vsize" >"$d/metadata.json"
  printf 'Vagrant.configure("2") do |c|\n  c.vm.provider :libvirt do |l|\n    l.disk_bus = "virtio"\n  end\nend\n' >"$d/Vagrantfile"
  tar -C "$d" -cf "$BOX" metadata.json Vagrantfile box.img # box.img is compressed already
  rm -rf "$d"
  log "box: $BOX"
}

libvirt_up() {
  grep -q '^# fwagent lab' /etc/libvirt/qemu.conf || cat >>/etc/libvirt/qemu.conf <<'EOF'
# fwagent lab (integration/vm/box.sh): no systemd, apparmor or virtlogd on this machine
security_driver = "none"
user = "root"
group = "root"
stdio_handler = "file"
EOF
  [ -e "/run/netns/$NS" ] || { ip netns add "$NS"; ip -n "$NS" link set lo up; }
  if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then return 0; fi
  in_ns libvirtd -d -p "$PIDFILE"
  local _
  for _ in $(seq 1 60); do virsh version >/dev/null 2>&1 && break; sleep 0.5; done
  if ! virsh pool-info default >/dev/null 2>&1; then
    mkdir -p /var/lib/libvirt/images
    virsh pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
    virsh pool-start default >/dev/null
  fi
  log "libvirtd pid $(cat "$PIDFILE") in network namespace $NS"
}

cmd_down() {
  local n pid p _
  for n in $(virsh net-list --name 2>/dev/null); do virsh net-destroy "$n" >/dev/null 2>&1 || true; done
  if [ -s "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$PIDFILE"
  fi
  # libvirt's dnsmasq for its NAT network runs in our namespace only.
  for p in $(ip netns pids "$NS" 2>/dev/null); do
    grep -qx dnsmasq "/proc/$p/comm" 2>/dev/null && kill "$p"
  done
  ip netns del "$NS" 2>/dev/null || true
  log "libvirt down"
}

cmd_up() {
  [ -f "$BOX" ] || cmd_package
  libvirt_up
  local t0 rc=0
  t0=$(date +%s)
  vagrant box remove -f fwagent/bookworm >/dev/null 2>&1 || true
  vagrant box add --name fwagent/bookworm "file://$BOX" 2>&1 | tr '\r' '\n' | grep -v Progress: || true
  log "box add: $(($(date +%s) - t0)) s"
  cd "$REPO"
  t0=$(date +%s)
  in_ns env VAGRANT_HOME="$VAGRANT_HOME" vagrant up --provider=libvirt 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -v Progress: | tee "$VMDIR/vagrant-up.log" || rc=$?
  log "vagrant up (provisioning and the lab): $(($(date +%s) - t0)) s"
  grep -E '[0-9]+ passed, [0-9]+ failed' "$VMDIR/vagrant-up.log" | tail -n 1 || true
  in_ns env VAGRANT_HOME="$VAGRANT_HOME" vagrant destroy -f || true
  return "$rc"
}

case ${1:-} in
  deps) cmd_deps ;;
  package) cmd_package ;;
  up) cmd_up ;;
  down) cmd_down ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
