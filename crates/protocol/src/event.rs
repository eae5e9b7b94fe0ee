//! The audit event appended to the hash-chained log for every command outcome.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// `prev` of the first event: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who ran a command, as recorded in an event (`"anonymous"`, `"operator"`, `"system"`,
/// `"user:<id>"`, `"apikey:<id>"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// No credential was presented, or it could not be verified.
    Anonymous,
    /// The holder of the local operator token.
    Operator,
    /// The server itself (background work such as mail delivery).
    System,
    /// A signed-in user.
    User(String),
    /// An application backend's API key.
    ApiKey(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Anonymous => f.write_str("anonymous"),
            Actor::Operator => f.write_str("operator"),
            Actor::System => f.write_str("system"),
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::ApiKey(id) => write!(f, "apikey:{id}"),
        }
    }
}

impl FromStr for Actor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "anonymous" => Ok(Actor::Anonymous),
            "operator" => Ok(Actor::Operator),
            "system" => Ok(Actor::System),
            _ => {
                if let Some(id) = s.strip_prefix("user:").filter(|id| !id.is_empty()) {
                    Ok(Actor::User(id.to_owned()))
                } else if let Some(id) = s.strip_prefix("apikey:").filter(|id| !id.is_empty()) {
                    Ok(Actor::ApiKey(id.to_owned()))
                } else {
                    Err(format!("not an actor: {s:?}"))
                }
            }
        }
    }
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One entry of the event log. Every member is always present (`null` when empty), so the
/// canonical form that the hash covers is stable.
///
/// `hash = hex(SHA-256(canonical_json(event without "hash")))`, and `prev` is the previous
/// event's `hash` ([`GENESIS_HASH`] for seq 1), which chains the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the outcome was decided: RFC 3339, UTC, milliseconds (`2026-11-26T01:02:03.456Z`).
    pub time: String,
    /// The command name, or `null` when the frame could not be read as a request.
    pub command: Option<String>,
    /// `"ok"` or the error code.
    pub outcome: String,
    /// Who ran it.
    pub actor: Actor,
    /// The account the command was about, when there is one.
    pub subject: Option<String>,
    /// The session the command ran in, when there is one.
    pub session: Option<String>,
    /// The client's address (`ip:port`), when known.
    pub client: Option<String>,
    /// `"tcp"`, `"http"` or `"internal"`.
    pub transport: String,
    /// Time spent in the dispatcher, in microseconds.
    pub duration_us: u64,
    /// A small redacted summary: decision points (`"event": "session.created"`), counts, reasons.
    /// Never a secret.
    pub summary: Map<String, Value>,
    /// Hash of the previous event.
    pub prev: String,
    /// Hash of this event.
    pub hash: String,
}

impl Event {
    /// Computes the hash this event should carry: SHA-256 over the canonical JSON of every member
    /// except `hash`, lower-case hex.
    pub fn compute_hash(&self) -> String {
        let mut v = match serde_json::to_value(self) {
            Ok(v) => v,
            // Serialising plain data into a `Value` cannot fail; an empty hash never verifies.
            Err(_) => return String::new(),
        };
        if let Value::Object(m) = &mut v {
            m.remove("hash");
        }
        hash_value(&v)
    }

    /// Whether `hash` matches the contents.
    pub fn hash_is_valid(&self) -> bool {
        self.hash == self.compute_hash()
    }
}

/// Hex SHA-256 of the canonical JSON of a value.
pub fn hash_value(v: &Value) -> String {
    let mut bytes = Vec::with_capacity(512);
    canonical_json(v, &mut bytes);
    hex::encode(Sha256::digest(&bytes))
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace, strings and numbers as
/// serde_json writes them. Independent of map ordering features, so any implementation that
/// sorts keys and writes compact JSON reproduces it.
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                if let Some(child) = m.get(k) {
                    canonical_json(child, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, child) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(child, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Writing a scalar `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Event {
        let mut summary = Map::new();
        summary.insert("zeta".into(), json!(1));
        summary.insert("alpha".into(), json!("x"));
        let mut e = Event {
            seq: 1,
            time: "2026-11-26T01:02:03.456Z".into(),
            command: Some("SYS.INFO".into()),
            outcome: "ok".into(),
            actor: Actor::User("u1".into()),
            subject: None,
            session: None,
            client: Some("127.0.0.1:5000".into()),
            transport: "tcp".into(),
            duration_us: 12,
            summary,
            prev: GENESIS_HASH.into(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    #[test]
    fn canonical_form_sorts_keys_at_every_depth() {
        let mut out = Vec::new();
        canonical_json(
            &json!({"b": {"d": 1, "c": [true, null]}, "a": "é\n"}),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"é\n","b":{"c":[true,null],"d":1}}"#
        );
    }

    #[test]
    fn any_change_breaks_the_hash() {
        let e = sample();
        assert!(e.hash_is_valid());
        let mut t = e.clone();
        t.outcome = "INVALID_CREDENTIALS".into();
        assert!(!t.hash_is_valid());
        let mut t = e.clone();
        t.prev = "1".repeat(64);
        assert!(!t.hash_is_valid());
        let mut t = e;
        t.summary.insert("alpha".into(), json!("y"));
        assert!(!t.hash_is_valid());
    }

    #[test]
    fn actors_round_trip_as_strings() {
        for a in [
            Actor::Anonymous,
            Actor::Operator,
            Actor::System,
            Actor::User("abc".into()),
            Actor::ApiKey("k1".into()),
        ] {
            let s = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Actor>(&s).unwrap(), a);
        }
        assert!("user:".parse::<Actor>().is_err());
        assert!("root".parse::<Actor>().is_err());
    }
}
