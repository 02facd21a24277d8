# shellcheck shell=bash
# netns.sh - throwaway network namespaces for the lab, and their cleanup.
#
# Every namespace is named "$LAB_PREFIX<role>" (run.sh sets LAB_PREFIX=fwi<pid>-), so
# parallel runs never share a name, and it is registered the moment it is created so
# lab_cleanup can delete it on any exit. Links are veth pairs created from inside the
# namespaces (`ip -n`), so no interface ever appears in the root namespace, and only
# documentation addresses are accepted (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32).
#
# Client links are routed point-to-point links, as between a host and its upstream:
# the client holds /32 and /128 addresses, the hub (mail) has none on the link and
# routes each client address to it; IPv6 next hops are link-local (hub fe80::1, client
# fe80::2). Hence no client's /64 contains an address of the mail host, which keeps
# fwagent's /64 prefix bans clean to test.

LAB_PREFIX=${LAB_PREFIX:-fwi$$-}
LAB_NAMESPACES=()   # created namespaces, deleted by lab_cleanup
LAB_PIDS=()         # background processes started by the lab, killed by lab_cleanup
LAB_ATTACHED=()     # names given to an existing namespace (--system): only the name goes
LAB_UNDO=()         # commands undoing the lab's changes to an existing namespace
LAB_ADDR_RE='^(198\.51\.100\.[0-9]{1,3}|203\.0\.113\.[0-9]{1,3}|2001:db8:[0-9a-f:]*)(/[0-9]{1,3})?$'

lab_die() { printf '[lab] error: %s\n' "$*" >&2; exit 1; }

lab_ns() { printf '%s%s' "$LAB_PREFIX" "$1"; } # role -> namespace name

lab_check_addr() { [[ $1 =~ $LAB_ADDR_RE ]] || lab_die "refusing non-documentation address '$1'"; }

lab_ns_exists() { [ -e "/run/netns/$1" ]; }

# lab_ns_add ROLE: create the namespace, loopback up, no DAD delays (addresses are unique
# by construction), and no forwarding unless asked for (lab_ns_forwarding).
lab_ns_add() {
  local ns; ns=$(lab_ns "$1")
  lab_ns_exists "$ns" && lab_die "namespace $ns already exists (stale run with the same pid?)"
  ip netns add "$ns" || lab_die "cannot create namespace $ns"
  LAB_NAMESPACES+=("$ns")
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 \
    net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.default.accept_ra=0 >/dev/null
  ip -n "$ns" link set lo up
}

# lab_ns_attach ROLE PID: name the network namespace PID lives in (e.g. 1: this host's
# own) as the role, so every helper works on it unchanged. Cleanup only removes the name;
# changes made in it must be registered with lab_undo.
lab_ns_attach() {
  local ns; ns=$(lab_ns "$1")
  lab_ns_exists "$ns" && lab_die "namespace $ns already exists"
  ip netns attach "$ns" "$2" || lab_die "cannot name the network namespace of pid $2"
  LAB_ATTACHED+=("$ns")
}

# lab_undo COMMAND...: run COMMAND at cleanup (in reverse order of registration).
lab_undo() { LAB_UNDO+=("$(printf '%q ' "$@")"); }

# lab_ns_forwarding ROLE: make the namespace a router (IPv4 and IPv6); in an attached
# namespace the previous values are restored at cleanup.
lab_ns_forwarding() {
  local ns k v; ns=$(lab_ns "$1")
  if [[ " ${LAB_ATTACHED[*]} " == *" $ns "* ]]; then
    for k in net.ipv4.ip_forward net.ipv6.conf.all.forwarding; do
      v=$(ip netns exec "$ns" sysctl -n "$k")
      lab_undo ip netns exec "$ns" sysctl -qw "$k=$v"
    done
  fi
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null
}

# lab_addr ROLE DEV ADDR/PREFIX: add one documentation address.
lab_addr() {
  local ns; ns=$(lab_ns "$1")
  lab_check_addr "$3"
  if [[ $3 == *:* ]]; then
    ip -n "$ns" -6 addr add "$3" dev "$2" nodad
  else
    ip -n "$ns" -4 addr add "$3" dev "$2"
  fi
}

# lab_veth HUB HUB_IF LEAF: veth pair, HUB_IF in the hub namespace, eth0 in the leaf.
lab_veth() {
  local hub leaf; hub=$(lab_ns "$1"); leaf=$(lab_ns "$3")
  ip -n "$hub" link add "$2" type veth peer name eth0 netns "$leaf" \
    || lab_die "cannot create veth $2 ($1) <-> eth0 ($3)"
  ip -n "$hub" link set "$2" up
  ip -n "$leaf" link set eth0 up
}

