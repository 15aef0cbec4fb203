//! The sensitive-content guard end to end: a planted secret or address goes only to the local
//! fake (`local_only`), is refused when no local model exists, reaches the cloud fake only as a
//! placeholder (`redact`, checked on the bytes the fake received) and comes back restored,
//! streamed and not; `block` refuses naming kinds only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

/// A fake AWS access key id and a fake address, generated for this test (no real person or key).
const KEY: &str = "AKIAQ3ZJ7V2KXWHD4TBM";
const EMAIL: &str = "dana.quill@corp-mail.net";

fn config(cloud: &str, local: Option<&str>, guard: &str) -> String {
    let local = local.map_or(String::new(), |url| {
        format!(
            "[providers.box]\nkind = \"openai\"\nbase_url = \"{url}\"\nlocal = true\n[[models]]\nid = \"local-model\"\nprovider = \"box\"\ntier = \"local\"\nprice = {{ input = 0.0, output = 0.0 }}\ncontext_window = 100000\n"
        )
    });
    format!(
        "tiers = [\"local\", \"mid\"]\n{guard}\n[providers.cloud]\nkind = \"openai\"\nbase_url = \"{cloud}\"\n[[models]]\nid = \"cloud-model\"\nprovider = \"cloud\"\ntier = \"mid\"\nprice = {{ input = 1.0, output = 2.0 }}\ncontext_window = 100000\ncapabilities = [\"tools\"]\n{local}"
    )
}

fn completion(text: &str) -> String {
    json!({"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}).to_string()
}

fn secret_request(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": format!("Deploy with key {KEY} and mail {EMAIL} when done.")}]}).to_string()
}

#[tokio::test]
async fn local_only_keeps_secrets_on_the_machine() {
    let cloud = FakeUpstream::replay(Reply::json(200, &completion("cloud"))).await;
    let local = FakeUpstream::replay(Reply::json(200, &completion("local"))).await;
    let gw = start(&config(&cloud.url(), Some(&local.url()), "")).await;
    // Even a request naming the cloud model is served locally.
    let resp = post(&gw, &secret_request("cloud-model")).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-triage-model"], "local-model");
    let kinds = h["x-triage-sensitivity"].to_str().unwrap().to_owned();
    assert!(kinds.contains("aws_access_key") && kinds.contains("email"), "{kinds}");
    assert!(h["x-triage-route-reason"].to_str().unwrap().starts_with("sensitive content ("));
    assert_eq!((cloud.calls(), local.calls()), (0, 1));
    // A clean request still goes where it is sent.
    let resp =
        post(&gw, r#"{"model":"cloud-model","messages":[{"role":"user","content":"Summarise the release notes."}]}"#)
            .await;
    assert_eq!(resp.headers()["x-triage-model"], "cloud-model");
    assert!(resp.headers().get("x-triage-sensitivity").is_none());
}

#[tokio::test]
async fn local_only_without_a_local_model_is_refused_and_nothing_is_sent() {
    let cloud = FakeUpstream::replay(Reply::json(200, &completion("cloud"))).await;
    let gw = start(&config(&cloud.url(), None, "")).await;
    let resp = post(&gw, &secret_request("auto")).await;
    assert_eq!(resp.status(), 403);
    let body = resp.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "sensitive_content_requires_local_model");
    assert!(!body.contains(KEY) && !body.contains(EMAIL), "never the values: {body}");
    assert_eq!(cloud.calls(), 0);
}

#[tokio::test]
async fn block_refuses_naming_kinds_only() {
    let cloud = FakeUpstream::replay(Reply::json(200, &completion("cloud"))).await;
    let gw =
        start(&config(&cloud.url(), None, "[guard]\ndefault = \"allow\"\n[guard.kinds]\nsecrets = \"block\"\n")).await;
    let resp = post(&gw, &secret_request("auto")).await;
    assert_eq!(resp.status(), 403);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "sensitive_content_blocked");
    assert!(v["error"]["message"].as_str().unwrap().contains("aws_access_key"));
    // Personal data alone is allowed by this policy and goes to the cloud as it is.
    let resp = post(
        &gw,
        &json!({"model": "auto", "messages": [{"role": "user", "content": format!("Write to {EMAIL}")}]}).to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(String::from_utf8_lossy(&cloud.requests()[0].body).contains(EMAIL));
}

#[tokio::test]
async fn redact_sends_placeholders_and_restores_the_answer() {
    // The fake echoes the placeholders it received back in its answer.
    let cloud = FakeUpstream::start(|r, _| {
        let text = r.json()["messages"][0]["content"].as_str().unwrap_or_default().to_owned();
        let placeholders: Vec<&str> = text.split(' ').filter(|w| w.starts_with('<')).collect();
        Reply::json(200, &completion(&format!("Noted {}", placeholders.join(" and "))))
    })
    .await;
    let gw = start(&config(&cloud.url(), None, "[guard]\ndefault = \"redact\"\n")).await;
    let resp = post(&gw, &secret_request("cloud-model")).await;
    assert_eq!(resp.status(), 200);
    let sent = String::from_utf8(cloud.requests()[0].body.clone()).unwrap();
    assert!(!sent.contains(KEY) && !sent.contains(EMAIL), "{sent}");
    assert!(sent.contains("<AWS_KEY_1>") || sent.contains("<AWS_ACCESS_KEY_1>"), "{sent}");
    let v = json_body(resp).await;
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains(KEY) && answer.contains(EMAIL), "{answer}");
}

#[tokio::test]
async fn redact_restores_placeholders_split_across_stream_chunks() {
    let stream = chunk_line("r", r#"{"role":"assistant","content":"Mail <EMA"}"#, None)
        + &chunk_line("r", r#"{"content":"IL_1> now"}"#, None)
        + &chunk_line("r", "{}", Some("stop"))
        + "data: [DONE]\n\n";
    let cloud = FakeUpstream::replay(Reply::sse(&stream)).await;
    let gw = start(&config(&cloud.url(), None, "[guard]\ndefault = \"redact\"\n")).await;
    let body = json!({"model": "cloud-model", "stream": true, "messages": [{"role": "user", "content": format!("Remind {EMAIL} tomorrow")}]});
    let resp = post(&gw, &body.to_string()).await;
    assert_eq!(resp.headers()["x-triage-sensitivity"], "email");
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(content(&chunks(&data)), format!("Mail {EMAIL} now"));
    assert!(!String::from_utf8_lossy(&cloud.requests()[0].body).contains(EMAIL));
}

#[tokio::test]
async fn redact_on_the_anthropic_endpoint() {
    let cloud = FakeUpstream::replay(Reply::json(200, &completion("Sent to <EMAIL_1>."))).await;
    let gw = start(&config(&cloud.url(), None, "[guard]\ndefault = \"redact\"\n")).await;
    let req = json!({"model": "cloud-model", "max_tokens": 64, "system": format!("The owner is {EMAIL}."), "messages": [{"role": "user", "content": [{"type": "text", "text": "Who owns this?"}]}]});
    let resp = client().post(gw.url("/v1/messages")).body(req.to_string()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!String::from_utf8_lossy(&cloud.requests()[0].body).contains(EMAIL));
    let v = json_body(resp).await;
    assert_eq!(v["content"][0]["text"], format!("Sent to {EMAIL}."));
}
