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

/// On the wire an actor is one string (see [`Actor`]'s `Display`).
impl schemars::JsonSchema for Actor {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Actor".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`anonymous`, `operator`, `system`, `user:<id>` or `apikey:<id>`."
        })
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
/// event's `hash` (64 zeros for seq 1: `GENESIS_HASH`), which chains the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
        let mut bytes = Vec::with_capacity(512);
        self.write_canonical(&mut bytes);
        hex::encode(Sha256::digest(&bytes))
    }

    /// Writes the canonical JSON of the event without `hash` straight from the fields: the same
    /// bytes as [`canonical_json`] of the event as a `Value` (a test holds them equal), without
    /// building that `Value`. Members are written in sorted key order.
    fn write_canonical(&self, out: &mut Vec<u8>) {
        fn key(out: &mut Vec<u8>, first: bool, k: &str) {
            out.extend_from_slice(if first { b"{\"" } else { b",\"" });
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
        }
        fn opt(out: &mut Vec<u8>, v: Option<&str>) {
            match v {
                Some(s) => write_str(s, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        key(out, true, "actor");
        write_display(&self.actor, out);
        key(out, false, "client");
        opt(out, self.client.as_deref());
        key(out, false, "command");
        opt(out, self.command.as_deref());
        key(out, false, "duration_us");
        out.extend_from_slice(itoa(self.duration_us, &mut [0u8; 20]));
        key(out, false, "outcome");
        write_str(&self.outcome, out);
        key(out, false, "prev");
        write_str(&self.prev, out);
        key(out, false, "seq");
        out.extend_from_slice(itoa(self.seq, &mut [0u8; 20]));
        key(out, false, "session");
        opt(out, self.session.as_deref());
        key(out, false, "subject");
        opt(out, self.subject.as_deref());
        key(out, false, "summary");
        canonical_map(&self.summary, out);
        key(out, false, "time");
        write_str(&self.time, out);
        key(out, false, "transport");
        write_str(&self.transport, out);
        out.push(b'}');
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
        Value::Object(m) => canonical_map(m, out),
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

fn canonical_map(m: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    // Usually sorted already (serde_json's map is a BTreeMap unless `preserve_order` is on).
    if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    out.push(b'{');
    for (i, (k, child)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(k, out);
        out.push(b':');
        canonical_json(child, out);
    }
    out.push(b'}');
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Writing a scalar `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_display(v: &impl fmt::Display, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, &format_args!("{v}"));
}

/// Decimal digits of `n`, as serde_json writes an unsigned integer.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10` is below 10.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
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

    /// The hash written straight from the fields equals the hash of the canonical JSON of the
    /// event as a `Value` (the definition in events.md), for awkward contents too.
    #[test]
    fn direct_canonical_form_equals_the_value_based_definition() {
        fn by_value(e: &Event) -> String {
            let mut v = serde_json::to_value(e).unwrap();
            v.as_object_mut().unwrap().remove("hash");
            hash_value(&v)
        }
        let mut variants = vec![sample()];
        let mut e = sample();
        e.command = None;
        e.client = None;
        e.actor = Actor::ApiKey("k\"1\\".into());
        e.subject = Some("é \u{1F600} \u{0}\u{1f}\u{7f} </script>".into());
        e.session = Some(String::new());
        e.seq = u64::MAX;
        e.duration_us = 0;
        e.summary = Map::new();
        variants.push(e);
        let mut e = sample();
        e.summary.insert(
            "nested".into(),
            json!({"z": [1, -2.5, null, {"b": true, "a": "\n"}], "a": 1e300, "m": u64::MAX}),
        );
        e.summary.insert("\u{e9}".into(), json!("x"));
        e.summary.insert("E".into(), json!(-0));
        e.actor = Actor::Operator;
        e.duration_us = 1_234_567_890;
        e.time = "\t".into();
        variants.push(e);
        for e in &variants {
            assert_eq!(e.compute_hash(), by_value(e), "{e:?}");
        }
        for n in [0u64, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(itoa(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }
}
