//! Params and result types of every command, one module per command family.
//!
//! Params types deny unknown fields: a misspelt member is `INVALID_PARAMS`, never silently
//! ignored. Result types are what the `data` member of a successful response holds.

/// `SYS.*`: liveness, server facts, the command registry.
pub mod sys {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `SYS.PING`
    pub const PING: &str = "SYS.PING";
    /// `SYS.INFO`
    pub const INFO: &str = "SYS.INFO";
    /// `SYS.COMMANDS`
    pub const COMMANDS: &str = "SYS.COMMANDS";

    /// Params of commands that take none: `{}` or absent.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SysNoParams")]
    #[serde(deny_unknown_fields)]
    pub struct NoParams {}

    /// `SYS.PING` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SysPong")]
    pub struct Pong {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub pong: bool,
    }

    /// `SYS.INFO` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SysInfo")]
    pub struct Info {
        /// `"portcullis"`.
        pub name: String,
        /// Server version (semver).
        pub version: String,
        /// Wire protocol version.
        pub protocol: u32,
        /// Stable id of this node's data directory.
        pub node_id: String,
        /// When the process started (RFC 3339 UTC).
        pub started_at: String,
        /// Seconds since the process started.
        pub uptime_s: u64,
        /// Sequence number of the newest event in the log (0 when empty).
        pub log_head_seq: u64,
        /// Sequence number of the oldest event the log holds: 1 unless `LOG.PRUNE` removed
        /// older ones.
        #[serde(default = "super::log::one")]
        pub log_first_seq: u64,
    }

    /// One registry entry, as listed by `SYS.COMMANDS`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SysCommandInfo")]
    pub struct CommandInfo {
        /// Command name.
        pub name: String,
        /// Who may call it (`anyone`, `operator`, …).
        pub caller: String,
        /// Which rate limiter guards it.
        pub rate_class: String,
        /// Whether its outcomes are appended to the event log.
        pub logged: bool,
        /// Whether it only reads: its answer does not wait for its own event to reach the disk
        /// (see envelope.md, "Durability of answers").
        #[serde(default)]
        pub read_only: bool,
    }

    /// `SYS.COMMANDS` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SysCommands")]
    pub struct Commands {
        /// Every command, sorted by name.
        pub commands: Vec<CommandInfo>,
    }
}

/// `LOG.*`: the hash-chained event log.
pub mod log {
    use crate::Event;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `LOG.TAIL`
    pub const TAIL: &str = "LOG.TAIL";
    /// `LOG.QUERY`
    pub const QUERY: &str = "LOG.QUERY";
    /// `LOG.VERIFY`
    pub const VERIFY: &str = "LOG.VERIFY";
    /// `LOG.PRUNE`
    pub const PRUNE: &str = "LOG.PRUNE";

    /// Largest page `LOG.QUERY` returns.
    pub const MAX_QUERY_LIMIT: usize = 1000;
    /// Page size when `limit` is absent.
    pub const DEFAULT_QUERY_LIMIT: usize = 100;

    /// `LOG.TAIL` params.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogTailParams")]
    #[serde(deny_unknown_fields)]
    pub struct TailParams {
        /// First sequence number to send (default: the next event to be written, i.e. only new
        /// events when following, nothing when not).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from_seq: Option<u64>,
        /// Keep streaming new events after the replay, until the client disconnects.
        #[serde(default)]
        pub follow: bool,
    }

    /// The `data` of one `LOG.TAIL` stream line. A tail answers with many lines that all carry
    /// the request's id: one per event, a `caught_up` marker when the replay reaches the head
    /// (then live events follow when following), or an `end` marker when not following.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogTailFrame")]
    #[serde(untagged)]
    pub enum TailFrame {
        /// One event.
        Event {
            /// The event.
            event: Box<Event>,
        },
        /// The replay is complete; `next_seq` is the first sequence number not yet sent.
        CaughtUp {
            /// Always `true`.
            #[schemars(extend("const" = true))]
            caught_up: bool,
            /// First seq not yet sent.
            next_seq: u64,
        },
        /// The stream ends here (`follow` was false).
        End {
            /// Always `true`.
            #[schemars(extend("const" = true))]
            end: bool,
            /// First seq not sent; pass it as `from_seq` to resume.
            next_seq: u64,
        },
    }

