//! Datasets of per-model outcomes: prompts with a quality score for each model.
//!
//! Three on-disk layouts are read, in place (never copied):
//! - RouteLLM's `routellm/evals/` layout (lm-sys/RouteLLM, Apache-2.0): `mmlu/mmlu_<domain>.csv`
//!   and `gsm8k/gsm8k_responses.csv` (columns `prompt`, `<model>` = True/False per model), and
//!   `mt_bench/question.jsonl` + `judgements.jsonl` (GPT-4 judge score 1–10 per question, model
//!   and turn; -1 = judge failed, dropped). Each folder's `contaminated_prompts.jsonl` lists
//!   `eval_prompt`s that also occur in RouteLLM's training data; they are dropped as RouteLLM does.
//! - arena-bench (`arena_bench_v1.jsonl`): `prompt` and `scores` {model: 1–10 or null}.
//! - the simple JSONL format documented in docs/ROUTING.md: one object per line with `prompt`
//!   (a string) or `messages` (OpenAI chat messages), `quality` {model: number}, and optional
//!   `id` and `group`.
//!
//! Qualities are kept in their own units: correctness 0/1, judge scores 1–10; [`Dataset::scale`]
//! is the width of that range (1 or 9), used to put label margins on one scale.
//! MT Bench quality per question and model is the mean over both turns' judge scores (as
//! RouteLLM's `evals/benchmarks.py` averages judgement rows); routing reads the first turn only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use triage_core::openai::{ChatRequest, Content, Message, Role};

use crate::EvalError;

/// RouteLLM's weak model.
pub const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";
/// RouteLLM's strong model.
pub const STRONG: &str = "gpt-4-1106-preview";

/// One prompt with its outcomes.
#[derive(Debug, Clone)]
pub struct Item {
    /// Stable id within the dataset.
    pub id: String,
    /// What the router sees (for MT Bench, the first turn only).
    pub request: ChatRequest,
    /// Group for grouped cross-validation (MMLU domain, MT Bench category, else the id).
    pub group: String,
    /// Quality per model, aligned with [`Dataset::models`]; NaN where unknown.
    pub quality: Vec<f64>,
    /// Length of each model's answer in characters (arena-bench only; empty elsewhere).
    pub answer_chars: Vec<f64>,
}

/// A benchmark: prompts × models.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Benchmark name (`mmlu`, `gsm8k`, `mt-bench`, `arena-bench`, or the JSONL file's stem).
    pub name: String,
    /// Model names.
    pub models: Vec<String>,
    /// The prompts.
    pub items: Vec<Item>,
    /// How many contaminated prompts were dropped on load.
    pub dropped_contaminated: usize,
    /// Width of the quality range: 1 for correctness, 9 for 1–10 judge scores.
    pub scale: f64,
}

impl Dataset {
    /// Index of `model`: its exact name, else the one model whose canonical name
    /// (`triage_core::router::quality::canonical`: `org/` prefix dropped, lowercased, `_` → `-`,
    /// `gpt4-` → `gpt-4-`) is the same, so `gpt4_1106_preview` in one file and
    /// `gpt-4-1106-preview` in another are one model.
    ///
    /// Errors: [`EvalError::Data`] naming the models present.
    pub fn model_index(&self, model: &str) -> Result<usize, EvalError> {
        let c = triage_core::router::quality::canonical(model);
        let same = |m: &&String| triage_core::router::quality::canonical(m) == c;
        let by_canonical = match self.models.iter().filter(same).count() {
            1 => self.models.iter().position(|m| same(&m)),
            _ => None,
        };
        self.models.iter().position(|m| m == model).or(by_canonical).ok_or_else(|| {
            EvalError::Data(format!("{}: no model {model:?}; models: {}", self.name, self.models.join(", ")))
        })
    }

    /// The items where both `weak` and `strong` have a quality, as (item index, weak, strong).
    ///
    /// Errors: [`EvalError::Data`] if a model is absent.
    pub fn pair(&self, weak: &str, strong: &str) -> Result<Vec<(usize, f64, f64)>, EvalError> {
        let (w, s) = (self.model_index(weak)?, self.model_index(strong)?);
        Ok(self
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| {
                let (a, b) = (it.quality[w], it.quality[s]);
                (a.is_finite() && b.is_finite()).then_some((i, a, b))
            })
            .collect())
    }
}

