//! Passwordless sign-in by mail through the real binary: magic links and one-time codes over a
//! real SMTP server on loopback and through the `.eml` outbox, the landing page, single use
//! under races and crashes, guessing and send limits, PKCE and cross-device approval, the
//! redirect allow-list, account pre-hijacking, and no link or code in any log.

use crate::harness::{
    all_events, as_user, execute_http, http, login, refresh, signup, tokens, HttpResponse, Server,
};
use crate::mail::{token_of, Inbox, Mail};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_client::Client;
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::{ErrorCode, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

const PASSWORD: &str = "correct horse battery staple";
const SINK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
/// Debian's interpreter, the one with `aiosmtpd`.
const SINK_PYTHON: &str = "/usr/bin/python3";
/// Settings that let one address get several mails in a row.
const NO_COOLDOWN: &str = "send_cooldown_s = 0\n";

// ---------------------------------------------------------------------------------------------
// The SMTP sink.

/// `tests/support/smtp_sink.py` on 127.0.0.1, saving what it receives as numbered `.eml` files.
struct SmtpSink {
    child: Child,
    port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        SmtpSink::start_on(0)
    }

    /// A sink on `port` (0: a free one).
    fn start_on(port: u16) -> SmtpSink {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mail");
        let mut child = Command::new(SINK_PYTHON)
            .arg(SINK_SCRIPT)
            .arg(port.to_string())
            .arg(&dir)
            // The sink exits when this pipe closes, so it never outlives the test process.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP sink with /usr/bin/python3 (needs python3-aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the SMTP sink did not print its port: {line:?}"));
        SmtpSink {
            child,
            port,
            dir,
            _tmp: tmp,
        }
    }

    /// Config-file lines that send mail to this sink.
    fn config(&self) -> String {
        format!(
            "smtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_tls = \"none\"\n",
            self.port
        )
    }

    /// The recipients of the SMTP envelope of a saved message.
    fn envelope_recipients(&self, mail: &Mail) -> Vec<String> {
        let meta = std::fs::read(mail.path.with_extension("json")).unwrap();
        let v: Value = serde_json::from_slice(&meta).unwrap();
        v["rcpt_tos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path and query of a link, to fetch it from the test server whatever its public URL says.
fn path_of(link: &str) -> String {
    let after_scheme = link.split_once("://").map_or(link, |(_, rest)| rest);
    let slash = after_scheme.find('/').expect("a path in the link");
    after_scheme[slash..].to_owned()
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

async fn call(c: &mut Client, command: &str, params: Value) -> Response {
    c.call(command, params).await.unwrap()
}

#[track_caller]
fn assert_err(r: &Response, code: ErrorCode, what: &str) {
    assert_eq!(r.error_code(), Some(code), "{what}: {r:?}");
}

fn data_keys(r: &Response) -> BTreeSet<String> {
    assert!(r.ok, "{r:?}");
    r.data.as_object().unwrap().keys().cloned().collect()
}

fn retry_after_ms(r: &Response) -> u64 {
    r.error
        .as_ref()
        .and_then(|e| e.retry_after_ms)
        .unwrap_or_else(|| panic!("no retry_after_ms: {r:?}"))
}

fn attempts_left(r: &Response) -> Option<u64> {
    r.error
        .as_ref()
        .and_then(|e| e.details.as_ref())
        .and_then(|d| d["attempts_left"].as_u64())
}

fn flow_id(r: &Response) -> String {
    assert!(r.ok, "{r:?}");
    r.data["flow_id"].as_str().unwrap().to_owned()
}

/// A PKCE verifier (43 base64url characters) unique to this call.
fn new_verifier(tag: &str) -> String {
    let seed = format!("{tag} {:?} {}", Instant::now(), std::process::id());
    URL_SAFE_NO_PAD.encode(Sha256::digest(seed.as_bytes()))
}

/// The S256 challenge of a verifier: BASE64URL(SHA-256(verifier)).
fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `POST /api/v1/execute` as a browser page does: the envelope as JSON.
async fn exec_http(addr: SocketAddr, command: &str, params: Value, token: Option<&str>) -> Value {
    let r = execute_http(addr, &json!({"command": command, "params": params}), token).await;
    assert_eq!(r.status, 200, "{command}");
    r.json()
}

async fn landing(server: &Server, link: &str) -> HttpResponse {
    http(server.http, "GET", &path_of(link), &[], b"").await
}

#[track_caller]
fn assert_landing_ok(page: &HttpResponse, email: &str) {
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    assert!(
        page.header("Content-Type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert_eq!(page.header("Cache-Control"), Some("no-store"));
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    let body = String::from_utf8_lossy(&page.body);
    assert!(body.contains(email), "the page names {email}: {body}");
}

async fn me(c: &mut Client, t: &SessionTokens) -> Value {
    let r = as_user(c, &t.access_token, "USER.ME", json!({})).await;
    assert!(r.ok, "{r:?}");
    r.data
}

/// A passwordless account and its address.
async fn account(server: &Server, email: &str) -> SessionTokens {
    let mut c = server.client().await;
    signup(&mut c, email, None).await
}

/// `MAGIC.SEND`, then the link from the mail that follows it.
async fn magic_link(c: &mut Client, inbox: &mut Inbox, params: Value) -> (Response, String) {
    let email = params["email"].as_str().unwrap().to_owned();
    let r = call(c, "MAGIC.SEND", params).await;
    assert!(r.ok, "MAGIC.SEND {email}: {r:?}");
    let mail = inbox.next_to(&email).await;
    (r, mail.link())
}

/// `OTP.SEND`, then the flow id and the code from the mail that follows it.
async fn otp_code(c: &mut Client, inbox: &mut Inbox, email: &str) -> (String, String) {
    let r = call(c, "OTP.SEND", json!({"email": email})).await;
    let flow = flow_id(&r);
    let mail = inbox.next_to(email).await;
    (flow, mail.code())
}

/// Maximal runs of ASCII digits that stand alone (not glued to letters or other digits).
fn standalone_digit_runs(text: &str) -> HashSet<&str> {
    let b = text.as_bytes();
    let mut out = HashSet::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let before = start == 0 || !b[start - 1].is_ascii_alphanumeric();
        let after = i == b.len() || !b[i].is_ascii_alphanumeric();
        if before && after {
            out.insert(&text[start..i]);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. SMTP end to end.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magic_link_over_real_smtp_end_to_end() {
    let sink = SmtpSink::start();
    let config = format!(
        "{}product_name = \"Acme Login\"\nmail_from = \"Acme Login <login@acme.example>\"\n\
         public_url = \"https://auth.acme.example\"\nmagic_link_ttl_s = 600\n",
        sink.config()
    );
    let server = Server::start_config(&config, &[]);
    let mut inbox = Inbox::at(sink.dir.clone());
    let email = "smtp.user@example.org";
    let first = account(&server, email).await;

    let r = http(
        server.http,
        "POST",
        "/api/v1/execute",
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "MailTester/2.5"),
            // Headers anyone can write: the mail must name the real peer, not these.
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Real-IP", "203.0.113.7"),
            ("Forwarded", "for=203.0.113.7"),
        ],
        json!({"command": "MAGIC.SEND", "params": {"email": email}})
            .to_string()
            .as_bytes(),
    )
    .await
    .json();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["data"]["expires_in"], 600);

    let mail = inbox.next_to(email).await;
    assert_eq!(mail.from, vec!["login@acme.example".to_owned()]);
    assert!(mail.from_raw.contains("Acme Login"), "{}", mail.from_raw);
    assert_eq!(mail.to, vec![email.to_owned()]);
    assert_eq!(sink.envelope_recipients(&mail), vec![email.to_owned()]);
    assert_eq!(mail.subject, "Your Acme Login sign-in link");
    assert_eq!(mail.mimetype, "multipart/alternative");
    assert_eq!(mail.part_types, ["text/plain", "text/html"]);
    for needle in [
        "Acme Login",
        email,
        "expires in 10 minutes",
        "from 127.0.0.1 (MailTester/2.5)",
        "If this wasn't you",
    ] {
        assert!(mail.text.contains(needle), "{needle:?} in {}", mail.text);
    }
    assert!(!mail.text.contains("203.0.113.7"), "{}", mail.text);
    let link = mail.link();
    assert!(
        link.starts_with("https://auth.acme.example/auth/magic?token="),
        "{link}"
    );
    assert!(mail.html.contains(&link), "the HTML part has the same link");
    assert!(mail.html.contains("If this wasn") && mail.html.contains("Acme Login"));
    let token = token_of(&link);

    // Opening the page consumes nothing: a second look (a mail scanner, a preview) still works.
    for _ in 0..2 {
        assert_landing_ok(&landing(&server, &link).await, email);
    }

    let v = exec_http(server.http, "MAGIC.VERIFY", json!({"token": token}), None).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["data"]["user_id"], first.user_id.as_str());
    assert_eq!(v["data"]["token_type"], "Bearer");
    assert_eq!(v["data"]["redirect_url"], Value::Null);
    let access = v["data"]["access_token"].as_str().unwrap();
    let who = exec_http(server.http, "USER.ME", json!({}), Some(access)).await;
    assert_eq!(who["data"]["amr"], json!(["email"]), "{who}");
    assert_eq!(who["data"]["aal"], 1);
    assert_eq!(who["data"]["email_verified"], true);
    assert_eq!(who["data"]["email"], email);

    let again = exec_http(server.http, "MAGIC.VERIFY", json!({"token": token}), None).await;
    assert_eq!(again["error"]["code"], "ALREADY_USED", "{again}");
    let page = landing(&server, &link).await;
    assert_eq!(page.status, 410);
    assert_eq!(page.header("Cache-Control"), Some("no-store"));
}

// ---------------------------------------------------------------------------------------------
// 2. Outbox end to end, link and code.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magic_link_and_code_through_the_outbox_end_to_end() {
    let server = Server::start();
    let mut inbox = Inbox::outbox(&server.data_dir);
    let mut c = server.client().await;
    let email = "outbox.user@example.org";
    let first = account(&server, email).await;

    let (sent, link) = magic_link(&mut c, &mut inbox, json!({"email": email})).await;
    assert_eq!(sent.data["expires_in"], 600);
    let mail = inbox.all().into_iter().find(|m| m.is_to(email)).unwrap();
    assert_eq!(mail.from, vec!["no-reply@localhost".to_owned()]);
    assert_eq!(mail.subject, "Your Portcullis sign-in link");
    assert_eq!(mail.mimetype, "multipart/alternative");
    assert_eq!(mail.part_types, ["text/plain", "text/html"]);
    for needle in [
        "Portcullis",
        "expires in 10 minutes",
        "from 127.0.0.1",
        "If this wasn't you",
    ] {
        assert!(mail.text.contains(needle), "{needle:?} in {}", mail.text);
    }
    assert!(link.starts_with("http://localhost:7421/auth/magic?token="));
    for _ in 0..2 {
        assert_landing_ok(&landing(&server, &link).await, email);
    }
    let v = exec_http(
        server.http,
        "MAGIC.VERIFY",
        json!({"token": token_of(&link)}),
        None,
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");
    let t: SessionTokens = serde_json::from_value(v["data"].clone()).unwrap();
    assert_eq!(t.user_id, first.user_id);
    let who = me(&mut c, &t).await;
    assert_eq!(
        (&who["amr"], &who["aal"], &who["email_verified"]),
        (&json!(["email"]), &json!(1), &json!(true))
    );
    let again = call(&mut c, "MAGIC.VERIFY", json!({"token": token_of(&link)})).await;
    assert_err(&again, ErrorCode::AlreadyUsed, "second use");
    assert_eq!(landing(&server, &link).await.status, 410);

    // A code, for another account (one address gets one mail per cooldown).
    let email2 = "outbox.code@example.org";
    let second = account(&server, email2).await;
    let r = call(&mut c, "OTP.SEND", json!({"email": email2})).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        data_keys(&r),
        BTreeSet::from(["flow_id".into(), "expires_in".into(), "resend_after".into()])
    );
    assert_eq!(r.data["expires_in"], 600);
    assert_eq!(r.data["resend_after"], 30);
    let mail = inbox.next_to(email2).await;
    let code = mail.code();
    assert_eq!(mail.part_types, ["text/plain", "text/html"]);
    assert!(mail.html.contains(&code));
    for needle in [
        "expires in 10 minutes",
        "from 127.0.0.1",
        "If this wasn't you",
    ] {
        assert!(mail.text.contains(needle), "{needle:?} in {}", mail.text);
    }
    let ok = call(
        &mut c,
        "OTP.VERIFY",
        json!({"flow_id": flow_id(&r), "code": code}),
    )
    .await;
    let t = tokens(ok);
    assert_eq!(t.user_id, second.user_id);
    let who = me(&mut c, &t).await;
    assert_eq!(who["amr"], json!(["email"]));
    assert_eq!(who["aal"], 1);
    assert_eq!(who["email_verified"], true);
    let again = call(
        &mut c,
        "OTP.VERIFY",
        json!({"flow_id": flow_id(&r), "code": code}),
    )
    .await;
    assert_err(&again, ErrorCode::AlreadyUsed, "second use of the code");
}

// ---------------------------------------------------------------------------------------------
// 3. No enumeration.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_addresses_get_the_same_answers_and_no_mail() {
    let server = Server::start_config(NO_COOLDOWN, &[]);
    let mut inbox = Inbox::outbox(&server.data_dir);
    let mut c = server.client().await;
    let known = "known@example.org";
    let unknown = "unknown@example.org";
    account(&server, known).await;

    // The unknown address first, so its mail (if any were sent) would be written before the
    // known address's.
    let mu = call(&mut c, "MAGIC.SEND", json!({"email": unknown})).await;
    let ou = call(&mut c, "OTP.SEND", json!({"email": unknown})).await;
    let mk = call(&mut c, "MAGIC.SEND", json!({"email": known})).await;
    let ok_ = call(&mut c, "OTP.SEND", json!({"email": known})).await;
    assert_eq!(data_keys(&mu), data_keys(&mk));
    assert_eq!(data_keys(&ou), data_keys(&ok_));
    assert_eq!(mu.data["expires_in"], mk.data["expires_in"]);
    assert_eq!(ou.data["expires_in"], ok_.data["expires_in"]);
    assert_eq!(ou.data["resend_after"], ok_.data["resend_after"]);
    for r in [&mu, &ou, &mk, &ok_] {
        let id = flow_id(r);
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    // A device-bound flow polls the same whether or not anyone can approve it.
    let verifier = new_verifier("enumeration");
    let mut polls = Vec::new();
    for email in [unknown, known] {
        let r = call(
            &mut c,
            "MAGIC.SEND",
            json!({"email": email, "code_challenge": challenge_of(&verifier)}),
        )
        .await;
        let poll = call(
            &mut c,
            "MAGIC.POLL",
            json!({"flow_id": flow_id(&r), "code_verifier": verifier}),
        )
        .await;
        assert!(poll.ok, "{poll:?}");
        polls.push(poll.data);
    }
    assert_eq!(polls[0], polls[1]);

    let mails = [
        inbox.next_to(known).await,
        inbox.next_to(known).await,
        inbox.next_to(known).await,
    ];
    let code = mails
        .iter()
        .find(|m| m.subject.contains("code"))
        .expect("the code mail")
        .code();
    let to_unknown = inbox.settled_to(unknown).await;
    assert!(
        to_unknown.is_empty(),
        "mail was sent to an address with no account"
    );
    assert_eq!(inbox.file_count(), 3, "only the known address got mail");

    // A wrong code counts down the same way for both.
    let right: u32 = code.parse().unwrap();
    let wrong = [1, 2].map(|k| format!("{:06}", (right + k) % 1_000_000));
    for r in [&ou, &ok_] {
        let v: Vec<Response> = vec![
            call(
                &mut c,
                "OTP.VERIFY",
                json!({"flow_id": flow_id(r), "code": wrong[0]}),
            )
            .await,
            call(
                &mut c,
                "OTP.VERIFY",
                json!({"flow_id": flow_id(r), "code": wrong[1]}),
            )
            .await,
        ];
        for (v, left) in v.iter().zip([4, 3]) {
            assert_err(v, ErrorCode::InvalidCredentials, "wrong code");
            assert_eq!(attempts_left(v), Some(left), "{v:?}");
            assert_eq!(v.error.as_ref().unwrap().message, "the code is not valid");
        }
    }

    // With create_user, an unknown address gets a link, and the link makes the account.
    let newbie = "newbie@example.org";
    let (_, link) = magic_link(
        &mut c,
        &mut inbox,
        json!({"email": newbie, "create_user": true}),
    )
    .await;
    let t = tokens(call(&mut c, "MAGIC.VERIFY", json!({"token": token_of(&link)})).await);
    let who = me(&mut c, &t).await;
    assert_eq!(who["email"], newbie);
    assert_eq!(who["email_verified"], true);
    assert_eq!(who["user_id"], t.user_id.as_str());
    let dup = call(
        &mut c,
        "AUTH.SIGNUP",
        json!({"email": newbie, "password": PASSWORD}),
    )
    .await;
    assert_err(&dup, ErrorCode::Conflict, "the account exists now");
    let newbie = "newbie.code@example.org";
    let r = call(
        &mut c,
        "OTP.SEND",
        json!({"email": newbie, "create_user": true}),
    )
    .await;
    let code = inbox.next_to(newbie).await.code();
    let t = tokens(
        call(
            &mut c,
            "OTP.VERIFY",
            json!({"flow_id": flow_id(&r), "code": code}),
        )
        .await,
    );
    assert_eq!(me(&mut c, &t).await["email"], newbie);
}

// ---------------------------------------------------------------------------------------------
// 4. Races.

/// Runs `n` commands at once, each on its own connection, released together by a barrier.
async fn race(addr: SocketAddr, requests: Vec<(&'static str, Value)>) -> Vec<Response> {
    let barrier = Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(command, params)| {
            let b = barrier.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                b.wait().await;
                c.call(command, params).await.unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// How many answers had each outcome (`ok` or the error code).
fn tally(answers: &[Response]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in answers {
        let name = r
            .error_code()
            .map_or("ok".to_owned(), |c| c.as_str().to_owned());
        *out.entry(name).or_default() += 1;
    }
    out
}

fn winners(answers: Vec<Response>) -> Vec<SessionTokens> {
    answers.into_iter().filter(|r| r.ok).map(tokens).collect()
}

/// A fresh server for each race, so the per-client request limits of one race never meet the
/// requests of another (every connection comes from 127.0.0.1).
async fn race_server() -> (Server, Inbox, Client) {
    let server = Server::start_config(NO_COOLDOWN, &[]);
    let inbox = Inbox::outbox(&server.data_dir);
    let c = server.client().await;
    (server, inbox, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uses_of_one_link_or_code_sign_in_once() {
    let n = 50;

    // One link, 50 uses at once.
    let (server, mut inbox, mut c) = race_server().await;
    let email = "race.link@example.org";
    account(&server, email).await;
    let (_, link) = magic_link(&mut c, &mut inbox, json!({"email": email})).await;
    let verify = json!({"token": token_of(&link)});
    let answers = race(server.tcp, vec![("MAGIC.VERIFY", verify); n]).await;
    let outcomes = tally(&answers);
    eprintln!("{n} concurrent MAGIC.VERIFY: {outcomes:?}");
    assert_eq!(
        outcomes,
        BTreeMap::from([("ok".into(), 1), ("ALREADY_USED".into(), n - 1)])
    );
    let won = winners(answers);
    let sessions = as_user(&mut c, &won[0].access_token, "SESSION.LIST", json!({})).await;
    assert_eq!(
        sessions.data["sessions"].as_array().unwrap().len(),
        1,
        "one session: the sign-up's was revoked by the first proof, and no extra one"
    );

    // One code, 50 right answers at once.
    let (server, mut inbox, mut c) = race_server().await;
    let email = "race.code@example.org";
    account(&server, email).await;
    let (flow, code) = otp_code(&mut c, &mut inbox, email).await;
    let verify = json!({"flow_id": flow, "code": code});
    let answers = race(server.tcp, vec![("OTP.VERIFY", verify); n]).await;
    let outcomes = tally(&answers);
    eprintln!("{n} concurrent OTP.VERIFY with the right code: {outcomes:?}");
    assert_eq!(outcomes.get("ok"), Some(&1), "{outcomes:?}");
    assert!(
        outcomes
            .keys()
            .all(|k| ["ok", "ALREADY_USED", "TOO_MANY_ATTEMPTS"].contains(&k.as_str())),
        "{outcomes:?}"
    );
    let won = winners(answers);
    let sessions = as_user(&mut c, &won[0].access_token, "SESSION.LIST", json!({})).await;
    assert_eq!(sessions.data["sessions"].as_array().unwrap().len(), 1);

    // 50 wrong codes at once: exactly five are compared, one per attempt, whatever the timing.
    let (server, mut inbox, mut c) = race_server().await;
    account(&server, email).await;
    let (flow, code) = otp_code(&mut c, &mut inbox, email).await;
    let right: u32 = code.parse().unwrap();
    let guesses: Vec<_> = (1..=n as u32)
        .map(|k| {
            let guess = format!("{:06}", (right + k) % 1_000_000);
            ("OTP.VERIFY", json!({"flow_id": flow, "code": guess}))
        })
        .collect();
    let answers = race(server.tcp, guesses).await;
    let outcomes = tally(&answers);
    eprintln!("{n} concurrent wrong codes: {outcomes:?}");
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("INVALID_CREDENTIALS".into(), 5),
            ("TOO_MANY_ATTEMPTS".into(), n - 5)
        ])
    );
    let mut left: Vec<u64> = answers.iter().filter_map(attempts_left).collect();
    left.sort_unstable();
    assert_eq!(left, [0, 1, 2, 3, 4], "each attempt counted once");
    let r = call(&mut c, "OTP.VERIFY", json!({"flow_id": flow, "code": code})).await;
    assert_err(
        &r,
        ErrorCode::TooManyAttempts,
        "the right code after the race",
    );

    // A device-bound link: verifying (with the verifier) and approving race; one of them wins.
    let (server, mut inbox, mut c) = race_server().await;
    account(&server, email).await;
    let verifier = new_verifier("race");
    let (sent, link) = magic_link(
        &mut c,
        &mut inbox,
        json!({"email": email, "code_challenge": challenge_of(&verifier)}),
    )
    .await;
    let token = token_of(&link);
    let requests: Vec<_> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                (
                    "MAGIC.VERIFY",
                    json!({"token": token, "code_verifier": verifier}),
                )
            } else {
                ("MAGIC.APPROVE", json!({"token": token}))
            }
        })
        .collect();
    let answers = race(server.tcp, requests).await;
    let outcomes = tally(&answers);
    eprintln!("{n} concurrent MAGIC.VERIFY and MAGIC.APPROVE: {outcomes:?}");
    assert_eq!(
        outcomes,
        BTreeMap::from([("ok".into(), 1), ("ALREADY_USED".into(), n - 1)])
    );
    let approved = answers.iter().any(|r| r.ok && r.data["approved"] == true);
    let poll = call(
        &mut c,
        "MAGIC.POLL",
        json!({"flow_id": flow_id(&sent), "code_verifier": verifier}),
    )
    .await;
    if approved {
        assert_eq!(poll.data["status"], "complete", "{poll:?}");
    } else {
        assert_err(&poll, ErrorCode::AlreadyUsed, "poll after a direct sign-in");
    }

    // Two proofs for a new address, both allowed to create the account, used at once: one
    // account, both signed in to it.
    let (server, mut inbox, mut c) = race_server().await;
    let newbie = "race.newbie@example.org";
    let (_, link) = magic_link(
        &mut c,
        &mut inbox,
        json!({"email": newbie, "create_user": true}),
    )
    .await;
    let r = call(
        &mut c,
        "OTP.SEND",
        json!({"email": newbie, "create_user": true}),
    )
    .await;
    let code = inbox.next_to(newbie).await.code();
    let answers = race(
        server.tcp,
        vec![
            ("MAGIC.VERIFY", json!({"token": token_of(&link)})),
            ("OTP.VERIFY", json!({"flow_id": flow_id(&r), "code": code})),
        ],
    )
    .await;
    let both = winners(answers);
    assert_eq!(both.len(), 2, "both proofs sign in");
    assert_eq!(both[0].user_id, both[1].user_id, "one account");
}

// ---------------------------------------------------------------------------------------------
// 5. Crashes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_link_or_code_stays_used_after_a_crash_and_a_sent_link_survives_one() {
    let mut server = Server::start();
    let mut inbox = Inbox::outbox(&server.data_dir);
    let (a, b, d) = (
        "crash.link@example.org",
        "crash.code@example.org",
        "crash.later@example.org",
    );
    for e in [a, b, d] {
        account(&server, e).await;
    }
    let mut c = server.client().await;

    // Link: used, then SIGKILL right after the answer.
    let (_, link) = magic_link(&mut c, &mut inbox, json!({"email": a})).await;
    let token = token_of(&link);
    tokens(call(&mut c, "MAGIC.VERIFY", json!({"token": token})).await);
    server.kill();
    server.restart();
    let mut c = server.client().await;
    let r = call(&mut c, "MAGIC.VERIFY", json!({"token": token})).await;
    assert_err(&r, ErrorCode::AlreadyUsed, "link after the crash");
    assert_eq!(landing(&server, &link).await.status, 410);

    // Code: the same.
    let (flow, code) = otp_code(&mut c, &mut inbox, b).await;
    tokens(call(&mut c, "OTP.VERIFY", json!({"flow_id": flow, "code": code})).await);
    server.kill();
    server.restart();
    let mut c = server.client().await;
    let r = call(&mut c, "OTP.VERIFY", json!({"flow_id": flow, "code": code})).await;
    assert_err(&r, ErrorCode::AlreadyUsed, "code after the crash");

    // A link whose MAGIC.SEND was answered works after a crash.
    let (_, link) = magic_link(&mut c, &mut inbox, json!({"email": d})).await;
    server.kill();
    server.restart();
    let mut c = server.client().await;
    assert_landing_ok(&landing(&server, &link).await, d);
    let t = tokens(call(&mut c, "MAGIC.VERIFY", json!({"token": token_of(&link)})).await);
    assert_eq!(me(&mut c, &t).await["email"], d);
}

/// Mail queued when the server dies is delivered by the next start, also across a master-key
/// rotation of the stopped server: the SMTP server is down when the link is sent, the server
/// is killed, its master key rotated, the SMTP server comes up, and the restarted server
/// delivers the link, which signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_queued_at_a_crash_is_delivered_after_the_restart() {
    // A loopback port with nothing listening yet: delivery fails and is retried.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "{NO_COOLDOWN}smtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_tls = \"none\"\n"
    );
    let mut server = Server::start_config(&config, &[]);
    let email = "queued@example.org";
    account(&server, email).await;
    let mut c = server.client().await;
    let r = call(&mut c, "MAGIC.SEND", json!({"email": email})).await;
    assert!(r.ok, "{r:?}");
    // The first retry comes 0.5 s after the first attempt: kill before delivery can succeed.
    server.kill();
    let dir = server.data_dir.to_string_lossy().into_owned();
    let (code, out, err) = server.cli(&["admin", "rotate-master-key", "--data-dir", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 queued mails re-sealed"), "{out}");

    let sink = SmtpSink::start_on(port);
    let mut inbox = Inbox::at(sink.dir.clone());
    server.restart();
    let mail = inbox.next_to(email).await;
    let mut c = server.client().await;
    let t = tokens(call(&mut c, "MAGIC.VERIFY", json!({"token": mail.link_token()})).await);
    assert_eq!(me(&mut c, &t).await["email"], email);
    // Delivered once: nothing else arrives for the address.
    assert_eq!(inbox.settled_to(email).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 6. Guessing codes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_the_code_and_a_new_code_voids_the_old() {
    let mut server = Server::start_config(NO_COOLDOWN, &[]);
    let mut inbox = Inbox::outbox(&server.data_dir);
    let mut c = server.client().await;
    let email = "guess@example.org";
    account(&server, email).await;
    let (flow1, code1) = otp_code(&mut c, &mut inbox, email).await;
    let right: u32 = code1.parse().unwrap();
    let wrong: Vec<String> = (1..=5)
        .map(|k| format!("{:06}", (right + k * 7919) % 1_000_000))
        .collect();

    let malformed = ["12345", "1234567", "12345a", " 12345", "１２３４５６", ""];
    let mut expect_left = 4u64;
    for (i, guess) in wrong.iter().enumerate() {
        // Not six digits: refused before any attempt is spent.
        let m = call(
            &mut c,
            "OTP.VERIFY",
            json!({"flow_id": flow1, "code": malformed[i]}),
        )
        .await;
        assert_err(&m, ErrorCode::InvalidParams, malformed[i]);
        let r = call(
            &mut c,
            "OTP.VERIFY",
            json!({"flow_id": flow1, "code": guess}),
        )
        .await;
        assert_err(&r, ErrorCode::InvalidCredentials, "wrong code");
        assert_eq!(attempts_left(&r), Some(expect_left), "{r:?}");
        expect_left = expect_left.saturating_sub(1);
        if i == 2 {
            // Spent attempts are durable: a crash does not give them back.
            server.kill();
            server.restart();
            c = server.client().await;
        }
    }
    let m = call(
        &mut c,
        "OTP.VERIFY",
        json!({"flow_id": flow1, "code": malformed[5]}),
    )
    .await;
    assert_err(&m, ErrorCode::InvalidParams, "empty code");
    let r = call(
        &mut c,
        "OTP.VERIFY",
        json!({"flow_id": flow1, "code": code1}),
    )
    .await;
    assert_err(
        &r,
        ErrorCode::TooManyAttempts,
        "the right code after five wrong ones",
    );

    // A new code voids the old one; a newer one voids that.
    let (flow2, code2) = otp_code(&mut c, &mut inbox, email).await;
    let (flow3, code3) = otp_code(&mut c, &mut inbox, email).await;
    assert_ne!(flow2, flow3);
    let r = call(
        &mut c,
        "OTP.VERIFY",
        json!({"flow_id": flow1, "code": code1}),
    )
    .await;
    assert_err(&r, ErrorCode::Expired, "the locked code after a new one");
    let r = call(
        &mut c,
        "OTP.VERIFY",
        json!({"flow_id": flow2, "code": code2}),
    )
    .await;
    assert_err(&r, ErrorCode::Expired, "the replaced code, right as it is");
    let t = tokens(
        call(
            &mut c,
            "OTP.VERIFY",
            json!({"flow_id": flow3, "code": code3}),
        )
        .await,
    );
    assert_eq!(me(&mut c, &t).await["email"], email);
}

// ---------------------------------------------------------------------------------------------
// 7. Send limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_limits_apply_per_address_and_per_client_whether_or_not_the_account_exists() {
    // The default cooldown: one mail per address per 30 s, links and codes together.
    let server = Server::start();
    let mut inbox = Inbox::outbox(&server.data_dir);
    let mut c = server.client().await;
    let known = "limited@example.org";
    account(&server, known).await;
    for email in [known, "limited.unknown@example.org"] {
        let first = call(&mut c, "MAGIC.SEND", json!({"email": email})).await;
        assert!(first.ok, "{first:?}");
        for command in ["MAGIC.SEND", "OTP.SEND"] {
            let r = call(&mut c, command, json!({"email": email})).await;
            assert_err(&r, ErrorCode::RateLimited, command);
            let ms = retry_after_ms(&r);
            assert!((1..=30_000).contains(&ms), "{command} {email}: {ms}");
        }
    }
    inbox.next_to(known).await;
    assert_eq!(
        inbox.settled_to(known).await.len(),
        1,
        "a refused send mails nothing"
    );

    drop(server);

    // Concurrent sends to one address: the cooldown lets exactly one through.
    let server = Server::start();
    let mut inbox = Inbox::outbox(&server.data_dir);
    let racer = "send.race@example.org";
    account(&server, racer).await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let command = if i % 2 == 0 { "MAGIC.SEND" } else { "OTP.SEND" };
            (command, json!({"email": racer}))
        })
        .collect();
    let outcomes = tally(&race(server.tcp, requests).await);
    assert_eq!(
        outcomes,
        BTreeMap::from([("ok".into(), 1), ("RATE_LIMITED".into(), 19)])
    );
    inbox.next_to(racer).await;
    assert_eq!(inbox.settled_to(racer).await.len(), 1, "one mail");
    drop(server);

    // Per address per hour.
    let server = Server::start_config("send_cooldown_s = 0\nsends_per_address_per_hour = 3\n", &[]);
    let mut c = server.client().await;
    account(&server, known).await;
    for email in [known, "hourly.unknown@example.org"] {
        for (i, command) in ["MAGIC.SEND", "OTP.SEND", "MAGIC.SEND"].iter().enumerate() {
            let r = call(&mut c, command, json!({"email": email})).await;
            assert!(r.ok, "send {} to {email}: {r:?}", i + 1);
        }
        let r = call(&mut c, "OTP.SEND", json!({"email": email})).await;
        assert_err(&r, ErrorCode::RateLimited, "the fourth send in an hour");
        let ms = retry_after_ms(&r);
        assert!((1..=3_600_000).contains(&ms), "{ms}");
    }
    drop(server);

    // Per client per hour, whichever the address.
    let server = Server::start_config("send_cooldown_s = 0\nsends_per_client_per_hour = 2\n", &[]);
    let mut c = server.client().await;
    let r = call(&mut c, "MAGIC.SEND", json!({"email": "one@example.org"})).await;
    assert!(r.ok, "{r:?}");
    let r = call(&mut c, "OTP.SEND", json!({"email": "two@example.org"})).await;
    assert!(r.ok, "{r:?}");
    let mut other = server.client().await;
    let r = call(
        &mut other,
        "MAGIC.SEND",
        json!({"email": "three@example.org"}),
    )
    .await;
    assert_err(
        &r,
        ErrorCode::RateLimited,
        "a third send from the same client address",
    );
    let ms = retry_after_ms(&r);
    assert!((1..=3_600_000).contains(&ms), "{ms}");
    // Claiming another address in a header changes nothing.
    let r = http(
        server.http,
        "POST",
        "/api/v1/execute",
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", "198.51.100.23"),
            ("X-Real-IP", "198.51.100.23"),
            ("Forwarded", "for=198.51.100.23"),
        ],
        json!({"command": "OTP.SEND", "params": {"email": "four@example.org"}})
            .to_string()
            .as_bytes(),
    )
    .await
    .json();
    assert_eq!(r["error"]["code"], "RATE_LIMITED", "{r}");
}

