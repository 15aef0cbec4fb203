//! Routing: from the request's `model` field and its hard requirements to one catalog model.
//!
//! Order of decisions, as in DESIGN.md: resolve the name (`auto`, a tier, `role:<name>`, an alias,
//! a model id); drop every model that fails a hard requirement (tools, vision, `json_schema`,
//! context window) or whose provider is unavailable; then pick by cost. Until the difficulty
//! scorer lands, `auto` picks the cheapest tier that has a capable model, and inside a tier the
//! model with the lowest blended (input + output) price.

use crate::catalog::{Catalog, DeploymentId, ModelId, TierId};
use crate::openai::ChatRequest;
use crate::tokens::PromptSize;

/// What the `model` field asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `auto`: the router decides.
    Auto,
    /// A tier by name.
    Tier(TierId),
    /// `role:<name>`, pinned to a tier.
    Role(String, TierId),
    /// A catalog model, named directly or through an alias (`via_alias`).
    Model {
        /// The model.
        model: ModelId,
        /// The alias the client used, if any.
        via_alias: Option<String>,
    },
}

/// Why no model can serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The `model` field names nothing in the catalog.
    #[error("model \"{name}\" does not exist; valid names: {}", valid.join(", "))]
    ModelNotFound {
        /// What the client sent.
        name: String,
        /// Every valid name.
        valid: Vec<String>,
    },
    /// Every candidate fails a hard requirement of the request.
    #[error("no model can serve this request: {requirement}")]
    Unsatisfiable {
        /// The requirement that failed, in words (e.g. "the request has tools, and model x has no `tools` capability").
        requirement: String,
    },
    /// Capable models exist, but none of their providers is available now.
    #[error("no provider is available for {what}: {detail}")]
    Unavailable {
        /// The model or tier asked for.
        what: String,
        /// Which providers are down or lack keys.
        detail: String,
    },
}

/// The capabilities a request needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The request defines tools.
    pub tools: bool,
    /// Some message has an image part.
    pub vision: bool,
    /// `response_format.type == "json_schema"`.
    pub json_schema: bool,
}

impl Needs {
    /// True when `c` has every capability needed.
    pub fn met_by(&self, c: crate::catalog::Capabilities) -> bool {
        (!self.tools || c.tools) && (!self.vision || c.vision) && (!self.json_schema || c.json_schema)
    }
}

/// Hard requirements read off a request.
#[derive(Debug)]
pub struct Requirements<'a> {
    /// The request defines tools.
    pub tools: bool,
    /// Some message has an image part.
    pub vision: bool,
    /// `response_format.type == "json_schema"`.
    pub json_schema: bool,
    /// The client's output limit (0 when unset).
    pub output_tokens: u64,
    /// Prompt size, tokenised lazily.
    pub prompt: PromptSize<'a>,
}

impl<'a> Requirements<'a> {
    /// Reads the requirements of `req`.
    pub fn of(req: &'a ChatRequest) -> Self {
        Requirements {
            tools: req.tools.as_ref().is_some_and(|t| !t.is_empty()),
            vision: req.messages.iter().any(|m| m.content().is_some_and(|c| c.has_image())),
            json_schema: req.response_format.as_ref().is_some_and(|f| f.kind == "json_schema"),
            output_tokens: req.output_limit().unwrap_or(0),
            prompt: PromptSize::new(req),
        }
    }

    /// The capability part of the requirements.
    pub fn needs(&self) -> Needs {
        Needs { tools: self.tools, vision: self.vision, json_schema: self.json_schema }
    }

    /// `None` if `model` meets every requirement, else the first one it fails, in words.
    pub fn unmet(&self, catalog: &Catalog, model: ModelId) -> Option<String> {
        let m = &catalog.models()[model];
        let c = m.capabilities;
        if self.tools && !c.tools {
            return Some(format!("the request has tools, and model {} has no `tools` capability", m.id));
        }
        if self.vision && !c.vision {
            return Some(format!("the request has image parts, and model {} has no `vision` capability", m.id));
        }
        if self.json_schema && !c.json_schema {
            return Some(format!(
                "the request asks for response_format json_schema, and model {} has no `json_schema` capability",
                m.id
            ));
        }
        if !self.prompt.fits(self.output_tokens, m.context_window) {
            return Some(format!(
                "about {} prompt tokens plus max_tokens {} exceed the context window of model {} ({} tokens)",
                self.prompt.estimate(),
                self.output_tokens,
                m.id,
                m.context_window
            ));
        }
        None
    }
}