    /// `LOG.QUERY` params. Filters combine with AND.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogQueryParams")]
    #[serde(deny_unknown_fields)]
    pub struct QueryParams {
        /// First seq to consider (default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from_seq: Option<u64>,
        /// Last seq to consider, inclusive.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to_seq: Option<u64>,
        /// Only events at or after this time (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub since: Option<String>,
        /// Only events strictly before this time (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub until: Option<String>,
        /// Only this command.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub command: Option<String>,
        /// Only this outcome (`ok` or an error code).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub outcome: Option<String>,
        /// Only this actor (`anonymous`, `operator`, `user:<id>`, `apikey:<id>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub actor: Option<String>,
        /// Page size, 1..=1000 (default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<usize>,
    }

    /// `LOG.QUERY` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogQueryResult")]
    pub struct QueryResult {
        /// Matching events in ascending seq order.
        pub events: Vec<Event>,
        /// Pass as `from_seq` to get the next page; `null` when the range is exhausted.
        pub next_seq: Option<u64>,
    }

    /// `LOG.VERIFY` params.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogVerifyParams")]
    #[serde(deny_unknown_fields)]
    pub struct VerifyParams {
        /// First seq to check (default 1). Its `prev` is checked against the event before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from_seq: Option<u64>,
        /// Last seq to check (default: the head).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to_seq: Option<u64>,
    }

    /// `LOG.VERIFY` result (also the offline `portcullis log verify` report).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogVerifyReport")]
    pub struct VerifyReport {
        /// Whether every checked event is intact and chained.
        pub valid: bool,
        /// How many events were checked.
        pub checked: u64,
        /// The newest seq in the log.
        pub head_seq: u64,
        /// The first seq at which the chain breaks, when it does.
        pub first_broken_seq: Option<u64>,
        /// Why it breaks there (`hash_mismatch`, `prev_mismatch`, `seq_gap`, `unreadable`).
        pub reason: Option<String>,
        /// The oldest seq the log still holds (1 unless it was pruned).
        #[serde(default = "one")]
        pub first_seq: u64,
        /// The last pruned event, against which `first_seq`'s `prev` is checked; `null` when
        /// the log was never pruned.
        #[serde(default)]
        pub checkpoint: Option<Checkpoint>,
    }

    pub(crate) fn one() -> u64 {
        1
    }

    /// The last event removed by `LOG.PRUNE`: the kept log continues from it, so the event at
    /// `seq + 1` has `prev` = `hash`, and an archive of the pruned events ends with this event.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogCheckpoint")]
    pub struct Checkpoint {
        /// Seq of the last pruned event.
        pub seq: u64,
        /// Its hash.
        pub hash: String,
    }

    /// `LOG.PRUNE` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogPruneParams")]
    #[serde(deny_unknown_fields)]
    pub struct PruneParams {
        /// Remove every event with seq ≤ this one. Must be below the newest event.
        pub through_seq: u64,
    }

    /// `LOG.PRUNE` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "LogPruneResult")]
    pub struct PruneResult {
        /// How many events this call removed (0 when they were already gone).
        pub pruned: u64,
        /// The oldest seq the log now holds.
        pub first_seq: u64,
        /// The last pruned event.
        pub checkpoint: Checkpoint,
    }
}

/// `AUTH.*`: sign-up, password sign-in, token refresh, sign-out.
pub mod auth {
    use crate::Secret;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `AUTH.SIGNUP`
    pub const SIGNUP: &str = "AUTH.SIGNUP";
    /// `AUTH.LOGIN`
    pub const LOGIN: &str = "AUTH.LOGIN";
    /// `AUTH.REFRESH`
    pub const REFRESH: &str = "AUTH.REFRESH";
    /// `AUTH.LOGOUT`
    pub const LOGOUT: &str = "AUTH.LOGOUT";

    /// `AUTH.SIGNUP` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AuthSignupParams")]
    #[serde(deny_unknown_fields)]
    pub struct SignupParams {
        /// The address; normalised (trimmed, domain lower-cased) and validated.
        pub email: String,
        /// Absent: a passwordless account.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password: Option<Secret>,
        /// Shown name, at most 128 characters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub display_name: Option<String>,
    }

    /// `AUTH.LOGIN` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AuthLoginParams")]
    #[serde(deny_unknown_fields)]
    pub struct LoginParams {
        /// The address.
        pub email: String,
        /// The password.
        pub password: Secret,
    }

