//! NDJSON over TCP.
//!
//! Per connection: a reader executes requests one after another, in order, and queues each
//! reply (bounded, so a client that does not read stops being read); a writer awaits each
//! reply's durability in order and writes it, flushing the socket only when no further answer
//! is ready, so pipelined requests share one disk flush and one write.

use crate::limit::{ConnLimits, Refusal};
use bytes::BytesMut;
use futures::FutureExt;
use portcullis_core::{CommandError, ConnInfo, Dispatcher, Reply, Transport};
use portcullis_protocol::codec::{encode_line, FrameCodec, FrameError};
use portcullis_protocol::{ErrorBody, ErrorCode, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Replies a connection may have queued before the reader stops reading.
const PIPELINE_DEPTH: usize = 128;
/// Bytes buffered for writing before they are written even if more answers are ready.
const WRITE_CHUNK: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Accepts connections until shutdown; with `tls`, each connection first completes a TLS
/// handshake (with a client certificate when `tls_client_ca` is set).
pub async fn serve(
    listener: TcpListener,
    dispatcher: Dispatcher,
    tasks: TaskTracker,
    tls: Option<Arc<crate::tls::Tls>>,
) {
    let app = Arc::clone(dispatcher.app());
    let limits = ConnLimits::new(
        app.config.max_connections,
        app.config.max_connections_per_ip,
    );
    loop {
        let Some((sock, peer)) = crate::accept(&app, &listener).await else {
            break;
        };
        match limits.admit(peer.ip(), false) {
            Ok(slot) => {
                let d = dispatcher.clone();
                let open = app.metrics.tcp_connection();
                // The certificate in force when the connection arrived.
                let acceptor = tls.as_ref().map(|t| t.tcp());
                let handshake = Duration::from_secs(app.config.frame_timeout_s);
                tasks.spawn(async move {
                    match acceptor {
                        None => connection(sock, peer, d).await,
                        Some(acceptor) => {
                            let _ = sock.set_nodelay(true);
                            let shutdown = d.app().shutdown.clone();
                            if let Some(s) =
                                crate::tls::handshake(acceptor, sock, handshake, peer, &shutdown)
                                    .await
                            {
                                let (rd, wr) = tokio::io::split(s);
                                serve_halves(rd, wr, peer, d).await;
                            }
                        }
                    }
                    drop(open);
                    drop(slot);
                });
            }
            Err(why) => {
                app.metrics.tcp_refused();
                let body = match why {
                    Refusal::Total => {
                        tracing::warn!(%peer, "connection cap reached; refusing");
                        ErrorBody::new(ErrorCode::Unavailable, "too many connections; retry later")
                    }
                    Refusal::PerAddress => {
                        // Debug only: a client over its share can refuse itself very often.
                        tracing::debug!(%peer, "per-address connection cap reached; refusing");
                        ErrorBody {
                            retry_after_ms: Some(REFUSED_RETRY_MS),
                            ..ErrorBody::new(
                                ErrorCode::RateLimited,
                                "too many connections from your address; close one or retry later",
                            )
                        }
                    }
                };
                match limits.refusal_slot() {
                    Some(permit) => {
                        let acceptor = tls.as_ref().map(|t| t.tcp());
                        let shutdown = app.shutdown.clone();
                        tasks.spawn(async move {
                            match acceptor {
                                None => refuse(sock, body).await,
                                // A TLS client can read the refusal only inside TLS.
                                Some(acceptor) => {
                                    if let Some(s) = crate::tls::handshake(
                                        acceptor,
                                        sock,
                                        REFUSAL_HANDSHAKE,
                                        peer,
                                        &shutdown,
                                    )
                                    .await
                                    {
                                        refuse(s, body).await;
                                    }
                                }
                            }
                            drop(permit);
                        });
                    }
                    // Too many refusals in progress: close without a word.
                    None => drop(sock),
                }
            }
        }
    }
}

/// The `retry_after_ms` hint of a connection refused at the per-address cap.
pub(crate) const REFUSED_RETRY_MS: u64 = 1000;

/// How long a refused TLS connection gets to complete its handshake and read why.
const REFUSAL_HANDSHAKE: Duration = Duration::from_secs(2);

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(sock: S, body: ErrorBody) {
    let mut out = BytesMut::new();
    if encode_line(&Response::err(None, None, body), &mut out).is_ok() {
        crate::limit::answer_and_close(sock, &out).await;
    }
}

/// The write side of a connection, shared by its reader (answers that are ready at once, while
/// nothing is queued) and its writer task (everything else, in order).
struct Outbound<W> {
    wr: Mutex<W>,
    /// Replies handed to the writer task and not yet written. The reader writes an answer
    /// itself only while this is zero, so answers never overtake each other.
    queued: AtomicUsize,
    /// How long one write (at most a few tens of KiB) may wait for the client to read before
    /// the connection is given up (`idle_timeout_s`).
    stall: Duration,
    peer: SocketAddr,
}

impl<W: AsyncWrite + Unpin> Outbound<W> {
    /// Writes `out` (answers encoded by the reader) and empties it. A client that reads nothing
    /// for `stall` fails the write with `TimedOut`: it would otherwise hold the connection, its
    /// queued answers and a follow stream forever.
    async fn write_direct(&self, out: &mut BytesMut) -> std::io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let write = async {
            let mut wr = self.wr.lock().await;
            wr.write_all(out).await?;
            // A TLS stream may keep the end of what it was given buffered until flushed.
            wr.flush().await?;
            out.clear();
            Ok(())
        };
        match tokio::time::timeout(self.stall, write).await {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!(peer = %self.peer, "closing a connection whose client stopped reading");
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading",
                ))
            }
        }
    }
}

