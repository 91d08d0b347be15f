// `parscale serve` on the demo model (P = 1, plus adapters P = 2 and 4) driven by the official
// `openai` npm client: completions, chat, streaming, n, stop strings, logprobs/echo, errors, API
// key; concurrency (16 mixed-P streams equal their solo greedy answers), cancels/disconnects,
// malformed requests, metrics, SIGTERM.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import net from "node:net";
import fs from "node:fs";
import { startServer, generateGreedy, rawRequest, post, parseMetrics, sum, eventually } from "./helpers.mjs";

const KEY = "test-key-123";
const MALFORMED = Number(process.env.PARSCALE_MALFORMED_REQUESTS || 2000);
let srv, client;

before(async () => {
  srv = await startServer(["--api-key", KEY, "--max-body-mib", "1"]);
  client = new OpenAI({ baseURL: srv.base + "/v1", apiKey: KEY, maxRetries: 0, timeout: 120000 });
});

after(async () => {
  if (!srv) return;
  const { code, signal } = await srv.stop();  // under ASan, a leak would make this non-zero
  assert.equal(code, 0, `server exit ${code} ${signal}\n${srv.stderr().slice(-4000)}`);
});

const PROMPTS = ["def fibonacci(n):", "import os\n\nclass ", "def parse_args(argv):\n    ", "for i in range("];
const MODELS = { 1: "demo", 2: "demo:p2", 4: "demo:p4" };

async function metrics() {
  const r = await fetch(srv.base + "/metrics", { headers: { Authorization: "Bearer " + KEY } });
  assert.equal(r.status, 200);
  return parseMetrics(await r.text());
}

test("health is open, models list the ids", async () => {
  const h = await fetch(srv.base + "/health");
  assert.equal(h.status, 200);
  assert.deepEqual(await h.json(), { status: "ok" });
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), ["demo", "demo:p2", "demo:p4"]);
  assert.deepEqual(list.data.map((m) => m.parscale.streams), [1, 2, 4]);
});

test("greedy completions equal `parscale generate --temperature 0` for P = 1, 2, 4", async () => {
  for (const p of [1, 2, 4]) {
    const want = generateGreedy(PROMPTS[0], 24, { streams: p });
    const r = await client.completions.create({ model: MODELS[p], prompt: PROMPTS[0], max_tokens: 24, temperature: 0 });
    assert.equal(r.object, "text_completion");
    assert.equal(r.model, MODELS[p]);
    assert.equal(r.choices[0].text, want.text, `P = ${p}`);
    assert.equal(r.usage.prompt_tokens, want.prompt_ids.length);
    assert.equal(r.usage.completion_tokens, want.ids.length);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
    // parscale_streams selects the same model.
    const r2 = await client.completions.create({ model: "demo", prompt: PROMPTS[0], max_tokens: 24, temperature: 0, parscale_streams: p });
    assert.equal(r2.choices[0].text, want.text);
    assert.equal(r2.model, MODELS[p]);
  }
});

test("token-id prompts and lists of prompts", async () => {
  const want = generateGreedy(PROMPTS[1], 12);
  const r = await client.completions.create({ model: "demo", prompt: [PROMPTS[0], want.prompt_ids], max_tokens: 12, temperature: 0 });
  assert.equal(r.choices.length, 2);
  assert.equal(r.choices[1].text, want.text);
  assert.equal(r.choices[1].index, 1);
});