    /// `AUTH.REFRESH` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AuthRefreshParams")]
    #[serde(deny_unknown_fields)]
    pub struct RefreshParams {
        /// The refresh token from the last sign-in or refresh.
        pub refresh_token: Secret,
    }

    /// The result of every sign-in and of `AUTH.REFRESH`.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AuthSessionTokens")]
    pub struct SessionTokens {
        /// The account.
        pub user_id: String,
        /// The session.
        pub session_id: String,
        /// EdDSA-signed JWT; send it as the `token`.
        pub access_token: Secret,
        /// Single use: exchange it with `AUTH.REFRESH` for a new pair.
        pub refresh_token: Secret,
        /// Always `"Bearer"`.
        #[schemars(extend("const" = "Bearer"))]
        pub token_type: String,
        /// Seconds until the access token expires.
        pub expires_in: u64,
    }

    /// `AUTH.LOGOUT` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AuthLoggedOut")]
    pub struct LoggedOut {
        /// The session that was revoked.
        pub session_id: String,
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub revoked: bool,
    }
}

/// `USER.*`: the signed-in user's own account.
pub mod user {
    use crate::Secret;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `USER.ME`
    pub const ME: &str = "USER.ME";
    /// `USER.UPDATE`
    pub const UPDATE: &str = "USER.UPDATE";
    /// `USER.SET_PASSWORD`
    pub const SET_PASSWORD: &str = "USER.SET_PASSWORD";
    /// `USER.DELETE`
    pub const DELETE: &str = "USER.DELETE";
    /// `USER.CHANGE_EMAIL`
    pub const CHANGE_EMAIL: &str = "USER.CHANGE_EMAIL";

    /// `USER.CHANGE_EMAIL` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "UserChangeEmailParams")]
    #[serde(deny_unknown_fields)]
    pub struct ChangeEmailParams {
        /// The new address; a confirmation link is mailed there.
        pub new_email: String,
    }

    /// `USER.CHANGE_EMAIL` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "UserChangeStarted")]
    pub struct ChangeStarted {
        /// The confirmation flow.
        pub flow_id: String,
        /// Seconds until the link expires.
        pub expires_in: u64,
    }

    /// `USER.DELETE` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "UserDeleted")]
    pub struct Deleted {
        /// The account that no longer exists.
        pub user_id: String,
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub deleted: bool,
    }

    /// `USER.ME` (and `USER.UPDATE`) result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "UserMe")]
    pub struct Me {
        /// The account.
        pub user_id: String,
        /// The normalised address.
        pub email: String,
        /// Shown name, when set.
        pub display_name: Option<String>,
        /// Whether the address has been proven (by a link or a code).
        pub email_verified: bool,
        /// When the account was created (RFC 3339).
        pub created_at: String,
        /// Assurance level of the current session: 0 (a passwordless sign-up, nothing proven
        /// yet), 1 or 2.
        pub aal: u8,
        /// Authentication methods of the current session (RFC 8176).
        pub amr: Vec<String>,
        /// The current session.
        pub session_id: String,
    }

    /// `USER.UPDATE` params.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "UserUpdateParams")]
    #[serde(deny_unknown_fields)]
    pub struct UpdateParams {
        /// New shown name; `""` clears it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub display_name: Option<String>,
    }

    /// `USER.SET_PASSWORD` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "UserSetPasswordParams")]
    #[serde(deny_unknown_fields)]
    pub struct SetPasswordParams {
        /// Required when the account already has a password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub current_password: Option<Secret>,
        /// The new password (8–256 characters, not a common one).
        pub new_password: Secret,
    }

    /// `USER.SET_PASSWORD` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "UserPasswordSet")]
    pub struct PasswordSet {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub password_set: bool,
        /// How many other sessions were revoked.
        pub sessions_revoked: u64,
    }
}

/// `SESSION.*`: the signed-in user's sessions.
pub mod session {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `SESSION.LIST`
    pub const LIST: &str = "SESSION.LIST";
    /// `SESSION.REVOKE`
    pub const REVOKE: &str = "SESSION.REVOKE";
    /// `SESSION.REVOKE_ALL`
    pub const REVOKE_ALL: &str = "SESSION.REVOKE_ALL";

