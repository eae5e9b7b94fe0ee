//! `PASSKEY.REGISTER.BEGIN/FINISH`, `PASSKEY.LIST`, `PASSKEY.RENAME`, `PASSKEY.REMOVE`: the
//! passkeys of the signed-in user. Signing in with one is `crate::signin::passkey`.

use super::{
    self as passkeys, begin, ceremony, credential_id_text, parse_registration, refused, take,
    user_handle, CeremonyKind, PasskeyRecord,
};
use crate::base::caller::{RateClass, Requirement};
use crate::base::clock::rfc3339_ms;
use crate::identity::accounts::{get_user, notify};
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::passkey::{
    self, Ceremony, FinishParams, PasskeyInfo, PasskeyList, RegisterBeginParams, RemoveParams,
    RenameParams,
};
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::ErrorCode;
use serde_json::json;
use time::OffsetDateTime;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(
            passkey::REGISTER_BEGIN,
            Requirement::UserStepUp,
            RateClass::Account,
            register_begin,
        )
        .enrolment_allowed(),
        CommandSpec::new(
            passkey::REGISTER_FINISH,
            Requirement::UserStepUp,
            RateClass::Account,
            register_finish,
        )
        .enrolment_allowed(),
        CommandSpec::new(passkey::LIST, Requirement::User, RateClass::Account, list).reads_only(),
        CommandSpec::new(
            passkey::RENAME,
            Requirement::User,
            RateClass::Account,
            rename,
        ),
        CommandSpec::new(
            passkey::REMOVE,
            Requirement::UserStepUp,
            RateClass::Account,
            remove,
        ),
    ]
}

const MAX_NAME: usize = 64;

fn check_name(name: Option<String>) -> Result<String, CommandError> {
    let n = name.unwrap_or_else(|| "Passkey".into()).trim().to_owned();
    if n.is_empty() || n.chars().count() > MAX_NAME || n.chars().any(char::is_control) {
        return Err(CommandError::invalid_params(format!(
            "name must be 1 to {MAX_NAME} characters without control characters"
        )));
    }
    Ok(n)
}

/// `PASSKEY.REGISTER.BEGIN` — user at AAL1 or more (allowed in an enrolment-only session).
/// Creation options that exclude the user's existing passkeys and require a discoverable
/// credential (so usernameless sign-in works) and user verification.
async fn register_begin(ctx: Ctx, p: RegisterBeginParams) -> Result<Ceremony, CommandError> {
    let me = ctx.user()?.clone();
    if me.aal < 1 {
        return Err(CommandError::new(
            ErrorCode::Forbidden,
            "sign in with a link, code or passkey first",
        )
        .with_details(json!({"reason": "proof_required"})));
    }
    let name = check_name(p.name)?;
    let user = get_user(ctx.app.store.as_ref(), &me.user_id)
        .await?
        .ok_or_else(|| CommandError::unauthenticated("the account no longer exists"))?;
    let exclude: Vec<_> = passkeys::list(&ctx, &me.user_id)
        .await?
        .iter()
        .map(|p| p.passkey.cred_id().clone())
        .collect();
    let display = user
        .display_name
        .clone()
        .unwrap_or_else(|| user.email.clone());
    let (ccr, state) = ctx
        .app
        .webauthn
        .start_passkey_registration(
            user_handle(&me.user_id)?,
            &user.email,
            &display,
            Some(exclude),
        )
        .map_err(|e| refused(&ctx, e))?;
    let mut options = serde_json::to_value(ccr).map_err(|_| CommandError::internal())?;
    // Discoverable credentials, so the passkey also signs in without an email.
    if let Some(sel) = options.pointer_mut("/publicKey/authenticatorSelection") {
        sel["residentKey"] = json!("required");
        sel["requireResidentKey"] = json!(true);
    }
    let id = begin(
        &ctx,
        CeremonyKind::Register {
            user_id: me.user_id.clone(),
            name,
            state,
        },
    )
    .await?;
    ctx.audit.event("passkey.challenge_created");
    Ok(ceremony(id, options))
}

fn info(p: &PasskeyRecord) -> PasskeyInfo {
    let t = |s: i64| {
        rfc3339_ms(OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH))
    };
    PasskeyInfo {
        credential_id: credential_id_text(p.passkey.cred_id()),
        name: p.name.clone(),
        created_at: t(p.created_at),
        last_used_at: p.last_used_at.map(t),
        backup_eligible: p.backup_eligible,
        backup_state: p.backup_state,
    }
}

