//! End-to-end replays on the real RouteLLM data (skipped with a note when
//! `../shared/data/routellm` is absent). They pin the figures docs/ROUTING.md reports.

use std::path::{Path, PathBuf};

use triage_core::router::{LexicalModel, ScorerKind, DEFAULT_MODEL_JSON};
use triage_eval::replay::{evaluate, EvalConfig, Split};
use triage_eval::train::TrainConfig;

fn data_dirs() -> Option<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let (r, a) = (root.join("routellm"), root.join("arena-bench"));
    if r.is_dir() && a.is_dir() {
        Some(vec![r, a])
    } else {
        eprintln!("skipping: {} is absent", root.display());
        None
    }
}

fn cfg(data: Vec<PathBuf>, benchmark: &str, router: ScorerKind, split: Split) -> EvalConfig {
    EvalConfig {
        data,
        benchmark: benchmark.into(),
        router,
        split,
        model: LexicalModel::from_json(DEFAULT_MODEL_JSON).ok(),
        embedding: None,
        train_sets: ["mmlu", "gsm8k", "mt-bench", "arena-bench"].iter().map(|s| (*s).to_owned()).collect(),
        train: TrainConfig::default(),
        price_weak: 0.24,
        price_strong: 24.7,
        progress: false,
    }
}

#[test]
fn mt_bench_leave_benchmark_out_beats_random() {
    let Some(d) = data_dirs() else { return };
    let r = evaluate(&cfg(d, "mt-bench", ScorerKind::Lexical, Split::LeaveBenchmarkOut)).unwrap();
    assert_eq!(r.prompts, 72);
    assert_eq!(r.dropped_contaminated, 8);
    assert_eq!(r.split, "leave-benchmark-out (trained on mmlu, gsm8k, arena-bench)");
    // docs/ROUTING.md: APGR 0.712 (paper mean) / 0.662 (trapezoid); random 0.55 / 0.50.
    assert!((r.router_summary.apgr_mean10 - 0.712).abs() < 0.005, "{}", r.router_summary.apgr_mean10);
    assert!((r.router_summary.apgr_trapezoid - 0.662).abs() < 0.005);
    assert!((r.random.apgr_trapezoid - 0.5).abs() < 1e-9);
    // MT Bench means over both turns: weak 8.28, strong 9.21 (1–10 judge scores).
    assert!((r.quality_weak - 8.2812).abs() < 1e-3 && (r.quality_strong - 9.2118).abs() < 1e-3);
}

#[test]
fn gsm8k_random_router_is_near_half_and_the_oracle_is_above_one() {
    let Some(d) = data_dirs() else { return };
    let r = evaluate(&cfg(d, "gsm8k", ScorerKind::Random, Split::Shipped)).unwrap();
    assert_eq!(r.prompts + r.dropped_contaminated, 1319);
    assert!((r.router_summary.apgr_trapezoid - 0.5).abs() < 0.05, "{}", r.router_summary.apgr_trapezoid);
    // The oracle also avoids the strong model where only the weak one is right: PGR > 1.
    assert!(r.oracle.apgr_trapezoid > 1.0);
}
