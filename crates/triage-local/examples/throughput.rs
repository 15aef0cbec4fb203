//! Tokens per second of the in-process engine, measured as llama.cpp's `llama-bench` measures
//! them, through the engine's public API the way a request goes (`bench/local.sh` runs both side
//! by side):
//!
//! - `ppN` (prompt processing): a request whose templated prompt is exactly N tokens, with
//!   `max_tokens` 1; timed from [`Engine::generate`] to [`Event::Started`], which the engine
//!   sends once the prompt is decoded and the first token sampled. llama-bench times decoding N
//!   random tokens into an empty cache; the engine's extra work in that span is templating and
//!   tokenising the prompt and sampling one token, microseconds against a prefill of a second.
//! - `tgN` (generation): a request with a short prompt and `max_tokens` N + 1, greedy; timed from
//!   `Started` (the first token is out) to `Finished`: N decode steps of one token each, with the
//!   engine's sampling, detokenising and event delivery in every step. llama-bench decodes N
//!   tokens one at a time, without sampling.
//!
//! Like llama-bench, one untimed warm-up run of each test comes first, and every sample is
//! tokens / seconds of one repetition; the mean and the sample standard deviation are printed.
//!
//! With `--isolated`, the engine runs as the gateway runs it: in a worker process
//! ([`EngineProcess`]; this example started again with its hidden `worker` subcommand), every
//! event crossing the Unix socket; the times are taken on this side of it.
//!
//! ```text
//! cargo run --release -p triage-local --example throughput -- write-gguf /tmp/model-f16.gguf
//! cargo run --release -p triage-local --example throughput -- run --model /tmp/model.gguf --threads 2
//! cargo run --release -p triage-local --example throughput -- run --model /tmp/model.gguf --isolated
//! ```

#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use triage_local::{
    Engine, EngineConfig, EngineError, EngineProcess, Event, FinishReason, GenerateRequest, Generation, Message,
    Sampling, WorkerCommand, WorkerOptions,
};
use triage_testkit::gguf::{TinyLlama, Weights};

#[derive(Parser)]
#[command(about = "Tokens per second of the in-process engine, as llama-bench measures them")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a llama GGUF with random weights (by default about 240 M parameters in F16: a
    /// 32 000-token vocabulary, 16 layers 1024 wide, 16 heads over 4 key/value heads, a
    /// 2816-wide feed-forward).
    WriteGguf {
        /// The file to write.
        path: PathBuf,
        #[arg(long, default_value_t = 16)]
        layers: u32,
        #[arg(long, default_value_t = 1024)]
        embd: u32,
        #[arg(long, default_value_t = 16)]
        heads: u32,
        #[arg(long, default_value_t = 4)]
        kv_heads: u32,
        #[arg(long, default_value_t = 2816)]
        ff: u32,
        #[arg(long, default_value_t = 32000)]
        vocab: u32,
        /// Write F32 matrices instead of F16.
        #[arg(long, conflicts_with = "q4_k_m")]
        f32: bool,
        /// Write the matrices in Q4_K_M's block layout (Q4_K; Q6_K for attn_v, ffn_down and
        /// output) directly, without llama-quantize: random blocks, the kernels of a real
        /// Q4_K_M file (testkit's `Weights::Q4KM`).
        #[arg(long)]
        q4_k_m: bool,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Measures prompt processing and generation on a GGUF file.
    Run {
        /// The GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// CPU threads (llama-bench's -t).
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// Prompt tokens of the pp test (llama-bench's -p); 0 skips it.
        #[arg(long, default_value_t = 512)]
        pp: u32,
        /// Generated tokens of the tg test (llama-bench's -n); 0 skips it.
        #[arg(long, default_value_t = 128)]
        tg: u32,
        /// Timed repetitions of each test (llama-bench's -r).
        #[arg(long, default_value_t = 5)]
        reps: u32,
        /// Also print one JSON object per test on its own line (`avg_ts`, `stddev_ts`,
        /// `samples_ts`, as llama-bench's JSON names them).
        #[arg(long)]
        json: bool,
        /// Diagnostic: in the tg test, stop reading events after `Started` and wait for the
        /// engine to go idle instead, so the reader is not woken for every token (the events
        /// must fit the channel: tg at most 60).
        #[arg(long)]
        quiet_reader: bool,
        /// Run the engine in a worker process, as the gateway does.
        #[arg(long)]
        isolated: bool,
    },
    /// The worker process's cost, paired: the in-process engine and a worker process loaded
    /// side by side, the same request sent to each in turn (ABBA order, so a drift in the
    /// machine's speed cancels), the ratio worker / in-process taken per pair; prints the
    /// geometric mean ratio of pp and tg tokens/s with a 95 % interval (on the log scale, mean ±
    /// 1.96 standard errors).
    Paired {
        /// GGUF file to load.
        #[arg(long)]
        model: PathBuf,
        /// Decode threads of each engine.
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// Prompt tokens of the pp test.
        #[arg(long, default_value_t = 512)]
        pp: u32,
        /// Generated tokens of the tg test.
        #[arg(long, default_value_t = 128)]
        tg: u32,
        /// Pairs per test (each pair: one request to each engine).
        #[arg(long, default_value_t = 40)]
        pairs: u32,
    },
    /// The engine worker process of `run --isolated` (started by it, not by hand).
    #[command(hide = true)]
    Worker,
}

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    match Args::parse().cmd {
        Cmd::WriteGguf { path, layers, embd, heads, kv_heads, ff, vocab, f32, q4_k_m, seed } => {
            let model = TinyLlama {
                seed,
                layers,
                embd,
                heads,
                kv_heads,
                ff,
                context_length: 4096,
                chat_template: triage_testkit::gguf::CHATML_TEMPLATE,
                vocab,
                weights: if q4_k_m {
                    Weights::Q4KM
                } else if f32 {
                    Weights::F32
                } else {
                    Weights::F16
                },
            };
            model.write(&path)?;
            eprintln!("wrote {} ({:.1} M parameters)", path.display(), model.parameters() as f64 / 1e6);
            Ok(())
        }
        Cmd::Run { model, threads, pp, tg, reps, json, quiet_reader, isolated } => {
            if quiet_reader && tg > 60 {
                return Err("--quiet-reader needs --tg 60 or less".into());
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(run(model, threads, pp, tg, reps, json, quiet_reader, isolated))
        }
        Cmd::Paired { model, threads, pp, tg, pairs } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(paired(model, threads, pp, tg, pairs))
        }
        Cmd::Worker => {
            let code = triage_local::worker_main(WorkerOptions::default());
            if code == std::process::ExitCode::SUCCESS {
                Ok(())
            } else {
                Err("the worker failed".into())
            }
        }
    }
}

