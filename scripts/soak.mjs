// Soak load for `parscale serve` (driven by scripts/soak.sh; Node built-ins only).
//   node scripts/soak.mjs --port PORT --pid PID --minutes N [--clients 4] [--model demo] [--max-body-mib 1]
// For N minutes, `clients` loops each send one request at a time over a fresh 127.0.0.1
// connection, drawn from a fixed mix: valid completions / chat (streaming and not, P = 1, 2, 4),
// malformed bodies (bad JSON, wrong types, huge numbers, invalid UTF-8, oversized), unknown
// routes, slow senders, slow readers and clients that disconnect mid-stream. Every exchange's
// outcome is checked against what the kind of request must get (200 for valid ones, 4xx for
// malformed ones); prints one JSON summary line (requests, statuses, 5xx, unexpected outcomes,
// RSS of PID sampled every 10 s).
import fs from "node:fs";
import net from "node:net";
import { post } from "../tests/node/helpers.mjs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const port = Number(args.port);
const pid = Number(args.pid);
const minutes = Number(args.minutes ?? 10);
const clients = Number(args.clients ?? 4);
const model = args.model ?? "demo";
const maxBody = Number(args["max-body-mib"] ?? 1) << 20;
if (!port || !pid) throw new Error("usage: soak.mjs --port PORT --pid PID [--minutes N] [--clients C]");

// A deterministic generator (the mix is reproducible given the timing).
let state = 0x2545f491;
function rand() {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const WORDS = ["the", "cat", "sat", "on", "a", "mat", "once", "upon", "time", "story", "little", "dog", "ran", "home", "and", "then"];
const text = (n) => Array.from({ length: n }, () => pick(WORDS)).join(" ");
const models = [model, `${model}:p2`, `${model}:p4`];

function rssKiB() {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
    return m ? Number(m[1]) : null;
  } catch {
    return null;  // the server is gone
  }
}

// One exchange over a fresh socket. opts: sendChunks (send the request in this many pieces,
// pauseMs apart), readPauseMs (pause reading this long after every data event), disconnectAfter
// (destroy the socket once this many response bytes arrived). Resolves to {status, bytes, cut}.
function exchange(bytes, { sendChunks = 1, pauseMs = 0, readPauseMs = 0, disconnectAfter = 0, timeoutMs = 120000 } = {}) {
  return new Promise((resolve) => {
    const sock = net.connect(port, "127.0.0.1");
    const parts = [];
    let got = 0;
    let settled = false;
    const finish = (cut) => {
      if (settled) return;
      settled = true;
      sock.destroy();
      const head = Buffer.concat(parts).subarray(0, 64).toString("latin1");
      const m = head.match(/^HTTP\/1\.[01] (\d{3})/);
      resolve({ status: m ? Number(m[1]) : 0, bytes: got, cut, body: Buffer.concat(parts).toString("utf8") });
    };
    sock.setTimeout(timeoutMs, () => finish("timeout"));
    sock.on("data", (d) => {
      parts.push(d);
      got += d.length;
      if (disconnectAfter && got >= disconnectAfter) return finish("client");
      if (readPauseMs) {
        sock.pause();
        setTimeout(() => sock.resume(), readPauseMs);
      }
    });
    sock.on("error", () => finish("error"));
    sock.on("close", () => finish(null));
    sock.on("connect", async () => {
      const step = Math.ceil(bytes.length / sendChunks);
      for (let i = 0; i < bytes.length && !settled; i += step) {
        sock.write(bytes.subarray(i, i + step));
        if (pauseMs && i + step < bytes.length) await new Promise((r) => setTimeout(r, pauseMs));
      }
    });
  });
}

function completion(stream) {
  return {
    model: pick(models),
    prompt: rand() < 0.8 ? text(int(1, 40)) : [text(int(1, 8)), text(int(1, 8))],
    max_tokens: int(1, 24),
    temperature: pick([0, 0.7, 1.0]),
    top_p: pick([1, 0.9]),
    seed: int(0, 1e6),
    n: rand() < 0.2 ? 2 : 1,
    stop: rand() < 0.3 ? ["."] : undefined,
    logprobs: rand() < 0.2 ? 2 : undefined,
    stream,
  };
}
function chat(stream) {
  return {
    model: pick(models),
    messages: [{ role: "system", content: "Be brief." }, { role: "user", content: text(int(1, 30)) }],
    max_completion_tokens: int(1, 24),
    temperature: pick([0, 0.8]),
    seed: int(0, 1e6),
    stream,
    stream_options: stream ? { include_usage: true } : undefined,
  };
}

