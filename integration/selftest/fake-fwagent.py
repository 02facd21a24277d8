#!/usr/bin/env python3
"""fake-fwagent.py - a crude stand-in for `fwagent run` / `fwagent status --json`, used
ONLY to self-test the lab's fwagent assertions before the real agent exists:

    integration/run.sh --fwagent integration/selftest/fake-fwagent.py

It is test scaffolding, not a reference: it shells out to `nft` (the product must not),
polls instead of using inotify, and keeps its state in one JSON file. It implements just
the default behaviour the lab expects of the real agent: rule exim-ratelimit (3
`Rate limited: <ip>` lines within 1 h -> ban for 24 h), table inet fwagent with sets
banned4 / banned6 (IPv6 by /64), input and forward chains with counter + drop rules,
restoring the table after `nft flush ruleset`, and resuming from its saved log position
after a restart. FAKE_FWAGENT_BROKEN (comma-separated) breaks behaviours on purpose, so
the lab can be seen to FAIL: slow (ban 1.5 s late), noflush (no restore after a flush),
skipdown (a restart starts at the log's end, losing lines), reban (a restart re-adds
every ban with a fresh timeout), reject (rules reject with RST instead of dropping).
"""

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from labtool import RATE_RE, LogFollower, drop_packets, table_elems, Nft  # noqa: E402

BROKEN = os.environ.get("FAKE_FWAGENT_BROKEN", "").split(",")
RULESET = """
table inet fwagent {
  set banned4 { type ipv4_addr; flags timeout; counter; size 65536; }
  set banned6 { type ipv6_addr; flags timeout; counter; size 65536; }
  chain input { type filter hook input priority filter - 10; policy accept;
    ip saddr @banned4 counter drop
    ip6 saddr & ffff:ffff:ffff:ffff:: @banned6 counter drop
  }
  chain forward { type filter hook forward priority filter - 10; policy accept;
    ip saddr @banned4 counter drop
    ip6 saddr & ffff:ffff:ffff:ffff:: @banned6 counter drop
  }
}
"""
BAN_SECONDS = 86400
if "reject" in BROKEN:
    RULESET = RULESET.replace("counter drop", "counter reject with tcp reset")


def nft(script):
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True, timeout=10)


def ban_key(addr):
    a = ipaddress.ip_address(addr)
    if a.version == 4:
        return "banned4", str(a)
    return "banned6", str(ipaddress.ip_network("%s/64" % a, strict=False).network_address)


def run(a):
    state_path = os.path.join(a.state_dir or ".", "fake-state.json")
    try:
        with open(state_path) as f:
            st = json.load(f)
    except (OSError, ValueError):
        st = {"ino": None, "offset": 0, "bans": {}, "hits": {}}
    follower = LogFollower(a.log)
    # Resume: same file as before -> continue at the saved offset.
    if follower._open():
        if "skipdown" in BROKEN:
            follower.f.seek(0, os.SEEK_END)
        elif follower.ino == st["ino"]:
            follower.f.seek(st["offset"])
    st["ino"] = follower.ino
    if "reban" in BROKEN and st["bans"]:
        nft("".join("delete element inet fwagent %s { %s }\nadd element inet fwagent %s { %s "
                    "timeout %ds }\n" % (s, k, s, k, BAN_SECONDS) for k, (s, _) in st["bans"].items()))
    nftc = Nft()
    if table_elems(nftc, "inet", "fwagent") is None:
        nft(RULESET)
    last_check = 0.0
    while True:
        now = time.time()
        if now - last_check > 0.05 and "noflush" not in BROKEN:
            last_check = now
            if table_elems(nftc, "inet", "fwagent") is None:
                nft(RULESET + "".join(
                    "add element inet fwagent %s { %s timeout %ds }\n"
                    % (s, k, max(1, int(t - now))) for k, (s, t) in st["bans"].items()))
        for line in follower.read_lines():
            m = RATE_RE.search(line)
            if not m:
                continue
            addr = m.group(1).decode()
            hits = [t for t in st["hits"].get(addr, []) if t > now - 3600] + [now]
            st["hits"][addr] = hits
            s, k = ban_key(addr)
            if len(hits) >= 3 and k not in st["bans"]:
                if "slow" in BROKEN:
                    time.sleep(1.5)
                nft("add element inet fwagent %s { %s timeout %ds }\n" % (s, k, BAN_SECONDS))
                st["bans"][k] = (s, now + BAN_SECONDS)
                print("banned %s as %s" % (addr, k), file=sys.stderr, flush=True)
        if follower.f is not None:
            st["ino"], st["offset"] = follower.ino, follower.f.tell() - len(follower.buf)
        with open(state_path + ".tmp", "w") as f:
            json.dump(st, f)
        os.replace(state_path + ".tmp", state_path)
        time.sleep(0.01)


def status(a):
    nftc = Nft()
    sets = table_elems(nftc, "inet", "fwagent") or {}
    drops = drop_packets(nftc, "inet", "fwagent")
    print(json.dumps({
        "banned": [{"address": e, "set": s, "packets": v[1]} for s, els in sets.items()
                   for e, v in els.items()],
        "dropped": {hook: {"packets": n} for hook, n in drops.items()},
    }))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--log", required=True)
    p.add_argument("--state-dir")
    p.add_argument("--run-dir")
    p.set_defaults(fn=run)
    p = sub.add_parser("status")
    p.add_argument("--json", action="store_true")
    p.add_argument("--run-dir")
    p.set_defaults(fn=status)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
