//! `LOG.TAIL`: replay from a seq, then (optionally) follow live, with no gap and no duplicate.
//!
//! The stream reads the log itself rather than a broadcast buffer: it replays up to the durable
//! watermark, then waits for the watermark to move and reads what is new. Writers never wait
//! for followers, a follower holds no buffer beyond one page, and an event is shown only once
//! it is on disk, so a crash cannot take back an event a follower has seen. A follower more than
//! `max_lag` events behind the head is told where to resume and dropped.

use bytes::{BufMut, BytesMut};
use portcullis_protocol::codec::{encode_line, FrameError};
use portcullis_protocol::commands::log::{TailFrame, TAIL};
use portcullis_protocol::{ErrorBody, ErrorCode, Event, RequestId, Response};
use portcullis_store::EventLog;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PAGE: usize = 256;

enum Phase {
    /// Replaying stored events.
    Replay,
    Live,
    Done,
}

/// A stream of `LOG.TAIL` response lines.
pub struct TailStream {
    id: Option<RequestId>,
    log: Arc<dyn EventLog>,
    durable: watch::Receiver<u64>,
    shutdown: CancellationToken,
    next: u64,
    /// Without follow: the last seq to send.
    until: Option<u64>,
    max_lag: u64,
    phase: Phase,
    queue: VecDeque<Line>,
}

/// One line waiting to be sent.
enum Line {
    /// A marker or an error.
    Response(Response),
    /// An event as stored, sent inside its envelope without being decoded and encoded again.
    Event(Vec<u8>),
}

impl TailStream {
    /// A stream from `from` (inclusive). Without `follow` it ends after `until`.
    pub(crate) fn new(
        id: Option<RequestId>,
        log: Arc<dyn EventLog>,
        shutdown: CancellationToken,
        from: u64,
        follow: bool,
        until: u64,
        max_lag: u64,
    ) -> Self {
        let durable = log.watch_durable();
        TailStream {
            id,
            log,
            durable,
            shutdown,
            next: from.max(1),
            until: (!follow).then_some(until),
            max_lag,
            phase: Phase::Replay,
            queue: VecDeque::new(),
        }
    }

    /// Whether the stream follows live events (and so never ends by itself).
    pub fn follows(&self) -> bool {
        self.until.is_none()
    }

    fn frame(&self, f: TailFrame) -> Response {
        let data = serde_json::to_value(f).unwrap_or_default();
        Response::ok(self.id.clone(), TAIL, data)
    }

    /// The next line as a response (events decoded). For callers that need the value; the
    /// transports use [`TailStream::next_into`].
    pub async fn next(&mut self) -> Option<Response> {
        match self.next_line().await? {
            Line::Response(r) => Some(r),
            Line::Event(json) => Some(match serde_json::from_slice::<Event>(&json) {
                Ok(event) => self.frame(TailFrame::Event {
                    event: Box::new(event),
                }),
                Err(e) => {
                    tracing::error!(error = %e, "unreadable event in tail");
                    self.queue.clear();
                    self.error("unreadable", "an event could not be read; run LOG.VERIFY")
                }
            }),
        }
    }

    /// Appends the next line, encoded and newline-terminated, to `out`; `None` at the end of
    /// the stream. An event goes out as stored, in the envelope a [`Response`] would have:
    /// `{"id":…,"ok":true,"command":"LOG.TAIL","data":{"event":…},"error":null}`.
    pub async fn next_into(&mut self, out: &mut BytesMut) -> Option<Result<(), FrameError>> {
        Some(match self.next_line().await? {
            Line::Response(r) => encode_line(&r, out),
            Line::Event(json) => {
                out.put_slice(b"{\"id\":");
                let id = {
                    let mut w = (&mut *out).writer();
                    serde_json::to_writer(&mut w, &self.id)
                };
                if let Err(e) = id {
                    return Some(Err(e.into()));
                }
                out.put_slice(b",\"ok\":true,\"command\":\"");
                out.put_slice(TAIL.as_bytes());
                out.put_slice(b"\",\"data\":{\"event\":");
                out.put_slice(&json);
                out.put_slice(b"},\"error\":null}\n");
                Ok(())
            }
        })
    }

    /// Ends the stream with an error line after what is queued.
    fn fail(&mut self, reason: &str, message: &str) {
        let r = self.error(reason, message);
        self.queue.push_back(Line::Response(r));
    }

    /// The error that ends the stream; no line comes after it.
    fn error(&mut self, reason: &str, message: &str) -> Response {
        let mut body = ErrorBody::new(ErrorCode::Unavailable, message);
        body.details = Some(json!({"reason": reason, "resume_from_seq": self.next}));
        self.phase = Phase::Done;
        Response::err(self.id.clone(), Some(TAIL.into()), body)
    }