/// The outcome of routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    /// The chosen model.
    pub model: ModelId,
    /// Its tier.
    pub tier: TierId,
    /// Why, in one line of printable ASCII (it goes into the `x-triage-route-reason` header).
    pub reason: String,
}

/// Why a deployment is in a request's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The routed model's primary deployment.
    Primary,
    /// Another deployment of the routed model.
    Deployment,
    /// A model from the routed model's `fallback` list.
    Fallback,
    /// Another capable model of the same tier (for `auto`, tier and role requests), or of a
    /// dearer tier (for `auto` only).
    TierPeer,
    /// From `context_window_fallback`, after an upstream said the prompt is too long.
    ContextWindow,
    /// From `content_policy_fallback`, after an upstream refused on content policy.
    ContentPolicy,
}

impl Via {
    /// Short name for headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Primary => "primary",
            Via::Deployment => "deployment",
            Via::Fallback => "fallback",
            Via::TierPeer => "tier_peer",
            Via::ContextWindow => "context_window_fallback",
            Via::ContentPolicy => "content_policy_fallback",
        }
    }
}

/// One entry of a request's ordered plan of deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The deployment to call.
    pub deployment: DeploymentId,
    /// Why it is in the plan.
    pub via: Via,
}

/// The ordered deployments a request may be served by: the routed model's deployments, then its
/// `fallback` models, then, when the client let Triage choose (`auto`, a tier, a role), the other
/// capable models of that tier by price and, for `auto` only, those of dearer tiers. Every
/// model in the plan meets the request's hard requirements; availability (keys, breakers,
/// cooldowns) is checked at call time, because it changes between attempts.
pub fn plan(catalog: &Catalog, target: &Target, decision: &RouteDecision, req: &Requirements<'_>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let push_model = |out: &mut Vec<Candidate>, m: ModelId, first: Via, rest: Via| {
        for (i, &d) in catalog.models()[m].deployments.iter().enumerate() {
            if !out.iter().any(|c| c.deployment == d) {
                out.push(Candidate { deployment: d, via: if i == 0 { first } else { rest } });
            }
        }
    };
    push_model(&mut out, decision.model, Via::Primary, Via::Deployment);
    for &f in &catalog.models()[decision.model].fallback {
        if req.unmet(catalog, f).is_none() {
            push_model(&mut out, f, Via::Fallback, Via::Fallback);
        }
    }
    let peer_tiers: Vec<TierId> = match target {
        Target::Model { .. } => Vec::new(),
        Target::Tier(t) | Target::Role(_, t) => vec![*t],
        Target::Auto => (decision.tier..catalog.tiers().len()).collect(),
    };
    for tier in peer_tiers {
        let mut peers: Vec<ModelId> = (0..catalog.models().len())
            .filter(|&m| m != decision.model && catalog.models()[m].tier == tier && req.unmet(catalog, m).is_none())
            .collect();
        peers.sort_by_key(|&m| catalog.models()[m].price.blended());
        for m in peers {
            push_model(&mut out, m, Via::TierPeer, Via::TierPeer);
        }
    }
    out
}

/// Which typed fallback list to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypedFallback {
    /// `context_window_fallback`.
    ContextWindow,
    /// `content_policy_fallback`.
    ContentPolicy,
}

/// The deployments of `model`'s typed fallback list, in order. Context-window fallbacks are not
/// filtered by Triage's own context estimate (the upstream's count was the one that failed).
pub fn typed_plan(catalog: &Catalog, model: ModelId, kind: TypedFallback, needs: Needs) -> Vec<Candidate> {
    let m = &catalog.models()[model];
    let (list, via) = match kind {
        TypedFallback::ContextWindow => (&m.context_window_fallback, Via::ContextWindow),
        TypedFallback::ContentPolicy => (&m.content_policy_fallback, Via::ContentPolicy),
    };
    list.iter()
        .filter(|&&f| needs.met_by(catalog.models()[f].capabilities))
        .flat_map(|&f| catalog.models()[f].deployments.iter().map(move |&d| Candidate { deployment: d, via }))
        .collect()
}

