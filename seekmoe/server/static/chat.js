// The chat page: streams /v1/chat/completions with fetch, renders replies as Markdown, keeps conversations (with
// their system prompts) in localStorage across reloads, regenerates the last reply or re-asks from an edited
// question, and draws the per-layer expert load from /v2/expert_load on a canvas. Images and audio (files or the
// microphone) go with a message as OpenAI content parts; replies can be read aloud by /v1/audio/speech. A reply that
// names regions of an image comes with that image annotated (delta.images on its last chunk), shown under it and
// kept with the turn, never sent back. Plain ES modules, no build step; the key lives in sessionStorage only.

import {renderMarkdown} from "./markdown.js";
import {load, newConversation, save, title} from "./store.js";

const $ = (id) => document.getElementById(id);
const pending = [];  // the attachments of the next message: {kind, name, url (data: URL), part (its content part)}
const stored = load();
const conversations = stored.conversations;  // every turn of the open one is sent again, as OpenAI's API expects
let conversation = conversations.find((c) => c.id === stored.current) ?? newConversation();
if (!conversations.includes(conversation)) conversations.unshift(conversation);
let controller = null;  // aborts the running request
let baseline = null;  // the expert counts when the page loaded: the heatmap shows what came after
let recorder = null;  // the microphone recording in progress
let playing = null;  // the reply being read aloud: {audio, url, button}

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

// ---- the conversation ---------------------------------------------------------------------------------------------------

// the media and the text of a turn's content: a string, or OpenAI content parts
function split(content) {
  if (typeof content === "string") return {text: content, media: []};
  const media = content.filter((p) => p.type !== "text").map((p) => (p.type === "image_url"
    ? {kind: "image", name: "attached image", url: p.image_url.url}
    : {kind: "audio", name: "attached audio", url: `data:audio/${p.input_audio.format};base64,${p.input_audio.data}`}));
  return {text: content.filter((p) => p.type === "text").map((p) => p.text).join("\n"), media};
}

// media first, then the text: the order the model was trained on; a plain string when there are no media
const contentOf = (text, parts) => (parts.length ? [...parts, ...(text ? [{type: "text", text}] : [])] : text);

function actionButton(label, className, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.textContent = label;
  button.addEventListener("click", onClick);
  return button;
}

// a message and the row of its buttons under it (outside it: the message's text stays the turn's); user messages
// are plain text, the assistant's are Markdown
function showTurn(turn) {
  const msg = document.createElement("div");
  msg.className = `msg ${turn.role}`;
  const actions = document.createElement("div");
  actions.className = `actions ${turn.role}`;
  if (turn.role === "user") {
    const {text, media} = split(turn.content);
    if (media.length || turn.dropped) {
      const box = document.createElement("div");
      box.className = "media";
      box.append(...media.map(preview));
      if (turn.dropped) box.append(`(${turn.dropped} attachment${turn.dropped > 1 ? "s" : ""} not kept: too large `
                                   + "for the browser's storage)");
      msg.append(box);
    }
    msg.append(text);
    actions.append(actionButton("✎ edit", "edit", () => edit(turn, msg)));
  } else {
    renderMarkdown(msg, turn.content);
    showImages(msg, turn.images ?? [], turn.dropped);
    if (turn.content) speakButton(msg, actions);
  }
  $("messages").append(msg, actions);
  $("messages").scrollTop = $("messages").scrollHeight;
  return {msg, actions};
}

// the images of a reply (the server's drawing of the regions it names on the last image sent), under its text;
// `dropped`: how many the browser's storage could not keep
function showImages(msg, urls, dropped = 0) {
  if (!urls.length && !dropped) return;
  const box = document.createElement("div");
  box.className = "annotated";
  for (const url of urls.filter((u) => u.startsWith("data:image/"))) {  // an inline image: nothing is fetched
    const img = document.createElement("img");
    img.src = url;
    img.alt = "the image, with the regions the reply names drawn on it";
    box.append(img);
  }
  if (dropped) box.append(`(${dropped} annotated image${dropped > 1 ? "s" : ""} not kept: too large for the `
                          + "browser's storage)");
  msg.append(box);
}

