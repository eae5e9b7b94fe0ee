//! Changes of an account that must land all at once with the records that depend on it: the
//! first proof of an address (which evicts everything set up before it), a password change or a
//! disable (which revoke sessions), account deletion.
//!
//! Each builds one [`Batch`] for [`portcullis_store::Store::apply`] that checks the user record
//! is still the one it read (and every session it revokes, every factor it removes), so a crash
//! or a concurrent writer leaves either the whole change or none of it. A refused batch means
//! someone wrote in between: the change is planned again from fresh reads.

use crate::base::error::CommandError;
use crate::identity::accounts::{bump_session_epoch, read_user, UserRecord, USERS};
use crate::identity::sessions::SESSIONS;

use crate::Ctx;
use portcullis_store::{Applied, Batch, StoreError, Table};

/// Attempts before a change that keeps meeting concurrent writers gives up (`UNAVAILABLE`).
pub(crate) const ATTEMPTS: usize = 16;

/// What an eviction removed besides the password (which the edit of the record clears, and
/// knows about).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Sessions revoked.
    pub sessions: u64,
    /// A factor held in its own table (an authenticator app, recovery codes, passkeys) was
    /// removed.
    pub factors: bool,
    /// API keys revoked (created by the account, or by keys it created).
    pub api_keys: u64,
}

impl Evicted {
    /// Whether anything that could sign in was removed.
    pub fn anything(&self) -> bool {
        self.sessions > 0 || self.factors || self.api_keys > 0
    }
}

/// The writes revoking every session of `user_id` but `keep` (expired ones included: their last
/// access token may still be within its lifetime), each checked against the record as read: a
/// password change, a disable, and part of every eviction.
pub async fn revocation(
    ctx: &Ctx,
    user_id: &str,
    keep: Option<&str>,
    reason: &str,
) -> Result<Planned, CommandError> {
    let store = ctx.app.store.as_ref();
    let now = ctx.now().unix_timestamp();
    let prefix = format!("{user_id}/").into_bytes();
    let mut batch = Batch::new();
    let mut revoked = Vec::new();
    for (k, _) in store
        .scan_prefix(Table::UserSessions, &prefix, usize::MAX)
        .await?
    {
        let sid = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        if Some(sid.as_str()) == keep {
            continue;
        }
        batch = batch.remove(Table::UserSessions, k);
        if let Some(old) = SESSIONS.read(store, sid.as_bytes()).await? {
            if old.record.revoked_at.is_none() {
                let mut s = old.record.clone();
                s.revoked_at = Some(now);
                s.revoke_reason = Some(reason.to_owned());
                batch = batch.merge(SESSIONS.replacing(sid.as_bytes(), &old, Some(&s)));
                revoked.push(sid);
            }
        }
    }
    Ok(Planned {
        batch,
        evicted: Evicted {
            sessions: u64::try_from(revoked.len()).unwrap_or(u64::MAX),
            ..Evicted::default()
        },
        revoked_sessions: revoked,
    })
}

/// Marks sessions revoked in the liveness cache, once their revocation is committed.
fn forget_sessions(ctx: &Ctx, user_id: &str, sids: &[String]) {
    for sid in sids {
        ctx.app.session_cache.mark_revoked(sid, user_id);
    }
}

/// Commits a change of the user record together with other writes, all or nothing: `edit`
/// changes the current record (returning `Ok(false)` when there is nothing to do, or an error to
/// refuse), and `plan` gives the writes that must land with it, from the record before and
/// after the edit and fresh reads, on every attempt. Returns the record as committed and what
/// `plan` said it revokes and evicts (its batch spent), or `None` when there is no such user.
pub async fn change_user<P>(
    ctx: &Ctx,
    user_id: &str,
    mut edit: impl FnMut(&mut UserRecord) -> Result<bool, CommandError>,
    mut plan: impl FnMut(UserRecord, UserRecord) -> P,
) -> Result<Option<(UserRecord, Planned)>, CommandError>
where
    P: std::future::Future<Output = Result<Planned, CommandError>>,
{
    for _ in 0..ATTEMPTS {
        let Some(current) = read_user(ctx, user_id).await? else {
            return Ok(None);
        };
        let before = current.record.clone();
        let mut user = before.clone();
        if !edit(&mut user)? {
            return Ok(Some((user, Planned::default())));
        }
        let mut planned = plan(before, user.clone()).await?;
        let batch = USERS
            .replacing(user_id.as_bytes(), &current, Some(&user))
            .merge(std::mem::take(&mut planned.batch));
        match ctx.app.store.apply(batch).await? {
            Applied::Committed => {
                forget_sessions(ctx, user_id, &planned.revoked_sessions);
                return Ok(Some((user, planned)));
            }
            Applied::Refused { .. } => continue,
        }
    }
    Err(StoreError::Busy.into())
}

