//! A scripted fake upstream on a raw TCP socket: every byte and every write boundary of the
//! reply is the test's to choose (SSE split mid-line, one byte per write, pauses, a hang, a reset),
//! which a real HTTP server library would smooth over.
//!
//! Replies are HTTP/1.1 with `connection: close`; streamed bodies use chunked transfer encoding,
//! one chunk per scripted write, flushed with `TCP_NODELAY` so each write leaves as its own
//! segment. `GET …/models` (the gateway's health probe) is answered with an empty model list and
//! is not recorded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When the request was fully received.
    pub at: Instant,
}

impl Recorded {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One step of a streamed reply body.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes as one chunk and flush.
    Write(Vec<u8>),
    /// Pause.
    Sleep(Duration),
    /// Stop sending but keep the socket open (a stalled upstream) for an hour.
    Hang,
    /// Close the socket abruptly, without ending the chunked body (a reset mid-body).
    Reset,
}

/// A scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Full(Vec<u8>),
    Steps(Vec<Step>),
    /// Accept the request and answer nothing for this long, then close.
    Silence(Duration),
}

impl Reply {
    /// A whole JSON body with `status`.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Body::Full(body.as_bytes().to_vec()),
        }
    }

    /// A 200 SSE body written in one piece.
    pub fn sse(text: &str) -> Reply {
        Reply::steps(200, vec![Step::Write(text.as_bytes().to_vec())])
    }

    /// A 200 SSE body written as these separate writes.
    pub fn sse_writes<S: AsRef<[u8]>>(writes: &[S]) -> Reply {
        Reply::steps(200, writes.iter().map(|w| Step::Write(w.as_ref().to_vec())).collect())
    }

    /// An SSE body with `status` made of explicit steps.
    pub fn steps(status: u16, steps: Vec<Step>) -> Reply {
        Reply { status, headers: vec![("content-type".into(), "text/event-stream".into())], body: Body::Steps(steps) }
    }

    /// Accept the request, then send nothing for `d` (no status line, no headers).
    pub fn silence(d: Duration) -> Reply {
        Reply { status: 0, headers: Vec::new(), body: Body::Silence(d) }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

/// A running scripted upstream. Dropping it stops accepting connections.
pub struct FakeUpstream {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    aborted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Starts a fake on 127.0.0.1 (random port) answering every request with `reply`.
    pub async fn replay(reply: Reply) -> FakeUpstream {
        FakeUpstream::start(move |_, _| reply.clone()).await
    }

    /// Starts a fake whose `handler(request, n)` builds the reply to the `n`-th (0-based)
    /// recorded request.
    pub async fn start(handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind the fake upstream: {e}"),
        };
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let aborted = Arc::new(AtomicUsize::new(0));
        let (task_log, task_aborted) = (log.clone(), aborted.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let log = task_log.clone();
                let handler = handler.clone();
                let aborted = task_aborted.clone();
                tokio::spawn(async move {
                    if serve_one(sock, log, handler).await.is_err() {
                        aborted.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        FakeUpstream { addr, log, aborted, task }
    }

    /// The base URL to configure, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every recorded request (health probes excluded).
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Number of connections the peer closed while the fake was still writing its reply.
    pub fn aborted(&self) -> usize {
        self.aborted.load(Ordering::SeqCst)
    }

    /// Number of recorded requests.
    pub fn calls(&self) -> usize {
        self.log.lock().map(|l| l.len()).unwrap_or(0)
    }
}

async fn serve_one(mut sock: TcpStream, log: Arc<Mutex<Vec<Recorded>>>, handler: Arc<Handler>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let Some(req) = read_request(&mut sock).await? else { return Ok(()) };
    if req.method == "GET" && req.path.ends_with("/models") {
        let body = br#"{"object":"list","data":[]}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await?;
        sock.write_all(body).await?;
        return sock.shutdown().await;
    }
    let n = {
        let mut l = log.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        l.push(req.clone());
        l.len() - 1
    };
    let reply = handler(&req, n);
    if let Body::Silence(d) = reply.body {
        tokio::time::sleep(d).await;
        return Ok(());
    }
    let reason =
        axum::http::StatusCode::from_u16(reply.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Status");
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("connection: close\r\n");
    match reply.body {
        Body::Full(body) => {
            head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(&body).await?;
        }
        Body::Steps(steps) => {
            head.push_str("transfer-encoding: chunked\r\n\r\n");
            sock.write_all(head.as_bytes()).await?;
            sock.flush().await?;
            for step in steps {
                match step {
                    Step::Write(bytes) => {
                        if bytes.is_empty() {
                            continue;
                        }
                        let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
                        chunk.extend_from_slice(&bytes);
                        chunk.extend_from_slice(b"\r\n");
                        sock.write_all(&chunk).await?;
                        sock.flush().await?;
                    }
                    Step::Sleep(d) => tokio::time::sleep(d).await,
                    Step::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return Ok(());
                    }
                    Step::Reset => {
                        let _ = sock.set_zero_linger();
                        return Ok(());
                    }
                }
            }
            sock.write_all(b"0\r\n\r\n").await?;
        }
        Body::Silence(_) => {}
    }
    sock.flush().await?;
    sock.shutdown().await
}

async fn read_request(sock: &mut TcpStream) -> std::io::Result<Option<Recorded>> {
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Ok(Some(Recorded { method, path, headers, body, at: Instant::now() }))
}
