// The Sluice playground: chat with a model through this gateway, over SSE or WebSocket.
// Plain browser JavaScript, no build step; it talks to the same origin that served it.
"use strict";

const KEY_STORAGE = "sluice.apiKey";
const TRANSPORT_STORAGE = "sluice.transport";
const $ = (id) => document.getElementById(id);

const state = {
  messages: [],   // the conversation sent with each request: {role, content}
  run: null,      // the answer being streamed, if any
  socket: null,   // {ws, key, ready: Promise<WebSocket>, runs: Map<id, run>}
  nextId: 1,
};

// ---- settings --------------------------------------------------------------------------

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      return `HTTP ${response.status}: ${body.error.message}`;
    }
  } catch (_) {
    // not JSON: the status says enough
  }
  return `HTTP ${response.status}`;
}

async function loadModels() {
  const select = $("model");
  const previous = select.value;
  setStatus("loading models…");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (!response.ok) {
      throw new Error(await errorMessage(response));
    }
    const cards = (await response.json()).data || [];
    select.replaceChildren(...cards.map((card) => {
      const label = card.parent ? `${card.id} (adapter on ${card.parent})` : card.id;
      return new Option(label, card.id, false, card.id === previous);
    }));
    select.dataset.loaded = String(cards.length);
    setStatus(cards.length ? `${cards.length} model(s) served` : "no model is served right now",
              !cards.length);
  } catch (error) {
    select.replaceChildren();
    setStatus(`models: ${error.message}`, true);
  }
}

// ---- the conversation ------------------------------------------------------------------

function addMessage(role, content) {
  const item = document.createElement("li");
  item.className = role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const text = document.createElement("div");
  text.className = "content";
  text.textContent = content;
  item.append(label, text);
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return { item, text };
}

function newRun(transport) {
  const view = addMessage("assistant", "");
  view.item.classList.add("streaming");
  return {
    id: `r${state.nextId++}`, transport, view, content: "", chunks: 0, usage: null,
    started: performance.now(), firstAt: null, lastAt: null, stopped: false,
    controller: new AbortController(), finish: null,
  };
}

function onChunk(run, chunk) {
  if (chunk.error) {
    throw new Error(chunk.error.message || "the stream ended with an error");
  }
  if (chunk.usage) {
    run.usage = chunk.usage;
  }
  const choice = (chunk.choices || [])[0];
  const piece = choice && choice.delta ? choice.delta.content : null;
  if (!piece) {
    return;
  }
  const now = performance.now();
  if (run.firstAt === null) {
    run.firstAt = now;
    showTtft(run);
  }
  run.lastAt = now;
  run.chunks += 1;
  run.content += piece;
  run.view.text.textContent = run.content;
  showRate(run);
}

// ---- statistics ------------------------------------------------------------------------

function resetStats(transport) {
  for (const id of ["ttft", "tps", "tokens", "engine", "request-id"]) {
    $(id).textContent = "–";
    delete $(id).dataset.value;
  }
  $("used-transport").textContent = transport === "ws" ? "WebSocket" : "SSE";
  showServerTiming(null);
}

function showTtft(run) {
  const ms = run.firstAt - run.started;
  $("ttft").textContent = `${ms.toFixed(0)} ms`;
  $("ttft").dataset.value = ms.toFixed(1);
}

function showRate(run) {
  const tokens = run.usage ? run.usage.completion_tokens : run.chunks;
  $("tokens").textContent = String(tokens);
  $("tokens").dataset.value = String(tokens);
  // Decode rate: the tokens after the first, over the time since the first.
  const seconds = (run.lastAt - run.firstAt) / 1000;
  if (tokens > 1 && seconds > 0) {
    const rate = (tokens - 1) / seconds;
    $("tps").textContent = rate.toFixed(1);
    $("tps").dataset.value = rate.toFixed(2);
  }
}

function showEngine(engine, requestId) {
  if (engine) {
    $("engine").textContent = engine;
    $("engine").dataset.value = engine;
  }
  if (requestId) {
    $("request-id").textContent = requestId;
  }
}

// "admit;dur=0.2, sched;dur=0.1;desc=\"...\"" -> [{name, dur, desc}]
function parseServerTiming(header) {
  return header.split(",").map((entry) => {
    const [name, ...params] = entry.trim().split(";");
    const metric = { name: name.trim(), dur: null, desc: "" };
    for (const param of params) {
      const [key, value = ""] = param.trim().split("=");
      const unquoted = value.replace(/^"(.*)"$/, "$1");
      if (key === "dur") {
        metric.dur = Number(unquoted);
      } else if (key === "desc") {
        metric.desc = unquoted;
      }
    }
    return metric;
  }).filter((metric) => metric.name);
}

function showServerTiming(header) {
  const body = $("server-timing").tBodies[0];
  const metrics = header ? parseServerTiming(header) : [];
  if (!metrics.length) {
    body.replaceChildren(row(header === null ? "–" : "not sent", ""));
    return;
  }
  body.replaceChildren(...metrics.map((m) => row(
    m.desc ? `${m.name} (${m.desc})` : m.name,
    m.dur === null || Number.isNaN(m.dur) ? "" : `${m.dur.toFixed(1)} ms`)));
  $("server-timing").dataset.value = metrics.map((m) => m.name).join(",");
}

function row(name, value) {
  const tr = document.createElement("tr");
  const left = document.createElement("td");
  const right = document.createElement("td");
  left.textContent = name;
  right.textContent = value;
  tr.append(left, right);
  return tr;
}

// ---- SSE over fetch --------------------------------------------------------------------