/// What must be written with a change of the user record.
#[derive(Debug, Default)]
pub struct Planned {
    /// The writes (and their checks).
    pub batch: Batch,
    /// Sessions the writes revoke (the liveness cache learns of them once committed).
    pub revoked_sessions: Vec<String>,
    /// What the writes evict, for the event.
    pub evicted: Evicted,
}

/// The guard of a batch by which the calling session adds a way to sign in (a passkey, an
/// authenticator app, recovery codes): the session must still be live (an eviction or
/// revocation of it that commits first refuses the batch), and the account's session epoch is
/// bumped (an eviction planned before this commits is refused and planned again, this factor
/// included). Either way, nothing the session adds outlives an eviction.
pub async fn caller_adds_factor(ctx: &Ctx) -> Result<Batch, CommandError> {
    let check = caller_session_check(ctx).await?;
    let user_id = &ctx.user()?.user_id;
    let ended = || CommandError::unauthenticated("the account no longer exists");
    let user = read_user(ctx, user_id).await?.ok_or_else(ended)?;
    Ok(check.merge(bump_session_epoch(user)))
}

/// A check that the calling session is still live, for a batch that changes what the session
/// may do (a password change): if an eviction or revocation of the session commits first, the
/// batch is refused, so nothing the session sets outlives it.
pub async fn caller_session_check(ctx: &Ctx) -> Result<Batch, CommandError> {
    let Ok(u) = ctx.user() else {
        return Ok(Batch::new());
    };
    let ended = || CommandError::unauthenticated("the session has ended");
    let s = SESSIONS
        .read(ctx.app.store.as_ref(), u.session_id.as_bytes())
        .await?
        .ok_or_else(ended)?;
    if s.record.revoked_at.is_some() {
        return Err(ended());
    }
    Ok(SESSIONS.unchanged(u.session_id.as_bytes(), &s))
}

#[cfg(test)]
mod tests {
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use portcullis_store::Table;
    use serde_json::json;

    const EMAIL: &str = "owner@example.org";
    const PW: &str = "squatter chose this passphrase";

    /// A squatter signed up with the owner's address and a password, with an authenticator app
    /// pending confirmation, and the owner's link in the outbox: (the squatter's access token,
    /// the account, the `TOTP.CONFIRM` params, the owner's link token).
    async fn squatter_with_pending_totp(b: &Bench) -> (String, String, serde_json::Value, String) {
        let s = b
            .ok("AUTH.SIGNUP", json!({"email": EMAIL, "password": PW}), None)
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        let (confirm, _) = b.pending_totp(&access).await;
        b.ok("MAGIC.SEND", json!({"email": EMAIL}), None).await;
        let token = b.link_token(1).await;
        (
            access,
            s["user_id"].as_str().unwrap().to_owned(),
            confirm,
            token,
        )
    }

