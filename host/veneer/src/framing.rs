//! A read-side watch over an HTTP/1 connection's raw bytes, for the one framing fault hyper
//! hides from a service: a request carrying both `Content-Length` and `Transfer-Encoding`.
//! hyper (correctly) frames such a request by its chunked encoding, drops the length and closes
//! the connection afterwards, but the service only ever sees the cleaned-up head, so it cannot
//! refuse the request as RFC 9112 §6.1 asks of an intermediary. This watcher follows the
//! request heads and body framing as hyper reads them and records the ordinal of the first
//! request that had both; the service compares its own count of requests against it.
//!
//! It only watches: bytes pass through untouched. When it cannot follow the stream (h2c, an
//! upgrade, a head too large, a framing error, which hyper refuses anyway) it stops watching.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest head followed; hyper's own limit is larger, so a bigger head is not watched.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;
/// Most header lines parsed (hyper's default is 100).
const MAX_HEADERS: usize = 128;

/// The ordinal (1-based) of the first request on a connection that declared both framings;
/// 0 while there is none. Shared between the watcher and the connection's service.
#[derive(Clone, Default)]
pub struct FramingFlag(Arc<AtomicU64>);

impl FramingFlag {
    /// Whether request number `ordinal` (1-based) on this connection declared both
    /// `Content-Length` and `Transfer-Encoding`.
    pub fn conflicting(&self, ordinal: u64) -> bool {
        self.0.load(Ordering::Acquire) == ordinal
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes to go.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer lines, until an empty one.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Head,
    Fixed(u64),
    Chunked(Chunk),
    /// Not following any more.
    Off,
}

/// What parsing a head found.
enum Head {
    /// A whole head of this many bytes (leading blank lines included).
    Complete(usize),
    /// Not yet a whole head.
    Partial,
    /// Something the watcher does not follow; it stopped.
    Stopped,
}

/// Whether `bytes` hold an empty line (the end of a head).
fn blank_line(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// Follows request framing over the bytes fed to it.
pub struct Tracker {
    phase: Phase,
    buf: Vec<u8>,
    requests: u64,
    flag: FramingFlag,
}

impl Tracker {
    /// A tracker reporting into `flag`.
    pub fn new(flag: FramingFlag) -> Self {
        Tracker {
            phase: Phase::Head,
            buf: Vec::new(),
            requests: 0,
            flag,
        }
    }

    /// Feeds bytes read from the client, in order.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.phase {
                Phase::Off => return,
                Phase::Head => {
                    // Heads are parsed in place; only a head split across reads is buffered
                    // (and only until it is whole), so pipelined requests cost no copies.
                    if self.buf.is_empty() {
                        // httparse stops at the end of the head, so parsing in place costs the
                        // head's length, whatever follows it.
                        match self.head(data) {
                            Head::Complete(used) => data = &data[used.min(data.len())..],
                            Head::Partial => {
                                self.hold(data);
                                return;
                            }
                            Head::Stopped => return,
                        }
                    } else {
                        let old_len = self.buf.len();
                        let searched_from = old_len.saturating_sub(3);
                        self.buf.extend_from_slice(data);
                        if !blank_line(&self.buf[searched_from..]) {
                            if self.buf.len() > MAX_HEAD {
                                self.stop();
                            }
                            return;
                        }
                        let buf = std::mem::take(&mut self.buf);
                        match self.head(&buf) {
                            Head::Complete(used) => {
                                // The head ends in the new bytes: the old ones held none.
                                let from_data = used.saturating_sub(old_len).min(data.len());
                                data = &data[from_data..];
                            }
                            Head::Partial => {
                                self.buf = buf;
                                if self.buf.len() > MAX_HEAD {
                                    self.stop();
                                }
                                return;
                            }
                            Head::Stopped => return,
                        }
                    }
                }
                Phase::Fixed(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.phase = if n == take {
                        Phase::Head
                    } else {
                        Phase::Fixed(n - take)
                    };
                }
                Phase::Chunked(Chunk::Data(n)) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.phase = Phase::Chunked(if n == take {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(n - take)
                    });
                }
                Phase::Chunked(state) => {
                    let Some(end) = data.iter().position(|&b| b == b'\n') else {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > MAX_LINE {
                            self.stop();
                        }
                        return;
                    };
                    self.buf.extend_from_slice(&data[..=end]);
                    data = &data[end + 1..];
                    let line = std::mem::take(&mut self.buf);
                    let line = line
                        .strip_suffix(b"\n")
                        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                        .unwrap_or(&line);
                    self.phase = match state {
                        Chunk::Size => match chunk_size(line) {
                            Some(0) => Phase::Chunked(Chunk::Trailers),
                            Some(n) => Phase::Chunked(Chunk::Data(n)),
                            None => Phase::Off,
                        },
                        Chunk::DataEnd if line.is_empty() => Phase::Chunked(Chunk::Size),
                        Chunk::Trailers if line.is_empty() => Phase::Head,
                        Chunk::Trailers => Phase::Chunked(Chunk::Trailers),
                        Chunk::DataEnd | Chunk::Data(_) => Phase::Off,
                    };
                }
            }
        }
    }

    /// Keeps the start of a head that has not arrived whole.
    fn hold(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > MAX_HEAD {
            self.stop();
        }
    }

    /// Parses a head at the start of `bytes`.
    fn head(&mut self, bytes: &[u8]) -> Head {
        // Empty lines before a request line are allowed (RFC 9112 §2.2).
        let start = bytes
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(bytes.len());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let used = match req.parse(&bytes[start..]) {
            Ok(httparse::Status::Complete(n)) => n,
            // Only leading blank lines so far: wait for the rest.
            Ok(httparse::Status::Partial) if bytes.len() <= MAX_HEAD => return Head::Partial,
            _ => {
                self.stop();
                return Head::Stopped;
            }
        };
        self.requests += 1;
        let mut length = None;
        let mut chunked = false;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .or(Some(u64::MAX));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        self.phase = match (length, chunked) {
            _ if upgrade => Phase::Off,
            (Some(_), true) => {
                // hyper closes the connection after this request, so nothing later matters.
                let _ = self.flag.0.compare_exchange(
                    0,
                    self.requests,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                Phase::Off
            }
            (None, true) => Phase::Chunked(Chunk::Size),
            (Some(u64::MAX), false) => Phase::Off,
            (Some(0), false) | (None, false) => Phase::Head,
            (Some(n), false) => Phase::Fixed(n),
        };
        Head::Complete(start + used)
    }

    fn stop(&mut self) {
        self.phase = Phase::Off;
        self.buf = Vec::new();
    }
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|&b| b == b';').next()?;
    let hex = std::str::from_utf8(hex).ok()?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// When bytes last moved on a connection, for its idle timeout, and since when a write to it
