//! Production evaluation's pure logic: the pairwise judge's rubric and prompt, its verdict
//! grammar, how the two orders combine, and the Wilson interval the reports use.
//!
//! A shadowed request has two answers: the *routed* one (what the client got, from a cheaper
//! model) and the *reference* one (the reference model's answer to the same request). A judge
//! model compares them twice, once with the routed answer as "Assistant A" and once as
//! "Assistant B", because LLM judges favour a position (Zheng et al., "Judging LLM-as-a-Judge
//! with MT-Bench and Chatbot Arena", 2023, §3.3). Each judgement ends with an Arena-Hard-style
//! verdict (Li et al., "From Crowdsourced Data to High-Quality Benchmarks: Arena-Hard and
//! BenchBuilder", 2024): `[[A>>B]]`, `[[A>B]]`, `[[A=B]]`, `[[B>A]]` or `[[B>>A]]`.
//!
//! - [`parse_verdict`]: exactly one distinct verdict token in the judge's text, else `None`
//!   (a *failed* judgement: garbage is never read as a verdict).
//! - [`combine`]: both orders read from the routed answer's side; equal outcomes are the result,
//!   differing ones are an order-inconsistent pair, counted as a tie and flagged.
//! - [`wilson`]: the 95 % Wilson score interval of a proportion (Wilson, JASA 1927).

use std::fmt::Write as _;

use crate::openai::{ChatCompletion, ChatRequest, Content, Message, Role};

/// The judge's instructions (its system prompt). The rubric, in order of weight: correctness
/// (a wrong answer loses to a right one whatever its style), then whether it does what was
/// asked (instructions, format, constraints), then completeness, then clarity and concision.
/// Length is not merit; position is not merit.
pub const RUBRIC: &str = "You are an impartial judge comparing two AI assistants' answers to the same request. \
Judge in this order of importance:
1. Correctness: facts, code, calculations and reasoning must be right. An answer with an error loses to one without, whatever its style.
2. Instructions: the answer does what the request asks, in the format and within the constraints it sets.
3. Completeness: nothing the request needs is missing.
4. Clarity and concision: clear, no padding. A longer answer is not better for being longer.
The order in which the answers are shown says nothing about their quality: do not let it influence you.
Think briefly, then end your reply with exactly one verdict on its own line, one of:
[[A>>B]] (A is significantly better), [[A>B]] (A is slightly better), [[A=B]] (tie, relatively the same), \
[[B>A]] (B is slightly better), [[B>>A]] (B is significantly better).";

/// Characters of the conversation and of each answer shown to the judge; longer texts are cut
/// (at a character boundary) and marked `[... cut]`.
pub const MAX_JUDGE_CHARS: usize = 24_000;

/// One judgement read from one order of presentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `[[A>>B]]`.
    AMuchBetter,
    /// `[[A>B]]`.
    ABetter,
    /// `[[A=B]]`.
    Tie,
    /// `[[B>A]]`.
    BBetter,
    /// `[[B>>A]]`.
    BMuchBetter,
}

impl Verdict {
    /// Every verdict with its token, best for A first.
    pub const ALL: [(Verdict, &'static str); 5] = [
        (Verdict::AMuchBetter, "A>>B"),
        (Verdict::ABetter, "A>B"),
        (Verdict::Tie, "A=B"),
        (Verdict::BBetter, "B>A"),
        (Verdict::BMuchBetter, "B>>A"),
    ];

    /// The token inside the brackets, e.g. `A>B`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::AMuchBetter => "A>>B",
            Verdict::ABetter => "A>B",
            Verdict::Tie => "A=B",
            Verdict::BBetter => "B>A",
            Verdict::BMuchBetter => "B>>A",
        }
    }

    /// Parses a token such as `A>B` (without brackets).
    pub fn from_token(s: &str) -> Option<Verdict> {
        Verdict::ALL.iter().find(|(_, t)| *t == s).map(|(v, _)| *v)
    }

    /// The outcome for the answer shown as A.
    fn for_a(self) -> Outcome {
        match self {
            Verdict::AMuchBetter | Verdict::ABetter => Outcome::Win,
            Verdict::Tie => Outcome::Tie,
            Verdict::BBetter | Verdict::BMuchBetter => Outcome::Loss,
        }
    }
}