/// The engine measured: in this process, or in a worker process.
enum Bench {
    InProcess(Engine),
    Isolated(EngineProcess),
}

impl Bench {
    fn generate(&self, req: GenerateRequest) -> Result<Generation, EngineError> {
        match self {
            Bench::InProcess(e) => e.generate(req),
            Bench::Isolated(e) => e.generate(req),
        }
    }

    async fn until_idle(&self) {
        match self {
            Bench::InProcess(e) => e.until_idle().await,
            Bench::Isolated(e) => e.until_idle().await,
        }
    }
}

/// A greedy request that reads its whole prompt every time (no prompt cache), as llama-bench
/// decodes its whole prompt every run.
fn request(content: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message::new("user", content)],
        max_tokens: Some(max_tokens),
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: Some(1) },
        cache_prompt: false,
        ..GenerateRequest::default()
    }
}

/// A user message whose templated prompt is exactly `n` tokens.
fn prompt_of(engine: &Engine, n: u32) -> Result<String, Error> {
    let tokens = |content: &str| -> Result<usize, Error> {
        Ok(engine.count_tokens(&engine.render(&[Message::new("user", content)])?))
    };
    // Words of a few letters, each its own token or a few; grow, then trim to the exact count.
    let words = ["alpha", "beta", "gamma", "delta", "kappa", "sigma", "omega", "theta"];
    let mut content = String::new();
    let mut i = 0;
    while tokens(&content)? < n as usize {
        content.push_str(words[i % words.len()]);
        content.push(' ');
        i += 1;
    }
    while tokens(&content)? > n as usize {
        content.pop();
    }
    if tokens(&content)? != n as usize {
        return Err(format!("cannot make a prompt of exactly {n} tokens").into());
    }
    Ok(content)
}

/// One request: the time from submitting it to `Started`, and from `Started` to `Finished`,
/// with the prompt and completion token counts and the finish reason.
struct Run {
    to_started: Duration,
    started_to_finished: Duration,
    prompt_tokens: u32,
    cached_tokens: u32,
    completion_tokens: u32,
    finish: FinishReason,
}