/// A chat request with one user message (and `model: "auto"`).
pub fn user_request(prompt: &str) -> ChatRequest {
    ChatRequest {
        model: "auto".to_owned(),
        messages: vec![Message {
            role: Role::User,
            content: Some(Some(Content::Text(prompt.to_owned()))),
            tool_calls: None,
            tool_call_id: None,
            extra: Default::default(),
        }],
        stream: None,
        stream_options: None,
        tools: None,
        response_format: None,
        max_tokens: None,
        max_completion_tokens: None,
        n: None,
        extra: Default::default(),
    }
}

fn read(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(|e| EvalError::Data(format!("cannot read {}: {e}", path.display())))
}

/// The benchmark names this module knows besides JSONL files.
pub const BENCHMARKS: [&str; 4] = ["mmlu", "gsm8k", "mt-bench", "arena-bench"];

/// Loads benchmark `name` from the first of `dirs` that holds it: `mmlu`, `gsm8k`, `mt-bench`
/// (RouteLLM layout: `DIR/mmlu/`, `DIR/gsm8k/`, `DIR/mt_bench/`), `arena-bench`
/// (`DIR/arena_bench_v1.jsonl`), or a path to a JSONL file in the simple format.
/// `drop_contaminated` drops the prompts listed in the folder's `contaminated_prompts.jsonl`.
///
/// Errors: [`EvalError::Data`] if no dir holds it or a file is malformed (naming file and line).
pub fn load(dirs: &[PathBuf], name: &str, drop_contaminated: bool) -> Result<Dataset, EvalError> {
    if name.ends_with(".jsonl") {
        return load_jsonl(Path::new(name));
    }
    for d in dirs {
        let ds = match name {
            "mmlu" if d.join("mmlu").is_dir() => Some(load_mmlu(&d.join("mmlu"))?),
            "gsm8k" if d.join("gsm8k").is_dir() => Some(load_gsm8k(&d.join("gsm8k"))?),
            "mt-bench" if d.join("mt_bench").is_dir() => Some(load_mt_bench(&d.join("mt_bench"))?),
            "arena-bench" if d.join("arena_bench_v1.jsonl").is_file() => {
                Some(load_arena(&d.join("arena_bench_v1.jsonl"))?)
            }
            _ => None,
        };
        if let Some(mut ds) = ds {
            if drop_contaminated {
                let sub = match name {
                    "mt-bench" => "mt_bench",
                    n => n,
                };
                let path = d.join(sub).join("contaminated_prompts.jsonl");
                if path.is_file() {
                    let bad = contaminated(&path)?;
                    let before = ds.items.len();
                    ds.items.retain(|it| !bad.contains(first_user_text(&it.request).trim()));
                    ds.dropped_contaminated = before - ds.items.len();
                }
            }
            return Ok(ds);
        }
    }
    Err(EvalError::Data(format!(
        "benchmark {name:?} not found under {}; known: {} or a .jsonl file",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        BENCHMARKS.join(", ")
    )))
}

/// The text of the first user message.
pub fn first_user_text(req: &ChatRequest) -> String {
    let mut s = String::new();
    if let Some(m) = req.messages.iter().find(|m| m.role == Role::User) {
        if let Some(c) = m.content() {
            c.for_each_text(|t| s.push_str(t));
        }
    }
    s
}

fn contaminated(path: &Path) -> Result<HashSet<String>, EvalError> {
    #[derive(Deserialize)]
    struct Row {
        eval_prompt: String,
    }
    let mut out = HashSet::new();
    for (i, line) in read(path)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: Row =
            serde_json::from_str(line).map_err(|e| EvalError::Data(format!("{}:{}: {e}", path.display(), i + 1)))?;
        out.insert(r.eval_prompt.trim().to_owned());
    }
    Ok(out)
}

fn parse_bool(s: &str) -> f64 {
    match s.trim() {
        "True" | "true" | "1" | "1.0" => 1.0,
        "False" | "false" | "0" | "0.0" => 0.0,
        _ => f64::NAN,
    }
}