/// Resolves the `model` field.
///
/// Errors: [`RouteError::ModelNotFound`] with the list of valid names.
pub fn resolve(catalog: &Catalog, name: &str) -> Result<Target, RouteError> {
    if name == "auto" {
        return Ok(Target::Auto);
    }
    if let Some(role) = name.strip_prefix("role:") {
        if let Some(&tier) = catalog.roles().get(role) {
            return Ok(Target::Role(role.to_owned(), tier));
        }
    } else if let Some(tier) = catalog.tier_by_name(name) {
        return Ok(Target::Tier(tier));
    } else if let Some(model) = catalog.model_by_id(name) {
        return Ok(Target::Model { model, via_alias: None });
    } else if let Some(&model) = catalog.aliases().get(name) {
        return Ok(Target::Model { model, via_alias: Some(name.to_owned()) });
    }
    Err(RouteError::ModelNotFound { name: name.to_owned(), valid: catalog.valid_model_names() })
}

/// Picks the model for `target`. `available(model)` says whether some deployment of the model
/// can take a call now (key present, reachable, breaker not open); it is consulted for `auto`,
/// tiers and roles, not for an explicitly named model (its fallbacks may still serve it).
///
/// Errors: [`RouteError::Unsatisfiable`] when every candidate fails a hard requirement (the
/// client must change the request: 400); [`RouteError::Unavailable`] when capable models exist
/// but none is available (503).
pub fn select(
    catalog: &Catalog,
    target: &Target,
    req: &Requirements<'_>,
    available: impl Fn(ModelId) -> bool,
) -> Result<RouteDecision, RouteError> {
    match target {
        Target::Model { model, via_alias } => {
            let m = &catalog.models()[*model];
            if let Some(why) = req.unmet(catalog, *model) {
                return Err(RouteError::Unsatisfiable { requirement: why });
            }
            // An explicitly named model is routed even when it is unavailable now: its
            // deployments and fallbacks are tried (and skipped) at call time.
            let reason = match via_alias {
                Some(a) => format!("alias {a} -> model {}", m.id),
                None => format!("model {} requested", m.id),
            };
            Ok(RouteDecision { model: *model, tier: m.tier, reason })
        }
        Target::Tier(t) => pick_in_tiers(catalog, &[*t], req, &available, &format!("tier {}", catalog.tiers()[*t])),
        Target::Role(role, t) => {
            pick_in_tiers(catalog, &[*t], req, &available, &format!("role:{role} -> tier {}", catalog.tiers()[*t]))
        }
        Target::Auto => {
            let all: Vec<TierId> = (0..catalog.tiers().len()).collect();
            pick_in_tiers(catalog, &all, req, &available, "auto")
        }
    }
}