/// `PASSKEY.REGISTER.FINISH` — user. Verifies the browser's answer (origin, rp id, challenge,
/// user verification) and stores the passkey. The ceremony is single use (`ALREADY_USED`),
/// expires after 5 minutes (`EXPIRED`) and belongs to the user who began it.
async fn register_finish(ctx: Ctx, p: FinishParams) -> Result<PasskeyInfo, CommandError> {
    let me = ctx.user()?.clone();
    let credential = parse_registration(p.credential)?;
    let CeremonyKind::Register {
        user_id,
        name,
        state,
    } = take(&ctx, &p.ceremony_id).await?
    else {
        return Err(CommandError::new(
            ErrorCode::InvalidCredentials,
            "this ceremony is not a registration",
        ));
    };
    if user_id != me.user_id {
        return Err(CommandError::new(
            ErrorCode::InvalidCredentials,
            "this ceremony belongs to another account",
        ));
    }
    let pk = ctx
        .app
        .webauthn
        .finish_passkey_registration(&credential, &state)
        .map_err(|e| refused(&ctx, e))?;
    let rec = PasskeyRecord {
        passkey: pk,
        name,
        created_at: ctx.now().unix_timestamp(),
        last_used_at: None,
        // Learned from the authenticator's flags at each sign-in.
        backup_eligible: false,
        backup_state: false,
    };
    passkeys::add(&ctx, &me.user_id, &rec).await?;
    ctx.audit.event("passkey.registered");
    ctx.audit
        .note("credential_id", credential_id_text(rec.passkey.cred_id()));
    Ok(info(&rec))
}

/// `PASSKEY.LIST` — user. The caller's passkeys, oldest first.
async fn list(ctx: Ctx, _p: NoParams) -> Result<PasskeyList, CommandError> {
    let me = ctx.user()?.clone();
    let passkeys = passkeys::list(&ctx, &me.user_id)
        .await?
        .iter()
        .map(info)
        .collect();
    Ok(PasskeyList { passkeys })
}

/// `PASSKEY.RENAME` — user. `NOT_FOUND` for a passkey that is not the caller's.
async fn rename(ctx: Ctx, p: RenameParams) -> Result<PasskeyInfo, CommandError> {
    let me = ctx.user()?.clone();
    let name = check_name(Some(p.name))?;
    let key = super::passkey_key(&me.user_id, &p.credential_id);
    let rec = super::PASSKEYS
        .update(ctx.app.store.as_ref(), &key, |r: &mut PasskeyRecord| {
            r.name = name.clone();
            Ok::<_, CommandError>(true)
        })
        .await?
        .ok_or_else(|| CommandError::new(ErrorCode::NotFound, "no such passkey"))?;
    Ok(info(&rec))
}

/// `PASSKEY.REMOVE` — user after step-up. Removes one of the caller's passkeys (`NOT_FOUND`
/// otherwise), logs `factor.removed` and tells the user by mail. The account can always still
/// sign in by email (link or code), so removing the last passkey never locks it out.
async fn remove(ctx: Ctx, p: RemoveParams) -> Result<PasskeyList, CommandError> {
    let me = ctx.user()?.clone();
    if !passkeys::remove(&ctx, &me.user_id, &p.credential_id).await? {
        return Err(CommandError::new(ErrorCode::NotFound, "no such passkey"));
    }
    ctx.audit.event("factor.removed");
    ctx.audit.note("factor", "passkey");
    ctx.audit.note("credential_id", p.credential_id.clone());
    notify(
        &ctx,
        &me.user_id,
        "A passkey was removed",
        "It can no longer be used to sign in to this account.",
    )
    .await?;
    let passkeys = passkeys::list(&ctx, &me.user_id)
        .await?
        .iter()
        .map(info)
        .collect();
    Ok(PasskeyList { passkeys })
}

#[cfg(test)]
mod tests {
    use crate::factors::passkey as passkeys;
    use crate::testkit::Bench;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use portcullis_protocol::ErrorCode;
    use portcullis_store::Table;
    use serde_json::{json, Value};
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

    const PW: &str = "correct horse battery staple";

    fn origin() -> Url {
        Url::parse("http://localhost:7421").unwrap()
    }

    async fn signed_up(b: &Bench, email: &str) -> String {
        let s = b
            .ok("AUTH.SIGNUP", json!({"email": email, "password": PW}), None)
            .await;
        s["access_token"].as_str().unwrap().to_owned()
    }

