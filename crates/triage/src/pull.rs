//! `triage pull`: download a model file (GGUF) from a Hugging Face-style file server.
//!
//! The file is fetched from `{base}/{repo}/resolve/main/{file}` into `{file}.part` and renamed
//! once it is complete and checked. A `.part` left by an interrupted run is resumed with
//! `Range: bytes=N-` (a server that answers 200 instead of 206 starts the file over). The size is
//! checked against `x-linked-size` (what Hugging Face sends for large files), else the total of
//! `Content-Range`, else `Content-Length`; the SHA-256 against `x-linked-etag` (or `etag`) when
//! that holds 64 hex digits. Redirects are followed by hand so the headers of the first answer
//! (Hugging Face puts `x-linked-*` on its redirect to the CDN) are kept.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LOCATION, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// Hugging Face's file server, the default `--base-url`.
pub const DEFAULT_BASE_URL: &str = "https://huggingface.co";

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The repository or file name is empty, absolute or climbs out of the folder (`..`).
    #[error("invalid {what} {value:?}: {why}")]
    BadName {
        /// "repository" or "file".
        what: &'static str,
        /// The name given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The server answered with an unexpected HTTP status (404: no such repository or file).
    #[error("{url}: HTTP {status}{hint}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The status received.
        status: StatusCode,
        /// A few words on what the status usually means, or "".
        hint: &'static str,
    },
    /// The request could not be sent or the answer not read (the `.part` file is kept; run the
    /// command again to resume).
    #[error("{url}: {source}")]
    Network {
        /// The URL asked for.
        url: String,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The server's answer does not fit the request (bad redirect, wrong `Content-Range`).
    #[error("{url}: {why}")]
    Protocol {
        /// The URL asked for.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// The answer ended before the announced size (the `.part` is kept; run again to resume).
    #[error("{url}: the download stopped at {got} of {expected} bytes; run the command again to resume")]
    Incomplete {
        /// The URL asked for.
        url: String,
        /// Bytes received in all.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// More bytes arrived than the server announced (the `.part` is removed).
    #[error("{path}: size mismatch: received {got} bytes, the server announced {expected}; the file was removed")]
    Size {
        /// The partial file, now removed.
        path: PathBuf,
        /// Bytes received in all.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The SHA-256 of the file received differs from the server's (the file is removed).
    #[error("{path}: checksum mismatch: sha256 {got}, the server announced {expected}; the file was removed")]
    Checksum {
        /// The partial file, now removed.
        path: PathBuf,
        /// Hex SHA-256 of the bytes received.
        got: String,
        /// Hex SHA-256 announced.
        expected: String,
    },
    /// Another `triage pull` is downloading the same file into the same folder.
    #[error("{path}: another triage pull is downloading this file; wait for it to finish")]
    Busy {
        /// The partial file being written.
        path: PathBuf,
    },
    /// The file received is named `.gguf` but does not start with the GGUF magic bytes (an error
    /// page, or a Git LFS pointer, served in its place); it is removed.
    #[error("{path}: not a GGUF file (it does not start with the GGUF magic bytes); the file was removed")]
    NotGguf {
        /// The partial file, now removed.
        path: PathBuf,
    },
    /// A local file could not be read, written or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What to fetch and where to put it.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// File server root, e.g. [`DEFAULT_BASE_URL`] (a trailing `/` is ignored).
    pub base_url: String,
    /// Repository, e.g. `Qwen/Qwen2.5-1.5B-Instruct-GGUF`.
    pub repo: String,
    /// File inside the repository, e.g. `qwen2.5-1.5b-instruct-q4_k_m.gguf`.
    pub file: String,
    /// Folder the file is written to (see [`default_dir`]).
    pub dir: PathBuf,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// `$XDG_CACHE_HOME` (else `~/.cache`)`/triage/models`: where [`default_dir`] puts repositories.
pub fn models_root() -> PathBuf {
    crate::paths::xdg("XDG_CACHE_HOME", ".cache").join("triage").join("models")
}

/// [`models_root`]`/{repo with / replaced by --}`.
pub fn default_dir(repo: &str) -> PathBuf {
    models_root().join(repo.replace('/', "--"))
}

/// A model file downloaded by [`pull`] into [`models_root`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `{repo}/{file}`, e.g. `Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf`.
    pub name: String,
    /// The file, usable as a local provider's `model_path`.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// The complete `.gguf` files under `root` (laid out as [`default_dir`] does; `.part` files are
/// left out), sorted by name. A missing folder gives an empty list.
pub fn list_pulled(root: &Path) -> Vec<Pulled> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 8 => walk(&p, depth + 1, out),
                Ok(t) if t.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")) => out.push(p),
                _ => {}
            }
        }
    }
    let mut files = Vec::new();
    walk(root, 0, &mut files);
    let mut found: Vec<Pulled> = files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(root).ok()?;
            let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
            let repo = parts.next()?.replacen("--", "/", 1);
            let file: Vec<String> = parts.collect();
            if file.is_empty() {
                return None;
            }
            let size = std::fs::metadata(&path).ok()?.len();
            Some(Pulled { name: format!("{repo}/{}", file.join("/")), path, size })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn check_name(what: &'static str, value: &str) -> Result<(), PullError> {
    let bad = |why| Err(PullError::BadName { what, value: value.to_owned(), why });
    if value.trim().is_empty() {
        return bad("empty");
    }
    let p = Path::new(value);
    if p.is_absolute() || value.starts_with('/') {
        return bad("must be relative");
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return bad("must not contain `..` or `.` parts");
    }
    Ok(())
}

/// A 64-hex SHA-256 from an `etag`-style header value (quotes and a `W/` prefix stripped).
fn sha256_of(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches("W/").trim_matches('"').to_ascii_lowercase();
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
}

fn header(h: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `bytes */TOTAL` (the `Content-Range` of a 416 answer) → TOTAL.
fn unsatisfied_total(v: &str) -> Option<u64> {
    v.trim().strip_prefix("bytes */")?.trim().parse().ok()
}

/// `bytes START-END/TOTAL` → (START, TOTAL if known).
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// What the redirect chain and the final answer say about the file.
#[derive(Default)]
struct Announced {
    size: Option<u64>,
    sha256: Option<String>,
}

impl Announced {
    fn note_linked(&mut self, h: &HeaderMap) {
        if self.size.is_none() {
            self.size = header(h, "x-linked-size").and_then(|v| v.trim().parse().ok());
        }
        if self.sha256.is_none() {
            self.sha256 = header(h, "x-linked-etag").and_then(sha256_of);
        }
    }
}

/// Sends GET (with `Range` from `offset` when non-zero), following redirects by hand.
async fn get(
    client: &reqwest::Client,
    url: &str,
    offset: u64,
    announced: &mut Announced,
) -> Result<reqwest::Response, PullError> {
    let mut url = reqwest::Url::parse(url)
        .map_err(|e| PullError::Protocol { url: url.to_owned(), why: format!("not a URL: {e}") })?;
    for _ in 0..=MAX_REDIRECTS {
        let mut req = client.get(url.clone());
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().await.map_err(|source| PullError::Network { url: url.to_string(), source })?;
        announced.note_linked(resp.headers());
        if !resp.status().is_redirection() {
            return Ok(resp);
        }
        let Some(loc) = header(resp.headers(), LOCATION) else {
            return Err(PullError::Protocol { url: url.to_string(), why: "redirect without a Location".into() });
        };
        url = url
            .join(loc)
            .map_err(|e| PullError::Protocol { url: url.to_string(), why: format!("bad redirect {loc:?}: {e}") })?;
    }
    Err(PullError::Protocol { url: url.to_string(), why: format!("more than {MAX_REDIRECTS} redirects") })
}

/// The HTTP client [`pull`] needs: redirects are not followed automatically ([`pull`] follows
/// them itself, to keep the first answer's headers).
///
/// # Errors
///
/// [`PullError::Protocol`] when the TLS backend cannot be set up.
pub fn http_client() -> Result<reqwest::Client, PullError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("triage/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| PullError::Protocol { url: String::new(), why: format!("cannot build the HTTP client: {e}") })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| PullError::Io { path: path.to_owned(), source }
}

/// The SHA-256 state after the first `len` bytes of `path`.
fn hash_prefix(path: &Path, len: u64) -> Result<Sha256, PullError> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).map_err(io(path))?.take(len);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(h);
        }
        h.update(&buf[..n]);
    }
}

