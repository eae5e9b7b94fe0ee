//! `portcullis admin export` / `admin import` through the real binary: a sled deployment with
//! accounts on every factor moves to PostgreSQL and back, and every factor enrolled (or every
//! link and code sent) before a move still signs in after it, with the same event chain.

use crate::harness::{as_user, run_cli_env, tokens, Server};
use crate::inbox::{token_of, Inbox};
use portcullis_client::Client;
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::{ErrorCode, Response, Secret};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

const PW: &str = "correct horse battery staple";

fn origin() -> Url {
    // The default relying party (`rp_origins`), whatever port the server listens on.
    Url::parse("http://localhost:7421").unwrap()
}

fn oathtool(secret_b32: &str) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", secret_b32])
        .output()
        .expect("oathtool is installed");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits (bounded, under 31 s) for the next 30 s step, so a TOTP code is not a replay of the
/// step used before.
async fn next_step() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.as_millis() % 30_000;
    tokio::time::sleep(std::time::Duration::from_millis(
        u64::try_from(30_000 - into).unwrap() + 50,
    ))
    .await;
}

async fn call(c: &mut Client, command: &str, params: Value) -> Response {
    c.call(command, params).await.unwrap()
}

fn access(t: &SessionTokens) -> Secret {
    t.access_token.clone()
}

/// The accounts, and what each needs to sign in again.
struct Fixture {
    totp_secret: String,
    recovery: Vec<String>,
    soft: SoftPasskey,
    /// A refresh token issued before the move.
    refresh: Secret,
    /// A magic link and an email code sent before the first move, used after it.
    link: String,
    code: (String, String),
}

/// Signs up one account per factor on `server` and leaves a link and a code unused.
async fn enrol(server: &Server) -> Fixture {
    let mut c = server.client().await;
    let pw = tokens(
        call(
            &mut c,
            "AUTH.SIGNUP",
            json!({"email": "pw@example.org", "password": PW}),
        )
        .await,
    );

    // Password + TOTP, with recovery codes (the code from an independent implementation).
    let t = tokens(
        call(
            &mut c,
            "AUTH.SIGNUP",
            json!({"email": "totp@example.org", "password": PW}),
        )
        .await,
    );
    let e = as_user(&mut c, &access(&t), "TOTP.ENROLL", json!({})).await;
    assert!(e.ok, "{e:?}");
    let totp_secret = e.data["secret"].as_str().unwrap().to_owned();
    let r = as_user(
        &mut c,
        &access(&t),
        "TOTP.CONFIRM",
        json!({"enrollment_id": e.data["enrollment_id"], "code": oathtool(&totp_secret)}),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let recovery: Vec<String> = r.data["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();

    // An account with a passkey, signed by a software authenticator that the
    // test keeps across the moves.
    let p = tokens(
        call(
            &mut c,
            "AUTH.SIGNUP",
            json!({"email": "passkey@example.org", "password": PW}),
        )
        .await,
    );
    let mut soft = SoftPasskey::new(true);
    let b = as_user(
        &mut c,
        &access(&p),
        "PASSKEY.REGISTER.BEGIN",
        json!({"name": "Laptop"}),
    )
    .await;
    assert!(b.ok, "{b:?}");
    // The software authenticator keeps no resident keys; sign-in is by address.
    let mut options = b.data["options"].clone();
    options["publicKey"]["authenticatorSelection"]["residentKey"] = json!("discouraged");
    options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = json!(false);
    let ccr: CreationChallengeResponse = serde_json::from_value(options).unwrap();
    let cred = soft.do_registration(origin(), ccr).unwrap();
    let f = as_user(
        &mut c,
        &access(&p),
        "PASSKEY.REGISTER.FINISH",
        json!({"ceremony_id": b.data["ceremony_id"], "credential": cred}),
    )
    .await;
    assert!(f.ok, "{f:?}");

    // Passwordless accounts for magic links and email codes: one of each is sent before each
    // move and used after it.
    for email in [
        "magic@example.org",
        "code@example.org",
        "magic2@example.org",
        "code2@example.org",
    ] {
        tokens(call(&mut c, "AUTH.SIGNUP", json!({"email": email})).await);
    }
    let (link, code) = send_link_and_code(server, "").await;

    Fixture {
        totp_secret,
        recovery,
        soft,
        refresh: pw.refresh_token.clone(),
        link,
        code,
    }
}

/// Sends a magic link to `magic{round}@example.org` and a code to `code{round}@example.org`;
/// returns the link and (flow id, code) from the server's outbox.
async fn send_link_and_code(server: &Server, round: &str) -> (String, (String, String)) {
    let mut c = server.client().await;
    let mut inbox = Inbox::outbox(&server.data_dir);
    let (magic, code) = (
        format!("magic{round}@example.org"),
        format!("code{round}@example.org"),
    );
    let sent = call(&mut c, "MAGIC.SEND", json!({"email": magic})).await;
    assert!(sent.ok, "{sent:?}");
    let link = inbox.next_to(&magic).await.link();
    let sent = call(&mut c, "OTP.SEND", json!({"email": code})).await;
    assert!(sent.ok, "{sent:?}");
    let flow = sent.data["flow_id"].as_str().unwrap().to_owned();
    (link, (flow, inbox.next_to(&code).await.code()))
}

/// Signs in with the link and the code sent before the move.
async fn sign_in_by_mail(server: &Server, f: &Fixture) {
    let mut c = server.client().await;
    let t = tokens(call(&mut c, "MAGIC.VERIFY", json!({"token": token_of(&f.link)})).await);
    assert_eq!(me(&mut c, &t).await["amr"], json!(["email"]));
    let (flow, code) = f.code.clone();
    let t = tokens(call(&mut c, "OTP.VERIFY", json!({"flow_id": flow, "code": code})).await);
    assert_eq!(me(&mut c, &t).await["amr"], json!(["email"]));
}

/// Every byte string the export file carries: keys, values and event records, decoded.
fn decoded_contents(file: &Path) -> Vec<Vec<u8>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for field in ["key", "value", "record"] {
            if let Some(s) = v[field].as_str() {
                out.push(b64.decode(s).unwrap());
            }
        }
    }
    out
}

