//! The `triage` binary: argument parsing and wiring only. The logic lives in `triage-core`
//! (decisions) and `triage-gateway` (I/O).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod admin;
mod evals_cmd;
mod local_models;
mod ollama;
mod paths;
mod pull;
mod scan;

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
    /// Print the catalog: id, tier, provider, prices, context window, capabilities, availability;
    /// then the model files found on disk: those registered with `triage models add`, those
    /// `triage pull` wrote, and the Ollama store's ($OLLAMA_MODELS, else ~/.ollama/models).
    /// Without a config file, the first of them is in the catalog, served in-process.
    #[command(args_conflicts_with_subcommands = true)]
    Models {
        /// Register or forget a GGUF file.
        #[command(subcommand)]
        action: Option<ModelsAction>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also show each deployment's live state (breaker, cooldown, recent latency, error
        /// rate) from a running gateway, e.g. http://127.0.0.1:8787.
        #[arg(long, value_name = "URL")]
        gateway: Option<String>,
    },
    /// Print the sensitive content the guard finds in text or a JSON chat request on stdin, and
    /// what the configured policy does with it (never the matched text).
    Scan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download a model file (GGUF) from a Hugging Face-style file server, resuming a partial
    /// download and checking its size and SHA-256; prints the file's path.
    Pull {
        /// Repository, e.g. Qwen/Qwen2.5-1.5B-Instruct-GGUF.
        repo: String,
        /// File in the repository, e.g. qwen2.5-1.5b-instruct-q4_k_m.gguf.
        file: String,
        /// File server: GET {base-url}/{repo}/resolve/main/{file}.
        #[arg(long, env = "TRIAGE_HF_BASE_URL", default_value = pull::DEFAULT_BASE_URL)]
        base_url: String,
        /// Folder to write to (default: ~/.cache/triage/models/{repo with / replaced by --}).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Manage virtual keys (create, list, revoke).
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Spend report: requests, tokens, cost, the "always frontier" cost and the saving.
    Spend(admin::SpendArgs),
    /// Budgets of the current day and month: limit, spent, reserved (and the age of the oldest
    /// reservation); `triage budgets release KEY` gives back a key's stale reservations.
    Budgets(admin::BudgetsArgs),
    /// Production evaluation (`[evals]`): the report of shadow-evaluated requests.
    #[command(subcommand)]
    Evals(evals_cmd::EvalsCommand),
    /// Print the router's decision for a prompt (or a JSON chat request on stdin) without calling any model.
    Route {
        /// The prompt, sent as one user message. Without it, a JSON chat request is read from stdin.
        prompt: Option<String>,
        /// lexical, embedding or random (default: the configuration's [router] scorer, else lexical).
        #[arg(long)]
        scorer: Option<String>,
        /// Model file (default: the configuration's, else the scorer's shipped models/<scorer>-v1.json).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Train a scorer (lexical or embedding) and write a model file with its metadata.
    Train {
        /// Data folder (RouteLLM layout and/or arena-bench); repeat for several.
        #[arg(long, required_unless_present = "from_evals")]
        data: Vec<PathBuf>,
        /// lexical or embedding.
        #[arg(long, default_value = "lexical")]
        scorer: String,
        /// Benchmark to leave out of training (mmlu, gsm8k, mt-bench, arena-bench); repeatable.
        /// Each one left out is evaluated with the new model (held out).
        #[arg(long)]
        exclude: Vec<String>,
        /// Output model file (default: models/<scorer>-v1.json).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        hp: TrainFlags,
        /// Sample for the default thresholds (60/40 for 2 tiers, 50/30/20 for 3).
        #[arg(long, default_value = "arena-bench")]
        calibrate_on: String,
        #[command(flatten)]
        evals: evals_cmd::TrainFromEvals,
        /// Training sets: benchmark names or simple-JSONL files (any number of models per row;
        /// lexical and embedding use the files with the --weak/--strong pair); repeatable
        /// (default: every benchmark but --exclude).
        #[arg(long)]
        train_on: Vec<String>,
        /// Quality scorer: each tier's model profile, cheapest first.
        #[arg(long, value_delimiter = ',', default_values_t = [
            "mistralai/Mistral-7B-Instruct-v0.1".to_owned(),
            "mistralai/Mixtral-8x7B-Instruct-v0.1".to_owned(),
            "gpt-4-1106-preview".to_owned(),
        ])]
        profiles: Vec<String>,
        /// Quality scorer: each tier's price, USD per million tokens, cheapest first (λ's unit).
        #[arg(long, value_delimiter = ',')]
        tier_prices: Vec<f64>,
        /// Quality scorer: the margin δ (standardised quality units) written into the file.
        #[arg(long, default_value_t = 0.1)]
        quality_margin: f32,
        /// Quality scorer: a cost weight λ instead of a margin.
        #[arg(long)]
        quality_lambda: Option<f32>,
        #[command(flatten)]
        quality: QualityFlags,
    },
    /// Replay a benchmark through a router: sweep, PGR, APGR, CPT, random and oracle baselines, JSON and SVG.
    Eval {
        /// Data folder; repeat for several (training splits use every benchmark found).
        #[arg(long, required = true)]
        data: Vec<PathBuf>,
        /// mmlu, gsm8k, mt-bench, arena-bench, or a .jsonl file in the simple format.
        #[arg(long)]
        benchmark: String,
        /// lexical, embedding, random, or quality (the per-model quality predictor; training splits only).
        #[arg(long, default_value = "lexical")]
        router: String,
        /// shipped (the model as is), leave-benchmark-out (= leave-dataset-out), or grouped-5-fold.
        #[arg(long, default_value = "shipped")]
        split: String,
        /// Model file for --split shipped (default: the shipped model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Benchmarks to train on for the training splits (default: all known but the evaluated one).
        #[arg(long)]
        train_on: Vec<String>,
        /// Weak and strong model prices, USD per million tokens (RouteLLM's Mixtral and GPT-4 figures).
        #[arg(long, num_args = 2, default_values_t = [0.24, 24.7])]
        prices: Vec<f64>,
        /// Folder for the JSON report and the SVG plot.
        #[arg(long, default_value = "target/eval")]
        out_dir: PathBuf,
        /// Multi-tier routing (arena-bench): tier models, cheapest first, comma-separated, e.g.
        /// mistralai/Mistral-7B-Instruct-v0.1,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview.
        #[arg(long, value_delimiter = ',')]
        tiers: Vec<String>,
        #[command(flatten)]
        hp: TrainFlags,
        #[command(flatten)]
        quality: QualityFlags,
    },
    /// Distil static token embeddings from all-MiniLM-L6-v2 (Model2Vec method: every vocabulary
    /// token through the encoder once, PCA, i8) into a small table for the quality predictor.
    DistillStatic {
        /// The encoder's directory (default: as for `train`).
        #[arg(long)]
        encoder: Option<PathBuf>,
        /// Dimensions kept after PCA.
        #[arg(long, default_value_t = 64)]
        dim: usize,
        /// Output table.
        #[arg(long, default_value = "models/static-minilm-64.bin")]
        out: PathBuf,
    },
    /// The local engine's worker process, started by `triage serve` (not by hand): it connects
    /// to the socket its environment names and runs the model it is given.
    #[command(name = "engine-worker", hide = true)]
    EngineWorker,
    /// Set a model's thresholds from a sample of prompts, for target shares per tier or a target cost.
    Calibrate {
        /// Data folder(s) holding the sample.
        #[arg(long, required_unless_present = "from_evals")]
        data: Vec<PathBuf>,
        /// The sample: a benchmark name or a .jsonl file (prompts only are needed).
        #[arg(long, default_value = "arena-bench")]
        sample: String,
        /// lexical or embedding.
        #[arg(long, default_value = "lexical")]
        scorer: String,
        /// Model file to read (default: the scorer's shipped model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Where to write the calibrated model (default: models/<scorer>-v1.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Embedding scorer: the encoder's directory (default: as for `train`).
        #[arg(long)]
        encoder: Option<PathBuf>,
        /// Target share per tier, cheapest first (e.g. 50,30,20).
        #[arg(long, value_delimiter = ',', conflicts_with = "cost_per_1000")]
        shares: Option<Vec<f64>>,
        /// Target cost, USD per 1,000 requests.
        #[arg(long)]
        cost_per_1000: Option<f64>,
        /// Each tier's price, USD per million tokens, cheapest first (for --cost-per-1000).
        #[arg(long, value_delimiter = ',', default_values_t = [0.24, 24.7])]
        tier_prices: Vec<f64>,
        /// Tokens per request (prompt + answer) for --cost-per-1000.
        #[arg(long, default_value_t = 1000.0)]
        tokens_per_request: f64,
        /// Relative split among the tiers above the cheapest (default equal).
        #[arg(long, value_delimiter = ',')]
        mix: Option<Vec<f64>>,
        #[command(flatten)]
        evals: evals_cmd::CalibrateFromEvals,
        /// Quality scorer: set the cost weight λ instead of the margin δ.
        #[arg(long)]
        lambda: bool,
        /// Quality scorer: target mean quality as a share of always-the-top-tier's on the sample
        /// (which then needs every tier profile's quality), instead of --cost-per-1000.
        #[arg(long, conflicts_with = "cost_per_1000")]
        quality_share: Option<f64>,
    },
}