test("greedy chat equals `parscale generate --chat`, streamed and whole", async () => {
  const want = generateGreedy("Write a function", 20, { chat: true, streams: 2 });
  const whole = await client.chat.completions.create({ model: "demo:p2", messages: [{ role: "user", content: "Write a function" }], max_tokens: 20, temperature: 0 });
  assert.equal(whole.object, "chat.completion");
  assert.equal(whole.choices[0].message.role, "assistant");
  assert.equal(whole.choices[0].message.content, want.text);
  assert.ok(["stop", "length"].includes(whole.choices[0].finish_reason));
  const stream = await client.chat.completions.create({
    model: "demo:p2", messages: [{ role: "user", content: "Write a function" }], max_completion_tokens: 20, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  let text = "", first = true, finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (first) {
        assert.equal(c.delta.role, "assistant");
        first = false;
      }
      text += c.delta.content || "";
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, want.text);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
});

test("streamed completions concatenate to the whole answer; stream weights for P > 1", async () => {
  const whole = await client.completions.create({ model: "demo:p4", prompt: PROMPTS[2], max_tokens: 16, temperature: 0 });
  const stream = await client.completions.create({ model: "demo:p4", prompt: PROMPTS[2], max_tokens: 16, temperature: 0, stream: true, parscale_stream_weights: true });
  let text = "", weights = 0;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.parscale) {
        for (const w of c.parscale.stream_weights) {
          assert.equal(w.length, 4);
          assert.ok(Math.abs(w.reduce((a, b) => a + b, 0) - 1) < 1e-3, `weights sum to 1: ${w}`);
          weights += 1;
        }
      }
    }
  }
  assert.equal(text, whole.choices[0].text);
  assert.equal(weights, whole.usage.completion_tokens);
});

test("n choices: seeded sampling is reproducible, choices differ, greedy choices agree", async () => {
  const req = { model: "demo", prompt: PROMPTS[0], max_tokens: 16, temperature: 1.0, seed: 1234, n: 3 };
  const a = await client.completions.create(req), b = await client.completions.create(req);
  assert.equal(a.choices.length, 3);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  assert.ok(new Set(a.choices.map((c) => c.text)).size > 1, "three samples of 16 tokens are not all equal");
  const one = await client.completions.create({ ...req, n: 1 });
  assert.equal(one.choices[0].text, a.choices[0].text);  // choice 0 uses the seed as given
  const g = await client.completions.create({ ...req, temperature: 0 });
  assert.equal(new Set(g.choices.map((c) => c.text)).size, 1);
});

test("presence and frequency penalties change a repetitive greedy answer", async () => {
  const base = { model: "demo:p4", prompt: PROMPTS[0], max_tokens: 24, temperature: 0, ignore_eos: true };
  const plain = (await client.completions.create(base)).choices[0].text;
  const pen = (await client.completions.create({ ...base, frequency_penalty: 2, presence_penalty: 1 })).choices[0].text;
  assert.notEqual(pen, plain);
  const again = (await client.completions.create({ ...base, frequency_penalty: 2, presence_penalty: 1 })).choices[0].text;
  assert.equal(again, pen);
});

