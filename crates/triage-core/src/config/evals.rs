//! `[evals]`: shadow evaluation of production traffic, checked like the rest of the file.
//!
//! ```toml
//! [evals]
//! sample_rate = 0.05          # share of eligible requests shadowed, 0–1 (0 = off, the default)
//! reference = "gpt-5"         # the model answers are compared against (required when on)
//! judge = "claude-sonnet-4-5" # the judge (default: the reference)
//! max_usd_per_day = 2.0       # the evaluation's own daily budget (default 1)
//! store_text = false          # keep prompts and answers with the results (default false)
//! [evals.teams]
//! legal = false               # this team's requests are never evaluated
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use super::Ctx;
use crate::catalog::{EvalSettings, Model, ModelId, TierId};
use crate::config::ConfigError;
use crate::cost::NanoUsd;

/// `[evals]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvals {
    sample_rate: Option<Spanned<f64>>,
    reference: Option<Spanned<String>>,
    judge: Option<Spanned<String>>,
    max_usd_per_day: Option<Spanned<f64>>,
    store_text: Option<bool>,
    concurrency: Option<Spanned<u32>>,
    queue: Option<Spanned<u32>>,
    judge_max_tokens: Option<Spanned<u64>>,
    #[serde(default)]
    keys: BTreeMap<String, bool>,
    #[serde(default)]
    users: BTreeMap<String, bool>,
    #[serde(default)]
    teams: BTreeMap<String, bool>,
    #[serde(default)]
    roles: BTreeMap<String, Spanned<bool>>,
}

fn model(ctx: &Ctx<'_>, models: &[Model], v: &Spanned<String>, field: &str) -> Result<ModelId, ConfigError> {
    models
        .iter()
        .position(|m| &m.id == v.get_ref())
        .ok_or_else(|| ctx.err(&v.span(), field, format!("unknown model \"{}\"", v.get_ref())))
}

fn opted_out(map: BTreeMap<String, bool>) -> BTreeSet<String> {
    map.into_iter().filter(|(_, on)| !on).map(|(k, _)| k).collect()
}

