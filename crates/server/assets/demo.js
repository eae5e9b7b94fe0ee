// The Portcullis demo page: plain JavaScript against POST /api/v1/execute, no build step.
// It doubles as a reference for browser SDKs: every call below is one command of the protocol.
(function () {
  "use strict";
  var KEY = "portcullis.session";
  var $ = function (id) { return document.getElementById(id); };

  function session() {
    try { return JSON.parse(window.sessionStorage.getItem(KEY) || "null"); } catch (e) { return null; }
  }
  function keep(s) {
    if (s) { window.sessionStorage.setItem(KEY, JSON.stringify(s)); } else { window.sessionStorage.removeItem(KEY); }
  }
  function say(text, kind) {
    $("status").textContent = text;
    $("status").className = kind || "";
  }

  // One command. Resolves with the envelope; never throws for ok:false.
  function execute(command, params, withToken) {
    var headers = { "Content-Type": "application/json" };
    var s = session();
    if (withToken && s) { headers.Authorization = "Bearer " + s.access_token; }
    return fetch("/api/v1/execute", {
      method: "POST", headers: headers, credentials: "omit",
      body: JSON.stringify({ command: command, params: params || {} }),
    }).then(function (r) { return r.json(); });
  }
  function fail(r) {
    var e = r.error || { code: "INTERNAL", message: "no answer" };
    say(e.code + ": " + e.message, "error");
  }

  function show() {
    var s = session();
    $("account").hidden = !s;
    $("sessions-box").hidden = !s;
    $("signed-out").hidden = !!s;
    $("signin").hidden = !!s;
    if (!s) { $("who").textContent = "Signed out"; return Promise.resolve(); }
    return execute("USER.ME", {}, true).then(function (r) {
      if (!r.ok) {
        // Expired access token: try the refresh token once, else sign out.
        if (r.error.code === "UNAUTHENTICATED" && s.refresh_token) {
          return execute("AUTH.REFRESH", { refresh_token: s.refresh_token }).then(function (t) {
            if (t.ok) { keep(t.data); return show(); }
            keep(null); return show();
          });
        }
        fail(r); return;
      }
      $("who").textContent = "Signed in as " + r.data.email + " (AAL" + r.data.aal + ", " + r.data.amr.join("+") + ")";
      $("me").textContent = JSON.stringify(r.data, null, 2);
      return Promise.all([
        execute("SESSION.LIST", {}, true).then(function (l) { $("sessions").textContent = JSON.stringify(l.ok ? l.data : l.error, null, 2); }),
        execute("PASSKEY.LIST", {}, true).then(function (l) { $("passkeys").textContent = JSON.stringify(l.ok ? l.data : l.error, null, 2); }),
      ]);
    });
  }

  function signedIn(r) {
    if (r.ok) { keep(r.data); say("Signed in.", "ok"); return show(); }
    if (r.error && r.error.code === "MFA_REQUIRED") {
      say("This account needs a second factor (" + r.error.details.methods.join(", ") + "): use MFA.VERIFY.", "error");
      return;
    }
    fail(r);
  }

  function webauthnSupported() {
    return window.PublicKeyCredential && PublicKeyCredential.parseCreationOptionsFromJSON;
  }

  $("signup").addEventListener("click", function () {
    var params = { email: $("signup-email").value };
    if ($("signup-name").value) { params.display_name = $("signup-name").value; }
    if ($("signup-password").value) { params.password = $("signup-password").value; }
    execute("AUTH.SIGNUP", params).then(signedIn);
  });

  $("login-password-btn").addEventListener("click", function () {
    execute("AUTH.LOGIN", { email: $("login-email").value, password: $("login-password").value }).then(signedIn);
  });

  $("register-passkey").addEventListener("click", function () {
    if (!webauthnSupported()) { say("This browser cannot create passkeys.", "error"); return; }
    execute("PASSKEY.REGISTER.BEGIN", { name: navigator.platform || "Passkey" }, true).then(function (r) {
      if (!r.ok) { fail(r); return; }
      var options = PublicKeyCredential.parseCreationOptionsFromJSON(r.data.options.publicKey);
      return navigator.credentials.create({ publicKey: options }).then(function (cred) {
        return execute("PASSKEY.REGISTER.FINISH", { ceremony_id: r.data.ceremony_id, credential: cred.toJSON() }, true);
      }).then(function (f) {
        if (f.ok) { say("Passkey registered.", "ok"); return show(); }
        fail(f);
      });
    }).catch(function (e) { say("The passkey was not created: " + e.name, "error"); });
  });

  function passkeySignIn(params) {
    if (!webauthnSupported()) { say("This browser cannot use passkeys.", "error"); return; }
    execute("PASSKEY.LOGIN.BEGIN", params).then(function (r) {
      if (!r.ok) { fail(r); return; }
      var options = PublicKeyCredential.parseRequestOptionsFromJSON(r.data.options.publicKey);
      return navigator.credentials.get({ publicKey: options }).then(function (cred) {
        return execute("PASSKEY.LOGIN.FINISH", { ceremony_id: r.data.ceremony_id, credential: cred.toJSON() });
      }).then(signedIn);
    }).catch(function (e) { say("No passkey was used: " + e.name, "error"); });
  }
  $("login-passkey-email").addEventListener("click", function () { passkeySignIn({ email: $("login-email").value }); });
  $("login-passkey-any").addEventListener("click", function () { passkeySignIn({}); });

  $("logout").addEventListener("click", function () {
    execute("AUTH.LOGOUT", {}, true).then(function () { keep(null); say("Signed out.", "ok"); return show(); });
  });
  $("refresh-view").addEventListener("click", function () { show(); });

  show();
})();