/// Hyper-parameters of the per-model quality predictor (`--router quality`, issue 14).
#[derive(clap::Args)]
struct QualityFlags {
    /// Quality predictor: rank of the prompt projection (numbers per model vector).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Quality predictor: epochs.
    #[arg(long, default_value_t = 6)]
    quality_epochs: usize,
    /// Quality predictor: hashed buckets (0 = dense features only).
    #[arg(long, default_value_t = 1 << 14)]
    quality_buckets: u32,
    /// Quality predictor: L2 on the hashed n-gram projection rows.
    #[arg(long, default_value_t = 1e-3)]
    quality_l2_hashed: f32,
    /// Quality predictor: dataset balance exponent (cells weigh n_dataset^-x; 0.5 = sqrt).
    #[arg(long, default_value_t = 0.5)]
    quality_balance: f32,
    /// Quality predictor: train on the evaluated pair (--weak, --strong) only.
    #[arg(long)]
    quality_pair_only: bool,
    /// Quality predictor: fit raw qualities instead of the within-prompt differences between models.
    #[arg(long)]
    quality_raw: bool,
    /// Quality predictor: a static token embedding table (`triage distill-static`) whose mean
    /// over the request's tokens is appended to the dense features.
    #[arg(long)]
    static_embed: Option<PathBuf>,
    /// The WordPiece tokenizer of --static-embed (default: the encoder directory's tokenizer.json).
    #[arg(long)]
    static_tokenizer: Option<PathBuf>,
}