    /// One session as listed.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SessionInfo")]
    pub struct SessionInfo {
        /// Session id.
        pub session_id: String,
        /// When it was created (RFC 3339).
        pub created_at: String,
        /// When it was last used to mint tokens (RFC 3339).
        pub last_used_at: String,
        /// Address of the client that created it.
        pub client: Option<String>,
        /// User agent of the client that created it (HTTP only).
        pub user_agent: Option<String>,
        /// Assurance level.
        pub aal: u8,
        /// Authentication methods (RFC 8176).
        pub amr: Vec<String>,
        /// Whether this is the session of the calling token.
        pub current: bool,
    }

    /// `SESSION.LIST` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SessionList")]
    pub struct SessionList {
        /// Live sessions, newest first.
        pub sessions: Vec<SessionInfo>,
    }

    /// `SESSION.REVOKE` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SessionRevokeParams")]
    #[serde(deny_unknown_fields)]
    pub struct RevokeParams {
        /// One of the caller's sessions.
        pub session_id: String,
    }

    /// `SESSION.REVOKE_ALL` params.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SessionRevokeAllParams")]
    #[serde(deny_unknown_fields)]
    pub struct RevokeAllParams {
        /// Keep the calling session (default false: revoke it too).
        #[serde(default)]
        pub keep_current: bool,
    }

    /// `SESSION.REVOKE` / `SESSION.REVOKE_ALL` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "SessionRevoked")]
    pub struct Revoked {
        /// How many sessions were revoked by this call.
        pub revoked: u64,
    }
}

/// `MAGIC.*`: sign-in links sent by mail.
pub mod magic {
    use super::auth::SessionTokens;
    use crate::Secret;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `MAGIC.SEND`
    pub const SEND: &str = "MAGIC.SEND";
    /// `MAGIC.VERIFY`
    pub const VERIFY: &str = "MAGIC.VERIFY";
    /// `MAGIC.APPROVE`
    pub const APPROVE: &str = "MAGIC.APPROVE";
    /// `MAGIC.POLL`
    pub const POLL: &str = "MAGIC.POLL";

    /// `MAGIC.SEND` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MagicSendParams")]
    #[serde(deny_unknown_fields)]
    pub struct SendParams {
        /// The address to mail.
        pub email: String,
        /// Where the landing page sends the browser (must be allow-listed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub redirect_url: Option<String>,
        /// PKCE S256 challenge: BASE64URL(SHA-256(code_verifier)).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub code_challenge: Option<String>,
        /// Give an unknown address an account when the link is used.
        #[serde(default)]
        pub create_user: bool,
        /// Language of the mail (default: the server's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub locale: Option<String>,
    }

    /// `MAGIC.SEND` result: the same shape whether or not the address has an account.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MagicFlowStarted")]
    pub struct FlowStarted {
        /// The flow (for `MAGIC.POLL`).
        pub flow_id: String,
        /// Seconds until the link expires.
        pub expires_in: u64,
    }

    /// `MAGIC.VERIFY` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MagicVerifyParams")]
    #[serde(deny_unknown_fields)]
    pub struct VerifyParams {
        /// The token from the link.
        pub token: Secret,
        /// Required when the link was sent with a `code_challenge`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub code_verifier: Option<Secret>,
    }

    /// `MAGIC.VERIFY` result.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MagicVerified")]
    pub struct Verified {
        /// The new session.
        #[serde(flatten)]
        pub tokens: SessionTokens,
        /// The flow's allow-listed redirect, if any.
        pub redirect_url: Option<String>,
    }

    /// `MAGIC.APPROVE` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MagicApproveParams")]
    #[serde(deny_unknown_fields)]
    pub struct ApproveParams {
        /// The token from the link.
        pub token: Secret,
    }

    /// `MAGIC.APPROVE` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MagicApproved")]
    pub struct Approved {
        /// The approved flow.
        pub flow_id: String,
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub approved: bool,
    }

    /// `MAGIC.POLL` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MagicPollParams")]
    #[serde(deny_unknown_fields)]
    pub struct PollParams {
        /// From `MAGIC.SEND`.
        pub flow_id: String,
        /// The verifier whose S256 hash was the `code_challenge`.
        pub code_verifier: Secret,
    }

