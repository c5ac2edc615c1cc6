// edgewatch web view: hash-routed views of /api/*, refreshed when /api/events says the state changed.
// No framework, no CDN: DOM built with textContent only (device ids and feature names are data, never markup).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// SVG presentation attributes take colours, not CSS variables: the chart palette (matches style.css)
// a white outline keeps chart labels readable over lines and alarm bands
const HALO = { stroke: "#fff", "stroke-width": 3, "paint-order": "stroke" };
const C = { score: "#2458b8", threshold: "#8a5a00", band: "rgba(198, 40, 40, 0.12)", alarm: "#c62828", drift: "#7b3fb5" };
const view = { name: "fleet", device: null, filter: "", seenAlarms: new Map(), first: true };
// rows the fleet table draws: a big fleet's page stays light (the filter finds the rest)
const MAX_ROWS = 300;
let refreshing = false;
let lastStart = 0;
let lastDuration = 0;
let pending = null;
let again = false;
let lastEventAt = 0;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the page's CSP, a style attribute is not
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// ---- formatting -------------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");
function clock(t) {
  if (t === null || t === undefined) return "–";
  const d = new Date(t * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function stamp(t) {
  if (t === null || t === undefined) return "–";
  const d = new Date(t * 1000);
  const today = new Date();
  const day = d.toDateString() === today.toDateString() ? "" : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `;
  return day + clock(t);
}
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}
function ago(t, now) {
  if (!t) return "never";
  return `${duration(Math.max(0, now - t))} ago`;
}
const num = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const deviceHref = (id) => `#/device/${encodeURIComponent(id)}`;

function timeCell(t) {
  return h("td", { class: "time", title: t ? new Date(t * 1000).toISOString() : null, text: stamp(t) });
}

function explanation(shares, limit = 3) {
  if (!shares || !Object.keys(shares).length) return h("span", { class: "muted", text: "–" });
  const top = Object.entries(shares).sort((a, b) => b[1] - a[1]).slice(0, limit);
  return h("div", { class: "expl", title: "features that drove the score, with their share of it" },
    top.map(([name, share]) => h("div", { class: "row" },
      h("span", { class: "name", text: name, title: name }),
      h("span", { class: "bar" }, h("span", { style: `width:${Math.round(share * 100)}%` })),
      h("span", { class: "share", text: `${Math.round(share * 100)}%` }))));
}

function scoreCell(score, threshold) {
  const td = h("td", { class: "num", text: num(score) });
  if (score !== null && threshold) {
    const top = Math.max(threshold * 2, score);
    td.append(h("span", { class: `scorebar${score >= threshold ? " over" : ""}`, title: `threshold ${num(threshold)}` },
      h("span", { style: `width:${Math.min(100, (score / top) * 100)}%` }),
      h("i", { style: `left:${(threshold / top) * 100}%` })));
  }
  return td;
}

function stateBadge(alarm) {
  return alarm ? h("span", { class: "badge alarm", text: "ALARM" }) : h("span", { class: "badge ok", text: "normal" });
}

function alarmSpan(a, now, device) {
  if (device && device.alarm && (!a || a.end !== null)) {
    // in alarm by its labeled readings; the alarms topic has not said so (yet)
    return h("span", {}, h("span", { class: "badge alarm", text: "active" }), ` since ${stamp(device.alarm_since)} (${duration(now - device.alarm_since)})`);
  }
  if (!a) return h("span", { class: "muted", text: "none" });
  if (a.end === null) return h("span", {}, h("span", { class: "badge alarm", text: "active" }), ` since ${stamp(a.start)} (${duration(now - a.start)})`);
  return h("span", {}, `${stamp(a.start)} → ${clock(a.end)} `, h("span", { class: "muted", text: `(${duration(a.duration_seconds)})` }));
}

// ---- views ------------------------------------------------------------------------------------------

function card(label, value, cls) {
  return h("div", { class: `card ${cls || ""}` }, h("div", { class: "value", text: value }), h("div", { class: "label", text: label }));
}

function fleetView(data) {
  const c = data.counts;
  const devices = data.devices; // the server filtered them and kept the first MAX_ROWS, in-alarm first
  const input = h("input", { id: "filter", type: "search", placeholder: "filter devices", value: view.filter,
    oninput: (e) => { view.filter = e.target.value; refresh(); } });
  const rows = devices.map((d) => {
    const fresh = d.last_alarm && d.last_alarm.end === null && isNewAlarm(d.last_alarm);
    return h("tr", { class: `${d.alarm ? "alarm" : ""}${fresh ? " fresh" : ""}`, "data-device": d.device_id, "data-alarm": d.alarm ? "1" : "0" },
      h("td", {}, stateBadge(d.alarm)),
      h("td", {}, h("a", { href: deviceHref(d.device_id), text: d.device_id })),
      timeCell(d.timestamp),
      scoreCell(d.score, d.threshold),
      h("td", {}, alarmSpan(d.last_alarm, data.now, d)),
      h("td", {}, explanation(d.last_alarm ? d.last_alarm.explanation : d.explanation)),
      h("td", { class: "muted col-model", text: d.model.name ? `${d.model.name} ${d.model.version}` : "–" }));
  });
  return [
    h("h1", { text: "Fleet" }),
    h("p", { class: "sub", text: "Devices in alarm first. Explanation: the features that drove the last alarm's score." }),
    h("div", { class: "cards" },
      card("devices", c.devices), card("in alarm", c.alarming, c.alarming ? "alarm" : ""),
      card("alarms", c.alarms), card("drift events", c.drift), card("messages read", data.feed.messages)),
    h("div", { class: "toolbar" }, input, h("label", { text: data.matching > devices.length
      ? `first ${devices.length} of ${data.matching} ${view.filter ? "matching" : "devices"} shown (in alarm first); filter to find the others`
      : `${devices.length} of ${c.devices} shown` })),
    devices.length
      ? h("div", { class: "scroll" }, h("table", { id: "fleet" },
        h("thead", {}, h("tr", {}, ["State", "Device", "Last reading", "Score", "Last alarm", "Explanation", "Model"]
          .map((t) => h("th", { class: t === "Score" ? "num" : t === "Model" ? "col-model" : null, text: t })))),
        h("tbody", {}, rows)))
      : h("p", { class: "empty", text: c.devices ? "No device matches the filter." : `No device yet: ${data.feed.ok ? "waiting for the flow's labeled events" : data.feed.text}.` }),
  ];
}

// alarms raised since the page opened stay highlighted for FRESH_MS (not the ones already there at load)
const FRESH_MS = 10000;
function isNewAlarm(a) {
  const key = `${a.device_id}@${a.start}`;
  const now = Date.now();
  if (!view.seenAlarms.has(key)) view.seenAlarms.set(key, view.first ? 0 : now);
  for (const [k, t] of view.seenAlarms) if (t && now - t > 6 * FRESH_MS) view.seenAlarms.set(k, 0);
  const seen = view.seenAlarms.get(key);
  return seen > 0 && now - seen < FRESH_MS;
}

function alarmsTable(alarms, now, withDevice = true) {
  if (!alarms.length) return h("p", { class: "empty", text: "No alarm so far." });
  return h("div", { class: "scroll" }, h("table", { id: "alarms" },
    h("thead", {}, h("tr", {}, [withDevice ? "Device" : null, "State", "Raised", "Cleared", "Duration", "Peak score", "Explanation", "Model"]
      .filter(Boolean).map((t) => h("th", { class: ["Duration", "Peak score"].includes(t) ? "num" : t === "Model" ? "col-model" : null, text: t })))),
    h("tbody", {}, alarms.map((a) => h("tr", { class: a.end === null ? "alarm" : "", "data-device": a.device_id },
      withDevice ? h("td", {}, h("a", { href: deviceHref(a.device_id), text: a.device_id })) : null,
      h("td", {}, a.end === null ? h("span", { class: "badge alarm", text: "active" }) : h("span", { class: "badge cleared", text: "cleared" })),
      timeCell(a.start),
      a.end === null ? h("td", { class: "muted", text: "–" }) : timeCell(a.end),
      h("td", { class: "num", text: a.end === null ? duration(now - a.start) : duration(a.duration_seconds) }),
      h("td", { class: "num", text: num(a.peak_score) }),
      h("td", {}, explanation(a.explanation)),
      h("td", { class: "muted col-model", text: a.model.name ? `${a.model.name} ${a.model.version}` : "–" }))))));
}

function driftTable(events, withDevice = true) {
  if (!events.length) return h("p", { class: "empty", text: "No drift event so far: no device has been given a new normal." });
  const change = (d) => h("div", { class: "changes" }, d.features.map((n) => {
    const before = d.level_before[n], after = d.level_after[n];
    const delta = before === undefined || after === undefined ? null : after - before;
    return h("div", { class: "row" }, h("span", { text: n }),
      h("span", { class: "num", text: `${num(before, 2)} → ${num(after, 2)}` }),
      h("span", { class: "num muted", text: delta === null ? "" : `${delta >= 0 ? "+" : "−"}${num(Math.abs(delta), 2)}` }));
  }));
  return h("div", { class: "scroll" }, h("table", { id: "drift" },
    h("thead", {}, h("tr", {}, [withDevice ? "Device" : null, "Time", "Reason", "Level change (before → after)", "Model"]
      .filter(Boolean).map((t) => h("th", { class: t === "Model" ? "col-model" : null, text: t })))),
    h("tbody", {}, events.map((d) => h("tr", { "data-device": d.device_id },
      withDevice ? h("td", {}, h("a", { href: deviceHref(d.device_id), text: d.device_id })) : null,
      timeCell(d.timestamp),
      h("td", {}, h("span", { class: "badge drift", text: d.reason })),
      h("td", {}, change(d)),
      h("td", { class: "muted col-model", text: d.model.name ? `${d.model.name} ${d.model.version}` : "–" }))))));
}

function alarmBands(data) {
  // alarms of the alarms topic, and runs of abnormal readings (the alarm state each reading carries)
  const bands = data.alarms.map((a) => [a.start, a.end === null ? Infinity : a.end]);
  const r = data.readings;
  let start = null;
  for (let i = 0; i < r.timestamp.length; i++) {
    if (r.is_anomaly[i] && start === null) start = r.timestamp[i];
    if (!r.is_anomaly[i] && start !== null) { bands.push([start, r.timestamp[i]]); start = null; }
  }
  if (start !== null) bands.push([start, Infinity]);
  return bands;
}

// value ticks on 1, 2, 5 × 10^n; time ticks on whole seconds, minutes or hours
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
function timeTicks(lo, hi, count) {
  const step = TIME_STEPS.find((st) => (hi - lo) / st <= count) || 86400 * Math.ceil((hi - lo) / 86400 / count);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) ticks.push(v);
  return ticks;
}
function niceTicks(lo, hi, count) {
  const span = hi - lo || 1;
  const step0 = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((st) => span / st <= count) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(v);
  return ticks;
}

function chart({ title, xs, ys, color, threshold, bands, marks, drifts, width, height = 200, yDigits }) {
  const W = Math.max(280, Math.round(width)), H = height, L = 56, R = 12, T = 14, B = 26;
  const finite = ys.filter((y) => y !== null && Number.isFinite(y));
  const x0 = xs[0], x1 = xs[xs.length - 1] > x0 ? xs[xs.length - 1] : x0 + 1;
  let y0 = Math.min(...finite, threshold ?? Infinity), y1 = Math.max(...finite, threshold ?? -Infinity);
  if (!finite.length) { y0 = 0; y1 = 1; }
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const padY = (y1 - y0) * 0.08; y0 -= padY; y1 += padY;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": title });
  for (const [a, b] of bands || []) {
    if (b < x0 || a > x1) continue;
    const xa = X(Math.max(a, x0)), xb = X(Math.min(b, x1));
    svg.append(s("rect", { x: xa, y: T, width: Math.max(2, xb - xa), height: H - T - B, fill: C.band }));
  }
  const yt = niceTicks(y0, y1, H > 180 ? 5 : 4);
  const digits = yDigits ?? Math.max(0, -Math.floor(Math.log10((yt[1] - yt[0]) || 1)));
  const axis = s("g", { class: "axis" });
  for (const v of yt) {
    axis.append(s("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
    axis.append(s("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }, v.toFixed(Math.min(digits, 4))));
  }
  const xt = timeTicks(x0, x1, Math.max(2, Math.floor(W / 110)));
  for (const v of xt) axis.append(s("text", { x: X(v), y: H - 6, "text-anchor": "middle" }, clock(v)));
  axis.append(s("line", { x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(axis);
  for (const t of drifts || []) {
    if (t < x0 || t > x1) continue;
    svg.append(s("line", { x1: X(t), x2: X(t), y1: T, y2: H - B, stroke: C.drift, "stroke-width": 2 }, s("title", {}, "drift: new normal accepted")));
    svg.append(s("text", { x: X(t) + 4, y: T - 3, fill: C.drift, "font-size": 11, ...HALO }, "drift"));
  }
  if (threshold !== null && threshold !== undefined) {
    svg.append(s("line", { x1: L, x2: W - R, y1: Y(threshold), y2: Y(threshold), stroke: C.threshold, "stroke-width": 1.5, "stroke-dasharray": "6 4" }));
    svg.append(s("text", { x: W - R - 4, y: Y(threshold) - 5, "text-anchor": "end", fill: C.threshold, "font-size": 11, ...HALO }, `threshold ${num(threshold)}`));
  }
  let d = "";
  let pen = false;
  xs.forEach((x, i) => {
    const y = ys[i];
    if (y === null || !Number.isFinite(y)) { pen = false; return; }
    d += `${pen ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`;
    pen = true;
  });
  svg.append(s("path", { d, fill: "none", stroke: color, "stroke-width": 1.6, "stroke-linejoin": "round" }));
  xs.forEach((x, i) => {
    if (marks && marks[i] && ys[i] !== null) svg.append(s("circle", { cx: X(x), cy: Y(ys[i]), r: 2.6, fill: C.alarm }));
  });
  return h("div", { class: "chart" }, h("h3", { text: title }), svg);
}

function deviceView(data) {
  const r = data.readings;
  const bands = alarmBands(data);
  const drifts = data.drift.map((d) => d.timestamp);
  const room = document.getElementById("main").clientWidth - 22; // chart box padding and border
  const columns = Math.max(1, Math.floor((room + 12) / 432));
  const cell = (room - (columns - 1) * 12) / columns - 22;
  const palette = ["#2458b8", "#0f7f7a", "#a1570f", "#6a3fb0", "#3b6e1f", "#9c2f6b", "#44546a", "#b3261e"];
  const head = [
    h("p", {}, h("a", { href: "#/", text: "← Fleet" })),
    h("h1", {}, `${data.device_id} `, stateBadge(data.alarm)),
    h("p", { class: "sub" },
      `Model ${data.model.name || "–"} ${data.model.version || ""} · threshold ${num(data.threshold)} · last reading ${stamp(data.timestamp)} · ` +
      `${r.timestamp.length} recent readings` + (data.alarm && data.alarm_since ? ` · in alarm since ${stamp(data.alarm_since)}` : "")),
  ];
  if (!r.timestamp.length) return [...head, h("p", { class: "empty", text: "No labeled reading of this device in the view yet." })];
  const legend = h("div", { class: "legend" },
    h("span", {}, h("span", { class: "key line" }), "score"),
    h("span", {}, h("span", { class: "key threshold" }), "threshold"),
    h("span", {}, h("span", { class: "key band" }), "alarm"),
    h("span", {}, h("span", { class: "key point" }), "abnormal reading"),
    h("span", {}, h("span", { class: "key drift" }), "drift (new normal)"));
  return [
    ...head,
    legend,
    h("div", { class: "charts" },
      chart({ title: "Anomaly score", xs: r.timestamp, ys: r.score, color: C.score, threshold: data.threshold, bands, marks: r.is_anomaly, drifts, width: room - 20, height: 220 })),
    h("h2", { text: "Readings" }),
    h("div", { class: "charts features" },
      data.feature_names.map((name, i) => chart({ title: name, xs: r.timestamp, ys: r.values[i], color: palette[i % palette.length], bands, marks: r.is_anomaly, drifts, width: cell, height: 160 }))),
    h("h2", { text: "Last alarm's explanation" }),
    explanation(data.last_alarm ? data.last_alarm.explanation : data.explanation, 8),
    h("h2", { text: "Alarms of this device" }),
    alarmsTable(data.alarms, data.now, false),
    h("h2", { text: "Drift events of this device" }),
    driftTable(data.drift, false),
  ];
}

// ---- plumbing ---------------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/device\/(.+)$/);
  if (m) { view.name = "device"; view.device = decodeURIComponent(m[1]); }
  else if (hash === "#/alarms") view.name = "alarms";
  else if (hash === "#/drift") view.name = "drift";
  else view.name = "fleet";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view.name);
  document.getElementById("main").replaceChildren(h("p", { class: "empty", text: "Loading…" }));
  refresh();
}

function showFeed(data) {
  const feed = data.feed;
  const el = document.getElementById("feed");
  el.className = `feed ${feed.ok ? "ok" : "bad"}`;
  let text = feed.text;
  if (feed.ok && feed.last_message_at) text += ` · last message ${ago(feed.last_message_at, data.now)}`;
  document.getElementById("feed-text").textContent = text;
  const footer = [`${feed.messages} messages read`];
  if (feed.rejected) footer.push(`${feed.rejected} refused (last: ${feed.last_rejection})`);
  footer.push(lastEventAt ? "live" : "polling every 5 s");
  footer.push(`times in local time (UTC${-new Date().getTimezoneOffset() >= 0 ? "+" : "-"}${Math.abs(new Date().getTimezoneOffset() / 60)})`);
  document.getElementById("footer").textContent = footer.join(" · ");
}

// live updates come at most every 3 × what the last refresh took (at least 0.5 s): a slow box is not swamped
function scheduleRefresh() {
  if (pending) return;
  const wait = Math.max(0, lastStart + Math.max(500, 3 * lastDuration) - performance.now());
  pending = setTimeout(() => { pending = null; refresh(); }, wait);
}

async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  lastStart = performance.now();
  try {
    const url = {
      device: () => `/api/device?id=${encodeURIComponent(view.device)}`,
      fleet: () => `/api/fleet?limit=${MAX_ROWS}&q=${encodeURIComponent(view.filter)}`,
    }[view.name]?.() ?? `/api/${view.name}`;
    const response = await fetch(url, { cache: "no-store" });
    const data = await response.json();
    const main = document.getElementById("main");
    const focused = document.activeElement && document.activeElement.id === "filter";
    if (!response.ok) {
      main.replaceChildren(h("p", {}, h("a", { href: "#/", text: "← Fleet" })), h("p", { class: "empty error", text: data.error }));
    } else {
      showFeed(data);
      const parts = {
        fleet: () => fleetView(data),
        alarms: () => [h("h1", { text: "Alarms" }), h("p", { class: "sub", text: "Raised and cleared (source times), newest first." }), alarmsTable(data.alarms, data.now)],
        drift: () => [h("h1", { text: "Drift events" }), h("p", { class: "sub", text: "A device's new normal was accepted: its model re-learned these features' levels." }), driftTable(data.drift)],
        device: () => deviceView(data),
      }[view.name]();
      main.replaceChildren(...parts);
      main.dataset.version = data.version;
      if (view.name === "fleet") {
        view.first = false;
        if (focused) { const f = document.getElementById("filter"); f.focus(); f.setSelectionRange(f.value.length, f.value.length); }
      }
    }
  } catch (err) {
    const el = document.getElementById("feed");
    el.className = "feed bad";
    document.getElementById("feed-text").textContent = "the view's server does not answer";
  } finally {
    refreshing = false;
    lastDuration = performance.now() - lastStart;
    if (again) { again = false; refresh(); }
  }
}

function live() {
  const events = new EventSource("/api/events");
  events.onmessage = () => { lastEventAt = Date.now(); scheduleRefresh(); };
  // without an event stream (too many viewers, a proxy that buffers), poll
  setInterval(() => { if (Date.now() - lastEventAt > 20000) { lastEventAt = 0; refresh(); } }, 5000);
}

window.addEventListener("hashchange", route);
route();
live();
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(refresh, 200); });