async fn me(c: &mut Client, t: &SessionTokens) -> Value {
    let r = as_user(c, &access(t), "USER.ME", json!({})).await;
    assert!(r.ok, "{r:?}");
    r.data
}

async fn password_login(c: &mut Client, email: &str) -> Response {
    call(c, "AUTH.LOGIN", json!({"email": email, "password": PW})).await
}

/// The second factor after a password: `MFA_REQUIRED`, then `method` with `code`.
async fn second_factor(c: &mut Client, method: &str, code: &str) -> SessionTokens {
    let r = password_login(c, "totp@example.org").await;
    assert_eq!(r.error_code(), Some(ErrorCode::MfaRequired), "{r:?}");
    let d = r.error.unwrap().details.unwrap();
    let v = call(
        c,
        "MFA.VERIFY",
        json!({"mfa_token": d["mfa_token"], "method": method, "code": code}),
    )
    .await;
    tokens(v)
}

/// Signs in with a password, TOTP, a recovery code and the passkey created before the moves.
async fn sign_in_with_enrolled_factors(server: &Server, f: &mut Fixture, recovery_code: usize) {
    let mut c = server.client().await;
    let t = tokens(password_login(&mut c, "pw@example.org").await);
    assert_eq!(me(&mut c, &t).await["amr"], json!(["pwd"]));

    next_step().await;
    let t = second_factor(&mut c, "totp", &oathtool(&f.totp_secret)).await;
    assert_eq!(me(&mut c, &t).await["aal"], 2);
    let t = second_factor(&mut c, "recovery_code", &f.recovery[recovery_code]).await;
    assert_eq!(
        me(&mut c, &t).await["amr"],
        json!(["pwd", "recovery", "mfa"])
    );
    // A recovery code used before the move stays used.
    if recovery_code > 0 {
        let r = password_login(&mut c, "totp@example.org").await;
        let d = r.error.unwrap().details.unwrap();
        let again = call(
            &mut c,
            "MFA.VERIFY",
            json!({"mfa_token": d["mfa_token"], "method": "recovery_code",
                   "code": f.recovery[recovery_code - 1]}),
        )
        .await;
        assert_eq!(again.error_code(), Some(ErrorCode::InvalidCredentials));
    }

    let b = call(
        &mut c,
        "PASSKEY.LOGIN.BEGIN",
        json!({"email": "passkey@example.org"}),
    )
    .await;
    assert!(b.ok, "{b:?}");
    let rcr: RequestChallengeResponse = serde_json::from_value(b.data["options"].clone()).unwrap();
    let assertion = f.soft.do_authentication(origin(), rcr).unwrap();
    let t = tokens(
        call(
            &mut c,
            "PASSKEY.LOGIN.FINISH",
            json!({"ceremony_id": b.data["ceremony_id"], "credential": assertion}),
        )
        .await,
    );
    let who = me(&mut c, &t).await;
    assert_eq!((&who["aal"], &who["amr"][0]), (&json!(2), &json!("hwk")));
}

