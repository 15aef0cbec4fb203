#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the test server behaves.
#[derive(Clone, Default)]
pub(crate) struct Serve {
    /// Path → file bytes (e.g. `/org/model/resolve/main/m.gguf`).
    pub files: Vec<(String, Vec<u8>)>,
    /// Send this as `x-linked-etag` instead of the real hash.
    pub wrong_sha: bool,
    /// On the first request, close the connection after this many body bytes.
    pub cut_first_after: Option<usize>,
    /// Ignore `Range` and always answer 200 with the whole file.
    pub ignore_range: bool,
    /// Answer 302 to `/cdn{path}` first, putting x-linked-* on the redirect (as Hugging Face does).
    pub redirect: bool,
}

/// A hand-written HTTP/1.1 file server on 127.0.0.1. Returns its base URL and the request log
/// (request line plus any `Range` header, one entry per request).
pub(crate) async fn server(cfg: Serve) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            n += 1;
            let first = n == 1;
            let cfg = cfg.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(k) = sock.read(&mut tmp).await else { return };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..k]);
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let mut lines = head.lines();
                let reqline = lines.next().unwrap_or_default().to_owned();
                let path = reqline.split(' ').nth(1).unwrap_or_default().to_owned();
                let range =
                    lines.find_map(|l| l.to_ascii_lowercase().strip_prefix("range:").map(|v| v.trim().to_owned()));
                log.lock().unwrap().push(match &range {
                    Some(r) => format!("{reqline} Range: {r}"),
                    None => reqline.clone(),
                });
                let (served, via_cdn) = match path.strip_prefix("/cdn") {
                    Some(p) => (p.to_owned(), true),
                    None => (path.clone(), false),
                };
                let Some((_, data)) = cfg.files.iter().find(|(p, _)| *p == served) else {
                    let _ = sock
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found")
                        .await;
                    return;
                };
                let sha = if cfg.wrong_sha { "0".repeat(64) } else { hex(&Sha256::digest(data)) };
                let linked = format!("x-linked-size: {}\r\nx-linked-etag: \"{sha}\"\r\n", data.len());
                if cfg.redirect && !via_cdn {
                    let resp = format!(
                        "HTTP/1.1 302 Found\r\nlocation: /cdn{served}\r\n{linked}content-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    return;
                }
                let linked = if cfg.redirect { String::new() } else { linked };
                let start = range
                    .as_deref()
                    .filter(|_| !cfg.ignore_range)
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
                let (status, body, extra) = match start {
                    Some(s) if s < data.len() => (
                        "206 Partial Content",
                        &data[s..],
                        format!("content-range: bytes {s}-{}/{}\r\n", data.len() - 1, data.len()),
                    ),
                    Some(_) => {
                        ("416 Range Not Satisfiable", &data[..0], format!("content-range: bytes */{}\r\n", data.len()))
                    }
                    None => ("200 OK", &data[..], String::new()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra}{linked}connection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let body = match cfg.cut_first_after {
                    Some(cut) if first => &body[..cut.min(body.len())],
                    _ => body,
                };
                let _ = sock.write_all(body).await;
                let _ = sock.flush().await;
            });
        }
    });
    (base, log)
}

