//! The real `triage` binary, run in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_triage"));
    c.env_remove("OPENAI_API_KEY").env_remove("ANTHROPIC_API_KEY").env_remove("TRIAGE_CONFIG");
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
/// unavailable instead of crashing, answers 503 to `auto`, and exits 0 on SIGTERM.
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
        assert_eq!(r.status(), 503);
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