    /// Reads durable events from `next` up to `to` into the queue. Returns false on failure.
    /// Events removed by a prune since the stream started (the page does not begin at `next`)
    /// end the stream: a follower is never silently skipped past events.
    async fn fill(&mut self, to: u64) -> bool {
        match self.log.read_raw(self.next, to, PAGE).await {
            Ok(page) => {
                if page.first().is_none_or(|e| e.seq != self.next) {
                    self.fail(
                        "pruned",
                        "events this stream had not sent yet were pruned; resume from resume_from_seq (the first kept event follows)",
                    );
                    return false;
                }
                for entry in page {
                    match entry.json {
                        Ok(json) => {
                            self.next = entry.seq + 1;
                            self.queue.push_back(Line::Event(json));
                        }
                        Err(err) => {
                            tracing::error!(seq = entry.seq, error = %err, "unreadable event in tail");
                            self.fail("unreadable", "an event could not be read; run LOG.VERIFY");
                            return false;
                        }
                    }
                }
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "reading the event log failed");
                self.fail("storage", "the event log could not be read");
                false
            }
        }
    }

    /// The next line, or `None` when the stream is over.
    async fn next_line(&mut self) -> Option<Line> {
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Some(r);
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Replay => {
                    let target = match self.until {
                        Some(until) => {
                            // Events up to `until` were acknowledged or are about to be: wait
                            // until they are durable.
                            if !self.wait_durable(until).await {
                                continue;
                            }
                            until
                        }
                        None => *self.durable.borrow_and_update(),
                    };
                    if self.next <= target {
                        self.fill(target).await;
                        continue;
                    }
                    let next_seq = self.next;
                    let marker = match self.until {
                        Some(_) => {
                            self.phase = Phase::Done;
                            TailFrame::End {
                                end: true,
                                next_seq,
                            }
                        }
                        None => {
                            self.phase = Phase::Live;
                            TailFrame::CaughtUp {
                                caught_up: true,
                                next_seq,
                            }
                        }
                    };
                    let r = self.frame(marker);
                    self.queue.push_back(Line::Response(r));
                }
                Phase::Live => {
                    let durable = *self.durable.borrow_and_update();
                    if durable >= self.next {
                        if self.log.head_seq().saturating_sub(self.next) > self.max_lag {
                            self.fail(
                                "lagged",
                                "follower fell too far behind; resume from resume_from_seq",
                            );
                            continue;
                        }
                        self.fill(durable).await;
                        continue;
                    }
                    tokio::select! {
                        changed = self.durable.changed() => {
                            if changed.is_err() {
                                self.fail("shutdown", "server is shutting down");
                            }
                        }
                        _ = self.shutdown.cancelled() => {
                            self.fail("shutdown", "server is shutting down");
                        }
                    }
                }
            }
        }
    }

    /// Waits until the durable watermark reaches `seq`. False if the stream had to stop.
    async fn wait_durable(&mut self, seq: u64) -> bool {
        loop {
            if *self.durable.borrow_and_update() >= seq {
                return true;
            }
            tokio::select! {
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        self.fail("shutdown", "server is shutting down");
                        return false;
                    }
                }
                _ = self.shutdown.cancelled() => {
                    self.fail("shutdown", "server is shutting down");
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TailStream;
    use crate::testkit::{unsealed_event, Bench};
    use portcullis_protocol::ErrorCode;
    use tokio_util::sync::CancellationToken;

    /// Events pruned after a stream started and before it sent them end the stream with
    /// `pruned`, rather than being skipped in silence (or spinning when nothing is left).
    #[tokio::test]
    async fn a_prune_past_a_streams_position_ends_it_with_pruned() {
        let b = Bench::new(|_| {}).await;
        for _ in 0..10 {
            b.app.log.append(unsealed_event()).await.unwrap();
        }
        b.app.store.sync().await.unwrap();
        let head = b.app.log.head_seq();
        for follow in [false, true] {
            let mut t = TailStream::new(
                None,
                b.app.log.clone(),
                CancellationToken::new(),
                1,
                follow,
                head,
                1_000_000,
            );
            if !follow {
                b.app.log.prune(5).await.unwrap();
            }
            let line = t.next().await.unwrap();
            let err = line.error.expect("the stream ends");
            assert_eq!(err.code, ErrorCode::Unavailable);
            let details = err.details.unwrap();
            assert_eq!(details["reason"], "pruned");
            assert_eq!(details["resume_from_seq"], 1);
            assert!(t.next().await.is_none());
        }
    }
}
