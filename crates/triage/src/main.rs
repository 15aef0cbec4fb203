//! The `triage` binary: argument parsing and wiring only. The logic lives in `triage-core`
//! (decisions) and `triage-gateway` (I/O).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use triage_core::catalog::Catalog;
use triage_core::config;

/// Triage: an LLM gateway that sends every request to the cheapest model that can do it well.
#[derive(Parser)]
#[command(name = "triage", version, about, long_about = None)]
struct Cli {
    /// Config file. Without this flag, ./triage.toml is used if it exists, else the built-in defaults.
    #[arg(long, global = true, env = "TRIAGE_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (OpenAI-compatible API under /v1).
    Serve {
        /// Listen address, overriding `server.listen` (e.g. 127.0.0.1:8787).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Write a commented example config (the built-in defaults) to a file.
    Init {
        /// Where to write it.
        #[arg(default_value = "triage.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the catalog: id, tier, provider, prices, context window, capabilities, availability.
    Models {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("triage: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn load_catalog(path: Option<&Path>) -> Result<Catalog, String> {
    let r = match path {
        Some(p) => config::load(p, true),
        None => config::load(Path::new("triage.toml"), false),
    };
    r.map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { listen } => {
            let mut catalog = load_catalog(cli.config.as_deref())?;
            if let Some(addr) = listen {
                catalog.set_listen(addr);
            }
            runtime()?.block_on(async {
                let addr = catalog.server().listen;
                let listener =
                    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                tracing::info!(
                    %addr,
                    config = catalog.source(),
                    models = catalog.models().len(),
                    "triage listening; point OpenAI clients at http://{addr}/v1"
                );
                triage_gateway::serve(catalog, listener, triage_gateway::shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        Command::Init { path, force } => {
            if path.exists() && !force {
                return Err(format!("{} exists; pass --force to overwrite it", path.display()));
            }
            std::fs::write(&path, config::DEFAULT_CONFIG)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!("wrote {}", path.display());
            Ok(())
        }
        Command::Models { json } => {
            let catalog = load_catalog(cli.config.as_deref())?;
            let state = triage_gateway::AppState::new(catalog).map_err(|e| e.to_string())?;
            runtime()?.block_on(triage_gateway::health::probe_all(&state));
            print_models(&state, json);
            Ok(())
        }
    }
}

fn print_models(state: &triage_gateway::AppState, json: bool) {
    let c = &state.catalog;
    let rows: Vec<[String; 9]> = c
        .models()
        .iter()
        .map(|m| {
            let caps: Vec<&str> = [
                ("tools", m.capabilities.tools),
                ("vision", m.capabilities.vision),
                ("json_schema", m.capabilities.json_schema),
            ]
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
            .collect();
            let available = match state.provider_unavailable(m.provider) {
                None => "yes".to_owned(),
                Some(why) => format!("no ({why})"),
            };
            [
                m.id.clone(),
                c.tiers()[m.tier].clone(),
                c.providers()[m.provider].name.clone(),
                format!("{}", m.price.input.as_usd()),
                format!("{}", m.price.cached_input.as_usd()),
                format!("{}", m.price.output.as_usd()),
                m.context_window.to_string(),
                if caps.is_empty() { "-".to_owned() } else { caps.join(",") },
                available,
            ]
        })
        .collect();
    const HEAD: [&str; 9] =
        ["MODEL", "TIER", "PROVIDER", "IN $/M", "CACHED $/M", "OUT $/M", "CONTEXT", "CAPABILITIES", "AVAILABLE"];
    const KEYS: [&str; 9] = [
        "model",
        "tier",
        "provider",
        "input_usd_per_million",
        "cached_input_usd_per_million",
        "output_usd_per_million",
        "context_window",
        "capabilities",
        "available",
    ];
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::Value::Object(
                    KEYS.iter().zip(r).map(|(k, v)| ((*k).to_owned(), v.clone().into())).collect(),
                )
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return;
    }
    let mut widths = HEAD.map(str::len);
    for r in &rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    println!("catalog: {}", c.source());
    println!("{}", line(HEAD.to_vec()));
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}
