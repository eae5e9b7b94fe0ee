//! The one dispatcher behind every transport.

use crate::base::audit::AuditFields;
use crate::base::caller::{Caller, UserCaller};
use crate::base::clock::rfc3339_ms;
use crate::base::error::{sanitize_serde_message, CommandError};
use crate::identity::sessions;
use crate::infra::node::{operator_token_hash, OPERATOR_TOKEN_PREFIX};
use crate::infra::registry::Output;
use crate::infra::tail::TailStream;
use crate::{App, Audit, Ctx};
use portcullis_protocol::{ErrorCode, Event, Request, RequestId, Response, Secret};
use portcullis_store::SyncTicket;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tracing::Instrument;

/// Longest command name kept in an event; longer names are cut there.
const MAX_LOGGED_COMMAND_LEN: usize = 64;

/// Which transport a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// NDJSON over TCP.
    Tcp,
    /// The HTTP gateway.
    Http,
    /// In-process (tests, offline tools).
    Internal,
}

impl Transport {
    /// Name recorded in events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Http => "http",
            Transport::Internal => "internal",
        }
    }
}

/// Where a request came from.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The transport.
    pub transport: Transport,
    /// The peer address.
    pub client: Option<SocketAddr>,
    /// The `User-Agent` (HTTP), cut to 256 bytes.
    pub user_agent: Option<String>,
}

/// An answer that may be sent once its effects and event are durable.
pub struct Pending {
    response: Response,
    durable: Option<SyncTicket>,
}

impl Pending {
    /// The response as computed (before durability is known). For inspection only: send
    /// [`Pending::resolve`]'s result.
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// Whether the answer may go out now, with nothing to wait for.
    pub fn is_ready(&self) -> bool {
        self.durable.is_none()
    }

    /// Waits for durability and returns the response to send. If the write could not be made
    /// durable, the answer becomes `UNAVAILABLE` (the outcome may or may not survive a crash).
    pub async fn resolve(self) -> Response {
        let Some(ticket) = self.durable else {
            return self.response;
        };
        match ticket.await {
            Ok(()) => self.response,
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; answering UNAVAILABLE");
                let err = CommandError::new(
                    ErrorCode::Unavailable,
                    "the outcome could not be made durable; retry",
                );
                Response::err(self.response.id, self.response.command, err.into_body())
            }
        }
    }
}

/// What the dispatcher returns to a transport.
pub enum Reply {
    /// One answer.
    Unary(Pending),
    /// A stream of answers (`LOG.TAIL`). After a following stream the connection carries
    /// nothing else.
    Stream {
        /// The lines.
        stream: TailStream,
        /// Whether it follows live (never ends by itself).
        follow: bool,
    },
}

impl Reply {
    /// The single response, awaiting durability (streams are drained into their first line;
    /// use only where streams cannot occur).
    pub async fn into_response(self) -> Option<Response> {
        match self {
            Reply::Unary(p) => Some(p.resolve().await),
            Reply::Stream { mut stream, .. } => stream.next().await,
        }
    }
}

/// Routes requests to handlers and audits every outcome. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    app: Arc<App>,
    request_ids: Arc<RequestIds>,
}

/// Request ids for tracing: a random start, then counting, so ids are unique within a process
/// and unpredictable across processes without drawing from the OS generator per request.
struct RequestIds {
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new(app: &App) -> Self {
        let mut start = [0u8; 8];
        app.rng.fill(&mut start);
        RequestIds {
            next: std::sync::atomic::AtomicU64::new(u64::from_le_bytes(start)),
        }
    }

