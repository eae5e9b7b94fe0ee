//! The closed set of error codes and the error body of a failed response.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every error code the server can answer with. The set is closed: a code never changes meaning
/// once published, and `protocol/errors.md` documents each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The frame is not a JSON object in the request shape (invalid JSON, not UTF-8, wrong types
    /// in the envelope). The connection stays usable.
    BadRequest,
    /// The frame is longer than the server's limit. Over TCP the connection is closed after this
    /// answer.
    FrameTooLarge,
    /// No command of that name exists.
    UnknownCommand,
    /// The params do not match the command's schema (unknown field, wrong type, missing field,
    /// value out of range).
    InvalidParams,
    /// No credential was presented where one is needed, or the presented one is not valid.
    Unauthenticated,
    /// The caller is known but may not run this command.
    Forbidden,
    /// The presented secret (password, code, link, passkey assertion) did not verify. Never says
    /// whether the account exists.
    InvalidCredentials,
    /// The first factor verified, and a second factor is needed: `details.mfa_token` continues.
    MfaRequired,
    /// The artifact (link, code, challenge, token) has expired.
    Expired,
    /// The single-use artifact has already been consumed.
    AlreadyUsed,
    /// Too many failed attempts against this artifact or account; `retry_after_ms` may say when
    /// trying again is useful.
    TooManyAttempts,
    /// The caller is sending too fast; `retry_after_ms` says when to try again.
    RateLimited,
    /// The operation conflicts with existing state (e.g. the email is taken).
    Conflict,
    /// The referenced object does not exist (or is not visible to the caller).
    NotFound,
    /// The server cannot serve this now (shutting down, overloaded, connection cap reached, a
    /// log follower fell behind). Retrying later is safe.
    Unavailable,
    /// An unexpected server-side failure. The message carries no detail; the server's tracing
    /// output has it.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of `protocol/errors.md`.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownCommand,
        ErrorCode::InvalidParams,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::InvalidCredentials,
        ErrorCode::MfaRequired,
        ErrorCode::Expired,
        ErrorCode::AlreadyUsed,
        ErrorCode::TooManyAttempts,
        ErrorCode::RateLimited,
        ErrorCode::Conflict,
        ErrorCode::NotFound,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire, e.g. `"INVALID_PARAMS"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::InvalidParams => "INVALID_PARAMS",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::InvalidCredentials => "INVALID_CREDENTIALS",
            ErrorCode::MfaRequired => "MFA_REQUIRED",
            ErrorCode::Expired => "EXPIRED",
            ErrorCode::AlreadyUsed => "ALREADY_USED",
            ErrorCode::TooManyAttempts => "TOO_MANY_ATTEMPTS",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Parses the wire form of a code.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// One code from the closed set.
    pub code: ErrorCode,
    /// A human-readable message that is safe to show: it never carries a secret and never says
    /// whether an account exists.
    pub message: String,
    /// When present, the earliest useful moment to retry, in milliseconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Machine-readable details for some codes (e.g. `MFA_REQUIRED`, a lagged log follower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    /// An error body with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            retry_after_ms: None,
            details: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let back: ErrorCode = serde_json::from_str(&json).unwrap_or(ErrorCode::Internal);
            assert_eq!(back, code);
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }
}