/// Reads the verdict of a judge's reply: the `[[...]]` tokens it contains (spaces inside the
/// brackets ignored). `None` when there is none, or when it gives two different ones (a judge
/// that hedges has not judged).
pub fn parse_verdict(text: &str) -> Option<Verdict> {
    let mut found: Option<Verdict> = None;
    let mut rest = text;
    while let Some(start) = rest.find("[[") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("]]") else { break };
        let token: String = after[..end].chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(v) = Verdict::from_token(&token) {
            if found.is_some_and(|f| f != v) {
                return None;
            }
            found = Some(v);
        }
        rest = &after[end + 2..];
    }
    found
}

/// How the routed answer fared against the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The routed answer was better.
    Win,
    /// Neither was better (or the judge contradicted itself across orders).
    Tie,
    /// The reference was better.
    Loss,
}

impl Outcome {
    /// `win`, `tie` or `loss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Win => "win",
            Outcome::Tie => "tie",
            Outcome::Loss => "loss",
        }
    }
}

/// The result of judging both orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// The routed answer's outcome.
    pub outcome: Outcome,
    /// The two orders disagreed (the outcome is then a tie).
    pub inconsistent: bool,
}

/// Combines the verdict with the routed answer shown as A (`routed_first`) and the verdict with
/// it shown as B (`routed_second`): both read from the routed answer's side (win, tie, loss);
/// equal, they are the outcome; different, the pair is order-inconsistent and counts as a tie.
/// Strength (`>>` vs `>`) does not make a pair inconsistent.
pub fn combine(routed_first: Verdict, routed_second: Verdict) -> Judgement {
    let first = routed_first.for_a();
    let second = match routed_second.for_a() {
        Outcome::Win => Outcome::Loss,
        Outcome::Tie => Outcome::Tie,
        Outcome::Loss => Outcome::Win,
    };
    if first == second {
        Judgement { outcome: first, inconsistent: false }
    } else {
        Judgement { outcome: Outcome::Tie, inconsistent: true }
    }
}

/// The 95 % Wilson score interval of `k` successes in `n` trials, `(low, high)` within [0, 1]
/// (Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927).
/// `n = 0` gives `(0, 1)`.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    wilson_z(k, n, 1.959_963_984_540_054)
}

/// [`wilson`] for any `z` (the normal quantile: 1.96 for 95 %, 3.29 for 99.9 %).
pub fn wilson_z(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n_f = n as f64;
    let p = k.min(n) as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = z / denom * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}[... cut]", &s[..end])
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System | Role::Developer => "System",
        Role::User => "User",
        Role::Assistant => "Assistant",
        Role::Tool | Role::Function => "Tool result",
    }
}

/// The request as the judge reads it: each message as `Role: text` (tool calls as
/// `[calls NAME(ARGS)]`, images as `[image]`), at most [`MAX_JUDGE_CHARS`].
pub fn conversation_text(req: &ChatRequest) -> String {
    let mut out = String::new();
    for m in &req.messages {
        let _ = write!(out, "{}: ", role_name(m.role));
        if let Some(c) = m.content() {
            match c {
                Content::Text(t) => out.push_str(t),
                Content::Parts(_) => {
                    c.for_each_text(|t| out.push_str(t));
                    if c.has_image() {
                        out.push_str(" [image]");
                    }
                }
            }
        }
        for tc in m.tool_calls.iter().flatten() {
            let _ = write!(out, " [calls {}({})]", tc.function.name, tc.function.arguments);
        }
        out.push_str("\n\n");
        if out.len() > MAX_JUDGE_CHARS {
            break;
        }
    }
    cut(out.trim_end(), MAX_JUDGE_CHARS)
}

/// The text of a whole OpenAI answer (choice 0): its content, then its tool calls as
/// `[calls NAME(ARGS)]`.
pub fn completion_text(c: &ChatCompletion) -> String {
    let mut out = String::new();
    if let Some(ch) = c.choices.first() {
        out.push_str(ch.message.content.as_deref().unwrap_or(""));
        for tc in ch.message.tool_calls.iter().flatten() {
            let _ = write!(out, "[calls {}({})]", tc.function.name, tc.function.arguments);
        }
    }
    out
}