/// Runs the CLI with (or without) a database.
fn cli(args: &[&str], database_url: Option<&str>) -> (i32, String, String) {
    let envs: Vec<(&str, &str)> = database_url
        .iter()
        .map(|u| ("PORTCULLIS_DATABASE_URL", *u))
        .collect();
    run_cli_env(args, &envs)
}

/// Every event of a stopped deployment, as `log tail --json` prints them offline.
fn offline_events(dir: &Path, database_url: Option<&str>) -> Vec<String> {
    let (code, out, err) = cli(
        &[
            "log",
            "tail",
            "--data-dir",
            dir.to_str().unwrap(),
            "--from",
            "1",
            "--json",
        ],
        database_url,
    );
    assert_eq!(code, 0, "{err}");
    out.lines().map(str::to_owned).collect()
}

fn offline_verify(dir: &Path, database_url: Option<&str>) -> Value {
    let (code, out, err) = cli(
        &["log", "verify", "--data-dir", dir.to_str().unwrap()],
        database_url,
    );
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

fn export(dir: &Path, database_url: Option<&str>, out: &Path) {
    let (code, stdout, err) = cli(
        &[
            "admin",
            "export",
            "--data-dir",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        database_url,
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("as sensitive as the database"), "{stdout}");
}

fn import(dir: &Path, database_url: Option<&str>, file: &Path) -> (i32, String, String) {
    cli(
        &[
            "admin",
            "import",
            "--data-dir",
            dir.to_str().unwrap(),
            "--in",
            file.to_str().unwrap(),
        ],
        database_url,
    )
}

fn copy_keys(from: &Path, to: &Path) {
    for f in ["master.key", "operator.token"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// Imports `file` with the key files of `keys`, in PostgreSQL (`Some`) or sled, checks that
/// the log holds exactly `events` (the source's, as `log tail --json` printed them: same seq,
/// prev, hash and fields) and verifies, then starts a node on it.
fn start_imported(
    keys: &Path,
    database_url: Option<String>,
    file: &Path,
    events: &[String],
) -> Server {
    let url = database_url.clone();
    Server::start_prepared(database_url, |dir| {
        copy_keys(keys, dir);
        let (code, out, err) = import(dir, url.as_deref(), file);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("imported "), "{out}");
        assert_eq!(offline_events(dir, url.as_deref()), events);
        assert_eq!(offline_verify(dir, url.as_deref())["valid"], true);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_deployment_moves_to_postgres_and_back_and_every_factor_still_signs_in() {
    let tmp = tempfile::tempdir().unwrap();
    // 1. sled, with every factor, and a pruned log.
    let mut sled = Server::start_prepared(None, |_| {});
    let mut f = enrol(&sled).await;
    let mut op = sled.operator_client().await;
    let info: Value = op.call_ok("SYS.INFO", json!({})).await.unwrap();
    let through = info["log_head_seq"].as_u64().unwrap() / 2;
    let pruned: Value = op
        .call_ok("LOG.PRUNE", json!({"through_seq": through}))
        .await
        .unwrap();
    assert!(pruned["pruned"].as_u64().unwrap() > 0);
    sled.stop();
    let sled_events = offline_events(&sled.data_dir, None);
    let sled_report = offline_verify(&sled.data_dir, None);
    assert_eq!(sled_report["first_seq"], through + 1);

    // 2. Exported, imported into a fresh PostgreSQL database with the same key files.
    let to_pg = tmp.path().join("to-postgres.ndjson");
    export(&sled.data_dir, None, &to_pg);
    // No secret in clear: not the key files, a password, a TOTP secret or a link in flight (a
    // 6-digit code is too short to look for in every byte).
    let secrets: Vec<String> = vec![
        std::fs::read_to_string(sled.data_dir.join("master.key"))
            .unwrap()
            .trim()
            .to_owned(),
        sled.operator_token().expose().to_owned(),
        PW.to_owned(),
        f.totp_secret.clone(),
        token_of(&f.link),
    ];
    let contents = decoded_contents(&to_pg);
    assert!(contents.len() > 100, "{} byte strings", contents.len());
    for secret in &secrets {
        let needle = secret.as_bytes();
        assert!(
            !contents
                .iter()
                .any(|c| c.windows(needle.len()).any(|w| w == needle)),
            "a secret of {} bytes in the export",
            needle.len()
        );
    }

    let url = portcullis_testdb::cluster().fresh_database();
    let mut pg = start_imported(&sled.data_dir, Some(url.clone()), &to_pg, &sled_events);

    // Refusals: a non-empty target, a damaged file (the database it was refused for stays empty).
    let (code, _, err) = import(&pg.data_dir, Some(&url), &to_pg);
    assert_eq!(code, 2);
    assert!(err.contains("not empty"), "{err}");
    let text = std::fs::read_to_string(&to_pg).unwrap();
    let damaged = tmp.path().join("damaged.ndjson");
    let line = text
        .lines()
        .position(|l| l.contains("\"table\":\"users\""))
        .unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let row: Value = serde_json::from_str(&lines[line]).unwrap();
    let value = row["value"].as_str().unwrap();
    // Another valid base64 value of the same length: only the digest can tell.
    let flipped = if value.starts_with('A') { "B" } else { "A" };
    lines[line] =
        json!({"table": "users", "key": row["key"], "value": format!("{flipped}{}", &value[1..])})
            .to_string();
    std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();
    let empty = portcullis_testdb::cluster().fresh_database();
    let (code, _, err) = import(&pg.data_dir, Some(&empty), &damaged);
    assert_eq!(code, 2);
    assert!(err.contains("digest does not match"), "{err}");
    let db = empty.rsplit('/').next().unwrap();
    // Refused before the database was touched: not even the schema was made.
    assert_eq!(
        portcullis_testdb::cluster().psql(
            db,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ),
        "0"
    );

    // 3. On PostgreSQL: the link and code sent before the move, the refresh token, and every
    // enrolled factor; the chain is the same and goes on from the same head.
    sign_in_by_mail(&pg, &f).await;
    let mut c = pg.client().await;
    let refreshed = tokens(
        call(
            &mut c,
            "AUTH.REFRESH",
            json!({"refresh_token": f.refresh.expose()}),
        )
        .await,
    );
    f.refresh = refreshed.refresh_token.clone();
    sign_in_with_enrolled_factors(&pg, &mut f, 0).await;
    let mut op = pg.operator_client().await;
    let report: Value = op.call_ok("LOG.VERIFY", json!({})).await.unwrap();
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["first_seq"], through + 1);
    assert!(report["head_seq"].as_u64().unwrap() > sled_report["head_seq"].as_u64().unwrap());
    // A link and a code sent on PostgreSQL, used on sled.
    (f.link, f.code) = send_link_and_code(&pg, "2").await;
    pg.stop();
    let pg_events = offline_events(&pg.data_dir, Some(&url));
    assert_eq!(pg_events[..sled_events.len()], sled_events[..]);

    // 4. Back to sled, with the same checks (a new link instead of the one used).
    let to_sled = tmp.path().join("to-sled.ndjson");
    export(&pg.data_dir, Some(&url), &to_sled);
    let back = start_imported(&pg.data_dir, None, &to_sled, &pg_events);
    sign_in_with_enrolled_factors(&back, &mut f, 1).await;
    let mut c = back.client().await;
    let t = tokens(
        call(
            &mut c,
            "AUTH.REFRESH",
            json!({"refresh_token": f.refresh.expose()}),
        )
        .await,
    );
    assert_eq!(me(&mut c, &t).await["email"], "pw@example.org");
    sign_in_by_mail(&back, &f).await;
    let mut op = back.operator_client().await;
    let report: Value = op.call_ok("LOG.VERIFY", json!({})).await.unwrap();
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["first_seq"], through + 1);
}
