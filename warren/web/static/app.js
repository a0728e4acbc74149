// warren's dashboard: the pool as it is now, from one event stream (GET /api/pool/events), and a
// playground on the KoboldCpp stream endpoint. No framework, no build step, no polling of the server:
// a one-second local timer only moves the keep-alive countdowns and "last used" ages.
"use strict";

const $ = (id) => document.getElementById(id);
const MIB = 1024 * 1024;
const state = { status: null, at: 0, models: new Map() };

function keys() {
  return { api: sessionStorage.getItem("apiKey") || "", admin: sessionStorage.getItem("adminKey") || "" };
}
function bearer(secret) { return secret ? { Authorization: `Bearer ${secret}` } : {}; }
function mib(n) { return n == null ? "—" : `${(n / MIB).toFixed(0)} MiB`; }
function ago(s) {
  if (s == null) return "never";
  if (s < 60) return `${Math.round(s)} s ago`;
  return `${Math.floor(s / 60)} min ago`;
}
function countdown(s) {
  s = Math.max(0, Math.round(s));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
function toast(message) {
  const t = $("toast");
  t.textContent = message;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}
async function errorText(response) {
  try {
    const body = await response.json();
    return body?.detail?.msg || body?.error?.message || body?.error || body?.detail || response.statusText;
  } catch { return `${response.status} ${response.statusText}`; }
}

// -- server-sent events over fetch (EventSource cannot send an Authorization header) ---------------
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

async function followPool() {
  let delay = 500;
  for (;;) {
    try {
      const r = await fetch("/api/pool/events", { headers: bearer(keys().admin) });
      if (r.status === 401 || r.status === 403) {
        $("conn").textContent = `pool view locked: ${await errorText(r)} (set the admin key)`;
        await new Promise((ok) => setTimeout(ok, 3000));
        continue;
      }
      $("conn").textContent = "live";
      delay = 500;
      await readEvents(r, onPoolEvent);
    } catch (e) { /* the server restarted or the network blinked: reconnect below */ }
    $("conn").textContent = "reconnecting…";
    await new Promise((ok) => setTimeout(ok, delay));
    delay = Math.min(delay * 2, 8000);
  }
}

function onPoolEvent(name, data) {
  if (name === "snapshot") {
    state.status = data;
    state.models = new Map(data.instances.map((i) => [i.name, i]));
  } else if (data.instance) {
    state.models.set(data.model, data.instance);
    if (state.status && data.pool) Object.assign(state.status, data.pool);
  } else if (name === "active" && state.status) {
    state.status.active = data.model;
    for (const m of state.models.values()) m.active = m.name === data.model;
  }
  state.at = performance.now();
  render();
}

// -- rendering -----------------------------------------------------------------------------------
function render() {
  renderBudget();
  const cards = $("cards");
  const seen = new Set();
  for (const m of state.models.values()) {
    seen.add(m.name);
    let card = cards.querySelector(`[data-model="${CSS.escape(m.name)}"]`);
    if (!card) {
      card = document.createElement("article");
      card.className = "card";
      card.dataset.model = m.name;
      cards.appendChild(card);
    }
    fillCard(card, m);
  }
  for (const card of [...cards.children]) if (!seen.has(card.dataset.model)) card.remove();
  renderModelChoice();
}

function renderBudget() {
  const s = state.status;
  if (!s) return;
  const { reserved, measured } = s;
  $("budget-reserved").style.width = `${Math.min(100, (100 * reserved) / s.budget)}%`;
  $("budget-measured").style.width = `${Math.min(100, (100 * measured) / s.budget)}%`;
  $("budget-text").textContent =
    `budget ${mib(s.budget)} · reserved ${mib(reserved)} · measured ${mib(measured)}`;
  $("budget-bar").setAttribute("aria-label", `memory: ${mib(reserved)} reserved of ${mib(s.budget)}`);
}

function stateLabel(m) {
  if (m.state === "loading" || m.state === "starting") return `${m.state} ${Math.round((m.progress || 0) * 100)}%`;
  return m.state.replace("_", " ");
}

function fillCard(card, m) {
  const elapsed = (performance.now() - state.at) / 1000;
  const signature = JSON.stringify(m);
  if (card.dataset.sig === signature) { // only the clock moved: update the times, keep the DOM (and focus)
    const dyn = cardText(m, elapsed);
    card.querySelector('[data-role="keep"]').textContent = dyn.keep;
    card.querySelector('[data-role="used"]').textContent = dyn.used;
    return;
  }
  card.dataset.sig = signature;
  const focused = card.contains(document.activeElement) ? document.activeElement.dataset.act : null;
  const loaded = isLoaded(m);
  const { keep, used } = cardText(m, elapsed);
  const est = m.memory?.estimate?.total;
  const reason = m.state === "crashed" ? (m.last_exit || m.quarantined || "crashed")
    : m.state === "load_failed" ? (m.quarantined || m.error || m.last_error || "load failed") : "";
  card.innerHTML = `
    <div class="head">
      <h3>${escapeHtml(m.name)} ${m.active ? '<span class="tag">active</span>' : ""}</h3>
      <span class="state ${m.state}" data-role="state">${escapeHtml(stateLabel(m))}</span>
    </div>
    ${m.state === "loading" || m.state === "starting"
      ? `<div class="progress" aria-hidden="true"><div style="width:${Math.round((m.progress || 0) * 100)}%"></div></div>` : ""}
    ${reason ? `<p class="reason" data-role="reason">${escapeHtml(reason)}</p>` : ""}
    <dl>
      <dt>handle</dt><dd data-role="handle">${escapeHtml(m.handle || "—")}</dd>
      ${m.node && m.node !== "local" // on a cluster (warren --cluster): the node its worker runs (or last ran) on
        ? `<dt>node</dt><dd data-role="node" title="${escapeHtml(m.node)}">${escapeHtml(m.node.slice(0, 12))}</dd>` : ""}
      <dt>memory</dt><dd data-role="memory">estimate ${mib(est)} · ${m.state === "parked"
        ? `parked ${mib(m.memory?.reserved)}${m.memory?.kv_state ? ` (${m.memory.kv_kept === "context" ? "context" : "KV state"} ${mib(m.memory.kv_state)})` : ""}`
        : `measured ${loaded ? mib(m.memory?.measured) : "—"}`}</dd>
      <dt>load time</dt><dd>${m.load_seconds != null && loaded ? `${m.load_seconds.toFixed(2)} s` : "—"}</dd>
      <dt>requests</dt><dd>${m.in_flight || 0} in flight · ${m.queued || 0} queued</dd>
      <dt>last used</dt><dd data-role="used">${used}</dd>
      <dt>keep-alive</dt><dd data-role="keep">${keep}</dd>
      <dt>restarts</dt><dd>${m.restarts || 0} · ${m.crashes || 0} crashes</dd>
    </dl>
    <div class="actions">
      <button data-act="load" ${loaded && m.state !== "parked" ? "disabled" : ""}>Load</button>
      <button data-act="unload" ${loaded ? "" : "disabled"}>Unload</button>
      <button data-act="pin">${m.pinned ? "Unpin" : "Pin"}</button>
      <button data-act="activate" ${m.active ? "disabled" : ""}>Make active</button>
    </div>`;
  for (const b of card.querySelectorAll("button[data-act]")) {
    b.addEventListener("click", () => act(b.dataset.act, m, b));
    b.setAttribute("aria-label", `${b.textContent} ${m.name}`);
  }
  if (focused) card.querySelector(`button[data-act="${focused}"]`)?.focus();
}

function isLoaded(m) { return ["ready", "busy", "parked", "loading", "starting"].includes(m.state); }

function cardText(m, elapsed) {
  let keep = "—";
  if (isLoaded(m)) {
    if (m.pinned) keep = "pinned";
    else if (m.keep_alive == null || m.keep_alive < 0) keep = "kept loaded";
    else if (m.expires_in != null) keep = `unloads in ${countdown(m.expires_in - elapsed)}`;
    else keep = `${countdown(m.keep_alive)} after use`;
  }
  const used = isLoaded(m) ? ago(m.last_used_ago == null ? null : m.last_used_ago + elapsed) : "—";
  return { keep, used };
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

async function act(action, m, button) {
  const name = encodeURIComponent(m.name);
  const requests = {
    load: [`/api/models/${name}/load`, {}],
    unload: [`/api/models/${name}/unload`, null],
    pin: [`/api/models/${name}/load`, { pin: !m.pinned }],
    activate: [`/api/models/${name}/activate`, null],
  };
  const [url, body] = requests[action];
  button.disabled = true;
  try {
    const r = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...bearer(keys().admin) },
      body: body ? JSON.stringify(body) : "{}",
    });
    if (!r.ok) {
      toast(`${action} ${m.name}: ${await errorText(r)}${r.status === 401 ? " — set the admin key" : ""}`);
      if (r.status === 401) { document.querySelector(".keys").open = true; $("admin-key").focus(); }
    }
  } catch (e) { toast(`${action} ${m.name}: ${e}`); }
  finally { button.disabled = false; }
}

