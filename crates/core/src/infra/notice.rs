//! Security notices: a mail to the account owner whenever something that protects the account
//! changes (a factor added or removed, a recovery code used, an address changed). Queued, so
//! it never blocks the command; rendered from the `security_notice` template.

use crate::base::clock::rfc3339_ms;
use crate::infra::mail::{sanitize_client_text, Outgoing, Template, Vars};
use crate::Ctx;

/// Mails a security notice to an address (queued; never blocks).
pub async fn notify_address(ctx: &Ctx, email: &str, headline: &str, details: &str) {
    let vars = Vars::new()
        .set("product", ctx.app.config.product_name.clone())
        .set("email", email)
        .set("headline", headline)
        .set("details", details)
        .set("time", rfc3339_ms(ctx.now()))
        .set(
            "client",
            ctx.client
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "an unknown address".into()),
        )
        .set(
            "agent",
            ctx.user_agent
                .as_deref()
                .map(sanitize_client_text)
                .unwrap_or_else(|| "unknown client".into()),
        );
    let body = ctx.app.templates.render(
        Template::SecurityNotice,
        &ctx.app.config.default_locale,
        &vars,
    );
    ctx.app
        .mailer
        .enqueue(Outgoing {
            to: email.to_owned(),
            kind: Template::SecurityNotice,
            flow_id: String::new(),
            body,
        })
        .await;
}
