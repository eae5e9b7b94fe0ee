//! What a handler tells the dispatcher to record about its outcome.

use serde_json::{Map, Value};
use std::sync::Mutex;

/// Collected during one command and written into its event by the dispatcher. Only ids, counts,
/// reasons and decision names belong here, never a secret.
#[derive(Debug, Default)]
pub struct Audit {
    inner: Mutex<AuditFields>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct AuditFields {
    pub subject: Option<String>,
    pub session: Option<String>,
    pub summary: Map<String, Value>,
    pub events: Vec<&'static str>,
}

/// A value allowed in an event summary. Deliberately not implemented for the secret wrapper.
pub enum AuditValue {
    /// A string: an id, a reason, a decision name.
    Text(String),
    /// A count or sequence number.
    Number(u64),
    /// A flag.
    Flag(bool),
}

impl From<&str> for AuditValue {
    fn from(s: &str) -> Self {
        AuditValue::Text(s.to_owned())
    }
}
impl From<String> for AuditValue {
    fn from(s: String) -> Self {
        AuditValue::Text(s)
    }
}
impl From<u64> for AuditValue {
    fn from(n: u64) -> Self {
        AuditValue::Number(n)
    }
}
impl From<bool> for AuditValue {
    fn from(b: bool) -> Self {
        AuditValue::Flag(b)
    }
}

impl Audit {
    fn with<R>(&self, f: impl FnOnce(&mut AuditFields) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The account the command is about.
    pub fn subject(&self, id: impl Into<String>) {
        self.with(|a| a.subject = Some(id.into()));
    }

    /// The session the command ran in.
    pub fn session(&self, id: impl Into<String>) {
        self.with(|a| a.session = Some(id.into()));
    }

    /// Names a decision point reached by this command (`session.created`, `magic.verified`).
    /// The summary's `event` member lists them in order, separated by spaces.
    pub fn event(&self, name: &'static str) {
        self.with(|a| a.events.push(name));
    }

    /// Adds a summary member, e.g. `note("reason", "expired")`.
    pub fn note(&self, key: &'static str, value: impl Into<AuditValue>) {
        let v = match value.into() {
            AuditValue::Text(s) => Value::String(s),
            AuditValue::Number(n) => Value::from(n),
            AuditValue::Flag(b) => Value::Bool(b),
        };
        self.with(|a| a.summary.insert(key.to_owned(), v));
    }

    pub(crate) fn take(&self) -> AuditFields {
        let mut fields = self.with(std::mem::take);
        if !fields.events.is_empty() {
            fields
                .summary
                .insert("event".to_owned(), Value::String(fields.events.join(" ")));
        }
        fields
    }
}
