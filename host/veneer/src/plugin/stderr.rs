//! A plugin's standard error, kept (bounded) for the request so a fault can name the guest's
//! own last words: a Rust guest's panic prints `panicked at src/lib.rs:12:5:` and its message
//! there, and that line is the most useful one a plugin developer can get.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of a plugin's stderr kept per instance, the last ones; older output is dropped (never
/// an error: a chatty plugin must not fault for printing).
pub const KEPT: usize = 4096;

/// The stderr of one instance.
#[derive(Clone, Default)]
pub struct GuestStderr(Arc<Mutex<Vec<u8>>>);

impl GuestStderr {
    /// Keeps the last [`KEPT`] bytes: a panic is what a guest prints last.
    fn push(&self, bytes: &[u8]) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = &bytes[bytes.len().saturating_sub(KEPT)..];
        let over = (kept.len() + bytes.len()).saturating_sub(KEPT);
        kept.drain(..over);
        kept.extend_from_slice(bytes);
    }

    /// The guest's panic, as one line (`panicked at src/lib.rs:12:5: the message`), if it
    /// printed one.
    pub fn panic_message(&self) -> Option<String> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&kept);
        let start = text.find("panicked at ")?;
        let lines: Vec<&str> = text[start..]
            .lines()
            .take_while(|l| !l.starts_with("note: "))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let line = lines.join(" ");
        Some(line.chars().take(512).collect())
    }
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStderr {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestStderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for GuestStderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panic_line_is_found_and_the_buffer_stays_bounded() {
        let s = GuestStderr::default();
        s.push(b"\nthread '<unnamed>' panicked at src/lib.rs:12:5:\ncart is empty: no items\nnote: run with `RUST_BACKTRACE=1`\n");
        assert_eq!(
            s.panic_message().as_deref(),
            Some("panicked at src/lib.rs:12:5: cart is empty: no items")
        );
        s.push(&[b'x'; 10_000]);
        assert!(s.0.lock().map(|k| k.len()).unwrap_or(0) <= KEPT);
        assert_eq!(s.panic_message(), None, "pushed out by later output");
        // A chatty plugin's panic is still found: it is what comes last.
        s.push(b"thread '<unnamed>' panicked at src/lib.rs:1:1:\nboom\n");
        assert_eq!(
            s.panic_message().as_deref(),
            Some("panicked at src/lib.rs:1:1: boom")
        );
        assert_eq!(GuestStderr::default().panic_message(), None);
    }
}
