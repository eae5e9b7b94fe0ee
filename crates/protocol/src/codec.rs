//! NDJSON framing: one JSON value per `\n`-terminated line, with a hard length limit.
//!
//! The decoder never buffers more than the limit plus one read chunk: a line that outgrows the
//! limit is reported as [`FrameError::TooLarge`] as soon as that is known, without waiting for
//! its end. `\r\n` line ends are accepted and blank lines are skipped.

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use std::io;
use tokio_util::codec::{Decoder, Encoder};

/// A framing failure.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A line is longer than the limit.
    #[error("frame exceeds {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A value could not be serialised.
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Splits a byte stream into lines and writes serialisable values as lines.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
    scanned: usize,
}

impl FrameCodec {
    /// A codec that refuses lines longer than `max` bytes (excluding the line end).
    pub fn new(max: usize) -> Self {
        FrameCodec { max, scanned: 0 }
    }

    /// The limit in force.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(crate::DEFAULT_MAX_FRAME_BYTES)
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        loop {
            let from = self.scanned.min(buf.len());
            let Some(off) = buf[from..].iter().position(|&b| b == b'\n') else {
                // One byte of slack for the `\r` of a `\r\n` line end still to come.
                if buf.len() > self.max + 1 {
                    return Err(FrameError::TooLarge { limit: self.max });
                }
                self.scanned = buf.len();
                return Ok(None);
            };
            let end = from + off;
            self.scanned = 0;
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > self.max {
                return Err(FrameError::TooLarge { limit: self.max });
            }
            if !is_blank(&line) {
                return Ok(Some(line));
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        // A last line without its `\n` still counts, so `printf '{...}' | nc` works, under the
        // same limit as any other line.
        self.scanned = 0;
        let mut rest = buf.split();
        if rest.last() == Some(&b'\r') {
            rest.truncate(rest.len() - 1);
        }
        if rest.len() > self.max {
            return Err(FrameError::TooLarge { limit: self.max });
        }
        if is_blank(&rest) {
            Ok(None)
        } else {
            Ok(Some(rest))
        }
    }
}

impl<T: Serialize> Encoder<T> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_line(&item, dst)
    }
}

/// Appends `item` as one compact JSON line to `dst`.
pub fn encode_line<T: Serialize + ?Sized>(item: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
    let mut w = dst.writer();
    serde_json::to_writer(&mut w, item)?;
    w.into_inner().put_u8(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(codec: &mut FrameCodec, input: &[u8]) -> Vec<Result<Vec<u8>, String>> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f.to_vec())),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn splits_lines_skips_blanks_and_strips_cr() {
        let mut c = FrameCodec::new(16);
        let got = frames(&mut c, b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\"");
        assert_eq!(
            got,
            vec![Ok(b"{\"a\":1}".to_vec()), Ok(b"{\"b\":2}".to_vec())]
        );
    }

    #[test]
    fn oversized_line_is_refused_before_its_end_arrives() {
        let mut c = FrameCodec::new(8);
        let mut buf = BytesMut::from(&b"1234567890"[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(FrameError::TooLarge { limit: 8 })
        ));
        let mut c = FrameCodec::new(8);
        assert!(frames(&mut c, b"12345678\n")[0].is_ok());
        // A line of exactly the limit still fits when its `\r\n` arrives in pieces.
        let mut c = FrameCodec::new(8);
        let mut buf = BytesMut::from(&b"12345678\r"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\n");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().to_vec(), b"12345678");
        let mut c = FrameCodec::new(8);
        assert!(frames(&mut c, b"123456789\n")[0].is_err());
    }

    #[test]
    fn incremental_feeding_finds_the_same_lines() {
        let input = b"{\"x\":1}\n{\"y\":22}\n{\"z\":333}\n";
        for chunk in 1..input.len() {
            let mut c = FrameCodec::new(64);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in input.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = c.decode(&mut buf).unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got.len(), 3, "chunk size {chunk}");
            assert_eq!(got[2], b"{\"z\":333}");
        }
    }

    #[test]
    fn last_line_without_newline_is_a_frame_at_eof() {
        let mut c = FrameCodec::new(64);
        let mut buf = BytesMut::from(&b"{\"a\":1}"[..]);
        assert_eq!(
            c.decode_eof(&mut buf).unwrap().unwrap().to_vec(),
            b"{\"a\":1}"
        );
        assert!(c.decode_eof(&mut buf).unwrap().is_none());
        // The limit holds for the last line too.
        let mut c = FrameCodec::new(8);
        let mut buf = BytesMut::from(&b"123456789"[..]);
        assert!(matches!(
            c.decode_eof(&mut buf),
            Err(FrameError::TooLarge { limit: 8 })
        ));
    }
}