    fn next(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

struct Outcome {
    id: Option<RequestId>,
    command: Option<String>,
    caller: Caller,
    result: Result<Output, CommandError>,
    audit: AuditFields,
    logged: bool,
    read_only: bool,
}

impl Dispatcher {
    /// A dispatcher over `app`.
    pub fn new(app: Arc<App>) -> Self {
        let request_ids = Arc::new(RequestIds::new(&app));
        Dispatcher { app, request_ids }
    }

    /// The app.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Executes one raw frame (a TCP line or an HTTP body). `header_token` is the HTTP
    /// `Authorization: Bearer` credential, if any.
    pub async fn execute_frame(
        &self,
        frame: &[u8],
        header_token: Option<Secret>,
        conn: &ConnInfo,
    ) -> Reply {
        let started = Instant::now();
        match parse_request(frame) {
            Ok(mut req) => {
                if header_token.is_some() {
                    if req.token.is_some() {
                        let err = CommandError::bad_request(
                            "token given both in the body and in the Authorization header",
                        );
                        return self.unreadable(req.id, err, conn, started).await;
                    }
                    req.token = header_token;
                }
                self.run(req, conn, started).await
            }
            Err((id, err)) => self.unreadable(id, err, conn, started).await,
        }
    }

    /// Executes a parsed request.
    pub async fn execute(&self, req: Request, conn: &ConnInfo) -> Reply {
        self.run(req, conn, Instant::now()).await
    }

    /// Answers a frame that is not a readable request (and logs it). Transports use this for
    /// framing errors too.
    pub async fn unreadable(
        &self,
        id: Option<RequestId>,
        err: CommandError,
        conn: &ConnInfo,
        started: Instant,
    ) -> Reply {
        let outcome = Outcome {
            id,
            command: None,
            caller: Caller::Anonymous,
            result: Err(err),
            audit: AuditFields::default(),
            logged: true,
            read_only: false,
        };
        self.finish(outcome, conn, started)
            .instrument(self.span("-"))
            .await
    }

    /// A tracing span for one request: every line written while it runs carries a fresh
    /// request id and the command name (never a parameter).
    fn span(&self, command: &str) -> tracing::Span {
        let rid = self.request_ids.next();
        tracing::info_span!("request", request_id = %format_args!("{rid:016x}"), command = %truncate(command, MAX_LOGGED_COMMAND_LEN))
    }

    async fn run(&self, req: Request, conn: &ConnInfo, started: Instant) -> Reply {
        let span = self.span(&req.command);
        self.run_in_span(req, conn, started).instrument(span).await
    }

    async fn run_in_span(&self, req: Request, conn: &ConnInfo, started: Instant) -> Reply {
        let Request {
            id,
            command,
            params,
            token,
            client: forwarded,
        } = req;
        let audit = Arc::new(Audit::default());
        let spec = self.app.registry.get(&command);
        let read_only = spec.is_some_and(|s| s.read_only);
        // The end user's context, once a key holding `client:forward` has spoken for them.
        let mut end_user: Option<ConnInfo> = None;
        let (caller, logged, result) = match spec {
            None => (
                Caller::Anonymous,
                true,
                Err(CommandError::new(
                    ErrorCode::UnknownCommand,
                    "no such command; SYS.COMMANDS lists them",
                )),
            ),
            Some(spec) => {
                let admitted = match &forwarded {
                    None => self
                        .rate_then_authenticate(spec, conn, token.as_ref(), &audit)
                        .await
                        .map_err(|e| (Caller::Anonymous, e)),
                    Some(client) => {
                        self.forward(spec, conn, token.as_ref(), client, &audit, &mut end_user)
                            .await
                    }
                };
                let conn = end_user.as_ref().unwrap_or(conn);
                match admitted {
                    Err((caller, e)) => (caller, spec.logged, Err(e)),
                    Ok(caller) if !spec.caller.admits(&caller) => {
                        let err = match caller {
                            Caller::Anonymous => CommandError::unauthenticated(
                                "this command needs a credential in `token`",
                            ),
                            _ => CommandError::new(
                                ErrorCode::Forbidden,
                                "the credential may not run this command",
                            ),
                        };
                        (caller, spec.logged, Err(err))
                    }
                    Ok(caller) => match self.gate(spec, &caller, &audit).await {
                        Err(err) => (caller, spec.logged, Err(err)),
                        Ok(()) => {
                            let ctx = Ctx {
                                app: Arc::clone(&self.app),
                                caller: caller.clone(),
                                client: conn.client,
                                user_agent: conn.user_agent.clone(),
                                request_id: id.clone(),
                                audit: Arc::clone(&audit),
                            };
                            let result = (spec.handler)(ctx, params.unwrap_or(Value::Null)).await;
                            (caller, spec.logged, result)
                        }
                    },
                }
            }
        };
        let outcome = Outcome {
            id,
            command: Some(command),
            caller,
            result,
            audit: audit.take(),
            logged,
            read_only,
        };
        self.finish(outcome, end_user.as_ref().unwrap_or(conn), started)
            .await
    }

    /// The per-address limit of the command's rate class, checked before any token is verified
    /// (a refused request costs no signature check), then the token.
    async fn rate_then_authenticate(
        &self,
        spec: &crate::CommandSpec,
        conn: &ConnInfo,
        token: Option<&Secret>,
        audit: &Audit,
    ) -> Result<Caller, CommandError> {
        if let Some(addr) = conn.client {
            self.app.limits.check(spec.rate, addr.ip())?;
        }
        self.authenticate(token, audit).await
    }

    /// A request that speaks for an end user (the envelope's `client`). The token comes first:
    /// only an API key holding `client:forward` may speak for someone, and any other sender is
    /// refused (`FORBIDDEN`; a `pk_live_` key that is not valid, `UNAUTHENTICATED`) and counted
    /// against the rate class of its own address, never the claimed one (over that limit, the
    /// refusal is `RATE_LIMITED`). Access tokens are not verified here: no user or operator
    /// speaks for another. Once the key is admitted, `end_user` holds the end user's address
    /// (port 0) and agent, which the command, its limits and its event then see, and the
    /// key's forwarding budget (`rate_limits.forward`) and the end user's rate class are
    /// counted.
    async fn forward(
        &self,
        spec: &crate::CommandSpec,
        conn: &ConnInfo,
        token: Option<&Secret>,
        client: &portcullis_protocol::ForwardedClient,
        audit: &Audit,
        end_user: &mut Option<ConnInfo>,
    ) -> Result<Caller, (Caller, CommandError)> {
        let refused = |caller: Caller, err: CommandError| {
            // The sender pays for a refused forward, in its own address's budget.
            let err = match conn.client {
                Some(addr) => self
                    .app
                    .limits
                    .check(spec.rate, addr.ip())
                    .err()
                    .unwrap_or(err),
                None => err,
            };
            (caller, err)
        };
        let forbidden = || {
            CommandError::new(
                ErrorCode::Forbidden,
                "only an API key with the client:forward scope may send `client`",
            )
        };
        let is_key =
            token.is_some_and(|t| t.expose().starts_with(crate::identity::apikeys::PREFIX));
        if !is_key {
            return Err(refused(Caller::Anonymous, forbidden()));
        }
        let caller = match self.authenticate(token, audit).await {
            Ok(caller) => caller,
            Err(e) => return Err(refused(Caller::Anonymous, e)),
        };
        // Only an API key can hold the scope.
        let key_id = match &caller {
            Caller::ApiKey(k) if crate::base::caller::Scope::ClientForward.held_by(&caller) => {
                k.id.clone()
            }
            _ => return Err(refused(caller, forbidden())),
        };
        audit.note("forwarded_by", key_id.clone());
        if let Some(peer) = conn.client {
            audit.note("forwarded_from", peer.ip().to_string());
        }
        // An IPv4 address written as IPv4-mapped IPv6 is that IPv4 address: one end user, one
        // budget, one way of appearing in events.
        let ip = client.ip.to_canonical();
        *end_user = Some(ConnInfo {
            transport: conn.transport,
            client: Some(SocketAddr::new(ip, 0)),
            user_agent: client.kept_user_agent(),
        });
        if let Err(e) = self.app.limits.check_forward(&key_id) {
            return Err((caller, e));
        }
        if let Err(e) = self.app.limits.check(spec.rate, ip) {
            return Err((caller, e));
        }
        Ok(caller)
    }

    /// What a signed-in caller must additionally satisfy: an enrolment-only session runs only
    /// commands that allow it; sensitive commands need the session's current token and a proof
    /// of a factor within `step_up_window_s`, at every assurance level (ASVS 7.5.1).
    async fn gate(
        &self,
        spec: &crate::CommandSpec,
        caller: &Caller,
        audit: &Audit,
    ) -> Result<(), CommandError> {
        let Caller::User(u) = caller else {
            return Ok(());
        };
        if matches!(
            spec.caller,
            crate::Requirement::Admin(_) | crate::Requirement::Superadmin
        ) {
            // A user runs administrative commands only as a superadmin (read from the account,
            // so a demotion takes effect at once) whose address is proven (an unproven address
            // may be a squatter's), and after a recent proof (below).
            let admin = crate::identity::accounts::get_user(self.app.store.as_ref(), &u.user_id)
                .await?
                .is_some_and(|a| a.superadmin && !a.disabled && a.email_verified);
            if !admin {
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    "administrators only",
                ));
            }
        }
        if u.enrolment_only && !spec.enrolment {
            return Err(
                CommandError::new(ErrorCode::Forbidden, "enrol a second factor first")
                    .with_details(serde_json::json!({"reason": "mfa_enrolment_required"})),
            );
        }
        if matches!(
            spec.caller,
            crate::Requirement::UserStepUp
                | crate::Requirement::Admin(_)
                | crate::Requirement::Superadmin
        ) {
            if u.superseded {
                // A step-up has issued a newer token for this session: this one, whatever its
                // own `aal` and `auth_time`, no longer opens sensitive commands.
                audit.event("step_up.required");
                audit.note("reason", "token_superseded");
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    "a step-up replaced this access token; use the one it returned",
                )
                .with_details(serde_json::json!({"reason": "token_superseded"})));
            }
            if u.aal == 0 {
                // The session of a passwordless sign-up proved nothing, however recent.
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    "sign in with a link, code or passkey first",
                )
                .with_details(serde_json::json!({"reason": "proof_required"})));
            }
            // A recent proof, whatever the level: an AAL2 session that is hours or days old
            // proves nothing about who holds it now (ASVS 7.5.1). A step-up (MFA.VERIFY with
            // the session's token) or a new sign-in renews it.
            let now = self.app.clock.now().unix_timestamp();
            let recent = now - u.auth_time <= self.app.config.step_up_window_s;
            if !recent {
                audit.event("step_up.required");
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    "confirm it is you: verify a second factor (MFA.VERIFY) or sign in again",
                )
                .with_details(serde_json::json!({"reason": "step_up_required"})));
            }
        }
        Ok(())
    }

    /// Who presented `token`. A present but invalid token is `UNAUTHENTICATED`, never a silent
    /// fall-back to anonymous; the reason goes to the audit record, not to the client.
    async fn authenticate(
        &self,
        token: Option<&Secret>,
        audit: &Audit,
    ) -> Result<Caller, CommandError> {
        let Some(token) = token else {
            return Ok(Caller::Anonymous);
        };
        let refused = |reason: &'static str| {
            audit.note("token", reason);
            CommandError::unauthenticated("the token is not valid")
        };
        let t = token.expose();
        if t.starts_with(crate::identity::apikeys::PREFIX) {
            return crate::identity::apikeys::authenticate(&self.app, t)
                .await
                .map(Caller::ApiKey)
                .map_err(refused);
        }
        if t.starts_with(OPERATOR_TOKEN_PREFIX) {
            let presented = operator_token_hash(t);
            if bool::from(presented.ct_eq(&self.app.operator_token_hash)) {
                return Ok(Caller::Operator);
            }
            return Err(refused("unknown_operator_token"));
        }
        let claims = self
            .app
            .tokens
            .verify_current(
                t,
                self.app.clock.now(),
                self.app.store.as_ref(),
                &self.app.sealer,
            )
            .await?
            .map_err(|e| refused(e.reason()))?;
        let Some(generation) =
            sessions::live_generation(&self.app, &claims.sid, &claims.sub).await?
        else {
            audit.session(&claims.sid);
            return Err(refused("session_revoked"));
        };
        Ok(Caller::User(UserCaller {
            user_id: claims.sub,
            session_id: claims.sid,
            aal: claims.aal,
            amr: claims.amr,
            auth_time: claims.auth_time,
            enrolment_only: claims.scope.as_deref() == Some(sessions::SCOPE_ENROLMENT),
            superseded: claims.sgen < generation,
        }))
    }

    async fn finish(&self, o: Outcome, conn: &ConnInfo, started: Instant) -> Reply {
        let outcome_name = match &o.result {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        tracing::debug!(
            command = o.command.as_deref().unwrap_or("-"),
            outcome = outcome_name,
            client = ?conn.client,
            "command"
        );
        let mut durable = None;
        let mut result = o.result;
        if o.logged {
            let event = Event {
                seq: 0,
                time: rfc3339_ms(self.app.clock.now()),
                command: o
                    .command
                    .as_deref()
                    .map(|c| truncate(c, MAX_LOGGED_COMMAND_LEN)),
                outcome: outcome_name.to_owned(),
                actor: o.caller.actor(),
                // Handlers may name another subject or session; by default it is the caller's.
                subject: o
                    .audit
                    .subject
                    .or_else(|| o.caller.user().map(|u| u.user_id.clone())),
                session: o
                    .audit
                    .session
                    .or_else(|| o.caller.user().map(|u| u.session_id.clone())),
                client: conn.client.map(|a| a.to_string()),
                transport: conn.transport.as_str().to_owned(),
                duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                summary: o.audit.summary,
                prev: String::new(),
                hash: String::new(),
            };
            match self.app.log.append_queued(event).await {
                // The answer waits for the event, when it was queued rather than appended, and
                // for the store: a read's only for state it may have observed (a read's event
                // appended at once is made durable by the group commit shortly after), a
                // write's for its effects. The transport awaits this while it reads and runs
                // the connection's next requests, so pipelined requests share appends and
                // flushes.
                Ok(appended) => {
                    let store = if o.read_only {
                        self.app.store.sync_state()
                    } else {
                        Some(self.app.store.sync())
                    };
                    durable = match (appended, store) {
                        (None, store) => store,
                        (Some(appended), None) => Some(appended),
                        (Some(appended), Some(store)) => Some(Box::pin(async move {
                            appended.await?;
                            store.await
                        })),
                    };
                }
                Err(e) => {
                    // Unanswered: the command's own effect may stand without its event. The
                    // code follows the failure: a database that cannot be reached is
                    // UNAVAILABLE (retry), not INTERNAL.
                    tracing::error!(error = %e, "appending to the event log failed");
                    result = Err(CommandError::from(e));
                }
            }
        }
        self.app.metrics.command(
            crate::infra::telemetry::command_label(&self.app.registry, o.command.as_deref()),
            match &result {
                Ok(_) => "ok",
                Err(e) => e.code().as_str(),
            },
            started.elapsed(),
        );
        match result {
            Ok(Output::Data(data)) => {
                let command = o.command.unwrap_or_default();
                Reply::Unary(Pending {
                    response: Response::ok(o.id, command, data),
                    durable,
                })
            }
            Ok(Output::Stream(stream)) => {
                // The stream's own event need not be durable before the stream starts.
                drop(durable);
                let follow = stream.follows();
                Reply::Stream { stream, follow }
            }
            Err(e) => Reply::Unary(Pending {
                response: Response::err(o.id, o.command, e.into_body()),
                durable,
            }),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Reads a frame as a request. On failure, returns the request id if one could still be read
/// (so the client can correlate the error) and a `BAD_REQUEST`.
pub(crate) fn parse_request(frame: &[u8]) -> Result<Request, (Option<RequestId>, CommandError)> {
    let text = std::str::from_utf8(frame).map_err(|_| {
        (
            None,
            CommandError::bad_request("the request is not valid UTF-8"),
        )
    })?;
    match serde_json::from_str::<Request>(text) {
        Ok(req) => Ok(req),
        Err(e) => {
            let id = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(mut m)) => {
                    m.remove("id").and_then(|v| RequestId::from_value(v).ok())
                }
                Ok(_) => {
                    return Err((
                        None,
                        CommandError::bad_request("the request must be a JSON object"),
                    ))
                }
                Err(_) => None,
            };
            let what = if e.is_syntax() || e.is_eof() {
                "invalid JSON"
            } else {
                "not a request"
            };
            let msg = format!("{what}: {}", sanitize_serde_message(&e.to_string()));
            Err((id, CommandError::bad_request(msg)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_frames_keep_what_can_be_kept() {
        let (id, e) = parse_request(b"{\"id\":9,\"command\":\"X\",\"bogus\":1}").unwrap_err();
        assert_eq!(id, Some(RequestId::from(9)));
        assert_eq!(e.code(), ErrorCode::BadRequest);
        let (id, e) = parse_request(b"{nope").unwrap_err();
        assert_eq!((id, e.code()), (None, ErrorCode::BadRequest));
        let (id, _) = parse_request(b"[1,2]").unwrap_err();
        assert_eq!(id, None);
        let (_, e) = parse_request(b"\xff\xfe").unwrap_err();
        assert!(e.body().message.contains("UTF-8"));
        let (_, e) = parse_request(br#"{"command":"X","token":12345678}"#).unwrap_err();
        assert!(
            !e.body().message.contains("12345678"),
            "{}",
            e.body().message
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_request(deep.as_bytes()).is_err());
        assert!(parse_request(br#"{"command":"SYS.PING","id":"a"}"#).is_ok());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 64), "abc");
    }
}