    /// Pre-hijacking: someone signs up with the owner's address and a password. The owner's
    /// first proof fails half-way (the write that would revoke the squatter's session fails).
    /// Nothing of the proof may stick, so the next proof still evicts the squatter. Before the
    /// eviction was one batch, the first attempt marked the address verified and the second
    /// evicted nothing.
    #[tokio::test]
    async fn a_failed_first_proof_changes_nothing_and_the_next_proof_still_evicts() {
        let (b, faults) = Bench::faulty().await;
        let squatter = b
            .ok("AUTH.SIGNUP", json!({"email": EMAIL, "password": PW}), None)
            .await;
        let access = squatter["access_token"].as_str().unwrap();

        b.ok("MAGIC.SEND", json!({"email": EMAIL}), None).await;
        faults.fail_next_write(Table::Sessions);
        let r = b
            .call(
                "MAGIC.VERIFY",
                json!({"token": b.link_token(1).await}),
                None,
            )
            .await;
        assert!(!r.ok, "{r:?}");
        assert!(!faults.armed(), "the proof never tried to revoke a session");

        b.advance(61);
        b.ok("MAGIC.SEND", json!({"email": EMAIL}), None).await;
        b.ok(
            "MAGIC.VERIFY",
            json!({"token": b.link_token(2).await}),
            None,
        )
        .await;
        assert_eq!(
            b.code("USER.ME", json!({}), Some(access)).await,
            Some(ErrorCode::Unauthenticated),
            "the squatter's session survived the owner's proof"
        );
        assert_eq!(
            b.code("AUTH.LOGIN", json!({"email": EMAIL, "password": PW}), None)
                .await,
            Some(ErrorCode::InvalidCredentials),
            "the squatter's password survived the owner's proof"
        );
    }

    /// A bootstrap whose account write fails leaves no marker behind: the next one succeeds.
    /// Before the marker and the account were one batch, the marker stayed, naming no account,
    /// and every later bootstrap was refused.
    #[tokio::test]
    async fn a_bootstrap_that_fails_half_way_can_be_run_again() {
        let (b, faults) = Bench::faulty().await;
        let op = b.operator_token();
        faults.fail_next_write(Table::Users);
        let r = b
            .call("ADMIN.BOOTSTRAP", json!({"email": EMAIL}), Some(&op))
            .await;
        assert!(!r.ok, "{r:?}");
        assert!(!faults.armed());
        let boot = b
            .ok("ADMIN.BOOTSTRAP", json!({"email": EMAIL}), Some(&op))
            .await;
        assert!(boot["link"].as_str().unwrap().contains("token="));
    }

    /// Deleting an account whose last write fails keeps the whole account, second factor
    /// included. Before deletion was one batch, the factor went first and the account stayed,
    /// signing in with its password alone.
    #[tokio::test]
    async fn a_deletion_that_fails_half_way_keeps_the_second_factor() {
        let (b, faults) = Bench::faulty().await;
        let s = b
            .ok("AUTH.SIGNUP", json!({"email": EMAIL, "password": PW}), None)
            .await;
        let access = s["access_token"].as_str().unwrap();
        b.enrol_totp(access).await;
        faults.fail_next_write(Table::Emails);
        let r = b.call("USER.DELETE", json!({}), Some(access)).await;
        assert!(!r.ok, "{r:?}");
        assert!(!faults.armed());
        assert_eq!(
            b.code("AUTH.LOGIN", json!({"email": EMAIL, "password": PW}), None)
                .await,
            Some(ErrorCode::MfaRequired),
            "the account lost its second factor but kept its password"
        );
    }

    /// A password change whose revocation write fails changes nothing: never the new password
    /// beside the old sessions.
    #[tokio::test]
    async fn a_password_change_that_fails_half_way_leaves_no_old_session_beside_the_new_password() {
        let (b, faults) = Bench::faulty().await;
        let first = b
            .ok("AUTH.SIGNUP", json!({"email": EMAIL, "password": PW}), None)
            .await;
        let other = b
            .ok("AUTH.LOGIN", json!({"email": EMAIL, "password": PW}), None)
            .await;
        faults.fail_next_write(Table::Sessions);
        let new_pw = "an entirely different passphrase";
        let r = b
            .call(
                "USER.SET_PASSWORD",
                json!({"current_password": PW, "new_password": new_pw}),
                first["access_token"].as_str(),
            )
            .await;
        assert!(!r.ok, "{r:?}");
        assert!(!faults.armed());
        let new_works = b
            .call(
                "AUTH.LOGIN",
                json!({"email": EMAIL, "password": new_pw}),
                None,
            )
            .await
            .ok;
        let other_live = b
            .call("USER.ME", json!({}), other["access_token"].as_str())
            .await
            .ok;
        assert!(
            !(new_works && other_live),
            "the new password works and the other session is still live"
        );
        assert!(!new_works, "a failed change must not change the password");
    }