/// Checks `[evals]` against the models and roles already validated; `has_database` says whether
/// results can be stored.
///
/// Errors: [`ConfigError::Invalid`] naming `evals.<field>`.
pub(super) fn validate(
    ctx: &Ctx<'_>,
    raw: RawEvals,
    models: &[Model],
    roles: &BTreeMap<String, TierId>,
    has_database: bool,
) -> Result<EvalSettings, ConfigError> {
    let mut s = EvalSettings::default();
    if let Some(r) = &raw.sample_rate {
        let v = *r.get_ref();
        if !v.is_finite() || !(0.0..=1.0).contains(&v) {
            return Err(ctx.err(&r.span(), "evals.sample_rate", "must be a fraction between 0 and 1"));
        }
        s.sample_rate = v;
    }
    s.reference = raw.reference.as_ref().map(|r| model(ctx, models, r, "evals.reference")).transpose()?;
    s.judge = match &raw.judge {
        Some(j) => Some(model(ctx, models, j, "evals.judge")?),
        None => s.reference,
    };
    if let Some(u) = &raw.max_usd_per_day {
        let v = *u.get_ref();
        if !v.is_finite() || v < 0.0 {
            return Err(ctx.err(&u.span(), "evals.max_usd_per_day", "must be a non-negative amount of USD"));
        }
        s.max_usd_per_day = NanoUsd((v * 1e9).round() as u64);
    }
    s.store_text = raw.store_text.unwrap_or(false);
    for (v, field, slot) in
        [(&raw.concurrency, "evals.concurrency", &mut s.concurrency), (&raw.queue, "evals.queue", &mut s.queue)]
    {
        if let Some(v) = v {
            if *v.get_ref() == 0 {
                return Err(ctx.err(&v.span(), field, "must be at least 1"));
            }
            *slot = *v.get_ref() as usize;
        }
    }
    if let Some(t) = &raw.judge_max_tokens {
        if *t.get_ref() < 16 {
            return Err(ctx.err(&t.span(), "evals.judge_max_tokens", "must be at least 16 tokens (the verdict)"));
        }
        s.judge_max_tokens = *t.get_ref();
    }
    for (role, on) in &raw.roles {
        if !roles.contains_key(role) {
            let known: Vec<&str> = roles.keys().map(String::as_str).collect();
            return Err(ctx.err(
                &on.span(),
                format!("evals.roles.{role}"),
                format!("unknown role (roles: {})", known.join(", ")),
            ));
        }
    }
    s.opt_out_roles = raw.roles.into_iter().filter(|(_, on)| !on.get_ref()).map(|(k, _)| k).collect();
    s.opt_out_keys = opted_out(raw.keys);
    s.opt_out_users = opted_out(raw.users);
    s.opt_out_teams = opted_out(raw.teams);
    if s.sample_rate > 0.0 {
        let span = raw.sample_rate.as_ref().map(Spanned::span).unwrap_or(0..0);
        if s.reference.is_none() {
            return Err(ctx.err(&span, "evals.reference", "is required when evals.sample_rate > 0"));
        }
        if !has_database {
            return Err(ctx.err(
                &span,
                "evals.sample_rate",
                "shadow evaluation stores its results: set spend.database (sqlite://PATH or postgres://...)",
            ));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str = r#"
tiers = ["local", "frontier"]

[roles]
search = "local"

[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
id = "small"
provider = "up"
tier = "local"
price = { input = 0.1, output = 0.2 }
context_window = 1000

[[models]]
id = "big"
provider = "up"
tier = "frontier"
price = { input = 1.0, output = 2.0 }
context_window = 1000
"#;

    fn err_of(extra: &str) -> String {
        parse(&format!("{BASE}{extra}"), "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn off_by_default() {
        let c = parse(BASE, "t.toml").unwrap();
        assert!(!c.evals().enabled());
        assert_eq!(c.evals().sample_rate, 0.0);
        assert!(!c.evals().store_text);
    }

    #[test]
    fn a_full_section_parses() {
        let c = parse(
            &format!(
                "{BASE}\n[evals]\nsample_rate = 0.05\nreference = \"big\"\nmax_usd_per_day = 2.5\nstore_text = true\nconcurrency = 3\nqueue = 10\n[evals.teams]\nlegal = false\nops = true\n[evals.roles]\nsearch = false\n[evals.keys]\nkey_abc = false\n"
            ),
            "t.toml",
        )
        .unwrap();
        let e = c.evals();
        assert!(e.enabled());
        assert_eq!(e.reference, Some(1));
        assert_eq!(e.judge, Some(1), "the judge defaults to the reference");
        assert_eq!(e.max_usd_per_day, crate::cost::NanoUsd(2_500_000_000));
        assert!(e.store_text);
        assert_eq!((e.concurrency, e.queue), (3, 10));
        assert!(e.opted_out(None, None, Some("legal"), None));
        assert!(!e.opted_out(None, None, Some("ops"), None));
        assert!(e.opted_out(None, None, None, Some("search")));
        assert!(e.opted_out(Some("key_abc"), Some("u"), Some("ops"), None));
        assert!(!e.opted_out(Some("key_def"), Some("u"), Some("ops"), Some("other")));
    }

    #[test]
    fn errors_name_the_field() {
        let e = err_of("\n[evals]\nsample_rate = 1.5\nreference = \"big\"\n");
        assert_eq!(e, "t.toml:26: evals.sample_rate: must be a fraction between 0 and 1");
        let e = err_of("\n[evals]\nsample_rate = 0.1\nreference = \"huge\"\n");
        assert_eq!(e, "t.toml:27: evals.reference: unknown model \"huge\"");
        let e = err_of("\n[evals]\nsample_rate = 0.1\n");
        assert_eq!(e, "t.toml:26: evals.reference: is required when evals.sample_rate > 0");
        let e = err_of("\n[evals]\nreference = \"big\"\njudge = \"nope\"\n");
        assert_eq!(e, "t.toml:27: evals.judge: unknown model \"nope\"");
        let e = err_of("\n[evals]\nmax_usd_per_day = -1.0\n");
        assert_eq!(e, "t.toml:26: evals.max_usd_per_day: must be a non-negative amount of USD");
        let e = err_of("\n[evals]\nqueue = 0\n");
        assert_eq!(e, "t.toml:26: evals.queue: must be at least 1");
        let e = err_of("\n[evals.roles]\nserch = false\n");
        assert_eq!(e, "t.toml:26: evals.roles.serch: unknown role (roles: search)");
        let e = err_of("\n[evals]\nsampel_rate = 0.1\n");
        assert!(e.starts_with("t.toml:26: evals.sampel_rate: unknown field"), "{e}");
        let e = err_of("\n[evals]\nstore_text = \"yes\"\n");
        assert!(e.starts_with("t.toml:26: evals.store_text:"), "{e}");
        let e = err_of("\n[spend]\ndatabase = \"\"\n[evals]\nsample_rate = 0.1\nreference = \"big\"\n");
        assert!(e.starts_with("t.toml:28: evals.sample_rate: shadow evaluation stores its results"), "{e}");
    }
}