    /// `MAGIC.POLL` result: `{"status":"pending"}`, or `{"status":"complete", …session}`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PollResult {
        /// `pending` or `complete`.
        pub status: String,
        /// The session, when complete.
        #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
        pub tokens: Option<SessionTokens>,
    }

    /// Written by hand: the session members come exactly when `status` is `complete`, which
    /// the struct's types cannot say.
    impl JsonSchema for PollResult {
        fn schema_name() -> std::borrow::Cow<'static, str> {
            "MagicPollResult".into()
        }

        fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
            let tokens = generator.subschema_for::<SessionTokens>();
            let status = |value: &str, description: &str| {
                serde_json::json!({
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "const": value, "description": description}
                    },
                    "required": ["status"]
                })
            };
            schemars::json_schema!({
                "description": "`MAGIC.POLL` result: `{\"status\":\"pending\"}` while the link waits \
                    for approval, or `{\"status\":\"complete\", …session}` once it is collected.",
                "oneOf": [
                    status("pending", "Not approved yet: poll again later."),
                    {"allOf": [tokens, status("complete", "Approved: the new session.")]}
                ]
            })
        }
    }
}

/// `OTP.*`: one-time codes sent by mail.
pub mod otp {
    use crate::Secret;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `OTP.SEND`
    pub const SEND: &str = "OTP.SEND";
    /// `OTP.VERIFY`
    pub const VERIFY: &str = "OTP.VERIFY";

    /// `OTP.SEND` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "OtpSendParams")]
    #[serde(deny_unknown_fields)]
    pub struct SendParams {
        /// The address to mail.
        pub email: String,
        /// Give an unknown address an account when the code is used.
        #[serde(default)]
        pub create_user: bool,
        /// Language of the mail (default: the server's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub locale: Option<String>,
    }

    /// `OTP.SEND` result: the same shape whether or not the address has an account.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "OtpCodeSent")]
    pub struct CodeSent {
        /// The flow the code is bound to.
        pub flow_id: String,
        /// Seconds until the code expires.
        pub expires_in: u64,
        /// Seconds before another code may be requested for this address.
        pub resend_after: u64,
    }

    /// `OTP.VERIFY` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "OtpVerifyParams")]
    #[serde(deny_unknown_fields)]
    pub struct VerifyParams {
        /// From `OTP.SEND`.
        pub flow_id: String,
        /// The six digits from the mail.
        pub code: Secret,
    }
}

/// `TOTP.*`: authenticator-app codes as a second factor.
pub mod totp {
    use crate::Secret;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `TOTP.ENROLL`
    pub const ENROLL: &str = "TOTP.ENROLL";
    /// `TOTP.CONFIRM`
    pub const CONFIRM: &str = "TOTP.CONFIRM";
    /// `TOTP.DISABLE`
    pub const DISABLE: &str = "TOTP.DISABLE";

    /// `TOTP.ENROLL` result. Shown once: the secret is never returned again.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "TotpEnrollment")]
    pub struct Enrollment {
        /// Pass to `TOTP.CONFIRM`.
        pub enrollment_id: String,
        /// The shared secret, base32 (160 bits).
        pub secret: Secret,
        /// `otpauth://totp/…` for authenticator apps.
        pub otpauth_uri: Secret,
        /// The URI as a QR code: a PNG, base64.
        pub qr_png: Secret,
        /// Seconds before the enrolment must be confirmed.
        pub expires_in: u64,
    }

    /// `TOTP.CONFIRM` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "TotpConfirmParams")]
    #[serde(deny_unknown_fields)]
    pub struct ConfirmParams {
        /// From `TOTP.ENROLL`.
        pub enrollment_id: String,
        /// A current code from the app.
        pub code: Secret,
    }

    /// `TOTP.CONFIRM` and `RECOVERY.REGENERATE` result. Shown once.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "TotpRecoveryCodes")]
    pub struct RecoveryCodes {
        /// Ten single-use codes, `xxxx-xxxx-xxxx-xxxx-xxxx-xxxx` (120 bits each).
        pub recovery_codes: Vec<Secret>,
    }

    /// `TOTP.DISABLE` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "TotpDisabled")]
    pub struct Disabled {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub disabled: bool,
    }
}

/// `MFA.*` and `RECOVERY.*`: completing a sign-in with a second factor, step-up, recovery codes.
pub mod mfa {
    use crate::Secret;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `MFA.VERIFY`
    pub const VERIFY: &str = "MFA.VERIFY";
    /// `RECOVERY.REGENERATE`
    pub const REGENERATE: &str = "RECOVERY.REGENERATE";

