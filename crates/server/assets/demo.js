// The Portcullis account console: plain JavaScript on the SDK's browser bundle, no framework,
// no build step of its own. Every action is one or a few commands of the protocol, called
// through `Client`, `Passkeys` and `MagicLinks`; read it as an example of the SDK in a page.
import { Client, MagicLinks, MfaRequiredError, Passkeys, PortcullisError, Session, WebStorage, mfaChallengeOf } from "./portcullis-client.js";

const $ = (id) => document.getElementById(id);
const client = new Client({ baseUrl: new URL("..", new URL(import.meta.url)).href.replace(/\/$/, "") });
// The signed-in user's tokens, refreshed before they expire. Kept in this tab's sessionStorage
// (key `portcullis.session`, as the landing page does): each tab is its own device.
const auth = new Session(client, { storage: new WebStorage(sessionStorage), channel: null });
// The server refused to refresh this tab's session (revoked from another tab or device, expired,
// the account disabled): say so, rather than only showing the signed-out view.
auth.onChange((_, change) => {
  if (change === "refresh_refused") say("This session has ended (signed out elsewhere or expired). Sign in again.", "error");
});
const passkeys = new Passkeys(client); // ceremonies of a signed-out user (sign-in, second factor)
const accountPasskeys = new Passkeys(auth); // ceremonies of the signed-in user (register, step-up)
const magic = new MagicLinks(client);

// ---- state -------------------------------------------------------------------------------

let me = null; // USER.ME of the signed-in session
let held = false; // whether the session holds tokens (as of the last render)
let mfa = null; // { error, mfaToken, methods, email } while a sign-in waits for its second factor
let waiting = null; // AbortController of the magic-link poll
let autofill = null; // AbortController of the conditional-UI request
let otpFlow = null; // flow_id of the email code
let enrollment = null; // enrollment_id of a pending TOTP enrolment
let retry = null; // the action to repeat after a step-up


// ---- messages ----------------------------------------------------------------------------

function say(text, kind = "") {
  $("message").textContent = text;
  $("message").className = kind;
}
const ceremonyWords = {
  NotAllowedError: "The passkey prompt was cancelled or timed out.",
  InvalidStateError: "This device already has a passkey for this account.",
  NotSupportedError: "This browser cannot use passkeys.",
  SecurityError: "Passkeys need this page at an origin the server allows (rp_origins).",
};
function fail(e) {
  if (e instanceof PortcullisError) {
    const wait = e.retryAfterMs ? ` Try again in ${Math.ceil(e.retryAfterMs / 1000)} s.` : "";
    say(`${e.message}.${wait}`.replace(/\.\./, "."), "error");
    return;
  }
  if (e && e.name === "AbortError") return;
  say(ceremonyWords[e && e.name] || `Something went wrong: ${(e && e.message) || e}`, "error");
}

// An action: disables its button while it runs and reports failures.
function on(id, action) {
  $(id).addEventListener("click", async () => {
    const button = $(id);
    button.disabled = true;
    try { await action(); } catch (e) { fail(e); } finally { button.disabled = false; }
  });
}

// ---- calls with the session's token -------------------------------------------------------

// Runs a command as the signed-in user (the session refreshes its access token when it is
// about to expire or was refused, and clears itself when the refresh is refused), and offers a
// step-up when the command needs a recent proof.
async function call(command, params = {}) {
  try {
    return await auth.execute(command, params);
  } catch (e) {
    if (e instanceof PortcullisError && e.code === "FORBIDDEN" && e.details && e.details.reason === "step_up_required") {
      retry = () => call(command, params);
      $("stepup-card").hidden = false;
    }
    throw e;
  }
}

// ---- the view ------------------------------------------------------------------------------

const methodNames = { pwd: "password", email: "email", otp: "authenticator app", recovery: "recovery code", hwk: "passkey", swk: "synced passkey" };
function how(amr) {
  const names = amr.filter((m) => methodNames[m]).map((m) => methodNames[m]);
  return names.length ? names.join(" + ") : "no proof yet (new passwordless account)";
}
function when(t) {
  if (!t) return "never";
  const d = new Date(t);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}
function li(main, meta, button) {
  const item = document.createElement("li");
  const text = document.createElement("div");
  const a = document.createElement("div");
  a.append(...main);
  const b = document.createElement("div");
  b.className = "meta";
  b.textContent = meta;
  text.append(a, b);
  item.append(text);
  if (button) item.append(button);
  return item;
}
function tag(text) {
  const t = document.createElement("span");
  t.className = "tag";
  t.textContent = text;
  return t;
}

