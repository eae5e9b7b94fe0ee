//! Pages served by the gateway: the magic-link landing page, the demo account console, and the
//! SDK's browser bundle both are built on.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::factors::email::link::landing;
use portcullis_core::infra::mail::escape_html;
use portcullis_core::Dispatcher;
use serde::Deserialize;

const LANDING: &str = include_str!("../assets/magic.html");
const INVALID: &str = include_str!("../assets/magic-invalid.html");
const LANDING_JS: &str = include_str!("../assets/magic.js");
const DEMO: &str = include_str!("../assets/demo.html");
const DEMO_JS: &str = include_str!("../assets/demo.js");
/// The TypeScript SDK's browser bundle (sdk/typescript, `npm run build`), the same file the
/// SDK's tests check against a fresh build.
const CLIENT_JS: &str = include_str!("../assets/portcullis-client.js");

/// The pages' Content-Security-Policy: scripts only from this origin (no inline script), calls
/// only to this origin, nothing framed, no form posts.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";
/// The demo's: the same, plus `data:` images (the TOTP QR code that TOTP.ENROLL returns).
const DEMO_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
     img-src data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
     base-uri 'none'";

/// Query of the landing page.
#[derive(Deserialize)]
pub struct MagicQuery {
    token: Option<String>,
}

/// Headers for pages that carry a secret in their address: never cached, never framed, never
/// sent on as a Referer, scripts only from this origin.
fn hardened(headers: HeaderMap) -> HeaderMap {
    hardened_with(headers, PAGE_CSP)
}

fn hardened_with(mut headers: HeaderMap, policy: &'static str) -> HeaderMap {
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(&mut headers, header::CACHE_CONTROL, "no-store");
    set(&mut headers, header::REFERRER_POLICY, "no-referrer");
    set(&mut headers, header::X_FRAME_OPTIONS, "DENY");
    set(&mut headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut headers, header::CONTENT_SECURITY_POLICY, policy);
    headers
}

/// `GET /auth/magic?token=…`: shows what the link would do and waits for a click. Consumes
/// nothing. 410 when the link is unknown, used, expired or replaced.
pub async fn magic_landing(State(d): State<Dispatcher>, Query(q): Query<MagicQuery>) -> Response {
    let app = d.app();
    let product = escape_html(&app.config.product_name);
    let info = match q.token.as_deref().filter(|t| t.len() <= 128) {
        Some(t) => landing(app, t).await,
        None => None,
    };
    let mut headers = hardened(HeaderMap::new());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    let Some(info) = info else {
        return (
            StatusCode::GONE,
            headers,
            INVALID.replace("{{product}}", &product),
        )
            .into_response();
    };
    let body = LANDING
        .replace("{{product}}", &product)
        .replace("{{email}}", &escape_html(&info.email))
        .replace("{{flow}}", &escape_html(&info.flow_id))
        .replace(
            "{{bound}}",
            if info.device_bound { "true" } else { "false" },
        )
        .replace(
            "{{redirect}}",
            &escape_html(info.redirect_url.as_deref().unwrap_or("")),
        )
        .replace(
            "{{client}}",
            &escape_html(
                info.requested_from
                    .as_deref()
                    .unwrap_or("an unknown address"),
            ),
        )
        .replace(
            "{{agent}}",
            &escape_html(
                &info
                    .requested_agent
                    .as_deref()
                    .map(portcullis_core::infra::mail::sanitize_client_text)
                    .unwrap_or_else(|| "unknown client".into()),
            ),
        );
    (StatusCode::OK, headers, body).into_response()
}

fn script(body: &'static str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    (StatusCode::OK, headers, body).into_response()
}

/// `GET /auth/magic.js`
pub async fn magic_js() -> Response {
    script(LANDING_JS)
}

/// `GET /demo`: a small account console on the SDK's browser bundle: sign-up; sign-in by
/// password, magic link, email code and passkey (also usernameless and by autofill); TOTP
/// enrolment and the second-factor prompt; recovery codes; passkeys; sessions with revoke.
pub async fn demo() -> Response {
    let mut headers = hardened_with(HeaderMap::new(), DEMO_CSP);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    (StatusCode::OK, headers, DEMO).into_response()
}

/// `GET /demo/demo.js` (also `/demo.js`): the console's script, an ES module.
pub async fn demo_js() -> Response {
    script(DEMO_JS)
}

/// `GET /demo/portcullis-client.js` and `/auth/portcullis-client.js`: the SDK's browser bundle.
pub async fn client_js() -> Response {
    script(CLIENT_JS)
}
