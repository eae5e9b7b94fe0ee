//! Events the server records on its own behalf, outside any command (actor `system`,
//! transport `internal`): background failures an operator must see in the log.

use crate::base::clock::{rfc3339_ms, Clock};
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

    /// Records an event named `name` (e.g. `MAIL.DELIVER`) with an outcome (`Ok`: `"ok"`) and a
    /// summary, in the background.
    pub fn record(
        &self,
        name: &'static str,
        outcome: Result<(), ErrorCode>,
        summary: Map<String, Value>,
    ) {
        let event = Event {
            seq: 0,
            time: rfc3339_ms(self.clock.now()),
            command: Some(name.to_owned()),
            outcome: outcome.map_or_else(|c| c.as_str(), |()| "ok").to_owned(),
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
        self.record("MAIL.DELIVER", Err(ErrorCode::Unavailable), m);
    }

    /// `log.pruned`: automatic retention archived and removed the oldest events.
    pub fn log_pruned(&self, pruned: u64, through_seq: u64, checkpoint_hash: &str, archive: &str) {
        let mut m = Map::new();
        m.insert("event".into(), Value::from("log.pruned"));
        m.insert("pruned".into(), Value::from(pruned));
        m.insert("through_seq".into(), Value::from(through_seq));
        m.insert("checkpoint_hash".into(), Value::from(checkpoint_hash));
        m.insert("archive".into(), Value::from(archive));
        self.record("LOG.RETAIN", Ok(()), m);
    }

    /// `log.retention_refused`: automatic retention found the chain of the events it would
    /// remove broken at `first_broken_seq`, and removed nothing.
    pub fn log_retention_refused(&self, through_seq: u64, first_broken_seq: u64) {
        let mut m = Map::new();
        m.insert("event".into(), Value::from("log.retention_refused"));
        m.insert("through_seq".into(), Value::from(through_seq));
        m.insert("first_broken_seq".into(), Value::from(first_broken_seq));
        self.record("LOG.RETAIN", Err(ErrorCode::Conflict), m);
    }
}
