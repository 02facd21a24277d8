#!/usr/bin/env bash
# vm.sh - run fwagent's integration lab inside a real Debian 12 VM (kernel 6.1) under
# plain QEMU. Root. The image comes from build-image.sh (same directory).
#
#   integration/vm/vm.sh test [--fwagent PATH] [--build] [--mode system|netns|both]
#        boot a throwaway overlay of the image, copy integration/, dist/ and the binary
#        in, run the lab as root in the guest, print its PASS/FAIL lines, power off;
#        exit status is non-zero if any guest run failed. --build (re)builds the image
#        first (it is also built when missing). Modes (default system; each run takes
#        about 8 minutes under software emulation):
#          system  the VM is the mail server: provision.sh sets up Debian's Exim with the
#                  dist/exim4 ACL and fwagent (unit when shipped), then run.sh --system;
#          netns   run.sh as on CI hosts (Exim and fwagent in namespaces), on kernel 6.1.
#   integration/vm/vm.sh up | ssh [CMD...] | down     the same steps by hand
#
# Environment: VMDIR (/var/tmp/fwagent-vm: image, key, run state), MEM (1024), CPUS (2),
# BOOT_TIMEOUT (900 s to reach ssh), RUN_TIMEOUT (1500 s for the guest run).
#
# Network: QEMU user-mode networking with restrict=on: the guest can send nothing out;
# the only way in is ssh forwarded from 127.0.0.1:<free port> on the host. Acceleration:
# TCG (software) unless the CPU shows vmx/svm and /dev/kvm is not kvm-pvm (on this
# machine kind KVM is PVM-backed and cannot run an ordinary guest).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VMDIR=${VMDIR:-/var/tmp/fwagent-vm}
IMG=$VMDIR/fwagent-bookworm.qcow2
KEY=$VMDIR/id_fwagent
RUN=$VMDIR/run
MEM=${MEM:-1024}
CPUS=${CPUS:-2}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
RUN_TIMEOUT=${RUN_TIMEOUT:-1500}

log() { printf '[vm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ssh_argv: the ssh command line into the guest, in SSH (an array, so `timeout` can run it).
ssh_argv() {
  SSH=(ssh -i "$KEY" -p "$(cat "$RUN/port")" -o BatchMode=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10
    -o ServerAliveInterval=15 vagrant@127.0.0.1)
}
ssh_cmd() { ssh_argv; "${SSH[@]}" "$@"; }

qemu_pid() { [ -s "$RUN/qemu.pid" ] && kill -0 "$(cat "$RUN/qemu.pid")" 2>/dev/null && cat "$RUN/qemu.pid"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_up() {
  [ -f "$IMG" ] || die "no image $IMG: run integration/vm/build-image.sh"
  qemu_pid >/dev/null && die "a VM from $RUN is already running (pid $(qemu_pid))"
  mkdir -p "$RUN"
  rm -f "$RUN/overlay.qcow2" "$RUN/console.log"
  # A throwaway overlay: the image itself is never written, each run starts clean.
  qemu-img create -q -f qcow2 -F qcow2 -b "$IMG" "$RUN/overlay.qcow2"
  free_port >"$RUN/port"
  local accel=tcg,thread=multi,tb-size=256 cpu=qemu64
  if [ -w /dev/kvm ] && grep -qE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]; then
    accel=kvm cpu=host
  fi
  local t0; t0=$(date +%s)
  qemu-system-x86_64 -name fwagent-vm -machine q35 -accel "$accel" -cpu "$cpu" \
    -smp "$CPUS" -m "$MEM" -display none -vga none -nodefaults \
    -drive "file=$RUN/overlay.qcow2,if=virtio,format=qcow2" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$(cat "$RUN/port")-:22" \
    -device virtio-net-pci,netdev=n0 -device virtio-rng-pci \
    -chardev "file,id=con,path=$RUN/console.log" -serial chardev:con \
    -pidfile "$RUN/qemu.pid" -daemonize
  log "qemu pid $(cat "$RUN/qemu.pid") ($accel), ssh on 127.0.0.1:$(cat "$RUN/port"), console $RUN/console.log"
  local deadline=$((t0 + BOOT_TIMEOUT))
  until ssh_cmd true 2>/dev/null; do
    qemu_pid >/dev/null || { tail -n 20 "$RUN/console.log" >&2; die "qemu exited"; }
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 20 "$RUN/console.log" >&2; die "no ssh after ${BOOT_TIMEOUT}s"; }
    sleep 3
  done
  log "ssh up after $(($(date +%s) - t0)) s; guest kernel $(ssh_cmd uname -r)"
}

