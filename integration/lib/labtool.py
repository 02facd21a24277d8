#!/usr/bin/env python3
"""labtool.py - the lab's measuring instruments (Python 3 standard library only).

The lab's oracles live here, independent of fwagent's own code:

  watch        follow Exim's mainlog by path (across rotation) and poll fwagent's sets in
               the kernel every few milliseconds, writing timestamped events (JSON lines);
  analyze      turn those events into figures (ban latency after the Nth hit, line counts);
  probe        open one TCP connection and say how it ended: open / refused / timeout;
  elems        print the kernel's ban elements (value, expiry, per-element packet counter);
  drops        print the packets counted by fwagent's drop rules, per base chain;
  flush-wait   run `nft flush ruleset`, then time how long until given bans are back;
  status       check `fwagent status --json` output against expectations;
  rotate       rotate a log as logrotate's `create` mode does (rename, then a new file).

Kernel reads go through libnftables (the library behind `nft`, so the same JSON as
`nft -j list ...`) loaded with ctypes to avoid a fork per poll; if it cannot be loaded the
`nft` binary is run instead. All commands run inside the namespace they are started in
(`ip netns exec NS python3 labtool.py ...`). Every loop is bounded by a deadline.
"""

import argparse
import ctypes
import ctypes.util
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

RATE_RE = re.compile(rb"Rate limited: ([0-9A-Fa-f:.]+)")
V6_PREFIX = 64  # fwagent's default IPv6 ban prefix


class Nft:
    """Runs nft commands with JSON output, in-process when libnftables is available."""

    def __init__(self):
        self.ctx = None
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            return
        # NFT_CTX_OUTPUT_JSON = 1 << 4; buffer output and errors instead of printing them.
        lib.nft_ctx_output_set_flags(ctx, 1 << 4)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self.lib, self.ctx = lib, ctx

    def run(self, cmd):
        """Returns the parsed JSON of `nft -j CMD`, or None when nft reports an error."""
        if self.ctx is not None:
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, cmd.encode())
            out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
            self.lib.nft_ctx_get_error_buffer(self.ctx)  # drain, the message is not needed
        else:
            p = subprocess.run(["nft", "-j"] + cmd.split(), capture_output=True, timeout=5)
            rc, out = p.returncode, p.stdout
        if rc != 0 or not out.strip():
            return None
        try:
            return json.loads(out)
        except ValueError:
            return None

    def cmd(self, cmd):
        """Runs a command for its effect (no output wanted); True on success."""
        if self.ctx is not None:
            return self.lib.nft_run_cmd_from_buffer(self.ctx, cmd.encode()) == 0
        return subprocess.run(["nft"] + cmd.split(), capture_output=True, timeout=5).returncode == 0


def elem_key(e):
    """Normalises one set element from nft's JSON to (text, expires, packets)."""
    expires = packets = None
    if isinstance(e, dict) and "elem" in e:
        d = e["elem"]
        expires = d.get("expires")
        packets = (d.get("counter") or {}).get("packets")
        e = d.get("val")
    if isinstance(e, dict) and "prefix" in e:
        e = "%s/%s" % (e["prefix"]["addr"], e["prefix"]["len"])
    elif isinstance(e, dict) and "range" in e:
        e = "%s-%s" % tuple(e["range"])
    return str(e), expires, packets


def table_elems(nft, family, table):
    """{set name: {element text: (expires, packets)}} for every set of the table."""
    data = nft.run("list table %s %s" % (family, table))
    sets = {}
    for obj in (data or {}).get("nftables", []):
        s = obj.get("set")
        if not s:
            continue
        cur = sets.setdefault(s["name"], {})
        for e in s.get("elem", []):
            text, expires, packets = elem_key(e)
            cur[text] = (expires, packets)
    return sets if data else None


def covers(elem, addr, v6len=V6_PREFIX):
    """True when the ban element (address, prefix key, CIDR or range) covers addr."""
    try:
        a = ipaddress.ip_address(addr)
        if "-" in elem:
            lo, hi = (ipaddress.ip_address(x) for x in elem.split("-"))
            return lo <= a <= hi
        if "/" in elem:
            return a in ipaddress.ip_network(elem, strict=False)
        e = ipaddress.ip_address(elem)
    except ValueError:
        return False
    if e == a:
        return True
    # banned6 holds the offender's prefix as a plain address (host bits zero).
    return a.version == 6 and e.version == 6 and \
        ipaddress.ip_network("%s/%d" % (a, v6len), strict=False).network_address == e