/// The text of a whole Anthropic answer: its text blocks, then its tool uses as
/// `[calls NAME(INPUT)]` (thinking is not part of the answer).
pub fn anthropic_text(r: &crate::anthropic::Response) -> String {
    let mut out = String::new();
    for b in &r.content {
        match b {
            crate::anthropic::Block::Text { text, .. } => out.push_str(text),
            crate::anthropic::Block::ToolUse { name, input, .. } => {
                let _ = write!(out, "[calls {name}({input})]");
            }
            _ => {}
        }
    }
    out
}

/// The judge's request: [`RUBRIC`] as the system prompt, then the conversation and the two
/// answers between Arena-Hard-style markers, for `model` (a catalog name), non-streamed,
/// temperature 0, at most `max_tokens`.
pub fn judge_request(model: &str, conversation: &str, answer_a: &str, answer_b: &str, max_tokens: u64) -> ChatRequest {
    let user = format!(
        "<|Request|>\n{conversation}\n\n<|The Start of Assistant A's Answer|>\n{}\n<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n{}\n<|The End of Assistant B's Answer|>",
        cut(answer_a, MAX_JUDGE_CHARS),
        cut(answer_b, MAX_JUDGE_CHARS)
    );
    let msg = |role, text: String| Message {
        role,
        content: Some(Some(Content::Text(text))),
        tool_calls: None,
        tool_call_id: None,
        extra: Default::default(),
    };
    let mut extra = crate::openai::Extra::new();
    extra.insert("temperature".into(), 0.into());
    ChatRequest {
        model: model.to_owned(),
        messages: vec![msg(Role::System, RUBRIC.to_owned()), msg(Role::User, user)],
        stream: None,
        stream_options: None,
        tools: None,
        response_format: None,
        max_tokens: Some(max_tokens),
        max_completion_tokens: None,
        n: None,
        extra,
    }
}

/// The kind of a routing decision, for grouping results: `auto` (the difficulty scorer chose the
/// tier), `auto-cheapest` (`auto` without a scorer, or nothing from its tier up could serve),
/// `tier`, `role`, `model` (named or an alias), `sensitive` (the guard kept it local),
/// `budget-step-down` (a budget moved it down a tier) or `fallback` (another model answered
/// after failed attempts). `requested` is the `model` field as sent, `reason` the route reason
/// (`x-triage-route-reason`).
pub fn reason_kind(requested: &str, reason: &str) -> &'static str {
    if reason.starts_with("sensitive content") {
        "sensitive"
    } else if reason.contains("stepped down to tier") {
        "budget-step-down"
    } else if reason.contains("failed attempt(s)") {
        "fallback"
    } else if requested == "auto" {
        if reason.starts_with("auto: score") {
            "auto"
        } else {
            "auto-cheapest"
        }
    } else if requested.starts_with("role:") {
        "role"
    } else if reason.starts_with("tier ") {
        "tier"
    } else {
        "model"
    }
}

