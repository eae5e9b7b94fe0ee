//! Who is calling, and who may call what.

use portcullis_protocol::Actor;

/// A signed-in user, as proven by a verified access token of a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCaller {
    /// The account.
    pub user_id: String,
    /// The session.
    pub session_id: String,
    /// Assurance level of the session.
    pub aal: u8,
    /// Authentication methods of the session.
    pub amr: Vec<String>,
    /// When the user last proved a factor (Unix seconds).
    pub auth_time: i64,
    /// The session may only enrol a second factor.
    pub enrolment_only: bool,
    /// A step-up of the session has issued a newer access token since this one (the token's
    /// `sgen` is older than the session's generation): it no longer passes the step-up gate.
    pub superseded: bool,
}

/// The verified identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential.
    Anonymous,
    /// The holder of the local operator token.
    Operator,
    /// A signed-in user.
    User(UserCaller),
    /// An application backend's API key.
    ApiKey(ApiKeyCaller),
}

/// A verified API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyCaller {
    /// The key's id (not the key).
    pub id: String,
    /// What it may do.
    pub scopes: Vec<String>,
}

impl Caller {
    /// How the caller appears in events.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Anonymous => Actor::Anonymous,
            Caller::Operator => Actor::Operator,
            Caller::User(u) => Actor::User(u.user_id.clone()),
            Caller::ApiKey(k) => Actor::ApiKey(k.id.clone()),
        }
    }

    /// The signed-in user, if any.
    pub fn user(&self) -> Option<&UserCaller> {
        match self {
            Caller::User(u) => Some(u),
            _ => None,
        }
    }
}

/// What a command demands of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone, with or without a credential (a presented credential must still be valid).
    Anyone,
    /// The operator.
    Operator,
    /// A signed-in user (access token of a live session).
    User,
    /// A signed-in user who proved a factor within the step-up window, at any assurance level
    /// (sensitive commands). Otherwise `FORBIDDEN` with `details.reason = "step_up_required"`.
    UserStepUp,
    /// Administration: the operator token, a superadmin user, or an API key holding the scope.
    Admin(Scope),
    /// Administration no API key may do: the operator token or a superadmin user.
    Superadmin,
}

/// API key scopes, named after command families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `ADMIN.USER.GET`, `ADMIN.USER.LIST`.
    UsersRead,
    /// `ADMIN.USER.DISABLE/ENABLE/DELETE/RECOVER`.
    UsersWrite,
    /// `ADMIN.SESSION.REVOKE_ALL`.
    SessionsWrite,
    /// `LOG.*`.
    LogRead,
    /// `KEYS.*`.
    KeysWrite,
    /// `APIKEY.*`.
    ApiKeysWrite,
    /// Not a command family: lets requests carry the envelope's `client` member, the end user
    /// an application backend speaks for.
    ClientForward,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 7] = [
        Scope::UsersRead,
        Scope::UsersWrite,
        Scope::SessionsWrite,
        Scope::LogRead,
        Scope::KeysWrite,
        Scope::ApiKeysWrite,
        Scope::ClientForward,
    ];

    /// Wire name, e.g. `users:read`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::UsersRead => "users:read",
            Scope::UsersWrite => "users:write",
            Scope::SessionsWrite => "sessions:write",
            Scope::LogRead => "log:read",
            Scope::KeysWrite => "keys:write",
            Scope::ApiKeysWrite => "apikeys:write",
            Scope::ClientForward => "client:forward",
        }
    }

    /// Whether `caller` is an API key holding this scope.
    pub fn held_by(self, caller: &Caller) -> bool {
        matches!(caller, Caller::ApiKey(k) if k.scopes.iter().any(|s| s == self.as_str()))
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl Requirement {
    /// Name used by `SYS.COMMANDS` and `protocol/commands/*.md`.
    pub const fn name(self) -> &'static str {
        match self {
            Requirement::Anyone => "anyone",
            Requirement::Operator => "operator",
            Requirement::User => "user",
            Requirement::UserStepUp => "user_step_up",
            Requirement::Superadmin => "superadmin",
            Requirement::Admin(scope) => match scope {
                Scope::UsersRead => "admin:users:read",
                Scope::UsersWrite => "admin:users:write",
                Scope::SessionsWrite => "admin:sessions:write",
                Scope::LogRead => "admin:log:read",
                Scope::KeysWrite => "admin:keys:write",
                Scope::ApiKeysWrite => "admin:apikeys:write",
                // No command has this class: the scope opens no command.
                Scope::ClientForward => "admin:client:forward",
            },
        }
    }

    /// Whether `caller` satisfies the requirement.
    pub fn admits(self, caller: &Caller) -> bool {
        match self {
            Requirement::Anyone => true,
            Requirement::Operator => matches!(caller, Caller::Operator),
            Requirement::User | Requirement::UserStepUp => matches!(caller, Caller::User(_)),
            // Superadmin users are recognised by the dispatcher's gate (it reads the account).
            Requirement::Admin(scope) => match caller {
                Caller::Operator | Caller::User(_) => true,
                Caller::ApiKey(k) => k.scopes.iter().any(|s| s == scope.as_str()),
                Caller::Anonymous => false,
            },
            Requirement::Superadmin => matches!(caller, Caller::Operator | Caller::User(_)),
        }
    }
}

/// Which rate limiter guards a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// Cheap reads and liveness.
    Cheap,
    /// Operator tooling.
    Operator,
    /// Guessable secrets: passwords, refresh tokens (per account and per address).
    Credential,
    /// Authenticated account and session management.
    Account,
    /// Requests that send mail.
    Send,
}

impl RateClass {
    /// Name used by `SYS.COMMANDS`.
    pub const fn name(self) -> &'static str {
        match self {
            RateClass::Cheap => "cheap",
            RateClass::Operator => "operator",
            RateClass::Credential => "credential",
            RateClass::Account => "account",
            RateClass::Send => "send",
        }
    }
}
