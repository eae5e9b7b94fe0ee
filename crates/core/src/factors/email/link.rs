//! Sign-in links: the token (stored only as its SHA-256) and its mail, and what the gateway's
//! landing page may show about a link without consuming it.

use super::{common_vars, FlowKind, FlowRecord, FlowState};
use crate::base::crypto::{random_token, sha256};
use crate::base::error::CommandError;
use crate::infra::mail::{Outgoing, Template};
use crate::{App, Ctx};
use portcullis_protocol::Secret;
use portcullis_store::Table;

/// Creates the link token of `flow` (stored only as SHA-256), queues its mail, and returns the
/// link.
pub async fn send_link(ctx: &Ctx, flow: &FlowRecord, locale: &str) -> Result<Secret, CommandError> {
    let token = random_token(ctx.app.rng.as_ref(), "");
    ctx.app
        .store
        .put(
            Table::MagicLinks,
            &sha256(token.as_bytes()),
            flow.id.clone().into_bytes(),
        )
        .await?;
    let link = format!(
        "{}/auth/magic?token={}",
        ctx.app.config.public_url.trim_end_matches('/'),
        token.as_str()
    );
    let vars = common_vars(ctx, flow).set("link", link.clone());
    let body = ctx.app.templates.render(Template::MagicLink, locale, &vars);
    ctx.app
        .mailer
        .enqueue(Outgoing {
            to: flow.email.clone(),
            kind: Template::MagicLink,
            flow_id: flow.id.clone(),
            body,
        })
        .await;
    Ok(Secret::new(link))
}

/// The flow a link token belongs to, if the token was ever issued.
pub async fn flow_of(ctx: &Ctx, token: &Secret) -> Result<Option<String>, CommandError> {
    Ok(ctx
        .app
        .store
        .get(Table::MagicLinks, &sha256(token.expose().as_bytes()))
        .await?
        .map(|id| String::from_utf8_lossy(&id).into_owned()))
}

/// What the landing page shows about a link, read without consuming anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    /// The flow the link belongs to (what `MAGIC.SEND` returned to the device that asked), so
    /// that the landing page can find that device's verifier when it is the same browser.
    pub flow_id: String,
    /// The address the link signs in.
    pub email: String,
    /// Whether the link needs the asking device's verifier.
    pub device_bound: bool,
    /// Where the browser goes afterwards.
    pub redirect_url: Option<String>,
    /// Who asked.
    pub requested_from: Option<String>,
    /// With which client.
    pub requested_agent: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Looks a link up for the landing page. `None` when it is unknown, used, expired or superseded.
pub async fn landing(app: &App, token: &str) -> Option<Landing> {
    let store = app.store.as_ref();
    let flow_id = store
        .get(Table::MagicLinks, &sha256(token.as_bytes()))
        .await
        .ok()??;
    let flow = super::FLOWS.get(store, &flow_id).await.ok()??;
    let latest = store
        .get(
            Table::LatestFlows,
            &FlowKind::Magic.latest_key(&flow.email_key),
        )
        .await
        .ok()?;
    let now = app.clock.now().unix_timestamp();
    let live = flow.state == FlowState::Pending
        && now < flow.expires_at
        && latest.as_deref() == Some(flow.id.as_bytes());
    live.then(|| Landing {
        flow_id: flow.id.clone(),
        email: flow.email,
        device_bound: flow.code_challenge.is_some(),
        redirect_url: flow.redirect_url,
        requested_from: flow.client,
        requested_agent: flow.user_agent,
        expires_at: flow.expires_at,
    })
}