async fn once(engine: &Bench, req: GenerateRequest) -> Result<Run, Error> {
    let t0 = Instant::now();
    let mut g = engine.generate(req)?;
    let mut started = None;
    while let Some(ev) = g.next().await {
        match ev {
            Event::Started { .. } => started = Some(Instant::now()),
            Event::Text(_) | Event::ToolCalls(_) => {}
            Event::Finished { reason, usage } => {
                let end = Instant::now();
                let s = started.ok_or("finished before it started")?;
                drop(g);
                engine.until_idle().await;
                return Ok(Run {
                    to_started: s - t0,
                    started_to_finished: end - s,
                    prompt_tokens: usage.prompt_tokens,
                    cached_tokens: usage.cached_tokens,
                    completion_tokens: usage.completion_tokens,
                    finish: reason,
                });
            }
            Event::Failed(e) => return Err(e.into()),
        }
    }
    Err("the events ended without a finish".into())
}

fn report(test: &str, n_prompt: u32, n_gen: u32, threads: u32, samples: &[f64], json: bool) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let sd = if samples.len() > 1 {
        (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    println!("triage-local  {test:>6}  threads {threads}  {mean:10.2} ± {sd:.2} tokens/s  ({} runs)", samples.len());
    if json {
        let list = samples.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
        println!(
            "{{\"engine\": \"triage-local\", \"test\": \"{test}\", \"n_prompt\": {n_prompt}, \"n_gen\": {n_gen}, \
             \"n_threads\": {threads}, \"avg_ts\": {mean:.4}, \"stddev_ts\": {sd:.4}, \"samples_ts\": [{list}]}}"
        );
    }
}

/// Started to idle, without reading the events in between (see `--quiet-reader`).
async fn once_quiet(engine: &Bench, req: GenerateRequest) -> Result<Duration, Error> {
    let mut g = engine.generate(req)?;
    match g.next().await {
        Some(Event::Started { .. }) => {}
        _ => return Err("no Started event".into()),
    }
    let s = Instant::now();
    engine.until_idle().await;
    let elapsed = s.elapsed();
    while let Some(ev) = g.next().await {
        if let Event::Failed(e) = ev {
            return Err(e.into());
        }
    }
    Ok(elapsed)
}

// The `run` subcommand's options, one argument each (clap parsed them already).
#[allow(clippy::too_many_arguments)]
async fn run(
    model: PathBuf,
    threads: u32,
    pp: u32,
    tg: u32,
    reps: u32,
    json: bool,
    quiet_reader: bool,
    isolated: bool,
) -> Result<(), Error> {
    let config = EngineConfig {
        model_path: model,
        parallel: 1,
        queue: 0,
        // Room for the pp prompt, or for a short prompt and tg tokens.
        context: pp.max(tg + 64) + 16,
        threads,
        chat_template: None,
    };
    let local = Engine::load(config.clone())?;
    // The pp prompt is made with an in-process engine (templating and token counts).
    let pp_content = if pp > 0 { Some(prompt_of(&local, pp)?) } else { None };
    let engine = if isolated {
        drop(local);
        let e = EngineProcess::start(config, WorkerCommand::current_exe(&["worker"])?, "throughput");
        e.ready().await?;
        Bench::Isolated(e)
    } else {
        Bench::InProcess(local)
    };
    let reps = reps.max(1);

    if let Some(content) = pp_content {
        let mut samples = Vec::new();
        for rep in 0..=reps {
            let r = once(&engine, request(&content, 1)).await?;
            if r.prompt_tokens != pp || r.cached_tokens != 0 {
                return Err(format!(
                    "the prompt was {} tokens ({} cached), not {pp}",
                    r.prompt_tokens, r.cached_tokens
                )
                .into());
            }
            if rep > 0 {
                samples.push(f64::from(pp) / r.to_started.as_secs_f64());
            }
        }
        report(&format!("pp{pp}"), pp, 0, threads, &samples, json);
    }

    if tg > 0 {
        // A random model may end its turn early: find a short prompt that it answers at full
        // length (greedy, so it does every time), in the warm-up.
        let mut content = None;
        for i in 0..20 {
            let c = format!("Hello {i}");
            let r = once(&engine, request(&c, tg + 1)).await?;
            if r.finish == FinishReason::Length && r.completion_tokens == tg + 1 {
                content = Some(c);
                break;
            }
        }
        let content = content.ok_or("the model ends every answer before tg tokens")?;
        let mut samples = Vec::new();
        for _ in 0..reps {
            let elapsed = if quiet_reader {
                once_quiet(&engine, request(&content, tg + 1)).await?
            } else {
                let r = once(&engine, request(&content, tg + 1)).await?;
                if r.completion_tokens != tg + 1 {
                    return Err(format!("generated {} tokens, not {}", r.completion_tokens, tg + 1).into());
                }
                r.started_to_finished
            };
            samples.push(f64::from(tg) / elapsed.as_secs_f64());
        }
        report(&format!("tg{tg}"), 0, tg, threads, &samples, json);
    }
    if let Bench::Isolated(e) = &engine {
        // The worker is not this process's waited-for child when bench/local.sh reads this
        // process's CPU time (rusage), so its own CPU time is reported for the script to count
        // as the measurement's, not as "other processes".
        if let Some(seconds) = e.health().pid.and_then(process_cpu_seconds) {
            println!("#worker_cpu_s {seconds:.3}");
        }
    }
    Ok(())
}

/// `Cmd::Paired`: see there.
async fn paired(model: PathBuf, threads: u32, pp: u32, tg: u32, pairs: u32) -> Result<(), Error> {
    let config = |context| EngineConfig {
        model_path: model.clone(),
        parallel: 1,
        queue: 0,
        context,
        threads,
        chat_template: None,
    };
    let context = pp.max(tg + 64) + 16;
    let local = Engine::load(config(context))?;
    let pp_content = prompt_of(&local, pp)?;
    let worker = EngineProcess::start(config(context), WorkerCommand::current_exe(&["worker"])?, "throughput");
    worker.ready().await?;
    let engines = [Bench::InProcess(local), Bench::Isolated(worker)];
    // A short prompt the model answers at full length (greedy: every time), as in `run`.
    let mut tg_content = None;
    for i in 0..20 {
        let c = format!("Hello {i}");
        let r = once(&engines[0], request(&c, tg + 1)).await?;
        if r.finish == FinishReason::Length && r.completion_tokens == tg + 1 {
            tg_content = Some(c);
            break;
        }
    }
    let tg_content = tg_content.ok_or("the model ends every answer before tg tokens")?;
    // Warm-up: one request of each kind to each engine.
    for e in &engines {
        once(e, request(&pp_content, 1)).await?;
        once(e, request(&tg_content, tg + 1)).await?;
    }
    let (mut pp_ratios, mut tg_ratios) = (Vec::new(), Vec::new());
    for i in 0..pairs.max(2) {
        // ABBA: in-process first on even pairs, the worker first on odd ones.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut pp_ts = [0.0; 2];
        let mut tg_ts = [0.0; 2];
        for &k in &order {
            let r = once(&engines[k], request(&pp_content, 1)).await?;
            if r.prompt_tokens != pp || r.cached_tokens != 0 {
                return Err(format!(
                    "the prompt was {} tokens ({} cached), not {pp}",
                    r.prompt_tokens, r.cached_tokens
                )
                .into());
            }
            pp_ts[k] = f64::from(pp) / r.to_started.as_secs_f64();
            let r = once(&engines[k], request(&tg_content, tg + 1)).await?;
            if r.completion_tokens != tg + 1 {
                return Err(format!("generated {} tokens, not {}", r.completion_tokens, tg + 1).into());
            }
            tg_ts[k] = f64::from(tg) / r.started_to_finished.as_secs_f64();
        }
        pp_ratios.push(pp_ts[1] / pp_ts[0]);
        tg_ratios.push(tg_ts[1] / tg_ts[0]);
    }
    if let Bench::Isolated(e) = &engines[1] {
        if let Some(seconds) = e.health().pid.and_then(process_cpu_seconds) {
            println!("#worker_cpu_s {seconds:.3}");
        }
    }
    for (test, ratios) in [(format!("pp{pp}"), &pp_ratios), (format!("tg{tg}"), &tg_ratios)] {
        // On the log scale (a ratio and its inverse weigh the same): the geometric mean and its
        // interval, exp(mean ± 1.96 standard errors of the log ratios).
        let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
        let n = logs.len() as f64;
        let mean_log = logs.iter().sum::<f64>() / n;
        let sd = (logs.iter().map(|x| (x - mean_log).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let half = 1.96 * sd / n.sqrt();
        let (mean, low, high) = (mean_log.exp(), (mean_log - half).exp(), (mean_log + half).exp());
        println!(
            "worker process / in-process  {test:>6}  threads {threads}  {mean:.4}  95 % interval [{low:.4}, {high:.4}]  ({} pairs, sd of log ratios {sd:.4})",
            ratios.len()
        );
        let list = ratios.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
        println!(
            "{{\"test\": \"{test}\", \"n_threads\": {threads}, \"ratio_geomean\": {mean:.4}, \"log_ratio_sd\": {sd:.4}, \
             \"ci95\": [{low:.4}, {high:.4}], \"ratios\": [{list}]}}"
        );
    }
    Ok(())
}

/// User + system CPU time of a live process, in seconds (`/proc/<pid>/stat` fields 14 and 15,
/// in clock ticks of 1/100 s, the Linux `USER_HZ`); `None` where that file cannot be read.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