/// A deterministic pseudo-random file of `len` bytes (at least 4) that starts with the GGUF magic.
pub(crate) fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    data[..4].copy_from_slice(b"GGUF");
    data
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("triage-pull-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const REPO: &str = "org/tiny-GGUF";
const FILE: &str = "tiny-q4.gguf";
const PATH: &str = "/org/tiny-GGUF/resolve/main/tiny-q4.gguf";

fn request(base: &str, dir: &Path) -> PullRequest {
    PullRequest {
        base_url: base.to_owned(),
        repo: REPO.into(),
        file: FILE.into(),
        dir: dir.to_owned(),
        progress: false,
    }
}

fn client() -> reqwest::Client {
    http_client().unwrap()
}

#[tokio::test]
async fn full_download_has_the_same_bytes_and_hash() {
    let data = payload(300_000);
    for redirect in [false, true] {
        let (base, log) =
            server(Serve { files: vec![(PATH.into(), data.clone())], redirect, ..Serve::default() }).await;
        let dir = tempdir(&format!("full-{redirect}"));
        let path = pull(&client(), &request(&format!("{base}/"), &dir)).await.unwrap();
        assert_eq!(path, dir.join(FILE));
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), data.len());
        assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
        assert!(!dir.join("tiny-q4.gguf.part").exists());
        let n = log.lock().unwrap().len();
        assert_eq!(n, if redirect { 2 } else { 1 });
        // A second pull finds the file and fetches nothing.
        assert_eq!(pull(&client(), &request(&base, &dir)).await.unwrap(), path);
        assert_eq!(log.lock().unwrap().len(), n);
    }
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let data = payload(200_000);
    let cut = 70_001;
    let (base, log) =
        server(Serve { files: vec![(PATH.into(), data.clone())], cut_first_after: Some(cut), ..Serve::default() })
            .await;
    let dir = tempdir("resume");
    let err = pull(&client(), &request(&base, &dir)).await.unwrap_err();
    assert!(matches!(err, PullError::Network { .. } | PullError::Incomplete { .. }), "{err}");
    assert_eq!(std::fs::metadata(dir.join("tiny-q4.gguf.part")).unwrap().len(), cut as u64);
    assert!(!dir.join(FILE).exists());

    let path = pull(&client(), &request(&base, &dir)).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[1].ends_with(&format!("Range: bytes={cut}-")), "{log:?}");
}

#[tokio::test]
async fn a_server_that_ignores_range_starts_the_file_over() {
    let data = payload(50_000);
    let (base, log) =
        server(Serve { files: vec![(PATH.into(), data.clone())], ignore_range: true, ..Serve::default() }).await;
    let dir = tempdir("norange");
    std::fs::write(dir.join("tiny-q4.gguf.part"), &data[..1234]).unwrap();
    let path = pull(&client(), &request(&base, &dir)).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(log.lock().unwrap()[0].ends_with("Range: bytes=1234-"));
}