/// Serves one connection to the end.
pub async fn connection(sock: TcpStream, peer: SocketAddr, dispatcher: Dispatcher) {
    let _ = sock.set_nodelay(true);
    let (rd, wr) = sock.into_split();
    serve_halves(rd, wr, peer, dispatcher).await;
}

/// Serves one connection, given as its read and write halves (plain TCP or TLS), to the end.
async fn serve_halves<R, W>(mut rd: R, wr: W, peer: SocketAddr, dispatcher: Dispatcher)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let outbound = Arc::new(Outbound {
        wr: Mutex::new(wr),
        queued: AtomicUsize::new(0),
        stall: Duration::from_secs(dispatcher.app().config.idle_timeout_s),
        peer,
    });
    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    let closed = CancellationToken::new();
    let writer = tokio::spawn(write_loop(Arc::clone(&outbound), rx, closed.clone()));
    let mut direct = BytesMut::new();
    let end = read_loop(
        &mut rd,
        &tx,
        &outbound,
        &mut direct,
        &dispatcher,
        peer,
        &closed,
    )
    .await;
    // Answers the reader encoded come before anything still queued after them.
    let _ = outbound.write_direct(&mut direct).await;
    drop(tx);
    if end == ReadEnd::ClientGone {
        // A following stream ends with its client.
        closed.cancel();
    }
    // Queued answers still drain (after EOF, a client may still be reading).
    let _ = writer.await;
    // Closing a socket with unread input makes the kernel send a reset, which can destroy
    // answers still in flight. The write side is already shut: read and discard what the client
    // still sends, for a bounded time, so it receives every answer before the close.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 8192];
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How long a closing connection keeps discarding input so its last answers arrive.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// No more requests will be read; queued answers should still be written.
    Done,
    /// The client closed while a following stream was being written.
    ClientGone,
}

