#!/usr/bin/env node
// Load generator for OpenAI-compatible servers (`parscale serve`, llama-server, ...): N
// concurrent clients, each sending streaming /v1/completions requests back to back with a prompt
// of random token ids and a fixed number of generated tokens (ignore_eos). Prints TTFT p50/p99,
// inter-token latency p50/p99 and aggregate generated tokens/s, per model and for the mix.
//
//   node scripts/bench_serve.mjs --url http://127.0.0.1:8080 --models demo,demo:p4 \
//        --clients 8 --requests 2 --prompt-tokens 128 --max-tokens 64 [--vocab 4096] [--api-key K] [--json] [--mix-only]
//
// --models a,b,c: one run per model, then one run where client i uses model i mod count ("mix");
// --mix-only: just the mix run.
// Node 18+ only (built-in fetch), no packages.
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1] && !all[i + 1].startsWith("--") ? all[i + 1] : "true"]] : acc), []));
const url = (args.url || "http://127.0.0.1:8080").replace(/\/$/, "");
const models = (args.models || "").split(",").filter(Boolean);
const clients = Number(args.clients || 8);
const perClient = Number(args.requests || 2);
const promptTokens = Number(args["prompt-tokens"] || 128);
const maxTokens = Number(args["max-tokens"] || 64);
const vocab = Number(args.vocab || 4096);
const headers = { "Content-Type": "application/json" };
let retries = 0;  // requests sent again after a stale kept-alive connection (see one())
if (args["api-key"]) headers.Authorization = "Bearer " + args["api-key"];

function percentile(xs, q) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

let seed = 12345;
function rand() {  // deterministic prompts: every server gets the same ones
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
}

// One streaming request; returns {ttft, gaps[], tokens}.
async function one(model, prompt) {
  const body = { prompt, max_tokens: maxTokens, temperature: 0, stream: true, ignore_eos: true, stream_options: { include_usage: true } };
  if (model) body.model = model;
  const t0 = performance.now();
  // A kept-alive connection that the server closed between two requests fails before any response
  // (undici "other side closed"); the server saw nothing, so send once more on a fresh connection.
  // TTFT still counts from the first attempt.
  let r;
  for (let attempt = 0; ; ++attempt) {
    try {
      r = await fetch(url + "/v1/completions", { method: "POST", headers, body: JSON.stringify(body) });
      break;
    } catch (e) {
      const code = e.cause && e.cause.code;
      if (attempt >= 2 || !(code === "UND_ERR_SOCKET" || code === "ECONNRESET")) throw e;
      ++retries;
    }
  }
  if (!r.ok) throw new Error(`${r.status}: ${await r.text()}`);
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "", last = 0, ttft = NaN, chunks = 0, usageTokens = null;
  const gaps = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
      const j = JSON.parse(ev.slice(6));
      if (j.usage && j.usage.completion_tokens != null) usageTokens = j.usage.completion_tokens;
      const c = (j.choices || [])[0];
      if (!c || !(c.text || (c.logprobs && c.logprobs.tokens && c.logprobs.tokens.length))) continue;
      const now = performance.now();
      if (!chunks) ttft = now - t0;
      else gaps.push(now - last);
      last = now;
      ++chunks;
    }
  }
  return { ttft, gaps, tokens: usageTokens ?? chunks };
}

async function run(label, modelOf) {
  retries = 0;
  const ttfts = [], gaps = [];
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let k = 0; k < perClient; ++k) {
      const prompt = Array.from({ length: promptTokens }, () => Math.floor(rand() * (vocab - 8)));
      const r = await one(modelOf(c), prompt);
      ttfts.push(r.ttft);
      gaps.push(...r.gaps);
      tokens += r.tokens;
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  return {
    label, clients, requests: clients * perClient, prompt_tokens: promptTokens, max_tokens: maxTokens,
    ttft_p50_ms: percentile(ttfts, 0.5), ttft_p99_ms: percentile(ttfts, 0.99),
    itl_p50_ms: percentile(gaps, 0.5), itl_p99_ms: percentile(gaps, 0.99),
    tokens, seconds: secs, tokens_per_s: tokens / secs, retries,
  };
}

const results = [];
const list = models.length ? models : [null];
if (args["mix-only"] !== "true") for (const m of list) results.push(await run(m || "(default)", () => m));
if (list.length > 1) results.push(await run("mix", (c) => list[c % list.length]));
if (args.json === "true") {
  console.log(JSON.stringify(results, null, 2));
} else {
  const f = (x) => (Number.isFinite(x) ? x.toFixed(1) : "-");
  console.log(`${url}: ${clients} clients x ${perClient} requests, ${promptTokens}-token prompts, ${maxTokens} generated (ignore_eos)`);
  console.log("model            TTFT p50  TTFT p99   ITL p50   ITL p99   tokens/s");
  for (const r of results)
    console.log(`${r.label.padEnd(15)} ${f(r.ttft_p50_ms).padStart(8)}ms ${f(r.ttft_p99_ms).padStart(8)}ms ${f(r.itl_p50_ms).padStart(8)}ms ${f(r.itl_p99_ms).padStart(8)}ms ${f(r.tokens_per_s).padStart(10)}`);
}
