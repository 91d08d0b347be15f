// The chat page in headless Chromium (Debian's /usr/bin/chromium through puppeteer-core):
// loads GET /, picks demo:p4, sends a message, waits for streamed text and the per-token stream
// weight bars, checks the stats line. Exit code 0 on success.
//   node tests/node/chat_page.mjs [--screenshot docs/figures/chat_page.png]
import puppeteer from "puppeteer-core";
import fs from "node:fs";
import path from "node:path";
import { startServer, ROOT } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const shot = process.argv.indexOf("--screenshot") > 0 ? process.argv[process.argv.indexOf("--screenshot") + 1] : null;

function fail(msg) {
  console.error("chat_page: FAIL: " + msg);
  process.exitCode = 1;
}

const srv = await startServer([]);
let browser;
try {
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--no-first-run", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800, deviceScaleFactor: 1 });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(srv.base)) external.push(r.url()); });
  await page.goto(srv.base + "/", { waitUntil: "networkidle0" });
  await page.waitForFunction(() => document.querySelectorAll("#model option").length === 3, { timeout: 30000 });
  const ids = await page.$$eval("#model option", (os) => os.map((o) => o.value));
  if (JSON.stringify(ids) !== JSON.stringify(["demo", "demo:p2", "demo:p4"])) fail("model list " + JSON.stringify(ids));
  await page.select("#model", "demo:p4");
  await page.$eval("#temperature", (e) => { e.value = "0"; e.dispatchEvent(new Event("input")); });
  await page.$eval("#max_tokens", (e) => { e.value = "48"; });
  await page.type("#input", "Write a Python function that reverses a list.");
  await page.keyboard.press("Enter");
  // Streamed text arrives: the assistant bubble grows, then gets its stats line.
  await page.waitForFunction(() => { const m = document.querySelector(".msg.assistant"); return m && m.textContent.length > 0; }, { timeout: 60000 });
  await page.waitForSelector(".msg.assistant .meta", { timeout: 120000 });
  const reply = await page.$eval(".msg.assistant", (m) => m.textContent);
  const bars = await page.$$eval(".msg.assistant .tok", (t) => t.length);
  const stats = await page.$eval("#stats", (e) => e.textContent);
  console.log(`chat_page: reply ${JSON.stringify(reply.slice(0, 120))}...`);
  console.log(`chat_page: ${bars} token spans with stream weights; stats: ${stats}`);
  if (bars < 1) fail("no per-token stream weight spans for P = 4");
  if (!/tokens\/s/.test(stats)) fail("no tokens/s in the stats line");
  if (errors.length) fail("page errors: " + errors.join("; "));
  if (external.length) fail("requests outside the server: " + external.join(", "));
  if (shot) {
    // A second turn, so the screenshot shows a conversation.
    await page.type("#input", "Now add a docstring.");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.querySelectorAll(".msg.assistant .meta").length === 2, { timeout: 120000 });
    const out = path.resolve(ROOT, shot);
    fs.mkdirSync(path.dirname(out), { recursive: true });
    await page.screenshot({ path: out });
    console.log("chat_page: screenshot " + out);
  }
} catch (e) {
  fail(e.stack || String(e));
} finally {
  if (browser) await browser.close();
  const { code } = await srv.stop();
  if (code !== 0) fail("server exit code " + code);
}
if (!process.exitCode) console.log("chat_page: OK");
