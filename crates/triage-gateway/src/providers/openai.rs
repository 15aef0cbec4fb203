//! Provider `kind = "openai"`: any OpenAI-compatible Chat Completions API.
//!
//! Requests go to `{base_url}/chat/completions` with `Authorization: Bearer <key>`; the
//! reachability probe is `GET {base_url}/models`.

use http::header::AUTHORIZATION;
use http::HeaderValue;
use triage_core::catalog::Provider;

use super::{ApiKey, HttpProvider};

/// Builds the HTTP client of an OpenAI-compatible provider.
///
/// Errors: the HTTP client cannot be built.
pub fn provider(p: &Provider, key: Option<ApiKey>) -> Result<HttpProvider, reqwest::Error> {
    let auth = key.as_ref().and_then(|k| {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose())).ok()?;
        v.set_sensitive(true);
        Some(v)
    });
    let headers = auth.map(|a| vec![(AUTHORIZATION, a)]).unwrap_or_default();
    HttpProvider::new(p, key, headers, "chat/completions")
}
