// Shared by the Node tests and scripts: start `parscale serve` on the demo model, run
// `parscale generate` for reference answers, raw HTTP helpers.
import { spawn, execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";
import fs from "node:fs";
import net from "node:net";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BINARY = process.env.PARSCALE_BINARY || path.join(ROOT, "build", "parscale");
export const DEMO = path.join(ROOT, "models", "demo");
export const ADAPTERS = { 2: path.join(DEMO, "adapter-p2.safetensors"), 4: path.join(DEMO, "adapter-p4.safetensors") };

// Starts the server on a free port; resolves to {port, base, proc, stderr(), stop()}.
export async function startServer(extraArgs = [], { model = DEMO, adapters = [ADAPTERS[2], ADAPTERS[4]] } = {}) {
  if (!fs.existsSync(BINARY)) throw new Error(`no parscale binary at ${BINARY} (build first, or set PARSCALE_BINARY)`);
  const args = ["serve", "--model", model, "--port", "0", "--threads", "2"];
  for (const a of adapters) args.push("--adapter", a);
  args.push(...extraArgs);
  const proc = spawn(BINARY, args, { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, OMP_WAIT_POLICY: "passive" } });
  let err = "";
  const port = await new Promise((resolve, reject) => {
    proc.stderr.on("data", (d) => {
      err += d.toString();
      const m = err.match(/on http:\/\/[^:]+:(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    proc.on("exit", (code) => reject(new Error(`parscale serve exited with ${code} before listening:\n${err}`)));
  });
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    proc,
    exited,
    stderr: () => err,
    // SIGTERM, then resolves to the exit {code, signal}.
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
      return exited;
    },
  };
}

// `parscale generate --prompt TEXT --temperature 0 --json` (optionally --chat / --adapter).
export function generateGreedy(prompt, maxTokens, { streams = 1, chat = false } = {}) {
  const args = ["generate", "--model", DEMO, "--prompt", prompt, "--temperature", "0", "--max-tokens", String(maxTokens), "--json", "--threads", "1"];
  if (streams > 1) args.push("--adapter", ADAPTERS[streams]);
  if (chat) args.push("--chat");
  const out = execFileSync(BINARY, args, { cwd: ROOT, env: { ...process.env, OMP_WAIT_POLICY: "passive" } }).toString();
  return JSON.parse(out.trim().split("\n").pop());
}

// One raw HTTP/1.1 exchange over a fresh socket; resolves to the status code (0 when the
// connection closed without a status line).
export function rawRequest(port, bytes, { timeoutMs = 30000 } = {}) {
  return new Promise((resolve) => {
    const sock = net.connect(port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      sock.destroy();
      const m = buf.toString("latin1").match(/^HTTP\/1\.[01] (\d{3})/);
      resolve(m ? Number(m[1]) : 0);
    };
    sock.setTimeout(timeoutMs, finish);
    sock.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      if (/^HTTP\/1\.[01] \d{3}/.test(buf.toString("latin1"))) finish();
    });
    sock.on("error", (e) => {
      if (!buf.length) buf = Buffer.from("socket error " + e.code);
      finish();
    });
    sock.on("close", finish);
    sock.on("connect", () => sock.write(bytes));
  });
}

// A whole HTTP/1.1 POST (headers + body) as bytes. A string body is sent as latin1 when it holds
// no character above U+00FF (so "\xff" is the byte 0xff: invalid UTF-8 on purpose), else UTF-8.
export function post(path, body, headers = {}) {
  let raw = typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  if (!Buffer.isBuffer(raw)) raw = Buffer.from(raw, /^[\x00-\xff]*$/.test(raw) ? "latin1" : "utf8");
  const head = `POST ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n` +
    Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("") + `Content-Length: ${raw.length}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, "latin1"), raw]);
}

// Parses the Prometheus text of /metrics into {"name{labels}": value}.
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

export function sum(metrics, name) {
  let s = 0;
  for (const [k, v] of Object.entries(metrics)) if (k === name || k.startsWith(name + "{")) s += v;
  return s;
}

// Polls `f` (async, truthy when done) up to 60 s.
export async function eventually(f) {
  for (let i = 0; i < 600; ++i) {
    if (await f()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}
