//! The connection edge: one task per TCP connection, served by hyper (HTTP/1.1, or HTTP/2 with
//! prior knowledge), behind a reader ([`Guarded`]) that enforces what hyper does not:
//!
//! - **Strict framing.** A request head with a bare LF (or a bare CR) line ending, with both
//!   `Content-Length` and `Transfer-Encoding`, with an obsolete folded header line, or longer than
//!   64 KiB never reaches hyper: hyper is handed an unparseable line instead, so it answers 400
//!   and closes the connection. (httparse accepts bare LF, and hyper lets `Transfer-Encoding`
//!   override `Content-Length`, which RFC 9112 §6.3 permits but which a proxy in front that
//!   frames by `Content-Length` would read differently: request smuggling.) To know where the
//!   next head starts, the reader follows each request's body framing (`Content-Length`
//!   bytes, or chunked framing).
//! - **Timeouts.** A head must arrive within `server.header_read_timeout_ms` of its first byte;
//!   a connection with no request in flight closes after `server.idle_timeout_ms` without a
//!   byte. A request in flight (a stream being written, however long) is never timed out
//!   here; its body's arrival is bounded by `server.body_read_timeout_ms` where it is read
//!   ([`crate::pipeline::read_body`]). hyper's own header-read timer (idle plus header time)
//!   stays as a backstop.
//!
//! A request in flight is counted from the service call until its response body is dropped
//! (written out, or the connection ended), per connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// The longest request head accepted (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Bytes hyper is handed in place of a rejected head: an invalid method token, so hyper answers
/// 400 Bad Request and closes the connection.
const POISON: &[u8] = b"\x00 / HTTP/1.1\r\n\r\n";

/// Timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A head must be complete within this long of its first byte.
    pub header_read: Duration,
    /// A connection with no request in flight closes after this long without a byte.
    pub idle: Duration,
}

impl Limits {
    /// The limits of `server`.
    pub fn of(server: &triage_core::catalog::ServerSettings) -> Limits {
        Limits { header_read: server.header_read_timeout, idle: server.idle_timeout }
    }
}

/// Per-connection state shared by the reader and the service: requests in flight, and when the
/// last one ended.
#[derive(Debug)]
struct Shared {
    busy: AtomicUsize,
    idle_since: Mutex<Instant>,
    reader: Mutex<Option<Waker>>,
}

/// Counts one request in flight on its connection until dropped.
struct Busy(Arc<Shared>);

impl Busy {
    fn new(shared: Arc<Shared>) -> Busy {
        shared.busy.fetch_add(1, Ordering::SeqCst);
        Busy(shared)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Ok(mut t) = self.0.idle_since.lock() {
                *t = Instant::now();
            }
            // The reader may be waiting without a timer (it was busy): let it arm the idle one.
            if let Some(w) = self.0.reader.lock().ok().and_then(|mut w| w.take()) {
                w.wake();
            }
        }
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Where the reader is in the byte stream of a connection.
#[derive(Debug)]
enum Framing {
    /// Collecting a request head (in `Guarded::head`).
    Head,
    /// Passing this many more body bytes.
    Body(u64),
    /// Passing a chunked body.
    Chunked(Chunk),
    /// Not HTTP/1 framing this reader follows (HTTP/2, an upgrade, a framing hyper will
    /// refuse): bytes pass as they come.
    Passthrough,
    /// A head was rejected: nothing more is read.
    Rejected,
}

/// Where the reader is in a chunked body.
#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    /// Passing this many more chunk-data bytes.
    Data(u64),
    /// Passing the CRLF after chunk data (bytes of it still to pass).
    DataEnd(u8),
    /// Reading trailer lines until an empty one.
    Trailer(Vec<u8>),
}

