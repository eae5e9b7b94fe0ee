//! The HTTP gateway: `POST /api/v1/execute` takes the same request object as a TCP line and
//! answers the same envelope; `GET /healthz` answers `{"status":"ok"}`.
//!
//! `GET /.well-known/jwks.json` publishes the token-verifying keys, and
//! `GET /.well-known/openid-configuration` the discovery document that points to them.
//!
//! With `cors_allowed_origins` set, the execute endpoint answers CORS preflights and marks its
//! answers for the listed origins ([`crate::cors`]).
//!
//! `GET /metrics` answers the app's metrics in the Prometheus text format; when `metrics_token`
//! is configured it needs `Authorization: Bearer <metrics_token>` and answers 401 otherwise.
//!
//! Status codes: 200 for every handled outcome (including `ok: false`), 400 when the body
//! cannot be read as a request (`BAD_REQUEST`), 413 when it is over the frame limit
//! (`FRAME_TOO_LARGE`, then the connection closes), 408 when it does not arrive within
//! `frame_timeout_s` (`BAD_REQUEST`, then the connection closes). Other paths answer 404 and
//! other methods 405 with `Allow`, both with an empty body. `Content-Type` is not consulted:
//! the body is always read as UTF-8 JSON (RFC 8259 defines no charset parameter). `LOG.TAIL` answers `application/x-ndjson`, streaming the same
//! lines as over TCP.
//!
//! Connections: headers must arrive within `http_header_timeout_s` (also the keep-alive idle
//! limit) and are at most [`MAX_HEADER_BYTES`] (`431` beyond); a connection over `max_connections_per_ip` gets 429 (`RATE_LIMITED`), over
//! `max_connections` 503 (`UNAVAILABLE`), before its request is read.

use crate::limit::{ConnLimits, Refusal};
use crate::stall::StallGuard;
use crate::tls::MaybeTls;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::Router;
use bytes::BytesMut;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_core::{CommandError, ConnInfo, Dispatcher, Reply, Transport};
use portcullis_protocol::{ErrorBody, ErrorCode, Response, Secret};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// The execute endpoint's path.
pub const EXECUTE_PATH: &str = "/api/v1/execute";

/// Most bytes of a request's head (request line and header fields). A head still incomplete at
/// this size is answered `431` and the connection closed, so a slow sender cannot make a
/// connection hold more (hyper's own bound is about 400 KiB). Generous for bearer tokens and the
/// cookies a browser may attach; the bound of Node.js is 16 KiB, nginx's 32 KiB.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The gateway's routes over a dispatcher.
pub fn router(dispatcher: Dispatcher) -> Router {
    let cors = crate::cors::CorsPolicy::new(&dispatcher.app().config.cors_allowed_origins);
    let router = Router::new()
        .route(EXECUTE_PATH, post(execute))
        .route("/healthz", get(healthz))
        .route(crate::discovery::JWKS_PATH, get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(crate::discovery::openid_configuration),
        )
        .route("/metrics", get(metrics))
        .route("/auth/magic", get(crate::pages::magic_landing))
        .route("/auth/magic.js", get(crate::pages::magic_js))
        .route("/demo", get(crate::pages::demo))
        .route("/demo.js", get(crate::pages::demo_js))
        .route("/demo/demo.js", get(crate::pages::demo_js))
        .route("/demo/portcullis-client.js", get(crate::pages::client_js))
        .route("/auth/portcullis-client.js", get(crate::pages::client_js))
        // The body limit is enforced in `execute`, so an oversized body still gets an envelope.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(close_after_unread_body));
    let router = match cors {
        Some(policy) => router.layer(axum::middleware::from_fn_with_state(
            policy,
            crate::cors::layer,
        )),
        None => router,
    };
    // Over HTTPS (`tls_cert`), browsers are told to use nothing else for this host.
    let router = if dispatcher.app().config.tls_cert.is_some() {
        router.layer(axum::middleware::from_fn(strict_transport_security))
    } else {
        router
    };
    router.with_state(dispatcher)
}

/// The `Strict-Transport-Security` value of every HTTPS answer: a year, this host only (the
/// server cannot know whether every subdomain speaks HTTPS).
pub const HSTS: &str = "max-age=31536000";

/// Adds [`HSTS`] to every answer of a gateway that speaks only HTTPS.
async fn strict_transport_security(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> HttpResponse {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static(HSTS),
    );
    resp
}