/// has been waiting for the client to take bytes, for its send timeout.
#[derive(Clone)]
pub struct Activity {
    last: Arc<AtomicU64>,
    /// 0: no write waiting; else the clock (+1) when the first waiting write was refused.
    blocked: Arc<AtomicU64>,
}

fn clock_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Activity {
    /// Activity as of now.
    pub fn new() -> Self {
        Activity {
            last: Arc::new(AtomicU64::new(clock_ms())),
            blocked: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        self.last.store(clock_ms(), Ordering::Relaxed);
    }

    /// A write went through: bytes moved and nothing waits.
    fn wrote(&self) {
        self.touch();
        self.blocked.store(0, Ordering::Relaxed);
    }

    /// A write found the client's window full: the wait starts now unless it already had.
    fn write_waits(&self) {
        let _ =
            self.blocked
                .compare_exchange(0, clock_ms() + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// How long since bytes last moved.
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            clock_ms().saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }

    /// How long a write has been waiting for the client to read (zero when none is).
    pub fn write_blocked(&self) -> std::time::Duration {
        match self.blocked.load(Ordering::Relaxed) {
            0 => std::time::Duration::ZERO,
            since => std::time::Duration::from_millis(clock_ms().saturating_sub(since - 1)),
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// An I/O stream whose reads are followed by a [`Tracker`] and whose traffic is timed.
pub struct Watched<S> {
    inner: S,
    tracker: Tracker,
    activity: Activity,
}

impl<S> Watched<S> {
    /// Watches `inner`, reporting into `flag` and `activity`.
    pub fn new(inner: S, flag: FramingFlag, activity: Activity) -> Self {
        Watched {
            inner,
            tracker: Tracker::new(flag),
            activity,
        }
    }
}

impl<S> Watched<S> {
    fn note_write(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(_)) => self.activity.wrote(),
            Poll::Pending => self.activity.write_waits(),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.activity.touch();
            if this.tracker.phase != Phase::Off {
                this.tracker.feed(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (u64, u64) {
        let flag = FramingFlag::default();
        let mut t = Tracker::new(flag.clone());
        for c in chunks {
            t.feed(c);
        }
        (flag.0.load(Ordering::Acquire), t.requests)
    }

    #[test]
    fn flags_the_request_with_both_framings_after_others() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nT: 1\r\n\r\n\
\r\nPOST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(run(&[stream]), (3, 3));
        // The same bytes one at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), (3, 3));
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_not_read_as_one() {
        let body = b"X: 1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(run(&[&stream]), (0, 2));
    }

    #[test]
    fn thousands_of_pipelined_heads_in_one_read_are_followed_without_recursion() {
        let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut stream = Vec::new();
        for _ in 0..20_000 {
            stream.extend_from_slice(one);
        }
        stream.extend_from_slice(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(run(&[&stream]), (20_001, 20_001));
        // Split at awkward places.
        let pieces: Vec<&[u8]> = stream.chunks(37).collect();
        assert_eq!(run(&pieces), (20_001, 20_001));
    }

    #[test]
    fn stops_on_what_it_cannot_follow() {
        assert_eq!(run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), (0, 0));
        assert_eq!(
            run(&[b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nContent-Length: 1\r\n"]),
            (0, 1)
        );
        let big = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(run(&[b"GET /", &big]), (0, 0));
    }
}