// "regenerate" sits under the last message, whichever it is (a reply, or a question whose reply failed)
const regenerateButton = actionButton("↻ regenerate", "regenerate", () => regenerate());
regenerateButton.id = "regenerate";
function placeRegenerate() {
  const last = $("messages").lastElementChild;
  regenerateButton.hidden = !last || controller !== null;
  if (last) last.append(regenerateButton);
}

function showConversation() {
  stopSpeaking();
  $("messages").replaceChildren();
  conversation.turns.forEach(showTurn);
  $("system").value = conversation.system;
  if (conversation.system) $("settings").open = true;
  $("tps").textContent = "–";
  placeRegenerate();
  showConversations();
}

function showConversations() {
  const listed = conversations.filter((c) => c.turns.length || c === conversation)
    .sort((a, b) => b.updated - a.updated);
  $("conversations").replaceChildren(...listed.map((c) => new Option(title(c), c.id, false, c === conversation)));
}

// writes every conversation to localStorage; `changed` moves to the top of the list
function persist(changed = null) {
  if (changed) changed.updated = Date.now();
  if (!save(conversations, conversation)) showError("the browser's storage is full: this conversation will not "
                                                    + "survive a reload");
  showConversations();
}

function switchTo(next) {
  if (controller) controller.abort();  // the partial reply stays with the conversation it belongs to
  const open = conversations.indexOf(conversation);
  if (!conversation.turns.length && open >= 0 && next !== conversation) conversations.splice(open, 1);
  if (!conversations.includes(next)) conversations.unshift(next);
  conversation = next;
  persist();
  showError("");
  showConversation();
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

// streams the model's next turn of the open conversation into a new message; true when the server refused it
async function ask() {
  const conv = conversation;  // a switch while it streams aborts it; what came is kept with this one
  const {msg: bubble, actions} = showTurn({role: "assistant", content: ""});
  // `dropped` and a reply's `images` are ours, not the API's: an annotated image is not sent back
  const history = conv.turns.map(({role, content}) => ({role, content}));
  const body = {
    messages: conv.system.trim() ? [{role: "system", content: conv.system}, ...history] : history,
    stream: true, stream_options: {include_usage: true},
    max_tokens: Number($("max-tokens").value),
  };
  // left empty, the server samples as the model's generation_config.json says (as vLLM does)
  if ($("temperature").value !== "") body.temperature = Number($("temperature").value);
  controller = new AbortController();
  setBusy(true);
  const poll = setInterval(refreshLoad, 500);
  const started = performance.now();
  let first = null, pieces = 0, reply = "", failed = false, finished = false, frame = null;
  const images = [];  // data: URLs of the annotated images, on the reply's last chunk
  // Markdown is parsed again from the start at each draw: the first piece shows at once, then once per frame at
  // most, however fast pieces come
  const draw = () => {
    frame = null;
    renderMarkdown(bubble, reply);
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  try {
    const res = await api("/v1/chat/completions", {method: "POST", body: JSON.stringify(body),
                                                     signal: controller.signal});
    for await (const chunk of events(res.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices.length ? chunk.choices[0].delta.content || "" : "";
      if (chunk.choices.length && chunk.choices[0].delta.images) {
        images.push(...chunk.choices[0].delta.images.map((part) => part.image_url.url));
      }
      if (delta) {
        first ??= performance.now();
        pieces += 1;
        reply += delta;
        bubble.dataset.chunks = pieces;
        if (pieces === 1) draw();
        else frame ??= requestAnimationFrame(draw);
        showSpeed(pieces, first, false);
      }
      if (chunk.usage) showSpeed(chunk.usage.completion_tokens, first ?? started, true);
    }
    finished = true;
  } catch (e) {
    failed = e.name !== "AbortError";
    if (failed && e.message !== "unauthorized") showError(e.message);
  } finally {
    if (frame !== null) cancelAnimationFrame(frame);
    draw();
    clearInterval(poll);
    controller = null;
    setBusy(false);
    refreshLoad();
  }
  showImages(bubble, images);
  if (reply) {
    conv.turns.push({role: "assistant", content: reply, ...(images.length ? {images} : {})});
    persist(conv);
    const button = speakButton(bubble, actions);
    if (finished && $("autoread").checked && conv === conversation) speak(button);
  } else {
    bubble.remove();
    actions.remove();
  }
  placeRegenerate();
  return failed && !reply;
}

async function send(text, attachments) {
  const turn = {role: "user", content: contentOf(text, attachments.map((a) => a.part))};
  const conv = conversation;
  conv.turns.push(turn);
  persist(conv);
  const question = showTurn(turn);
  if (await ask()) {  // refused (bad media, no key...): the message goes back to the composer, to fix or drop
    conv.turns.splice(conv.turns.indexOf(turn), 1);
    persist();
    question.msg.remove();
    question.actions.remove();
    placeRegenerate();
    if (!$("prompt").value) $("prompt").value = text;
    pending.unshift(...attachments);
    showAttachments();
  }
}

// drops the last reply and asks again with the same history
function regenerate() {
  if (controller || !conversation.turns.length) return;
  if (conversation.turns.at(-1).role === "assistant") conversation.turns.pop();
  persist(conversation);
  showError("");
  showConversation();
  ask();
}

// a user message becomes a text box; sending it drops every later turn and asks again from there (its media stay)
function edit(turn, msg) {
  if (controller || msg.querySelector("form")) return;
  const {text, media} = split(turn.content);
  const form = document.createElement("form");
  form.className = "editing";
  const box = document.createElement("textarea");
  box.value = text;
  box.rows = Math.min(10, text.split("\n").length + 1);
  box.setAttribute("aria-label", "the message, edited");
  const ok = document.createElement("button");
  ok.className = "save";
  ok.textContent = "Send";
  form.append(box, ok, actionButton("Cancel", "cancel", () => showConversation()));
  msg.replaceChildren(...[...msg.querySelectorAll(".media")], form);
  box.focus();
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    if (e.key === "Escape") showConversation();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const edited = box.value.trim();
    const index = conversation.turns.indexOf(turn);
    if ((!edited && !media.length) || controller || index < 0) return;
    const parts = typeof turn.content === "string" ? [] : turn.content.filter((p) => p.type !== "text");
    conversation.turns.splice(index, Infinity, {...turn, content: contentOf(edited, parts)});
    persist(conversation);
    showError("");
    showConversation();
    ask();
  });
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
  regenerateButton.hidden = busy || !$("messages").lastElementChild;
}

$("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (recorder) await stopRecording();  // sending while recording sends the recording
  const text = $("prompt").value.trim();
  if ((!text && !pending.length) || controller) return;
  $("prompt").value = "";
  showError("");
  send(text, pending.splice(0));
  showAttachments();
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => switchTo(newConversation($("system").value)));  // same system prompt
$("delete").addEventListener("click", () => {
  conversations.splice(conversations.indexOf(conversation), 1);
  switchTo(conversations.filter((c) => c.turns.length).sort((a, b) => b.updated - a.updated)[0]
           ?? newConversation());
});
$("conversations").addEventListener("change", () => {
  switchTo(conversations.find((c) => c.id === $("conversations").value));
});

// the system prompt is saved a moment after typing stops, or when the page goes first (only then: a page that
// saved everything as it went would overwrite what another tab wrote since)
let systemTimer = null;
function saveSystem() {
  clearTimeout(systemTimer);
  systemTimer = null;
  persist(conversation);
}
$("system").addEventListener("input", () => {
  conversation.system = $("system").value;
  clearTimeout(systemTimer);
  systemTimer = setTimeout(saveSystem, 400);
});
window.addEventListener("pagehide", () => systemTimer !== null && saveSystem());

// ---- attachments -------------------------------------------------------------------------------------------------

// what the server decodes: MIME type -> [kind, input_audio format]; a file without a type goes by its extension
const TYPES = {"image/png": ["image"], "image/jpeg": ["image"], "image/gif": ["image"],
               "audio/wav": ["audio", "wav"], "audio/x-wav": ["audio", "wav"], "audio/wave": ["audio", "wav"],
               "audio/vnd.wave": ["audio", "wav"], "audio/flac": ["audio", "flac"], "audio/x-flac": ["audio", "flac"]};
const EXTENSIONS = {png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", wav: "audio/wav",
                    flac: "audio/flac"};
const MAX_BYTES = 10 * 2 ** 20;  // the server's image limit (audio may be 25 MiB, but 10 MiB is 5 minutes of WAV)

const dataURL = (blob) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result);
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(blob);
});

