//! `triage evals report`, `triage train --from-evals` and `triage calibrate --from-evals`: the
//! production evaluations in the ledger database, reported and fed back into the router. The
//! logic is in `triage_store::EvalReport` and `triage_eval::from_evals`; this module reads the
//! rows and the model files and writes the result.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use triage_core::catalog::{AutoRouting, Catalog};
use triage_core::router::{LexicalModel, Representation, ScorerKind, DEFAULT_MODEL_JSON};
use triage_eval::from_evals::{self, FineTuneConfig, ProductionRow};
use triage_store::{EvalGroupBy, EvalReport, Store};

/// `triage evals ...`.
#[derive(Subcommand)]
pub enum EvalsCommand {
    /// Production evaluation report: per group the count, win / tie / loss of the routed answer
    /// against the reference (95 % Wilson intervals), judge order-inconsistency, quality kept,
    /// saving, eval spend, feedback, and the trend by week.
    Report {
        /// Group by tier, model, role, key or reason.
        #[arg(long, default_value = "tier")]
        by: String,
        /// Only requests since this date (YYYY-MM-DD) or time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

/// The `--from-evals` flags of `triage train`.
#[derive(Args)]
pub struct TrainFromEvals {
    /// Fine-tune the lexical router on the production evaluations in the ledger database
    /// (`[spend] database`) instead of training on benchmark data.
    #[arg(long)]
    pub from_evals: bool,
    /// With --from-evals: only evaluations since this date (YYYY-MM-DD) or time (RFC 3339).
    #[arg(long, requires = "from_evals")]
    pub since: Option<String>,
    /// With --from-evals: the model to start from, kept as the prior (default: the config's
    /// `[router] model_file` if it exists, else the shipped model).
    #[arg(long, requires = "from_evals")]
    pub prior: Option<PathBuf>,
    /// With --from-evals: prior strength λ (penalty λ/2·‖w − w_prior‖²; docs/ROUTING.md).
    #[arg(long, default_value_t = from_evals::DEFAULT_PRIOR_STRENGTH)]
    pub prior_strength: f32,
    /// With --from-evals: cross-validation folds for the before / after figures.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
}

/// The `--from-evals` flags of `triage calibrate`.
#[derive(Args)]
pub struct CalibrateFromEvals {
    /// Set the reference tier's threshold from the production evaluations in the ledger
    /// database so that the reference is better on at most 1 − --target-quality of requests.
    #[arg(long, requires = "target_quality")]
    pub from_evals: bool,
    /// With --from-evals: the quality target, e.g. 0.95.
    #[arg(long, requires = "from_evals")]
    pub target_quality: Option<f64>,
    /// With --from-evals: only evaluations since this date (YYYY-MM-DD) or time (RFC 3339).
    #[arg(long, requires = "from_evals")]
    pub since: Option<String>,
    /// With --from-evals, for a model fine-tuned by `train --from-evals`: the model it started
    /// from (default: the one its metadata names), to score each fold out of sample.
    #[arg(long, requires = "from_evals")]
    pub prior: Option<PathBuf>,
    /// With --from-evals: prior strength of the refits (default: the one the model was fine-tuned with).
    #[arg(long)]
    pub prior_strength: Option<f32>,
    /// With --from-evals: cross-validation folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
}

async fn open(catalog: &Catalog) -> Result<Store, String> {
    let url = catalog.spend().database.as_deref().ok_or("no ledger database: set [spend] database in the config")?;
    Store::connect(url).await.map_err(|e| format!("{}: {e}", triage_store::redact_url(url)))
}

/// Runs a `triage evals` command.
///
/// Errors: a message for the user.
pub async fn evals(catalog: &Catalog, cmd: EvalsCommand) -> Result<(), String> {
    match cmd {
        EvalsCommand::Report { by, since, format } => {
            let by =
                EvalGroupBy::parse(&by).ok_or_else(|| format!("--by {by}: use tier, model, role, key or reason"))?;
            let store = open(catalog).await?;
            let report = EvalReport::build(&store, by, since.as_deref()).await.map_err(|e| e.to_string())?;
            match format.as_str() {
                "table" => print!("{}", report.to_table()),
                "csv" => print!("{}", report.to_csv()),
                "json" => println!("{}", report.to_json()),
                f => return Err(format!("--format {f}: use table, csv or json")),
            }
            Ok(())
        }
    }
}

/// The labelled production rows since `since`, and a note on what was left out.
async fn rows(catalog: &Catalog, since: Option<&str>) -> Result<(Vec<ProductionRow>, String), String> {
    let store = open(catalog).await?;
    let stored = store.evals(since, true).await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let (mut unlabelled, mut no_rep) = (0, 0);
    for e in &stored {
        let Some(loss) = ProductionRow::label_of(&e.outcome) else {
            unlabelled += 1;
            continue;
        };
        let rep: Option<Representation> = e.representation.as_deref().and_then(|j| serde_json::from_str(j).ok());
        match rep.filter(|r| r.validate().is_ok()) {
            Some(representation) => {
                rows.push(ProductionRow { id: e.request_id.clone(), representation, loss, auto: e.reason == "auto" })
            }
            None => no_rep += 1,
        }
    }
    let note = format!(
        "{} evaluations stored; {unlabelled} without a verdict (judge failed or a call failed) and {no_rep} without a router representation left out\n",
        stored.len()
    );
    Ok((rows, note))
}

/// The config's lexical model file, if `[router]` names one.
fn configured_file(catalog: &Catalog) -> Option<PathBuf> {
    match catalog.auto_routing() {
        AutoRouting::Scorer { kind: ScorerKind::Lexical, model_file: Some(f), .. } => Some(PathBuf::from(f)),
        _ => None,
    }
}

/// Reads a lexical model: `path`, else the config's model file if it exists, else the shipped
/// model; returns it with its name.
fn read_model(path: Option<&Path>, catalog: &Catalog) -> Result<(LexicalModel, String), String> {
    let path = path.map(Path::to_path_buf).or_else(|| configured_file(catalog).filter(|p| p.is_file()));
    match path {
        Some(p) => {
            let s = std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let m = LexicalModel::from_json(&s).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((m, p.display().to_string()))
        }
        None => Ok((LexicalModel::from_json(DEFAULT_MODEL_JSON).map_err(|e| e.to_string())?, SHIPPED.to_owned())),
    }
}

/// How a model's metadata names the shipped model as its prior.
const SHIPPED: &str = "shipped (models/lexical-v1.json)";

/// The catalog's tier count and the reference's tier (the top tier without `[evals] reference`).
fn tiers(catalog: &Catalog) -> (usize, usize) {
    let n = catalog.tiers().len();
    let r = catalog.evals().reference.map_or(n.saturating_sub(1), |m| catalog.models()[m].tier);
    (n, r)
}

/// Where to write: `out`, else the config's model file (which a running gateway reloads).
fn out_path(out: Option<PathBuf>, catalog: &Catalog) -> Result<PathBuf, String> {
    out.or_else(|| configured_file(catalog)).ok_or_else(|| {
        "give --out FILE (and point [router] model_file at it so that the gateway reloads it)".to_owned()
    })
}

/// Where `train --from-evals` keeps a copy of the prior it fine-tuned from when writing `out`:
/// `router.json` → `router.prior.json`.
fn prior_copy_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map_or_else(|| "router".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}.prior.json"))
}

/// Writes `text` to `path` through a temporary file renamed over it, so that a gateway
/// watching the file never reads half of it.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs `triage train --from-evals`.
///
/// Errors: a message for the user.
pub async fn train(catalog: &Catalog, f: TrainFromEvals, out: Option<PathBuf>) -> Result<(), String> {
    let (rows, note) = rows(catalog, f.since.as_deref()).await?;
    let (prior, prior_name) = read_model(f.prior.as_deref(), catalog)?;
    let out = out_path(out, catalog)?;
    // The fine-tuned model names its prior so that `calibrate --from-evals` can refit its folds
    // from it. A prior read from a file is kept beside the output (`out` may be that very file,
    // about to be overwritten): `<out stem>.prior.json`.
    let prior_name = if prior_name == SHIPPED {
        prior_name
    } else {
        let copy = prior_copy_path(&out);
        write_atomically(&copy, &prior.to_json())?;
        copy.display().to_string()
    };
    let cfg = FineTuneConfig { prior_strength: f.prior_strength, folds: f.folds, ..Default::default() };
    let (n, r) = tiers(catalog);
    let (model, outcome) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || from_evals::train(&prior, &prior_name, &rows, &cfg, n, r)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    print!("{note}");
    print!("{}", from_evals::train_text(&outcome, &cfg));
    write_atomically(&out, &model.to_json())?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Runs `triage calibrate --from-evals`.
///
/// Errors: a message for the user.
pub async fn calibrate(
    catalog: &Catalog,
    f: CalibrateFromEvals,
    model: Option<PathBuf>,
    out: Option<PathBuf>,
) -> Result<(), String> {
    let target = f.target_quality.ok_or("--from-evals needs --target-quality")?;
    let (rows, note) = rows(catalog, f.since.as_deref()).await?;
    let (mut m, _) = read_model(model.as_deref(), catalog)?;
    let out = out_path(out, catalog)?;
    let fine_tuned = m.file().meta.get("from_evals").cloned();
    let mut cfg = FineTuneConfig { folds: f.folds, ..Default::default() };
    let prior = match &fine_tuned {
        None => None,
        Some(meta) => {
            if let Some(s) = f.prior_strength.or_else(|| meta["fine_tune"]["prior_strength"].as_f64().map(|x| x as f32))
            {
                cfg.prior_strength = s;
            }
            let named = meta["prior"].as_str().unwrap_or(SHIPPED);
            let p = match (&f.prior, named) {
                (Some(p), _) => Some(p.clone()),
                (None, SHIPPED) => None,
                (None, other) => Some(PathBuf::from(other)),
            };
            let from = p.as_ref().map_or_else(|| SHIPPED.to_owned(), |p| p.display().to_string());
            let prior = match p {
                Some(p) => {
                    let s = std::fs::read_to_string(&p).map_err(|e| {
                        format!(
                            "the model was fine-tuned from {}: cannot read it ({e}); give --prior FILE",
                            p.display()
                        )
                    })?;
                    LexicalModel::from_json(&s).map_err(|e| format!("{}: {e}", p.display()))?
                }
                None => LexicalModel::from_json(DEFAULT_MODEL_JSON).map_err(|e| e.to_string())?,
            };
            Some((prior, from))
        }
    };
    let (prior, refit_note) = match prior {
        Some((p, from)) => (Some(p), Some(format!("folds refitted from the prior {from}\n"))),
        None => (None, None),
    };
    let (n, r) = tiers(catalog);
    let (m, outcome, cfg) = tokio::task::spawn_blocking(move || {
        from_evals::calibrate(&mut m, prior.as_ref(), &rows, target, &cfg, n, r).map(|o| (m, o, cfg))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    print!("{note}");
    print!("{}", refit_note.unwrap_or_default());
    print!("{}", from_evals::calibrate_text(&outcome, target, &cfg));
    println!("margin: the lexical scorer has one score, so only thresholds move");
    write_atomically(&out, &m.to_json())?;
    println!("wrote {}", out.display());
    Ok(())
}