class LogFollower:
    """Follows a file by path like `tail -F`: drains the old file after a rename first."""

    def __init__(self, path):
        self.path, self.f, self.ino, self.buf = path, None, None, b""

    def _open(self):
        try:
            f = open(self.path, "rb")
        except OSError:
            return False
        self.f, self.ino = f, os.fstat(f.fileno()).st_ino
        return True

    def read_lines(self):
        if self.f is None and not self._open():
            return []
        lines = []
        while True:
            chunk = self.f.read(1 << 20)
            if chunk:
                self.buf += chunk
                continue
            # At EOF: if the path now names another file, the old one is drained; switch.
            try:
                ino = os.stat(self.path).st_ino
            except OSError:
                break
            if ino == self.ino:
                break
            self.f.close()
            self.f = None
            if self.buf:  # an unterminated tail of the old file is still a line of it
                lines.append(self.buf)
                self.buf = b""
            if not self._open():
                break
        *complete, self.buf = self.buf.split(b"\n")
        return lines + complete


def cmd_watch(a):
    nft = Nft()
    follower = LogFollower(a.log)
    hits = {}
    known = {}  # element -> set name, as last seen
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    deadline = time.monotonic() + a.deadline
    with open(a.out, "a", buffering=1) as out:

        def emit(**ev):
            ev["t"] = round(time.time(), 6)
            out.write(json.dumps(ev) + "\n")

        emit(ev="start", libnftables=nft.ctx is not None)
        def drain():
            for line in follower.read_lines():
                m = RATE_RE.search(line)
                if m:
                    addr = m.group(1).decode()
                    hits[addr] = hits.get(addr, 0) + 1
                    emit(ev="line", addr=addr, n=hits[addr], ino=follower.ino)

        while not stop and time.monotonic() < deadline:
            # Order matters: the log first, then the kernel, so a line is never stamped
            # later than a ban it caused.
            drain()
            sets = table_elems(nft, a.family, a.table)
            now = {}
            for name, elems in (sets or {}).items():
                if name.startswith(a.set_prefix):
                    for e in elems:
                        now[e] = name
            if any(e not in known for e in now):
                # A line written and acted on while the kernel was being read (the agent
                # can be faster than one watcher cycle): read it before stamping the ban,
                # so such a ban counts as "within one watcher cycle", not "before the line".
                drain()
            for e, name in now.items():
                if e not in known:
                    emit(ev="ban", elem=e, set=name)
            for e, name in known.items():
                if e not in now:
                    emit(ev="gone", elem=e, set=name, table=sets is not None)
            known = now
            time.sleep(a.interval)
        emit(ev="stop")