async function render() {
  me = null;
  if (await auth.signedIn()) {
    try { me = await call("USER.ME"); } catch (e) { if (await auth.signedIn()) fail(e); }
  }
  held = await auth.signedIn();
  const signedIn = !!me;
  for (const el of document.querySelectorAll("[data-view=out]")) el.hidden = signedIn || !!mfa;
  for (const el of document.querySelectorAll("[data-view=in]")) el.hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("mfa-card").hidden = !mfa || signedIn;
  const badges = $("badges");
  badges.replaceChildren();
  if (!signedIn) {
    $("avatar").textContent = "?";
    $("who").textContent = mfa ? "One more step" : "Signed out";
    $("how").textContent = mfa ? `Finish signing in as ${mfa.email || "your account"} with a second factor.` : "Sign in or create an account below.";
    startAutofill();
    return;
  }
  stopAutofill();
  $("avatar").textContent = (me.display_name || me.email).trim().charAt(0).toUpperCase();
  $("who").textContent = `Signed in as ${me.email}`;
  $("how").textContent = `${me.display_name ? me.display_name + " · " : ""}by ${how(me.amr)}`;
  const aal = document.createElement("span");
  aal.className = `badge aal${me.aal}`;
  aal.id = "aal";
  aal.textContent = `AAL${me.aal}`;
  const amr = document.createElement("span");
  amr.className = "badge";
  amr.id = "amr";
  amr.textContent = `amr: ${me.amr.join(" ") || "none"}`;
  const verified = document.createElement("span");
  verified.className = "badge";
  verified.textContent = me.email_verified ? "email verified" : "email not verified";
  badges.append(aal, amr, verified);
  await Promise.all([renderPasskeys(), renderSessions()]);
}

async function renderPasskeys() {
  const { passkeys: list } = await call("PASSKEY.LIST");
  const ul = $("passkey-list");
  ul.replaceChildren();
  if (!list.length) {
    const none = document.createElement("li");
    none.className = "empty";
    none.textContent = "No passkey yet.";
    ul.append(none);
  }
  for (const p of list) {
    const remove = document.createElement("button");
    remove.className = "danger";
    remove.textContent = "Remove";
    remove.addEventListener("click", async () => {
      try { await call("PASSKEY.REMOVE", { credential_id: p.credential_id }); say("Passkey removed.", "ok"); await render(); } catch (e) { fail(e); }
    });
    const name = document.createTextNode(p.name);
    const extra = p.backup_eligible ? [tag("synced")] : [];
    ul.append(li([name, ...extra], `Added ${when(p.created_at)} · last used ${when(p.last_used_at)}`, remove));
  }
  $("passkey-list").dataset.count = String(list.length);
}

async function renderSessions() {
  const { sessions } = await call("SESSION.LIST");
  const ul = $("session-list");
  ul.replaceChildren();
  for (const s of sessions) {
    const agent = s.user_agent ? s.user_agent.replace(/^Mozilla\/5\.0 \(([^)]*)\).*$/, "$1") : "API client";
    const main = [document.createTextNode(agent)];
    if (s.current) main.push(tag("this tab"));
    let button = null;
    if (!s.current) {
      button = document.createElement("button");
      button.className = "danger";
      button.textContent = "Revoke";
      button.dataset.session = s.session_id;
      button.addEventListener("click", async () => {
        try {
          const r = await call("SESSION.REVOKE", { session_id: s.session_id });
          say(r.revoked ? "That session is signed out." : "That session was already signed out.", "ok");
          await render();
        } catch (e) { fail(e); }
      });
    }
    const item = li(main, `${how(s.amr)} · AAL${s.aal} · since ${when(s.created_at)} · ${s.client || "unknown address"}`, button);
    item.dataset.session = s.session_id;
    ul.append(item);
  }
  ul.dataset.count = String(sessions.length);
}

// ---- signing in ------------------------------------------------------------------------------

async function signedIn(pair, words) {
  stopAutofill();
  stopWaiting();
  mfa = null;
  otpFlow = null;
  await auth.setTokens(pair);
  $("otp-panel").hidden = true;
  $("password").value = "";
  say(words, "ok");
  await render();
}

// A sign-in that answered MFA_REQUIRED shows the second step; anything else is reported.
async function signInFailed(e, email) {
  if (e instanceof MfaRequiredError && e.mfaToken === null && e.enrolmentSession) {
    // mfa_policy = "required" and no second factor yet: a session that may only enrol one.
    await signedIn(e.enrolmentSession, "This server requires a second factor: set up an authenticator app or a passkey to continue.");
    return;
  }
  const challenge = mfaChallengeOf(e);
  if (!challenge) { fail(e); return; }
  mfa = { ...challenge, error: e, email };
  stopWaiting();
  stopAutofill();
  $("otp-panel").hidden = true;
  $("mfa-totp-row").hidden = !challenge.methods.includes("totp");
  $("mfa-recovery-row").hidden = !challenge.methods.includes("recovery_code");
  $("mfa-passkey").hidden = !challenge.methods.includes("passkey");
  say("Your password, link or code was right. One more step.", "");
  await render();
}