    /// A second-factor method: what `MFA.VERIFY` is answered with, and what `MFA_REQUIRED`'s
    /// `details.methods` lists. Closed: the server matches it exhaustively.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MfaMethod")]
    #[serde(rename_all = "snake_case")]
    pub enum Method {
        /// A code from an authenticator app.
        Totp,
        /// One of the account's single-use recovery codes.
        RecoveryCode,
        /// A passkey assertion (`ceremony_id` and `credential`).
        Passkey,
    }

    impl Method {
        /// Every method, in the order `details.methods` lists them.
        pub const ALL: [Method; 3] = [Method::Totp, Method::RecoveryCode, Method::Passkey];

        /// The wire name.
        pub fn as_str(self) -> &'static str {
            match self {
                Method::Totp => "totp",
                Method::RecoveryCode => "recovery_code",
                Method::Passkey => "passkey",
            }
        }
    }

    /// `MFA.VERIFY` params: with `mfa_token` it completes a sign-in; without it, with a bearer
    /// token, it steps the current session up to AAL2.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MfaVerifyParams")]
    #[serde(deny_unknown_fields)]
    pub struct VerifyParams {
        /// From the `MFA_REQUIRED` error's details.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub mfa_token: Option<Secret>,
        /// Which second factor answers.
        pub method: Method,
        /// The code (`totp`, `recovery_code`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub code: Option<Secret>,
        /// `passkey`: the ceremony from `PASSKEY.LOGIN.BEGIN {"mfa_token"}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ceremony_id: Option<String>,
        /// `passkey`: the browser's `credential.toJSON()`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "crate::schema::json_object_or_null")]
        pub credential: Option<serde_json::Value>,
    }

    /// `MFA.VERIFY` result.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "MfaVerified")]
    pub struct Verified {
        /// The account.
        pub user_id: String,
        /// The session (new for a sign-in, the current one for a step-up).
        pub session_id: String,
        /// A fresh access token at AAL2.
        pub access_token: Secret,
        /// For a completed sign-in; absent for a step-up (the session keeps its refresh token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub refresh_token: Option<Secret>,
        /// Always `"Bearer"`.
        #[schemars(extend("const" = "Bearer"))]
        pub token_type: String,
        /// Seconds until the access token expires.
        pub expires_in: u64,
        /// 2.
        pub aal: u8,
        /// Both factors and `mfa` (RFC 8176), plus `recovery` when a recovery code was used.
        pub amr: Vec<String>,
    }
}

/// `PASSKEY.*`: WebAuthn passkeys.
pub mod passkey {
    use crate::Secret;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// `PASSKEY.REGISTER.BEGIN`
    pub const REGISTER_BEGIN: &str = "PASSKEY.REGISTER.BEGIN";
    /// `PASSKEY.REGISTER.FINISH`
    pub const REGISTER_FINISH: &str = "PASSKEY.REGISTER.FINISH";
    /// `PASSKEY.LOGIN.BEGIN`
    pub const LOGIN_BEGIN: &str = "PASSKEY.LOGIN.BEGIN";
    /// `PASSKEY.LOGIN.FINISH`
    pub const LOGIN_FINISH: &str = "PASSKEY.LOGIN.FINISH";
    /// `PASSKEY.LIST`
    pub const LIST: &str = "PASSKEY.LIST";
    /// `PASSKEY.RENAME`
    pub const RENAME: &str = "PASSKEY.RENAME";
    /// `PASSKEY.REMOVE`
    pub const REMOVE: &str = "PASSKEY.REMOVE";

    /// `PASSKEY.REGISTER.BEGIN` params.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "PasskeyRegisterBeginParams")]
    #[serde(deny_unknown_fields)]
    pub struct RegisterBeginParams {
        /// A name for the passkey (default: "Passkey").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
    }

    /// `PASSKEY.*.BEGIN` result.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "PasskeyCeremony")]
    pub struct Ceremony {
        /// Pass to the matching FINISH.
        pub ceremony_id: String,
        /// For `navigator.credentials.create()` / `.get()` (after base64url decoding), e.g. via
        /// `PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey)`.
        #[schemars(schema_with = "crate::schema::json_object")]
        pub options: Value,
        /// Seconds before the ceremony expires.
        pub expires_in: u64,
    }

    /// `PASSKEY.REGISTER.FINISH` / `PASSKEY.LOGIN.FINISH` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "PasskeyFinishParams")]
    #[serde(deny_unknown_fields)]
    pub struct FinishParams {
        /// From BEGIN.
        pub ceremony_id: String,
        /// `credential.toJSON()` of the browser's answer.
        #[schemars(schema_with = "crate::schema::json_object")]
        pub credential: Value,
    }

