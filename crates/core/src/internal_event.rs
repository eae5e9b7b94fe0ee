//! Events the server records on its own behalf, outside any command (actor `system`,
//! transport `internal`): background failures an operator must see in the log.

use crate::clock::{rfc3339_ms, Clock};
use portcullis_protocol::{Actor, ErrorCode, Event};
use portcullis_store::{EventLog, Store};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Appends internal events.
#[derive(Clone)]
pub struct InternalEvents {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl InternalEvents {
    /// Over the app's log.
    pub fn new(log: Arc<dyn EventLog>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        InternalEvents { log, store, clock }
    }

    /// Records an event named `name` (e.g. `MAIL.DELIVER`) with an outcome and a summary, in the
    /// background.
    pub fn record(&self, name: &'static str, outcome: ErrorCode, summary: Map<String, Value>) {
        let event = Event {
            seq: 0,
            time: rfc3339_ms(self.clock.now()),
            command: Some(name.to_owned()),
            outcome: outcome.as_str().to_owned(),
            actor: Actor::System,
            subject: None,
            session: None,
            client: None,
            transport: "internal".into(),
            duration_us: 0,
            summary,
            prev: String::new(),
            hash: String::new(),
        };
        let (log, store) = (Arc::clone(&self.log), Arc::clone(&self.store));
        tokio::spawn(async move {
            match log.append(event).await {
                Ok(_) => {
                    let _ = store.sync().await;
                }
                Err(e) => tracing::error!(error = %e, "recording an internal event failed"),
            }
        });
    }

    /// `mail.failed`: a message could not be queued or delivered. Never the message itself.
    pub fn mail_failed(&self, kind: &str, flow_id: &str, reason: &str, attempts: u32) {
        let mut m = Map::new();
        m.insert("event".into(), Value::from("mail.failed"));
        m.insert("kind".into(), Value::from(kind));
        m.insert("flow_id".into(), Value::from(flow_id));
        m.insert("reason".into(), Value::from(reason));
        m.insert("attempts".into(), Value::from(attempts));
        self.record("MAIL.DELIVER", ErrorCode::Unavailable, m);
    }
}
