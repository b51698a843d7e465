// gridseal console: read-only views of the chain, the devices and the
// pending approvals. No request it makes changes anything.
"use strict";
const rows = [];            // operations, newest first, capped
const byKey = new Map();    // writer/op → operation, to merge its phases
const MAX_ROWS = 1000;
let paused = false, queued = [];
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
// Every time on the page reads the same: local date and time to the
// millisecond, "2025-06-01 14:03:07.123".
const pad = (n, w = 2) => String(n).padStart(w, "0");
function fmtTime(t) {
  const d = new Date(t);
  if (!t || isNaN(d) || d.getTime() <= 0) return "-"; // Go's zero time: never
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// An operation is every event of one request: an allowed write is recorded
// before it is forwarded (request) and with the device's answer (complete),
// a late reply after a timeout as dropped-reply. Approval steps stand alone.
const opKey = (r) => (r.op && r.phase !== "approval" ? `${r.writer}/${r.op}` : null);
const last = (op) => op.phases[op.phases.length - 1];

function filters() {
  return { device: $("#f-device").value, verdict: $("#f-verdict").value,
    fc: $("#f-function").value.trim(), client: $("#f-client").value.trim() };
}
function matches(op, f) {
  const r = op.phases[0];
  if (f.device && r.device !== f.device) return false;
  if (f.verdict && r.verdict !== f.verdict) return false;
  if (f.fc && String(r.fc) !== f.fc) return false;
  if (f.client && !(r.client || "").includes(f.client)) return false;
  return true;
}
const phaseName = { "request": "request", "complete": "complete", "dropped-reply": "reply dropped" };
function rowHTML(op) {
  const first = op.phases[0], r = last(op);
  const verdict = r.phase === "approval" ? (r.verdict === "allow" ? "approval" : "approval refused") : r.phase === "policy" ? "policy mode" : r.phase === "request" ? r.verdict + " · recorded before forwarding"
    : r.phase === "dropped-reply" && op.phases.length === 1 ? "device reply dropped" : r.verdict;
  const vals = (first.values || []).join(",");
  const exc = r.exception ? ` (exc 0x${r.exception.toString(16).padStart(2, "0").toUpperCase()})` : "";
  const phases = op.phases.length > 1 ? `<br><span class="phases muted">${op.phases.map((p) => esc(phaseName[p.phase] || p.phase)).join(" → ")}</span>` : "";
  return `<td title="${esc(first.time)}">${fmtTime(first.time)}</td><td>${esc(first.client)}</td><td>${esc(first.device)}</td><td>${first.unit}</td>` +
    `<td>${first.fc} ${esc(first.function || "")}</td><td>${first.address}+${first.quantity}</td><td>${esc(vals)}</td>` +
    `<td class="verdict">${esc(verdict)}${exc}${r.break_glass ? ' <span class="badge break-glass" title="allowed by a break-glass quorum: fewer approvers than the rule needs">BREAK-GLASS</span>' : ""}${r.observed ? ' <span class="badge would-deny" title="forwarded only because the device is in observe mode: the rules deny it">WOULD DENY</span>' : ""}${r.candidate_differs ? ' <span class="badge candidate" title="the shadow candidate policy decides this request otherwise: the reason ends with what it says">CANDIDATE DIFFERS</span>' : ""}${phases}</td><td class="reason">${esc(r.reason)}</td><td>${esc((r.approval || "").slice(0, 12))}</td>`;
}
function render() {
  const f = filters();
  const tb = $("#stream tbody");
  const shown = rows.filter((op) => matches(op, f));
  tb.innerHTML = "";
  for (const op of shown.slice(0, 300)) addRow(tb, op, false, true);
  $("#count").textContent = `${shown.length} of ${rows.length} shown`;
}
function paint(op) {
  const tr = op.tr, r = op.phases[0];
  tr.className = (r.phase === "approval" && r.verdict === "allow" ? "approval" : r.verdict) + (tr.classList.contains("fresh") ? " fresh" : "");
  tr.dataset.verdict = r.verdict;
  tr.dataset.phases = op.phases.map((p) => p.phase).join(" ");
  tr.innerHTML = rowHTML(op);
}
function addRow(tb, op, fresh, append) {
  const tr = document.createElement("tr");
  if (fresh) tr.classList.add("fresh");
  op.tr = tr;
  paint(op);
  tr.onclick = () => showDetail(op);
  if (append) tb.appendChild(tr); else tb.insertBefore(tr, tb.firstChild);
  while (tb.rows.length > 300) tb.deleteRow(tb.rows.length - 1);
}
function ingest(r) {
  const key = opKey(r);
  const known = key && byKey.get(key);
  if (known) { // a later phase of an operation already shown: the same row
    known.phases.push(r);
    if (known.tr && known.tr.isConnected) paint(known);
    if (detailFor === known) showDetail(known);
    return;
  }
  const op = { phases: [r], key };
  rows.unshift(op);
  if (key) byKey.set(key, op);
  if (rows.length > MAX_ROWS) { const gone = rows.pop(); if (gone.key) byKey.delete(gone.key); }
  const sel = $("#f-device");
  if (r.device && ![...sel.options].some((o) => o.value === r.device)) sel.add(new Option(r.device, r.device));
  if (matches(op, filters())) addRow($("#stream tbody"), op, true, false);
  $("#count").textContent = `${rows.filter((x) => matches(x, filters())).length} of ${rows.length} shown`;
}
let detailFor = null;
function showDetail(op) {
  const first = op.phases[0], r = last(op);
  const fields = [["time", fmtTime(first.time)], ["verdict", r.verdict], ["reason", r.reason], ["rule", r.rule],
    ["client", first.client], ["device", first.device], ["unit", first.unit], ["function", `${first.fc} ${first.function || ""}`],
    ["request PDU", first.pdu], ["response PDU", r.response], ["exception", r.exception || "none"],
    ["approval", r.approval], ["policy", r.policy], ["writer", r.writer], ["operation", r.op || ""],
    ["device time", r.upstream_ms ? r.upstream_ms + " ms" : ""]];
  for (const p of op.phases) {
    fields.push([`${phaseName[p.phase] || p.phase} recorded`, `${fmtTime(p.time)} · block ${p.height} (${String(p.block || "").slice(0, 16)}…, key id ${p.key_id}) · stream sequence ${p.seq}, event ${p.index}`]);
  }
  $("#detail-list").innerHTML = fields.filter(([, v]) => v !== undefined && v !== "")
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  $("#detail").hidden = false;
  $("#permalink").hidden = op.leaf === undefined; // events found by a search have a leaf: a permanent link
  if (op.leaf !== undefined) { $("#permalink-a").href = new URL(`e/${op.leaf}`, location.href).href; $("#copied").textContent = ""; }
  if (detailFor !== op) { detailFor = op; showProof(first, false); }
}
// The proof that this event (an operation's first record: for a write, the
// one made before it was forwarded) is in the newest signed checkpoint:
// built by the server from the stream, checked there, shown here in full so
// it can be checked again elsewhere (gridseal chain prove prints the same).
// While no signed checkpoint covers it yet, it is asked for again every
// second, for as long as the panel shows it (at most ten minutes).
let proofFor = null, proofTimer = null;
async function showProof(r, again) {
  const el = $("#proof");
  clearTimeout(proofTimer);
  if (!again) proofFor = { r, tries: 0 };
  const mine = proofFor;
  if (!r.seq || r.index === undefined) { el.textContent = "not a recorded event"; return; }
  if (!again) { el.className = "muted"; el.textContent = "building the proof…"; }
  let p;
  try { p = await getJSON(`api/proof?seq=${encodeURIComponent(r.seq)}&index=${encodeURIComponent(r.index)}`); }
  catch (e) { if (proofFor === mine) el.textContent = "proof unavailable (the console is busy or restarting): try again"; return; }
  if (proofFor !== mine) return;
  el.className = "";
  el.dataset.status = p.status;
  if (p.status !== "proved") {
    const what = { pending: "not yet in a signed checkpoint (the next one covers it; this updates by itself)", unavailable: "no proof now", failed: "PROOF FAILED: the chain does not match its signed checkpoint" }[p.status] || p.status;
    el.innerHTML = `<span class="${esc(p.status)}">${esc(what)}</span><br><span class="muted">${esc(p.problem || "")}</span>`;
    if (p.status === "pending" && ++mine.tries < 600) proofTimer = setTimeout(() => { if (proofFor === mine && !$("#detail").hidden) showProof(r, true); }, 1000);
    return;
  }
  el.innerHTML = `<span class="proved">proved</span>: leaf ${p.leaf} of the tree of ${p.tree_size} events signed by ${esc((p.signed_by || []).join(", "))}` +
    `<dl><dt>leaf hash</dt><dd>${esc(p.leaf_hash)}</dd><dt>root</dt><dd>${esc(p.root)}</dd>` +
    `<dt>audit path</dt><dd>${(p.proof || []).map(esc).join("<br>") || "(none: a one-event tree)"}</dd></dl>` +
    `<pre>${esc(p.checkpoint)}</pre>`;
}
$("#close-detail").onclick = () => { $("#detail").hidden = true; detailFor = null; proofFor = null; clearTimeout(proofTimer); };
// Filters apply on the server too, so a busy plant's stream still brings
// every matching event (the server caps each viewer at 200 events/s).
let es = null, reconnectTimer = null;
function refilter() {
  render();
  clearTimeout(reconnectTimer);
  // The server filters too: start over from its filtered backlog.
  reconnectTimer = setTimeout(() => { rows.length = 0; byKey.clear(); $("#stream tbody").innerHTML = ""; connect(); }, 300);
}
for (const id of ["#f-device", "#f-verdict"]) $(id).onchange = refilter;
for (const id of ["#f-function", "#f-client"]) $(id).oninput = refilter;
$("#pause").onclick = () => {
  paused = !paused;
  $("#pause").textContent = paused ? "Resume" : "Pause";
  if (!paused) { queued.forEach(ingest); queued = []; }
  $("#paused-note").textContent = "";
};

function connect() {
  if (es) es.close();
  const f = filters(), p = new URLSearchParams();
  if (f.device) p.set("device", f.device);
  if (f.verdict) p.set("verdict", f.verdict);
  if (f.fc) p.set("fc", f.fc);
  if (f.client) p.set("client", f.client);
  es = new EventSource("api/events?" + p.toString());
  let skippedTotal = 0;
  es.addEventListener("skipped", (m) => { skippedTotal += Number(m.data); $("#paused-note").textContent = `${skippedTotal} events not shown (over 200/s): narrow the filters, or use gridseal chain export`; });
  es.onmessage = (m) => {
    const r = JSON.parse(m.data);
    if (paused) { queued.push(r); $("#paused-note").textContent = `${queued.length} new while paused`; return; }
    ingest(r);
  };
  const mine = es;
  es.onerror = () => { mine.close(); if (es === mine) setTimeout(connect, 2000); };
}

async function getJSON(u) {
  const r = await fetch(u, { cache: "no-store" });
  if (r.status === 401) { location.href = "login"; throw new Error("signed out"); } // session expired or proxy restarted
  return r.json();
}
async function refresh() {
  try {
    const st = await getJSON("api/status");
    const badge = $("#chain-badge");
    badge.textContent = st.verified ? (st.trust_pinned ? "chain verified" : "chain (no trust pinned)") : "CHAIN PROBLEM";
    badge.className = "badge " + (st.verified ? "ok" : "bad");
    if (st.policy) $("#policy").textContent = `policy ${st.policy.id} v${st.policy.version} ${st.policy.digest.slice(0, 12)}…`;
    const observing = (st.policy && st.policy.observe) || [];
    const banner = $("#observe-banner");
    banner.hidden = observing.length === 0;
    banner.textContent = observing.length ? `OBSERVE MODE: ${observing.join(", ")} ${observing.length > 1 ? "forward" : "forwards"} every request, including what the rules deny (marked WOULD DENY); nothing is enforced there` : "";
    const dl = [["blocks", st.blocks], ["events", st.events], ["last block", st.last_block ? fmtTime(st.last_block) : "-"],
      ["verification", st.verified ? "every block verified" : st.problem], ["viewers", st.viewers]];
    for (const [w, ws] of Object.entries(st.writers || {})) dl.push([`writer ${w}`, `height ${ws.height}, ${ws.hash.slice(0, 16)}…`]);
    if (st.checkpoint) dl.push(["signed checkpoint", `${st.checkpoint.size} events, root ${st.checkpoint.root.slice(0, 16)}…, by ${(st.checkpoint.signed_by || []).join(", ")}`]);
    $("#chain").innerHTML = dl.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");

    const devs = await getJSON("api/devices");
    $("#devices tbody").innerHTML = Object.entries(devs).sort().map(([n, d]) =>
      `<tr><td>${esc(n)}</td><td class="up-${esc((d.upstream || "idle").replace(" ", "-"))}" title="${esc(d.upstream_detail || "")}">${esc(d.upstream || "idle")}</td><td>${(d.rate_per_s || 0).toFixed(1)}</td>` +
      `<td>${d.requests || 0}</td><td>${d.denies || 0}</td><td class="reason">${esc(d.last_write || "")}</td></tr>`).join("");

    const aps = await getJSON("api/approvals");
    $("#no-approvals").hidden = aps.length > 0;
    $("#approvals tbody").innerHTML = aps.map((a) =>
      `<tr class="${a.ready ? "ready" : ""}"><td class="reason">${esc(a.command)}<br><span class="muted">${esc(a.id.slice(0, 16))}…</span></td>` +
      `<td>${esc(a.proposer)}</td><td class="reason">${esc(a.status)}</td><td>${fmtTime(a.not_after)}</td></tr>`).join("");
  } catch (e) { /* the proxy may be restarting */ }
}
connect();
refresh();
setInterval(refresh, 2000);

// Investigation: a search over the whole chain (the tiles the console
// keeps: no stream is read per viewer), one event by its permanent link,
// the chart of requests and denies per device, and the filter's export.
let searchParams = null, searchNext = -1;
function searchQuery() {
  const p = new URLSearchParams();
  const t = (id) => { const v = $(id).value; return v ? new Date(v).toISOString() : ""; };
  const fields = { since: t("#s-since"), until: t("#s-until"), device: $("#s-device").value.trim(), verdict: $("#s-verdict").value,
    function: $("#s-function").value.trim(), address: $("#s-address").value.trim(), client: $("#s-client").value.trim(), approval: $("#s-approval").value.trim() };
  for (const [k, v] of Object.entries(fields)) if (v) p.set(k, v);
  return p;
}
async function getOK(u) {
  const r = await fetch(u, { cache: "no-store" });
  if (r.status === 401) { location.href = "login"; throw new Error("signed out"); }
  if (!r.ok) throw new Error((await r.text()).trim() || `status ${r.status}`);
  return r.json();
}
function resultHTML(r) {
  const exc = r.exception ? ` (exc 0x${r.exception.toString(16).padStart(2, "0").toUpperCase()})` : "";
  const verdict = r.phase === "approval" ? "approval" : r.phase === "request" ? r.verdict + " · request" : r.verdict;
  return `<td title="${esc(r.time)}">${fmtTime(r.time)}</td><td>${esc(r.client)}</td><td>${esc(r.device)}</td>` +
    `<td>${r.fc} ${esc(r.function || "")}</td><td>${r.address}+${r.quantity}</td><td>${esc((r.values || []).join(","))}</td>` +
    `<td class="verdict">${esc(verdict)}${exc}</td><td class="reason">${esc(r.reason)}</td><td><a href="e/${r.leaf}" class="leaf">#${r.leaf}</a></td>`;
}
async function runSearch(more) {
  const note = $("#s-note"), tb = $("#results tbody");
  if (!more) {
    searchParams = searchQuery();
    tb.innerHTML = "";
    for (const f of ["jsonl", "eve"]) { const p = new URLSearchParams(searchParams); p.set("format", f); $(`#s-${f}`).href = "api/export?" + p; }
    drawChart(searchParams);
  }
  const p = new URLSearchParams(searchParams);
  p.set("limit", "200");
  if (more && searchNext >= 0) p.set("before", searchNext);
  note.textContent = "searching…";
  let res;
  try { res = await getOK("api/search?" + p); } catch (e) { note.textContent = "search failed: " + e.message; return; }
  for (const r of res.rows) {
    const tr = document.createElement("tr");
    tr.className = r.phase === "approval" ? "approval" : r.verdict;
    tr.dataset.verdict = r.verdict;
    tr.dataset.leaf = r.leaf;
    tr.innerHTML = resultHTML(r);
    tr.onclick = (e) => { if (e.target.tagName !== "A") showEvent(r.leaf); };
    tb.appendChild(tr);
  }
  searchNext = res.next;
  $("#s-more").hidden = res.next < 0;
  $("#s-count").textContent = `· ${tb.rows.length} shown, newest first, of ${res.size} events in the chain`;
  note.textContent = res.stopped ? `stopped: ${res.stopped}` : "";
}
// One event by its leaf, with its operation's other phases: the detail
// panel as for the live stream, plus its permanent link.
async function showEvent(leaf) {
  let v;
  try { v = await getOK(`api/event/${encodeURIComponent(leaf)}`); }
  catch (e) { $("#s-note").textContent = `event ${leaf}: ${e.message}`; return; }
  const op = { phases: v.phases, leaf: v.leaf };
  detailFor = null;
  showDetail(op);
}
$("#search").onsubmit = (e) => { e.preventDefault(); runSearch(false); };
$("#s-more").onclick = () => runSearch(true);
$("#copy-link").onclick = async () => {
  const link = $("#permalink-a").href;
  try { await navigator.clipboard.writeText(link); $("#copied").textContent = "copied"; }
  catch (e) { $("#copied").textContent = link; } // no clipboard (plain http off loopback): the link to copy by hand
};
// The chart: per device, a row of bars, one per step — the operations
// (grey) and among them those not allowed (red), on one scale — drawn
// here as SVG, with each bar's numbers in its tooltip.
const svgNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
async function drawChart(params) {
  const box = $("#chart"), note = $("#chart-note");
  let c;
  try { c = await getOK("api/chart?" + params); } catch (e) { box.textContent = ""; note.textContent = "chart failed: " + e.message; return; }
  const names = Object.keys(c.devices).sort();
  const since = new Date(c.since).getTime(), step = c.step_s * 1000;
  note.textContent = `${fmtTime(c.since)} to ${fmtTime(c.until)}, ${c.step_s >= 60 ? c.step_s / 60 + " min" : c.step_s + " s"} a bar` + (c.partial ? ` · partial: ${c.partial}` : "");
  box.innerHTML = "";
  if (!names.length) { box.textContent = "no operations in this range"; return; }
  const W = 720, L = 120, rowH = 44, top = 4;
  const max = Math.max(1, ...names.flatMap((n) => c.devices[n].requests));
  const bw = (W - L - 8) / c.buckets;
  const s = svg("svg", { id: "chart-svg", viewBox: `0 0 ${W} ${top + names.length * rowH + 18}`, role: "img" });
  s.appendChild(svg("title", {}, "requests and denies per device over time"));
  names.forEach((n, i) => {
    const d = c.devices[n], y0 = top + i * rowH, base = y0 + rowH - 8;
    const g = svg("g", { class: "device", "data-device": n, "data-total": d.total, "data-denied": d.denied });
    g.appendChild(svg("text", { x: 0, y: y0 + 16, class: "label" }, n));
    g.appendChild(svg("text", { x: 0, y: y0 + 30, class: "sum" }, `${d.total} req · ${d.denied} denied`));
    g.appendChild(svg("line", { x1: L, x2: W - 8, y1: base, y2: base, class: "axis" }));
    d.requests.forEach((v, k) => {
      if (!v) return;
      const x = L + k * bw, h = (v / max) * (rowH - 14), dh = (d.denies[k] / max) * (rowH - 14);
      const bar = svg("g", { class: "bar", "data-requests": v, "data-denies": d.denies[k] });
      bar.appendChild(svg("title", {}, `${n} ${fmtTime(since + k * step)}: ${v} requests, ${d.denies[k]} denied`));
      bar.appendChild(svg("rect", { x: x + 0.5, y: base - h, width: Math.max(1, bw - 1), height: h, class: "req" }));
      if (dh) bar.appendChild(svg("rect", { x: x + 0.5, y: base - dh, width: Math.max(1, bw - 1), height: dh, class: "deny" }));
      g.appendChild(bar);
    });
    s.appendChild(g);
  });
  const yb = top + names.length * rowH + 12;
  s.appendChild(svg("text", { x: L, y: yb, class: "tick" }, fmtTime(c.since)));
  s.appendChild(svg("text", { x: W - 8, y: yb, class: "tick end" }, fmtTime(c.until)));
  s.appendChild(svg("text", { x: L - 6, y: top + 10, class: "tick end" }, `max ${max}`));
  box.appendChild(s);
}
function showView(name) {
  const inv = name === "investigate";
  $("#panels").hidden = inv;
  $("#stream-panel").hidden = inv;
  $("#investigate").hidden = !inv;
  $("#v-live").classList.toggle("on", !inv);
  $("#v-investigate").classList.toggle("on", inv);
  if (inv) {
    const dl = $("#s-devices"), known = new Set([...dl.options].map((o) => o.value));
    for (const o of $("#f-device").options) if (o.value && !known.has(o.value)) dl.appendChild(new Option(o.value, o.value));
  }
}
$("#v-live").onclick = () => showView("live");
$("#v-investigate").onclick = () => { showView("investigate"); if (!searchParams) runSearch(false); };
{ // A permanent link (/e/LEAF, which leads to ?event=LEAF) opens its event.
  const leaf = new URLSearchParams(location.search).get("event");
  if (leaf !== null && /^\d+$/.test(leaf)) { showView("investigate"); runSearch(false); showEvent(leaf); }
}
