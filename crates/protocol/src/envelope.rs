//! Request and response envelopes.

use crate::{ErrorBody, ErrorCode, Secret};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::fmt;
use std::net::IpAddr;

/// Longest string accepted as a request id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// The client's correlation id, echoed unchanged in the response: a string of at most
/// [`MAX_ID_LEN`] bytes, an integer from -2^63 to 2^64-1 (written without fraction or
/// exponent), a boolean or null.
///
/// Other numbers are refused rather than echoed: a fraction, an exponent or an integer beyond
/// 64 bits would come back as the nearest double, which a client reading integers exactly
/// (Python, Java, Go) takes for another id.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct RequestId(Value);

impl RequestId {
    /// Validates a JSON value as a request id.
    pub fn from_value(v: Value) -> Result<Self, &'static str> {
        match &v {
            Value::Array(_) | Value::Object(_) => Err("id must be a JSON scalar"),
            Value::String(s) if s.len() > MAX_ID_LEN => Err("id is too long"),
            Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
                Err("a numeric id must be an integer from -2^63 to 2^64-1, without fraction or exponent")
            }
            _ => Ok(RequestId(v)),
        }
    }

    /// The id as JSON.
    pub fn as_value(&self) -> &Value {
        &self.0
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        RequestId(Value::from(n))
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        RequestId(Value::from(s))
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        RequestId::from_value(v).map_err(serde::de::Error::custom)
    }
}

/// Longest `client.user_agent` accepted, in bytes (UTF-8).
pub const MAX_FORWARDED_USER_AGENT_LEN: usize = 1024;

/// Characters of a user agent the server keeps (the HTTP gateway cuts the `User-Agent` header
/// the same way).
pub const KEPT_USER_AGENT_CHARS: usize = 256;

/// The end user a trusted backend speaks for (the envelope's `client` member). Only an API key
/// holding the `client:forward` scope may send it.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ForwardedClient {
    /// The end user's IP address (IPv4 or IPv6, without port or zone).
    pub ip: IpAddr,
    /// The end user's user agent, as the backend received it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl ForwardedClient {
    /// An end user at `ip`.
    pub fn new(ip: IpAddr) -> Self {
        ForwardedClient {
            ip,
            user_agent: None,
        }
    }

    /// Sets the user agent.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// The user agent as the server keeps it: its first [`KEPT_USER_AGENT_CHARS`] characters.
    pub fn kept_user_agent(&self) -> Option<String> {
        self.user_agent
            .as_ref()
            .map(|a| a.chars().take(KEPT_USER_AGENT_CHARS).collect())
    }
}

impl fmt::Debug for ForwardedClient {
    // The address and agent are an end user's personal data: not for debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForwardedClient(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for ForwardedClient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor of maps only: a derived struct would also take the positional array form,
        // and a JSON map would keep the last of repeated members.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ForwardedClient;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with `ip` and optionally `user_agent`")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ForwardedClient, A::Error> {
                use serde::de::Error as _;
                let mut ip: Option<String> = None;
                let mut user_agent: Option<Option<String>> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "ip" if ip.is_none() => ip = Some(map.next_value()?),
                        "user_agent" if user_agent.is_none() => {
                            user_agent = Some(map.next_value()?)
                        }
                        "ip" | "user_agent" => {
                            return Err(A::Error::custom("a member of client appears twice"))
                        }
                        _ => {
                            return Err(A::Error::custom(
                                "client may only have the members ip and user_agent",
                            ))
                        }
                    }
                }
                let ip = ip.ok_or_else(|| A::Error::custom("client.ip is required"))?;
                // `IpAddr`'s parser takes only a bare address: no port, no brackets, no zone.
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| A::Error::custom("client.ip must be an IPv4 or IPv6 address"))?;
                let user_agent = user_agent.flatten();
                if let Some(a) = &user_agent {
                    if a.len() > MAX_FORWARDED_USER_AGENT_LEN {
                        return Err(A::Error::custom(
                            "client.user_agent may be at most 1024 bytes",
                        ));
                    }
                    if a.chars().any(char::is_control) {
                        return Err(A::Error::custom(
                            "client.user_agent must not contain control characters",
                        ));
                    }
                }
                Ok(ForwardedClient { ip, user_agent })
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// One command invocation: a line on TCP, or the body of `POST /api/v1/execute`.
///
/// Its `Debug` shows the id and the command but never the params (which may hold a password,
/// a code or a token) nor the token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Correlation id echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Command name, e.g. `SYS.PING`.
    pub command: String,
    /// Command params; absent means `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Bearer credential (access token, API key or operator token). Over HTTP it may come in
    /// the `Authorization: Bearer` header instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// The end user a trusted backend speaks for; only with an API key holding
    /// `client:forward`. Absent or `null` means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ForwardedClient>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Stands for a value that is present but must not be shown.
        struct Redacted;
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("<redacted>")
            }
        }
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("command", &self.command)
            .field("params", &self.params.as_ref().map(|_| Redacted))
            .field("token", &self.token.as_ref().map(|_| Redacted))
            .field("client", &self.client.as_ref().map(|_| Redacted))
            .finish()
    }
}

