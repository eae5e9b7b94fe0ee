//! A line-oriented client connection: `TCP_NODELAY`, one buffered write per batch of requests,
//! responses split on `\n` straight out of the read buffer. The Portcullis workloads (NDJSON)
//! and the Redis anchor (RESP `PING` → `+PONG`) both use it, so the two sides are measured
//! with the same client code path.

use portcullis_client::{Stream, TlsConnector};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest response line accepted.
const MAX_LINE: usize = 16 * 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// One connection.
pub struct LineConn {
    sock: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl LineConn {
    /// Connects with `TCP_NODELAY` set.
    pub async fn connect(addr: &str) -> io::Result<LineConn> {
        LineConn::connect_with(addr, None).await
    }

    /// Connects with `TCP_NODELAY` set, inside TLS when `tls` is given.
    pub async fn connect_with(addr: &str, tls: Option<&TlsConnector>) -> io::Result<LineConn> {
        let sock = Stream::connect(addr, tls).await.map_err(|e| match e {
            portcullis_client::ClientError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        Ok(LineConn {
            sock,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        })
    }

    /// Writes a whole batch with one write call (as far as the kernel takes it).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes).await?;
        // TLS may hold the end of the batch until flushed; plain TCP does nothing here.
        self.sock.flush().await
    }

    /// The next line, without its `\n` (and `\r`). Fails at end of stream.
    pub async fn read_line(&mut self) -> io::Result<&[u8]> {
        loop {
            if let Some(pos) = self.buf[self.start..self.end]
                .iter()
                .position(|&b| b == b'\n')
            {
                let from = self.start;
                let mut to = from + pos;
                self.start = to + 1;
                if to > from && self.buf[to - 1] == b'\r' {
                    to -= 1;
                }
                return Ok(&self.buf[from..to]);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                if self.buf.len() >= MAX_LINE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response line too long",
                    ));
                }
                let grown = self.buf.len() * 2;
                self.buf.resize(grown, 0);
            }
            let n = self.sock.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            self.end += n;
        }
    }

    /// Sends one line and reads one answer (setup requests).
    pub async fn call(&mut self, line: &[u8]) -> io::Result<Vec<u8>> {
        self.write_all(line).await?;
        Ok(self.read_line().await?.to_vec())
    }
}