/// A TCP stream as hyper sees it: the strict framing and timeouts of the module docs.
pub struct Guarded {
    io: TcpStream,
    shared: Arc<Shared>,
    limits: Limits,
    framing: Framing,
    head: Vec<u8>,
    head_started: Instant,
    last_read: Instant,
    /// Bytes released to hyper, not yet read by it (from `out_pos`).
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Guarded {
    fn new(io: TcpStream, shared: Arc<Shared>, limits: Limits) -> Guarded {
        let now = Instant::now();
        Guarded {
            io,
            shared,
            limits,
            framing: Framing::Head,
            head: Vec::new(),
            head_started: now,
            last_read: now,
            out: Vec::new(),
            out_pos: 0,
            eof: false,
            timer: None,
        }
    }

    fn reject(&mut self, why: &'static str) {
        tracing::debug!(reason = why, "malformed request head: 400, connection closed");
        metrics::counter!("triage_http_rejected_total", "reason" => why).increment(1);
        self.head.clear();
        self.out.extend_from_slice(POISON);
        self.framing = Framing::Rejected;
    }

    /// Runs the framing state machine over bytes just read.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.framing {
                Framing::Rejected => return,
                Framing::Passthrough => {
                    self.out.extend_from_slice(data);
                    return;
                }
                Framing::Body(rest) => {
                    let n = data.len().min(usize::try_from(*rest).unwrap_or(usize::MAX));
                    self.out.extend_from_slice(&data[..n]);
                    *rest -= n as u64;
                    data = &data[n..];
                    if *rest == 0 {
                        self.framing = Framing::Head;
                    }
                }
                Framing::Chunked(_) => {
                    let n = self.feed_chunked(data);
                    data = &data[n..];
                }
                Framing::Head => {
                    let mut used = data.len();
                    for (i, &b) in data.iter().enumerate() {
                        if self.head.is_empty() {
                            self.head_started = Instant::now();
                        }
                        let prev = self.head.last().copied();
                        if b == b'\n' && prev != Some(b'\r') {
                            self.reject("bare_lf");
                            return;
                        }
                        if prev == Some(b'\r') && b != b'\n' {
                            self.reject("bare_cr");
                            return;
                        }
                        self.head.push(b);
                        if self.head == b"\r\n" {
                            // An empty line before a request line (RFC 9112 §2.2): skipped.
                            self.head.clear();
                        } else if self.head.ends_with(b"\r\n\r\n") {
                            used = i + 1;
                            self.on_head();
                            break;
                        } else if self.head.len() > MAX_HEAD {
                            self.reject("head_too_large");
                            return;
                        }
                    }
                    data = &data[used..];
                }
            }
        }
    }

    /// A complete head: checks its framing headers, releases it to hyper, and follows its body.
    fn on_head(&mut self) {
        let head = std::mem::take(&mut self.head);
        if head.starts_with(b"PRI * HTTP/2.0") {
            self.out.extend_from_slice(&head);
            self.framing = Framing::Passthrough;
            return;
        }
        let mut content_length: Option<Option<u64>> = None;
        let mut chunked: Option<bool> = None;
        let mut upgrade = head.starts_with(b"CONNECT ");
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                self.reject("obs_fold");
                return;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let name = &line[..colon];
            let value = line[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
                content_length = Some(match content_length {
                    Some(prev) if prev != n => None,
                    _ => n,
                });
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        if content_length.is_some() && chunked.is_some() {
            self.reject("content_length_with_transfer_encoding");
            return;
        }
        self.out.extend_from_slice(&head);
        self.framing = match (content_length, chunked) {
            _ if upgrade => Framing::Passthrough,
            (_, Some(true)) => Framing::Chunked(Chunk::Size(Vec::new())),
            // A framing hyper refuses (400, connection closed): nothing to follow.
            (Some(None), _) | (_, Some(false)) => Framing::Passthrough,
            (Some(Some(n)), None) if n > 0 => Framing::Body(n),
            _ => Framing::Head,
        };
    }

    /// Follows chunked framing over `data`, releasing it; returns the bytes used (fewer than
    /// all when the body ended inside `data`).
    fn feed_chunked(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            let Framing::Chunked(chunk) = &mut self.framing else { break };
            match chunk {
                Chunk::Data(rest) => {
                    let n = (data.len() - i).min(usize::try_from(*rest).unwrap_or(usize::MAX));
                    self.out.extend_from_slice(&data[i..i + n]);
                    i += n;
                    *rest -= n as u64;
                    if *rest == 0 {
                        *chunk = Chunk::DataEnd(2);
                    }
                }
                Chunk::DataEnd(rest) => {
                    self.out.push(data[i]);
                    i += 1;
                    *rest -= 1;
                    if *rest == 0 {
                        *chunk = Chunk::Size(Vec::new());
                    }
                }
                Chunk::Size(line) | Chunk::Trailer(line) => {
                    let b = data[i];
                    self.out.push(b);
                    i += 1;
                    if b != b'\n' {
                        line.push(b);
                        if line.len() > 4096 {
                            // Not chunked framing hyper accepts either; it will refuse it.
                            self.framing = Framing::Passthrough;
                        }
                        continue;
                    }
                    let text = line.strip_suffix(b"\r").unwrap_or(line).to_vec();
                    line.clear();
                    if matches!(chunk, Chunk::Size(_)) {
                        let hex = text.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                        match std::str::from_utf8(hex).ok().and_then(|h| u64::from_str_radix(h, 16).ok()) {
                            Some(0) => *chunk = Chunk::Trailer(Vec::new()),
                            Some(n) => *chunk = Chunk::Data(n),
                            None => self.framing = Framing::Passthrough,
                        }
                    } else if text.is_empty() {
                        self.framing = Framing::Head;
                        return i;
                    }
                }
            }
        }
        if matches!(self.framing, Framing::Passthrough) && i < data.len() {
            self.out.extend_from_slice(&data[i..]);
            return data.len();
        }
        i
    }

    /// When the connection is timed out, if now it may be: a partial head by its first byte,
    /// an idle connection by its last activity; never while a request is in flight.
    fn deadline(&self) -> Option<Instant> {
        if matches!(self.framing, Framing::Head) && !self.head.is_empty() {
            return Some(self.head_started + self.limits.header_read);
        }
        if self.shared.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let idle_since = self.shared.idle_since.lock().map(|t| *t).unwrap_or(self.last_read);
        Some(idle_since.max(self.last_read) + self.limits.idle)
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || matches!(this.framing, Framing::Rejected) {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = rb.filled();
                    if filled.is_empty() {
                        // The client closed: hyper gets what it has (a partial head ends there).
                        this.eof = true;
                        let rest = std::mem::take(&mut this.head);
                        this.out.extend_from_slice(&rest);
                        continue;
                    }
                    this.last_read = Instant::now();
                    this.feed(filled);
                }
                Poll::Pending => {
                    if let Ok(mut w) = this.shared.reader.lock() {
                        *w = Some(cx.waker().clone());
                    }
                    let Some(deadline) = this.deadline() else { return Poll::Pending };
                    let deadline = tokio::time::Instant::from_std(deadline);
                    let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        let what = if this.head.is_empty() { "idle_timeout" } else { "header_read_timeout" };
                        tracing::debug!(reason = what, "connection timed out");
                        metrics::counter!("triage_http_timeouts_total", "reason" => what).increment(1);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` and serves `app` on each until `shutdown` resolves; then
/// stops accepting, lets every connection finish its requests in flight (idle ones close at
/// once), and returns when all have closed.
///
/// Errors: none so far (a failed accept, e.g. out of file descriptors, is logged and retried
/// after a short pause).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read + limits.idle);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small SSE writes must leave at once: without TCP_NODELAY, Nagle's algorithm meeting the
        // client's delayed ACK holds a token back for ~40 ms (measured, docs/BENCHMARKS.md).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let shared = Arc::new(Shared {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            reader: Mutex::new(None),
        });
        let io = TokioIo::new(Guarded::new(tcp, shared.clone(), limits));
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = Busy::new(shared.clone());
            let call = app.clone().oneshot(req.map(Body::new));
            async move {
                let resp = call.await.unwrap_or_else(|never: Infallible| match never {});
                Ok::<_, Infallible>(resp.map(|inner| Body::new(Tracked { inner, _busy: busy })))
            }
        });
        let conn = builder.serve_connection(io, service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
