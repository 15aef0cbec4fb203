//! Where Triage keeps files of its own, after the XDG Base Directory specification.

use std::path::PathBuf;

/// `$VAR` (e.g. `XDG_CACHE_HOME`), else `~/{fallback}` (e.g. `.cache`), else `./{fallback}`
/// when there is no home either.
pub fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .unwrap_or_else(|| PathBuf::from(fallback))
}