function email() {
  const v = $("email").value.trim();
  if (!v) { $("email").focus(); throw new Error("enter your email address first"); }
  return v;
}

on("signup", async () => {
  const params = { email: $("signup-email").value.trim() };
  if ($("signup-name").value.trim()) params.display_name = $("signup-name").value.trim();
  if ($("signup-password").value) params.password = $("signup-password").value;
  stopAutofill();
  const pair = await client.execute("AUTH.SIGNUP", params);
  for (const id of ["signup-email", "signup-name", "signup-password"]) $(id).value = "";
  await signedIn(pair, "Welcome! Your account is ready.");
});

on("signin-password", async () => {
  const address = email();
  try {
    await signedIn(await client.execute("AUTH.LOGIN", { email: address, password: $("password").value }), "Signed in with your password.");
  } catch (e) { await signInFailed(e, address); }
});

on("signin-passkey", async () => {
  const address = email();
  stopAutofill();
  try { await signedIn(await passkeys.signIn({ email: address }), "Signed in with a passkey."); } catch (e) { fail(e); startAutofill(); }
});

on("signin-passkey-any", async () => {
  stopAutofill();
  try { await signedIn(await passkeys.signIn(), "Signed in with a passkey."); } catch (e) { fail(e); startAutofill(); }
});

on("signin-magic", async () => {
  const address = email();
  stopWaiting();
  const flow = await magic.send({ email: address });
  $("magic-wait").hidden = false;
  $("magic-wait-text").textContent = `We sent a sign-in link to ${address}. Open it on any device and approve it: this tab signs you in by itself.`;
  say("");
  waiting = new AbortController();
  const signal = waiting.signal;
  try {
    await signedIn(await magic.waitForSignIn({ flowId: flow.flowId, signal }), "Signed in with the link from your email.");
  } catch (e) {
    if (signal.aborted) return;
    $("magic-wait").hidden = true;
    if (e instanceof PortcullisError && e.code === "ALREADY_USED") {
      say("The link was used in another tab; that tab is signed in.", "");
      return;
    }
    if (e && e.name === "TimeoutError") { say("The link expired. Ask for a new one.", "error"); return; }
    await signInFailed(e, address);
  }
});
on("magic-cancel", async () => { stopWaiting(); say("Cancelled. The link in your mail no longer signs this tab in."); });
function stopWaiting() {
  if (waiting) waiting.abort();
  waiting = null;
  $("magic-wait").hidden = true;
}

on("signin-otp", async () => {
  const address = email();
  const sent = await client.execute("OTP.SEND", { email: address });
  otpFlow = { flowId: sent.flow_id, email: address };
  $("otp-panel").hidden = false;
  $("otp-text").textContent = `We sent a six-digit code to ${address}. It works for ${Math.round(sent.expires_in / 60)} minutes.`;
  say("");
  $("otp-code").focus();
});
on("otp-verify", async () => {
  if (!otpFlow) return;
  const code = $("otp-code").value.replace(/\s+/g, "");
  if (!/^[0-9]{6}$/.test(code)) { say("The code has six digits.", "error"); return; }
  try {
    await signedIn(await client.execute("OTP.VERIFY", { flow_id: otpFlow.flowId, code }), "Signed in with the code from your email.");
    $("otp-code").value = "";
  } catch (e) {
    if (mfaChallengeOf(e)) $("otp-code").value = "";
    await signInFailed(e, otpFlow && otpFlow.email);
  }
});

// Conditional UI: passkeys in the email field's autofill, while the sign-in form shows. The
// field's `data-passkey-autofill` is `starting`, then `on` once the browser holds the request,
// and absent when no request is pending.
async function startAutofill() {
  if (autofill || held || mfa) return;
  const controller = new AbortController();
  autofill = controller; // set before any await, so that stopAutofill always reaches it
  const field = $("email");
  field.dataset.passkeyAutofill = "starting";
  try {
    if (!(await Passkeys.autofillSupported())) { autofill = null; return; }
    const pair = await passkeys.autofill({ signal: controller.signal, onWaiting: () => { field.dataset.passkeyAutofill = "on"; } });
    if (autofill === controller) autofill = null;
    await signedIn(pair, "Signed in with a passkey from autofill.");
  } catch (e) {
    if (autofill === controller) autofill = null;
    if (!controller.signal.aborted && !(e && e.name === "NotAllowedError")) fail(e);
  } finally {
    if (!autofill) delete field.dataset.passkeyAutofill;
  }
}
function stopAutofill() {
  if (autofill) autofill.abort();
  autofill = null;
  delete $("email").dataset.passkeyAutofill;
}