cmd_down() {
  local pid _
  pid=$(qemu_pid) || { rm -f "$RUN/overlay.qcow2"; return 0; }
  ssh_cmd sudo systemctl poweroff >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then log "forcing qemu $pid off"; kill "$pid"; sleep 1; fi
  rm -f "$RUN/qemu.pid" "$RUN/overlay.qcow2"
  log "VM down"
}

cmd_test() {
  local fwagent='' build=0 mode=system
  while [ $# -gt 0 ]; do
    case $1 in
      --fwagent) fwagent=$(readlink -f "$2"); shift 2 ;;
      --build) build=1; shift ;;
      --mode) mode=$2; shift 2 ;;
      *) die "unknown argument $1" ;;
    esac
  done
  [ "$(id -u)" = 0 ] || die "run as root"
  if [ $build = 1 ] || [ ! -f "$IMG" ]; then "$HERE/build-image.sh" "$VMDIR"; fi
  trap 'cmd_down' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cmd_up

  # Copy in only what the run needs: the lab, the shipped Exim snippet, the binary.
  local files=(integration dist)
  log "copying ${files[*]}${fwagent:+ and $fwagent} into the guest"
  {
    tar -C "$REPO" -cf - --exclude='__pycache__' "${files[@]}"
  } | ssh_cmd 'rm -rf fwagent-test && mkdir fwagent-test && tar -C fwagent-test -xf -'
  local args=()
  if [ -n "$fwagent" ]; then
    ssh_cmd 'cat > fwagent-test/fwagent && chmod 0755 fwagent-test/fwagent' <"$fwagent"
    args=(--fwagent ./fwagent)
  fi

  local rc=0 m
  case $mode in system | netns) ;; both) mode="system netns" ;; *) die "unknown mode $mode" ;; esac
  for m in $mode; do guest_run "$m" "${args[@]}" || rc=1; done
  return $rc
}

# guest_run MODE ARGS...: one lab run in the guest; prints its stdout, keeps both streams.
guest_run() {
  local m=$1; shift
  # Under software emulation a 4 ms poll would eat a good part of the guest's CPU.
  local cmd="sudo LAB_MAX_SECONDS=$((RUN_TIMEOUT - 60)) LAB_POLL_MS=${LAB_POLL_MS:-20} ./integration/run.sh $*"
  if [ "$m" = system ]; then
    cmd="sudo ./integration/vm/provision.sh $* && $cmd --system"
  fi
  cmd="cd fwagent-test && $cmd"
  log "guest run ($m): $cmd"
  local rc=0 t0; t0=$(date +%s)
  ssh_argv
  timeout "$RUN_TIMEOUT" "${SSH[@]}" "$cmd" >"$RUN/guest-$m.out" 2>"$RUN/guest-$m.err" || rc=$?
  echo "== VM ($m mode, kernel $(ssh_cmd uname -r 2>/dev/null)): $(($(date +%s) - t0)) s"
  cat "$RUN/guest-$m.out"
  [ $rc = 0 ] || { log "guest run ($m) exit status $rc; its stderr (tail):"; tail -n 15 "$RUN/guest-$m.err" >&2; }
  grep -qE '^[0-9]+ passed, [0-9]+ failed$' "$RUN/guest-$m.out" || { log "no summary line from the guest ($m)"; [ $rc != 0 ] || rc=1; }
  return $rc
}

case ${1:-} in
  up) cmd_up ;;
  ssh) shift; ssh_cmd "$@" ;;
  down) cmd_down ;;
  test) shift; cmd_test "$@" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