    /// `PASSKEY.LOGIN.BEGIN` params: an email (allow-list of its passkeys), an `mfa_token` (the
    /// passkey as second factor), or neither (usernameless, discoverable credentials).
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "PasskeyLoginBeginParams")]
    #[serde(deny_unknown_fields)]
    pub struct LoginBeginParams {
        /// The account's address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub email: Option<String>,
        /// A pending sign-in's `mfa_token`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub mfa_token: Option<Secret>,
    }

    /// One registered passkey.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "PasskeyInfo")]
    pub struct PasskeyInfo {
        /// Credential id, base64url.
        pub credential_id: String,
        /// Its name.
        pub name: String,
        /// RFC 3339.
        pub created_at: String,
        /// RFC 3339, when it last signed in.
        pub last_used_at: Option<String>,
        /// May be synced to other devices.
        pub backup_eligible: bool,
        /// Is currently backed up / synced.
        pub backup_state: bool,
    }

    /// `PASSKEY.LIST` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "PasskeyList")]
    pub struct PasskeyList {
        /// Oldest first.
        pub passkeys: Vec<PasskeyInfo>,
    }

    /// `PASSKEY.RENAME` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "PasskeyRenameParams")]
    #[serde(deny_unknown_fields)]
    pub struct RenameParams {
        /// Which passkey.
        pub credential_id: String,
        /// The new name.
        pub name: String,
    }

    /// `PASSKEY.REMOVE` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "PasskeyRemoveParams")]
    #[serde(deny_unknown_fields)]
    pub struct RemoveParams {
        /// Which passkey.
        pub credential_id: String,
    }
}

/// `ADMIN.*`, `APIKEY.*`, `KEYS.*`: administration.
pub mod admin {
    use crate::Secret;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// `ADMIN.BOOTSTRAP`
    pub const BOOTSTRAP: &str = "ADMIN.BOOTSTRAP";
    /// `ADMIN.USER.GET`
    pub const USER_GET: &str = "ADMIN.USER.GET";
    /// `ADMIN.USER.LIST`
    pub const USER_LIST: &str = "ADMIN.USER.LIST";
    /// `ADMIN.USER.DISABLE`
    pub const USER_DISABLE: &str = "ADMIN.USER.DISABLE";
    /// `ADMIN.USER.ENABLE`
    pub const USER_ENABLE: &str = "ADMIN.USER.ENABLE";
    /// `ADMIN.USER.DELETE`
    pub const USER_DELETE: &str = "ADMIN.USER.DELETE";
    /// `ADMIN.USER.RECOVER`
    pub const USER_RECOVER: &str = "ADMIN.USER.RECOVER";
    /// `ADMIN.SESSION.REVOKE_ALL`
    pub const SESSION_REVOKE_ALL: &str = "ADMIN.SESSION.REVOKE_ALL";
    /// `ADMIN.SESSION.REVOKE_EVERYONE`
    pub const SESSION_REVOKE_EVERYONE: &str = "ADMIN.SESSION.REVOKE_EVERYONE";
    /// `APIKEY.CREATE`
    pub const APIKEY_CREATE: &str = "APIKEY.CREATE";
    /// `APIKEY.LIST`
    pub const APIKEY_LIST: &str = "APIKEY.LIST";
    /// `APIKEY.REVOKE`
    pub const APIKEY_REVOKE: &str = "APIKEY.REVOKE";
    /// `KEYS.ROTATE`
    pub const KEYS_ROTATE: &str = "KEYS.ROTATE";
    /// `KEYS.LIST`
    pub const KEYS_LIST: &str = "KEYS.LIST";

    /// `ADMIN.BOOTSTRAP` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminBootstrapParams")]
    #[serde(deny_unknown_fields)]
    pub struct BootstrapParams {
        /// The first superadmin's address.
        pub email: String,
    }

    /// `ADMIN.BOOTSTRAP` result.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminBootstrapped")]
    pub struct Bootstrapped {
        /// The superadmin's account.
        pub user_id: String,
        /// A one-time sign-in link (also mailed).
        pub link: Secret,
        /// Seconds until the link expires.
        pub expires_in: u64,
    }

    /// Names one account.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminUserRef")]
    #[serde(deny_unknown_fields)]
    pub struct UserRef {
        /// The account.
        pub user_id: String,
    }