// ---- the second step -------------------------------------------------------------------------

on("mfa-totp", async () => {
  const code = $("mfa-code").value.replace(/\s+/g, "");
  if (!/^[0-9]{6}$/.test(code)) { say("The code has six digits.", "error"); return; }
  const pair = await client.mfa.verify(mfa.error, { method: "totp", code });
  $("mfa-code").value = "";
  await signedIn(pair, "Signed in with your authenticator app as the second step.");
});
on("mfa-recovery-btn", async () => {
  const pair = await client.mfa.verify(mfa.error, { method: "recovery_code", code: $("mfa-recovery").value.trim() });
  $("mfa-recovery").value = "";
  await signedIn(pair, "Signed in with a recovery code. That code is used up: make new ones if you are running low.");
});
on("mfa-passkey", async () => {
  await signedIn(await passkeys.verifyMfa({ mfaToken: mfa.mfaToken }), "Signed in with a passkey as the second step.");
});
on("mfa-cancel", async () => { mfa = null; say(""); await render(); });

// ---- the account -----------------------------------------------------------------------------

on("passkey-add", async () => {
  const p = await accountPasskeys.register({ name: deviceName() });
  say(`Passkey “${p.name}” added. You can now sign in with it, without a password.`, "ok");
  await render();
});
function deviceName() {
  const ua = navigator.userAgent;
  const os = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iPhone" : /Mac OS X/.test(ua) ? "Mac" : /Windows/.test(ua) ? "Windows" : /Linux/.test(ua) ? "Linux" : "This device";
  const browser = /Edg\//.test(ua) ? "Edge" : /Chrome\//.test(ua) ? "Chrome" : /Firefox\//.test(ua) ? "Firefox" : /Safari\//.test(ua) ? "Safari" : "browser";
  return `${browser} on ${os}`;
}

on("totp-enroll", async () => {
  const e = await call("TOTP.ENROLL");
  enrollment = e.enrollment_id;
  $("totp-qr").src = `data:image/png;base64,${e.qr_png}`;
  $("totp-secret").textContent = e.secret.replace(/(.{4})/g, "$1 ").trim();
  $("totp-setup").hidden = false;
  $("totp-enroll").hidden = true;
  $("totp-code").focus();
  say("Scan the QR code with your authenticator app.", "");
});
on("totp-confirm", async () => {
  const code = $("totp-code").value.replace(/\s+/g, "");
  const r = await call("TOTP.CONFIRM", { enrollment_id: enrollment, code });
  enrollment = null;
  $("totp-code").value = "";
  $("totp-qr").removeAttribute("src");
  $("totp-secret").textContent = "";
  $("totp-setup").hidden = true;
  $("totp-enroll").hidden = true;
  $("totp-state").textContent = "Your authenticator app is on: sign-ins by password, link or code ask for its code.";
  showRecovery(r.recovery_codes, "Your authenticator app is on. Save these recovery codes now: they are shown only once.");
});
on("recovery-regenerate", async () => {
  const r = await call("RECOVERY.REGENERATE");
  showRecovery(r.recovery_codes, "New recovery codes: the old ones no longer work. Save these now: they are shown only once.");
});
function showRecovery(codes, words) {
  const ul = $("recovery-codes");
  ul.replaceChildren(...codes.map((c) => { const item = document.createElement("li"); item.className = "mono"; item.textContent = c; return item; }));
  ul.hidden = false;
  $("recovery-done").hidden = false;
  $("recovery-text").textContent = words;
  say(words, "ok");
}
on("recovery-done", async () => {
  $("recovery-codes").replaceChildren();
  $("recovery-codes").hidden = true;
  $("recovery-done").hidden = true;
  $("recovery-text").textContent = "Single-use codes for when your authenticator app is not at hand. Make new ones if you lost them.";
  say("");
});

on("stepup-passkey", async () => {
  // A step-up answer has no refresh token: the session replaces its access token only.
  await auth.setTokens(await accountPasskeys.stepUp({ email: me.email }));
  $("stepup-card").hidden = true;
  say("Confirmed.", "ok");
  const again = retry;
  retry = null;
  if (again) await again();
  await render();
});
on("stepup-cancel", async () => { retry = null; $("stepup-card").hidden = true; });

on("signout", async () => {
  try { await auth.logout(); } catch { /* signed out here all the same */ }
  await auth.clear();
  $("recovery-codes").replaceChildren();
  $("recovery-codes").hidden = true;
  $("recovery-done").hidden = true;
  $("totp-setup").hidden = true;
  $("totp-enroll").hidden = false;
  enrollment = null;
  say("You are signed out.", "ok");
  await render();
});

render();
