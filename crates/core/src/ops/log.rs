//! `LOG.TAIL`, `LOG.QUERY`, `LOG.VERIFY`: the operator's view of the event log; `LOG.PRUNE`:
//! its retention.
//!
//! The readers show only durable events, so nothing they show can be taken back by a crash.

use crate::base::caller::{RateClass, Requirement, Scope};
use crate::base::clock::{parse_rfc3339, rfc3339_ms};
use crate::infra::tail::TailStream;
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::log::{
    self, PruneParams, PruneResult, QueryParams, QueryResult, TailParams, VerifyParams,
    VerifyReport, DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT,
};
use portcullis_protocol::{Actor, ErrorCode, Event};
use portcullis_store::{verify_events, StoreError};

/// Most events one `LOG.QUERY` call examines; it returns `next_seq` to continue.
const QUERY_SCAN_BUDGET: u64 = 100_000;
const PAGE: usize = 1024;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::streaming(
            log::TAIL,
            Requirement::Admin(Scope::LogRead),
            RateClass::Operator,
            tail,
        )
        .reads_only(),
        CommandSpec::new(
            log::QUERY,
            Requirement::Admin(Scope::LogRead),
            RateClass::Operator,
            query,
        )
        .reads_only(),
        CommandSpec::new(
            log::VERIFY,
            Requirement::Admin(Scope::LogRead),
            RateClass::Operator,
            verify,
        )
        .reads_only(),
        CommandSpec::new(
            log::PRUNE,
            Requirement::Operator,
            RateClass::Operator,
            prune,
        ),
    ]
}

/// `LOG.TAIL` — operator. Streams events from `from_seq` (default: the next one written) and,
/// with `follow`, live events until the client goes away.
async fn tail(ctx: Ctx, p: TailParams) -> Result<TailStream, CommandError> {
    let app = &ctx.app;
    // Other nodes may have appended (or pruned) since this one last looked.
    app.log.refresh().await?;
    let head = app.log.head_seq();
    let from = p.from_seq.unwrap_or(head + 1).max(app.log.first_seq());
    Ok(TailStream::new(
        ctx.request_id.clone(),
        app.log.clone(),
        app.shutdown.clone(),
        from,
        p.follow,
        head,
        app.config.tail_max_lag,
    ))
}

struct Filter {
    since: Option<String>,
    until: Option<String>,
    command: Option<String>,
    outcome: Option<String>,
    actor: Option<Actor>,
}

impl Filter {
    fn from_params(p: &QueryParams) -> Result<Filter, CommandError> {
        let time = |s: &Option<String>, name: &str| -> Result<Option<String>, CommandError> {
            s.as_deref()
                .map(|t| {
                    parse_rfc3339(t).map(rfc3339_ms).ok_or_else(|| {
                        CommandError::invalid_params(format!("{name} must be an RFC 3339 time"))
                    })
                })
                .transpose()
        };
        if let Some(o) = &p.outcome {
            if o != "ok" && ErrorCode::parse(o).is_none() {
                return Err(CommandError::invalid_params(
                    "outcome must be \"ok\" or an error code",
                ));
            }
        }
        let actor = p
            .actor
            .as_deref()
            .map(|a| {
                a.parse::<Actor>().map_err(|_| {
                    CommandError::invalid_params(
                        "actor must be anonymous, operator, user:<id> or apikey:<id>",
                    )
                })
            })
            .transpose()?;
        Ok(Filter {
            since: time(&p.since, "since")?,
            until: time(&p.until, "until")?,
            command: p.command.clone(),
            outcome: p.outcome.clone(),
            actor,
        })
    }

    /// Times are compared as strings: every event time has the same fixed-width UTC form.
    fn matches(&self, e: &Event) -> bool {
        self.since.as_ref().is_none_or(|s| e.time >= *s)
            && self.until.as_ref().is_none_or(|u| e.time < *u)
            && self
                .command
                .as_ref()
                .is_none_or(|c| e.command.as_ref() == Some(c))
            && self.outcome.as_ref().is_none_or(|o| e.outcome == *o)
            && self.actor.as_ref().is_none_or(|a| e.actor == *a)
    }
}