test("stop strings cut the text before the stop, streamed or not", async () => {
  const full = (await client.completions.create({ model: "demo", prompt: PROMPTS[0], max_tokens: 40, temperature: 0, ignore_eos: true })).choices[0].text;
  const at = Math.floor(full.length / 2);
  const stop = full.slice(at, at + 3);
  const cut = full.slice(0, full.indexOf(stop));
  const r = await client.completions.create({ model: "demo", prompt: PROMPTS[0], max_tokens: 40, temperature: 0, ignore_eos: true, stop: [stop, "@@never@@"] });
  assert.equal(r.choices[0].text, cut);
  assert.equal(r.choices[0].finish_reason, "stop");
  const s = await client.completions.create({ model: "demo", prompt: PROMPTS[0], max_tokens: 40, temperature: 0, ignore_eos: true, stop, stream: true });
  let text = "", finish = null;
  for await (const chunk of s) for (const c of chunk.choices) {
    text += c.text;
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(text, cut);
  assert.equal(finish, "stop");

  // logprobs describe the returned text: the tokens starting at or after the stop string are not
  // reported (a token straddling its start is), streamed or not; usage counts them all.
  const ask = { model: "demo", prompt: PROMPTS[0], max_tokens: 40, temperature: 0, ignore_eos: true, logprobs: 0 };
  const all = (await client.completions.create(ask)).choices[0].logprobs;
  const base = Buffer.byteLength(PROMPTS[0]), end = base + Buffer.byteLength(cut);
  const kept = all.text_offset.filter((o) => o < end).length;
  assert.ok(kept > 0 && kept < all.tokens.length);
  const lr = await client.completions.create({ ...ask, stop });
  assert.equal(lr.choices[0].text, cut);
  assert.deepEqual(lr.choices[0].logprobs.tokens, all.tokens.slice(0, kept));
  assert.deepEqual(lr.choices[0].logprobs.token_logprobs, all.token_logprobs.slice(0, kept));
  assert.ok(lr.usage.completion_tokens >= kept);
  const ls = await client.completions.create({ ...ask, stop, stream: true });
  let sent = 0;
  const streamed = [];
  for await (const chunk of ls) for (const c of chunk.choices) {
    sent += Buffer.byteLength(c.text);
    for (const o of c.logprobs?.text_offset ?? []) assert.ok(o < base + sent, "a token's logprob came before its text");
    streamed.push(...(c.logprobs?.tokens ?? []));
  }
  assert.deepEqual(streamed, all.tokens.slice(0, kept));
});

test("logprobs, echo and max_tokens 0 (prompt logprobs, as lm-evaluation-harness asks)", async () => {
  const ids = generateGreedy(PROMPTS[0], 1).prompt_ids;
  const r = await client.completions.create({ model: "demo", prompt: ids, max_tokens: 0, echo: true, logprobs: 1, temperature: 0 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, ids.length);
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  for (let i = 1; i < ids.length; ++i) {
    assert.ok(lp.token_logprobs[i] <= 0 && Number.isFinite(lp.token_logprobs[i]));
    const best = Math.max(...Object.values(lp.top_logprobs[i]));
    assert.ok(best >= lp.token_logprobs[i] - 1e-6, "the top alternative is at least as likely as the prompt token");
  }
  assert.equal(r.choices[0].text, PROMPTS[0]);
  assert.equal(r.usage.completion_tokens, 0);
  // lm-eval's local-completions form: echo + 1 token; the prompt part is the same.
  const r1 = await client.completions.create({ model: "demo:p2", prompt: ids, max_tokens: 1, echo: true, logprobs: 1, temperature: 0 });
  assert.equal(r1.choices[0].logprobs.token_logprobs.length, ids.length + 1);
  // Generated logprobs: greedy picks the top alternative.
  const g = await client.completions.create({ model: "demo", prompt: PROMPTS[0], max_tokens: 8, logprobs: 3, temperature: 0, ignore_eos: true });
  const glp = g.choices[0].logprobs;
  assert.equal(glp.tokens.length, 8);
  assert.equal(glp.tokens.join(""), g.choices[0].text);
  for (let i = 0; i < 8; ++i) {
    assert.ok(Object.keys(glp.top_logprobs[i]).length <= 3);
    assert.ok(Math.abs(Math.max(...Object.values(glp.top_logprobs[i])) - glp.token_logprobs[i]) < 1e-5);
  }
  assert.ok(glp.text_offset[0] === PROMPTS[0].length);
  // Chat logprobs.
  const c = await client.chat.completions.create({ model: "demo", messages: [{ role: "user", content: "hi" }], max_tokens: 4, logprobs: true, top_logprobs: 2, temperature: 0 });
  const content = c.choices[0].logprobs.content;
  assert.ok(content.length >= 1);
  assert.ok(Array.isArray(content[0].bytes) && content[0].top_logprobs.length === 2);
});

test("errors are OpenAI-shaped with the right status", async () => {
  const cases = [
    [{ model: "demo", prompt: "x", temperature: -1 }, 400, "temperature"],
    [{ model: "demo", prompt: "x", max_tokens: -5 }, 400, "max_tokens"],
    [{ model: "demo", prompt: "x", top_p: 0 }, 400, "top_p"],
    [{ model: "demo", prompt: "x", n: 0 }, 400, "n"],
    [{ model: "demo", prompt: [1, 999999] }, 400, "prompt[1]"],
    [{ model: "demo", prompt: "x", max_tokens: 5000 }, 400, "max_tokens"],
    [{ model: "demo", prompt: "x", logprobs: 50 }, 400, "logprobs"],
    [{ model: "gpt-4", prompt: "x" }, 404, "model"],
    [{ model: "demo", prompt: "x", parscale_streams: 8 }, 400, "parscale_streams"],
  ];
  for (const [body, status, param] of cases) {
    await assert.rejects(client.completions.create(body), (e) => {
      assert.equal(e.status, status, JSON.stringify(body));
      assert.equal(e.param, param);
      assert.equal(typeof e.message, "string");
      return true;
    });
  }
  await assert.rejects(client.chat.completions.create({ model: "demo", messages: [] }), (e) => e.status === 400 && e.param === "messages");
  const anon = new OpenAI({ baseURL: srv.base + "/v1", apiKey: "wrong", maxRetries: 0 });
  await assert.rejects(anon.models.list(), (e) => e.status === 401 && e.code === "invalid_api_key");
  const none = await fetch(srv.base + "/v1/models");
  assert.equal(none.status, 401);
  const unknown = await fetch(srv.base + "/v2/nothing", { headers: { Authorization: "Bearer " + KEY } });
  assert.equal(unknown.status, 404);
  assert.equal((await unknown.json()).error.code, "not_found");
  const big = await fetch(srv.base + "/v1/completions", {
    method: "POST", headers: { Authorization: "Bearer " + KEY, "Content-Type": "application/json" },
    body: JSON.stringify({ model: "demo", prompt: "x".repeat(2 << 20) }),
  });
  assert.equal(big.status, 413);
});

test("16 concurrent streams of mixed P each equal their solo greedy answer", async () => {
  const jobs = [];
  for (let i = 0; i < 16; ++i) jobs.push({ p: [1, 2, 4][i % 3], prompt: PROMPTS[i % PROMPTS.length], max: 12 + (i % 5) * 4 });
  const solo = [];
  for (const j of jobs) {
    const r = await client.completions.create({ model: MODELS[j.p], prompt: j.prompt, max_tokens: j.max, temperature: 0, ignore_eos: true });
    solo.push(r.choices[0].text);
  }
  const together = await Promise.all(jobs.map(async (j) => {
    const s = await client.completions.create({ model: MODELS[j.p], prompt: j.prompt, max_tokens: j.max, temperature: 0, ignore_eos: true, stream: true });
    let text = "";
    for await (const chunk of s) for (const c of chunk.choices) text += c.text;
    return text;
  }));
  for (let i = 0; i < jobs.length; ++i) assert.equal(together[i], solo[i], `request ${i} (P = ${jobs[i].p})`);
});

test("cancels and disconnects free the requests; the server stays healthy", async () => {
  const runs = [];
  for (let i = 0; i < 12; ++i) {
    const ac = new AbortController();
    runs.push((async () => {
      try {
        const s = await client.completions.create({ model: MODELS[[1, 2, 4][i % 3]], prompt: PROMPTS[i % 4], max_tokens: 600, temperature: 0.8, ignore_eos: true, stream: true }, { signal: ac.signal });
        let n = 0;
        for await (const chunk of s) {
          n += chunk.choices.length;
          if (n >= 1 + (i % 4)) ac.abort();
        }
      } catch (e) {
        if (!(e instanceof OpenAI.APIUserAbortError) && e.name !== "AbortError") throw e;
      }
    })());
  }
  // Non-streaming requests whose client goes away.
  for (let i = 0; i < 4; ++i) {
    const sock = net.connect(srv.port, "127.0.0.1");
    sock.on("error", () => {});
    sock.write(post("/v1/completions", { model: MODELS[[1, 2, 4][i % 3]], prompt: "x", max_tokens: 600, ignore_eos: true }, { Authorization: "Bearer " + KEY }));
    setTimeout(() => sock.destroy(), 200 + 100 * i);
  }
  await Promise.all(runs);
  assert.ok(await eventually(async () => {
    const m = await metrics();
    // Pages still in use are only those the prefix cache keeps (a request that reached max_tokens
    // before its client left leaves its prompt + answer pages there); no request holds any.
    return sum(m, "parscale_requests_running") === 0 && sum(m, "parscale_requests_waiting") === 0 &&
           m["parscale_kv_pages_used"] === m["parscale_kv_pages_cached"];
  }), "running and waiting return to 0 and no request holds KV pages: " + JSON.stringify(await metrics()));
  const m = await metrics();
  assert.ok(m["parscale_http_disconnects_total"] >= 1);
  const h = await fetch(srv.base + "/health");
  assert.equal(h.status, 200);
});

test(`2 x ${MALFORMED} malformed requests get only 4xx; RSS stays flat; the server stays alive`, async () => {
  const auth = { Authorization: "Bearer " + KEY };
  const bodies = [
    "{", "", "null", "[]", "\"x\"", "{\"prompt\":}", "{\"prompt\": \"\xff\xfe\"}", Buffer.from([0x7b, 0x22, 0x70, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0x22, 0x7d]),
    { prompt: 5 }, { prompt: [] }, { prompt: [[]] }, { prompt: [1e30] }, { prompt: "x", max_tokens: 1e300 },
    { prompt: "x", max_tokens: "9" }, "{\"prompt\":\"x\",\"temperature\":1e999}", "{\"prompt\":\"x\",\"max_tokens\":123456789012345678901234567890}", { prompt: "x", n: 1e9 }, { prompt: "x", n: -1 },
    { prompt: "x", logprobs: true }, { prompt: "x", stop: [1, 2] }, { prompt: "x", stop: ["a", "b", "c", "d", "e"] },
    { prompt: "x", seed: "s" }, { prompt: "x", model: null, parscale_streams: 3 }, { prompt: [-1] }, { prompt: [2 ** 31] },
    { prompt: "x", top_k: -7 }, { prompt: "x", stream: "yes" }, { prompt: "x", max_tokens: -1 }, { messages: "hi" },
  ];
  const chatBodies = [{ messages: [] }, { messages: [{ role: 1, content: "x" }] }, { messages: [{ role: "user", content: { a: 1 } }] },
    { messages: [{ role: "user", content: "x" }], max_completion_tokens: -3 }, { messages: [{}] }, "{\"messages\":[", { messages: [{ role: "user", content: [{ type: "image" }] }] }];
  const deep = "[".repeat(100000);
  const rss = () => Number(fs.readFileSync(`/proc/${srv.proc.pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]) / 1024;  // MiB
  const rssBefore = rss();
  const statuses = new Map();
  const bad = [];
  let i = 0;
  const one = async () => {
    const k = i++;
    let req;
    const r = k % 10;
    if (r < 6) {
      req = post("/v1/completions", bodies[k % bodies.length], auth);
    } else if (r < 8) {
      req = post("/v1/chat/completions", chatBodies[k % chatBodies.length], auth);
    } else if (r === 8) {
      req = post("/v1/completions", deep, auth);
    } else {
      const junk = ["GET /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "BREW /coffee HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        "GET /" + "a".repeat(20000) + " HTTP/1.1\r\nHost: x\r\n\r\n", "POST /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer " + KEY + "\r\nContent-Length: 0\r\n\r\n"];
      req = junk[Math.floor(k / 10) % junk.length];
    }
    const status = await rawRequest(srv.port, req);
    statuses.set(status, (statuses.get(status) || 0) + 1);
    if (status < 400 || status >= 500) bad.push(`${status} for ${Buffer.from(req).toString("latin1").slice(0, 200)}`);
  };
  const workers = [];
  for (let w = 0; w < 16; ++w) workers.push((async () => { while (i < MALFORMED) await one(); })());
  // Slow clients: send a request a few bytes at a time.
  const slow = [];
  for (let s = 0; s < 4; ++s) {
    slow.push(new Promise((resolve) => {
      const sock = net.connect(srv.port, "127.0.0.1");
      const text = post("/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":1}", { Authorization: "Bearer " + KEY }).toString("latin1");
      let pos = 0;
      sock.on("error", () => resolve(0));
      sock.on("data", (d) => { resolve(Number(d.toString().slice(9, 12))); sock.destroy(); });
      const tick = setInterval(() => {
        if (pos >= text.length) return clearInterval(tick);
        sock.write(text.slice(pos, pos + 7));
        pos += 7;
      }, 20);
    }));
  }
  await Promise.all(workers);
  const slowStatus = await Promise.all(slow);
  // RSS stable: a second identical batch must not grow it (the first one warms the allocator's
  // per-thread arenas and the HTTP pool).
  const rssAfter = rss();
  i = 0;
  const again = [];
  for (let w = 0; w < 16; ++w) again.push((async () => { while (i < MALFORMED) await one(); })());
  await Promise.all(again);
  const rssAgain = rss();
  console.log(`# RSS ${rssBefore.toFixed(1)} MiB at start, ${rssAfter.toFixed(1)} after ${MALFORMED} malformed requests, ${rssAgain.toFixed(1)} after ${MALFORMED} more`);
  assert.deepEqual(bad, [], `statuses ${JSON.stringify([...statuses])}`);
  // (Sanitized builds hold freed memory in a quarantine: RSS grows there by design.)
  if (!process.env.PARSCALE_SANITIZED) assert.ok(rssAgain < rssAfter + 32, `RSS grew from ${rssAfter.toFixed(1)} to ${rssAgain.toFixed(1)} MiB`);
  for (const s of slowStatus) assert.equal(s, 200);
  const h = await fetch(srv.base + "/health");
  assert.equal(h.status, 200);
  const ok = await client.completions.create({ model: "demo", prompt: "x", max_tokens: 2 });
  assert.equal(ok.choices.length, 1);
});

test("metrics carry the promised families", async () => {
  const r = await fetch(srv.base + "/metrics", { headers: { Authorization: "Bearer " + KEY } });
  const text = await r.text();
  for (const name of ["parscale_requests_running", "parscale_requests_waiting", "parscale_prompt_tokens_total", "parscale_generation_tokens_total",
    "parscale_kv_pages_used", "parscale_kv_pages_total", "parscale_step_seconds_bucket", "parscale_time_to_first_token_seconds_bucket"]) {
    assert.ok(text.includes("\n" + name) || text.startsWith(name), name);
  }
  const m = parseMetrics(text);
  assert.ok(m['parscale_generation_tokens_total{streams="4"}'] > 0);
  assert.ok(m["parscale_kv_pages_total"] > 0);
});

test("SIGTERM lets a running request finish, then the server exits 0", async () => {
  const other = await startServer([]);
  const c = new OpenAI({ baseURL: other.base + "/v1", apiKey: "none", maxRetries: 0 });
  const s = await c.completions.create({ model: "demo:p2", prompt: "x", max_tokens: 200, ignore_eos: true, temperature: 0, stream: true });
  const it = s[Symbol.asyncIterator]();
  await it.next();  // the request is running
  other.proc.kill("SIGTERM");
  let n = 1, finish = null;
  for (;;) {
    const { value, done } = await it.next();
    if (done) break;
    for (const ch of value.choices) {
      n += 1;
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  assert.equal(finish, "length");
  const { code } = await other.exited;
  assert.equal(code, 0, other.stderr());
  await assert.rejects(fetch(other.base + "/health"));
});