impl QualityFlags {
    fn config(&self, hp: &TrainFlags) -> Result<triage_eval::quality::QualityConfig, String> {
        let extra: Option<(String, triage_eval::quality::ExtraFeatures)> = match &self.static_embed {
            Some(bin) => {
                let tok =
                    self.static_tokenizer.clone().unwrap_or_else(|| triage_embed::default_dir().join("tokenizer.json"));
                let se = triage_embed::StaticEmbedding::load(bin, &tok).map_err(|e| e.to_string())?;
                let f: triage_eval::quality::ExtraFeatures =
                    std::sync::Arc::new(move |rt: &triage_core::router::features::RequestText| se.embed(&rt.text));
                Some((bin.display().to_string(), f))
            }
            None => None,
        };
        Ok(triage_eval::quality::QualityConfig {
            rank: self.rank,
            buckets: self.quality_buckets,
            epochs: self.quality_epochs,
            lr: hp.lr,
            l2_hashed: self.quality_l2_hashed,
            l2: hp.l2,
            balance: self.quality_balance,
            seed: hp.seed,
            extra,
            within_prompt: !self.quality_raw,
            only_models: self.quality_pair_only.then(|| vec![hp.weak.clone(), hp.strong.clone()]),
        })
    }
}

/// Training hyper-parameters shared by `train` and `eval`.
#[derive(clap::Args)]
struct TrainFlags {
    /// Label: strong-better (weak worse than strong by more than --margin), gain (soft), weak-fails.
    #[arg(long, default_value = "strong-better")]
    label: String,
    /// Margin for strong-better, as a fraction of the quality range (judge scores: 1/9 per point).
    #[arg(long, default_value_t = 0.0)]
    margin: f64,
    /// Training-set weighting: none, sqrt, equal.
    #[arg(long, default_value = "none")]
    balance: String,
    /// Hashed buckets (power of two).
    #[arg(long, default_value_t = 1 << 14)]
    buckets: u32,
    /// Epochs.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// AdaGrad learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// L2 penalty on the dense weights.
    #[arg(long, default_value_t = 1e-4)]
    l2: f32,
    /// L2 penalty on the hashed n-gram weights.
    #[arg(long, default_value_t = 3e-2)]
    l2_hashed: f32,
    /// Seed (shuffling; the random router's seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The weak (cheaper) model's name in the data.
    #[arg(long, default_value = triage_eval::data::WEAK)]
    weak: String,
    /// The strong model's name in the data.
    #[arg(long, default_value = triage_eval::data::STRONG)]
    strong: String,
    /// Embedding scorer: the encoder's directory (default: $TRIAGE_EMBEDDING_DIR, else
    /// ~/.cache/triage/all-MiniLM-L6-v2, where scripts/fetch-embedding-model.sh puts it).
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// Embedding scorer: tokens of each prompt the encoder reads when training (at most 256).
    #[arg(long, default_value_t = triage_embed::DEFAULT_MAX_TOKENS)]
    max_tokens: usize,
    /// Embedding scorer: file caching computed embeddings between runs ("" for none).
    #[arg(long, default_value = "target/eval/embedding-cache.bin")]
    embedding_cache: PathBuf,
}