impl Request {
    /// A request with no id, params or token.
    pub fn new(command: impl Into<String>) -> Self {
        Request {
            id: None,
            command: command.into(),
            params: None,
            token: None,
            client: None,
        }
    }

    /// Sets the params.
    pub fn params(mut self, params: Value) -> Self {
        self.params = Some(params);
        self
    }

    /// Sets the bearer token.
    pub fn token(mut self, token: impl Into<Secret>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Speaks for the end user `client` (needs an API key holding `client:forward`).
    pub fn client(mut self, client: ForwardedClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Sets the correlation id.
    pub fn id(mut self, id: impl Into<RequestId>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// The one answer shape for every command. Exactly one of `data` (when `ok`) and `error` (when
/// not) carries information; the other is `null`. All five members are always present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id, or `null`.
    #[serde(default)]
    pub id: Option<RequestId>,
    /// Whether the command succeeded.
    pub ok: bool,
    /// The command name as sent, or `null` when the frame could not be read as a request.
    pub command: Option<String>,
    /// The result when `ok`, otherwise `null`.
    #[serde(default)]
    pub data: Value,
    /// The error when not `ok`, otherwise `null`.
    #[serde(default)]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A successful response.
    pub fn ok(id: Option<RequestId>, command: impl Into<String>, data: Value) -> Self {
        Response {
            id,
            ok: true,
            command: Some(command.into()),
            data,
            error: None,
        }
    }

    /// A failed response.
    pub fn err(id: Option<RequestId>, command: Option<String>, error: ErrorBody) -> Self {
        Response {
            id,
            ok: false,
            command,
            data: Value::Null,
            error: Some(error),
        }
    }

    /// The error code when the response failed.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error.as_ref().map(|e| e.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn response_always_carries_all_members() {
        let r = Response::ok(None, "SYS.PING", json!({"pong": true}));
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(
            v,
            json!({"id": null, "ok": true, "command": "SYS.PING", "data": {"pong": true}, "error": null})
        );
    }

    #[test]
    fn request_rejects_unknown_members_and_compound_ids() {
        assert!(serde_json::from_str::<Request>(r#"{"command":"X","extra":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"X","id":[1]}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"X","id":{"a":1}}"#).is_err());
        let long = "x".repeat(MAX_ID_LEN + 1);
        let line = format!(r#"{{"command":"X","id":"{long}"}}"#);
        assert!(serde_json::from_str::<Request>(&line).is_err());
        let ok: Request = serde_json::from_str(r#"{"command":"X","id":7,"token":"t"}"#)
            .unwrap_or_else(|_| Request::new("fail"));
        assert_eq!(ok.command, "X");
        assert_eq!(ok.id, Some(RequestId::from(7)));
    }

    #[test]
    fn forwarded_client_shape_is_strict() {
        let ok: Request = serde_json::from_str(
            r#"{"command":"X","client":{"ip":"203.0.113.9","user_agent":"Firefox"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = ok.client.unwrap_or_else(|| panic!("no client"));
        assert_eq!(c.ip.to_string(), "203.0.113.9");
        assert_eq!(c.user_agent.as_deref(), Some("Firefox"));
        let v6: Request = serde_json::from_str(r#"{"command":"X","client":{"ip":"2001:db8::7"}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v6.client.map(|c| c.ip.to_string()),
            Some("2001:db8::7".into())
        );
        let null: Request = serde_json::from_str(r#"{"command":"X","client":null}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(null.client.is_none());
        let long = "a".repeat(MAX_FORWARDED_USER_AGENT_LEN + 1);
        for bad in [
            r#"{"command":"X","client":{}}"#.to_owned(),
            r#"{"command":"X","client":"203.0.113.9"}"#.to_owned(),
            r#"{"command":"X","client":["203.0.113.9"]}"#.to_owned(),
            r#"{"command":"X","client":{"ip":"203.0.113.9","ip":"192.0.2.1"}}"#.to_owned(),
            r#"{"command":"X","client":{"ip":"203.0.113.9:80"}}"#.to_owned(),
            r#"{"command":"X","client":{"ip":"[2001:db8::1]"}}"#.to_owned(),
            r#"{"command":"X","client":{"ip":"fe80::1%eth0"}}"#.to_owned(),
            r#"{"command":"X","client":{"ip":"example.com"}}"#.to_owned(),
            r#"{"command":"X","client":{"ip":3405803785}}"#.to_owned(),
            r#"{"command":"X","client":{"ip":"203.0.113.9","port":1}}"#.to_owned(),
            r#"{"command":"X","client":{"ip":"203.0.113.9","user_agent":7}}"#.to_owned(),
            r#"{"command":"X","client":{"ip":"203.0.113.9","user_agent":"a\nb"}}"#.to_owned(),
            format!(r#"{{"command":"X","client":{{"ip":"203.0.113.9","user_agent":"{long}"}}}}"#),
        ] {
            assert!(
                serde_json::from_str::<Request>(&bad).is_err(),
                "{bad} accepted"
            );
        }
        let kept = ForwardedClient::new([203, 0, 113, 9].into()).user_agent("é".repeat(600));
        assert_eq!(
            kept.kept_user_agent().map(|a| a.chars().count()),
            Some(KEPT_USER_AGENT_CHARS)
        );
    }

    #[test]
    fn numeric_ids_are_64_bit_integers_echoed_digit_for_digit() {
        for id in [
            "0",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
        ] {
            let line = format!(r#"{{"command":"X","id":{id}}}"#);
            let req: Request = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{id}: {e}"));
            let echoed =
                serde_json::to_string(&Response::ok(req.id, "X", Value::Null)).unwrap_or_default();
            assert!(
                echoed.starts_with(&format!(r#"{{"id":{id},"#)),
                "{id}: {echoed}"
            );
        }
        for id in [
            "18446744073709551616",
            "-9223372036854775809",
            "1.5",
            "1.0",
            "1e2",
            "1E+2",
            "-0",
            "1e400",
            "123456789012345678901234567890",
        ] {
            let line = format!(r#"{{"command":"X","id":{id}}}"#);
            assert!(
                serde_json::from_str::<Request>(&line).is_err(),
                "{id} accepted"
            );
        }
    }

    #[test]
    fn request_debug_never_shows_params_or_token() {
        let r = Request::new("AUTH.LOGIN")
            .id("req-1")
            .params(json!({"email": "a@example.com", "password": "hunter2-correct-horse"}))
            .token("tok-3f9a1c07b2e4d518")
            .client(ForwardedClient::new([198, 51, 100, 77].into()).user_agent("AgentSecretUA"));
        let shown = format!("{r:?} {r:#?}");
        for secret in [
            "hunter2-correct-horse",
            "tok-3f9a1c07b2e4d518",
            "a@example.com",
            "198.51.100.77",
            "AgentSecretUA",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        // What is not secret is still there to debug with.
        assert!(
            shown.contains("AUTH.LOGIN") && shown.contains("req-1"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
        // Absent params are shown as absent, not as redacted.
        let bare = format!("{:?}", Request::new("SYS.PING"));
        assert!(bare.contains("params: None"), "{bare}");
    }
}
