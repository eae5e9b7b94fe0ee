// The demo account console, every flow, in real headless Chromium with a virtual WebAuthn
// authenticator, against a real `portcullis serve` started by tests/blackbox/browser.rs.
//   node console.mjs BASE_URL DATA_DIR ARTIFACT_DIR
// Mail is read from DATA_DIR/outbox (protocol/outbox.md). A screenshot per step goes to
// ARTIFACT_DIR/NN-step.png. The last line of stdout is a JSON report; exits non-zero with a
// message (and ARTIFACT_DIR/failure.png) on the first failed expectation.
import { chromium } from "playwright-core";
import { createHmac } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const [base, dataDir, artifacts] = process.argv.slice(2);
if (!base || !dataDir || !artifacts) {
  console.error("usage: node console.mjs BASE_URL DATA_DIR ARTIFACT_DIR");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const outbox = join(dataDir, "outbox");

// ---- mail ------------------------------------------------------------------------------------

function mails() {
  try {
    return readdirSync(outbox).filter((n) => n.endsWith(".eml") && !n.startsWith("."));
  } catch {
    return [];
  }
}

function header(text, name) {
  const head = text.split(/\r?\n\r?\n/, 1)[0].replace(/\r?\n[ \t]+/g, " ");
  const m = head.match(new RegExp(`^${name}:[ \\t]*(.*)$`, "im"));
  return m ? m[1].trim() : null;
}

function decodeQp(body) {
  const bytes = [];
  const soft = body.replace(/=\r?\n/g, "");
  for (let i = 0; i < soft.length; i++) {
    const c = soft[i];
    if (c === "=" && /^[0-9A-Fa-f]{2}$/.test(soft.slice(i + 1, i + 3))) {
      bytes.push(parseInt(soft.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(c, "utf8"));
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

// The text/plain part of a message, decoded.
function plainText(text) {
  const parts = text.split(/\r?\n--[^\r\n]+\r?\n/);
  for (const part of parts) {
    const [head, ...rest] = part.split(/\r?\n\r?\n/);
    if (!/content-type:\s*text\/plain/i.test(head)) continue;
    let body = rest.join("\n\n").split(/\r?\n--[^\r\n]+--/)[0];
    const cte = (head.match(/content-transfer-encoding:\s*(\S+)/i) || [])[1] || "7bit";
    if (/quoted-printable/i.test(cte)) body = decodeQp(body);
    if (/base64/i.test(cte)) body = Buffer.from(body.replace(/\s+/g, ""), "base64").toString("utf8");
    return body;
  }
  return text;
}

// Waits for a mail to `to` that was not among `seen` (up to 10 s), and returns its secret.
async function mailSecret(seen, to, kind) {
  const deadline = Date.now() + 10000;
  for (;;) {
    const fresh = mails().filter((n) => !seen.has(n)).sort();
    for (const name of fresh.reverse()) {
      const text = readFileSync(join(outbox, name), "utf8");
      const toHeader = header(text, "To") || "";
      if (!toHeader.toLowerCase().includes(to.toLowerCase())) continue;
      const k = header(text, "X-Portcullis-Kind");
      if (k !== null && k !== kind) continue;
      const plain = plainText(text);
      if (kind === "magic_link") {
        for (const m of plain.matchAll(/https?:\/\/[^\s<>"]+/g)) {
          const token = new URL(m[0]).searchParams.get("token");
          if (token) return { link: m[0], secret: token, file: name };
        }
      } else {
        const line = plain.split(/\r?\n/).find((l) => /^[0-9]{6}$/.test(l.trim()));
        if (line) return { secret: line.trim(), file: name };
      }
    }
    if (Date.now() > deadline) throw new Error(`no ${kind} mail to ${to} in the outbox`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---- TOTP (RFC 6238: SHA-1, 6 digits, 30 s), independent of the server's ----------------------

function base32(s) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of s.replace(/[\s=]/g, "").toUpperCase()) {
    const v = alphabet.indexOf(c);
    if (v < 0) throw new Error(`not base32: ${c}`);
    bits += v.toString(2).padStart(5, "0");
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}
function totp(secret, stepOffset = 0) {
  const counter = Math.floor(Date.now() / 1000 / 30) + stepOffset;
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = createHmac("sha1", base32(secret)).update(msg).digest();
  const off = mac[mac.length - 1] & 15;
  const n = (mac.readUInt32BE(off) & 0x7fffffff) % 1000000;
  return String(n).padStart(6, "0");
}

// ---- the browser -------------------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const steps = [];
const report = { ok: false, steps };
let page;
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(20000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2", transport: "internal", hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });

  const shot = async (name, p = page) => {
    const file = join(artifacts, `${String(steps.length + 1).padStart(2, "0")}-${name}.png`);
    await p.screenshot({ path: file, fullPage: true });
    steps.push(name);
  };
  const text = (sel, p = page) => p.textContent(sel);
  const waitText = (sel, part, p = page) =>
    p.waitForFunction(([s, t]) => (document.querySelector(s)?.textContent || "").includes(t), [sel, part]);
  const waitWho = (part) => waitText("#who", part);
  const signedInHow = async () => ({ who: await text("#who"), aal: await text("#aal"), amr: (await text("#amr")).replace(/^amr: /, "").split(" ") });
  const expectAmr = async (aal, ...amr) => {
    await waitText("#aal", `AAL${aal}`);
    const h = await signedInHow();
    for (const m of amr) if (!h.amr.includes(m)) throw new Error(`amr ${JSON.stringify(h.amr)} lacks ${m}`);
    return h;
  };
  // The console asks for passkeys in the autofill whenever it shows the sign-in form, and the
  // virtual authenticator answers such a request at once: with its passkey when it holds one
  // for the site (as a user picking the suggestion would), else with NotAllowedError. So the
  // passkey is kept off the authenticator except in the steps that use it: `hide` takes it off
  // (with its current signature counter), `show` puts it back.
  let kept = [];
  const hide = async () => {
    kept = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials;
    await cdp.send("WebAuthn.clearCredentials", { authenticatorId });
  };
  const show = async (session = cdp, id = authenticatorId) => {
    for (const credential of kept) await session.send("WebAuthn.addCredential", { authenticatorId: id, credential });
  };
  // The autofill request of the sign-in form has ended (with no passkey on the authenticator,
  // at once), so that only a request started from now on can find the passkey.
  const autofillEnded = (p = page) =>
    p.waitForSelector("#email:not([data-passkey-autofill])", { state: "attached" });
  // A modal passkey ceremony from a button: the passkey goes back on the authenticator only once
  // the button's click has cancelled the pending autofill request (when its PASSKEY.LOGIN.BEGIN
  // goes out), so the button, not the autofill, signs in.
  const passkeyButton = async (sel, p = page, session = cdp, id = authenticatorId) => {
    await autofillEnded(p);
    let shown = false;
    const pattern = "**/api/v1/execute";
    await p.route(pattern, async (route) => {
      if (!shown && (route.request().postData() || "").includes("PASSKEY.LOGIN.BEGIN")) {
        shown = true;
        await show(session, id);
      }
      await route.continue();
    });
    await p.click(sel);
    await waitText("#who", `Signed in as ${email}`, p);
    await p.unroute(pattern);
    const said = await text("#message", p);
    if (said !== "Signed in with a passkey.") throw new Error(`${sel} did not sign in by itself: ${said}`);
  };
  const signOut = async () => {
    await page.click("#signout");
    await waitWho("Signed out");
  };

  const email = `console-${Date.now()}@example.org`;
  report.email = email;

  // The signed-out console.
  await page.goto(`${base}/demo`);
  await page.waitForSelector("#signin-card:not([hidden])");
  await shot("signed-out");

  // Sign-up with a password: AAL1, pwd.
  await page.fill("#signup-email", email);
  await page.fill("#signup-name", "Ada Console");
  await page.fill("#signup-password", "correct horse battery staple");
  await page.click("#signup");
  await waitWho(`Signed in as ${email}`);
  await expectAmr(1, "pwd");
  await shot("signed-up");

  // Sign-in by password.
  await signOut();
  await page.fill("#email", email);
  await page.fill("#password", "correct horse battery staple");
  await page.click("#signin-password");
  await waitWho(`Signed in as ${email}`);
  await expectAmr(1, "pwd");
  await shot("password-sign-in");

  // Magic link: this tab waits; the link opens in a second tab and is approved there; this
  // tab completes by MAGIC.POLL.
  await signOut();
  await page.fill("#email", email);
  let seen = new Set(mails());
  await page.click("#signin-magic");
  await page.waitForSelector("#magic-wait:not([hidden])");
  await shot("magic-link-waiting");
  const link = await mailSecret(seen, email, "magic_link");
  const landing = await context.newPage();
  await landing.goto(link.link.replace(/^https?:\/\/[^/]+/, base));
  await landing.waitForSelector("#approve:not([hidden])");
  if (!(await landing.isVisible("#signin-here"))) throw new Error("the landing page did not find this browser's verifier");
  if ((await landing.url()).includes("token=")) throw new Error("the token stayed in the address bar");
  await shot("magic-link-landing", landing);
  await landing.click("#approve");
  await waitText("#status", "Approved", landing);
  await shot("magic-link-approved", landing);
  await landing.close();
  await waitWho(`Signed in as ${email}`);
  await expectAmr(1, "email");
  await waitText("#badges", "email verified");
  await shot("magic-link-signed-in-by-poll");

  // Same device: the landing page finds this browser's verifier and signs in there
  // (MAGIC.VERIFY with it); the waiting tab learns that the link was used and stops.
  await signOut();
  await page.fill("#email", email);
  seen = new Set(mails());
  await page.click("#signin-magic");
  await page.waitForSelector("#magic-wait:not([hidden])");
  const here = await mailSecret(seen, email, "magic_link");
  const landingHere = await context.newPage();
  await landingHere.goto(here.link.replace(/^https?:\/\/[^/]+/, base));
  await landingHere.click("#signin-here");
  await waitText("#status", "You are signed in here", landingHere);
  await shot("magic-link-same-device", landingHere);
  await waitText("#message", "used in another tab");
  await landingHere.goto(`${base}/demo`);
  await waitText("#who", `Signed in as ${email}`, landingHere);
  await waitText("#amr", "email", landingHere);
  await shot("magic-link-same-device-console", landingHere);
  await landingHere.click("#signout");
  await waitText("#who", "Signed out", landingHere);
  await landingHere.close();

  // Sign-in by email code (this tab stayed signed out).
  await page.fill("#email", email);
  seen = new Set(mails());
  await page.click("#signin-otp");
  await page.waitForSelector("#otp-panel:not([hidden])");
  const code = await mailSecret(seen, email, "otp");
  await page.fill("#otp-code", code.secret);
  await shot("email-code-entered");
  await page.click("#otp-verify");
  await waitWho(`Signed in as ${email}`);
  await expectAmr(1, "email");
  await shot("email-code-signed-in");

  // Register a passkey.
  await page.click("#passkey-add");
  await page.waitForFunction(() => document.getElementById("passkey-list").dataset.count === "1");
  await waitText("#message", "added");
  await shot("passkey-registered");
  await hide();

  // Usernameless passkey sign-in.
  await signOut();
  await page.fill("#email", "");
  await passkeyButton("#signin-passkey-any");
  report.passkeyAmr = (await expectAmr(2, "user", "mfa")).amr;
  await shot("passkey-usernameless");
  await hide();

  // Passkey sign-in by address (the allow-list of the account's passkeys).
  await signOut();
  await page.fill("#email", email);
  await passkeyButton("#signin-passkey");
  await expectAmr(2, "user", "mfa");
  await shot("passkey-by-address");
  await hide();

  // Conditional UI: the sign-in form asks for passkeys in the autofill; the virtual
  // authenticator (automatic presence) answers it as a user picking the suggestion would.
  await signOut();
  await autofillEnded();
  await show();
  // A fresh sign-in form: the console starts the conditional request as it shows.
  await page.reload();
  await waitWho(`Signed in as ${email}`);
  await waitText("#message", "autofill");
  await expectAmr(2, "user", "mfa");
  await shot("passkey-autofill");
  await hide();

  // TOTP enrolment with its QR code; the recovery codes are shown once.
  await page.click("#totp-enroll");
  await page.waitForSelector("#totp-setup:not([hidden])");
  const qr = await page.evaluate(() => {
    const img = document.getElementById("totp-qr");
    return { src: img.getAttribute("src").slice(0, 22), width: img.naturalWidth, complete: img.complete };
  });
  if (qr.src !== "data:image/png;base64," || !qr.complete || qr.width < 100) throw new Error(`QR code: ${JSON.stringify(qr)}`);
  const secret = (await text("#totp-secret")).replace(/\s+/g, "");
  if (!/^[A-Z2-7]{32}$/.test(secret)) throw new Error(`TOTP secret shown: ${secret}`);
  await shot("totp-qr-code");
  await page.fill("#totp-code", totp(secret));
  await page.click("#totp-confirm");
  await page.waitForSelector("#recovery-codes:not([hidden])");
  const recovery = await page.$$eval("#recovery-codes li", (l) => l.map((x) => x.textContent));
  if (recovery.length !== 10 || !recovery.every((c) => /^[a-z2-7]{4}(-[a-z2-7]{4}){5}$/.test(c))) {
    throw new Error(`recovery codes: ${JSON.stringify(recovery)}`);
  }
  await shot("recovery-codes");
  await page.click("#recovery-done");
  if ((await page.$$("#recovery-codes li")).length !== 0) throw new Error("the recovery codes stayed on the page");

  // Regenerate recovery codes: a new set, the old one void.
  await page.click("#recovery-regenerate");
  await page.waitForSelector("#recovery-codes:not([hidden])");
  const fresh = await page.$$eval("#recovery-codes li", (l) => l.map((x) => x.textContent));
  if (fresh.length !== 10 || fresh.some((c) => recovery.includes(c))) throw new Error("regenerated codes");
  await shot("recovery-codes-regenerated");
  await page.click("#recovery-done");

  // The next sign-in (by email code) asks for the second factor: the app's code.
  await signOut();
  await page.fill("#email", email);
  seen = new Set(mails());
  await page.click("#signin-otp");
  await page.waitForSelector("#otp-panel:not([hidden])");
  await page.fill("#otp-code", (await mailSecret(seen, email, "otp")).secret);
  await page.click("#otp-verify");
  await page.waitForSelector("#mfa-card:not([hidden])");
  for (const sel of ["#mfa-totp-row", "#mfa-recovery-row", "#mfa-passkey"]) {
    if (!(await page.isVisible(sel))) throw new Error(`the MFA prompt lacks ${sel}`);
  }
  await waitWho("One more step");
  // The step after the confirmed one: a time step is accepted once.
  await page.fill("#mfa-code", totp(secret, 1));
  await shot("mfa-prompt");
  await page.click("#mfa-totp");
  await waitWho(`Signed in as ${email}`);
  await expectAmr(2, "email", "otp", "mfa");
  await shot("mfa-totp-signed-in");

  // A recovery code as the second factor, after a magic link, waiting tab by poll again.
  await signOut();
  await page.fill("#email", email);
  seen = new Set(mails());
  await page.click("#signin-magic");
  const link2 = await mailSecret(seen, email, "magic_link");
  const landing2 = await context.newPage();
  await landing2.goto(link2.link.replace(/^https?:\/\/[^/]+/, base));
  await landing2.click("#approve");
  await waitText("#status", "Approved", landing2);
  await landing2.close();
  await page.waitForSelector("#mfa-card:not([hidden])");
  await page.fill("#mfa-recovery", fresh[0]);
  await page.click("#mfa-recovery-btn");
  await waitWho(`Signed in as ${email}`);
  await expectAmr(2, "email", "recovery", "mfa");
  await shot("mfa-recovery-code-signed-in");

  // A passkey as the second factor of a code sign-in.
  await signOut();
  await page.fill("#email", email);
  seen = new Set(mails());
  await page.click("#signin-otp");
  await page.waitForSelector("#otp-panel:not([hidden])");
  await page.fill("#otp-code", (await mailSecret(seen, email, "otp")).secret);
  await page.click("#otp-verify");
  await page.waitForSelector("#mfa-card:not([hidden])");
  await show();
  await page.click("#mfa-passkey");
  await waitWho(`Signed in as ${email}`);
  await expectAmr(2, "email", "user", "mfa");
  await shot("mfa-passkey-signed-in");

  // The session list: a second tab signs in (its own session), this tab revokes it.
  // The second tab has its own virtual authenticator with the same passkey.
  await hide();
  const other = await context.newPage();
  const otherCdp = await context.newCDPSession(other);
  await otherCdp.send("WebAuthn.enable");
  const second = await otherCdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2", transport: "internal", hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  await other.goto(`${base}/demo`);
  await passkeyButton("#signin-passkey-any", other, otherCdp, second.authenticatorId);
  await page.reload();
  await page.waitForFunction(() => document.getElementById("session-list").dataset.count === "2");
  await shot("sessions");
  const otherSession = await page.$eval("#session-list button[data-session]", (b) => b.dataset.session);
  await page.click(`#session-list button[data-session="${otherSession}"]`);
  await waitText("#message", "signed out");
  await page.waitForFunction(() => document.getElementById("session-list").dataset.count === "1");
  await shot("session-revoked");
  await other.reload();
  // The page's first paint already says "Signed out": wait for the refused refresh itself.
  await waitText("#message", "This session has ended", other);
  await waitText("#who", "Signed out", other);
  await other.close();

  // Sign out.
  await signOut();
  await shot("signed-out-again");
  await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId });

  if (problems.length) throw new Error(problems.join("\n"));
  report.ok = true;
  report.revoked = otherSession;
  console.log(JSON.stringify(report));
} catch (e) {
  failed = true;
  console.error(`console browser test failed after steps ${JSON.stringify(steps)}: ${e.stack || e.message}`);
  try {
    if (page) {
      await page.screenshot({ path: join(artifacts, "failure.png"), fullPage: true });
      console.error(`message: ${await page.textContent("#message")}`);
    }
  } catch (_) { /* the failure above is what matters */ }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