    async fn register(b: &Bench, soft: &mut SoftPasskey, access: &str) -> Value {
        let c = b
            .ok(
                "PASSKEY.REGISTER.BEGIN",
                json!({"name": "Laptop"}),
                Some(access),
            )
            .await;
        // The software authenticator cannot keep resident keys; browsers can (the Chromium
        // test covers discoverable sign-in), and the server does not insist on it at FINISH.
        let mut options = c["options"].clone();
        options["publicKey"]["authenticatorSelection"]["residentKey"] = json!("discouraged");
        options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = json!(false);
        let ccr: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let cred = soft.do_registration(origin(), ccr).unwrap();
        let fin = json!({"ceremony_id": c["ceremony_id"], "credential": cred});
        let r = b
            .call("PASSKEY.REGISTER.FINISH", fin.clone(), Some(access))
            .await;
        assert!(r.ok, "{r:?}");
        let again = b.call("PASSKEY.REGISTER.FINISH", fin, Some(access)).await;
        assert_eq!(
            again.error_code(),
            Some(ErrorCode::AlreadyUsed),
            "a replayed FINISH"
        );
        r.data
    }

    async fn assertion(b: &Bench, soft: &mut SoftPasskey, begin: Value, from: Url) -> Value {
        let c = b.ok("PASSKEY.LOGIN.BEGIN", begin, None).await;
        let rcr: RequestChallengeResponse = serde_json::from_value(c["options"].clone()).unwrap();
        let cred = soft.do_authentication(from, rcr).unwrap();
        json!({"ceremony_id": c["ceremony_id"], "credential": cred})
    }

    #[tokio::test]
    async fn register_then_sign_in_with_the_passkey_at_aal2() {
        let b = Bench::new(|_| {}).await;
        let access = signed_up(&b, "pk@example.org").await;
        let mut soft = SoftPasskey::new(true);
        let info = register(&b, &mut soft, &access).await;
        assert_eq!(info["name"], "Laptop");
        let list = b.ok("PASSKEY.LIST", json!({}), Some(&access)).await;
        assert_eq!(list["passkeys"].as_array().unwrap().len(), 1);

        let fin = assertion(&b, &mut soft, json!({"email": "pk@example.org"}), origin()).await;
        let s = b.ok("PASSKEY.LOGIN.FINISH", fin.clone(), None).await;
        let me = b.ok("USER.ME", json!({}), s["access_token"].as_str()).await;
        assert_eq!(me["aal"], 2);
        assert_eq!(me["amr"], json!(["hwk", "user", "mfa"]));
        let r = b.call("PASSKEY.LOGIN.FINISH", fin, None).await;
        assert_eq!(r.error_code(), Some(ErrorCode::AlreadyUsed));

        // The registration options asked for a discoverable credential with user verification.
        let c = b
            .ok("PASSKEY.REGISTER.BEGIN", json!({}), Some(&access))
            .await;
        let sel = &c["options"]["publicKey"]["authenticatorSelection"];
        assert_eq!(sel["residentKey"], "required");
        assert_eq!(sel["userVerification"], "required");
        assert_eq!(
            c["options"]["publicKey"]["excludeCredentials"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn expired_ceremonies_wrong_origins_and_cloned_authenticators_are_refused() {
        let b = Bench::new(|_| {}).await;
        let access = signed_up(&b, "pk@example.org").await;
        let mut soft = SoftPasskey::new(true);
        let info = register(&b, &mut soft, &access).await;

        let fin = assertion(&b, &mut soft, json!({"email": "pk@example.org"}), origin()).await;
        b.advance(5 * 60);
        assert_eq!(
            b.code("PASSKEY.LOGIN.FINISH", fin, None).await,
            Some(ErrorCode::Expired)
        );

        let other = Url::parse("http://localhost:9999").unwrap();
        let fin = assertion(&b, &mut soft, json!({"email": "pk@example.org"}), other).await;
        let r = b.call("PASSKEY.LOGIN.FINISH", fin, None).await;
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::InvalidCredentials),
            "wrong origin"
        );

        // A counter at or below the stored one means a cloned authenticator.
        let user_id = b.ok("USER.ME", json!({}), Some(&access)).await["user_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let key = format!("{user_id}/{}", info["credential_id"].as_str().unwrap());
        let raw = b
            .app
            .store
            .get(Table::Passkeys, key.as_bytes())
            .await
            .unwrap()
            .unwrap();
        let mut rec: Value = serde_json::from_slice(&raw[1..]).unwrap();
        rec["passkey"]["cred"]["counter"] = json!(1_000_000);
        let mut bytes = vec![raw[0]];
        bytes.extend(serde_json::to_vec(&rec).unwrap());
        b.app
            .store
            .put(Table::Passkeys, key.as_bytes(), bytes)
            .await
            .unwrap();
        let fin = assertion(&b, &mut soft, json!({"email": "pk@example.org"}), origin()).await;
        let r = b.call("PASSKEY.LOGIN.FINISH", fin, None).await;
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::InvalidCredentials),
            "counter regression"
        );
    }