async function streamSse(run, body) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify(body),
    signal: run.controller.signal,
  });
  showEngine(response.headers.get("x-sluice-engine"), response.headers.get("x-request-id"));
  showServerTiming(response.headers.get("server-timing") || "");
  if (!response.ok) {
    throw new Error(await errorMessage(response));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      return;
    }
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (!data) {
        continue;  // a comment, e.g. a keep-alive
      }
      if (data === "[DONE]") {
        await reader.cancel();
        return;
      }
      onChunk(run, JSON.parse(data));
    }
  }
}

// ---- WebSocket -------------------------------------------------------------------------

function openSocket() {
  const key = apiKey();
  const current = state.socket;
  if (current && current.key === key && current.ws.readyState <= WebSocket.OPEN) {
    return current.ready;
  }
  if (current) {
    current.ws.close();
  }
  const url = new URL("/v1/ws", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol.
  const ws = new WebSocket(url, key ? ["sluice", `bearer.${key}`] : ["sluice"]);
  const socket = { ws, key, runs: new Map() };
  socket.ready = new Promise((resolve, reject) => {
    ws.addEventListener("open", () => resolve(ws), { once: true });
    ws.addEventListener("error", () => reject(new Error("WebSocket connection failed")),
                        { once: true });
  });
  socket.ready.catch(() => {});  // failures reach whoever awaits it
  ws.addEventListener("message", (event) => onSocketMessage(socket, event));
  ws.addEventListener("close", (event) => {
    for (const run of socket.runs.values()) {
      run.finish(new Error(`WebSocket closed (${event.code}${event.reason ? ": " + event.reason : ""})`));
    }
    socket.runs.clear();
    if (state.socket === socket) {
      state.socket = null;
    }
  });
  state.socket = socket;
  return socket.ready;
}

function onSocketMessage(socket, event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch (_) {
    return;
  }
  const run = socket.runs.get(message.id);
  if (!run) {
    return;
  }
  const engine = message.engine || (message.headers && message.headers["x-sluice-engine"]);
  if (engine) {
    showEngine(engine, message.request_id);
  }
  const timing = message.server_timing || (message.headers && message.headers["server-timing"]);
  if (timing) {
    showServerTiming(timing);
  }
  try {
    if (message.type === "chunk") {
      onChunk(run, typeof message.data === "string" ? JSON.parse(message.data) : message.data);
    } else if (message.type === "done" || message.type === "cancelled") {
      if (message.usage) {
        run.usage = message.usage;
      }
      run.finish(null);
    } else if (message.type === "error") {
      const error = message.error || message.data || {};
      run.finish(new Error(error.message || "the gateway reported an error"));
    }
  } catch (error) {
    run.finish(error);
  }
}

async function streamWs(run, body) {
  const ws = await openSocket();
  const socket = state.socket;
  await new Promise((resolve, reject) => {
    run.finish = (error) => {
      socket.runs.delete(run.id);
      if (error) {
        reject(error);
      } else {
        resolve();
      }
    };
    socket.runs.set(run.id, run);
    ws.send(JSON.stringify({ id: run.id, type: "chat.completions", body }));
  });
}

// ---- one exchange ----------------------------------------------------------------------

async function send(prompt) {
  const model = $("model").value;
  if (!model) {
    setStatus("pick a model first (is the API key right?)", true);
    return;
  }
  const transport = $("transport").value;
  state.messages.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const run = newRun(transport);
  state.run = run;
  resetStats(transport);
  setRunning(true);
  setStatus(`streaming from ${model}…`);
  const body = {
    model, messages: state.messages, stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($("max-tokens").value) || 256,
  };
  const temperature = $("temperature").value;
  if (temperature !== "") {
    body.temperature = Number(temperature);
  }
  try {
    await (transport === "ws" ? streamWs(run, body) : streamSse(run, body));
    if (run.firstAt !== null) {
      showRate(run);
    }
    setStatus(run.stopped ? "stopped" : "done");
  } catch (error) {
    if (run.stopped) {
      setStatus("stopped");
    } else {
      run.view.item.classList.add("error");
      if (!run.content) {
        run.view.text.textContent = error.message;
      }
      setStatus(error.message, true);
    }
  } finally {
    run.view.item.classList.remove("streaming");
    if (run.content) {
      state.messages.push({ role: "assistant", content: run.content });
    }
    state.run = null;
    setRunning(false);
  }
}

function stop() {
  const run = state.run;
  if (!run) {
    return;
  }
  run.stopped = true;
  if (run.transport === "ws") {
    if (state.socket && state.socket.ws.readyState === WebSocket.OPEN) {
      state.socket.ws.send(JSON.stringify({ type: "cancel", id: run.id }));
    }
    if (run.finish) {
      run.finish(null);  // stop showing it now, whatever the gateway still sends
    }
  } else {
    run.controller.abort();
  }
}

function setRunning(running) {
  $("send").disabled = running;
  $("stop").disabled = !running;
  document.body.dataset.running = String(running);
}

// ---- wiring ----------------------------------------------------------------------------

function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("transport").value = sessionStorage.getItem(TRANSPORT_STORAGE) || "sse";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, apiKey());
    loadModels();
  });
  $("transport").addEventListener("change", () => {
    sessionStorage.setItem(TRANSPORT_STORAGE, $("transport").value);
  });
  $("reload-models").addEventListener("click", loadModels);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = $("prompt").value.trim();
    if (prompt && !state.run) {
      $("prompt").value = "";
      send(prompt);
    }
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("clear").addEventListener("click", () => {
    stop();
    state.messages = [];
    $("messages").replaceChildren();
  });
  setRunning(false);
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