/// Reads a RouteLLM correctness CSV: `prompt` then one True/False column per model (columns
/// ending in `_response` are skipped).
fn load_correctness_csv(
    path: &Path,
    group: &str,
    items: &mut Vec<Item>,
    models: &mut Vec<String>,
) -> Result<(), EvalError> {
    let err = |e: csv::Error| EvalError::Data(format!("{}: {e}", path.display()));
    let mut rd = csv::Reader::from_path(path).map_err(err)?;
    let head = rd.headers().map_err(err)?.clone();
    let cols: Vec<(usize, String)> = head
        .iter()
        .enumerate()
        .filter(|(i, h)| *i > 0 && !h.ends_with("_response"))
        .map(|(i, h)| (i, h.to_owned()))
        .collect();
    if models.is_empty() {
        *models = cols.iter().map(|(_, h)| h.clone()).collect();
    } else if cols.iter().map(|(_, h)| h).ne(models.iter()) {
        return Err(EvalError::Data(format!("{}: model columns differ from the other files'", path.display())));
    }
    for (n, rec) in rd.records().enumerate() {
        let rec = rec.map_err(err)?;
        let prompt = rec.get(0).unwrap_or_default();
        let quality = cols.iter().map(|(i, _)| parse_bool(rec.get(*i).unwrap_or_default())).collect();
        items.push(Item {
            id: format!("{group}/{n}"),
            request: user_request(prompt),
            group: group.to_owned(),
            quality,
            answer_chars: Vec::new(),
        });
    }
    Ok(())
}

fn load_mmlu(dir: &Path) -> Result<Dataset, EvalError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EvalError::Data(format!("cannot list {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let (mut items, mut models) = (Vec::new(), Vec::new());
    for f in &files {
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let domain = stem.strip_prefix("mmlu_").unwrap_or(stem);
        load_correctness_csv(f, domain, &mut items, &mut models)?;
    }
    Ok(Dataset { name: "mmlu".into(), models, items, dropped_contaminated: 0, scale: 1.0 })
}

fn load_gsm8k(dir: &Path) -> Result<Dataset, EvalError> {
    let (mut items, mut models) = (Vec::new(), Vec::new());
    load_correctness_csv(&dir.join("gsm8k_responses.csv"), "gsm8k", &mut items, &mut models)?;
    // No natural groups: each prompt is its own group.
    for it in &mut items {
        it.group = it.id.clone();
    }
    Ok(Dataset { name: "gsm8k".into(), models, items, dropped_contaminated: 0, scale: 1.0 })
}

fn load_mt_bench(dir: &Path) -> Result<Dataset, EvalError> {
    #[derive(Deserialize)]
    struct Question {
        question_id: u64,
        category: String,
        turns: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Judgement {
        question_id: u64,
        model: String,
        score: f64,
    }
    let qpath = dir.join("question.jsonl");
    let jpath = dir.join("judgements.jsonl");
    let mut questions = Vec::new();
    for (i, l) in read(&qpath)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let q: Question =
            serde_json::from_str(l).map_err(|e| EvalError::Data(format!("{}:{}: {e}", qpath.display(), i + 1)))?;
        questions.push(q);
    }
    let mut sums: HashMap<(u64, String), (f64, f64)> = HashMap::new();
    let mut models: Vec<String> = Vec::new();
    for (i, l) in read(&jpath)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let j: Judgement =
            serde_json::from_str(l).map_err(|e| EvalError::Data(format!("{}:{}: {e}", jpath.display(), i + 1)))?;
        if !models.contains(&j.model) {
            models.push(j.model.clone());
        }
        if j.score >= 1.0 {
            let e = sums.entry((j.question_id, j.model)).or_insert((0.0, 0.0));
            e.0 += j.score;
            e.1 += 1.0;
        }
    }
    models.sort();
    let items = questions
        .into_iter()
        .map(|q| Item {
            id: q.question_id.to_string(),
            request: user_request(q.turns.first().map(String::as_str).unwrap_or_default()),
            group: q.category,
            quality: models
                .iter()
                .map(|m| match sums.get(&(q.question_id, m.clone())) {
                    Some((s, n)) if *n > 0.0 => s / n,
                    _ => f64::NAN,
                })
                .collect(),
            answer_chars: Vec::new(),
        })
        .collect();
    Ok(Dataset { name: "mt-bench".into(), models, items, dropped_contaminated: 0, scale: 9.0 })
}