impl TrainFlags {
    /// The embedding scorer's setup: the encoder read at `max_tokens` (the head's, when a head
    /// is given, else `--max-tokens`), the head, the cache file.
    fn embedding(
        &self,
        head: Option<triage_embed::EmbeddingHead>,
    ) -> Result<triage_eval::embedding::EmbeddingSetup, String> {
        let dir = self.encoder.clone().unwrap_or_else(triage_embed::default_dir);
        let max_tokens = head.as_ref().map_or(self.max_tokens, |h| h.file().max_tokens);
        let encoder = triage_embed::Encoder::load(&dir, max_tokens).map_err(|e| e.to_string())?;
        let cache = (!self.embedding_cache.as_os_str().is_empty()).then(|| self.embedding_cache.clone());
        Ok(triage_eval::embedding::EmbeddingSetup { encoder: std::sync::Arc::new(encoder), head, cache })
    }

    fn config(&self) -> Result<triage_eval::train::TrainConfig, String> {
        Ok(triage_eval::train::TrainConfig {
            buckets: self.buckets,
            epochs: self.epochs,
            lr: self.lr,
            l2: self.l2,
            l2_hashed: self.l2_hashed,
            label: self.label.parse().map_err(|e: triage_eval::EvalError| e.to_string())?,
            margin: self.margin,
            balance: self.balance.parse().map_err(|e: triage_eval::EvalError| e.to_string())?,
            seed: self.seed,
            weak: self.weak.clone(),
            strong: self.strong.clone(),
        })
    }
}