/// A 404 or 405 leaves the request's body unread. Whether hyper can then skip it depends on how
/// much of it has arrived, and when it cannot, it closes the connection without warning; say
/// so instead (`Connection: close`), every time, so the client knows not to reuse it.
async fn close_after_unread_body(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> HttpResponse {
    let h = req.headers();
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = next.run(req).await;
    if has_body
        && matches!(
            resp.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        )
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Serves the gateway until the app shuts down, then lets open requests finish.
///
/// Each connection is admitted against `max_connections` and `max_connections_per_ip` (see
/// [`crate::limit`]; connections from `trusted_proxies` count only towards the total) and
/// must deliver each request's headers within `http_header_timeout_s`; the body's deadline is
/// enforced in `execute`. A write that waits `idle_timeout_s` for a client that does not read
/// ends the connection ([`StallGuard`]).
///
/// With `tls`, each connection first completes a TLS handshake (HTTPS; within
/// `frame_timeout_s`), with the certificate in force when it arrived.
pub async fn serve(
    listener: TcpListener,
    dispatcher: Dispatcher,
    tasks: TaskTracker,
    tls: Option<Arc<crate::tls::Tls>>,
) {
    let app = Arc::clone(dispatcher.app());
    let cfg = &app.config;
    let limits = ConnLimits::new(cfg.max_connections, cfg.max_connections_per_ip);
    let router = router(dispatcher);
    let write_stall = Duration::from_secs(cfg.idle_timeout_s);
    let handshake = Duration::from_secs(cfg.frame_timeout_s);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.http_header_timeout_s))
        .max_header_size(MAX_HEADER_BYTES);
    loop {
        let Some((sock, peer)) = crate::accept(&app, &listener).await else {
            break;
        };
        let proxy = cfg.trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
        let slot = match limits.admit(peer.ip(), proxy) {
            Ok(slot) => slot,
            Err(why) => {
                match limits.refusal_slot() {
                    Some(permit) => {
                        let acceptor = tls.as_ref().map(|t| t.http());
                        let shutdown = app.shutdown.clone();
                        tasks.spawn(async move {
                            match acceptor {
                                None => refuse(sock, peer, why).await,
                                // An HTTPS client can read the refusal only inside TLS.
                                Some(acceptor) => {
                                    if let Some(s) = crate::tls::handshake(
                                        acceptor,
                                        sock,
                                        Duration::from_secs(2),
                                        peer,
                                        &shutdown,
                                    )
                                    .await
                                    {
                                        refuse(s, peer, why).await;
                                    }
                                }
                            }
                            drop(permit);
                        });
                    }
                    // Too many refusals in progress: close without a word.
                    None => drop(sock),
                }
                continue;
            }
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move { router.call(req).await }
        });
        let io = StallGuard::new(sock, peer, write_stall);
        let acceptor = tls.as_ref().map(|t| t.http());
        let http1 = http1.clone();
        let shutdown = app.shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let io = match acceptor {
                None => MaybeTls::Left(io),
                Some(acceptor) => {
                    match crate::tls::handshake(acceptor, io, handshake, peer, &shutdown).await {
                        Some(s) => MaybeTls::Right(Box::new(s)),
                        None => return,
                    }
                }
            };
            let conn = http1.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = shutdown.cancelled() => None,
            };
            let result = match done {
                Some(r) => r,
                None => {
                    // Finish the request in progress, then close; an idle connection closes now.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Timeouts, resets and malformed requests: the client's business.
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// Answers a connection that was not admitted with one response and closes it: 429 and a
/// `RATE_LIMITED` envelope at the per-address cap, 503 and `UNAVAILABLE` at the total cap.
async fn refuse<S>(sock: S, peer: SocketAddr, why: Refusal)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (status, body) = match why {
        Refusal::PerAddress => {
            tracing::debug!(%peer, "per-address connection cap reached; refusing");
            (
                "429 Too Many Requests",
                ErrorBody {
                    retry_after_ms: Some(crate::tcp::REFUSED_RETRY_MS),
                    ..ErrorBody::new(
                        ErrorCode::RateLimited,
                        "too many connections from your address; close one or retry later",
                    )
                },
            )
        }
        Refusal::Total => {
            tracing::warn!(%peer, "HTTP connection cap reached; refusing");
            (
                "503 Service Unavailable",
                ErrorBody::new(ErrorCode::Unavailable, "too many connections; retry later"),
            )
        }
    };
    let Ok(json) = serde_json::to_vec(&Response::err(None, None, body)) else {
        return;
    };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    answer.extend_from_slice(&json);
    crate::limit::answer_and_close(sock, &answer).await;
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// The public keys that verify access tokens (RFC 7517), for any JOSE library.
async fn jwks(State(dispatcher): State<Dispatcher>) -> HttpResponse {
    let app = dispatcher.app();
    // Another node may have created or rotated a key: publish what the store holds now.
    if let Err(e) = app.tokens.reload(app.store.as_ref(), &app.sealer).await {
        tracing::warn!(error = %e, "serving the signing keys as last loaded");
    }
    let now = app.clock.now().unix_timestamp();
    let mut resp = axum::Json(app.tokens.jwks_at(now)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// Prometheus text exposition of the app's metrics.
async fn metrics(State(dispatcher): State<Dispatcher>, headers: HeaderMap) -> HttpResponse {
    let app = dispatcher.app();
    let presented = bearer(&headers).ok().flatten();
    if !portcullis_core::infra::telemetry::scrape_allowed(
        &app.config,
        presented.as_ref().map(Secret::expose),
    ) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a metrics token is required\n",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(app),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Result<Option<Secret>, &'static str> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII")?;
    let (scheme, token) = v
        .split_once(' ')
        .ok_or("the Authorization header must be `Bearer <token>`")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("the Authorization header must be `Bearer <token>`");
    }
    Ok(Some(Secret::new(token)))
}

async fn execute(
    State(dispatcher): State<Dispatcher>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> HttpResponse {
    let started = Instant::now();
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect());
    let conn = ConnInfo {
        transport: Transport::Http,
        client: Some(client_address(
            peer,
            &headers,
            &dispatcher.app().config.trusted_proxies,
        )),
        user_agent,
    };
    let limit = dispatcher.app().config.max_frame_bytes;
    let too_large = || {
        CommandError::new(
            ErrorCode::FrameTooLarge,
            format!("the request body may be at most {limit} bytes"),
        )
    };
    // A declared length over the limit is refused at once, not after waiting for the body.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit)) {
        return reply_envelope(
            dispatcher
                .unreadable(None, too_large(), &conn, started)
                .await,
        )
        .await;
    }
    let frame_timeout = Duration::from_secs(dispatcher.app().config.frame_timeout_s);
    // The whole body must arrive within the frame timeout, however it is trickled.
    let Ok(body) = tokio::time::timeout(frame_timeout, axum::body::to_bytes(body, limit)).await
    else {
        let err = CommandError::bad_request(format!(
            "the request body did not arrive within {} s",
            frame_timeout.as_secs()
        ));
        let r = match dispatcher.unreadable(None, err, &conn, started).await {
            Reply::Unary(pending) => pending.resolve().await,
            // An unreadable request never streams.
            Reply::Stream { .. } => return StatusCode::REQUEST_TIMEOUT.into_response(),
        };
        // The rest of the body is not read: the connection cannot carry another request.
        return (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            axum::Json(r),
        )
            .into_response();
    };
    let reply = match (body, bearer(&headers)) {
        (Err(_), _) => {
            dispatcher
                .unreadable(None, too_large(), &conn, started)
                .await
        }
        (Ok(_), Err(msg)) => {
            dispatcher
                .unreadable(None, CommandError::bad_request(msg), &conn, started)
                .await
        }
        (Ok(bytes), Ok(token)) => dispatcher.execute_frame(&bytes, token, &conn).await,
    };
    reply_envelope(reply).await
}

async fn reply_envelope(reply: Reply) -> HttpResponse {
    match reply {
        Reply::Unary(pending) => envelope(pending.resolve().await),
        Reply::Stream { stream, .. } => ndjson(stream),
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case
/// `X-Forwarded-For` is read from right to left and the first address that is not a trusted
/// proxy is the client. Headers from untrusted peers are ignored, so a client cannot pick its
/// own address (and with it its rate-limit bucket).
pub fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> SocketAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else {
            // Garbage in the chain: trust nothing further left.
            break;
        };
        client = SocketAddr::new(ip, 0);
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

fn envelope(r: Response) -> HttpResponse {
    let status = match r.error_code() {
        Some(ErrorCode::BadRequest) => StatusCode::BAD_REQUEST,
        Some(ErrorCode::FrameTooLarge) => {
            // The rest of an oversized body is not read (whether hyper could skip it depends
            // on how much of it has arrived): the connection always closes, so the client
            // knows where it stands.
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONNECTION, "close")],
                axum::Json(r),
            )
                .into_response();
        }
        _ => StatusCode::OK,
    };
    (status, axum::Json(r)).into_response()
}

