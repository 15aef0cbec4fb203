//! Issue 16 end to end: names, addresses and dates planted in generated sentences never reach
//! the cloud fake. Under `local_only` (the default policy) with the cloud model requested, every
//! request is served by the local fake; under `redact` the cloud fake receives placeholders only
//! (checked on the bytes it received) and the answer comes back with the values restored.
//!
//! All values are generated from the lists below (made-up names and streets), not real people.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

const FIRST: &[&str] =
    &["Aurelia", "Bastien", "Chiamaka", "Dorian", "Elif", "Fabrizio", "Gunnhild", "Hamza", "Ilse", "Joaquim"];
const LAST: &[&str] = &[
    "Vantongeren",
    "Okereke",
    "Lindqvist",
    "Castellanos",
    "Whitcombe",
    "Nakashima",
    "Brandauer",
    "Kowalczyk",
    "Dufresne",
    "Abernethy",
];
const STREETS: &[&str] = &[
    "Kastanienweg 17, 04109 Leipzig",
    "14 rue des Lilas, 69003 Lyon",
    "Via del Corso 212, 00186 Roma",
    "88 Harrow Lane\nBristol BS1 4DJ",
    "Calle de Alcalá 45, 28014 Madrid",
    "2217 Birchwood Drive\nSpringfield, IL 62704",
];
const DATES: &[&str] = &["14 March 2025", "2024-11-02", "03/07/2019", "September 9, 2023", "21.06.2022"];
const TEMPLATES: &[&str] = &[
    "I want to add {name} as a beneficiary on my account.",
    "Please send the contract to {name} at {address}.",
    "{name} moved to {address} on {date}.",
    "Can you draft a reply to {name} about the appointment on {date}?",
    "Ship the parcel to:\n{name}\n{address}",
    "The hearing for {name} is scheduled for {date}.",
];

/// (text, planted values).
fn sentences() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for i in 0..60usize {
        let name = format!("{} {}", FIRST[i % FIRST.len()], LAST[(i * 7 + 3) % LAST.len()]);
        let address = STREETS[(i * 5 + 1) % STREETS.len()].to_owned();
        let date = DATES[(i * 3 + 2) % DATES.len()].to_owned();
        let tpl = TEMPLATES[i % TEMPLATES.len()];
        let mut planted = Vec::new();
        for (k, v) in [("{name}", &name), ("{address}", &address), ("{date}", &date)] {
            if tpl.contains(k) {
                planted.push(v.clone());
            }
        }
        let text = tpl.replace("{name}", &name).replace("{address}", &address).replace("{date}", &date);
        out.push((text, planted));
    }
    out
}

fn config(cloud: &str, local: Option<&str>, guard: &str) -> String {
    let local = local.map_or(String::new(), |url| {
        format!(
            "[providers.box]\nkind = \"openai\"\nbase_url = \"{url}\"\nlocal = true\n[[models]]\nid = \"local-model\"\nprovider = \"box\"\ntier = \"local\"\nprice = {{ input = 0.0, output = 0.0 }}\ncontext_window = 100000\n"
        )
    });
    format!(
        "tiers = [\"local\", \"mid\"]\n{guard}\n[providers.cloud]\nkind = \"openai\"\nbase_url = \"{cloud}\"\n[[models]]\nid = \"cloud-model\"\nprovider = \"cloud\"\ntier = \"mid\"\nprice = {{ input = 1.0, output = 2.0 }}\ncontext_window = 100000\n{local}"
    )
}

fn completion(text: &str) -> String {
    json!({"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}).to_string()
}

#[tokio::test]
async fn local_only_keeps_every_planted_entity_on_the_machine() {
    let cloud = FakeUpstream::replay(Reply::json(200, &completion("cloud"))).await;
    let local = FakeUpstream::replay(Reply::json(200, &completion("local"))).await;
    let gw = start(&config(&cloud.url(), Some(&local.url()), "")).await;
    let all = sentences();
    for (text, _) in &all {
        let body = json!({"model": "cloud-model", "messages": [{"role": "user", "content": text}]});
        let resp = post(&gw, &body.to_string()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-triage-model"], "local-model", "went to the cloud: {text:?}");
    }
    assert_eq!((cloud.calls(), local.calls()), (0, all.len()));
    // A clean request still goes where it is sent.
    let resp = post(
        &gw,
        r#"{"model":"cloud-model","messages":[{"role":"user","content":"Refactor this loop to use an iterator and explain why."}]}"#,
    )
    .await;
    assert_eq!(resp.headers()["x-triage-model"], "cloud-model");
}

#[tokio::test]
async fn redact_sends_no_planted_entity_and_restores_the_answer() {
    // The fake answers with the text it received, placeholders included.
    let cloud = FakeUpstream::start(|r, _| {
        let text = r.json()["messages"][0]["content"].as_str().unwrap_or_default().to_owned();
        Reply::json(200, &completion(&text))
    })
    .await;
    let gw = start(&config(&cloud.url(), None, "[guard]\ndefault = \"redact\"\n")).await;
    let all = sentences();
    for (i, (text, planted)) in all.iter().enumerate() {
        let body = json!({"model": "cloud-model", "messages": [{"role": "user", "content": text}]});
        let resp = post(&gw, &body.to_string()).await;
        assert_eq!(resp.status(), 200);
        let sent = String::from_utf8_lossy(&cloud.requests()[i].body).into_owned();
        for v in planted {
            // Every word of a planted value (a name, each line of an address, a date) is gone.
            for part in v.split(['\n', ',']).map(str::trim).filter(|p| p.len() > 3) {
                assert!(!sent.contains(part), "{part:?} reached the cloud in {sent}");
            }
        }
        let v = json_body(resp).await;
        assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap(), text.as_str());
    }
}

#[tokio::test]
async fn key_and_team_overrides_apply() {
    // Globally names may leave; team `legal` keeps them local; one key of team `legal` is
    // overridden back to `allow`. Each caller's request names the same generated person.
    use triage_store::{NewKey, Store};
    let cloud = FakeUpstream::replay(Reply::json(200, &completion("cloud"))).await;
    let local = FakeUpstream::replay(Reply::json(200, &completion("local"))).await;
    let db = temp_db();
    let store = Store::connect(&db).await.unwrap();
    let mk = |team: &str| NewKey { user: "u".into(), team: team.into(), ..Default::default() };
    let (_, legal) = store.create_key(&mk("legal")).await.unwrap();
    let (exempt_rec, exempt) = store.create_key(&mk("legal")).await.unwrap();
    let (_, ops) = store.create_key(&mk("ops")).await.unwrap();
    let guard = format!(
        "[guard]\ndefault = \"local_only\"\n[guard.kinds]\nperson = \"allow\"\n[guard.teams.legal]\nkinds = {{ person = \"local_only\" }}\n[guard.keys.{}]\nkinds = {{ person = \"allow\" }}\n",
        exempt_rec.id
    );
    let toml = format!(
        "auth = \"keys\"\n{}\n[spend]\ndatabase = \"{db}\"\n",
        config(&cloud.url(), Some(&local.url()), &guard)
    );
    let gw = start(&toml).await;
    let body = json!({"model": "cloud-model", "messages": [{"role": "user", "content": "I want to add Aurelia Vantongeren as a beneficiary."}]}).to_string();
    let mut served = Vec::new();
    for key in [&legal, &exempt, &ops] {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .bearer_auth(key)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        served.push(resp.headers()["x-triage-model"].to_str().unwrap().to_owned());
    }
    assert_eq!(served, ["local-model", "cloud-model", "cloud-model"]);
    assert_eq!((cloud.calls(), local.calls()), (2, 1));
}