// ---------------------------------------------------------------------------------------------
// 8. PKCE and cross-device approval.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_bound_links_need_the_verifier_and_approve_for_the_device_that_asked() {
    let server = Server::start_config(NO_COOLDOWN, &[]);
    let mut inbox = Inbox::outbox(&server.data_dir);
    let mut c = server.client().await;
    let email = "pkce@example.org";
    account(&server, email).await;

    let good = challenge_of(&new_verifier("malformed"));
    for bad in [
        String::new(),
        "abc".to_owned(),
        format!("{good}="),
        format!("{good}A"),
        good[..42].to_owned(),
        format!("{}+", &good[..42]),
        format!("{}/", &good[..42]),
    ] {
        let r = call(
            &mut c,
            "MAGIC.SEND",
            json!({"email": email, "code_challenge": bad}),
        )
        .await;
        assert_err(&r, ErrorCode::InvalidParams, &format!("challenge {bad:?}"));
    }

    // Same device: the verifier is required.
    let verifier = new_verifier("same device");
    let (_, link) = magic_link(
        &mut c,
        &mut inbox,
        json!({"email": email, "code_challenge": challenge_of(&verifier)}),
    )
    .await;
    let token = token_of(&link);
    let page = landing(&server, &link).await;
    assert_landing_ok(&page, email);
    assert!(String::from_utf8_lossy(&page.body).contains("data-bound=\"true\""));
    let r = call(&mut c, "MAGIC.VERIFY", json!({"token": token})).await;
    assert_err(&r, ErrorCode::InvalidCredentials, "no verifier");
    let r = call(
        &mut c,
        "MAGIC.VERIFY",
        json!({"token": token, "code_verifier": new_verifier("someone else")}),
    )
    .await;
    assert_err(&r, ErrorCode::InvalidCredentials, "wrong verifier");
    assert_landing_ok(&landing(&server, &link).await, email);
    let t = tokens(
        call(
            &mut c,
            "MAGIC.VERIFY",
            json!({"token": token, "code_verifier": verifier}),
        )
        .await,
    );
    assert_eq!(me(&mut c, &t).await["amr"], json!(["email"]));

    // Cross-device: the link approves; the device that asked collects the session.
    let verifier = new_verifier("asking device");
    let (sent, link) = magic_link(
        &mut c,
        &mut inbox,
        json!({"email": email, "code_challenge": challenge_of(&verifier)}),
    )
    .await;
    let flow = flow_id(&sent);
    let token = token_of(&link);
    let poll = |v: &str| json!({"flow_id": flow, "code_verifier": v});
    let r = call(&mut c, "MAGIC.POLL", poll(&verifier)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.data, json!({"status": "pending"}));
    let r = call(&mut c, "MAGIC.POLL", poll(&new_verifier("intruder"))).await;
    assert_err(&r, ErrorCode::InvalidCredentials, "poll, wrong verifier");

    let mut phone = server.client().await;
    let r = call(&mut phone, "MAGIC.APPROVE", json!({"token": token})).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.data, json!({"flow_id": flow, "approved": true}));
    assert_eq!(landing(&server, &link).await.status, 410);
    let r = call(&mut phone, "MAGIC.APPROVE", json!({"token": token})).await;
    assert_err(&r, ErrorCode::AlreadyUsed, "approve twice");
    let r = call(
        &mut phone,
        "MAGIC.VERIFY",
        json!({"token": token, "code_verifier": verifier}),
    )
    .await;
    assert_err(&r, ErrorCode::AlreadyUsed, "verify after approve");

    let r = call(&mut c, "MAGIC.POLL", poll(&new_verifier("intruder"))).await;
    assert_err(
        &r,
        ErrorCode::InvalidCredentials,
        "poll of an approved flow, wrong verifier",
    );
    let r = call(&mut c, "MAGIC.POLL", poll(&verifier)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.data["status"], "complete");
    let t: SessionTokens = serde_json::from_value(r.data.clone()).unwrap();
    let who = me(&mut c, &t).await;
    assert_eq!(who["email"], email);
    assert_eq!(who["amr"], json!(["email"]));
    assert_eq!(who["aal"], 1);
    let r = call(&mut c, "MAGIC.POLL", poll(&verifier)).await;
    assert_err(&r, ErrorCode::AlreadyUsed, "poll after completion");
    let r = call(&mut c, "MAGIC.POLL", poll(&new_verifier("intruder"))).await;
    assert_err(
        &r,
        ErrorCode::InvalidCredentials,
        "poll after completion, wrong verifier",
    );

    // A link without a challenge cannot be approved, and is still usable afterwards.
    let (sent, link) = magic_link(&mut c, &mut inbox, json!({"email": email})).await;
    let r = call(
        &mut phone,
        "MAGIC.APPROVE",
        json!({"token": token_of(&link)}),
    )
    .await;
    assert_err(&r, ErrorCode::InvalidParams, "approve an unbound link");
    let r = call(
        &mut c,
        "MAGIC.POLL",
        json!({"flow_id": flow_id(&sent), "code_verifier": verifier}),
    )
    .await;
    assert_err(&r, ErrorCode::InvalidCredentials, "poll an unbound flow");
    tokens(call(&mut c, "MAGIC.VERIFY", json!({"token": token_of(&link)})).await);

    // A newer link voids an older one, bound or not, even from another device.
    let verifier = new_verifier("older");
    let (older, older_link) = magic_link(
        &mut c,
        &mut inbox,
        json!({"email": email, "code_challenge": challenge_of(&verifier)}),
    )
    .await;
    let (_, newer_link) = magic_link(&mut c, &mut inbox, json!({"email": email})).await;
    assert_eq!(landing(&server, &older_link).await.status, 410);
    let r = call(
        &mut c,
        "MAGIC.POLL",
        json!({"flow_id": flow_id(&older), "code_verifier": verifier}),
    )
    .await;
    assert_err(&r, ErrorCode::Expired, "poll of a replaced flow");
    let r = call(
        &mut phone,
        "MAGIC.APPROVE",
        json!({"token": token_of(&older_link)}),
    )
    .await;
    assert_err(&r, ErrorCode::Expired, "approve a replaced link");
    let r = call(
        &mut c,
        "MAGIC.VERIFY",
        json!({"token": token_of(&older_link), "code_verifier": verifier}),
    )
    .await;
    assert_err(&r, ErrorCode::Expired, "verify a replaced link");
    tokens(
        call(
            &mut c,
            "MAGIC.VERIFY",
            json!({"token": token_of(&newer_link)}),
        )
        .await,
    );
}

