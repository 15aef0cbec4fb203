//! `triage scan`: what the guard finds in a text or a chat request, and what the policy does.

use std::io::Read;

use triage_core::catalog::Catalog;
use triage_core::guard::{Guard, Location};
use triage_core::openai::ChatRequest;

fn location(l: &Location) -> String {
    match l {
        Location::Content { message, part: None } if *message == usize::MAX => "system".into(),
        Location::Content { message, part: None } => format!("messages[{message}]"),
        Location::Content { message, part: Some(p) } => format!("messages[{message}].content[{p}]"),
        Location::ToolCallArguments { message, call, pointer } => {
            format!("messages[{message}].tool_calls[{call}]{pointer}")
        }
        Location::ToolDescription { tool } => format!("tools[{tool}].description"),
        Location::ToolParameters { tool, pointer } => format!("tools[{tool}].parameters{pointer}"),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

/// Reads stdin (a JSON chat request, or plain text) and prints each finding: kind, where, byte
/// span, confidence, rule, and the configured action. The matched text itself is never printed.
///
/// Errors: stdin cannot be read.
pub fn run(catalog: &Catalog, json: bool) -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).map_err(|e| format!("cannot read stdin: {e}"))?;
    let guard = Guard::new();
    let policy = catalog.guard();
    let findings: Vec<(String, triage_core::guard::Finding)> = match serde_json::from_str::<ChatRequest>(&input) {
        Ok(req) => guard.scan_request(&req).into_iter().map(|(l, f)| (location(&l), f)).collect(),
        Err(_) => guard.scan(&input).into_iter().map(|f| ("text".to_owned(), f)).collect(),
    };
    let rows: Vec<serde_json::Value> = findings
        .iter()
        .map(|(loc, f)| {
            serde_json::json!({
                "kind": f.kind.as_str(),
                "secret": f.kind.is_secret(),
                "location": loc,
                "bytes": [f.span.start, f.span.end],
                "confidence": f.confidence,
                "rule": f.rule,
                "action": policy.action(f.kind.as_str(), f.kind.is_secret()).as_str(),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no sensitive content found");
        return Ok(());
    }
    println!("{:<22}  {:<28}  {:<13}  {:>5}  {:<10}  RULE", "KIND", "LOCATION", "BYTES", "CONF", "ACTION");
    for r in &rows {
        println!(
            "{:<22}  {:<28}  {:<13}  {:>5.2}  {:<10}  {}",
            r["kind"].as_str().unwrap_or_default(),
            r["location"].as_str().unwrap_or_default(),
            format!("{}..{}", r["bytes"][0], r["bytes"][1]),
            r["confidence"].as_f64().unwrap_or_default(),
            r["action"].as_str().unwrap_or_default(),
            r["rule"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
