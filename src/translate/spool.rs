//! Spools for decoded attachment and MIME bytes, and the incremental base64 decoder that fills
//! them.
//!
//! A 150 MB attachment arrives as 200 MB of base64 text inside one XML element; it must never be
//! one string. The decoder takes the text in pieces as it streams past and writes whole decoded
//! blocks into a [`Spool`], which keeps small payloads in memory and moves to an anonymous
//! temporary file (deleted by the OS when closed) above a threshold.

use std::io::{self, Write};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

/// In-memory size above which a spool moves to a temporary file.
pub const DEFAULT_MEMORY_THRESHOLD: usize = 256 * 1024;

/// A write-once buffer that moves to a temporary file when it grows past a threshold.
pub struct Spool {
    mem: Vec<u8>,
    file: Option<std::fs::File>,
    len: u64,
    threshold: usize,
}

impl Spool {
    /// An empty spool that stays in memory up to `threshold` bytes.
    pub fn new(threshold: usize) -> Self {
        Self {
            mem: Vec::new(),
            file: None,
            len: 0,
            threshold,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends writing; the result can be read from any task and cloned cheaply.
    pub fn freeze(mut self) -> io::Result<SpoolData> {
        match self.file.take() {
            Some(mut file) => {
                file.flush()?;
                Ok(SpoolData {
                    inner: Inner::File(Arc::new(file)),
                    len: self.len,
                })
            }
            None => Ok(SpoolData {
                inner: Inner::Mem(Bytes::from(std::mem::take(&mut self.mem))),
                len: self.len,
            }),
        }
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(file) = self.file.as_mut() {
            file.write_all(buf)?;
        } else if self.mem.len() + buf.len() > self.threshold {
            let mut file = tempfile::tempfile()?;
            file.write_all(&self.mem)?;
            file.write_all(buf)?;
            self.mem = Vec::new();
            self.file = Some(file);
        } else {
            self.mem.extend_from_slice(buf);
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[derive(Clone)]
enum Inner {
    Mem(Bytes),
    File(Arc<std::fs::File>),
}

/// The frozen content of a [`Spool`].
#[derive(Clone)]
pub struct SpoolData {
    inner: Inner,
    len: u64,
}

impl std::fmt::Debug for SpoolData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.inner {
            Inner::Mem(_) => "memory",
            Inner::File(_) => "file",
        };
        write!(f, "SpoolData({} bytes in {place})", self.len)
    }
}

impl PartialEq for SpoolData {
    /// Compares lengths and places only: contents are compared by tests through `read_all`.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
    }
}

impl SpoolData {
    /// In-memory data (tests, small payloads).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            len: bytes.len() as u64,
            inner: Inner::Mem(bytes),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the data lives in a temporary file.
    pub fn on_disk(&self) -> bool {
        matches!(self.inner, Inner::File(_))
    }

    /// Reads `len` bytes at `offset` (clamped to the end). Blocking for file spools: call it
    /// through [`SpoolData::read_chunk`] from async code.
    pub fn read_at_blocking(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = (offset.saturating_add(len as u64)).min(self.len);
        let start = offset.min(end);
        match &self.inner {
            Inner::Mem(b) => Ok(b.slice(start as usize..end as usize)),
            Inner::File(file) => {
                use std::os::unix::fs::FileExt as _;
                let mut buf = vec![0u8; (end - start) as usize];
                file.read_exact_at(&mut buf, start)?;
                Ok(Bytes::from(buf))
            }
        }
    }

    /// Reads one chunk without blocking the async runtime.
    pub async fn read_chunk(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        match &self.inner {
            Inner::Mem(_) => self.read_at_blocking(offset, len),
            Inner::File(_) => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.read_at_blocking(offset, len))
                    .await
                    .map_err(io::Error::other)?
            }
        }
    }

    /// The whole content in memory; only for payloads already known to be small.
    pub fn read_all_blocking(&self) -> io::Result<Bytes> {
        self.read_at_blocking(0, self.len as usize)
    }

    /// The whole content as standard base64 (for payloads already known to be small).
    pub fn to_base64(&self) -> io::Result<String> {
        Ok(STANDARD.encode(self.read_all_blocking()?))
    }
}

