//! The error a handler returns: a code from the closed set and a message safe to show.

use portcullis_protocol::{ErrorBody, ErrorCode};
use serde_json::Value;

/// A command's failure. The message is sent to the client, so it must be safe to show: no
/// secret, no internal detail, nothing that tells whether an account exists. Internal causes go
/// to tracing at the place they happen.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    body: ErrorBody,
}

impl CommandError {
    /// An error with a code and a safe message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError {
            body: ErrorBody::new(code, message),
        }
    }

    /// `BAD_REQUEST`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        CommandError::new(ErrorCode::BadRequest, message)
    }

    /// `INVALID_PARAMS`.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        CommandError::new(ErrorCode::InvalidParams, message)
    }

    /// `UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        CommandError::new(ErrorCode::Unauthenticated, message)
    }

    /// `INTERNAL`, with a fixed message; log the cause where it happens.
    pub fn internal() -> Self {
        CommandError::new(ErrorCode::Internal, "internal error")
    }

    /// Adds machine-readable details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.body.details = Some(details);
        self
    }

    /// Adds a retry hint.
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.body.retry_after_ms = Some(ms);
        self
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.body.code
    }

    /// The wire body.
    pub fn into_body(self) -> ErrorBody {
        self.body
    }

    /// The wire body, borrowed.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<portcullis_store::StoreError> for CommandError {
    fn from(e: portcullis_store::StoreError) -> Self {
        tracing::error!(error = %e, "storage failure");
        match e {
            portcullis_store::StoreError::Closed => {
                CommandError::new(ErrorCode::Unavailable, "server is shutting down")
            }
            portcullis_store::StoreError::Busy => {
                CommandError::new(ErrorCode::Unavailable, "too busy; retry")
            }
            portcullis_store::StoreError::Unavailable(_) => {
                CommandError::new(ErrorCode::Unavailable, "storage is unreachable; retry")
            }
            _ => CommandError::internal(),
        }
    }
}

/// Rewrites a serde error message so it names fields and expected types but never echoes a
/// value the client sent (which could be a password or a code in the wrong place).
pub fn sanitize_serde_message(msg: &str) -> String {
    for prefix in [
        "invalid type: ",
        "invalid value: ",
        "invalid length ",
        "unknown variant ",
    ] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            let kind = prefix.trim_end_matches([':', ' ']);
            return match rest.find(", expected ") {
                Some(i) => format!("{kind}, expected {}", &rest[i + ", expected ".len()..]),
                None => kind.to_owned(),
            };
        }
    }
    msg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_the_values() {
        assert_eq!(
            sanitize_serde_message("invalid type: string \"hunter2\", expected u64"),
            "invalid type, expected u64"
        );
        assert_eq!(
            sanitize_serde_message("invalid value: integer `123456`, expected a string"),
            "invalid value, expected a string"
        );
        assert_eq!(
            sanitize_serde_message(
                "unknown variant `123456`, expected one of `totp`, `recovery_code`, `passkey`"
            ),
            "unknown variant, expected one of `totp`, `recovery_code`, `passkey`"
        );
        assert_eq!(
            sanitize_serde_message("unknown field `x`, expected `a` or `b`"),
            "unknown field `x`, expected `a` or `b`"
        );
    }
}
