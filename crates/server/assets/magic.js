// Landing page of a sign-in link, on the SDK's browser bundle. Opening the page consumes
// nothing: mail scanners and link previews may fetch it. Only a click calls MAGIC.VERIFY or
// MAGIC.APPROVE.
import { Client, MagicLinks, Session, WebStorage, mfaChallengeOf } from "./portcullis-client.js";

const page = document.getElementById("page");
const token = new URLSearchParams(window.location.search).get("token");
// Keep the token out of the address bar, history and any later Referer.
if (window.history && window.history.replaceState) {
  window.history.replaceState(null, "", window.location.pathname);
}
const bound = page.dataset.bound === "true";
const redirect = page.dataset.redirect || "";
const flowId = page.dataset.flow || "";
const status = document.getElementById("status");
// Relative to this page, so the gateway may be mounted under a path prefix behind a proxy.
const client = new Client({ baseUrl: new URL("..", window.location.href).href.replace(/\/$/, "") });
const magic = new MagicLinks(client);
// This browser asked for the link (a tab of the same site kept the flow's verifier).
const askedHere = bound && flowId !== "" && magic.hasFlow(flowId);

const show = (id) => { document.getElementById(id).hidden = false; };
function say(text, isError) {
  status.textContent = text;
  status.className = isError ? "error" : "";
}
function disableAll() {
  for (const id of ["signin", "signin-here", "continue", "approve"]) document.getElementById(id).disabled = true;
}
async function keepSession(pair) {
  // No application asked for this sign-in: keep the session for pages of this origin (the demo
  // page) for the life of this tab only, as the SDK's Session keeps it there.
  try {
    await new Session(client, { storage: new WebStorage(window.sessionStorage), channel: null }).setTokens(pair);
  } catch { /* storage disabled: the sign-in stands, nobody holds it */ }
}
function refused(e) {
  if (mfaChallengeOf(e)) {
    say("The link was right, but this account has a second factor: sign in again where you started, and finish with it.", true);
  } else {
    say(e && e.message ? e.message : "The server could not be reached.", true);
  }
}

if (!token) {
  say("This link is incomplete.", true);
} else {
  if (redirect) show("continue");
  else if (!bound) show("signin");
  if (askedHere) show("signin-here");
  if (bound) { show("approve"); show("approve-note"); }
}

document.getElementById("continue").addEventListener("click", () => {
  disableAll();
  // The application finishes the sign-in (with its code_verifier when the link is bound).
  const target = new URL(redirect);
  target.searchParams.set("magic_token", token);
  window.location.assign(target.toString());
});

document.getElementById("signin").addEventListener("click", async () => {
  disableAll();
  say("Signing in…");
  try {
    await keepSession(await magic.verify({ token }));
    say("You are signed in. You can close this page.");
  } catch (e) { refused(e); }
});

// Same device: the verifier this browser kept when it asked for the link proves it.
document.getElementById("signin-here").addEventListener("click", async () => {
  disableAll();
  say("Signing in…");
  try {
    await keepSession(await magic.verify({ token, flowId }));
    say("You are signed in here. The tab that asked for the link stops waiting.");
  } catch (e) { refused(e); }
});

document.getElementById("approve").addEventListener("click", async () => {
  disableAll();
  say("Approving…");
  try {
    await magic.approve({ token });
    say("Approved. Go back to the device where you started: it is signing in.");
  } catch (e) { refused(e); }
});