/// Why base64 text could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Base64Error {
    /// A character outside the standard alphabet, or padding in the middle.
    #[error("invalid base64 content: {0}")]
    Invalid(String),
    /// The length is not a multiple of four.
    #[error("invalid base64 content: truncated")]
    Truncated,
    /// Writing the spool failed.
    #[error("spool: {0}")]
    Io(#[from] io::Error),
}

/// Decodes standard base64 arriving in arbitrary pieces (whitespace ignored, as XML allows line
/// breaks in `xs:base64Binary`) into a [`Spool`], holding at most one block of text at a time.
pub struct Base64Decoder {
    pending: Vec<u8>,
    out: Vec<u8>,
    finished_by_padding: bool,
    spool: Spool,
}

/// Text decoded per block (a multiple of 4).
const BLOCK: usize = 64 * 1024;

impl Base64Decoder {
    /// A decoder writing into `spool`.
    pub fn new(spool: Spool) -> Self {
        Self {
            pending: Vec::with_capacity(BLOCK + 4),
            out: Vec::new(),
            finished_by_padding: false,
            spool,
        }
    }

    /// Feeds the next piece of text.
    pub fn feed(&mut self, text: &[u8]) -> Result<(), Base64Error> {
        for &b in text {
            if b.is_ascii_whitespace() {
                continue;
            }
            if self.finished_by_padding {
                return Err(Base64Error::Invalid("data after padding".into()));
            }
            self.pending.push(b);
            if self.pending.len() >= BLOCK {
                self.decode_pending(false)?;
            }
        }
        Ok(())
    }

    fn decode_pending(&mut self, last: bool) -> Result<(), Base64Error> {
        let whole = if last {
            if !self.pending.len().is_multiple_of(4) {
                return Err(Base64Error::Truncated);
            }
            self.pending.len()
        } else {
            self.pending.len() / 4 * 4
        };
        let block = &self.pending[..whole];
        if block.is_empty() {
            return Ok(());
        }
        // Padding may only end the whole text: a padded quad ends the input.
        if let Some(pos) = block.iter().position(|&c| c == b'=') {
            if pos < whole.saturating_sub(4) {
                return Err(Base64Error::Invalid("padding in the middle".into()));
            }
            self.finished_by_padding = true;
        }
        self.out.clear();
        STANDARD
            .decode_vec(block, &mut self.out)
            .map_err(|e| Base64Error::Invalid(e.to_string()))?;
        self.spool.write_all(&self.out)?;
        self.pending.drain(..whole);
        Ok(())
    }

    /// Ends the text and returns the decoded bytes.
    pub fn finish(mut self) -> Result<SpoolData, Base64Error> {
        self.decode_pending(true)?;
        Ok(self.spool.freeze()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(text: &[u8], piece: usize, threshold: usize) -> SpoolData {
        let mut d = Base64Decoder::new(Spool::new(threshold));
        for chunk in text.chunks(piece) {
            d.feed(chunk).unwrap();
        }
        d.finish().unwrap()
    }

    #[test]
    fn decodes_in_any_piece_size_to_memory_or_file() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut text = STANDARD.encode(&data).into_bytes();
        text.splice(100..100, b"\r\n  ".iter().copied());
        for piece in [1, 3, 4, 5, 4096, 1 << 20] {
            let small = decode_in_pieces(&text, piece, usize::MAX);
            assert!(!small.on_disk());
            assert_eq!(small.read_all_blocking().unwrap(), data, "piece {piece}");
            let big = decode_in_pieces(&text, piece, 1024);
            assert!(big.on_disk());
            assert_eq!(big.read_all_blocking().unwrap(), data, "piece {piece}");
            assert_eq!(&big.read_at_blocking(5, 10).unwrap()[..], &data[5..15]);
        }
    }

    #[test]
    fn padding_and_garbage_are_refused() {
        for bad in [&b"QQ==QQ=="[..], b"QUJD*", b"QUJ", b"QQ=", b"Q"] {
            let mut d = Base64Decoder::new(Spool::new(1 << 20));
            let r = d.feed(bad).and_then(|_| d.finish().map(|_| ()));
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            decode_in_pieces(b"QQ==", 1, 1 << 20)
                .read_all_blocking()
                .unwrap(),
            &b"A"[..]
        );
        assert!(decode_in_pieces(b"", 1, 1 << 20).is_empty());
    }
}
