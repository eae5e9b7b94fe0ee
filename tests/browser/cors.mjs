// CORS in a real browser: serves a small page from two loopback origins (Node's http module, one
// server per port), opens each in headless Chromium and calls the gateway's execute endpoint
// from the page with fetch(): a sign-up (JSON body: the browser sends a preflight first) and
// USER.ME with `Authorization: Bearer` (the header must be allowed by the preflight).
//
// Usage: node cors.mjs <gateway-url> <listed-port> <unlisted-port>
// Prints one JSON line: {"listed": {...}, "unlisted": {...}}, each with the origin, the email
// used, and per call either the envelope or {"error": <name of the exception>}.
import { chromium } from "playwright-core";
import { createServer } from "node:http";

const [gateway, listedPort, unlistedPort] = process.argv.slice(2);
if (!gateway || !listedPort || !unlistedPort) {
  console.error("usage: node cors.mjs <gateway-url> <listed-port> <unlisted-port>");
  process.exit(2);
}

const PAGE = "<!doctype html><meta charset=utf-8><title>app on another origin</title><p>app</p>";

function serve(port) {
  return new Promise((resolve, reject) => {
    const s = createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
    });
    s.on("error", reject);
    s.listen(Number(port), "127.0.0.1", () => resolve(s));
  });
}

// Runs in the page: the two calls, each reported as its envelope or the exception's name.
async function calls({ gateway, email }) {
  const call = async (body, token) => {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    try {
      const r = await fetch(`${gateway}/api/v1/execute`, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
      });
      return await r.json();
    } catch (e) {
      return { error: e.name, message: String(e.message) };
    }
  };
  const signup = await call({
    command: "AUTH.SIGNUP",
    params: { email, password: "correct horse battery staple 42" },
  });
  const token = signup?.data?.access_token || "not-a-token";
  const me = await call({ command: "USER.ME", params: {} }, token);
  return { signup, me };
}

const servers = [await serve(listedPort), await serve(unlistedPort)];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let code = 0;
try {
  const report = {};
  for (const [name, port] of [["listed", listedPort], ["unlisted", unlistedPort]]) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(20000);
    const origin = `http://localhost:${port}`;
    await page.goto(`${origin}/`);
    const email = `cors-${name}-${Date.now()}@example.org`;
    const result = await page.evaluate(calls, { gateway, email });
    report[name] = { origin: await page.evaluate(() => location.origin), email, ...result };
    await context.close();
  }
  console.log(JSON.stringify(report));
} catch (e) {
  console.error(e);
  code = 1;
} finally {
  await browser.close();
  for (const s of servers) s.close();
}
process.exit(code);
