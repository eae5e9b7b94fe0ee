// End-to-end passkey test in real headless Chromium with a virtual authenticator (CTAP2,
// internal transport, resident keys, user verification). Usage:
//   node passkey.mjs http://localhost:PORT /path/to/screenshot.png
// Exits non-zero with a message on the first failed expectation.
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
if (!base || !screenshot) {
  console.error("usage: node passkey.mjs BASE_URL SCREENSHOT_PATH");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2", transport: "internal", hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });

  const email = `browser-${Date.now()}@example.org`;
  const who = () => page.textContent("#who");
  const waitWho = async (part) => {
    await page.waitForFunction((p) => document.getElementById("who").textContent.includes(p), part);
  };
  const status = () => page.textContent("#status");

  await page.goto(`${base}/demo`);
  await page.fill("#signup-email", email);
  await page.fill("#signup-password", "correct horse battery staple");
  await page.click("#signup");
  await waitWho(`Signed in as ${email}`);

  await page.click("#register-passkey");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("Passkey registered"));
  // The view refreshes after the answer: wait for PASSKEY.LIST to show the new passkey.
  await page.waitForFunction(() => {
    try { return JSON.parse(document.getElementById("passkeys").textContent).passkeys.length === 1; } catch (e) { return false; }
  });

  await page.click("#logout");
  await waitWho("Signed out");

  // With an email: the allow-list of the account's passkeys.
  await page.fill("#login-email", email);
  await page.click("#login-passkey-email");
  await waitWho("(AAL2");
  const me1 = JSON.parse(await page.textContent("#me"));
  if (me1.email !== email || me1.aal !== 2) throw new Error(`USER.ME after passkey sign-in: ${JSON.stringify(me1)}`);
  if (!(me1.amr.includes("user") && me1.amr.includes("mfa") && (me1.amr.includes("hwk") || me1.amr.includes("swk")))) {
    throw new Error(`amr: ${JSON.stringify(me1.amr)}`);
  }

  await page.click("#logout");
  await waitWho("Signed out");

  // Usernameless: a discoverable credential, no email typed.
  await page.fill("#login-email", "");
  await page.click("#login-passkey-any");
  await waitWho("(AAL2");
  const me2 = JSON.parse(await page.textContent("#me"));
  if (me2.email !== email) throw new Error(`usernameless USER.ME: ${JSON.stringify(me2)}`);
  const sessions = JSON.parse(await page.textContent("#sessions"));
  if (!sessions.sessions.some((s) => s.current)) throw new Error(`SESSION.LIST: ${JSON.stringify(sessions)}`);

  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ok: true, email, who: await who(), status: await status(), amr: me2.amr }));
} catch (e) {
  failed = true;
  console.error(`passkey browser test failed: ${e.message}`);
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) {
      await pages[0].screenshot({ path: screenshot.replace(/\.png$/, "-failure.png"), fullPage: true });
      console.error(`status: ${await pages[0].textContent("#status")}`);
    }
  } catch (_) { /* the failure above is what matters */ }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