    /// `ADMIN.USER.RECOVER` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminRecoverParams")]
    #[serde(deny_unknown_fields)]
    pub struct RecoverParams {
        /// The account.
        pub user_id: String,
        /// Why (recorded in the audit log): 3 to 500 characters.
        pub reason: String,
    }

    /// `ADMIN.USER.LIST` params.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminListParams")]
    #[serde(deny_unknown_fields)]
    pub struct ListParams {
        /// Only addresses starting with this (case-insensitive).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub email_prefix: Option<String>,
        /// From `next_cursor` of the previous page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cursor: Option<String>,
        /// Page size, 1..=500 (default 50).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<usize>,
    }

    /// An account as administrators see it (no secret, no hash).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminUser")]
    pub struct AdminUser {
        /// Account id.
        pub user_id: String,
        /// Address.
        pub email: String,
        /// Shown name.
        pub display_name: Option<String>,
        /// Proven address.
        pub email_verified: bool,
        /// RFC 3339.
        pub created_at: String,
        /// Disabled accounts cannot sign in.
        pub disabled: bool,
        /// Administrator.
        pub superadmin: bool,
        /// Has a password.
        pub has_password: bool,
        /// Has an authenticator app.
        pub has_totp: bool,
        /// Number of passkeys.
        pub passkeys: u64,
        /// Live sessions.
        pub sessions: u64,
    }

    /// `ADMIN.USER.LIST` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminUserPage")]
    pub struct UserPage {
        /// Accounts in address order.
        pub users: Vec<AdminUser>,
        /// Pass as `cursor` for the next page; `null` at the end.
        pub next_cursor: Option<String>,
    }

    /// Result of commands that change accounts or sessions.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminChanged")]
    pub struct Changed {
        /// The account.
        pub user_id: String,
        /// Sessions revoked by this call.
        pub sessions_revoked: u64,
    }

    /// `ADMIN.SESSION.REVOKE_EVERYONE` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminEveryoneRevoked")]
    pub struct EveryoneRevoked {
        /// Sessions revoked by this call, of every account.
        pub sessions_revoked: u64,
    }

    /// `APIKEY.CREATE` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminApiKeyCreateParams")]
    #[serde(deny_unknown_fields)]
    pub struct ApiKeyCreateParams {
        /// A name for the key.
        pub name: String,
        /// Scopes: `users:read`, `users:write`, `sessions:write`, `log:read`, `keys:write`,
        /// `apikeys:write`, `client:forward` (no command: lets requests carry the envelope's
        /// `client`).
        pub scopes: Vec<String>,
        /// Seconds until it expires (default: never).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub expires_in: Option<u64>,
    }

    /// One API key (never the key itself, except once in `APIKEY.CREATE`).
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminApiKeyInfo")]
    pub struct ApiKeyInfo {
        /// Public id.
        pub id: String,
        /// Name.
        pub name: String,
        /// Scopes.
        pub scopes: Vec<String>,
        /// RFC 3339.
        pub created_at: String,
        /// RFC 3339, or `null`.
        pub expires_at: Option<String>,
        /// RFC 3339 when revoked, or `null`.
        pub revoked_at: Option<String>,
        /// The key: only in the `APIKEY.CREATE` answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub key: Option<Secret>,
    }

    /// `APIKEY.LIST` result.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminApiKeyList")]
    pub struct ApiKeyList {
        /// Oldest first.
        pub keys: Vec<ApiKeyInfo>,
    }

    /// `APIKEY.REVOKE` params.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminApiKeyRef")]
    #[serde(deny_unknown_fields)]
    pub struct ApiKeyRef {
        /// Public id.
        pub id: String,
    }

    /// One signing key.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminSigningKeyInfo")]
    pub struct SigningKeyInfo {
        /// RFC 7638 thumbprint.
        pub kid: String,
        /// RFC 3339.
        pub created_at: String,
        /// `active` (signs new tokens), `verifying` (retired, still verifies tokens it signed
        /// until `verify_until`), or `retired`.
        pub state: String,
        /// RFC 3339, for retired keys.
        pub verify_until: Option<String>,
    }

    /// `KEYS.LIST` / `KEYS.ROTATE` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(rename = "AdminSigningKeys")]
    pub struct SigningKeys {
        /// Newest first.
        pub keys: Vec<SigningKeyInfo>,
    }
}
