//! Async Rust client for the Portcullis wire protocol (NDJSON over TCP, plain or TLS: see
//! [`Client::connect_tls`] and [`tls::TlsOptions`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), portcullis_client::ClientError> {
//! let mut c = portcullis_client::Client::connect("127.0.0.1:7420").await?;
//! let pong: portcullis_protocol::commands::sys::Pong =
//!     c.call_ok("SYS.PING", serde_json::json!({})).await?;
//! assert!(pong.pong);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod tls;

use futures::{SinkExt, StreamExt};
use portcullis_protocol::codec::{FrameCodec, FrameError};
use portcullis_protocol::commands::log::{TailFrame, TailParams, TAIL};
use portcullis_protocol::{ErrorBody, Event, Request, RequestId, Response, Secret};
use serde::de::DeserializeOwned;
use serde_json::Value;
pub use tls::{Stream, TlsConnector, TlsOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::Framed;

/// Longest response line the client accepts (a full `LOG.QUERY` page fits easily).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network or framing trouble.
    #[error("connection: {0}")]
    Frame(#[from] FrameError),
    /// I/O trouble.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent something that is not a response.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The command failed.
    #[error("{}: {}", .0.code, .0.message)]
    Server(ErrorBody),
    /// TLS settings that cannot be used (a file that does not load, a bad server name).
    #[error("tls: {0}")]
    Tls(String),
}

/// One connection to a server. Requests are answered in order, so several may be written
/// before any answer is read ([`Client::pipeline`]).
pub struct Client {
    framed: Framed<Stream, FrameCodec>,
    next_id: u64,
    token: Option<Secret>,
}

impl Client {
    /// Connects.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        Ok(Client::over(Stream::Plain(sock)))
    }

    /// Connects over TLS (`addr` is `host:port`; the certificate must name `host` unless the
    /// connector names another).
    pub async fn connect_tls(addr: &str, tls: &TlsConnector) -> Result<Client, ClientError> {
        Ok(Client::over(tls.connect(addr).await?))
    }

    /// A client on an open connection.
    pub fn over(stream: Stream) -> Client {
        Client {
            framed: Framed::new(stream, FrameCodec::new(MAX_RESPONSE_BYTES)),
            next_id: 1,
            token: None,
        }
    }

    /// Sends `token` with every later request that carries none of its own.
    pub fn set_token(&mut self, token: Option<Secret>) {
        self.token = token;
    }

    fn prepare(&mut self, mut req: Request) -> Request {
        if req.id.is_none() {
            req.id = Some(RequestId::from(self.next_id));
            self.next_id += 1;
        }
        if req.token.is_none() {
            req.token = self.token.clone();
        }
        req
    }

    /// Sends one request and reads its response.
    pub async fn send(&mut self, req: Request) -> Result<Response, ClientError> {
        let req = self.prepare(req);
        self.framed.send(&req).await?;
        self.read_response().await
    }

    /// Calls a command and returns the envelope, whatever its outcome.
    pub async fn call(&mut self, command: &str, params: Value) -> Result<Response, ClientError> {
        self.send(Request::new(command).params(params)).await
    }

    /// Calls a command and decodes its `data`; a failed command is [`ClientError::Server`].
    pub async fn call_ok<T: DeserializeOwned>(
        &mut self,
        command: &str,
        params: Value,
    ) -> Result<T, ClientError> {
        into_data(self.call(command, params).await?)
    }

    /// Writes every request, then reads every response (in the same order).
    pub async fn pipeline(&mut self, reqs: Vec<Request>) -> Result<Vec<Response>, ClientError> {
        let n = reqs.len();
        for r in reqs {
            let r = self.prepare(r);
            self.framed.feed(&r).await?;
        }
        SinkExt::<&Request>::flush(&mut self.framed).await?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.read_response().await?);
        }
        Ok(out)
    }

    /// Writes raw bytes (for testing how the server handles bad input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let s = self.framed.get_mut();
        s.write_all(bytes).await?;
        s.flush().await?;
        Ok(())
    }

    /// Reads the next response line. [`ClientError::Closed`] at end of stream.
    pub async fn read_response(&mut self) -> Result<Response, ClientError> {
        let line = self.framed.next().await.ok_or(ClientError::Closed)??;
        serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Starts `LOG.TAIL` and turns this connection into the event stream.
    pub async fn tail(mut self, params: TailParams) -> Result<Tail, ClientError> {
        let params =
            serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let req = self.prepare(Request::new(TAIL).params(params));
        self.framed.send(&req).await?;
        Ok(Tail { client: self })
    }
}

/// Decodes a successful response's data, or returns its error.
pub fn into_data<T: DeserializeOwned>(r: Response) -> Result<T, ClientError> {
    match (r.ok, r.error) {
        (true, _) => {
            serde_json::from_value(r.data).map_err(|e| ClientError::Protocol(e.to_string()))
        }
        (false, Some(e)) => Err(ClientError::Server(e)),
        (false, None) => Err(ClientError::Protocol(
            "failed response without error".into(),
        )),
    }
}

/// What a tail yields.
#[derive(Debug, Clone, PartialEq)]
pub enum TailItem {
    /// One event.
    Event(Box<Event>),
    /// The replay reached the head; live events follow.
    CaughtUp {
        /// First seq not yet sent.
        next_seq: u64,
    },
    /// The stream ended (no follow).
    End {
        /// First seq not sent.
        next_seq: u64,
    },
}

/// A `LOG.TAIL` stream.
pub struct Tail {
    client: Client,
}

impl Tail {
    /// The next item; `Ok(None)` once the server has closed the stream.
    pub async fn next(&mut self) -> Result<Option<TailItem>, ClientError> {
        let r = match self.client.read_response().await {
            Ok(r) => r,
            Err(ClientError::Closed) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(match into_data::<TailFrame>(r)? {
            TailFrame::Event { event } => TailItem::Event(event),
            TailFrame::CaughtUp { next_seq, .. } => TailItem::CaughtUp { next_seq },
            TailFrame::End { next_seq, .. } => TailItem::End { next_seq },
        }))
    }
}