/// The request as the reference model gets it: the client's request, whole answer (no stream),
/// for `model` (a catalog name).
pub fn reference_request(req: &ChatRequest, model: &str) -> ChatRequest {
    let mut r = req.clone();
    r.model = model.to_owned();
    r.stream = None;
    r.stream_options = None;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_and_garbage_does_not() {
        assert_eq!(parse_verdict("Reasoning...\n[[A>B]]"), Some(Verdict::ABetter));
        assert_eq!(parse_verdict("[[B>>A]]"), Some(Verdict::BMuchBetter));
        assert_eq!(parse_verdict("final: [[ A = B ]]"), Some(Verdict::Tie));
        assert_eq!(parse_verdict("My final verdict is [[A>>B]]. So: [[A>>B]]"), Some(Verdict::AMuchBetter));
        assert_eq!(parse_verdict("Both are fine."), None);
        assert_eq!(parse_verdict("[[A>B]] or maybe [[B>A]]"), None, "a hedge is no verdict");
        assert_eq!(parse_verdict("[[A>C]]"), None);
        assert_eq!(parse_verdict("[[A>B"), None);
        assert_eq!(parse_verdict("A>B"), None, "brackets are required");
        assert_eq!(parse_verdict("[[tie]] [[A<B]]"), None);
        for (v, t) in Verdict::ALL {
            assert_eq!(parse_verdict(&format!("x [[{t}]] y")), Some(v));
            assert_eq!(v.as_str(), t);
        }
    }

    #[test]
    fn orders_combine_from_the_routed_side() {
        use Verdict::*;
        // Routed shown first (A) and winning, then shown second (B) and winning: a win.
        assert_eq!(combine(ABetter, BMuchBetter), Judgement { outcome: Outcome::Win, inconsistent: false });
        assert_eq!(combine(BBetter, ABetter), Judgement { outcome: Outcome::Loss, inconsistent: false });
        assert_eq!(combine(BMuchBetter, AMuchBetter), Judgement { outcome: Outcome::Loss, inconsistent: false });
        assert_eq!(combine(Tie, Tie), Judgement { outcome: Outcome::Tie, inconsistent: false });
        // A judge that always prefers position A contradicts itself: a tie, flagged.
        assert_eq!(combine(ABetter, ABetter), Judgement { outcome: Outcome::Tie, inconsistent: true });
        assert_eq!(combine(BBetter, BBetter), Judgement { outcome: Outcome::Tie, inconsistent: true });
        assert_eq!(combine(ABetter, Tie), Judgement { outcome: Outcome::Tie, inconsistent: true });
    }

    #[test]
    fn reason_kinds() {
        assert_eq!(
            reason_kind("auto", "auto: score 0.120 vs thresholds 0.350 -> tier local, cheapest model m; lexical:"),
            "auto"
        );
        assert_eq!(reason_kind("auto", "auto: cheapest capable tier local, cheapest model m"), "auto-cheapest");
        assert_eq!(reason_kind("local", "tier local, cheapest model m"), "tier");
        assert_eq!(reason_kind("role:search", "role:search -> tier local, cheapest model m"), "role");
        assert_eq!(reason_kind("m", "model m requested"), "model");
        assert_eq!(
            reason_kind("auto", "sensitive content (email): local models only; auto -> tier local"),
            "sensitive"
        );
        assert_eq!(
            reason_kind("auto", "x; team eng daily budget of $1 at 85 % (soft limit): stepped down to tier local"),
            "budget-step-down"
        );
        assert_eq!(reason_kind("m", "model m requested; served by n after 1 failed attempt(s)"), "fallback");
    }

    #[test]
    fn wilson_matches_hand_computed_values() {
        // 8 of 10: centre (0.8 + 0.19208)/1.38415 = 0.71682, half 1.95996/1.38415 *
        // sqrt(0.016 + 0.0096037) = 0.22661 -> [0.4902, 0.9433] (the textbook figures).
        let (lo, hi) = wilson(8, 10);
        assert!((lo - 0.4902).abs() < 1e-4 && (hi - 0.9433).abs() < 1e-4, "{lo} {hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(0, 20);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.16113).abs() < 1e-4, "{hi}");
        let (lo, hi) = wilson(20, 20);
        assert!((lo - 0.83887).abs() < 1e-4 && hi == 1.0, "{lo}");
    }

    #[test]
    fn the_judge_sees_the_conversation_and_both_answers() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"auto","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"Be terse."},{"role":"user","content":[{"type":"text","text":"What is 2+2?"}]}]}"#,
        )
        .unwrap();
        let conv = conversation_text(&req);
        assert_eq!(conv, "System: Be terse.\n\nUser: What is 2+2?");
        let j = judge_request("judge-model", &conv, "4", "5", 512);
        assert_eq!(j.model, "judge-model");
        assert_eq!(j.max_tokens, Some(512));
        assert!(!j.is_stream());
        let user = match j.messages[1].content() {
            Some(Content::Text(t)) => t.clone(),
            _ => String::new(),
        };
        assert!(user.contains("What is 2+2?"));
        let a = user.find("Assistant A's Answer|>\n4\n").unwrap();
        let b = user.find("Assistant B's Answer|>\n5\n").unwrap();
        assert!(a < b);
        let r = reference_request(&req, "ref");
        assert_eq!((r.model.as_str(), r.stream, r.stream_options.is_none()), ("ref", None, true));
        assert_eq!(cut("héllo", 2), "h[... cut]");
    }
}
