//! Provider `kind = "anthropic"`: Anthropic's Messages API.
//!
//! Requests go to `{base_url}/messages` with `x-api-key` and `anthropic-version: 2023-06-01`
//! (<https://docs.anthropic.com/en/api/versioning>); the probe is `GET {base_url}/models`.

use http::{HeaderName, HeaderValue};
use triage_core::catalog::Provider;

use super::{ApiKey, HttpProvider};

/// The API version header value sent on every request.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Builds the HTTP client of an Anthropic provider.
///
/// Errors: the HTTP client cannot be built.
pub fn provider(p: &Provider, key: Option<ApiKey>) -> Result<HttpProvider, reqwest::Error> {
    let mut headers = vec![(HeaderName::from_static("anthropic-version"), HeaderValue::from_static(ANTHROPIC_VERSION))];
    if let Some(mut v) = key.as_ref().and_then(|k| HeaderValue::from_str(k.expose()).ok()) {
        v.set_sensitive(true);
        headers.push((HeaderName::from_static("x-api-key"), v));
    }
    HttpProvider::new(p, key, headers, "messages")
}