/// `LOG.QUERY` — operator. Filtered, paginated read of durable events.
async fn query(ctx: Ctx, p: QueryParams) -> Result<QueryResult, CommandError> {
    let limit = p.limit.unwrap_or(DEFAULT_QUERY_LIMIT);
    if limit == 0 || limit > MAX_QUERY_LIMIT {
        return Err(CommandError::invalid_params(format!(
            "limit must be between 1 and {MAX_QUERY_LIMIT}"
        )));
    }
    let filter = Filter::from_params(&p)?;
    let log = &ctx.app.log;
    log.refresh().await?;
    let last = p.to_seq.unwrap_or(u64::MAX).min(log.durable_seq());
    // Pruned events are gone: the scan (and its budget) starts at the first one kept.
    let mut next = p.from_seq.unwrap_or(1).max(log.first_seq());
    let budget_end = next.saturating_add(QUERY_SCAN_BUDGET);
    let mut events = Vec::new();
    while next <= last && next < budget_end && events.len() < limit {
        let page = log.read(next, last.min(budget_end - 1), PAGE).await?;
        let Some(tail) = page.last() else { break };
        let page_end = tail.seq;
        for entry in page {
            next = entry.seq + 1;
            let e = entry.event.map_err(|err| {
                tracing::error!(seq = entry.seq, error = %err, "unreadable event");
                CommandError::internal()
            })?;
            if filter.matches(&e) {
                events.push(e);
                if events.len() == limit {
                    break;
                }
            }
        }
        if events.len() < limit {
            next = page_end + 1;
        }
    }
    let next_seq = (next <= last).then_some(next);
    ctx.audit
        .note("returned", u64::try_from(events.len()).unwrap_or(u64::MAX));
    Ok(QueryResult { events, next_seq })
}

/// `LOG.VERIFY` — operator. Recomputes the chain over durable events and names the first
/// broken seq.
async fn verify(ctx: Ctx, p: VerifyParams) -> Result<VerifyReport, CommandError> {
    let log = ctx.app.log.as_ref();
    // Fresh from the database: other nodes may have appended since this one last did.
    log.refresh().await?;
    let to = p.to_seq.unwrap_or(u64::MAX).min(log.durable_seq());
    let report = verify_events(log, p.from_seq.unwrap_or(1), Some(to)).await?;
    ctx.audit.note("valid", report.valid);
    if let Some(seq) = report.first_broken_seq {
        ctx.audit.note("first_broken_seq", seq);
    }
    Ok(report)
}

/// `LOG.PRUNE` — the operator token only. Removes the events through `through_seq` once their
/// chain verifies up to the first event kept (pruning never destroys the evidence of a break),
/// leaving a checkpoint (the last removed event's seq and hash) that the kept log chains to.
async fn prune(ctx: Ctx, p: PruneParams) -> Result<PruneResult, CommandError> {
    let log = ctx.app.log.as_ref();
    log.refresh().await?;
    let head = log.head_seq();
    ctx.audit.note("through_seq", p.through_seq);
    if p.through_seq == 0 || p.through_seq >= head {
        return Err(CommandError::invalid_params(format!(
            "through_seq must be at least 1 and below the newest event (seq {head})"
        )));
    }
    let r = match log.prune(p.through_seq).await {
        Ok(r) => r,
        Err(StoreError::BrokenChain { seq }) => {
            ctx.audit.note("first_broken_seq", seq);
            return Err(CommandError::new(
                ErrorCode::Conflict,
                format!(
                    "the chain is broken at seq {seq}; pruning through it would destroy the \
                     evidence (see LOG.VERIFY)"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    ctx.audit.event("log.pruned");
    ctx.audit.note("pruned", r.pruned);
    ctx.audit.note("checkpoint_hash", r.checkpoint.hash.clone());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::QUERY_SCAN_BUDGET;
    use crate::testkit::{unsealed_event, Bench};
    use serde_json::json;

    /// After a prune larger than one query's scan budget, reads from seq 1 still reach the
    /// kept events instead of scanning the removed range.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_after_a_large_prune_start_at_the_first_kept_event() {
        let b = Bench::new(|_| {}).await;
        let op = std::fs::read_to_string(b.app.config.data_dir.join("operator.token")).unwrap();
        let op = Some(op.trim());
        for _ in 0..QUERY_SCAN_BUDGET + 10 {
            b.app.log.append(unsealed_event()).await.unwrap();
        }
        b.app.store.sync().await.unwrap();
        let through = QUERY_SCAN_BUDGET + 5;
        let r = b.ok("LOG.PRUNE", json!({"through_seq": through}), op).await;
        assert_eq!(r["first_seq"], through + 1);
        let page = b
            .ok("LOG.QUERY", json!({"from_seq": 1, "limit": 3}), op)
            .await;
        let seqs: Vec<u64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [through + 1, through + 2, through + 3]);
        let v = b.ok("LOG.VERIFY", json!({"from_seq": 1}), op).await;
        assert_eq!(
            (v["valid"].as_bool(), v["first_seq"].as_u64()),
            (Some(true), Some(through + 1))
        );
        assert_eq!(v["checkpoint"]["seq"], through);
    }
}
