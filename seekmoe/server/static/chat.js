// The chat page: streams /v1/chat/completions with fetch, keeps the conversation, and draws the per-layer expert
// load from /v2/expert_load on a canvas. Plain script, no build step; the key lives in sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const turns = [];  // {role, content}: every turn is sent again, as OpenAI's API expects
let controller = null;  // aborts the running request
let baseline = null;  // the expert counts when the page loaded: the heatmap shows what came after

// ---- the key -----------------------------------------------------------------------------------------------------

function headers() {
  const key = sessionStorage.getItem("seekmoe-key");
  const h = {"Content-Type": "application/json"};
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
  start();
});

async function api(path, options = {}) {
  const res = await fetch(path, {...options, headers: headers()});
  if (res.status === 401) {
    askForKey("the server needs an API key");
    throw new Error("unauthorized");
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try { message = (await res.json()).error.message; } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return res;
}

function showError(message) { $("error").textContent = message; }

// ---- chat --------------------------------------------------------------------------------------------------------

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

// yields the JSON of each `data:` event of a server-sent event stream, until `data: [DONE]`
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  turns.push({role: "user", content: text});
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  const body = {
    messages: turns, stream: true, stream_options: {include_usage: true},
    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
  };
  controller = new AbortController();
  setBusy(true);
  const poll = setInterval(refreshLoad, 500);
  const started = performance.now();
  let first = null, pieces = 0, reply = "";
  try {
    const res = await api("/v1/chat/completions", {method: "POST", body: JSON.stringify(body),
                                                     signal: controller.signal});
    for await (const chunk of events(res.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices.length ? chunk.choices[0].delta.content || "" : "";
      if (delta) {
        first ??= performance.now();
        pieces += 1;
        reply += delta;
        bubble.textContent = reply;
        bubble.dataset.chunks = pieces;
        $("messages").scrollTop = $("messages").scrollHeight;
        showSpeed(pieces, first, false);
      }
      if (chunk.usage) showSpeed(chunk.usage.completion_tokens, first ?? started, true);
    }
  } catch (e) {
    if (e.name !== "AbortError" && e.message !== "unauthorized") showError(e.message);
  } finally {
    clearInterval(poll);
    controller = null;
    setBusy(false);
    refreshLoad();
  }
  if (reply) turns.push({role: "assistant", content: reply});
  else if (!bubble.textContent) bubble.remove();
}

function showSpeed(tokens, since, final) {
  const seconds = (performance.now() - since) / 1000;
  const rate = seconds > 0 ? (tokens / seconds).toFixed(1) : "–";
  $("tps").textContent = `${tokens} tokens · ${rate} tokens/s${final ? "" : " …"}`;
  $("tps").dataset.tokens = tokens;
}

function setBusy(busy) {
  document.body.dataset.state = busy ? "generating" : "idle";
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  showError("");
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  turns.length = 0;
  $("messages").replaceChildren();
  $("tps").textContent = "–";
});

// ---- expert load heatmap ------------------------------------------------------------------------------------------

async function refreshLoad() {
  let load;
  try { load = await (await api("/v2/expert_load")).json(); } catch (_) { return; }
  baseline ??= load.layers.map((l) => l.counts.slice());
  const rows = load.layers.map((l, i) => l.counts.map((n, e) => n - (baseline[i]?.[e] ?? 0)));
  drawHeatmap(load.layers.map((l) => l.layer), rows);
}

// dark blue (no tokens) -> teal -> yellow (the layer's busiest share)
function colour(v) {
  const stops = [[24, 32, 72], [32, 144, 140], [253, 231, 37]];
  const t = Math.min(Math.max(v, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(t), stops.length - 2), f = t - i;
  const [a, b] = [stops[i], stops[i + 1]];
  return `rgb(${a.map((x, k) => Math.round(x + (b[k] - x) * f)).join(",")})`;
}

function drawHeatmap(layers, rows) {
  const canvas = $("heatmap"), ctx = canvas.getContext("2d");
  const experts = rows.length ? rows[0].length : 0;
  const left = 54, top = 22, h = 30, w = (canvas.width - left - 6) / Math.max(experts, 1);
  const height = top + h * Math.max(rows.length, 1) + 6;
  if (canvas.height !== height) canvas.height = height;  // one row per MoE layer
  const shares = rows.map((r) => { const s = r.reduce((a, b) => a + b, 0); return r.map((n) => (s ? n / s : 0)); });
  const peak = Math.max(1e-9, ...shares.flat());
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b6b70";
  ctx.textAlign = "center";
  for (let e = 0; e < experts; e += experts > 16 ? 4 : 1) ctx.fillText(String(e), left + (e + 0.5) * w, top - 7);
  ctx.textAlign = "right";
  rows.forEach((r, i) => {
    ctx.fillStyle = "#6b6b70";
    ctx.fillText(`layer ${layers[i]}`, left - 6, top + (i + 0.5) * h + 4);
    r.forEach((n, e) => {
      ctx.fillStyle = shares[i].some((x) => x > 0) ? colour(shares[i][e] / peak) : "#e8e8ec";
      ctx.fillRect(left + e * w + 1, top + i * h + 1, w - 2, h - 2);
    });
  });
  const total = rows.flat().reduce((a, b) => a + b, 0);
  canvas.dataset.total = total;
  $("load-total").textContent = total;
  $("scale-max").textContent = `${(peak * 100).toFixed(1)}%`;
}

function drawScale() {
  const canvas = $("scale"), ctx = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    ctx.fillStyle = colour(x / (canvas.width - 1));
    ctx.fillRect(x, 0, 1, canvas.height);
  }
}

// ---- start -------------------------------------------------------------------------------------------------------

async function start() {
  try {
    const models = await (await api("/v1/models")).json();
    $("model").textContent = models.data.map((m) => m.id).join(", ");
  } catch (e) {
    if (e.message !== "unauthorized") showError(e.message);
    return;
  }
  await refreshLoad();
}

drawScale();
start();
