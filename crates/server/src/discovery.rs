//! `GET /.well-known/openid-configuration`: the discovery document of OpenID Connect Discovery
//! 1.0 (and the shape of RFC 8414's), so JWT middleware that is given only an issuer finds the
//! keys that verify Portcullis access tokens.
//!
//! Portcullis is not an OpenID Provider: it has no authorization or token endpoint, issues no ID
//! tokens and runs no OAuth flow. The document therefore names only what exists: the `issuer`
//! (the `iss` of every access token), the `jwks_uri` (`GET /.well-known/jwks.json` under
//! `public_url`), the signing algorithm (`EdDSA`, the only one) and the claims tokens carry.
//! Of the members the discovery specification calls required, `authorization_endpoint` and
//! `token_endpoint` are absent, and `response_types_supported` is empty: no response type is
//! supported. `subject_types_supported` is `public` (`sub` is the user id, the same for every
//! verifier).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use portcullis_core::Dispatcher;
use serde_json::{json, Value};

/// The JWK Set's path on the gateway.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The claims of an access token (docs/tokens.md); `scope` only in enrolment-only sessions.
const CLAIMS: [&str; 12] = [
    "iss",
    "aud",
    "sub",
    "sid",
    "aal",
    "amr",
    "auth_time",
    "scope",
    "sgen",
    "iat",
    "exp",
    "jti",
];

/// The discovery document for `issuer`, with the JWK Set under `public_url`.
pub fn document(issuer: &str, public_url: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{}{JWKS_PATH}", public_url.trim_end_matches('/')),
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "subject_types_supported": ["public"],
        "response_types_supported": [],
        "claims_supported": CLAIMS,
    })
}

/// The handler: the document of the running configuration, cacheable like the JWK Set.
pub async fn openid_configuration(State(dispatcher): State<Dispatcher>) -> Response {
    let cfg = &dispatcher.app().config;
    let mut resp = axum::Json(document(&cfg.issuer, &cfg.public_url)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_the_issuer_and_the_keys_under_the_public_url() {
        let d = document("https://auth.example.com", "https://auth.example.com/");
        assert_eq!(d["issuer"], "https://auth.example.com");
        assert_eq!(
            d["jwks_uri"],
            "https://auth.example.com/.well-known/jwks.json"
        );
        assert_eq!(d["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
        // No endpoint that does not exist is claimed.
        assert!(d.get("authorization_endpoint").is_none());
        assert!(d.get("token_endpoint").is_none());
        assert!(d.get("userinfo_endpoint").is_none());
        assert_eq!(d["response_types_supported"], json!([]));
    }
}
