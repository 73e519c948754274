// kagi live dashboard: draws the topology with Cytoscape.js and updates it from server-sent
// events (about once a second). No reload, no external assets.
"use strict";

const COLORS = { up: "#2e7d32", down: "#d32f2f", fenced: "#d32f2f", draining: "#ef6c00", unknown: "#90a4ae", out_of_service: "#ffb74d" };
const token = new URLSearchParams(location.search).get("token") || "";
const q = "?token=" + encodeURIComponent(token);
const $ = (id) => document.getElementById(id);

function bytes(n) {
  n = Number(n) || 0;
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}
function rate(bps) { return bytes(bps) + "/s"; }
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }
function when(ms) { return ms ? new Date(ms).toLocaleTimeString() : ""; }

const cy = cytoscape({
  container: $("map"),
  wheelSensitivity: 0.3,
  maxZoom: 1.6,
  style: [
    { selector: "node", style: {
      "background-color": "data(color)", "label": "data(label)", "color": "#1d2327",
      "text-valign": "bottom", "text-margin-y": 4, "font-size": 11, "text-wrap": "wrap",
      "width": 26, "height": 26, "border-width": 3, "border-color": "#fff" } },
    { selector: "edge", style: {
      "line-color": "data(color)", "width": "data(width)", "label": "data(label)",
      "font-size": 9, "color": "#455a64", "text-rotation": "autorotate", "text-background-color": "#fff",
      "text-background-opacity": 0.85, "text-background-padding": 2, "curve-style": "bezier" } },
    { selector: "edge.oos", style: { "line-style": "dashed" } },
    // Links that carry relays (or multi-path shares) in flight: a violet halo under the line.
    { selector: "edge.relay", style: { "underlay-color": "#7b1fa2", "underlay-opacity": 0.35, "underlay-padding": 5 } },
    { selector: "edge.down", style: { "line-style": "dotted" } },
  ],
  elements: [],
});
window.kagiDash = { cy: cy, last: null, updates: 0 };

let laidOut = false;
let maxBuffer = 1;

function edgeColor(l) {
  if (l.state !== "up") return COLORS[l.state] || COLORS.unknown;
  // Grey when the buffer is empty, deepening to blue as it fills (relative to the fullest link).
  const f = Math.max(0, Math.min(1, (l.buffer_bytes || 0) / maxBuffer));
  const mix = (a, b) => Math.round(a + (b - a) * f);
  return `rgb(${mix(176, 21)},${mix(190, 101)},${mix(197, 192)})`;
}