    #[tokio::test]
    async fn unknown_addresses_get_a_lookalike_answer() {
        let b = Bench::new(|c| c.rate_limits.enabled = false).await;
        let access = signed_up(&b, "pk@example.org").await;
        register(&b, &mut SoftPasskey::new(true), &access).await;
        let begin = |email: String| {
            let b = &b;
            async move {
                b.ok("PASSKEY.LOGIN.BEGIN", json!({"email": email}), None)
                    .await
            }
        };
        let real = begin("pk@example.org".into()).await;
        let fake = begin("ghost@example.org".into()).await;
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&real), keys(&fake));
        assert_eq!(
            keys(&real["options"]["publicKey"]),
            keys(&fake["options"]["publicKey"])
        );
        let allowed = |v: &Value| v["options"]["publicKey"]["allowCredentials"].clone();
        assert_eq!(allowed(&real).as_array().unwrap().len(), 1);
        assert_eq!(
            allowed(&fake),
            allowed(&begin("ghost@example.org".into()).await),
            "stable per address"
        );
        assert_ne!(
            allowed(&fake),
            allowed(&begin("ghost2@example.org".into()).await)
        );

        // Over many unknown addresses: never empty, entries shaped like real ones, and the
        // number and lengths of ids vary as they do among real accounts.
        let mut counts = std::collections::BTreeSet::new();
        let mut lengths = std::collections::BTreeSet::new();
        for i in 0..200 {
            let list = allowed(&begin(format!("nobody-{i}@example.org")).await);
            let list = list.as_array().unwrap();
            assert!((1..=3).contains(&list.len()), "{list:?}");
            counts.insert(list.len());
            for e in list {
                assert_eq!(e["type"], "public-key");
                let id = URL_SAFE_NO_PAD.decode(e["id"].as_str().unwrap()).unwrap();
                assert!([16, 20, 32, 64, 65].contains(&id.len()), "{e}");
                lengths.insert(id.len());
                let transports = passkeys::decoy_transports(id.len()).map(|t| json!(t));
                assert_eq!(e.get("transports").cloned(), transports, "{e}");
                assert!(keys(e)
                    .iter()
                    .all(|k| ["id", "transports", "type"].contains(&k.as_str())));
            }
        }
        assert!(counts.len() >= 2, "the number of ids varies: {counts:?}");
        assert!(lengths.len() >= 2, "the id length varies: {lengths:?}");
    }

    #[tokio::test]
    async fn a_passkey_completes_an_mfa_sign_in() {
        let b = Bench::new(|_| {}).await;
        let access = signed_up(&b, "pk@example.org").await;
        let mut soft = SoftPasskey::new(true);
        register(&b, &mut soft, &access).await;
        let r = b
            .call(
                "AUTH.LOGIN",
                json!({"email": "pk@example.org", "password": PW}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::MfaRequired));
        let d = r.error.unwrap().details.unwrap();
        assert_eq!(d["methods"], json!(["passkey"]));
        let fin = assertion(
            &b,
            &mut soft,
            json!({"mfa_token": d["mfa_token"]}),
            origin(),
        )
        .await;
        // Not usable as a sign-in of its own.
        let r = b.call("PASSKEY.LOGIN.FINISH", fin.clone(), None).await;
        assert_eq!(r.error_code(), Some(ErrorCode::InvalidParams));
        let fin = assertion(
            &b,
            &mut soft,
            json!({"mfa_token": d["mfa_token"]}),
            origin(),
        )
        .await;
        let v = b
            .ok(
                "MFA.VERIFY",
                json!({"mfa_token": d["mfa_token"], "method": "passkey", "ceremony_id": fin["ceremony_id"], "credential": fin["credential"]}),
                None,
            )
            .await;
        assert_eq!(v["aal"], 2);
        assert_eq!(v["amr"], json!(["pwd", "hwk", "user", "mfa"]));
    }
}
