//! The real `triage` binary, run in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary with no API keys, and the places it looks for model files on disk (the model
/// registry, `triage pull`'s cache, Ollama's store) pointed at a folder that does not exist, so
/// the models of the machine running the tests stay out of them; a test sets its own after. The
/// embedding encoder stays where the tests' fetch script put it.
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_triage"));
    let nowhere = std::env::temp_dir().join(format!("triage-cli-nowhere-{}", std::process::id()));
    c.env("TRIAGE_EMBEDDING_DIR", triage_embed::default_dir())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("TRIAGE_CONFIG")
        .env("XDG_CONFIG_HOME", nowhere.join("config"))
        .env("XDG_CACHE_HOME", nowhere.join("cache"))
        .env("OLLAMA_MODELS", nowhere.join("ollama"));
    c
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("triage-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(c: &mut Command) -> (bool, String, String) {
    let Output { status, stdout, stderr } = c.output().unwrap();
    (status.success(), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

#[test]
fn version_and_help() {
    let (ok, out, _) = run(bin().arg("--version"));
    assert!(ok);
    assert_eq!(out.trim(), format!("triage {}", env!("CARGO_PKG_VERSION")));
    let (ok, out, _) = run(bin().arg("--help"));
    assert!(ok);
    for cmd in ["serve", "init", "models"] {
        assert!(out.contains(cmd), "{out}");
    }
}

#[test]
fn init_writes_the_defaults_and_refuses_to_overwrite() {
    let dir = tempdir("init");
    let (ok, out, _) = run(bin().current_dir(&dir).arg("init"));
    assert!(ok, "{out}");
    let written = std::fs::read_to_string(dir.join("triage.toml")).unwrap();
    assert_eq!(written, triage_core::config::DEFAULT_CONFIG);
    let (ok, _, err) = run(bin().current_dir(&dir).arg("init"));
    assert!(!ok);
    assert!(err.contains("--force"), "{err}");
    assert!(run(bin().current_dir(&dir).args(["init", "--force"])).0);
}

#[test]
fn models_prints_the_catalog_with_availability() {
    let dir = tempdir("models");
    let (ok, out, err) = run(bin().current_dir(&dir).arg("models"));
    assert!(ok, "{err}");
    assert!(out.starts_with("catalog: built-in defaults\nMODEL"), "{out}");
    let row = out.lines().find(|l| l.starts_with("claude-sonnet-4-5")).unwrap();
    let cells: Vec<&str> = row.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(
        cells,
        ["claude-sonnet-4-5", "frontier", "anthropic", "3", "0.3", "15", "200000", "tools,vision", "no (no API key)"]
    );

    let (ok, out, _) =
        run(bin().current_dir(&dir).args(["models", "--json"]).env("OPENAI_API_KEY", "sk-test-PLACEHOLDER"));
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 5);
    assert_eq!(v[1]["model"], "gpt-5-mini");
    assert_eq!(v[1]["input_usd_per_million"], "0.25");
}

#[test]
fn a_config_error_names_file_line_and_field() {
    let dir = tempdir("badcfg");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "tiers = [\"local\"]\n\n[providers.p]\nkind = \"openai\"\nbase_url = \"ftp://x\"\n").unwrap();
    let (ok, _, err) = run(bin().args(["serve", "--config"]).arg(&path));
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("triage: {}:5: providers.p.base_url: \"ftp://x\" is not an http:// or https:// URL", path.display())
    );
    let (ok, _, err) = run(bin().args(["models", "--config", "/nonexistent/triage.toml"]));
    assert!(!ok);
    assert!(err.contains("/nonexistent/triage.toml: cannot read"), "{err}");
}