    /// An address change whose last write fails never leaves the old address attached beside
    /// the new one, and an index entry left behind (by earlier versions) leads nowhere. Before
    /// the change was one batch, the old address was removed last and, when that failed, still
    /// signed in to the account.
    #[tokio::test]
    async fn an_address_change_never_leaves_the_old_address_attached() {
        let (b, faults) = Bench::faulty().await;
        let s = b
            .ok("AUTH.SIGNUP", json!({"email": EMAIL, "password": PW}), None)
            .await;
        let access = s["access_token"].as_str().unwrap();
        let user_id = s["user_id"].as_str().unwrap();
        let new = "moved@example.org";
        b.ok("USER.CHANGE_EMAIL", json!({"new_email": new}), Some(access))
            .await;
        // The claim of the new address passes; the removal of the old one would fail.
        faults.fail_write(Table::Emails, 2);
        let r = b
            .call(
                "MAGIC.VERIFY",
                json!({"token": b.link_token(1).await}),
                None,
            )
            .await;
        let old_login = b
            .call("AUTH.LOGIN", json!({"email": EMAIL, "password": PW}), None)
            .await;
        let new_login = b
            .call("AUTH.LOGIN", json!({"email": new, "password": PW}), None)
            .await;
        assert!(
            !(old_login.ok && new_login.ok),
            "both addresses sign in (change answered {r:?}, old {old_login:?})"
        );
        assert!(r.ok && new_login.ok, "{r:?} {new_login:?} {old_login:?}");

        // A stale entry for the old address (left by a crash in earlier versions) leads nowhere.
        faults.disarm();
        b.app
            .store
            .put(Table::Emails, EMAIL.as_bytes(), user_id.as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(
            b.code("AUTH.LOGIN", json!({"email": EMAIL, "password": PW}), None)
                .await,
            Some(ErrorCode::InvalidCredentials)
        );
    }

    /// A squatter's session confirms an authenticator app while the owner's first proof
    /// evicts it: the factor must not outlive the eviction. Before factor-adding batches
    /// checked the calling session, the confirmation (already past the dispatcher's session
    /// check) wrote the squatter's factor onto the owner's account after the eviction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_factor_added_by_a_session_evicted_meanwhile_is_refused() {
        let (b, faults) = Bench::faulty().await;
        let (access, user_id, confirm, token) = squatter_with_pending_totp(&b).await;
        let (access, user_id) = (access.as_str(), user_id.as_str());

        // The confirmation stops at its first read; the owner proves the address meanwhile.
        faults.hold_next_read(Table::TotpEnrollments);
        let owner = async {
            faults.read_held().await;
            b.ok("MAGIC.VERIFY", json!({"token": token}), None).await;
            faults.release();
        };
        let (r, ()) = tokio::join!(b.call("TOTP.CONFIRM", confirm, Some(access)), owner);
        assert!(!r.ok, "{r:?}");
        assert_eq!(
            b.app
                .store
                .get(Table::Totp, user_id.as_bytes())
                .await
                .unwrap(),
            None,
            "the squatter's factor outlived the eviction"
        );
    }