fn load_arena(path: &Path) -> Result<Dataset, EvalError> {
    #[derive(Deserialize)]
    struct Row {
        question_id: String,
        prompt: String,
        scores: BTreeMap<String, Option<f64>>,
        #[serde(default)]
        answer_chars: BTreeMap<String, f64>,
    }
    let mut rows = Vec::new();
    for (i, l) in read(path)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: Row =
            serde_json::from_str(l).map_err(|e| EvalError::Data(format!("{}:{}: {e}", path.display(), i + 1)))?;
        rows.push(r);
    }
    let mut models: Vec<String> = rows.iter().flat_map(|r| r.scores.keys().cloned()).collect();
    models.sort();
    models.dedup();
    let items = rows
        .into_iter()
        .map(|r| Item {
            group: r.question_id.clone(),
            id: r.question_id,
            request: user_request(&r.prompt),
            quality: models.iter().map(|m| r.scores.get(m).copied().flatten().unwrap_or(f64::NAN)).collect(),
            answer_chars: models.iter().map(|m| r.answer_chars.get(m).copied().unwrap_or(f64::NAN)).collect(),
        })
        .collect();
    Ok(Dataset { name: "arena-bench".into(), models, items, dropped_contaminated: 0, scale: 9.0 })
}

/// Reads the simple JSONL format (see the module doc). Qualities are taken as given; `scale` is their observed range.
///
/// Errors: [`EvalError::Data`] naming file and line.
pub fn load_jsonl(path: &Path) -> Result<Dataset, EvalError> {
    #[derive(Deserialize)]
    struct Row {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        prompt: Option<String>,
        #[serde(default)]
        messages: Option<Vec<Message>>,
        #[serde(default)]
        quality: BTreeMap<String, f64>,
        #[serde(default)]
        group: Option<String>,
    }
    let mut rows = Vec::new();
    for (i, l) in read(path)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |e: String| EvalError::Data(format!("{}:{}: {e}", path.display(), i + 1));
        let r: Row = serde_json::from_str(l).map_err(|e| at(e.to_string()))?;
        let request = match (&r.prompt, r.messages.clone()) {
            (Some(p), _) => user_request(p),
            (None, Some(messages)) if !messages.is_empty() => {
                let mut req = user_request("");
                req.messages = messages;
                req
            }
            _ => return Err(at("needs `prompt` or non-empty `messages`".into())),
        };
        rows.push((r.id.unwrap_or_else(|| (i + 1).to_string()), request, r.group, r.quality));
    }
    let mut models: Vec<String> = rows.iter().flat_map(|r| r.3.keys().cloned()).collect();
    models.sort();
    models.dedup();
    let items: Vec<Item> = rows
        .into_iter()
        .map(|(id, request, group, q)| Item {
            group: group.unwrap_or_else(|| id.clone()),
            id,
            request,
            quality: models.iter().map(|m| q.get(m).copied().unwrap_or(f64::NAN)).collect(),
            answer_chars: Vec::new(),
        })
        .collect();
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("jsonl").to_owned();
    let (lo, hi) = items
        .iter()
        .flat_map(|it: &Item| it.quality.iter().copied().filter(|q| q.is_finite()))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), q| (a.min(q), b.max(q)));
    let scale = if hi > lo { hi - lo } else { 1.0 };
    Ok(Dataset { name, models, items, dropped_contaminated: 0, scale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_jsonl_reads_prompt_or_messages() {
        let dir = std::env::temp_dir().join(format!("triage-eval-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("mini.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\":\"2+2?\",\"quality\":{\"weak\":1,\"strong\":1}}\n\n{\"id\":\"b\",\"group\":\"g\",\"messages\":[{\"role\":\"user\",\"content\":\"prove it\"}],\"quality\":{\"weak\":0,\"strong\":1}}\n",
        )
        .unwrap();
        let d = load(&[], p.to_str().unwrap(), true).unwrap();
        assert_eq!(d.name, "mini");
        assert_eq!(d.models, ["strong", "weak"]);
        assert_eq!(d.items.len(), 2);
        assert_eq!((d.items[0].id.as_str(), d.items[1].group.as_str()), ("1", "g"));
        assert_eq!(first_user_text(&d.items[1].request), "prove it");
        assert_eq!(d.pair("weak", "strong").unwrap(), vec![(0, 1.0, 1.0), (1, 0.0, 1.0)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn model_names_match_across_files_by_canonical_name() {
        let d = Dataset {
            name: "x".into(),
            models: vec!["gpt4_1106_preview".into(), "mistralai/Mixtral-8x7B-Instruct-v0.1".into()],
            items: vec![],
            dropped_contaminated: 0,
            scale: 1.0,
        };
        assert_eq!(d.model_index("gpt-4-1106-preview").unwrap(), 0);
        assert_eq!(d.model_index("Mixtral-8x7B-Instruct-v0.1").unwrap(), 1);
        assert_eq!(d.model_index("gpt4_1106_preview").unwrap(), 0);
        assert!(d.model_index("gpt-4").is_err());
    }

    /// `triage train` / `eval` read any number of simple-JSONL files with any number of models
    /// per row: three files, one without the pair (left out), models named differently.
    #[test]
    fn lexical_training_reads_several_multi_model_files() {
        use crate::train::{train, TrainConfig, TrainSet};
        use triage_core::router::features::RequestText;
        let dir = std::env::temp_dir().join(format!("triage-eval-multi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = |name: &str, strong: &str, weak: &str, extra: &[&str]| {
            let body: String = (0..40)
                .map(|i| {
                    let hard = i % 2 == 0;
                    let mut q = serde_json::Map::new();
                    q.insert(strong.into(), 1.0.into());
                    q.insert(weak.into(), (if hard { 0.0 } else { 1.0 }).into());
                    for (j, m) in extra.iter().enumerate() {
                        q.insert((*m).into(), ((i + j) % 3).into());
                    }
                    let prompt = if hard { format!("prove theorem {i} rigorously") } else { format!("say hi {i}") };
                    format!("{}\n", serde_json::json!({"prompt": prompt, "quality": q}))
                })
                .collect();
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            p.display().to_string()
        };
        let a = rows("a.jsonl", "gpt4_1106_preview", "Mixtral-8x7B-Instruct-v0.1", &["m1", "m2", "m3"]);
        let b = rows("b.jsonl", "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", &["m4"]);
        let c = rows("c.jsonl", "other-strong", "other-weak", &[]);
        let sets: Vec<Dataset> = [a, b, c].iter().map(|p| load(&[], p, false).unwrap()).collect();
        assert_eq!(sets[0].models.len(), 5);
        let ts: Vec<TrainSet<'_>> =
            sets.iter().map(|d| TrainSet { data: d, items: (0..d.items.len()).collect() }).collect();
        let cfg = TrainConfig { buckets: 1 << 10, ..Default::default() };
        let (m, rep) = train(&ts, &cfg).unwrap();
        assert_eq!(rep.sets.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(rep.sets["a"], 40);
        let hard = m.score_text(&RequestText::of(&user_request("prove theorem 99 rigorously")));
        let easy = m.score_text(&RequestText::of(&user_request("say hi 99")));
        assert!(hard > easy + 0.2, "{hard} vs {easy}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn routellm() -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/routellm");
        if p.is_dir() {
            Some(p)
        } else {
            eprintln!("skipping: {} is absent", p.display());
            None
        }
    }

    #[test]
    fn routellm_benchmarks_load_with_the_readme_accuracies() {
        let Some(dir) = routellm() else { return };
        let dirs = [dir];
        let mmlu = load(&dirs, "mmlu", false).unwrap();
        assert_eq!(mmlu.items.len(), 10_816);
        let pair = mmlu.pair(WEAK, STRONG).unwrap();
        let acc = |f: fn(&(usize, f64, f64)) -> f64| pair.iter().map(f).sum::<f64>() / pair.len() as f64;
        // README: MMLU weak 69.9 %, strong 81.7 %.
        assert!((acc(|p| p.1) - 0.699).abs() < 0.001, "{}", acc(|p| p.1));
        assert!((acc(|p| p.2) - 0.817).abs() < 0.001);
        let gsm = load(&dirs, "gsm8k", true).unwrap();
        assert_eq!(gsm.items.len() + gsm.dropped_contaminated, 1_319);
        assert!(gsm.dropped_contaminated > 0);
        let mt = load(&dirs, "mt-bench", true).unwrap();
        assert_eq!(mt.items.len() + mt.dropped_contaminated, 80);
        assert_eq!(mt.dropped_contaminated, 8);
        assert_eq!(mt.pair(WEAK, STRONG).unwrap().len(), 72);
    }
}
