#!/usr/bin/env bash
# install-deps.sh - install the Debian packages integration/run.sh needs, as root,
# non-interactively and idempotently, WITHOUT starting or enabling the system's Exim.
#
#   integration/install-deps.sh           install what is missing (no-op when all present)
#   integration/install-deps.sh --check   only say what is missing (exit 1 if anything is)
#
# Why the care around Exim: installing exim4-daemon-light on Debian normally starts the
# system MTA on port 25 of the root namespace and enables it at boot. The lab runs its own
# Exim (own config, spool and log in a temp dir, inside a network namespace), so a system
# daemon would only be a surprise listener on the host. Order of the guards:
#   1. a policy-rc.d that denies every start is put in place for the duration of apt-get
#      (only if none exists; an existing one is left exactly as it is);
#   2. RUNLEVEL=1 is exported as a second guard for init scripts run outside invoke-rc.d;
#   3. if Exim was not installed before, its init links / unit are disabled afterwards;
#   4. if a system Exim (pid file /run/exim4/exim.pid) is running now but was not running
#      before, it is stopped. An Exim that was already running is never touched, and lab
#      Exims (their own pid files) are never looked at.
set -euo pipefail

PACKAGES=(
  exim4-daemon-light # the real MTA under attack
  swaks              # SMTP client for bots and the legitimate user
  libio-socket-inet6-perl # swaks needs it for IPv6 (a Suggests, so not pulled in)
  nftables           # nft: DNAT of the published port, and the test oracle
  iproute2           # ip netns, veth, routes; ss
  iputils-ping       # ping, for quick reachability checks by hand
  python3            # lab helper (log/set watcher, TCP probes, the "container" web server)
  util-linux         # unshare (private mount namespace for the lab Exim)
  procps             # pgrep/ps for the Exim guard
)
SYS_EXIM_PIDFILE=/run/exim4/exim.pid
POLICY=/usr/sbin/policy-rc.d

log() { printf '[install-deps] %s\n' "$*" >&2; }
die() { printf '[install-deps] error: %s\n' "$*" >&2; exit 1; }

installed() { # pkg: true when dpkg has it fully installed
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do installed "$p" || echo "$p"; done
}

# The system Exim is the one whose pid is in Debian's pid file and still runs exim4.
sys_exim_pid() {
  local pid
  [ -s "$SYS_EXIM_PIDFILE" ] || return 1
  pid=$(head -n1 "$SYS_EXIM_PIDFILE" | tr -dc 0-9)
  [ -n "$pid" ] && [ -r "/proc/$pid/exe" ] || return 1
  case $(readlink "/proc/$pid/exe" 2>/dev/null) in
    */exim4*) echo "$pid" ;;
    *) return 1 ;;
  esac
}

main() {
  local check_only=0
  case ${1:-} in
    --check) check_only=1 ;;
    "") ;;
    *) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac

  local missing
  missing=$(missing_packages | tr '\n' ' ')
  if [ -z "${missing// /}" ]; then
    log "all present: ${PACKAGES[*]}"
    return 0
  fi
  if [ $check_only = 1 ]; then
    log "missing: $missing"
    return 1
  fi
  [ "$(id -u)" = 0 ] || die "must run as root to install: $missing"

  local exim_was_installed=0 exim_was_running=0
  installed exim4-base && exim_was_installed=1
  sys_exim_pid >/dev/null && exim_was_running=1

  # Guard 1: deny service starts while apt runs (removed again on any exit).
  if [ ! -e "$POLICY" ]; then
    trap 'rm -f "$POLICY"' EXIT
    printf '#!/bin/sh\n# temporary, from fwagent integration/install-deps.sh\nexit 101\n' > "$POLICY"
    chmod 0755 "$POLICY"
  else
    local rc=0
    "$POLICY" exim4 start >/dev/null 2>&1 || rc=$?
    [ $rc = 101 ] || log "note: existing $POLICY allows starts; relying on RUNLEVEL=1 and the stop below"
  fi

  log "installing: $missing"
  # Guard 2: init scripts called directly see single-user mode and do not start.
  export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -q -y)
  # shellcheck disable=SC2086 # $missing is a list of package names
  if ! "${apt[@]}" install --no-install-recommends $missing; then
    log "install failed; refreshing the package lists and retrying once"
    "${apt[@]}" update
    # shellcheck disable=SC2086
    "${apt[@]}" install --no-install-recommends $missing
  fi

  # Guard 3: a freshly installed Exim must not come up at the next boot either.
  if [ $exim_was_installed = 0 ] && installed exim4-base; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      systemctl disable --quiet exim4.service exim4-base.timer 2>/dev/null || true
    fi
    if command -v update-rc.d >/dev/null && [ -e /etc/init.d/exim4 ]; then
      update-rc.d exim4 disable >/dev/null 2>&1 || true
    fi
    log "system exim4 service disabled (it was not installed before)"
  fi

  # Guard 4: stop a system Exim that the install started anyway, never a pre-existing one.
  local pid
  if [ $exim_was_running = 0 ] && pid=$(sys_exim_pid); then
    log "stopping system exim4 (pid $pid) started by the package install"
    kill -TERM "$pid" 2>/dev/null || true
    local _
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi

  missing=$(missing_packages | tr '\n' ' ')
  [ -z "${missing// /}" ] || die "still missing after install: $missing"
  log "done"
}

main "$@"