function renderModelChoice() {
  const select = $("play-model");
  const current = select.value;
  const options = [];
  for (const m of state.models.values()) {
    if (m.error && !m.handle) continue;
    options.push([m.name, m.name + (m.active ? " (active)" : "")]);
    if (m.handle && ["ready", "busy"].includes(m.state)) options.push([m.handle, `${m.handle} (this instance)`]);
  }
  const wanted = options.map(([v, l]) => `${v}|${l}`).join("\n");
  if (select.dataset.options === wanted) return;
  select.dataset.options = wanted;
  select.innerHTML = options.map(([v, l]) => `<option value="${escapeHtml(v)}">${escapeHtml(l)}</option>`).join("");
  if (options.some(([v]) => v === current)) select.value = current;
}

// -- playground ------------------------------------------------------------------------------------
let running = null;

async function generate(event) {
  event.preventDefault();
  if (running) return;
  const model = $("play-model").value;
  const genkey = `WARREN${Math.floor(Math.random() * 1e9)}`;
  const out = $("play-output");
  const stats = $("play-stats");
  out.textContent = "";
  stats.textContent = "waiting for the model…";
  const controller = new AbortController();
  running = { model, genkey, controller };
  $("play-go").disabled = true;
  $("play-stop").disabled = false;
  let tokens = 0, first = 0;
  try {
    const r = await fetch(`/m/${encodeURIComponent(model)}/api/extra/generate/stream`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...bearer(keys().api) },
      body: JSON.stringify({ prompt: $("play-prompt").value, max_length: Number($("play-max").value) || 64, genkey }),
      signal: controller.signal,
    });
    if (!r.ok) { stats.textContent = ""; toast(`generate: ${await errorText(r)}`); return; }
    await readEvents(r, (name, data) => {
      if (name === "error") { toast(`generate: ${data?.detail?.msg || "failed"}`); return; }
      if (data.token) {
        if (!first) first = performance.now();
        tokens += 1;
        out.textContent += data.token;
      }
      const seconds = first ? (performance.now() - first) / 1000 : 0;
      const rate = seconds > 0 && tokens > 1 ? ((tokens - 1) / seconds).toFixed(1) : "—";
      stats.textContent = data.finish_reason
        ? `${tokens} tokens · ${rate} tokens/s · ${data.finish_reason}` : `${tokens} tokens · ${rate} tokens/s`;
    });
  } catch (e) {
    if (e.name !== "AbortError") toast(`generate: ${e}`);
  } finally {
    running = null;
    $("play-go").disabled = false;
    $("play-stop").disabled = true;
  }
}

async function stop() {
  if (!running) return;
  const { model, genkey } = running;
  await fetch(`/m/${encodeURIComponent(model)}/api/extra/abort`, {
    method: "POST", headers: { "Content-Type": "application/json", ...bearer(keys().api) },
    body: JSON.stringify({ genkey }),
  });
}

// -- start ---------------------------------------------------------------------------------------------
for (const [id, key] of [["api-key", "apiKey"], ["admin-key", "adminKey"]]) {
  $(id).value = sessionStorage.getItem(key) || "";
  $(id).addEventListener("change", (e) => { sessionStorage.setItem(key, e.target.value); });
}
$("play-form").addEventListener("submit", generate);
$("play-stop").addEventListener("click", stop);
$("play-prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("play-form").requestSubmit();
});
setInterval(() => { if (state.status) render(); }, 1000);
followPool();
