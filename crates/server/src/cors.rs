//! CORS for `POST /api/v1/execute`: browser applications served from an origin listed in
//! `cors_allowed_origins` may call the gateway from their pages.
//!
//! - A preflight (`OPTIONS /api/v1/execute` with `Origin` and `Access-Control-Request-Method`)
//!   from a listed origin is answered `204` with `Access-Control-Allow-Origin: <that origin>`,
//!   `Access-Control-Allow-Methods: POST`, `Access-Control-Allow-Headers: authorization,
//!   content-type`, `Access-Control-Max-Age` and `Vary: Origin`.
//! - A `POST /api/v1/execute` from a listed origin gets `Access-Control-Allow-Origin: <that
//!   origin>`; every answer of the endpoint gets `Vary: Origin` (it depends on the origin).
//! - Anything else, a preflight from an unlisted origin included, is answered exactly as without
//!   CORS: no `Access-Control-*` header (an `OPTIONS` is then `405`).
//!
//! Never `Access-Control-Allow-Credentials`: tokens are sent explicitly (body or
//! `Authorization` header), not as cookies, so a page needs no ambient credentials. The `Origin`
//! header is compared byte for byte with the list (entries are checked at start to be origins
//! exactly as browsers write them). With an empty list this layer is not installed at all.

use crate::http::EXECUTE_PATH;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::sync::Arc;

/// How long a browser may cache a preflight answer, seconds. Short, so that removing an origin
/// from the list takes effect within minutes (Chromium caps it at 7200 anyway).
pub const PREFLIGHT_MAX_AGE_S: u32 = 600;

/// The request headers a page may send: the token and the JSON body's type.
const ALLOWED_HEADERS: &str = "authorization, content-type";

/// The origins allowed to call the execute endpoint.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Arc<HashSet<String>>,
}

impl CorsPolicy {
    /// The policy for `origins`, or `None` when the list is empty (no CORS at all).
    pub fn new(origins: &[String]) -> Option<CorsPolicy> {
        if origins.is_empty() {
            return None;
        }
        Some(CorsPolicy {
            origins: Arc::new(origins.iter().cloned().collect()),
        })
    }

    /// The request's `Origin` when it is listed.
    fn allowed(&self, req: &Request) -> Option<HeaderValue> {
        let origin = req.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins.contains(text).then(|| origin.clone())
    }
}

/// The middleware: answers preflights of listed origins and marks the endpoint's answers.
pub async fn layer(
    axum::extract::State(policy): axum::extract::State<CorsPolicy>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() != EXECUTE_PATH {
        return next.run(req).await;
    }
    let origin = policy.allowed(&req);
    let method = req.method().clone();
    if method == Method::OPTIONS {
        let h = req.headers();
        // A preflight has no body; one that has is left to the router (405, and the close).
        let has_body = h.contains_key(header::TRANSFER_ENCODING)
            || h.get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        let is_preflight = h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) && !has_body;
        if let (Some(origin), true) = (origin, is_preflight) {
            return preflight(origin);
        }
        // Not a preflight of a listed origin: as without CORS (405, no CORS header).
        return next.run(req).await;
    }
    let mut resp = next.run(req).await;
    if method == Method::POST {
        let h = resp.headers_mut();
        h.append(header::VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = origin {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
    }
    resp
}

fn preflight(origin: HeaderValue) -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOWED_HEADERS),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(PREFLIGHT_MAX_AGE_S),
            ),
            (header::VARY, HeaderValue::from_static("origin")),
        ],
    )
        .into_response()
}