fn ndjson(stream: portcullis_core::infra::tail::TailStream) -> HttpResponse {
    let lines = futures::stream::unfold(stream, |mut s| async move {
        let mut out = BytesMut::new();
        let line = match s.next_into(&mut out).await? {
            Ok(()) => out.freeze(),
            Err(_) => Bytes::new(),
        };
        Some((Ok::<_, std::convert::Infallible>(line), s))
    });
    let mut resp = Body::from_stream(lines).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_through_trusted_proxies_only() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap(),
        ];
        let proxy: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let ip = |a: SocketAddr| a.ip().to_string();
        // An untrusted peer's header is ignored, whatever it says.
        assert_eq!(
            ip(client_address(stranger, &headers(&["1.2.3.4"]), &trusted)),
            "198.51.100.7"
        );
        // Through one trusted proxy: the hop it saw.
        assert_eq!(
            ip(client_address(
                proxy,
                &headers(&["1.2.3.4, 203.0.113.9"]),
                &trusted
            )),
            "203.0.113.9"
        );
        // Through two trusted proxies, spoofed entries on the left are not believed.
        assert_eq!(
            ip(client_address(
                proxy,
                &headers(&["6.6.6.6", "203.0.113.9, 192.0.2.1"]),
                &trusted
            )),
            "203.0.113.9"
        );
        // Garbage stops the walk at the last believable hop.
        assert_eq!(
            ip(client_address(
                proxy,
                &headers(&["203.0.113.9, nonsense"]),
                &trusted
            )),
            "10.1.1.1"
        );
        assert_eq!(
            ip(client_address(proxy, &HeaderMap::new(), &trusted)),
            "10.1.1.1"
        );
    }
}