/// The progress bar's layout.
const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";

fn progress_bar(on: bool, file: &str, total: Option<u64>, pos: u64) -> indicatif::ProgressBar {
    if !on {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(BAR_TEMPLATE) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(file.to_owned());
    bar.set_position(pos);
    bar
}

/// Downloads `req.file` of `req.repo` into `req.dir` and returns the final path. `client` should
/// come from [`http_client`] (one that follows redirects loses Hugging Face's `x-linked-*` headers).
///
/// An existing final file is returned as is (nothing is fetched). A `{file}.part` from an earlier
/// run is resumed, or, when it already holds the whole file (the server answers 416 with its
/// size), checked and kept without fetching it again. `{file}.part.lock` is held (an advisory
/// lock) while downloading. Sizes are in bytes.
///
/// # Errors
///
/// [`PullError::BadName`] for names that are empty, absolute or contain `..`;
/// [`PullError::Status`] for an HTTP error (e.g. 404); [`PullError::Network`] when the connection
/// fails or the answer ends early ([`PullError::Incomplete`]; the `.part` is kept for the next
/// run); [`PullError::Size`] or [`PullError::Checksum`]
/// when the bytes received do not match what the server announced, [`PullError::NotGguf`] when a
/// `.gguf` is not one (the `.part` is removed); [`PullError::Busy`] when another process is
/// pulling the same file (nothing is touched); [`PullError::Io`] for local file errors;
/// [`PullError::Protocol`] for a malformed answer.
pub async fn pull(client: &reqwest::Client, req: &PullRequest) -> Result<PathBuf, PullError> {
    check_name("repository", &req.repo)?;
    check_name("file", &req.file)?;
    let dest = req.dir.join(&req.file);
    if dest.is_file() {
        return Ok(dest);
    }
    let with_suffix = |suffix: &str| {
        let mut name = dest.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    let part = with_suffix(".part");
    if let Some(parent) = part.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    // One download of a file at a time: a second `triage pull` of it fails at once rather than
    // interleaving its bytes into the same `.part`. The lock goes with the process.
    let lock_path = with_suffix(".part.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(PullError::Busy { path: part }),
        Err(std::fs::TryLockError::Error(e)) => return Err(PullError::Io { path: lock_path, source: e }),
    }
    // The other process may have finished while this one waited for the lock.
    if dest.is_file() {
        let _ = std::fs::remove_file(&lock_path);
        return Ok(dest);
    }
    let result = download(client, req, &dest, &part).await;
    let _ = std::fs::remove_file(&lock_path);
    drop(lock);
    result
}

/// The download itself, under the lock: fetch (or resume) into `part`, check, rename to `dest`.
async fn download(client: &reqwest::Client, req: &PullRequest, dest: &Path, part: &Path) -> Result<PathBuf, PullError> {
    let url = format!("{}/{}/resolve/main/{}", req.base_url.trim_end_matches('/'), req.repo, req.file);
    let mut offset = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    // Hash what is there before asking, so the answer is not left waiting on a large `.part`.
    let prefix = if offset > 0 { Some(hash_prefix(part, offset)?) } else { None };
    let mut announced = Announced::default();
    let mut resp = get(client, &url, offset, &mut announced).await?;
    if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
        let total = header(resp.headers(), CONTENT_RANGE).and_then(unsatisfied_total).or(announced.size);
        if let (Some(total), Some(hasher)) = (total, &prefix) {
            if total == offset {
                // An earlier run received every byte but stopped before the rename: check it
                // and finish, without fetching it again.
                announced.size = Some(total);
                return finish(part, dest, offset, hasher.clone(), &announced, &url);
            }
        }
        // The .part is longer than the file: start over.
        offset = 0;
        announced = Announced::default();
        resp = get(client, &url, 0, &mut announced).await?;
    }
    let status = resp.status();
    let resumed = match status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let cr = header(resp.headers(), CONTENT_RANGE).and_then(content_range);
            match cr {
                Some((start, total)) if start == offset => {
                    if announced.size.is_none() {
                        announced.size = total;
                    }
                    true
                }
                _ => {
                    return Err(PullError::Protocol {
                        url,
                        why: format!("asked for bytes {offset}- but got Content-Range {cr:?}"),
                    })
                }
            }
        }
        StatusCode::OK => false,
        s => {
            let hint = match s {
                StatusCode::NOT_FOUND => " (no such repository or file; check both names)",
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => " (the repository may be gated or private)",
                _ => "",
            };
            return Err(PullError::Status { url, status: s, hint });
        }
    };
    if !resumed {
        offset = 0;
        if announced.size.is_none() {
            announced.size = header(resp.headers(), CONTENT_LENGTH).and_then(|v| v.trim().parse().ok());
        }
    }
    if announced.sha256.is_none() {
        announced.sha256 = header(resp.headers(), ETAG).and_then(sha256_of);
    }

    let mut hasher = match prefix {
        Some(h) if resumed => h,
        _ => Sha256::new(),
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(io(part))?;
    if resumed {
        // Drop anything past `offset` (there is none unless the file changed under us).
        out.set_len(offset).map_err(io(part))?;
    }
    let bar = progress_bar(req.progress, &req.file, announced.size, offset);
    let mut received = offset;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(source) => {
                let _ = out.flush();
                bar.abandon();
                return Err(PullError::Network { url, source });
            }
        };
        out.write_all(&chunk).map_err(io(part))?;
        hasher.update(&chunk);
        received += chunk.len() as u64;
        bar.set_position(received);
    }
    out.flush().map_err(io(part))?;
    out.sync_all().map_err(io(part))?;
    drop(out);
    bar.finish_and_clear();
    finish(part, dest, received, hasher, &announced, &url)
}

/// Checks the `received` bytes of `part` (hashed into `hasher`) against what the server
/// announced, and that a `.gguf` starts with the GGUF magic; renames it to `dest`.
fn finish(
    part: &Path,
    dest: &Path,
    received: u64,
    hasher: Sha256,
    announced: &Announced,
    url: &str,
) -> Result<PathBuf, PullError> {
    let fail = |e: PullError| {
        let _ = std::fs::remove_file(part);
        Err(e)
    };
    if let Some(expected) = announced.size {
        if received < expected {
            return Err(PullError::Incomplete { url: url.to_owned(), got: received, expected });
        }
        if received > expected {
            return fail(PullError::Size { path: part.to_owned(), got: received, expected });
        }
    }
    if let Some(expected) = &announced.sha256 {
        let got = hex(&hasher.finalize());
        if got != *expected {
            return fail(PullError::Checksum { path: part.to_owned(), got, expected: expected.clone() });
        }
    }
    if dest.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")) {
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(part).and_then(|mut f| f.read_exact(&mut magic));
        if read.is_err() || &magic != b"GGUF" {
            return fail(PullError::NotGguf { path: part.to_owned() });
        }
    }
    std::fs::rename(part, dest).map_err(io(dest))?;
    Ok(dest.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