#[tokio::test]
async fn a_part_already_complete_is_checked_and_kept_after_416() {
    let data = payload(5_000);
    let (base, log) = server(Serve { files: vec![(PATH.into(), data.clone())], ..Serve::default() }).await;
    let dir = tempdir("416");
    std::fs::write(dir.join("tiny-q4.gguf.part"), &data).unwrap();
    let path = pull(&client(), &request(&base, &dir)).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // One request (the range one, answered 416 with the size): nothing fetched again.
    assert_eq!(*log.lock().unwrap(), ["GET /org/tiny-GGUF/resolve/main/tiny-q4.gguf HTTP/1.1 Range: bytes=5000-"]);
    assert!(!dir.join("tiny-q4.gguf.part.lock").exists());

    // A complete .part whose bytes are not the file's: the checksum says so, and it is removed.
    let dir = tempdir("416-bad");
    let mut wrong = data.clone();
    wrong[4_999] ^= 0xff;
    std::fs::write(dir.join("tiny-q4.gguf.part"), &wrong).unwrap();
    let e = pull(&client(), &request(&base, &dir)).await.unwrap_err();
    assert!(matches!(e, PullError::Checksum { .. }), "{e}");
    assert!(!dir.join("tiny-q4.gguf.part").exists());

    // A .part longer than the file: started over.
    let dir = tempdir("416-long");
    let mut long = data.clone();
    long.extend_from_slice(b"extra");
    std::fs::write(dir.join("tiny-q4.gguf.part"), &long).unwrap();
    let path = pull(&client(), &request(&base, &dir)).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

#[tokio::test]
async fn a_second_pull_of_the_same_file_is_refused_while_the_first_runs() {
    let data = payload(5_000);
    let (base, log) = server(Serve { files: vec![(PATH.into(), data.clone())], ..Serve::default() }).await;
    let dir = tempdir("lock");
    // Another process holds the lock (an open file description of its own, as flock sees it).
    let held = std::fs::File::create(dir.join("tiny-q4.gguf.part.lock")).unwrap();
    held.lock().unwrap();
    let e = pull(&client(), &request(&base, &dir)).await.unwrap_err();
    assert!(matches!(e, PullError::Busy { .. }), "{e}");
    assert!(e.to_string().ends_with("another triage pull is downloading this file; wait for it to finish"), "{e}");
    assert!(log.lock().unwrap().is_empty(), "nothing was fetched");
    held.unlock().unwrap();
    let path = pull(&client(), &request(&base, &dir)).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

#[tokio::test]
async fn a_gguf_that_is_not_one_is_removed() {
    let page = b"<!doctype html><title>Sign in</title>".to_vec();
    let (base, _) = server(Serve { files: vec![(PATH.into(), page)], ..Serve::default() }).await;
    let dir = tempdir("not-gguf");
    let e = pull(&client(), &request(&base, &dir)).await.unwrap_err();
    assert!(matches!(e, PullError::NotGguf { .. }), "{e}");
    assert!(!dir.join("tiny-q4.gguf.part").exists() && !dir.join("tiny-q4.gguf").exists());
}

#[tokio::test]
async fn a_checksum_mismatch_is_an_error_and_leaves_no_file() {
    let (base, _) =
        server(Serve { files: vec![(PATH.into(), payload(10_000))], wrong_sha: true, ..Serve::default() }).await;
    let dir = tempdir("badsha");
    let err = pull(&client(), &request(&base, &dir)).await.unwrap_err();
    assert!(matches!(err, PullError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!dir.join(FILE).exists());
    assert!(!dir.join("tiny-q4.gguf.part").exists());
}

#[tokio::test]
async fn a_missing_file_is_a_clear_404() {
    let (base, _) = server(Serve::default()).await;
    let dir = tempdir("404");
    let err = pull(&client(), &request(&base, &dir)).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Status { status: StatusCode::NOT_FOUND, .. }), "{msg}");
    assert!(msg.contains("HTTP 404") && msg.contains("resolve/main/tiny-q4.gguf"), "{msg}");
    assert!(!dir.join("tiny-q4.gguf.part").exists());
}

#[tokio::test]
async fn an_unreachable_server_is_a_network_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempdir("down");
    let err = pull(&client(), &request(&format!("http://127.0.0.1:{port}"), &dir)).await.unwrap_err();
    assert!(matches!(err, PullError::Network { .. }), "{err}");
}

#[test]
fn names_that_escape_the_folder_are_refused() {
    for (repo, file) in [("org/m", "../x.gguf"), ("../m", "x.gguf"), ("org/m", "/etc/x"), ("", "x.gguf")] {
        assert!(check_name("repository", repo).and_then(|()| check_name("file", file)).is_err(), "{repo} {file}");
    }
    assert!(check_name("file", "sub/x.gguf").is_ok());
}

#[test]
fn the_progress_bar_template_is_valid() {
    assert!(indicatif::ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
}

#[test]
fn header_parsing() {
    let h = "a".repeat(64);
    assert_eq!(sha256_of(&format!("\"{h}\"")), Some(h.clone()));
    assert_eq!(sha256_of(&format!("W/\"{}\"", h.to_uppercase())), Some(h));
    assert_eq!(sha256_of("\"abc\""), None);
    assert_eq!(content_range("bytes 10-99/100"), Some((10, Some(100))));
    assert_eq!(content_range("bytes 10-99/*"), Some((10, None)));
    assert_eq!(default_dir("Qwen/Q-GGUF").file_name().unwrap(), "Qwen--Q-GGUF");
}

#[tokio::test]
async fn pulled_files_are_listed_but_not_partial_ones() {
    let (base, _) = server(Serve { files: vec![(PATH.into(), payload(4_000))], ..Serve::default() }).await;
    let root = tempdir("list");
    let path = pull(&client(), &request(&base, &root.join("org--tiny-GGUF"))).await.unwrap();
    std::fs::write(root.join("org--tiny-GGUF/other.gguf.part"), b"x").unwrap();
    std::fs::write(root.join("org--tiny-GGUF/README.md"), b"x").unwrap();
    let found = list_pulled(&root);
    assert_eq!(found, [Pulled { name: "org/tiny-GGUF/tiny-q4.gguf".into(), path, size: 4_000 }]);
    assert!(list_pulled(&root.join("none")).is_empty());
}