/// `triage serve` with no config and no keys starts on the built-in catalog, shows every provider
/// unavailable instead of crashing, and exits 0 on SIGTERM. `auto` gets a 502 naming Ollama: a
/// provider whose probe failed is still tried when nothing else can serve (issue 19), and the
/// cloud providers without a key are skipped, never called.
#[test]
fn serve_starts_on_defaults_without_keys_and_stops_on_sigterm() {
    let dir = tempdir("serve");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = bin()
        .current_dir(&dir)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    rt.block_on(async {
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await; // first probes
        let v: serde_json::Value =
            serde_json::from_str(&c.get(format!("{base}/v1/models")).send().await.unwrap().text().await.unwrap())
                .unwrap();
        let models: Vec<&serde_json::Value> =
            v["data"].as_array().unwrap().iter().filter(|m| m["triage"]["kind"] == "model").collect();
        assert_eq!(models.len(), 5);
        assert!(models.iter().all(|m| m["triage"]["available"] == false), "{v}");
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .body(r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let attempts = r.headers()["x-triage-attempts"].to_str().unwrap().to_owned();
        assert!(attempts.starts_with("llama3.2@ollama:unreachable"), "{attempts}");
        assert!(attempts.contains("gpt-5-mini@openai:no_api_key"), "{attempts}");
        assert!(attempts.ends_with("llama3.2@ollama:connect"), "{attempts}");
        let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with("upstream ollama: cannot connect"), "{body}");
        assert_eq!(c.get(format!("{base}/readyz")).send().await.unwrap().status(), 503);
    });
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(log.contains("triage listening"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
}

fn spend_config(dir: &std::path::Path, upstream: &str, extra: &str) -> PathBuf {
    let path = dir.join("triage.toml");
    std::fs::write(
        &path,
        format!(
            "tiers = [\"local\", \"mid\"]\n{extra}\n[server]\nshutdown_grace_secs = 1\n[providers.up]\nkind = \"openai\"\nbase_url = \"{upstream}\"\n[[models]]\nid = \"m\"\nprovider = \"up\"\ntier = \"mid\"\nprice = {{ input = 1.0, output = 3.0 }}\ncontext_window = 10000\n[spend]\ndatabase = \"sqlite://{}\"\n",
            dir.join("triage.db").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn keys_and_spend_commands() {
    let dir = tempdir("keys");
    let cfg = spend_config(&dir, "http://127.0.0.1:9/v1", "");
    let (ok, out, err) = run(bin()
        .args(["keys", "create", "--user", "alice", "--team", "eng", "--budget", "5/day", "--tiers", "mid", "--config"])
        .arg(&cfg));
    assert!(ok, "{err}");
    let secret = out.trim().to_owned();
    assert!(secret.starts_with("tr-"), "{out}");
    assert!(err.contains("for user alice (team eng)"), "{err}");
    let (ok, out, _) = run(bin().args(["keys", "list", "--config"]).arg(&cfg));
    assert!(ok);
    let line = out.lines().find(|l| l.contains("alice")).unwrap().to_owned();
    assert!(line.contains("eng") && line.contains(" 5 ") && line.ends_with("active"), "{line}");
    assert!(!out.contains(&secret[3..]), "the secret is never listed");
    let id = line.split_whitespace().next().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store =
        rt.block_on(triage_store::Store::connect(&format!("sqlite://{}", dir.join("triage.db").display()))).unwrap();
    let rec = rt.block_on(store.find_key(&secret)).unwrap().unwrap();
    assert_eq!(
        (rec.id.as_str(), rec.tiers.as_slice(), rec.budget_day),
        (id.as_str(), &["mid".to_owned()][..], Some(triage_core::cost::NanoUsd(5_000_000_000)))
    );
    assert!(run(bin().args(["keys", "revoke", &id, "--config"]).arg(&cfg)).0);
    assert!(!run(bin().args(["keys", "revoke", &id, "--config"]).arg(&cfg)).0);
    let (ok, _, err) = run(bin().args(["keys", "create", "--user", "bob", "--tiers", "nope", "--config"]).arg(&cfg));
    assert!(!ok && err.contains("unknown tier \"nope\""), "{err}");
    let (ok, out, err) = run(bin().args(["spend", "--by", "tier", "--format", "json", "--config"]).arg(&cfg));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["by"], "tier");
    assert!(!run(bin().args(["spend", "--by", "planet", "--config"]).arg(&cfg)).0);
}

/// Requests in flight when the gateway gets SIGTERM are all in the ledger afterwards: those that
/// finish within the grace period as answered, those cut at its end as `shutdown`.
#[test]
fn sigterm_loses_no_ledger_rows() {
    use triage_testkit::{FakeUpstream, Reply, Step};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let chunk = |c: &str, finish: &str| {
        format!("data: {{\"id\":\"s\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{c}\"}},\"finish_reason\":{finish}}}]}}\n\n")
    };
    let (quick, slow) = rt.block_on(async {
        // Quick streams end within the 1 s grace; slow ones (3 s) are cut at its end.
        let quick = vec![
            Step::Write(chunk("a", "null").into_bytes()),
            Step::Sleep(Duration::from_millis(400)),
            Step::Write((chunk("b", "\"stop\"") + "data: [DONE]\n\n").into_bytes()),
        ];
        let slow = vec![
            Step::Write(chunk("a", "null").into_bytes()),
            Step::Sleep(Duration::from_secs(3)),
            Step::Write((chunk("b", "\"stop\"") + "data: [DONE]\n\n").into_bytes()),
        ];
        (FakeUpstream::replay(Reply::steps(200, quick)).await, FakeUpstream::replay(Reply::steps(200, slow)).await)
    });
    let dir = tempdir("sigterm");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let extra = format!("[providers.slow]\nkind = \"openai\"\nbase_url = \"{}\"\n[[models]]\nid = \"s\"\nprovider = \"slow\"\ntier = \"mid\"\nprice = {{ input = 1.0, output = 3.0 }}\ncontext_window = 10000\n", slow.url());
    let cfg = spend_config(&dir, &quick.url(), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[spend]", &format!("{extra}[spend]"));
    std::fs::write(&cfg, text).unwrap();
    let mut child = bin()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let results = rt.block_on(async {
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let started = started.clone();
            let (c, base) = (c.clone(), base.clone());
            let model = if i % 2 == 0 { "m" } else { "s" };
            tasks.push(tokio::spawn(async move {
                let body = format!(
                    "{{\"model\":\"{model}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}"
                );
                let r = c
                    .post(format!("{base}/v1/chat/completions"))
                    .header("x-request-id", format!("sig-{i}"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                r.text().await.unwrap_or_default()
            }));
        }
        // SIGTERM once every stream has started (its response headers arrived).
        let deadline = Instant::now() + Duration::from_secs(10);
        while started.load(std::sync::atomic::Ordering::SeqCst) < 6 {
            assert!(Instant::now() < deadline, "streams did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for (i, body) in results.iter().enumerate() {
        if i % 2 == 0 {
            assert!(body.ends_with("data: [DONE]\n\n"), "quick stream {i} finished within the grace period: {body:?}");
        }
    }
    let store =
        rt.block_on(triage_store::Store::connect(&format!("sqlite://{}", dir.join("triage.db").display()))).unwrap();
    for i in 0..6 {
        let (status, model, _, _, _) = rt
            .block_on(store.request_summary(&format!("sig-{i}")))
            .unwrap()
            .unwrap_or_else(|| panic!("sig-{i} missing"));
        let expected = if i % 2 == 0 { ("200", "m") } else { ("shutdown", "s") };
        assert_eq!((status.as_str(), model.as_deref()), (expected.0, Some(expected.1)), "sig-{i}");
    }
}

#[test]
fn scan_prints_kinds_and_actions_but_never_values() {
    use std::io::Write;
    let dir = tempdir("scan");
    let mut child =
        bin().current_dir(&dir).args(["scan", "--json"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let text = r#"{"model":"auto","messages":[{"role":"user","content":"key AKIAQ3ZJ7V2KXWHD4TBM, mail dana.quill@corp-mail.net"}]}"#;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("AKIAQ3ZJ7V2KXWHD4TBM") && !stdout.contains("dana.quill"), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kinds: Vec<&str> = v.as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["aws_access_key", "email"]);
    assert_eq!(v[0]["location"], "messages[0]");
    assert_eq!(v[0]["action"], "local_only");
}

#[test]
fn models_shows_live_deployment_state_from_a_running_gateway() {
    let dir = tempdir("live");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = spend_config(&dir, "http://127.0.0.1:9/v1", "");
    let mut child = bin()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out, err) =
        run(bin().args(["models", "--gateway", &format!("http://127.0.0.1:{port}"), "--config"]).arg(&cfg));
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(ok, "{err}");
    let line = out
        .lines()
        .skip_while(|l| !l.starts_with("deployments"))
        .find(|l| l.starts_with("m "))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[..3], ["m", "up", "closed"], "{line}");
    assert!(out.contains("LATENCY MS") && out.contains("ERRORS"), "{out}");
}

/// `triage route` with each scorer: the decision as JSON, the same score twice (deterministic),
/// and a clear error naming the fetch script when the embedding encoder is missing.
#[test]
fn route_prints_the_decision_of_each_scorer() {
    let dir = tempdir("route");
    let prompt = "Prove that the square root of 2 is irrational, then compute 17*23.";
    let decide = |scorer: &str| -> serde_json::Value {
        let (ok, out, err) = run(bin().current_dir(&dir).args(["route", "--json", "--scorer", scorer, prompt]));
        assert!(ok, "{err}");
        serde_json::from_str(out.trim()).unwrap()
    };
    for scorer in ["lexical", "embedding", "random"] {
        let v = decide(scorer);
        assert_eq!(v["reason"]["scorer"], scorer, "{v}");
        assert_eq!(v["tiers"], 3);
        let score = v["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{v}");
        let t: Vec<f64> = v["thresholds"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(t.len(), 2);
        assert_eq!(v["tier_index"].as_u64().unwrap() as usize, t.iter().filter(|&&x| score >= x).count());
        assert_eq!(decide(scorer)["score"], v["score"], "{scorer} is deterministic");
    }
    assert!(decide("embedding")["reason"]["top_features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["feature"] == "embedding"));
    let missing = dir.join("no-encoder");
    let (ok, _, err) = run(bin().current_dir(&dir).env("TRIAGE_EMBEDDING_DIR", &missing).args([
        "route",
        "--scorer",
        "embedding",
        prompt,
    ]));
    assert!(!ok);
    assert!(err.contains("config.json") && err.contains("scripts/fetch-embedding-model.sh"), "{err}");
}

/// A one-file HTTP/1.1 server on 127.0.0.1 (std threads): `path` → `body` with Hugging Face's
/// `x-linked-size` / `x-linked-etag` headers, 404 for anything else.
fn file_server(path: &'static str, body: Vec<u8>, sha256: String) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            let mut reader = BufReader::new(sock.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let asked = line.split(' ').nth(1).unwrap_or_default();
            if asked == path {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-linked-size: {}\r\nx-linked-etag: \"{sha256}\"\r\nconnection: close\r\n\r\n",
                    body.len(),
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes());
                let _ = sock.write_all(&body);
            } else {
                let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        }
    });
    base
}

#[test]
fn pull_downloads_a_model_file_and_prints_its_path() {
    use sha2::Digest;
    let body = triage_testkit::gguf::TinyLlama::default().to_bytes();
    let sha: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let base = file_server("/org/tiny-GGUF/resolve/main/tiny.gguf", body.clone(), sha);
    let dir = tempdir("pull");
    let (ok, out, err) =
        run(bin().args(["pull", "org/tiny-GGUF", "tiny.gguf", "--base-url", &base, "--dir"]).arg(dir.join("models")));
    assert!(ok, "{err}");
    let path = dir.join("models").join("tiny.gguf");
    assert_eq!(out.trim(), path.display().to_string());
    assert_eq!(std::fs::read(&path).unwrap(), body);

    // The env var sets the server; the default folder is under $XDG_CACHE_HOME.
    let (ok, out, _) = run(bin()
        .args(["pull", "org/tiny-GGUF", "tiny.gguf"])
        .env("TRIAGE_HF_BASE_URL", &base)
        .env("XDG_CACHE_HOME", dir.join("cache")));
    assert!(ok);
    let path = dir.join("cache/triage/models/org--tiny-GGUF/tiny.gguf");
    assert_eq!(out.trim(), path.display().to_string());
    assert_eq!(std::fs::read(&path).unwrap(), body);

    let (ok, _, err) = run(bin().args(["pull", "org/tiny-GGUF", "nope.gguf", "--base-url", &base, "--dir"]).arg(&dir));
    assert!(!ok);
    assert!(err.starts_with("triage: ") && err.contains("HTTP 404 Not Found"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // `triage models` lists what was pulled into the cache.
    let (ok, out, _) = run(bin()
        .current_dir(&dir)
        .arg("models")
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("OLLAMA_MODELS", dir.join("no-store")));
    assert!(ok);
    let kb = body.len() as f64 / 1e3;
    assert!(
        out.contains(&format!("found on disk: org/tiny-GGUF/tiny.gguf (pulled, {kb:.1} kB) {}", path.display())),
        "{out}"
    );
    // With no config file, the pulled model is in the catalog: first of the local tier.
    let first = out.lines().nth(2).unwrap_or_default();
    assert!(first.starts_with("tiny ") && first.contains(" local ") && first.contains(" gguf "), "{out}");
}

#[test]
fn models_lists_the_ollama_store_found_on_disk() {
    let dir = tempdir("ollama");
    let store = dir.join("store");
    let hex = "ab".repeat(32);
    let manifest = store.join("manifests/registry.ollama.ai/library/qwen2.5/1.5b");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    let layers = serde_json::json!({"layers": [
        {"mediaType": "application/vnd.ollama.image.license", "digest": format!("sha256:{}", "0".repeat(64))},
        {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{hex}"), "size": 2500},
    ]});
    std::fs::write(&manifest, layers.to_string()).unwrap();
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    let blob = store.join(format!("blobs/sha256-{hex}"));
    std::fs::write(&blob, vec![0u8; 2500]).unwrap();

    let (ok, out, err) = run(bin().current_dir(&dir).arg("models").env("OLLAMA_MODELS", &store));
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("found on disk:")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(line, format!("found on disk: qwen2.5:1.5b (ollama, 2.5 kB) {}", blob.display()));
    // The JSON output stays the catalog alone; without a store there are no such lines.
    let (ok, out, _) = run(bin().current_dir(&dir).args(["models", "--json"]).env("OLLAMA_MODELS", &store));
    assert!(ok && serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{out}");
    let (ok, out, _) = run(bin().current_dir(&dir).arg("models").env("OLLAMA_MODELS", dir.join("none")));
    assert!(ok && !out.contains("found on disk"), "{out}");
}

/// A GGUF registered with `triage models add` is in the built-in catalog: `triage serve` with no
/// config file and no API keys answers `model: "local"` with it, in-process, exactly as the
/// engine run directly on the same file answers; `remove` takes it out again.
#[test]
fn a_registered_gguf_is_served_by_the_built_in_catalog() {
    use triage_local::{Engine, EngineConfig, GenerateRequest, Message, Sampling};
    let dir = tempdir("local-default");
    let file = dir.join("weights").join("tiny.gguf");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    triage_testkit::gguf::TinyLlama::default().write(&file).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    let config_home = dir.join("config");
    let with_home = |c: &mut Command| {
        c.current_dir(&dir).env("XDG_CONFIG_HOME", &config_home);
    };

    let mut c = bin();
    with_home(&mut c);
    let (ok, out, err) = run(c.args(["models", "add", "weights/tiny.gguf", "--name", "Tiny Chat"]));
    assert!(ok, "{err}");
    let abs = std::fs::canonicalize(&file).unwrap();
    assert_eq!(
        out.trim_end(),
        format!(
            "registered Tiny Chat (llama, {:.1} kB, trained context 2048 tokens) {}\nchat template: the file's own chat template",
            size as f64 / 1e3,
            abs.display()
        )
    );
    let mut c = bin();
    with_home(&mut c);
    let (ok, _, err) = run(c.args(["models", "add", "README-missing.gguf"]));
    assert!(!ok && err.contains("cannot register README-missing.gguf"), "{err}");

    let mut c = bin();
    with_home(&mut c);
    let (ok, out, err) = run(c.arg("models"));
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.starts_with("tiny-chat ")).unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cells[1], cells[2], cells[6], *cells.last().unwrap()), ("local", "gguf", "2048", "yes"), "{row}");
    assert!(out.contains(&format!("found on disk: Tiny Chat (registered, {:.1} kB)", size as f64 / 1e3)), "{out}");

    // What the engine itself answers, greedily, in 6 tokens.
    let question = "Name three colours.";
    let expected = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let e = Engine::load(EngineConfig {
            model_path: abs.clone(),
            parallel: 1,
            queue: 0,
            context: 512,
            threads: 1,
            chat_template: None,
        })
        .unwrap();
        e.generate(GenerateRequest {
            messages: vec![Message::new("user", question)],
            max_tokens: Some(6),
            sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
            ..GenerateRequest::default()
        })
        .unwrap()
        .collect()
        .await
        .unwrap()
    });

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = bin();
    with_home(&mut c);
    let mut child = c
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let body = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .body(
                serde_json::json!({
                    "model": "local",
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 6,
                    "temperature": 0,
                })
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap()
    });
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert_eq!(body["choices"][0]["message"]["content"], expected.text.as_str(), "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], expected.usage.prompt_tokens, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 6, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // `init` writes the found model into the file it makes.
    let mut c = bin();
    with_home(&mut c);
    let (ok, out, err) = run(c.args(["init", "with-local.toml"]));
    assert!(ok && out.contains("with the local model"), "{out}{err}");
    let text = std::fs::read_to_string(dir.join("with-local.toml")).unwrap();
    assert!(text.contains(&format!("model_path = \"{}\"", abs.display())), "{text}");

    let mut c = bin();
    with_home(&mut c);
    let (ok, out, err) = run(c.args(["models", "remove", "Tiny Chat"]));
    assert!(ok, "{err}");
    assert_eq!(out.trim_end(), format!("removed Tiny Chat ({} is left as it is)", abs.display()));
    assert!(file.exists());
    let mut c = bin();
    with_home(&mut c);
    let (ok, out, _) = run(c.args(["models", "--json"]));
    assert!(ok && !out.contains("tiny-chat"), "{out}");
}
