#!/usr/bin/env bash
# provision.sh - make THIS machine (a dedicated test VM, never a real server) the lab's
# mail server for `integration/run.sh --system`, the way a user would set up fwagent on a
# Debian 12 Exim host: Debian's packaged Exim4 with the ACL snippet from dist/exim4/
# added through Debian's CHECK_RCPT_LOCAL_ACL_FILE macro, and fwagent installed.
#
#   integration/vm/provision.sh [--fwagent PATH]
#
# Exim is set to listen on all addresses (dc_local_interfaces='') and to accept mail for
# lab.example (dc_other_hostnames); users alice and bob receive it in /var/mail. fwagent:
# the binary goes to /usr/local/bin/fwagent; the systemd unit is installed and started
# when the project ships one (dist/fwagent.service). Idempotent.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
BIN=
[ "${1:-}" = --fwagent ] && BIN=$2

log() { printf '[provision] %s\n' "$*" >&2; }

# 1. Exim: listen everywhere, lab.example is local (non-split config, Debian's default).
CONF=/etc/exim4/update-exim4.conf.conf
set_conf() { # key value
  if grep -q "^$1=" "$CONF"; then sed -i "s|^$1=.*|$1='$2'|" "$CONF"; else echo "$1='$2'" >>"$CONF"; fi
}
set_conf dc_local_interfaces ''
set_conf dc_other_hostnames 'lab.example'
# 2. The rate-limit ACL exactly as dist/exim4/fwagent-ratelimit.acl tells users to add it.
install -m 0644 "$REPO/dist/exim4/fwagent-ratelimit.acl" /etc/exim4/fwagent-ratelimit.acl
MACRO='CHECK_RCPT_LOCAL_ACL_FILE = /etc/exim4/fwagent-ratelimit.acl'
grep -qxF "$MACRO" /etc/exim4/exim4.conf.localmacros 2>/dev/null || echo "$MACRO" >>/etc/exim4/exim4.conf.localmacros
for u in alice bob; do id "$u" >/dev/null 2>&1 || useradd -m -s /usr/sbin/nologin "$u"; done
update-exim4.conf
systemctl enable --quiet exim4.service
systemctl restart exim4.service
log "exim4: $(exim4 -bP macro CHECK_RCPT_LOCAL_ACL_FILE)"

# The test VM has no DNS at all. Debian's Exim looks up every client's name
# (host_lookup = *), and systemd-resolved then waits 10 s on LLMNR for IPv6 reverse
# names before failing; with LLMNR and mDNS off it fails at once, as a host with working
# DNS answers at once. (Only for this throwaway VM: a real server keeps its resolver.)
if [ -d /run/systemd/resolve ]; then
  mkdir -p /etc/systemd/resolved.conf.d
  printf '[Resolve]\nLLMNR=no\nMulticastDNS=no\n' >/etc/systemd/resolved.conf.d/fwagent-lab.conf
  systemctl restart systemd-resolved.service
fi

# 3. fwagent.
if [ -n "$BIN" ]; then
  install -m 0755 "$BIN" /usr/local/bin/fwagent
  log "fwagent: $(/usr/local/bin/fwagent --version)"
fi
UNIT=$REPO/dist/fwagent.service
if [ -f "$UNIT" ]; then
  # As README's install steps do: the sample config (the defaults, spelled out), so the
  # service proves it can read /etc/fwagent/fwagent.toml as its unprivileged user.
  if [ -f "$REPO/dist/fwagent.toml" ]; then
    install -D -m 0644 "$REPO/dist/fwagent.toml" /etc/fwagent/fwagent.toml
  fi
  install -m 0644 "$UNIT" /etc/systemd/system/fwagent.service
  systemctl daemon-reload
  systemctl enable --now fwagent.service
  log "fwagent.service: $(systemctl is-active fwagent.service)"
else
  log "no $UNIT in this tree yet: fwagent assertions of --system will SKIP"
fi