/// Reads and executes requests in order. An answer that is ready at once while nothing is
/// queued is encoded into `direct` and written by the reader before it next waits for input
/// (no hand-off to the writer task); any other answer first pushes `direct` out, then goes to
/// the writer through `tx`.
async fn read_loop<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    tx: &mpsc::Sender<Reply>,
    outbound: &Outbound<W>,
    direct: &mut BytesMut,
    dispatcher: &Dispatcher,
    peer: SocketAddr,
    closed: &CancellationToken,
) -> ReadEnd {
    let app = Arc::clone(dispatcher.app());
    let cfg = &app.config;
    let conn = ConnInfo {
        transport: Transport::Tcp,
        client: Some(peer),
        user_agent: None,
    };
    let idle = Duration::from_secs(cfg.idle_timeout_s);
    let frame_timeout = Duration::from_secs(cfg.frame_timeout_s);
    let mut codec = FrameCodec::new(cfg.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut partial_since: Option<Instant> = None;
    let mut eof = false;
    let shutdown = app.shutdown.cancelled();
    tokio::pin!(shutdown);
    // One timer for the connection's life: it is moved only when it must fire earlier, and when
    // it fires early it is moved to the current deadline, so a busy connection touches no timer
    // per request.
    let mut deadline = tokio::time::Instant::now() + idle;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    loop {
        // Execute every complete frame already buffered.
        loop {
            let decoded = if eof {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            let reply = match decoded {
                Ok(Some(frame)) => {
                    // The frame timeout runs from the first byte of each line.
                    partial_since = None;
                    dispatcher.execute_frame(&frame, None, &conn).await
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { limit }) => {
                    let err = CommandError::new(
                        ErrorCode::FrameTooLarge,
                        format!("a request line may be at most {limit} bytes; closing"),
                    );
                    let reply = dispatcher
                        .unreadable(None, err, &conn, Instant::now())
                        .await;
                    let _ = hand_over(tx, outbound, direct, reply).await;
                    return ReadEnd::Done;
                }
                Err(_) => return ReadEnd::Done,
            };
            let reply = match reply {
                Reply::Unary(p) if p.is_ready() && outbound.queued.load(Ordering::Acquire) == 0 => {
                    if !encode(&p.resolve().await, direct)
                        || (direct.len() >= WRITE_CHUNK
                            && outbound.write_direct(direct).await.is_err())
                    {
                        return ReadEnd::Done;
                    }
                    continue;
                }
                other => other,
            };
            let follows = matches!(reply, Reply::Stream { follow: true, .. });
            if hand_over(tx, outbound, direct, reply).await.is_err() {
                return ReadEnd::Done;
            }
            if follows {
                // The connection now carries only the stream: discard input until the client
                // goes away, which ends the stream. On shutdown the stream ends by itself, with
                // its last line: the writer must be left to write it.
                return drain(rd, &app.shutdown, closed).await;
            }
        }
        if eof || outbound.write_direct(direct).await.is_err() {
            return ReadEnd::Done;
        }
        let wait = if buf.is_empty() {
            partial_since = None;
            idle
        } else {
            let since = *partial_since.get_or_insert_with(Instant::now);
            frame_timeout.saturating_sub(since.elapsed())
        };
        deadline = tokio::time::Instant::now() + wait;
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        // Wait for input until `deadline`. The deadline is computed once per wait: a timer that
        // fires early (for a deadline that activity has since moved) is re-armed for the same
        // deadline, never for one computed afresh, or the connection would never time out.
        let read = loop {
            tokio::select! {
                _ = &mut shutdown => return ReadEnd::Done,
                _ = &mut timer => {
                    if tokio::time::Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    tracing::debug!(%peer, partial = !buf.is_empty(), "closing idle connection");
                    return ReadEnd::Done;
                }
                r = rd.read_buf(&mut buf) => break r,
            }
        };
        match read {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(_) => return ReadEnd::Done,
        }
    }
}

/// Queues a reply for the writer task, after writing the answers the reader encoded before it.
async fn hand_over<W: AsyncWrite + Unpin>(
    tx: &mpsc::Sender<Reply>,
    outbound: &Outbound<W>,
    direct: &mut BytesMut,
    reply: Reply,
) -> Result<(), ()> {
    outbound.write_direct(direct).await.map_err(|_| ())?;
    outbound.queued.fetch_add(1, Ordering::AcqRel);
    tx.send(reply).await.map_err(|_| ())
}

/// Discards the input of a connection that carries a following stream, until the client goes
/// away ([`ReadEnd::ClientGone`]: the writer stops the stream) or the server shuts down
/// ([`ReadEnd::Done`]: the stream ends itself with its `shutdown` line, which the writer still
/// writes before closing). `closed`: the writer has already ended the stream.
async fn drain<R: AsyncRead + Unpin>(
    rd: &mut R,
    shutdown: &CancellationToken,
    closed: &CancellationToken,
) -> ReadEnd {
    let mut sink = [0u8; 4096];
    loop {
        tokio::select! {
            // Checked first: a client that closes while the server shuts down still gets the
            // last line if it is still reading.
            biased;
            _ = shutdown.cancelled() => return ReadEnd::Done,
            _ = closed.cancelled() => return ReadEnd::Done,
            r = rd.read(&mut sink) => match r {
                Ok(0) | Err(_) => return ReadEnd::ClientGone,
                Ok(_) => {}
            },
        }
    }
}

/// Writes queued replies in order. `encoded` counts replies whose bytes are all in `out`;
/// once written they leave [`Outbound::queued`].
async fn write_loop<W: AsyncWrite + Unpin>(
    outbound: Arc<Outbound<W>>,
    mut rx: mpsc::Receiver<Reply>,
    closed: CancellationToken,
) {
    let mut out = BytesMut::with_capacity(WRITE_CHUNK);
    let mut encoded = 0usize;
    while let Some(reply) = rx.recv().await {
        let ok = match reply {
            Reply::Unary(pending) => {
                let r = pending.resolve().await;
                encode(&r, &mut out)
            }
            Reply::Stream { mut stream, follow } => loop {
                // Write what is buffered whenever the stream would wait.
                let next = match stream.next_into(&mut out).now_or_never() {
                    Some(n) => n,
                    None => {
                        if flush(&outbound, &mut out, &mut encoded).await.is_err() {
                            return;
                        }
                        tokio::select! {
                            _ = closed.cancelled() => return,
                            n = stream.next_into(&mut out) => n,
                        }
                    }
                };
                match next {
                    Some(Ok(())) => {
                        if out.len() >= WRITE_CHUNK
                            && flush(&outbound, &mut out, &mut encoded).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "stream line does not encode");
                        return;
                    }
                    None if follow => {
                        // A following stream only ends on error or shutdown: the connection
                        // carries nothing else, so close it (the client resumes elsewhere).
                        let _ = flush(&outbound, &mut out, &mut encoded).await;
                        let _ = outbound.wr.lock().await.shutdown().await;
                        closed.cancel();
                        return;
                    }
                    None => break true,
                }
            },
        };
        if !ok {
            return;
        }
        encoded += 1;
        if (rx.is_empty() || out.len() >= WRITE_CHUNK)
            && flush(&outbound, &mut out, &mut encoded).await.is_err()
        {
            return;
        }
    }
    let _ = flush(&outbound, &mut out, &mut encoded).await;
    let _ = outbound.wr.lock().await.shutdown().await;
}

fn encode(r: &Response, out: &mut BytesMut) -> bool {
    match encode_line(r, out) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "response does not encode");
            false
        }
    }
}

/// Writes what the writer task encoded; the replies it held are then no longer queued.
async fn flush<W: AsyncWrite + Unpin>(
    outbound: &Outbound<W>,
    out: &mut BytesMut,
    encoded: &mut usize,
) -> std::io::Result<()> {
    outbound.write_direct(out).await?;
    outbound
        .queued
        .fetch_sub(std::mem::take(encoded), Ordering::AcqRel);
    Ok(())
}