// kind: name -> [weight, () => {bytes, opts}, expected(status, result)]
const ok = (s) => s === 200;
const client4xx = (s) => s >= 400 && s < 500;
const KINDS = {
  completion: [12, () => ({ bytes: post("/v1/completions", completion(false)) }), ok],
  completion_stream: [12, () => ({ bytes: post("/v1/completions", completion(true)) }), ok],
  chat: [10, () => ({ bytes: post("/v1/chat/completions", chat(false)) }), ok],
  chat_stream: [10, () => ({ bytes: post("/v1/chat/completions", chat(true)) }), ok],
  bad_json: [6, () => ({ bytes: post(pick(["/v1/completions", "/v1/chat/completions"]), pick(['{"prompt": "a"', "{]", "nul\u0000l", "[" .repeat(200), ""])) }), client4xx],
  wrong_types: [6, () => ({ bytes: post("/v1/completions", pick([{ prompt: 5 }, { prompt: "a", max_tokens: "9" }, { prompt: "a", stream: "yes" }, { prompt: "a", stop: [1] }, { prompt: [[]] }])) }), client4xx],
  huge_numbers: [6, () => ({ bytes: post(pick(["/v1/completions", "/v1/chat/completions"]), pick([
    '{"prompt":"a","messages":[{"role":"user","content":"a"}],"max_tokens":9223372036854775807}',
    '{"prompt":"a","messages":[{"role":"user","content":"a"}],"max_tokens":1e400}',
    '{"prompt":[99999999999],"messages":[{"role":"user","content":"a"}],"n":18446744073709551616}',
    '{"prompt":"a","messages":[{"role":"user","content":"a"}],"temperature":-1e308,"top_k":-9223372036854775808}',
  ])) }), client4xx],
  invalid_utf8: [5, () => ({ bytes: post(pick(["/v1/completions", "/v1/chat/completions"]), '{"prompt":"\xff\xfe\xc3(","messages":[{"role":"user","content":"\xed\xa0\x80"}]}') }),
    (s) => s === 200 || client4xx(s)],  // the server may replace invalid bytes or refuse them: never 5xx
  oversized: [1, () => ({ bytes: post("/v1/completions", `{"prompt":"${"a".repeat(maxBody + 1024)}"}`) }), (s) => s === 413 || s === 0],
  unknown_route: [3, () => ({ bytes: Buffer.from(`GET /v1/${pick(["nope", "models/x", "../etc/passwd"])} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`) }), client4xx],
  health_models_metrics: [3, () => ({ bytes: Buffer.from(`GET ${pick(["/health", "/v1/models", "/metrics"])} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`) }), ok],
  slow_sender: [4, () => ({ bytes: post("/v1/completions", completion(false)), opts: { sendChunks: 8, pauseMs: 250 } }), ok],
  slow_reader: [4, () => ({ bytes: post("/v1/chat/completions", chat(true)), opts: { readPauseMs: 200 } }), ok],
  disconnect_mid_stream: [8, () => {
    const isChat = rand() < 0.5;  // the body must match the route (a mismatch is a 400, not a stream)
    const body = { ...(isChat ? chat(true) : completion(true)), max_tokens: 200, max_completion_tokens: 200 };
    return { bytes: post(isChat ? "/v1/chat/completions" : "/v1/completions", body), opts: { disconnectAfter: int(200, 900) } };
  },
    (s, r) => s === 200 || (s === 0 && r.cut === "client")],
  disconnect_before_response: [3, () => ({ bytes: post("/v1/completions", completion(false)), opts: { disconnectAfter: 1, sendChunks: 2, pauseMs: 50 } }), (s) => s === 200 || s === 0],
};
const table = Object.entries(KINDS);
const totalWeight = table.reduce((s, [, [w]]) => s + w, 0);
function drawKind() {
  let x = rand() * totalWeight;
  for (const [name, entry] of table) if ((x -= entry[0]) < 0) return [name, entry];
  return table[0];
}

const summary = { requests: 0, by_status: {}, by_kind: {}, server_errors_5xx: 0, unexpected: [], rss_kib: [] };
const rssStart = rssKiB();
summary.rss_kib.push([0, rssStart]);
const t0 = Date.now();
const end = t0 + minutes * 60000;
const sampler = setInterval(() => summary.rss_kib.push([Math.round((Date.now() - t0) / 1000), rssKiB()]), 10000);

async function client() {
  while (Date.now() < end) {
    const [name, [, make, expected]] = drawKind();
    const { bytes, opts } = make();
    const r = await exchange(bytes, opts);
    summary.requests++;
    summary.by_status[r.status] = (summary.by_status[r.status] ?? 0) + 1;
    summary.by_kind[name] = (summary.by_kind[name] ?? 0) + 1;
    if (r.status >= 500) summary.server_errors_5xx++;
    if (!expected(r.status, r) && summary.unexpected.length < 20)
      summary.unexpected.push({ kind: name, status: r.status, cut: r.cut, head: r.body.slice(0, 300) });
    else if (!expected(r.status, r)) summary.unexpected_more = (summary.unexpected_more ?? 0) + 1;
  }
}
await Promise.all(Array.from({ length: clients }, client));
clearInterval(sampler);
summary.seconds = Math.round((Date.now() - t0) / 1000);
summary.rss_start_kib = rssStart;
summary.rss_end_kib = rssKiB();
summary.alive = summary.rss_end_kib !== null;
console.log(JSON.stringify(summary));