// checks each file, reads the good ones as base64 and queues them; one message in #error names the refused ones
async function attach(files) {
  const refused = [];
  for (const file of files) {
    const type = file.type || EXTENSIONS[file.name.split(".").pop().toLowerCase()] || "";
    if (!TYPES[type]) {
      refused.push(`${file.name}: only PNG, JPEG or GIF images and WAV or FLAC audio can be attached` +
                   (file.type ? ` (it is ${file.type})` : ""));
      continue;
    }
    if (file.size > MAX_BYTES) {
      refused.push(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MiB; files up to 10 MiB can be attached`);
      continue;
    }
    const [kind, format] = TYPES[type];
    const base64 = (await dataURL(file)).split(",")[1];  // the reader's MIME type may be empty: ours is checked
    const url = `data:${type};base64,${base64}`;
    const part = kind === "image" ? {type: "image_url", image_url: {url}}
      : {type: "input_audio", input_audio: {data: base64, format}};  // OpenAI's audio part: base64, no data: prefix
    pending.push({kind, name: file.name, url, part});
  }
  showAttachments();
  showError(refused.join("; "));
}

// an <img> or <audio controls> of an attachment, for a chip or a sent message
function preview(a) {
  const el = document.createElement(a.kind === "image" ? "img" : "audio");
  el.src = a.url;
  el.title = a.name;
  if (a.kind === "image") el.alt = a.name;
  else el.controls = true;
  return el;
}

function showAttachments() {
  $("attachments").replaceChildren(...pending.map((a) => {
    const chip = document.createElement("div");
    chip.className = "chip";
    chip.dataset.kind = a.kind;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = `remove ${a.name}`;
    remove.addEventListener("click", () => {
      pending.splice(pending.indexOf(a), 1);
      showAttachments();
    });
    chip.append(preview(a), remove);
    return chip;
  }));
}

$("attach").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", async () => {
  await attach([...$("file").files]);
  $("file").value = "";  // picking the same file again fires change again
});
$("composer").addEventListener("dragover", (e) => e.preventDefault());  // allows dropping
$("composer").addEventListener("drop", (e) => {
  if (!e.dataTransfer.files.length) return;
  e.preventDefault();
  attach([...e.dataTransfer.files]);
});
$("prompt").addEventListener("paste", (e) => {
  if (!e.clipboardData.files.length) return;  // text pastes as text
  e.preventDefault();
  attach([...e.clipboardData.files]);
});

// ---- the microphone ----------------------------------------------------------------------------------------------

const MAX_SECONDS = 30;  // the server's max_audio_seconds

// Float32 samples in [-1, 1] -> a 16-bit mono PCM WAV file: the 44-byte RIFF header, then the samples
function wav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const ascii = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  ascii(0, "RIFF"); view.setUint32(4, 36 + 2 * samples.length, true); ascii(8, "WAVE");
  ascii(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true);  // PCM
  view.setUint16(22, 1, true); view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true);  // mono, bytes/s
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);  // bytes per frame, bits per sample
  ascii(36, "data"); view.setUint32(40, 2 * samples.length, true);
  samples.forEach((x, i) => view.setInt16(44 + 2 * i, Math.round(Math.max(-1, Math.min(1, x)) * 32767), true));
  return new Blob([view.buffer], {type: "audio/wav"});
}

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1}});
  let context, source;
  try {  // 16 kHz is what the audio encoder hears; a browser that cannot resample the mic records at its own rate
    context = new AudioContext({sampleRate: 16000});
    source = context.createMediaStreamSource(stream);
  } catch (_) {
    context?.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(stream);
  }
  // a ScriptProcessorNode hands over raw samples with no worklet module to load; it runs only when connected
  const node = context.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  source.connect(node);
  node.connect(context.destination);  // its output stays silent: nothing is written to it
  const started = performance.now();
  const tick = () => {
    const seconds = (performance.now() - started) / 1000;
    $("rec-time").textContent = `${Math.floor(seconds / 60)}:${String(Math.floor(seconds % 60)).padStart(2, "0")}`;
    if (seconds >= MAX_SECONDS) stopRecording();
  };
  recorder = {stream, context, chunks, timer: setInterval(tick, 200)};
  tick();
  $("record").textContent = "■ Stop";
  $("record").dataset.recording = "true";
}

async function stopRecording() {
  const {stream, context, chunks, timer} = recorder;
  recorder = null;
  clearInterval(timer);
  stream.getTracks().forEach((t) => t.stop());
  await context.close();
  $("record").textContent = "● Record";
  delete $("record").dataset.recording;
  $("rec-time").textContent = "";
  const samples = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  chunks.reduce((at, c) => (samples.set(c, at), at + c.length), 0);
  if (!samples.length) { showError("the recording holds no sound: nothing came from the microphone"); return; }
  const name = `recording ${new Date().toTimeString().slice(0, 8)}.wav`;
  await attach([new File([wav(samples, context.sampleRate)], name, {type: "audio/wav"})]);
}

if (!navigator.mediaDevices?.getUserMedia) {  // only secure pages (https, localhost) may use the microphone
  $("record").disabled = true;
  $("record").title = "recording needs a secure page: open this one over https or at http://localhost";
}
$("record").addEventListener("click", async () => {
  if (recorder) { stopRecording(); return; }
  showError("");
  try { await startRecording(); } catch (e) { showError(`cannot record: ${e.message}`); }
});

// ---- reading replies aloud ---------------------------------------------------------------------------------------

// a "read aloud" button in the row under an assistant message; it reads the rendered text, not the Markdown
function speakButton(bubble, actions) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "speak";
  button.textContent = "▶ read aloud";
  button.reply = bubble.textContent;
  button.addEventListener("click", () => (playing?.button === button ? stopSpeaking() : speak(button)));
  actions.append(button);
  return button;
}

async function speak(button) {
  stopSpeaking();
  button.dataset.state = "loading";
  try {
    const res = await api("/v1/audio/speech", {method: "POST", body: JSON.stringify(
      {model: "tts", input: button.reply.slice(0, 4096), voice: "alloy", response_format: "wav"})});  // 4096: its limit
    const url = URL.createObjectURL(await res.blob());
    const audio = new Audio(url);
    playing = {audio, url, button};
    button.dataset.state = "playing";
    button.textContent = "■ stop reading";
    audio.addEventListener("ended", stopSpeaking);
    await audio.play();
  } catch (e) {
    stopSpeaking();
    button.dataset.state = "error";
    if (e.message === "unauthorized") return;
    showError(e.name === "NotAllowedError" ? "the browser blocked the sound: press \"read aloud\" on the reply" : e.message);
  }
}

function stopSpeaking() {
  if (!playing) return;
  const {audio, url, button} = playing;
  playing = null;
  audio.pause();
  URL.revokeObjectURL(url);
  button.dataset.state = "done";
  button.textContent = "▶ read aloud";
}

$("autoread").checked = localStorage.getItem("seekmoe-autoread") === "1";
$("autoread").addEventListener("change", () => localStorage.setItem("seekmoe-autoread",
                                                                   $("autoread").checked ? "1" : ""));

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
showConversation();
start();