def load_events(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def cmd_analyze(a):
    """Prints one JSON object per address: hits, time of the Nth hit, first ban, latency."""
    evs = load_events(a.events)
    res = {}
    for addr in a.addr:
        lines = [e for e in evs if e["ev"] == "line" and e["addr"] == addr]
        nth = lines[a.nth - 1]["t"] if len(lines) >= a.nth else None
        bans = [e for e in evs if e["ev"] == "ban" and covers(e["elem"], addr)
                and e["t"] >= a.since]
        ban = bans[0] if bans else None
        r = {"hits": len(lines), "nth_t": nth, "ban_t": ban and ban["t"],
             "elem": ban and ban["elem"], "set": ban and ban["set"], "latency_ms": None,
             "early": False}
        if ban and nth is not None:
            r["latency_ms"] = round((ban["t"] - nth) * 1000, 1)
            r["early"] = ban["t"] < nth
        elif ban and nth is None:
            r["early"] = True
        res[addr] = r
    print(json.dumps(res))


def cmd_probe(a):
    """Prints `open|refused|timeout|unreachable|error <ms> [detail]` for one connection."""
    fam = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(a.timeout)
    t0 = time.monotonic()
    detail = ""
    try:
        if a.source:
            s.bind((a.source, 0))
        s.connect((a.host, a.port))
        if a.expect == "smtp":
            detail = s.recv(200).split(b"\r\n")[0].decode(errors="replace")
            s.sendall(b"QUIT\r\n")
        elif a.expect == "http":
            s.sendall(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
            detail = s.recv(200).split(b"\r\n")[0].decode(errors="replace")
        outcome = "open"
    except socket.timeout:
        outcome = "timeout"
    except ConnectionRefusedError:
        outcome = "refused"
    except OSError as e:
        outcome = "unreachable" if e.errno in (101, 113) else "error"
        detail = str(e)
    finally:
        s.close()
    ms = (time.monotonic() - t0) * 1000
    print("%s %.0fms %s" % (outcome, ms, detail.replace(" ", "_")))


def cmd_elems(a):
    sets = table_elems(Nft(), a.family, a.table)
    if sets is None:
        print("null")
        return
    print(json.dumps({n: {e: {"expires": v[0], "packets": v[1]} for e, v in s.items()}
                      for n, s in sets.items()}))


def drop_packets(nft, family, table):
    """{chain: packets counted by its rules that drop} for the table's base chains."""
    data = nft.run("list table %s %s" % (family, table))
    res = {}
    for obj in (data or {}).get("nftables", []):
        c = obj.get("chain")
        if c and "hook" in c:
            res.setdefault(c["name"], 0)
        r = obj.get("rule")
        if not r:
            continue
        exprs = r.get("expr", [])
        if not any("drop" in x for x in exprs if isinstance(x, dict)):
            continue
        for x in exprs:
            if isinstance(x, dict) and isinstance(x.get("counter"), dict):
                res[r["chain"]] = res.get(r["chain"], 0) + x["counter"].get("packets", 0)
    return res


def cmd_drops(a):
    print(json.dumps(drop_packets(Nft(), a.family, a.table)))


def cmd_flush_wait(a):
    """Flushes the namespace's whole ruleset, then polls until every address is covered."""
    nft = Nft()
    t0 = time.monotonic()
    if not nft.cmd("flush ruleset"):
        print(json.dumps({"error": "nft flush ruleset failed"}))
        return
    first_gone = None
    while time.monotonic() - t0 < a.timeout:
        sets = table_elems(nft, a.family, a.table) or {}
        elems = [e for s in sets.values() for e in s]
        ok = all(any(covers(e, addr) for e in elems) for addr in a.addr)
        if not ok and first_gone is None:
            first_gone = time.monotonic() - t0
        if ok:
            print(json.dumps({"back_ms": round((time.monotonic() - t0) * 1000, 1),
                              "seen_missing": first_gone is not None}))
            return
        time.sleep(a.interval)
    print(json.dumps({"back_ms": None, "seen_missing": True}))


def flatten(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, "%s.%s" % (path, k) if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from flatten(v, "%s[%d]" % (path, i))
    else:
        yield path, obj


def hook_drops(data, hook):
    """Packets dropped on one hook, from the status JSON. Understands a `drops` list of
    {"hook", "packets"} objects or a `drops`/`dropped` object keyed by hook; otherwise
    falls back to numeric leaves whose path names the hook and packets or drops."""
    for key in ("drops", "dropped"):
        d = data.get(key) if isinstance(data, dict) else None
        if isinstance(d, list):
            return sum(x.get("packets", 0) for x in d
                       if isinstance(x, dict) and x.get("hook") == hook), key
        if isinstance(d, dict) and hook in d:
            return sum(v for p, v in flatten(d[hook]) if "packet" in p.lower()
                       and isinstance(v, (int, float))), key
    vals = [(p, v) for p, v in flatten(data) if isinstance(v, (int, float))
            and not isinstance(v, bool) and hook in p.lower()
            and re.search(r"packet|drop", p.lower()) and "byte" not in p.lower()]
    return sum(v for _, v in vals), ",".join(p for p, _ in vals)


def cmd_status(a):
    """Checks fwagent's status JSON (its field names are not frozen yet, so this looks
    for the figures by meaning): drops per hook, banned element count, and which of the
    expected addresses (or their prefix) appear anywhere in it."""
    try:
        data = json.load(sys.stdin)
    except ValueError as e:
        print(json.dumps({"error": "not JSON: %s" % e}))
        return
    leaves = list(flatten(data))
    res = {"drops": {}, "addresses": {}, "banned": None}
    for hook in ("input", "forward"):
        total, where = hook_drops(data, hook)
        res["drops"][hook] = {"total": total, "from": where}
    sets = data.get("sets") if isinstance(data, dict) else None
    if isinstance(sets, list):
        res["banned"] = sum(s.get("count", 0) for s in sets if isinstance(s, dict))
    for addr in a.addr:
        res["addresses"][addr] = [p for p, v in leaves if isinstance(v, str) and covers(v, addr)][:3]
    print(json.dumps(res))


def cmd_dashboard(a):
    """Polls the agent's /api/status (the JSON the dashboard page renders) until its blocked
    count and per-hook drops are the kernel's: equal to the kernel's now, or - while bots'
    retransmissions still hit the drop rules - equal to what the kernel held when the page's
    snapshot was read (`kernel_read_at_unix`, refreshed every 30 s by default). The kernel is
    sampled twice a second meanwhile; a snapshot read at second T must lie between the
    samples taken just before T and just after T+1. Fails at the timeout."""
    import urllib.request
    nft = Nft()
    t0 = time.monotonic()
    last = {}
    samples = []  # (unix time, kernel figures)
    while time.monotonic() - t0 < a.timeout:
        sets = table_elems(nft, a.family, a.table) or {}
        kernel = {"blocked": sum(len(s) for s in sets.values()),
                  "drops": drop_packets(nft, a.family, a.table)}
        samples.append((time.time(), kernel))
        at = None
        try:
            with urllib.request.urlopen(a.url, timeout=5) as r:
                page = json.load(r)
            drops = {}
            for d in page.get("drops", []):
                drops[d["hook"]] = drops.get(d["hook"], 0) + d.get("packets", 0)
            shown = {"blocked": page.get("blocked", {}).get("total"), "drops": drops}
            at = page.get("kernel_read_at_unix")
        except Exception as e:  # noqa: BLE001 - reported, then retried
            shown = {"error": str(e)}
        last = {"kernel": kernel, "dashboard": shown,
                "waited_s": round(time.monotonic() - t0, 1)}
        if shown.get("blocked") == kernel["blocked"] and all(
                shown.get("drops", {}).get(h) == n for h, n in kernel["drops"].items()):
            last["equal"] = True
            print(json.dumps(last))
            return
        if isinstance(at, int):
            before = [k for t, k in samples if at - 1 <= t <= at]
            after = [k for t, k in samples if at + 1 <= t <= at + 2]
            if before and after:
                lo, hi = before[0], after[-1]
                last["kernel_at_snapshot"] = {"before": lo, "after": hi}
                if lo["blocked"] == hi["blocked"] == shown.get("blocked") and all(
                        lo["drops"].get(h, 0) <= shown.get("drops", {}).get(h, -1) <= n
                        for h, n in hi["drops"].items()):
                    last["equal"] = True
                    print(json.dumps(last))
                    return
        time.sleep(0.5)
    last["equal"] = False
    print(json.dumps(last))


def cmd_rotate(a):
    """Renames LOG to LOG.1 and creates an empty LOG (0640, owner:adm), like logrotate's
    `create 640 Debian-exim adm`. If the daemon recreated LOG first, that file is kept:
    replacing it could throw away a line it already wrote."""
    import grp
    import pwd
    os.rename(a.log, a.log + ".1")
    uid = pwd.getpwnam(a.owner).pw_uid
    try:
        gid = grp.getgrnam("adm").gr_gid
    except KeyError:
        gid = pwd.getpwnam(a.owner).pw_gid
    try:
        fd = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        print("recreated-by-daemon")
        return
    os.fchown(fd, uid, gid)
    os.close(fd)
    print("created")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tbl = argparse.ArgumentParser(add_help=False)
    tbl.add_argument("--family", default="inet")
    tbl.add_argument("--table", default="fwagent")

    p = sub.add_parser("watch", parents=[tbl])
    p.add_argument("--log", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--deadline", type=float, default=900)
    p.add_argument("--interval", type=float, default=0.004)
    p.add_argument("--set-prefix", default="banned")
    p.set_defaults(fn=cmd_watch)

    p = sub.add_parser("analyze")
    p.add_argument("--events", required=True)
    p.add_argument("--nth", type=int, default=3)
    p.add_argument("--since", type=float, default=0.0)
    p.add_argument("addr", nargs="+")
    p.set_defaults(fn=cmd_analyze)

    p = sub.add_parser("probe")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--source")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--expect", choices=["smtp", "http", "none"], default="none")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("elems", parents=[tbl])
    p.set_defaults(fn=cmd_elems)

    p = sub.add_parser("drops", parents=[tbl])
    p.set_defaults(fn=cmd_drops)

    p = sub.add_parser("flush-wait", parents=[tbl])
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--interval", type=float, default=0.004)
    p.add_argument("addr", nargs="+")
    p.set_defaults(fn=cmd_flush_wait)

    p = sub.add_parser("status")
    p.add_argument("addr", nargs="*")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("dashboard", parents=[tbl])
    p.add_argument("--url", default="http://127.0.0.1:9180/api/status")
    p.add_argument("--timeout", type=float, default=40.0)
    p.set_defaults(fn=cmd_dashboard)

    p = sub.add_parser("rotate")
    p.add_argument("--log", required=True)
    p.add_argument("--owner", default="Debian-exim")
    p.set_defaults(fn=cmd_rotate)

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
