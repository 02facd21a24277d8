// fwagent dashboard: fetches /api/status every data-refresh-ms and redraws in place (no
// page reload). Text goes in through textContent only, never as HTML, so nothing in the
// data (file paths, rule names) can become markup. Raw numbers are kept in data-value
// attributes for scripts and tests; the text shows them grouped for humans.
"use strict";

(function () {
  const body = document.body;
  const refreshMs = Math.max(1000, parseInt(body.dataset.refreshMs, 10) || 30000);
  const $ = (id) => document.getElementById(id);
  const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  let lastGood = null; // {status, at: client time of the fetch}

  function num(id, value, text) {
    const el = $(id);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
    el.textContent = text !== undefined ? text : fmt(value);
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return (u === 0 ? String(v) : v.toFixed(1)) + " " + units[u];
  }

  function span(secs) {
    secs = Math.max(0, Math.round(secs));
    if (secs < 60) return secs + "s";
    const parts = [];
    for (const [unit, name] of [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]]) {
      if (secs >= unit && parts.length < 2) { parts.push(Math.floor(secs / unit) + name); secs %= unit; }
      else if (parts.length) break;
    }
    return parts.join("");
  }

  function clock(unix) {
    return new Date(unix * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(tableId, rows, draw) {
    const tbody = $(tableId).querySelector("tbody");
    tbody.replaceChildren();
    rows.forEach((row, i) => {
      const tr = document.createElement("tr");
      draw(tr, row, i);
      tbody.appendChild(tr);
    });
  }

  function sumDrops(st, hook, field) {
    let t = 0, any = false;
    for (const d of st.drops) {
      if (hook && d.hook !== hook) continue;
      if (d[field] === null || d[field] === undefined) continue;
      t += d[field]; any = true;
    }
    return any ? t : null;
  }

  function banner(lines, level) {
    const b = $("banner");
    b.replaceChildren();
    if (!lines.length) { b.hidden = true; return; }
    for (const l of lines) {
      const p = document.createElement("p");
      p.textContent = l;
      b.appendChild(p);
    }
    b.className = "banner " + level;
    b.hidden = false;
  }

  function render(st, serverNow) {
    $("host").textContent = st.host ? "on " + st.host : "";
    document.title = "fwagent" + (st.host ? " · " + st.host : "");
    const state = $("state");
    if (!st.present) {
      state.textContent = "table inet " + st.table + " is MISSING: nothing is blocked";
      state.className = "state bad";
    } else {
      state.textContent = "table inet " + st.table + (st.protected ? " · protected (owned by the agent)" : " · not protected") +
        (st.healthy ? " · all drop rules in place" : "");
      state.className = "state " + (st.healthy ? "good" : "bad");
    }

    num("blocked-total", st.blocked.total);
    num("blocked-ipv4", st.blocked.ipv4);
    num("blocked-ipv6", st.blocked.ipv6);
    num("dropped-packets", sumDrops(st, null, "packets"));
    num("dropped-bytes", sumDrops(st, null, "bytes"), bytes(sumDrops(st, null, "bytes")));
    const total = sumDrops(st, null, "packets_total");
    num("dropped-total-packets", total);
    $("dropped-total-line").hidden = total === null;
    for (const hook of ["input", "forward"]) {
      num("dropped-" + hook + "-packets", sumDrops(st, hook, "packets"));
      const b = sumDrops(st, hook, "bytes");
      num("dropped-" + hook + "-bytes", b, bytes(b));
    }

    const a = st.agent;
    num("bans-since-start", a ? a.rules.reduce((s, r) => s + r.bans, 0) : null);
    $("agent-line").textContent = a
      ? "agent " + a.version + " · pid " + a.pid + " · up " + span(a.uptime_secs) +
        (a.reinstalls ? " · re-installed " + a.reinstalls + "×" : "") +
        (a.kernel_errors ? " · " + a.kernel_errors + " kernel errors" : "")
      : (st.agent_note || "no agent figures");

    fill("top", st.top, (tr, o, i) => {
      tr.id = "top-" + i;
      cell(tr, o.target, "addr").id = "top-" + i + "-target";
      const p = cell(tr, fmt(o.packets), "n");
      p.id = "top-" + i + "-packets";
      p.dataset.value = String(o.packets);
      cell(tr, bytes(o.bytes), "n");
      cell(tr, o.expires_ms === null ? "permanent" : span(o.expires_ms / 1000), "n");
      cell(tr, o.rule || "–");
      cell(tr, o.times_banned === null || o.times_banned === undefined ? "–" : String(o.times_banned), "n");
    });
    $("top-empty").hidden = st.top.length > 0;

    const recent = a ? a.recent_bans.slice().reverse() : [];
    fill("recent", recent, (tr, b) => {
      cell(tr, span(serverNow - b.at_unix) + " ago");
      cell(tr, b.target, "addr");
      cell(tr, b.rule);
    });
    $("recent-empty").hidden = recent.length > 0;
    fill("rules", a ? a.rules : [], (tr, r) => {
      cell(tr, r.name);
      cell(tr, fmt(r.hits), "n");
      cell(tr, fmt(r.bans), "n");
      cell(tr, fmt(r.unbans), "n");
    });
    fill("files", a ? a.sources : [], (tr, s) => {
      cell(tr, s.path, "addr");
      cell(tr, fmt(s.lines), "n");
      cell(tr, fmt(s.offset), "n");
      cell(tr, fmt(s.errors), "n");
    });
    chart(st, a);
  }

  // Bars: dropped packets per interval; dots: new bans per interval. Each on its own scale,
  // over the last 24 h ending at the snapshot's time. The newest, partial interval comes
  // from the snapshot's own figures.
  function chart(st, a) {
    const box = $("chart");
    box.replaceChildren();
    const NS = "http://www.w3.org/2000/svg";
    // Drawn at the box's own width, so text and dots keep their shape (no stretching).
    const W = Math.max(240, Math.round(box.clientWidth - 14) || 720), H = 144, PAD = 16;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("role", "img");
    const end = st.generated_at_unix, start = end - 86400;
    const pts = a && a.history ? a.history.samples.slice() : [];
    const step = a && a.history ? a.history.interval_secs : 300;
    $("chart-step").textContent = span(step);
    const dropsNow = sumDrops(st, null, "packets_total") ?? sumDrops(st, null, "packets") ?? 0;
    if (a && (!pts.length || pts[pts.length - 1].at_unix < end)) {
      pts.push({ at_unix: end, bans: a.rules.reduce((s, r) => s + r.bans, 0), dropped_packets: dropsNow });
    }
    const bars = [];
    for (let i = 1; i < pts.length; i++) {
      if (pts[i].at_unix < start) continue;
      bars.push({
        t0: Math.max(start, pts[i - 1].at_unix), t1: pts[i].at_unix,
        drops: Math.max(0, pts[i].dropped_packets - pts[i - 1].dropped_packets),
        bans: Math.max(0, pts[i].bans - pts[i - 1].bans),
      });
    }
    const peakD = Math.max(0, ...bars.map((b) => b.drops));
    const peakB = Math.max(0, ...bars.map((b) => b.bans));
    const maxD = Math.max(1, peakD), maxB = Math.max(1, peakB);
    const x = (t) => PAD + ((t - start) / 86400) * (W - 2 * PAD);
    const base = document.createElementNS(NS, "line");
    for (const [k, v] of [["x1", PAD], ["x2", W - PAD], ["y1", H - PAD], ["y2", H - PAD]]) base.setAttribute(k, v);
    base.setAttribute("class", "axis");
    svg.appendChild(base);
    for (const b of bars) {
      const r = document.createElementNS(NS, "rect");
      const h = (b.drops / maxD) * (H - 2 * PAD);
      r.setAttribute("x", x(b.t0));
      r.setAttribute("width", Math.max(1, x(b.t1) - x(b.t0) - 0.5));
      r.setAttribute("y", H - PAD - h);
      r.setAttribute("height", h);
      r.setAttribute("class", "drops");
      svg.appendChild(r);
      if (b.bans > 0) {
        const c = document.createElementNS(NS, "circle");
        c.setAttribute("cx", (x(b.t0) + x(b.t1)) / 2);
        c.setAttribute("cy", H - PAD - (b.bans / maxB) * (H - 2 * PAD));
        c.setAttribute("r", 3);
        c.setAttribute("class", "bans");
        svg.appendChild(c);
      }
    }
    for (const [t, anchor, label] of [[start, "start", "24 h ago"], [end, "end", "now"]]) {
      const tx = document.createElementNS(NS, "text");
      tx.setAttribute("x", x(t));
      tx.setAttribute("y", H - 2);
      tx.setAttribute("text-anchor", anchor);
      tx.textContent = label;
      svg.appendChild(tx);
    }
    const top = document.createElementNS(NS, "text");
    top.setAttribute("x", PAD);
    top.setAttribute("y", 12);
    top.textContent = "peak: " + fmt(peakD) + " packets, " + fmt(peakB) + " bans per interval";
    svg.appendChild(top);
    box.appendChild(svg);
  }

  // What is wrong with the figures on screen, in plain words.
  function warnings(st, serverNow, fetchError) {
    const out = [];
    if (fetchError) {
      out.push("Cannot reach the agent (" + fetchError + ")" +
        (lastGood ? "; the figures below are from " + clock(lastGood.status.generated_at_unix) + "." : "."));
    }
    if (st) {
      if (st.kernel_error) {
        out.push("The agent cannot read the kernel: " + st.kernel_error +
          (st.kernel_read_at_unix ? " — kernel figures are from " + clock(st.kernel_read_at_unix) + "." : "."));
      }
      const age = serverNow - st.generated_at_unix;
      if (!fetchError && age > (2 * refreshMs) / 1000 + 5) {
        out.push("The data is stale: " + span(age) + " old (it should refresh every " + span(refreshMs / 1000) + ").");
      }
      for (const p of st.problems) if (!st.kernel_error || !p.startsWith("cannot read the kernel")) out.push(p);
    }
    return out;
  }

  async function refresh() {
    let fetchError = null, st = null, serverNow = Date.now() / 1000;
    try {
      const r = await fetch("api/status", { cache: "no-store", headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error("HTTP " + r.status);
      st = await r.json();
      const date = Date.parse(r.headers.get("Date") || "");
      if (!Number.isNaN(date)) serverNow = date / 1000;
      lastGood = { status: st, at: Date.now() };
    } catch (e) {
      fetchError = e.message || String(e);
    }
    const shown = st || (lastGood && lastGood.status);
    if (st) render(st, serverNow);
    const w = warnings(shown, serverNow, fetchError);
    banner(w, fetchError || (shown && (shown.kernel_error || !shown.healthy)) ? "bad" : "warn");
    body.classList.toggle("stale", Boolean(fetchError) || w.some((l) => l.startsWith("The data is stale")));
    if (st) {
      body.dataset.generated = String(st.generated_at_unix);
      body.dataset.refreshes = String((parseInt(body.dataset.refreshes, 10) || 0) + 1);
    }
    $("footer").textContent = "Read-only. Figures come from the kernel's own counters. " +
      (lastGood ? "Snapshot of " + clock(lastGood.status.generated_at_unix) + "; " : "") +
      "refreshes every " + span(refreshMs / 1000) + ".";
    setTimeout(refresh, refreshMs);
  }

  refresh();
})();
