// The chat page of `parscale serve`: talks to the server's own OpenAI-compatible API with
// streaming, and shows for P > 1 the aggregation weights of every token (extension
// "parscale_stream_weights": the chunks carry "parscale": {"tokens": [...], "stream_weights": [[...]]}).
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#3056d3", "#e0662c", "#2e9d5b", "#a442c9", "#d4a017", "#1b9aaa", "#d6336c", "#6b7385"];
const history = [];  // {role, content}
let models = [];
let controller = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function setStatus(text, ok) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (ok ? "ok" : "err");
}

function currentModel() {
  return models.find((m) => m.id === $("model").value) || models[0];
}

function updateLegend() {
  const m = currentModel();
  const p = m && m.parscale ? m.parscale.streams : 1;
  const legend = $("legend");
  legend.innerHTML = "";
  if (p <= 1) return;
  for (let s = 0; s < p; ++s) {
    const span = document.createElement("span");
    span.innerHTML = `<i style="background:${COLORS[s % COLORS.length]}"></i>stream ${s}`;
    legend.appendChild(span);
  }
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    models = body.data;
    const sel = $("model");
    const previous = sel.value;
    sel.innerHTML = "";
    for (const m of models) {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = `${m.id}  ·  P = ${m.parscale ? m.parscale.streams : 1}`;
      sel.appendChild(o);
    }
    if (models.some((m) => m.id === previous)) sel.value = previous;
    setStatus(`${models.length} model${models.length === 1 ? "" : "s"}`, true);
    updateLegend();
  } catch (e) {
    setStatus("cannot list models: " + e.message, false);
  }
}

function addMessage(role, text) {
  $("empty")?.remove();
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

// Appends generated text to the assistant bubble; with stream weights, one span per token.
function appendTokens(div, text, parscale, showWeights) {
  if (showWeights && parscale && parscale.stream_weights && parscale.stream_weights.length) {
    // The text of the chunk is laid out over its tokens: the pieces give the split; text held
    // back by the decoder or stop strings simply goes to the last span.
    let rest = text;
    const n = parscale.stream_weights.length;
    for (let i = 0; i < n; ++i) {
      const w = parscale.stream_weights[i];
      let best = 0;
      for (let s = 1; s < w.length; ++s) if (w[s] > w[best]) best = s;
      const piece = i === n - 1 ? rest : rest.slice(0, Math.min(rest.length, [...(parscale.tokens[i] || "")].length));
      rest = rest.slice(piece.length);
      const span = document.createElement("span");
      span.className = "tok";
      span.textContent = piece;
      span.style.setProperty("--c", COLORS[best % COLORS.length]);
      span.style.setProperty("--o", (0.35 + 0.65 * Math.min(1, (w[best] - 1 / w.length) * w.length / (w.length - 1) * 1.5)).toFixed(2));
      span.title = "stream weights: " + w.map((x, s) => `${s}: ${x.toFixed(3)}`).join("  ");
      div.appendChild(span);
    }
  } else if (text) {
    div.appendChild(document.createTextNode(text));
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const div = addMessage("assistant", "");
  div.classList.add("cursor");
  const m = currentModel();
  const showWeights = $("weights").checked && m && m.parscale && m.parscale.streams > 1;
  const body = {
    model: m ? m.id : undefined,
    messages: ($("system").value.trim() ? [{ role: "system", content: $("system").value.trim() }] : []).concat(history),
    stream: true,
    stream_options: { include_usage: true },
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
    top_k: parseInt($("top_k").value || "0", 10),
    max_tokens: parseInt($("max_tokens").value || "200", 10),
    parscale_stream_weights: !!showWeights,
  };
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  controller = new AbortController();
  $("send").textContent = "Stop";
  $("send").classList.add("stop");
  const t0 = performance.now();
  let first = 0, tokens = 0, reply = "", finish = "", usage = null;
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!r.ok) {
      const e = await r.json().catch(() => ({}));
      throw new Error(e.error ? e.error.message : `${r.status} ${r.statusText}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.usage) usage = chunk.usage;
          for (const c of chunk.choices || []) {
            const piece = (c.delta && c.delta.content) || "";
            const n = c.parscale ? c.parscale.stream_weights.length : (piece ? 1 : 0);
            if (n && !first) first = performance.now();
            tokens += n;
            reply += piece;
            appendTokens(div, piece, c.parscale, showWeights);
            if (c.finish_reason) finish = c.finish_reason;
          }
          const secs = first ? (performance.now() - first) / 1000 : 0;
          $("stats").textContent = `${tokens} tokens · ${secs > 0 ? (Math.max(tokens - 1, 0) / secs).toFixed(1) : "–"} tokens/s`;
          div.scrollIntoView({ block: "end" });
        }
      }
    }
    history.push({ role: "assistant", content: reply });
    const total = usage ? usage.completion_tokens : tokens;
    const secs = first ? (performance.now() - first) / 1000 : 0;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${m ? m.id : ""} · ${total} tokens · first token ${first ? ((first - t0) / 1000).toFixed(2) : "–"} s · ` +
      `${secs > 0 ? (Math.max(total - 1, 0) / secs).toFixed(1) : "–"} tokens/s · ${finish || "stopped"}`;
    div.appendChild(meta);
    $("stats").textContent = meta.textContent;
  } catch (e) {
    if (e.name === "AbortError") {
      history.push({ role: "assistant", content: reply });
    } else {
      history.pop();
      div.classList.add("error");
      div.textContent = "Error: " + e.message;
    }
  } finally {
    div.classList.remove("cursor");
    controller = null;
    $("send").textContent = "Send";
    $("send").classList.remove("stop");
  }
}

for (const id of ["temperature", "top_p"]) {
  $(id).addEventListener("input", () => ($(id + "-out").textContent = $(id).value));
}
$("model").addEventListener("change", updateLegend);
$("apikey").value = localStorage.getItem("parscale-api-key") || "";
$("apikey").addEventListener("change", () => {
  localStorage.setItem("parscale-api-key", $("apikey").value.trim());
  loadModels();
});
$("clear").addEventListener("click", () => {
  history.length = 0;
  $("messages").innerHTML = "";
  $("stats").textContent = "";
});
$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (controller) return controller.abort();
  const text = $("input").value.trim();
  if (!text) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});
loadModels();