    /// A link sign-in that passed its disabled-check while an administrator disabled the
    /// account must not leave a session behind. Before the session start was one batch
    /// checking the account record, it did (its access token worked until expiry).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sign_in_racing_a_disable_leaves_no_session() {
        let (b, faults) = Bench::faulty().await;
        let s = b.ok("AUTH.SIGNUP", json!({"email": EMAIL}), None).await;
        let user_id = s["user_id"].as_str().unwrap().to_owned();
        b.ok("MAGIC.SEND", json!({"email": EMAIL}), None).await;
        b.ok(
            "MAGIC.VERIFY",
            json!({"token": b.link_token(1).await}),
            None,
        )
        .await;
        b.advance(61);
        b.ok("MAGIC.SEND", json!({"email": EMAIL}), None).await;
        let token = b.link_token(2).await;
        let op = b.operator_token();
        // The sign-in stops where it asks which second factors the account has, after its own
        // disabled-check; the account is disabled meanwhile.
        faults.hold_next_read(Table::Totp);
        let admin = async {
            faults.read_held().await;
            b.ok("ADMIN.USER.DISABLE", json!({"user_id": user_id}), Some(&op))
                .await;
            faults.release();
        };
        let (r, ()) = tokio::join!(b.call("MAGIC.VERIFY", json!({"token": token}), None), admin);
        if r.ok {
            let access = r.data["access_token"].as_str().unwrap();
            let me = b.call("USER.ME", json!({}), Some(access)).await;
            assert!(!me.ok, "a session of the disabled account works: {me:?}");
        }
        assert!(!r.ok, "{r:?}");
    }

    /// A password sign-in that starts its session after the owner's proof listed the
    /// account's sessions, but before the proof commits: the proof must still revoke it.
    /// Before a session start bumped the account's session epoch, the proof committed its
    /// stale list and the squatter's new session outlived it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_started_while_the_first_proof_is_planned_is_evicted_too() {
        let (b, faults) = Bench::faulty().await;
        b.ok("AUTH.SIGNUP", json!({"email": EMAIL, "password": PW}), None)
            .await;
        b.ok("MAGIC.SEND", json!({"email": EMAIL}), None).await;
        let token = b.link_token(1).await;
        // The proof stops after listing the sessions, where it reads the factors.
        faults.hold_next_read(Table::Totp);
        let squatter = async {
            faults.read_held().await;
            let r = b
                .call("AUTH.LOGIN", json!({"email": EMAIL, "password": PW}), None)
                .await;
            faults.release();
            r
        };
        let (owner, squatter) = tokio::join!(
            b.call("MAGIC.VERIFY", json!({"token": token}), None),
            squatter
        );
        assert!(owner.ok, "{owner:?}");
        if squatter.ok {
            let access = squatter.data["access_token"].as_str().unwrap();
            assert_eq!(
                b.code("USER.ME", json!({}), Some(access)).await,
                Some(ErrorCode::Unauthenticated),
                "the squatter's session outlived the owner's proof"
            );
        }
    }

    /// A squatter's session confirms an authenticator app after the owner's proof has listed
    /// the account's factors but before the proof commits: the proof must still remove it.
    /// Before factor-adding batches bumped the account's session epoch, the proof committed its
    /// stale list and the squatter's factor stayed on the owner's account.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_factor_added_while_the_first_proof_is_planned_is_evicted_too() {
        let (b, faults) = Bench::faulty().await;
        let (access, user_id, confirm, token) = squatter_with_pending_totp(&b).await;
        let (access, user_id) = (access.as_str(), user_id.as_str());
        // The proof stops once it has read the factors (there are none yet).
        faults.hold_next_read(Table::Totp);
        let squatter = async {
            faults.read_held().await;
            let r = b.call("TOTP.CONFIRM", confirm, Some(access)).await;
            faults.release();
            r
        };
        let (owner, confirmed) = tokio::join!(
            b.call("MAGIC.VERIFY", json!({"token": token}), None),
            squatter
        );
        assert!(owner.ok, "{owner:?}");
        assert!(
            confirmed.ok,
            "the confirmation ran before the proof: {confirmed:?}"
        );
        assert_eq!(
            b.app
                .store
                .get(Table::Totp, user_id.as_bytes())
                .await
                .unwrap(),
            None,
            "the squatter's factor outlived the owner's proof"
        );
    }

    /// A disable whose revocation write fails changes nothing: never a disabled account with
    /// a working session. Before the flag and the revocations were one batch, the flag stayed
    /// and the sessions lived on.
    #[tokio::test]
    async fn a_disable_that_fails_half_way_leaves_no_working_session_of_a_disabled_account() {
        let (b, faults) = Bench::faulty().await;
        let s = b
            .ok("AUTH.SIGNUP", json!({"email": EMAIL, "password": PW}), None)
            .await;
        let access = s["access_token"].as_str().unwrap();
        let op = b.operator_token();
        faults.fail_next_write(Table::Sessions);
        let r = b
            .call(
                "ADMIN.USER.DISABLE",
                json!({"user_id": s["user_id"]}),
                Some(&op),
            )
            .await;
        assert!(!r.ok, "{r:?}");
        assert!(!faults.armed());
        let disabled = crate::identity::accounts::get_user(
            b.app.store.as_ref(),
            s["user_id"].as_str().unwrap(),
        )
        .await
        .unwrap()
        .unwrap()
        .disabled;
        let works = b.call("USER.ME", json!({}), Some(access)).await.ok;
        assert!(
            !(disabled && works),
            "the account is disabled and its session still works"
        );
    }
}