function render(s) {
  window.kagiDash.last = s;
  window.kagiDash.updates += 1;
  $("net-name").textContent = s.name || "";
  maxBuffer = Math.max(1, ...s.links.map((l) => l.buffer_bytes || 0));
  const maxRate = Math.max(1, ...s.links.map((l) => l.rate_bytes_per_second || 0));
  cy.batch(() => {
    for (const n of s.nodes) {
      const label = n.id + (n.saes && n.saes.length ? "\n" + n.saes.length + " SAE" : "");
      const data = { id: n.id, label: label, color: COLORS[n.state] || COLORS.unknown, state: n.state };
      let el = cy.getElementById(n.id);
      if (el.empty()) {
        const add = { group: "nodes", data: data };
        if (n.x !== undefined) add.position = { x: n.x, y: n.y };
        el = cy.add(add);
        laidOut = false;
      } else el.data(data);
    }
    for (const l of s.links) {
      const width = l.state === "up" ? 2 + 8 * Math.sqrt((l.rate_bytes_per_second || 0) / maxRate) : 3;
      const label = l.state === "up" ? rate(l.rate_bytes_per_second) : l.state.replace(/_/g, " ");
      const data = { id: l.id, source: l.a, target: l.b, color: edgeColor(l), width: width, label: label, state: l.state };
      let el = cy.getElementById(l.id);
      if (el.empty()) { el = cy.add({ group: "edges", data: data }); laidOut = false; }
      else el.data(data);
      el.toggleClass("oos", l.state === "out_of_service");
      el.toggleClass("down", l.state === "down");
    }
  });
  // Halo every link on a path of a relay in flight.
  const carrying = new Set();
  for (const r of s.relays) {
    for (const p of (r.paths && r.paths.length ? r.paths : [r.route || []])) {
      for (let i = 0; i + 1 < p.length; i++) { carrying.add(p[i] + "|" + p[i + 1]); carrying.add(p[i + 1] + "|" + p[i]); }
    }
  }
  cy.edges().forEach((e) => e.toggleClass("relay", carrying.has(e.data("source") + "|" + e.data("target"))));
  if (!laidOut) {
    const preset = s.nodes.every((n) => n.x !== undefined);
    cy.layout(preset ? { name: "preset", fit: true, padding: 40 }
      : { name: "cose", animate: false, randomize: false, padding: 40, nodeRepulsion: 400000, idealEdgeLength: 160, nodeOverlap: 40, componentSpacing: 120 }).run();
    laidOut = true;
  }
  const t = s.totals || {};
  $("keys-delivered").textContent = t.keys_delivered || 0;
  $("nodes-up").textContent = (t.nodes_up || 0) + " / " + s.nodes.length;
  $("links-up").textContent = (t.links_up || 0) + " / " + s.links.length;
  $("relays-acked").textContent = t.relays_acked || 0;
  $("relays-in-flight").textContent = t.relays_in_flight || 0;
  $("link-key-in").textContent = bytes(t.link_key_in_bytes);
  $("refusal-count").textContent = t.refusals || 0;

  $("links").tBodies[0].innerHTML = s.links.map((l) =>
    `<tr data-link="${esc(l.id)}" data-state="${esc(l.state)}"><td>${esc(l.a)} — ${esc(l.b)}</td>` +
    `<td class="st-${esc(l.state)}">${esc(l.state.replace(/_/g, " "))}</td>` +
    `<td>${rate(l.rate_bytes_per_second)}</td><td>${bytes(l.buffer_bytes)}</td></tr>`).join("");
  $("nodes").tBodies[0].innerHTML = s.nodes.map((n) =>
    `<tr data-node="${esc(n.id)}" data-state="${esc(n.state)}"><td>${esc(n.id)}</td>` +
    `<td class="st-${esc(n.state)}">${esc(n.state)}</td><td>${n.keys_served}</td>` +
    `<td>${bytes(n.pool_out_bytes)}</td><td>${n.relays_in_flight}</td></tr>`).join("");
  const via = (r) => (r.paths && r.paths.length > 1)
    ? `${r.paths.length} shares, any ${r.threshold} rebuild: ` + r.paths.map((p) => esc(p.join(" → "))).join(" | ")
    : "via " + esc((r.route || []).join(" → "));
  $("relays").innerHTML = s.relays.length ? s.relays.map((r) =>
    `<li data-paths="${(r.paths || []).length}">${esc(r.from)} → ${esc(r.to)}: ${r.count} ${via(r)}</li>`).join("")
    : "<li>none</li>";
  const pools = s.pools.filter((p) => p.out_bytes > 0).sort((a, b) => b.out_bytes - a.out_bytes);
  $("pools").tBodies[0].innerHTML = pools.map((p) =>
    `<tr><td>${esc(p.from)} → ${esc(p.to)}</td><td>${bytes(p.out_bytes)}</td><td>${(p.paths && p.paths.length > 1) ? p.paths.map((x) => esc(x.join(" → "))).join("<br>") + ` (any ${p.threshold} of ${p.paths.length})` : esc((p.route || []).join(" → "))}</td></tr>`).join("");
  $("alerts").innerHTML = s.alerts.length ? s.alerts.map((a) =>
    `<li class="${esc(a.level)}">${esc(a.text)}</li>`).join("") : "<li>none</li>";
  $("refusals").innerHTML = s.refusals.length ? s.refusals.map((r) =>
    `<li>${when(r.time_ms)} ${esc(r.node)} ${esc(r.endpoint)} ${r.status} ${esc(r.reason)}${r.caller ? " (" + esc(r.caller) + ")" : ""}: ${esc(r.message)}</li>`).join("")
    : "<li>none</li>";
  $("audit").innerHTML = s.audit.length ? s.audit.map((a) =>
    `<li class="${a.outcome === "ok" ? "" : "warning"}">${when(a.time_ms)} ${esc(a.node)} ${esc(a.actor)} (${esc(a.role)}) ${esc(a.action)} ${esc(a.target)}: ${esc(a.outcome)} ${esc(a.detail)}</li>`).join("")
    : "<li>none</li>";
}

fetch("/api/state" + q).then((r) => r.json()).then((s) => { if (s.nodes) render(s); }).catch(() => {});
const es = new EventSource("/events" + q);
es.addEventListener("state", (e) => { $("conn").textContent = "live"; $("conn").className = "conn live"; render(JSON.parse(e.data)); });
es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "conn lost"; };
