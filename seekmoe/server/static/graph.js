// The graph page: a term's neighbourhood, a path, or an open discovery (A -> B -> C), drawn with the vendored
// Cytoscape.js and listed with the sentences behind each link. Plain script, no build step; every text from the
// server goes in through textContent, never as HTML; the key lives in sessionStorage only (as on the chat page).
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = { a: "#b3261e", b: "#4f74bd", c: "#2e7d32", n: "#4f74bd" };

function headers() {
  const h = {};
  const key = sessionStorage.getItem("seekmoe-key");
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("key").focus();
  showError(message);
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("seekmoe-key", $("key").value.trim());
  $("key").value = "";
  $("key-form").hidden = true;
  showError("");
  loadStats();
});

function showError(message) {
  $("error").textContent = message;
}

// GET an API path; the error's own message shown (and null returned) when it fails
async function api(path, params) {
  const query = new URLSearchParams(params).toString();
  let r;
  try {
    r = await fetch(`${path}?${query}`, { headers: headers() });
  } catch (err) {
    showError(`the server cannot be reached: ${err.message}`);
    return null;
  }
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) {
    askForKey("the server needs an API key");
    return null;
  }
  if (!r.ok) {
    showError(body.error?.message || `${r.status} ${r.statusText}`);
    return null;
  }
  return body;
}

async function loadStats() {
  const info = await api("/v2/graph", {});
  if (info) {
    $("stats").textContent = `${info.documents.toLocaleString()} documents, ${info.terms.toLocaleString()} terms, ` +
      `${info.edges.toLocaleString()} edges`;
  }
}

const cy = cytoscape({
  container: $("cy"),
  style: [
    { selector: "node", style: { label: "data(label)", "background-color": "data(color)", color: "#1d232a",
                                 "font-size": 11, "text-valign": "bottom", "text-margin-y": 4,
                                 width: "data(size)", height: "data(size)" } },
    { selector: "edge", style: { width: "data(width)", "line-color": "#9aa5b1", "curve-style": "bezier",
                                 opacity: 0.8 } },
  ],
  wheelSensitivity: 0.3,
});

// rings: the term asked about in the middle, the linking terms around it, the discovered ones outside
const LEVEL = { a: 3, b: 2, n: 2, c: 1 };

function draw(nodes, edges) {
  cy.elements().remove();
  cy.add(nodes.map((n) => ({ group: "nodes", data: n })));
  const seen = new Set();  // one line per pair: a B links A to several Cs, and is drawn to A once
  for (const e of edges) {
    const key = [e.source, e.target].sort().join(" ");
    if (!seen.has(key)) {
      seen.add(key);
      cy.add({ group: "edges", data: { id: `e${seen.size}`, ...e } });
    }
  }
  cy.layout({ name: "concentric", concentric: (n) => n.data("level"), levelWidth: () => 1, minNodeSpacing: 45,
              animate: false }).run();
  cy.fit(undefined, 40);
  $("cy").dataset.nodes = String(nodes.length);
  $("cy").dataset.edges = String(seen.size);
}

function evidenceList(items) {
  const ul = document.createElement("ul");
  ul.className = "evidence";
  for (const e of items) {
    const li = document.createElement("li");
    const doc = document.createElement("span");
    doc.className = "doc";
    doc.textContent = `[${e.doc}] `;
    li.append(doc, e.sentence);
    ul.append(li);
  }
  return ul;
}

function result(title, meta, evidence) {
  const div = document.createElement("div");
  div.className = "result";
  const h = document.createElement("h3");
  h.textContent = title;
  const m = document.createElement("div");
  m.className = "meta";
  m.textContent = meta;
  div.append(h, m, evidenceList(evidence));
  return div;
}

async function run(action, params) {
  document.body.dataset.state = "loading";
  showError("");
  const body = await api(`/v2/graph/${action}`, params);
  if (!body) {
    document.body.dataset.state = "error";
    return;
  }
  const list = $("results");
  list.replaceChildren();
  const nodes = new Map();
  const edges = [];
  const node = (label, kind, size = 24) => {
    if (!nodes.has(label)) {
      nodes.set(label, { id: `n${nodes.size}`, label, color: COLORS[kind], size, level: LEVEL[kind] });
    }
    return nodes.get(label).id;
  };
  if (action === "neighbors") {
    const centre = node(body.term, "a", 34);
    for (const r of body.data) {
      edges.push({ source: centre, target: node(r.term, "n"), width: 1 + 6 * r.weight });
      list.append(result(r.term, `weight ${r.weight.toFixed(3)}, ${r.count} sentence(s)`, r.evidence));
    }
  } else if (action === "discover") {
    const a = node(body.term, "a", 34);
    body.data.forEach((r, i) => {
      const c = node(r.term, "c", 28);
      for (const link of r.links.slice(0, 4)) {
        const b = node(link.term, "b");
        edges.push({ source: a, target: b, width: 1 + 6 * link.a_b });
        edges.push({ source: b, target: c, width: 1 + 6 * link.b_c });
      }
      list.append(result(`${i + 1}. ${r.term}`, `score ${r.score.toFixed(3)}; via ${r.via.slice(0, 5).join(", ")}`,
                         r.evidence));
    });
  } else {
    body.data.forEach((h, i) => {
      const last = i === body.data.length - 1;
      edges.push({ source: node(h.from, i ? "b" : "a"), target: node(h.to, last ? "c" : "b"), width: 1 + 6 * h.weight });
      list.append(result(`${h.from} — ${h.to}`, `weight ${h.weight.toFixed(3)}`, h.evidence));
    });
    if (!body.data.length) showError(`no path from ${body.source} to ${body.target}`);
  }
  if (!body.data.length && action !== "path") showError(`nothing found for ${body.term}`);
  draw([...nodes.values()], edges);
  document.body.dataset.state = "drawn";
}

$("query").addEventListener("submit", (e) => {
  e.preventDefault();
  const action = e.submitter?.dataset.action || "neighbors";
  run(action, { term: $("term").value.trim() });
});

$("path-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run("path", { source: $("source").value.trim(), target: $("target").value.trim() });
});

cy.on("tap", "node", (e) => {
  $("term").value = e.target.data("label");
  run("neighbors", { term: e.target.data("label") });
});

loadStats();
