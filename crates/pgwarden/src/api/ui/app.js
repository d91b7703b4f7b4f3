// pgwarden dashboard. Polls /ui/data twice a second and redraws; polls
// /alerts, whose panel stays hidden while this keeper has no such endpoint.
// Every string from the store reaches the page through textContent, never
// as markup.
"use strict";

const POLL_MS = 500;
const ALERTS_MS = 2000;
const ALERTS_ABSENT_MS = 30000;
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2f81f7", "#e5534b", "#3fb950", "#d29922", "#a371f7", "#39c5cf"];

const state = {
  samples: [], // lag samples, oldest first
  spanMs: 15 * 60 * 1000,
  everyMs: 1000,
  last: null, // the last /ui/data answer with a status
  reachable: true,
  storeError: null,
  colours: {}, // uid -> colour index, stable while the page is open
};

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function utc(ms) { return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z"); }

// A time in the browser's zone, UTC on hover.
function timeEl(ms, opts) {
  const t = el("time", { datetime: new Date(ms).toISOString(), title: utc(ms) });
  t.textContent = new Date(ms).toLocaleString(undefined, opts);
  return t;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
}

function colourOf(uid) {
  if (!(uid in state.colours)) state.colours[uid] = Object.keys(state.colours).length % COLOURS.length;
  return state.colours[uid];
}

// ---- data -----------------------------------------------------------------

async function poll() {
  try {
    const since = state.samples.length ? state.samples[state.samples.length - 1].at_ms : null;
    const url = "/ui/data" + (since === null ? "" : "?since=" + since);
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    take(d);
    state.reachable = true;
  } catch (e) {
    state.reachable = false;
    state.unreachableWhy = e && e.message ? e.message : String(e);
  }
  render();
  setTimeout(poll, POLL_MS);
}

function take(d) {
  state.spanMs = d.lag_span_ms || state.spanMs;
  state.everyMs = d.lag_every_ms || state.everyMs;
  state.now = d.now_ms;
  state.servedBy = d.served_by;
  state.storeError = d.store_error || null;
  for (const s of d.lag || []) {
    const prev = state.samples[state.samples.length - 1];
    if (prev && s.at_ms <= prev.at_ms) state.samples = []; // the keeper's clock stepped back
    state.samples.push(s);
  }
  const oldest = d.now_ms - state.spanMs;
  while (state.samples.length && state.samples[0].at_ms < oldest) state.samples.shift();
  if (d.status) state.last = d;
}

async function pollAlerts() {
  let next = ALERTS_MS;
  const panel = $("alerts-panel");
  try {
    const r = await fetch("/alerts", { cache: "no-store" });
    if (r.status === 404) {
      panel.hidden = true;
      next = ALERTS_ABSENT_MS;
    } else if (r.ok) {
      renderAlerts(await r.json());
      panel.hidden = false;
    }
  } catch (e) {
    // The keeper is unreachable: the data poll's banner says so.
  }
  setTimeout(pollAlerts, next);
}

// ---- rendering ------------------------------------------------------------

function render() {
  const d = state.last;
  renderBanners(d ? d.status : null);
  $("updated").textContent = "";
  if (!d) {
    $("updated").textContent = state.reachable ? "loading" : "no answer";
    return;
  }
  const s = d.status;
  $("cluster").textContent = s.cluster;
  $("primary-uid").textContent = s.primary || "none";
  $("generation").textContent = s.generation;
  $("timeline").textContent = s.timeline;
  $("served-by").textContent = d.served_by;
  $("updated").append("updated ", timeEl(state.now, { hour: "2-digit", minute: "2-digit", second: "2-digit" }));
  document.title = "pgwarden " + s.cluster + ": " + (s.primary || "no primary");
  renderTopology(s, d.upstreams || {});
  renderMembers(s);
  renderProxies(s);
  renderLag(s);
  renderDecisions(s.history || []);
}

function renderBanners(s) {
  const box = $("banners");
  clear(box);
  const add = (kind, text) => box.append(el("div", { class: "banner " + kind }, text));
  if (!state.reachable) add("bad", "This keeper does not answer (" + state.unreachableWhy + "): showing the last picture. Open /ui on another keeper.");
  if (state.storeError) add("bad", "This keeper cannot read etcd: " + state.storeError + ". Showing the last picture.");
  if (!s) return;
  const primary = (s.members || []).find((m) => m.uid === s.primary);
  if (!s.primary) add("bad", "No primary: nothing accepts writes.");
  else if (!primary || !primary.healthy) add("bad", "The primary " + s.primary + " is not healthy: writes fail.");
  else if (primary.state !== "primary") add("warn", "Promoting " + s.primary + ": it does not accept writes yet.");
  if (s.deposed) add("warn", "Failover in progress: " + s.deposed + " deposed, promoting " + (s.target || "the best standby") + ".");
  if (s.paused) add("warn", "Paused: no automatic failover until `pgwarden ctl resume`.");
  if (s.writes_blocked) add("bad", "Writes blocked: no synchronous standby confirms commits (strict mode).");
  for (const p of s.store_problems || []) add("bad", p);
}

function renderTopology(s, upstreams) {
  const root = $("topology");
  clear(root);
  const members = s.members || [];
  const sync = new Set(s.sync_standbys || []);
  // Rows: the primary (and members following nobody known) first, then
  // each standby one row below the member it follows.
  const depth = {};
  const depthOf = (uid, seen) => {
    if (uid in depth) return depth[uid];
    const up = upstreams[uid];
    if (!up || seen.has(uid) || !members.some((m) => m.uid === up)) return (depth[uid] = 0);
    seen.add(uid);
    return (depth[uid] = depthOf(up, seen) + 1);
  };
  for (const m of members) depthOf(m.uid, new Set());
  // Members with no role (not assigned yet, or removed) go last.
  const loose = (m) => m.role === "none" && m.uid !== s.primary;
  const deepest = Math.max(0, ...members.filter((m) => !loose(m)).map((m) => depth[m.uid]));
  const byRow = [];
  for (const m of members) {
    const row = loose(m) ? deepest + 1 : depth[m.uid];
    (byRow[row] = byRow[row] || []).push(m);
  }
  // Without empty rows (a sparse array would make the sizes NaN).
  const rows = byRow.filter((r) => r && r.length);
  const W = 190, H = 70, GAP_X = 24, GAP_Y = 56, PAD = 12;
  const widest = Math.max(1, ...rows.map((r) => r.length));
  const width = PAD * 2 + widest * W + (widest - 1) * GAP_X;
  const height = PAD * 2 + rows.length * H + Math.max(0, rows.length - 1) * GAP_Y;
  const fullHeight = Math.max(height, H + 2 * PAD);
  root.setAttribute("viewBox", "0 0 " + width + " " + fullHeight);
  // Natural size on a laptop, shrunk to fit a phone (style.css).
  root.setAttribute("width", width);
  root.setAttribute("height", fullHeight);
  const defs = svg("defs");
  for (const kind of ["plain", "sync"]) {
    const marker = svg("marker", { id: "arrow-" + kind, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
    marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" + (kind === "sync" ? " sync" : "") }));
    defs.append(marker);
  }
  root.append(defs);
  const pos = {};
  rows.forEach((row, r) => {
    const rowWidth = row.length * W + (row.length - 1) * GAP_X;
    const x0 = (width - rowWidth) / 2;
    row.forEach((m, i) => { pos[m.uid] = { x: x0 + i * (W + GAP_X), y: PAD + r * (H + GAP_Y) }; });
  });
  for (const [uid, up] of Object.entries(upstreams)) {
    const a = pos[uid], b = pos[up];
    if (!a || !b) continue;
    const kind = sync.has(uid) ? "sync" : "plain";
    root.append(svg("line", {
      x1: a.x + W / 2, y1: a.y, x2: b.x + W / 2, y2: b.y + H + 2,
      class: "edge" + (kind === "sync" ? " sync" : ""), "marker-end": "url(#arrow-" + kind + ")",
      "data-from": uid, "data-to": up,
    }));
  }
  for (const m of members) {
    const p = pos[m.uid];
    if (!p) continue;
    const cls = ["node", m.healthy ? "healthy" : "unhealthy", m.uid === s.primary ? "primary" : ""].join(" ");
    const g = svg("g", { class: cls, transform: "translate(" + p.x + "," + p.y + ")", "data-uid": m.uid, "data-role": m.role });
    g.append(svg("rect", { width: W, height: H, rx: 7 }));
    g.append(svg("text", { x: 10, y: 20, "font-weight": "700" }, m.uid));
    g.append(svg("text", { x: W - 10, y: 20, "text-anchor": "end" }, m.role));
    const what = (m.state || "gone") + " · TL " + m.timeline + (m.healthy ? "" : " · unhealthy");
    g.append(svg("text", { x: 10, y: 40, class: "small" }, what));
    g.append(svg("text", { x: 10, y: 58, class: "small" }, m.pg_address || "-"));
    if (sync.has(m.uid)) g.append(svg("text", { x: W - 10, y: 58, "text-anchor": "end", class: "badge" }, "SYNC"));
    g.append(svg("title", {}, m.uid + ": " + m.role + ", " + (m.state || "gone") + (m.error ? ", " + m.error : "")));
    root.append(g);
  }
}

function renderMembers(s) {
  const body = $("members").tBodies[0];
  clear(body);
  const sync = new Set(s.sync_standbys || []);
  for (const m of s.members || []) {
    const tr = el("tr", { "data-uid": m.uid, "data-role": m.role });
    tr.append(el("td", {}, m.uid), el("td", {}, m.role), el("td", {}, m.state || "gone"));
    tr.append(el("td", { class: m.healthy ? "ok" : "bad" }, m.healthy ? "yes" : "no"));
    tr.append(el("td", {}, m.timeline), el("td", {}, m.lsn || "-"), el("td", {}, m.role === "standby" ? bytes(m.lag_bytes) : "-"));
    tr.append(el("td", {}, m.pg_address || "-"), el("td", {}, m.applied_generation ?? "-"));
    const notes = [];
    if (sync.has(m.uid)) notes.push("synchronous");
    if (m.pending_restart) notes.push("pending restart");
    if (m.error) notes.push(m.error);
    tr.append(el("td", {}, notes.join("; ")));
    body.append(tr);
  }
}

function renderProxies(s) {
  const p = $("proxies");
  const proxies = s.proxies || [];
  if (!proxies.length) { p.textContent = "No proxy reports."; return; }
  p.textContent = "Proxies (generation applied): " + proxies
    .map((x) => x.id + " @ " + x.generation + (x.generation < s.generation ? " (behind)" : ""))
    .join(", ");
}

// A round upper bound for the chart's axis.
function niceMax(v) {
  if (v <= 1024) return 1024;
  const p = Math.pow(2, Math.ceil(Math.log2(v)));
  return p / 2 >= v ? p / 2 : p;
}

function renderLag(s) {
  const root = $("lag-chart");
  clear(root);
  // Drawn at the size it shows, so that its labels stay legible on a phone.
  const W = Math.max(300, Math.round(root.getBoundingClientRect().width) || 800);
  const H = W < 500 ? 200 : 260, L = 64, R = 10, T = 10, B = 30;
  root.setAttribute("viewBox", "0 0 " + W + " " + H);
  const now = state.now;
  // The window grows with the history, from a minute to the full span, so
  // that a young history is not a sliver at the right edge.
  const oldest = state.samples.length ? state.samples[0].at_ms : now;
  const windowMs = Math.min(state.spanMs, Math.max(60000, now - oldest));
  const from = now - windowMs;
  const uids = new Set();
  let max = 0;
  for (const smp of state.samples) for (const [u, v] of Object.entries(smp.lag_bytes)) { uids.add(u); max = Math.max(max, v); }
  const top = niceMax(max);
  const x = (t) => L + ((t - from) / windowMs) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  for (const f of [0, 0.5, 1]) {
    root.append(svg("line", { x1: L, x2: W - R, y1: y(top * f), y2: y(top * f), class: "grid" }));
    root.append(svg("text", { x: L - 6, y: y(top * f) + 4, "text-anchor": "end", class: "small" }, bytes(top * f)));
  }
  for (const f of [1, 2 / 3, 1 / 3, 0]) {
    const t = now - f * windowMs;
    const label = f === 0 ? "now" : "-" + ago(f * windowMs);
    const tx = svg("text", { x: x(t), y: H - 8, "text-anchor": f === 1 ? "start" : f === 0 ? "end" : "middle", class: "small" }, label);
    tx.append(svg("title", {}, new Date(t).toLocaleTimeString() + " (" + utc(t) + ")"));
    root.append(tx);
  }
  const legend = $("lag-legend");
  clear(legend);
  const standbys = (s.members || []).filter((m) => m.role === "standby").map((m) => m.uid);
  for (const u of standbys) uids.add(u);
  for (const uid of [...uids].sort()) {
    const c = colourOf(uid);
    let d = "", points = 0, prev = null, end = null;
    for (const smp of state.samples) {
      const v = smp.lag_bytes[uid];
      if (v === undefined) { prev = null; continue; }
      end = [x(smp.at_ms), y(v)];
      const gap = prev !== null && smp.at_ms - prev > 3 * state.everyMs;
      d += (prev === null || gap ? "M" : "L") + x(smp.at_ms).toFixed(1) + "," + y(v).toFixed(1) + " ";
      prev = smp.at_ms;
      points++;
    }
    if (points) {
      const path = svg("path", { d: d.trim(), class: "series", stroke: COLOURS[c], "data-uid": uid, "data-points": points });
      path.append(svg("title", {}, uid));
      root.append(path);
      // The newest point, so that a lone sample still shows.
      root.append(svg("circle", { cx: end[0].toFixed(1), cy: end[1].toFixed(1), r: 3.5, fill: COLOURS[c] }));
    }
    // The line's newest point, so that the legend agrees with it.
    const known = state.samples.filter((smp) => smp.lag_bytes[uid] !== undefined);
    const newest = known.length ? known[known.length - 1].lag_bytes[uid] : undefined;
    const li = el("li", { "data-uid": uid });
    li.append(el("span", { class: "swatch c" + c }), uid + ": " + bytes(newest ?? null) + trend(uid));
    legend.append(li);
  }
}

function ago(ms) {
  const secs = Math.round(ms / 1000);
  if (secs < 120) return secs + " s";
  const m = Math.floor(secs / 60), r = secs % 60;
  return m + " min" + (r ? " " + r + " s" : "");
}

// Whether a standby's lag is getting better or worse: now against 30 s ago.
function trend(uid) {
  const recent = state.samples.filter((smp) => smp.lag_bytes[uid] !== undefined);
  if (recent.length < 2) return "";
  const last = recent[recent.length - 1];
  const before = recent.find((smp) => smp.at_ms >= last.at_ms - 30000);
  const a = before.lag_bytes[uid], b = last.lag_bytes[uid];
  if (b > a * 1.1 && b - a > 1024) return " (growing)";
  if (b < a * 0.9 && a - b > 1024) return " (shrinking)";
  return " (steady)";
}

function renderDecisions(history) {
  const list = $("decisions");
  clear(list);
  if (!history.length) { list.append(el("li", { class: "muted" }, "No decision yet.")); return; }
  for (const h of [...history].reverse()) {
    const li = el("li", { "data-generation": h.generation });
    li.append(timeEl(h.at_ms));
    li.append(el("span", { class: "gen" }, "gen " + h.generation));
    li.append(el("span", { class: "change" }, (h.old_primary || "-") + " → " + (h.new_primary || "-")));
    li.append(el("span", { class: "reason" }, h.reason));
    list.append(li);
  }
}

// Alerts come from another part of pgwarden; show their common fields and
// fall back to the JSON for anything else.
function renderAlerts(a) {
  const fill = (id, items, firing) => {
    const ul = $(id);
    clear(ul);
    if (!items || !items.length) { ul.append(el("li", { class: "muted" }, "none")); return; }
    for (const item of items) {
      const li = el("li", { class: firing ? "firing" : "" });
      if (item && typeof item === "object") {
        const name = item.name || item.alert || item.rule || item.kind || "alert";
        const when = item.since_ms || item.started_ms || item.at_ms || item.fired_ms || item.resolved_ms;
        if (typeof when === "number") { li.append(timeEl(when), " "); }
        const text = item.message || item.summary || item.description || item.reason || "";
        li.append(String(name) + (item.severity ? " [" + item.severity + "]" : "") + (text ? ": " + text : ""));
      } else {
        li.textContent = String(item);
      }
      ul.append(li);
    }
  };
  fill("alerts-firing", a.firing, true);
  fill("alerts-recent", a.recent, false);
}

poll();
pollAlerts();