// ---------------------------------------------------------------------------------------------
// 9. The redirect allow-list.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_must_match_the_allow_list_exactly() {
    let server = Server::start_config(
        "send_cooldown_s = 0\nsends_per_address_per_hour = 100\nredirect_allowlist = [\"https://app.example.com/auth/\"]\n",
        &[],
    );
    let mut inbox = Inbox::outbox(&server.data_dir);
    let mut c = server.client().await;
    let email = "redirect@example.org";
    account(&server, email).await;

    let target = "https://app.example.com/auth/callback?x=1";
    let (_, link) = magic_link(
        &mut c,
        &mut inbox,
        json!({"email": email, "redirect_url": target}),
    )
    .await;
    let page = landing(&server, &link).await;
    assert_landing_ok(&page, email);
    assert!(String::from_utf8_lossy(&page.body).contains(&format!("data-redirect=\"{target}\"")));
    let r = call(&mut c, "MAGIC.VERIFY", json!({"token": token_of(&link)})).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.data["redirect_url"], target);

    // What the requester controls is shown escaped, in the page and in the mail.
    let hostile = "\"><script>alert(1)</script>";
    let r = http(
        server.http,
        "POST",
        "/api/v1/execute",
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", hostile),
        ],
        json!({"command": "MAGIC.SEND", "params": {"email": email, "redirect_url": target}})
            .to_string()
            .as_bytes(),
    )
    .await
    .json();
    assert_eq!(r["ok"], true, "{r}");
    let mail = inbox.next_to(email).await;
    assert!(
        mail.text.contains(hostile),
        "the text part shows the agent as is"
    );
    assert!(!mail.html.contains("<script>"), "{}", mail.html);
    assert!(mail.html.contains("&lt;script&gt;"), "{}", mail.html);
    let page = landing(&server, &mail.link()).await;
    assert_landing_ok(&page, email);
    let body = String::from_utf8_lossy(&page.body);
    assert!(!body.contains("<script>alert"), "{body}");
    assert!(body.contains("&quot;&gt;&lt;script&gt;alert(1)"), "{body}");

    for bad in [
        "https://evil.example.com/auth/",
        "https://app.example.com/other",
        "https://app.example.com/auth",
        "https://app.example.com/authority",
        "https://app.example.com/auth/../other",
        "https://app.example.com/auth/%2e%2e/other",
        "https://app.example.com.evil.example/auth/x",
        "http://app.example.com/auth/x",
        "https://app.example.com:444/auth/x",
        "https://user@app.example.com/auth/x",
        "https://user:pw@app.example.com/auth/x",
        "https://app.example.com/auth/x#frag",
        "https://app.example.com/auth/x#",
        "//app.example.com/auth/x",
        "/auth/x",
        "javascript:alert(1)",
        "",
    ] {
        let r = call(
            &mut c,
            "MAGIC.SEND",
            json!({"email": email, "redirect_url": bad}),
        )
        .await;
        assert_err(&r, ErrorCode::InvalidParams, bad);
    }
    drop(server);

    // No allow-list: no redirect at all.
    let server = Server::start();
    let mut c = server.client().await;
    let r = call(
        &mut c,
        "MAGIC.SEND",
        json!({"email": email, "redirect_url": target}),
    )
    .await;
    assert_err(
        &r,
        ErrorCode::InvalidParams,
        "redirect without an allow-list",
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Account pre-hijacking.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proving_the_mailbox_evicts_whoever_signed_up_with_it_before() {
    let server = Server::start();
    let mut inbox = Inbox::outbox(&server.data_dir);
    let victim = "victim@example.org";
    let mut attacker = server.client().await;
    let planted = signup(&mut attacker, victim, Some(PASSWORD)).await;
    let who = me(&mut attacker, &planted).await;
    assert_eq!(who["email_verified"], false);
    assert!(login(&mut attacker, victim, PASSWORD).await.ok);

    let mut owner = server.client().await;
    let (_, link) = magic_link(&mut owner, &mut inbox, json!({"email": victim})).await;
    let t = tokens(
        call(
            &mut owner,
            "MAGIC.VERIFY",
            json!({"token": token_of(&link)}),
        )
        .await,
    );
    assert_eq!(t.user_id, planted.user_id);

    let r = as_user(&mut attacker, &planted.access_token, "USER.ME", json!({})).await;
    assert_err(&r, ErrorCode::Unauthenticated, "the planted session");
    let r = refresh(&mut attacker, &planted.refresh_token).await;
    assert_err(
        &r,
        ErrorCode::InvalidCredentials,
        "the planted refresh token",
    );
    let r = login(&mut attacker, victim, PASSWORD).await;
    assert_err(&r, ErrorCode::InvalidCredentials, "the planted password");
    let who = me(&mut owner, &t).await;
    assert_eq!(who["email_verified"], true);
    let sessions = as_user(&mut owner, &t.access_token, "SESSION.LIST", json!({})).await;
    assert_eq!(sessions.data["sessions"].as_array().unwrap().len(), 1);

    // A passwordless sign-up proves nothing: no password may be set from it.
    let mut c = server.client().await;
    let email = "unproven@example.org";
    let s = signup(&mut c, email, None).await;
    let who = me(&mut c, &s).await;
    assert_eq!((&who["aal"], &who["amr"]), (&json!(0), &json!([])));
    let r = as_user(
        &mut c,
        &s.access_token,
        "USER.SET_PASSWORD",
        json!({"new_password": PASSWORD}),
    )
    .await;
    assert_err(&r, ErrorCode::Forbidden, "set a password at aal 0");
    let r = login(&mut c, email, PASSWORD).await;
    assert_err(&r, ErrorCode::InvalidCredentials, "no password was set");
    // Once the mailbox is proven, it may.
    let (_, link) = magic_link(&mut c, &mut inbox, json!({"email": email})).await;
    let t = tokens(call(&mut c, "MAGIC.VERIFY", json!({"token": token_of(&link)})).await);
    let r = as_user(
        &mut c,
        &t.access_token,
        "USER.SET_PASSWORD",
        json!({"new_password": PASSWORD}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert!(login(&mut c, email, PASSWORD).await.ok);
}

/// The same eviction while the squatter keeps signing in with the planted password: a sign-in
/// that was checking the password while the mailbox was proven must not yield a session that
/// outlives the proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_sign_in_racing_the_first_proof_leaves_no_session_behind() {
    let server = Server::start();
    let mut inbox = Inbox::outbox(&server.data_dir);
    let victim = "raced.victim@example.org";
    let mut c = server.client().await;
    signup(&mut c, victim, Some(PASSWORD)).await;
    let (_, link) = magic_link(&mut c, &mut inbox, json!({"email": victim})).await;

    // Four connections sign in over and over (at most 15 times each, well under the
    // per-client request limit) until the owner's proof has been answered.
    let proven = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(64);
    let squatters: Vec<_> = (0..4)
        .map(|_| {
            let (addr, proven, started) = (server.tcp, proven.clone(), started_tx.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                let mut sessions = Vec::new();
                for _ in 0..15 {
                    if proven.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let r = login(&mut c, victim, PASSWORD).await;
                    if r.ok {
                        sessions.push(tokens(r));
                        let _ = started.try_send(());
                    }
                }
                sessions
            })
        })
        .collect();
    drop(started_tx);
    // Let the sign-ins get going before the owner clicks.
    for _ in 0..4 {
        started_rx
            .recv()
            .await
            .expect("the planted password signs in");
    }
    let owner = tokens(call(&mut c, "MAGIC.VERIFY", json!({"token": token_of(&link)})).await);
    proven.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut planted = Vec::new();
    for s in squatters {
        planted.extend(s.await.unwrap());
    }
    assert!(!planted.is_empty());

    // AUTH.LOGIN verifies the password against the account as read before argon2; a sign-in
    // whose read came before MAGIC.VERIFY cleared the unverified password must not keep a
    // session: the pre-hijacking defence must hold against repeated sign-ins.
    let mut survivors = Vec::new();
    for t in &planted {
        let r = as_user(&mut c, &t.access_token, "USER.ME", json!({})).await;
        if r.ok {
            survivors.push(t.session_id.clone());
        }
    }
    let listed = as_user(&mut c, &owner.access_token, "SESSION.LIST", json!({})).await;
    assert!(
        survivors.is_empty(),
        "{} of {} sessions opened with the planted password outlive the owner's proof: {survivors:?}; \
         the owner's SESSION.LIST shows {}",
        survivors.len(),
        planted.len(),
        listed.data["sessions"].as_array().map_or(0, Vec::len)
    );
    let r = login(&mut c, victim, PASSWORD).await;
    assert_err(&r, ErrorCode::InvalidCredentials, "the planted password");
}

// ---------------------------------------------------------------------------------------------
// 11. No link, token or code in any log.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_link_token_or_code_reaches_the_log_or_tracing() {
    let mut server = Server::start_config(NO_COOLDOWN, &[]);
    let mut inbox = Inbox::outbox(&server.data_dir);
    let mut c = server.client().await;
    let email = "secrets@example.org";
    let s = account(&server, email).await;
    let mut secrets: Vec<String> = vec![
        s.access_token.expose().into(),
        s.refresh_token.expose().into(),
    ];
    let mut codes: Vec<String> = Vec::new();

    // A link: looked at over HTTP, a forged variant tried, then used over HTTP.
    let (_, link) = magic_link(&mut c, &mut inbox, json!({"email": email})).await;
    let token = token_of(&link);
    assert_landing_ok(&landing(&server, &link).await, email);
    let last = if token.ends_with('A') { "B" } else { "A" };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    let r = exec_http(server.http, "MAGIC.VERIFY", json!({"token": forged}), None).await;
    assert_eq!(r["error"]["code"], "INVALID_CREDENTIALS");
    assert_eq!(
        http(
            server.http,
            "GET",
            &format!("/auth/magic?token={forged}"),
            &[],
            b""
        )
        .await
        .status,
        410
    );
    let r = exec_http(server.http, "MAGIC.VERIFY", json!({"token": token}), None).await;
    let t: SessionTokens = serde_json::from_value(r["data"].clone()).unwrap();
    secrets.extend([
        link.clone(),
        token.clone(),
        forged,
        t.access_token.expose().into(),
        t.refresh_token.expose().into(),
    ]);

    // A device-bound link, approved and polled.
    let verifier = new_verifier("secrets");
    let (sent, link) = magic_link(
        &mut c,
        &mut inbox,
        json!({"email": email, "code_challenge": challenge_of(&verifier)}),
    )
    .await;
    let token = token_of(&link);
    let wrong_verifier = new_verifier("wrong");
    call(
        &mut c,
        "MAGIC.VERIFY",
        json!({"token": token, "code_verifier": wrong_verifier}),
    )
    .await;
    assert!(
        call(&mut c, "MAGIC.APPROVE", json!({"token": token}))
            .await
            .ok
    );
    let r = call(
        &mut c,
        "MAGIC.POLL",
        json!({"flow_id": flow_id(&sent), "code_verifier": verifier}),
    )
    .await;
    let t: SessionTokens = serde_json::from_value(r.data.clone()).unwrap();
    secrets.extend([
        link,
        token,
        verifier,
        wrong_verifier,
        t.access_token.expose().into(),
        t.refresh_token.expose().into(),
    ]);

    // Codes: a wrong one, a right one, one left unused, one sent as a number.
    let (flow, code) = otp_code(&mut c, &mut inbox, email).await;
    let wrong = format!(
        "{:06}",
        (code.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    let r = call(
        &mut c,
        "OTP.VERIFY",
        json!({"flow_id": flow, "code": wrong}),
    )
    .await;
    assert_err(&r, ErrorCode::InvalidCredentials, "wrong code");
    let r = call(
        &mut c,
        "OTP.VERIFY",
        json!({"flow_id": flow, "code": code.parse::<u32>().unwrap()}),
    )
    .await;
    assert_err(&r, ErrorCode::InvalidParams, "a number is not a code");
    let r = exec_http(
        server.http,
        "OTP.VERIFY",
        json!({"flow_id": flow, "code": code}),
        None,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let t: SessionTokens = serde_json::from_value(r["data"].clone()).unwrap();
    secrets.extend([
        t.access_token.expose().into(),
        t.refresh_token.expose().into(),
    ]);
    let (_, unused) = otp_code(&mut c, &mut inbox, email).await;
    codes.extend([code, wrong, unused]);
    secrets.push(server.operator_token().expose().into());

    let events = all_events(&server).await;
    let log = serde_json::to_string(&events).unwrap();
    for name in [
        "magic.sent",
        "magic.verified",
        "magic.approved",
        "otp.sent",
        "otp.failed",
        "otp.verified",
    ] {
        assert!(log.contains(name), "the log records {name}");
    }
    assert!(server.stop().success());
    let tracing = server.stderr_text();
    assert!(
        tracing.contains("DEBUG"),
        "tracing is captured at debug level"
    );
    assert!(
        tracing.contains("mail delivered"),
        "mail delivery is traced"
    );
    let (status, offline, err) = server.cli(&[
        "log",
        "tail",
        "--data-dir",
        &server.data_dir.to_string_lossy(),
        "--json",
    ]);
    assert_eq!(status, 0, "{err}");
    assert!(offline.contains("otp.verified"));

    for (place, text) in [
        ("the event log", &log),
        ("the stored log", &offline),
        ("tracing output", &tracing),
    ] {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a secret in {place}: {s}");
        }
        let runs = standalone_digit_runs(text);
        for code in &codes {
            assert!(!runs.contains(code.as_str()), "the code {code} in {place}");
        }
    }
}