# lab_p2p HUB HUB_IF LEAF: a routed point-to-point client link (see the header).
lab_p2p() {
  lab_veth "$@"
  ip -n "$(lab_ns "$1")" -6 addr add fe80::1/64 dev "$2" nodad
  ip -n "$(lab_ns "$3")" -6 addr add fe80::2/64 dev eth0 nodad
}

# lab_p2p_client HUB HUB_IF LEAF ADDR: give the leaf ADDR (/32 or /128) and route it.
lab_p2p_client() {
  local hub leaf; hub=$(lab_ns "$1"); leaf=$(lab_ns "$3")
  lab_check_addr "$4"
  if [[ $4 == *:* ]]; then
    ip -n "$leaf" -6 addr add "$4/128" dev eth0 nodad
    ip -n "$hub" -6 route add "$4/128" via fe80::2 dev "$2"
  else
    ip -n "$leaf" -4 addr add "$4/32" dev eth0
    ip -n "$hub" -4 route add "$4/32" dev "$2"
  fi
}

# lab_p2p_reach LEAF ADDR: the leaf routes ADDR (a service address of the hub)
# over its link.
lab_p2p_reach() {
  local leaf; leaf=$(lab_ns "$1")
  lab_check_addr "$2"
  if [[ $2 == *:* ]]; then
    ip -n "$leaf" -6 route add "$2/128" via fe80::1 dev eth0
  else
    ip -n "$leaf" -4 route add "$2/32" dev eth0
  fi
}

# lab_spawn ROLE OUTFILE COMMAND...: run COMMAND in the namespace in the background,
# output to OUTFILE; registers and prints nothing, the pid is left in LAB_LAST_PID.
# `ip netns exec` execs the command, so the pid is the command's own.
lab_spawn() {
  local ns; ns=$(lab_ns "$1"); local out=$2; shift 2
  ip netns exec "$ns" "$@" </dev/null >>"$out" 2>&1 &
  LAB_LAST_PID=$!
  LAB_PIDS+=("$LAB_LAST_PID")
}

# lab_stop_pid PID [SIGNAL]: signal one process, wait for it (bounded 5 s), then KILL.
lab_stop_pid() {
  local pid=$1 sig=${2:-TERM} _
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# lab_ns_del NS: every process still in the namespace is one the lab started (directly or
# as a child, e.g. Exim's delivery processes): TERM them, then KILL, then delete it.
lab_ns_del() {
  local ns=$1 pids _
  lab_ns_exists "$ns" || return 0
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  if [ -n "${pids// /}" ]; then
    # shellcheck disable=SC2086 # a list of pids
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 30); do
      pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
      [ -z "${pids// /}" ] && break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    [ -n "${pids// /}" ] && kill -KILL $pids 2>/dev/null
  fi
  ip netns del "$ns" 2>/dev/null || lab_log "warning: could not delete namespace $ns"
}

# lab_cleanup: processes (newest first), namespaces, then the run's temp dir. Safe to call
# twice; never touches anything it did not create.
lab_cleanup() {
  local i
  for ((i = ${#LAB_PIDS[@]} - 1; i >= 0; i--)); do lab_stop_pid "${LAB_PIDS[i]}"; done
  LAB_PIDS=()
  for ((i = ${#LAB_NAMESPACES[@]} - 1; i >= 0; i--)); do lab_ns_del "${LAB_NAMESPACES[i]}"; done
  LAB_NAMESPACES=()
  for ((i = ${#LAB_UNDO[@]} - 1; i >= 0; i--)); do eval "${LAB_UNDO[i]}" >/dev/null 2>&1; done
  LAB_UNDO=()
  for i in "${LAB_ATTACHED[@]}"; do ip netns del "$i" 2>/dev/null; done
  LAB_ATTACHED=()
  case ${LAB_TMP:-} in
    /tmp/fwi*.* | /var/tmp/fwi*.*) rm -rf "$LAB_TMP" ;;
    "") ;;
    *) lab_log "not removing unexpected temp dir '$LAB_TMP'" ;;
  esac
}

# lab_write_teardown FILE: a script that does what lab_cleanup would, for --keep. Every
# process the lab leaves running lives in one of its namespaces, so they are found by
# namespace when the script runs (never by a pid written now, which could be reused).
lab_write_teardown() {
  {
    echo '#!/bin/sh'
    echo "# tear down the kept fwagent lab ${LAB_PREFIX}*"
    local ns
    for ns in "${LAB_NAMESPACES[@]}"; do
      echo "for p in \$(ip netns pids $ns 2>/dev/null); do kill -KILL \$p; done; ip netns del $ns"
    done
    local i
    for ((i = ${#LAB_UNDO[@]} - 1; i >= 0; i--)); do echo "${LAB_UNDO[i]}"; done
    for ns in "${LAB_ATTACHED[@]}"; do echo "ip netns del $ns"; done
    echo "rm -rf '$LAB_TMP'"
  } >"$1"
  chmod 0755 "$1"
}
