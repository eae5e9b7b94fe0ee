// Landing page of a sign-in link. Opening the page consumes nothing: mail scanners and link
// previews may fetch it. Only a click calls MAGIC.VERIFY or MAGIC.APPROVE.
(function () {
  "use strict";
  var page = document.getElementById("page");
  var params = new URLSearchParams(window.location.search);
  var token = params.get("token");
  // Keep the token out of the address bar, history and any later Referer.
  if (window.history && window.history.replaceState) {
    window.history.replaceState(null, "", window.location.pathname);
  }
  var bound = page.dataset.bound === "true";
  var redirect = page.dataset.redirect || "";
  var status = document.getElementById("status");

  function show(id) { document.getElementById(id).hidden = false; }
  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }
  function disableAll() {
    ["signin", "continue", "approve"].forEach(function (id) { document.getElementById(id).disabled = true; });
  }
  function execute(command, params) {
    // Relative, so the gateway may be mounted under a path prefix behind a proxy.
    return fetch("../api/v1/execute", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ command: command, params: params }),
      credentials: "omit",
    }).then(function (r) { return r.json(); });
  }

  if (!token) { say("This link is incomplete.", true); return; }

  if (redirect) {
    show("continue");
  } else if (!bound) {
    show("signin");
  }
  if (bound) { show("approve"); show("approve-note"); }

  document.getElementById("continue").addEventListener("click", function () {
    disableAll();
    // The application finishes the sign-in (with its code_verifier when the link is bound).
    var target = new URL(redirect);
    target.searchParams.set("magic_token", token);
    window.location.assign(target.toString());
  });

  document.getElementById("signin").addEventListener("click", function () {
    disableAll();
    say("Signing in…");
    execute("MAGIC.VERIFY", { token: token }).then(function (r) {
      if (r.ok) {
        // No application asked for this sign-in: keep the session for pages of this origin
        // (the demo page) for the life of this tab only.
        try { window.sessionStorage.setItem("portcullis.session", JSON.stringify(r.data)); } catch (e) {}
        say("You are signed in. You can close this page.");
      }
      else { say(r.error.message, true); }
    }).catch(function () { say("The server could not be reached.", true); });
  });

  document.getElementById("approve").addEventListener("click", function () {
    disableAll();
    say("Approving…");
    execute("MAGIC.APPROVE", { token: token }).then(function (r) {
      if (r.ok) { say("Approved. Go back to the device where you started: it is signing in."); }
      else { say(r.error.message, true); }
    }).catch(function () { say("The server could not be reached.", true); });
  });
})();