fn pick_in_tiers(
    catalog: &Catalog,
    tiers: &[TierId],
    req: &Requirements<'_>,
    available: &impl Fn(ModelId) -> bool,
    label: &str,
) -> Result<RouteDecision, RouteError> {
    let mut first_unmet: Option<String> = None;
    // The first requirement failed by a model that is available now.
    let mut unmet_available: Option<String> = None;
    let mut unavailable: Vec<&str> = Vec::new();
    let mut skipped: Vec<&str> = Vec::new();
    for &tier in tiers {
        let mut best: Option<ModelId> = None;
        for (id, m) in catalog.models().iter().enumerate().filter(|(_, m)| m.tier == tier) {
            if let Some(why) = req.unmet(catalog, id) {
                if unmet_available.is_none() && available(id) {
                    unmet_available = Some(why.clone());
                }
                first_unmet.get_or_insert(why);
                continue;
            }
            if !available(id) {
                let p = catalog.provider_of(id).name.as_str();
                if !unavailable.contains(&p) {
                    unavailable.push(p);
                }
                continue;
            }
            if best.is_none_or(|b| m.price.blended() < catalog.models()[b].price.blended()) {
                best = Some(id);
            }
        }
        if let Some(model) = best {
            let mut reason = if tiers.len() > 1 {
                format!("{label}: cheapest capable tier {}", catalog.tiers()[tier])
            } else {
                label.to_owned()
            };
            if !skipped.is_empty() {
                reason.push_str(&format!(" (skipped {})", skipped.join(", ")));
            }
            reason.push_str(&format!(", cheapest model {}", catalog.models()[model].id));
            return Ok(RouteDecision { model, tier, reason });
        }
        skipped.push(&catalog.tiers()[tier]);
    }
    // The models that are up cannot serve the request, and those that could are down (a local
    // model without `tools` next to an Ollama that is not running, a prompt longer than the
    // local context with no cloud key): the request is what must change, so the answer is the
    // requirement that failed (400), not "unavailable" (503).
    if let (Some(why), false) = (unmet_available, unavailable.is_empty()) {
        return Err(RouteError::Unsatisfiable {
            requirement: format!(
                "{why} (the models that could serve it are unavailable now: providers {})",
                unavailable.join(", ")
            ),
        });
    }
    if !unavailable.is_empty() {
        return Err(RouteError::Unavailable {
            what: label.to_owned(),
            detail: format!("capable models exist but their providers are unavailable: {}", unavailable.join(", ")),
        });
    }
    Err(RouteError::Unsatisfiable { requirement: first_unmet.unwrap_or_else(|| format!("{label} has no models")) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const CAT: &str = r#"
tiers = ["local", "mid", "frontier"]
[roles]
search = "local"
plan-review = "frontier"
[aliases]
fast = "mid-a"
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[providers.q]
kind = "openai"
base_url = "http://127.0.0.1:2/v1"
[[models]]
id = "tiny"
provider = "p"
tier = "local"
price = { input = 0.0, output = 0.0 }
context_window = 100
[[models]]
id = "mid-a"
provider = "q"
tier = "mid"
price = { input = 1.0, output = 4.0 }
context_window = 10000
capabilities = ["tools"]
[[models]]
id = "mid-b"
provider = "p"
tier = "mid"
price = { input = 0.5, output = 2.0 }
context_window = 10000
capabilities = ["tools"]
[[models]]
id = "big"
provider = "q"
tier = "frontier"
price = { input = 3.0, output = 15.0 }
context_window = 100000
capabilities = ["tools", "vision", "json_schema"]
"#;

    fn cat() -> Catalog {
        parse(CAT, "t").unwrap()
    }

    fn req(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    fn route(c: &Catalog, r: &ChatRequest, up: impl Fn(ModelId) -> bool) -> Result<RouteDecision, RouteError> {
        let t = resolve(c, &r.model)?;
        select(c, &t, &Requirements::of(r), up)
    }

    fn id(c: &Catalog, d: &RouteDecision) -> String {
        c.models()[d.model].id.clone()
    }

    #[test]
    fn auto_takes_the_cheapest_tier_for_plain_chat() {
        let c = cat();
        let d = route(&c, &req(r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#), |_| true).unwrap();
        assert_eq!(id(&c, &d), "tiny");
        assert_eq!(d.reason, "auto: cheapest capable tier local, cheapest model tiny");
    }

    #[test]
    fn auto_with_tools_skips_to_the_cheapest_capable_model() {
        let c = cat();
        let r = req(
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        );
        let d = route(&c, &r, |_| true).unwrap();
        assert_eq!(id(&c, &d), "mid-b");
        assert_eq!(d.reason, "auto: cheapest capable tier mid (skipped local), cheapest model mid-b");
    }

    #[test]
    fn auto_skips_unavailable_providers() {
        let c = cat();
        let r = req(
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        );
        let d = route(&c, &r, |m| c.models()[m].provider != 0).unwrap();
        assert_eq!(id(&c, &d), "mid-a");
    }

    #[test]
    fn long_prompt_skips_small_windows() {
        let c = cat();
        let long = "lorem ipsum dolor ".repeat(100);
        let r = req(&format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"{long}"}}]}}"#));
        assert_eq!(id(&c, &route(&c, &r, |_| true).unwrap()), "mid-b");
    }

    #[test]
    fn names_resolve_tier_role_alias_and_model() {
        let c = cat();
        assert_eq!(resolve(&c, "mid").unwrap(), Target::Tier(1));
        assert_eq!(resolve(&c, "role:plan-review").unwrap(), Target::Role("plan-review".into(), 2));
        assert_eq!(resolve(&c, "fast").unwrap(), Target::Model { model: 1, via_alias: Some("fast".into()) });
        assert_eq!(resolve(&c, "big").unwrap(), Target::Model { model: 3, via_alias: None });
        match resolve(&c, "role:nope").unwrap_err() {
            RouteError::ModelNotFound { valid, .. } => {
                assert_eq!(
                    valid,
                    [
                        "auto",
                        "local",
                        "mid",
                        "frontier",
                        "role:plan-review",
                        "role:search",
                        "fast",
                        "tiny",
                        "mid-a",
                        "mid-b",
                        "big"
                    ]
                )
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn explicit_model_without_a_capability_is_unsatisfiable() {
        let c = cat();
        let r = req(
            r#"{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}"#,
        );
        assert_eq!(
            route(&c, &r, |_| true).unwrap_err(),
            RouteError::Unsatisfiable {
                requirement: "the request has image parts, and model tiny has no `vision` capability".into()
            }
        );
    }

    #[test]
    fn json_schema_and_output_limit_requirements() {
        let c = cat();
        let r = req(
            r#"{"model":"mid","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{}}}}"#,
        );
        assert!(matches!(route(&c, &r, |_| true), Err(RouteError::Unsatisfiable { .. })));
        let r = req(r#"{"model":"auto","max_tokens":50000,"messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(id(&c, &route(&c, &r, |_| true).unwrap()), "big");
        let r = req(r#"{"model":"auto","max_tokens":500000,"messages":[{"role":"user","content":"x"}]}"#);
        assert!(matches!(route(&c, &r, |_| true), Err(RouteError::Unsatisfiable { .. })));
    }

    #[test]
    fn plan_orders_deployments_fallbacks_and_peers() {
        let text = CAT.replace(
            "capabilities = [\"tools\"]\n[[models]]\nid = \"mid-b\"",
            "capabilities = [\"tools\"]\nfallback = [\"big\", \"tiny\"]\ncontext_window_fallback = [\"big\"]\ndeployments = [{ provider = \"p\" }]\n[[models]]\nid = \"mid-b\"",
        );
        let c = parse(&text, "t").unwrap();
        let r = req(
            r#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        );
        let reqs = Requirements::of(&r);
        let target = resolve(&c, "fast").unwrap();
        let d = select(&c, &target, &reqs, |_| true).unwrap();
        let p = plan(&c, &target, &d, &reqs);
        let named: Vec<(String, &str)> = p
            .iter()
            .map(|cand| (c.models()[c.deployments()[cand.deployment].model].id.clone(), cand.via.as_str()))
            .collect();
        // tiny has no tools: it is left out of the fallbacks; an explicit model gets no peers.
        assert_eq!(named, [("mid-a".into(), "primary"), ("mid-a".into(), "deployment"), ("big".into(), "fallback")]);
        let cw = typed_plan(&c, d.model, TypedFallback::ContextWindow, reqs.needs());
        assert_eq!(cw.len(), 1);
        assert_eq!(cw[0].via, Via::ContextWindow);

        let r = req(
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        );
        let reqs = Requirements::of(&r);
        let d = select(&c, &Target::Auto, &reqs, |_| true).unwrap();
        let ids: Vec<String> = plan(&c, &Target::Auto, &d, &reqs)
            .iter()
            .map(|cand| c.models()[c.deployments()[cand.deployment].model].id.clone())
            .collect();
        assert_eq!(ids, ["mid-b", "mid-a", "mid-a", "big"]);
    }

    #[test]
    fn a_request_the_available_models_cannot_serve_is_unsatisfiable_not_unavailable() {
        // Tier local: tiny (up, no tools) and a tools-capable model on a provider that is down.
        let text = CAT.replace(
            "[[models]]\nid = \"mid-a\"",
            "[[models]]\nid = \"local-tools\"\nprovider = \"q\"\ntier = \"local\"\nprice = { input = 0.0, output = 0.0 }\ncontext_window = 100\ncapabilities = [\"tools\"]\n[[models]]\nid = \"mid-a\"",
        );
        let c = parse(&text, "t").unwrap();
        let up = |m: ModelId| c.models()[m].id != "local-tools";
        let tools = req(
            r#"{"model":"local","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        );
        assert_eq!(
            route(&c, &tools, up).unwrap_err(),
            RouteError::Unsatisfiable {
                requirement: "the request has tools, and model tiny has no `tools` capability (the models that could serve it are unavailable now: providers q)".into()
            }
        );
        // Nothing of the tier up at all: that is unavailability (503), as before.
        assert!(matches!(route(&c, &tools, |_| false), Err(RouteError::Unavailable { .. })));
        // The capable model up: it serves.
        assert_eq!(id(&c, &route(&c, &tools, |_| true).unwrap()), "local-tools");
    }

    #[test]
    fn role_pins_its_tier_and_unavailable_is_distinct_from_unsatisfiable() {
        let c = cat();
        let r = req(r#"{"model":"role:search","messages":[{"role":"user","content":"x"}]}"#);
        let d = route(&c, &r, |_| true).unwrap();
        assert_eq!((id(&c, &d), d.reason.as_str()), ("tiny".into(), "role:search -> tier local, cheapest model tiny"));
        assert!(matches!(route(&c, &r, |_| false), Err(RouteError::Unavailable { .. })));
    }
}