/// `triage models add | remove`.
#[derive(Debug, Subcommand)]
enum ModelsAction {
    /// Register a GGUF model file (its header is read and checked; the file is not copied), so
    /// that `triage models` lists it and `triage serve` without a config file runs it.
    Add {
        /// The GGUF file.
        path: PathBuf,
        /// Name to register it under (default: the model's `general.name`, else the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Forget a registered model (the file stays).
    Remove {
        /// Its registered name.
        name: String,
    },
}

fn load_embedding_head(path: Option<&Path>) -> Result<triage_embed::EmbeddingHead, String> {
    match path {
        Some(p) => {
            let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            triage_embed::EmbeddingHead::from_json(&s).map_err(|e| format!("{}: {e}", p.display()))
        }
        None => triage_embed::EmbeddingHead::from_json(triage_embed::DEFAULT_HEAD_JSON).map_err(|e| e.to_string()),
    }
}

fn load_lexical(path: Option<&Path>) -> Result<triage_core::router::LexicalModel, String> {
    use triage_core::router::{LexicalModel, DEFAULT_MODEL_JSON};
    match path {
        Some(p) => {
            let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            LexicalModel::from_json(&s).map_err(|e| format!("{}: {e}", p.display()))
        }
        None => LexicalModel::from_json(DEFAULT_MODEL_JSON).map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    if let Command::EngineWorker = cli.command {
        return triage_local::worker_main(triage_local::WorkerOptions::default());
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("triage: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `TRIAGE_LOG`, else `info`, with llama.cpp's own log (target `llama-cpp-2`: a line per model
/// metadata key at load) at `warn`, and the binding's notes about that log at `error`.
const DEFAULT_LOG: &str = "info,llama-cpp-2=warn,llama_cpp_2=error";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// The catalog of `--config`, else `./triage.toml`, else the built-in defaults, to which a model
/// file found on disk is added as the first choice of the local tier (see [`local_models`]).
fn load_catalog(path: Option<&Path>) -> Result<Catalog, String> {
    let r = match path {
        Some(p) => config::load(p, true),
        None => config::load(Path::new("triage.toml"), false),
    };
    let catalog = r.map_err(|e| e.to_string())?;
    if catalog.source() != config::DEFAULT_SOURCE {
        return Ok(catalog);
    }
    match local_models::find_default() {
        Some(found) => {
            tracing::info!(model = %found.model_path.display(), found = %found.found_in, "serving a local model found on disk");
            config::parse(&config::with_local_model(config::DEFAULT_CONFIG, &found), config::DEFAULT_SOURCE)
                .map_err(|e| e.to_string())
        }
        None => Ok(catalog),
    }
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
            let found = local_models::find_default();
            let text = match &found {
                Some(f) => config::with_local_model(config::DEFAULT_CONFIG, f),
                None => config::DEFAULT_CONFIG.to_owned(),
            };
            std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            match found {
                Some(f) => println!("wrote {} (with the local model {})", path.display(), f.model_path.display()),
                None => println!("wrote {}", path.display()),
            }
            Ok(())
        }
        Command::Scan { json } => {
            let catalog = load_catalog(cli.config.as_deref())?;
            scan::run(&catalog, json)
        }
        Command::Pull { repo, file, base_url, dir } => {
            use std::io::IsTerminal;
            let dir = dir.unwrap_or_else(|| pull::default_dir(&repo));
            let req = pull::PullRequest { base_url, repo, file, dir, progress: std::io::stderr().is_terminal() };
            let client = pull::http_client().map_err(|e| e.to_string())?;
            let path = runtime()?.block_on(pull::pull(&client, &req)).map_err(|e| e.to_string())?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Keys(cmd) => {
            let catalog = load_catalog(cli.config.as_deref())?;
            runtime()?.block_on(admin::keys(&catalog, cmd))
        }
        Command::Spend(args) => {
            let catalog = load_catalog(cli.config.as_deref())?;
            runtime()?.block_on(admin::spend(&catalog, args))
        }
        Command::Budgets(args) => {
            let catalog = load_catalog(cli.config.as_deref())?;
            runtime()?.block_on(admin::budgets(&catalog, args))
        }
        Command::Evals(cmd) => {
            let catalog = load_catalog(cli.config.as_deref())?;
            runtime()?.block_on(evals_cmd::evals(&catalog, cmd))
        }
        Command::Train { evals, out, .. } if evals.from_evals => {
            let catalog = load_catalog(cli.config.as_deref())?;
            runtime()?.block_on(evals_cmd::train(&catalog, evals, out))
        }
        Command::Calibrate { evals, model, out, .. } if evals.from_evals => {
            let catalog = load_catalog(cli.config.as_deref())?;
            runtime()?.block_on(evals_cmd::calibrate(&catalog, evals, model, out))
        }
        Command::Models { action: Some(action), .. } => models_action(action),
        Command::Models { action: None, json, gateway } => {
            let catalog = load_catalog(cli.config.as_deref())?;
            let rt = runtime()?;
            // Local engines start their worker on the runtime; wait for their models to load
            // (or fail) so that the table says whether they can serve.
            let state = rt.block_on(async {
                let state = triage_gateway::AppState::new(catalog)?;
                for e in state.providers.iter().filter_map(|p| p.local_engine()) {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(120), e.ready()).await;
                }
                triage_gateway::health::probe_all(&state).await;
                Ok::<_, String>(state)
            })?;
            print_models(&state, json);
            if !json {
                let found = local_models::find_all(
                    &local_models::registry_path(),
                    &pull::models_root(),
                    &ollama::default_root(),
                )?;
                print_on_disk(&found);
            }
            match gateway {
                Some(url) => rt.block_on(print_deployments(&url, json)),
                None => Ok(()),
            }
        }
        Command::Route { prompt, scorer, model, json } => {
            let catalog = load_catalog(cli.config.as_deref())?;
            route_cmd(&catalog, prompt, scorer.as_deref(), model.as_deref(), json)
        }
        Command::Train {
            data,
            scorer,
            exclude,
            out,
            hp,
            calibrate_on,
            evals: _,
            train_on,
            profiles,
            tier_prices,
            quality_margin,
            quality_lambda,
            quality,
        } => {
            let scorer: triage_core::router::ScorerKind = scorer.parse().map_err(|e| format!("{e}"))?;
            if scorer == triage_core::router::ScorerKind::Quality {
                let out = out.unwrap_or_else(|| PathBuf::from("models/quality-v1.json"));
                let static_embed = quality.static_embed.as_ref().map(|bin| {
                    let same_dir = bin.parent().map(Path::to_path_buf).unwrap_or_default()
                        == out.parent().map(Path::to_path_buf).unwrap_or_default();
                    match (same_dir, bin.file_name()) {
                        (true, Some(f)) => f.to_string_lossy().into_owned(),
                        _ => std::fs::canonicalize(bin).unwrap_or_else(|_| bin.clone()).display().to_string(),
                    }
                });
                let sets = if train_on.is_empty() {
                    triage_eval::data::BENCHMARKS
                        .iter()
                        .filter(|b| !exclude.iter().any(|e| e == *b))
                        .map(|b| (*b).to_owned())
                        .collect()
                } else {
                    train_on
                };
                let args = triage_eval::quality::QualityTrainArgs {
                    data,
                    sets,
                    qc: quality.config(&hp)?,
                    static_embed,
                    profiles,
                    tier_prices,
                    rule: match quality_lambda {
                        Some(l) => triage_eval::quality::RuleSpec::Lambda(l),
                        None => triage_eval::quality::RuleSpec::Margin(quality_margin),
                    },
                    out,
                };
                print!("{}", triage_eval::quality::train_cmd(&args).map_err(|e| e.to_string())?);
                return Ok(());
            }
            let embedding = match scorer {
                triage_core::router::ScorerKind::Embedding => Some(hp.embedding(None)?),
                _ => None,
            };
            let name = match scorer {
                triage_core::router::ScorerKind::Embedding => "embedding",
                _ => "lexical",
            };
            let out = out.unwrap_or_else(|| PathBuf::from(format!("models/{name}-v1.json")));
            let args = triage_eval::commands::TrainArgs {
                data,
                exclude,
                sets: train_on,
                calibrate_on,
                cfg: hp.config()?,
                scorer,
                embedding,
                out,
            };
            println!("{}", triage_eval::commands::train_cmd(&args).map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::Eval { data, benchmark, router, split, model, train_on, prices, out_dir, tiers, hp, quality } => {
            let split_kind: triage_eval::replay::Split =
                split.parse().map_err(|e: triage_eval::EvalError| e.to_string())?;
            let train_sets = if train_on.is_empty() {
                triage_eval::data::BENCHMARKS.iter().map(|s| (*s).to_owned()).filter(|b| *b != benchmark).collect()
            } else {
                train_on.clone()
            };
            if router == "quality" {
                let cfg = triage_eval::replay::EvalConfig {
                    data,
                    benchmark,
                    router: triage_core::router::ScorerKind::Lexical,
                    split: split_kind,
                    model: None,
                    embedding: None,
                    train_sets,
                    train: hp.config()?,
                    price_weak: prices.first().copied().unwrap_or(0.24),
                    price_strong: prices.get(1).copied().unwrap_or(24.7),
                    progress: true,
                };
                let qc = quality.config(&hp)?;
                let out = triage_eval::quality::eval_cmd(&cfg, &qc, &tiers, &split, &out_dir);
                print!("{}", out.map_err(|e| e.to_string())?);
                return Ok(());
            }
            let router: triage_core::router::ScorerKind = router.parse().map_err(|e| format!("{e}"))?;
            let (model, embedding) = match (router, split_kind) {
                (triage_core::router::ScorerKind::Lexical, triage_eval::replay::Split::Shipped) => {
                    (Some(load_lexical(model.as_deref())?), None)
                }
                (triage_core::router::ScorerKind::Embedding, triage_eval::replay::Split::Shipped) => {
                    (None, Some(hp.embedding(Some(load_embedding_head(model.as_deref())?))?))
                }
                (triage_core::router::ScorerKind::Embedding, _) => (None, Some(hp.embedding(None)?)),
                _ => (None, None),
            };
            let train_sets = if train_on.is_empty() {
                triage_eval::data::BENCHMARKS.iter().map(|s| (*s).to_owned()).filter(|b| *b != benchmark).collect()
            } else {
                train_on
            };
            let cfg = triage_eval::replay::EvalConfig {
                data,
                benchmark,
                router,
                split: split_kind,
                model,
                embedding,
                train_sets,
                train: hp.config()?,
                price_weak: prices.first().copied().unwrap_or(0.24),
                price_strong: prices.get(1).copied().unwrap_or(24.7),
                progress: true,
            };
            let out = if tiers.is_empty() {
                triage_eval::commands::eval_cmd(&cfg, &split, &out_dir)
            } else {
                triage_eval::commands::multi_cmd(&cfg, &tiers, &split, &out_dir)
            };
            print!("{}", out.map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::DistillStatic { encoder, dim, out } => {
            let dir = encoder.unwrap_or_else(triage_embed::default_dir);
            let enc = triage_embed::Encoder::load(&dir, 3).map_err(|e| e.to_string())?;
            let pb = indicatif::ProgressBar::new(enc.vocab_size() as u64);
            let bytes = triage_embed::static_embed::distill(&enc, dim, &out, |done, _| pb.set_position(done as u64))
                .map_err(|e| e.to_string())?;
            pb.finish_and_clear();
            println!("wrote {} ({bytes} bytes): {} tokens × {dim} (i8 + f32 scale)", out.display(), enc.vocab_size());
            Ok(())
        }
        Command::EngineWorker => Err("engine-worker is run by `triage serve`".into()),
        Command::Calibrate {
            data,
            sample,
            scorer,
            model,
            out,
            encoder,
            shares,
            cost_per_1000,
            tier_prices,
            tokens_per_request,
            mix,
            evals: _,
            lambda,
            quality_share,
        } => {
            let scorer: triage_core::router::ScorerKind = scorer.parse().map_err(|e| format!("{e}"))?;
            if scorer == triage_core::router::ScorerKind::Quality {
                let path = model.ok_or("--scorer quality: give the model file (--model models/quality-v1.json)")?;
                let p = path.display().to_string();
                let json = std::fs::read_to_string(&path).map_err(|e| format!("{p}: {e}"))?;
                let mut file = triage_eval::quality::QualityFile::from_json(&json).map_err(|e| format!("{p}: {e}"))?;
                let enc = encoder.as_ref().map(|e| e.display().to_string());
                let extra = match &file.static_embed {
                    Some(t) => Some(triage_gateway::scoring::static_extra(&p, t, enc.as_deref())?),
                    None => None,
                };
                let target = match (cost_per_1000, quality_share) {
                    (Some(c), _) => triage_eval::quality::QualityTarget::CostPer1000(c),
                    (None, Some(q)) => triage_eval::quality::QualityTarget::QualityShare(q),
                    (None, None) => return Err("--scorer quality: give --cost-per-1000 or --quality-share".into()),
                };
                let ds = triage_eval::data::load(&data, &sample, true).map_err(|e| e.to_string())?;
                let text = triage_eval::quality::calibrate_cmd(
                    &mut file,
                    extra.as_ref(),
                    &ds,
                    &tier_prices,
                    tokens_per_request,
                    lambda,
                    target,
                )
                .map_err(|e| e.to_string())?;
                print!("{text}");
                let out = out.unwrap_or(path);
                let body = serde_json::to_string(&file).map_err(|e| e.to_string())?;
                triage_eval::quality::write_atomically(&out, &body).map_err(|e| e.to_string())?;
                println!("wrote {}", out.display());
                return Ok(());
            }
            let args = triage_eval::commands::CalibrateArgs {
                data,
                sample,
                shares,
                cost_per_1000,
                tier_prices,
                tokens_per_request,
                mix,
            };
            use triage_eval::commands::{calibrate_cmd, Calibrated};
            let (text, json, name) = match scorer {
                triage_core::router::ScorerKind::Lexical => {
                    let mut m = load_lexical(model.as_deref())?;
                    let t = calibrate_cmd(Calibrated::Lexical(&mut m), &args).map_err(|e| e.to_string())?;
                    (t, m.to_json(), "lexical")
                }
                triage_core::router::ScorerKind::Embedding => {
                    let mut h = load_embedding_head(model.as_deref())?;
                    let dir = encoder.unwrap_or_else(triage_embed::default_dir);
                    let enc = triage_embed::Encoder::load(&dir, h.file().max_tokens).map_err(|e| e.to_string())?;
                    let setup = triage_eval::embedding::EmbeddingSetup {
                        encoder: std::sync::Arc::new(enc),
                        head: None,
                        cache: Some(PathBuf::from("target/eval/embedding-cache.bin")),
                    };
                    let t = calibrate_cmd(Calibrated::Embedding(&mut h, &setup), &args).map_err(|e| e.to_string())?;
                    (t, h.to_json(), "embedding")
                }
                triage_core::router::ScorerKind::Random => {
                    return Err("the random scorer has no thresholds to calibrate".into())
                }
                triage_core::router::ScorerKind::Quality => {
                    return Err("calibrating the quality scorer: not yet".into())
                }
            };
            print!("{text}");
            let out = out.unwrap_or_else(|| PathBuf::from(format!("models/{name}-v1.json")));
            std::fs::write(&out, json).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

/// `triage route`: the decision for one request, with the model the catalog would pick in that
/// tier (hard requirements applied, every provider assumed available).
fn route_cmd(
    catalog: &Catalog,
    prompt: Option<String>,
    scorer: Option<&str>,
    model: Option<&Path>,
    json: bool,
) -> Result<(), String> {
    use triage_core::catalog::AutoRouting;
    use triage_core::openai::ChatRequest;
    use triage_core::route::{select, Requirements, Target};
    use triage_core::router::ScorerKind;
    let req: ChatRequest = match prompt {
        Some(p) => triage_eval::data::user_request(&p),
        None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            serde_json::from_str(&s).map_err(|e| format!("stdin is not a JSON chat request: {e}"))?
        }
    };
    let (mut kind, mut model_file, encoder_dir, tier_profiles) = match catalog.auto_routing() {
        AutoRouting::Scorer { kind, model_file, encoder_dir, tier_profiles } => {
            (*kind, model_file.clone(), encoder_dir.clone(), tier_profiles.clone())
        }
        AutoRouting::Cheapest => (ScorerKind::Lexical, None, None, Vec::new()),
    };
    if let Some(s) = scorer {
        let k: ScorerKind = s.parse().map_err(|e| format!("{e}"))?;
        if k != kind {
            model_file = None;
        }
        kind = k;
    }
    if let Some(m) = model {
        model_file = Some(m.display().to_string());
    }
    let router =
        triage_gateway::scoring::build_router(&AutoRouting::Scorer { kind, model_file, encoder_dir, tier_profiles })?
            .ok_or("no router")?;
    let tiers = catalog.tiers().len();
    let d = router.decide(&req, tiers);
    // The scored tier, or the next stronger one whose models meet the hard requirements.
    let need = Requirements::of(&req);
    let mut picked = select(catalog, &Target::Tier(d.tier), &need, |_| true);
    for t in d.tier + 1..tiers {
        if picked.is_ok() {
            break;
        }
        picked = select(catalog, &Target::Tier(t), &need, |_| true);
    }
    let (model_id, route_reason) = match &picked {
        Ok(r) => (catalog.models()[r.model].id.clone(), r.reason.clone()),
        Err(e) => ("-".to_owned(), e.to_string()),
    };
    let tier_name = catalog.tiers().get(d.tier).cloned().unwrap_or_default();
    if json {
        let v = serde_json::json!({
            "tier": tier_name, "tier_index": d.tier, "tiers": tiers, "model": model_id, "score": d.score,
            "thresholds": d.thresholds, "reason": d.reason, "catalog_reason": route_reason,
        });
        println!("{v}");
    } else {
        println!("tier:       {tier_name} ({} of {tiers})", d.tier);
        println!("model:      {model_id} ({route_reason})");
        println!("score:      {:.4}", d.score);
        println!("thresholds: {:?}", d.thresholds);
        println!("reason:     {}", d.reason.summary());
    }
    Ok(())
}

/// Prints `GET {url}/v1/health/deployments` of a running gateway as a table (or JSON).
async fn print_deployments(url: &str, json: bool) -> Result<(), String> {
    let url = format!("{}/v1/health/deployments", url.trim_end_matches('/'));
    let body =
        reqwest::get(&url).await.map_err(|e| format!("{url}: {e}"))?.text().await.map_err(|e| format!("{url}: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{url}: not a health report: {e}"))?;
    if json {
        println!("{v}");
        return Ok(());
    }
    println!("\ndeployments ({url}):");
    println!(
        "{:<24}  {:<14}  {:<10}  {:<13}  {:>10}  {:>6}  {:>6}  {:>8}",
        "MODEL", "PROVIDER", "BREAKER", "AVAILABLE", "LATENCY MS", "ERRORS", "CALLS", "PROBE"
    );
    for d in v["deployments"].as_array().into_iter().flatten() {
        let available = match d["reason"].as_str() {
            None => "yes".to_owned(),
            Some(r) => format!("no ({r})"),
        };
        println!(
            "{:<24}  {:<14}  {:<10}  {:<13}  {:>10.1}  {:>5.0}%  {:>6}  {:>8}",
            d["model"].as_str().unwrap_or_default(),
            d["provider"].as_str().unwrap_or_default(),
            d["breaker"].as_str().unwrap_or_default(),
            available,
            d["latency_ms"].as_f64().unwrap_or_default(),
            d["error_rate"].as_f64().unwrap_or_default() * 100.0,
            d["calls"].as_u64().unwrap_or_default(),
            d["probe"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// One "found on disk" line per model file a `kind = "local"` provider could run.
fn print_on_disk(found: &[local_models::OnDisk]) {
    if !found.is_empty() {
        println!();
    }
    for m in found {
        let size = m.size.map_or_else(|| "file missing".to_owned(), ollama::human_size);
        println!("found on disk: {} ({}, {size}) {}", m.name, m.source.label(), m.path.display());
        // Say when the engine will not prompt it with the file's own template, or cannot.
        match triage_local::ModelInfo::read(&m.path).map(|i| i.template()) {
            Ok(Ok(triage_local::TemplateSource::File)) | Err(_) => {}
            Ok(Ok(t)) => println!("  chat template: {t}"),
            Ok(Err(why)) => println!("  cannot be served as it is: {why}"),
        }
    }
}

fn models_action(action: ModelsAction) -> Result<(), String> {
    let path = local_models::registry_path();
    let mut registry = local_models::Registry::load(&path)?;
    match action {
        ModelsAction::Add { path: file, name } => {
            let m = registry.add(&file, name.as_deref())?;
            registry.save(&path)?;
            let context = m.context_length.map_or_else(String::new, |c| format!(", trained context {c} tokens"));
            println!(
                "registered {} ({}, {}{context}) {}",
                m.name,
                m.architecture,
                ollama::human_size(m.size),
                m.path.display()
            );
            // `add` refused a file without a template the engine can run.
            if let Ok(t) = triage_local::ModelInfo::read(&m.path).map_err(|e| e.to_string()).and_then(|i| i.template())
            {
                println!("chat template: {t}");
            }
        }
        ModelsAction::Remove { name } => {
            let m = registry.remove(&name)?;
            registry.save(&path)?;
            println!("removed {} ({} is left as it is)", m.name, m.path.display());
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    #[test]
    fn the_hidden_worker_subcommand_is_the_one_the_gateway_starts() {
        let cli = super::Cli::try_parse_from(["triage", triage_local::WORKER_SUBCOMMAND]).unwrap();
        assert!(matches!(cli.command, super::Command::EngineWorker));
    }
}
