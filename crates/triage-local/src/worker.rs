//! The engine's thread: one llama.cpp context with one KV-cache sequence per slot, and one
//! batch per step that carries the next token of every generating slot plus a chunk of the
//! prompt of at most one slot still reading its prompt (chunked prefill, as llama.cpp's server
//! does): a long prompt arriving never stalls the answers already streaming for more than one
//! chunk's decode at a time.
//!
//! Prompt caching: a sequence keeps its KV cache when its request ends, with the tokens it holds.
//! A new request goes to the free slot whose cached tokens share the longest prefix with its
//! prompt, and only the rest of the prompt is decoded (the common case of an agent or chat
//! sending the whole conversation again each turn). The reused count is reported as
//! [`Usage::cached_tokens`].
//!
//! A slot whose reader is [`crate::engine::EVENT_BUFFER`] events behind pauses (is left out of
//! the batch) until the reader catches up; a slot whose reader is gone is freed at once.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::Sender;

use crate::engine::{
    backend, EngineConfig, EngineError, Event, FinishReason, Job, Model, Permit, Sampling, Shared, ToolPlan, Usage,
};
use crate::text::TextOut;
use crate::tools::{ToolFormat, GRAMMAR_ROOT};

/// Tokens decoded at once while reading a prompt: llama.cpp's default batch size.
const PREFILL_BATCH: u32 = 512;

/// Prompt tokens one step may carry while other slots are generating: small enough that a
/// generating slot waits for about one such chunk per token (a 128-token chunk is a fraction of
/// a second on a 1–3 B model on a laptop CPU), large enough that the prompt is read in batches.
const PREFILL_CHUNK_SHARED: usize = 128;

/// How long the thread sleeps when every running slot waits for its reader.
const PAUSED_POLL: Duration = Duration::from_millis(2);

pub(crate) struct Worker {
    model: Arc<Model>,
    shared: Arc<Shared>,
    parallel: u32,
    context: u32,
    threads: i32,
    /// Per sequence: the tokens its KV cache holds while its slot is free.
    caches: Vec<Vec<LlamaToken>>,
}

struct Slot {
    seq: i32,
    /// Given back just before the last event is handed over, so a reader that saw its answer
    /// end can be admitted again at once. Declared before `events` so that a dropped slot gives
    /// its place back before its reader can see the channel close.
    permit: Option<Permit>,
    events: Sender<Event>,
    sampler: LlamaSampler,
    text: TextOut,
    /// The tool-call format whose calls are captured and parsed, when the request may call tools.
    tool_format: Option<ToolFormat>,
    /// Events not yet taken by the reader's channel.
    pending: VecDeque<Event>,
    /// The token to decode at the next step; `None` while the prompt is read and once the
    /// generation has ended.
    next: Option<LlamaToken>,
    /// Tokens in the sequence's KV cache (= position of the next token decoded).
    n_past: i32,
    /// The prompt's tokens, then each generated token once it is decoded: `history[..n_past]`
    /// is what the KV cache holds, and what the next request may reuse.
    history: Vec<LlamaToken>,
    /// The prompt has been read and the first token sampled (or the generation ended early).
    started: bool,
    /// The KV cache no longer matches `history` (a decode failed): cleared when the slot frees.
    kv_invalid: bool,
    prompt_tokens: u32,
    cached_tokens: u32,
    generated: u32,
    max_tokens: u32,
    batch_index: i32,
}

impl Slot {
    fn finish(&mut self, mut reason: FinishReason, flush_text: bool) {
        if flush_text {
            let rest = self.text.finish();
            if !rest.is_empty() {
                self.pending.push_back(Event::Text(rest));
            }
        }
        if let Some(captured) = self.text.take_capture() {
            match self.tool_format.and_then(|f| f.parse(&captured).map(|p| (f, p))) {
                Some((format, parsed)) => {
                    if !parsed.content.is_empty() {
                        self.pending.push_back(Event::Text(parsed.content));
                    }
                    let calls = parsed
                        .calls
                        .into_iter()
                        .map(|mut c| {
                            if c.id.is_empty() {
                                c.id = format.new_call_id();
                            }
                            c
                        })
                        .collect();
                    self.pending.push_back(Event::ToolCalls(calls));
                    reason = FinishReason::ToolCalls;
                }
                // Not a well-formed call: it is text after all.
                None => self.pending.push_back(Event::Text(captured)),
            }
        }
        let usage = Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens,
        };
        self.pending.push_back(Event::Finished { reason, usage });
        self.next = None;
    }

    fn fail(&mut self, e: EngineError) {
        self.pending.push_back(Event::Failed(e));
        self.next = None;
        self.started = true;
    }

    /// Still reading its prompt.
    fn prefilling(&self) -> bool {
        !self.started
    }

    /// Hands pending events to the reader's channel, as many as it has room for; false when
    /// the reader is gone.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            if self.events.is_closed() {
                return false;
            }
            // This slot is the channel's only sender, so room now is room for the send below.
            if self.events.capacity() == 0 {
                return true;
            }
            let Some(ev) = self.pending.pop_front() else { break };
            if self.pending.is_empty() && self.next.is_none() {
                // The last event: give the place back before the reader can see the end.
                self.permit = None;
            }
            if self.events.try_send(ev).is_err() {
                return false;
            }
        }
        true
    }
}

/// The request's sampler: its tool-call grammar (if any) first, so that only tokens the grammar
/// allows are left, then greedy or top-p / temperature / seeded draw.
///
/// Errors: llama.cpp rejects the grammar.
fn sampler_for(s: &Sampling, tools: Option<&ToolPlan>, model: &Model) -> Result<LlamaSampler, EngineError> {
    let pick = pick_for(s);
    let Some(plan) = tools else { return Ok(pick) };
    let grammar = if plan.lazy {
        LlamaSampler::grammar_lazy(&model.llama, &plan.grammar, GRAMMAR_ROOT, plan.format.markers(), &[])
    } else {
        LlamaSampler::grammar(&model.llama, &plan.grammar, GRAMMAR_ROOT)
    }
    .map_err(|e| EngineError::Tools(format!("llama.cpp rejects the tool-call grammar: {e}")))?;
    Ok(LlamaSampler::chain_simple([grammar, pick]))
}

fn pick_for(s: &Sampling) -> LlamaSampler {
    if s.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    // llama.cpp takes a 32-bit seed, and u32::MAX (LLAMA_DEFAULT_SEED) means "pick one at random".
    let seed = match s.seed {
        Some(x) => ((x ^ (x >> 32)) as u32).min(u32::MAX - 1),
        None => u32::MAX,
    };
    let top_p = if s.top_p > 0.0 && s.top_p < 1.0 { s.top_p } else { 1.0 };
    LlamaSampler::chain_simple([
        LlamaSampler::top_p(top_p, 1),
        LlamaSampler::temp(s.temperature),
        LlamaSampler::dist(seed),
    ])
}

impl Worker {
    pub fn new(model: Arc<Model>, config: &EngineConfig, shared: Arc<Shared>) -> Worker {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        Worker {
            model,
            shared,
            parallel: config.parallel,
            context: config.context,
            threads: i32::try_from(threads).unwrap_or(1),
            caches: vec![Vec::new(); config.parallel as usize],
        }
    }

    pub fn run(mut self, queue: Receiver<Job>, ready: SyncSender<Result<(), String>>) {
        let backend = match backend() {
            Ok(b) => b,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let n_batch = PREFILL_BATCH.max(self.parallel);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.context.saturating_mul(self.parallel)))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_seq_max(self.parallel)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        // The context borrows the model: from a handle of its own, so `self` stays free to change.
        let model = self.model.clone();
        let mut ctx = match model.llama.new_context(backend, params) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot create the llama.cpp context: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut batch = LlamaBatch::new(n_batch as usize, 1);
        let mut slots: Vec<Option<Slot>> = (0..self.parallel).map(|_| None).collect();
        let mut open = true;
        loop {
            // Free the slots whose requests ended before admitting new ones, so that a client's
            // next turn, sent as soon as it saw the last answer end, finds that answer's slot
            // (and its cache) free.
            for slot in &mut slots {
                self.service(slot, &mut ctx);
            }
            if slots.iter().all(Option::is_none) {
                if !open {
                    return;
                }
                match queue.recv() {
                    Ok(job) => self.start(job, &mut slots, &mut ctx, &mut batch),
                    Err(_) => return,
                }
            }
            while open && slots.iter().any(Option::is_none) {
                match queue.try_recv() {
                    Ok(job) => self.start(job, &mut slots, &mut ctx, &mut batch),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }

            if !self.step(&mut slots, &mut ctx, &mut batch) && slots.iter().any(Option::is_some) {
                // Every running slot waits for its reader: wait for a reader or a new job.
                if open && slots.iter().any(Option::is_none) {
                    match queue.recv_timeout(PAUSED_POLL) {
                        Ok(job) => self.start(job, &mut slots, &mut ctx, &mut batch),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => open = false,
                    }
                } else {
                    std::thread::sleep(PAUSED_POLL);
                }
            }
        }
    }

    /// One decode: the next token of every generating slot whose reader keeps up, and a chunk of
    /// the prompt of the first slot still reading one. False when there was nothing to decode.
    fn step(&self, slots: &mut [Option<Slot>], ctx: &mut LlamaContext<'_>, batch: &mut LlamaBatch<'_>) -> bool {
        batch.clear();
        let mut stepping = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let Some(token) = s.next.filter(|_| s.pending.is_empty()) else { continue };
            s.batch_index = batch.n_tokens();
            if let Err(e) = batch.add(token, s.n_past, &[s.seq], true) {
                s.fail(EngineError::Decode(e.to_string()));
                continue;
            }
            stepping.push(i);
        }
        let generating = stepping.len();
        let room = (ctx.n_batch() as usize).saturating_sub(generating);
        let budget = if generating > 0 { room.min(PREFILL_CHUNK_SHARED) } else { room };
        // (slot, prompt tokens added, the chunk ends the prompt)
        let mut reading: Option<(usize, usize, bool)> = None;
        if budget > 0 {
            if let Some((i, s)) =
                slots.iter_mut().enumerate().find_map(|(i, s)| s.as_mut().filter(|s| s.prefilling()).map(|s| (i, s)))
            {
                let from = usize::try_from(s.n_past).unwrap_or(0);
                let to = s.history.len().min(from + budget);
                let mut added = Ok(());
                for (pos, &t) in s.history[from..to].iter().enumerate().map(|(k, t)| (from + k, t)) {
                    let last = pos + 1 == s.history.len();
                    if last {
                        s.batch_index = batch.n_tokens();
                    }
                    let pos32 = i32::try_from(pos).unwrap_or(i32::MAX);
                    added = batch.add(t, pos32, &[s.seq], last);
                    if added.is_err() {
                        break;
                    }
                }
                match added {
                    Ok(()) => reading = Some((i, to - from, to == s.history.len())),
                    Err(e) => {
                        s.kv_invalid = true;
                        s.fail(EngineError::Decode(e.to_string()));
                    }
                }
            }
        }
        if batch.n_tokens() == 0 {
            return false;
        }
        let began = Instant::now();
        let decoded = ctx.decode(batch);
        // A mixed batch's time is split by token count between prompt and generation.
        let nanos = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let prompt_share = reading.map_or(0, |(_, n, _)| n) as u64;
        let total = prompt_share + generating as u64;
        let prompt_nanos = nanos.saturating_mul(prompt_share) / total.max(1);
        self.shared.prompt_nanos.fetch_add(prompt_nanos, Ordering::Relaxed);
        self.shared.generation_nanos.fetch_add(nanos - prompt_nanos, Ordering::Relaxed);
        for i in stepping {
            let Some(s) = slots[i].as_mut() else { continue };
            match &decoded {
                Ok(()) => {
                    if let Some(t) = s.next {
                        s.history.push(t);
                    }
                    s.n_past += 1;
                    let token = s.sampler.sample(ctx, s.batch_index);
                    self.on_token(s, token);
                }
                Err(e) => {
                    s.kv_invalid = true;
                    s.fail(EngineError::Decode(e.to_string()));
                }
            }
            s.flush();
        }
        if let Some((i, n, done)) = reading {
            if let Some(s) = slots[i].as_mut() {
                match &decoded {
                    Ok(()) => {
                        s.n_past += i32::try_from(n).unwrap_or(0);
                        self.shared.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                        if done {
                            self.begin(s, ctx);
                        }
                    }
                    Err(e) => {
                        s.kv_invalid = true;
                        s.fail(EngineError::Decode(e.to_string()));
                    }
                }
                s.flush();
            }
        }
        true
    }

    /// The prompt is read: reports it and samples the first token (the prompt's last logits are
    /// at the slot's batch index).
    fn begin(&self, s: &mut Slot, ctx: &LlamaContext<'_>) {
        s.started = true;
        s.pending.push_back(Event::Started { prompt_tokens: s.prompt_tokens });
        if s.max_tokens == 0 {
            s.finish(FinishReason::Length, true);
        } else {
            let token = s.sampler.sample(ctx, s.batch_index);
            self.on_token(s, token);
        }
    }

    /// Delivers a slot's events and frees it when its generation is over or its reader gone.
    fn service(&mut self, slot: &mut Option<Slot>, ctx: &mut LlamaContext<'_>) {
        let Some(s) = slot else { return };
        let reader_gone = s.events.is_closed() || !s.flush();
        let done = s.started && s.next.is_none() && s.pending.is_empty();
        if !(reader_gone || done) {
            return;
        }
        let running = s.next.is_some() || !s.started;
        let counter = if running { &self.shared.cancelled } else { &self.shared.finished };
        counter.fetch_add(1, Ordering::Relaxed);
        if running {
            tracing::debug!(seq = s.seq, generated = s.generated, "local generation cancelled: its reader is gone");
        }
        // Keep what the KV cache holds for the next request that starts the same way.
        let seq = usize::try_from(s.seq).unwrap_or(0);
        let mut kept = std::mem::take(&mut s.history);
        if s.kv_invalid {
            let _ = ctx.clear_kv_cache_seq(u32::try_from(s.seq).ok(), None, None);
            kept.clear();
        } else {
            kept.truncate(usize::try_from(s.n_past).unwrap_or(0));
        }
        if let Some(c) = self.caches.get_mut(seq) {
            *c = kept;
        }
        *slot = None;
    }

    /// Puts a new request in the free slot whose KV cache shares the longest prefix with its
    /// prompt; the rest of the prompt is read by the next steps.
    fn start(&mut self, job: Job, slots: &mut [Option<Slot>], ctx: &mut LlamaContext<'_>, _batch: &mut LlamaBatch<'_>) {
        if job.events.is_closed() {
            self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let prompt = self.model.render(&job.request.messages, &job.request.tools).map(|p| self.model.tokenize(&p));
        let free = slots.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i);
        let use_cache = job.request.cache_prompt;
        let common = |i: usize| match (&prompt, self.caches.get(i)) {
            (Ok(p), Some(c)) if use_cache => c.iter().zip(p).take_while(|(a, b)| a == b).count(),
            _ => 0,
        };
        // The longest shared prefix; the first free slot among equals.
        let Some((i, shared)) = free.map(|i| (i, common(i))).reduce(|a, b| if b.1 > a.1 { b } else { a }) else {
            return;
        };
        let seq = i32::try_from(i).unwrap_or(0);
        let sampler = sampler_for(&job.request.sampling, job.tools.as_ref(), &self.model);
        let tool_format = job.tools.as_ref().map(|t| t.format);
        let markers = tool_format.map_or(Vec::new(), |f| f.markers().iter().map(|m| (*m).to_owned()).collect());
        let mut slot = Slot {
            seq,
            events: job.events,
            permit: Some(job.permit),
            sampler: LlamaSampler::greedy(),
            text: TextOut::with_markers(job.request.stop, markers),
            tool_format,
            pending: VecDeque::new(),
            next: None,
            n_past: 0,
            history: Vec::new(),
            started: false,
            kv_invalid: false,
            prompt_tokens: 0,
            cached_tokens: 0,
            generated: 0,
            max_tokens: job.request.max_tokens.unwrap_or(u32::MAX),
            batch_index: 0,
        };
        let checked = prompt.and_then(|tokens| {
            slot.sampler = sampler?;
            if tokens.is_empty() {
                return Err(EngineError::Template("the templated prompt is empty".into()));
            }
            if tokens.len() >= self.context as usize {
                return Err(EngineError::ContextExceeded { prompt: tokens.len(), context: self.context });
            }
            Ok(tokens)
        });
        match checked {
            Ok(tokens) => {
                // At least the last prompt token is decoded again: its logits pick the first token.
                let reuse = shared.min(tokens.len() - 1);
                let kept = self.caches.get(i).map_or(0, Vec::len);
                let trimmed = reuse == kept
                    || ctx
                        .clear_kv_cache_seq(u32::try_from(seq).ok(), u32::try_from(reuse).ok(), None)
                        .unwrap_or(false);
                // A model whose cache cannot drop a tail (recurrent ones) starts the sequence over.
                let reuse = if trimmed {
                    reuse
                } else {
                    let _ = ctx.clear_kv_cache_seq(u32::try_from(seq).ok(), None, None);
                    0
                };
                slot.prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
                slot.cached_tokens = u32::try_from(reuse).unwrap_or(0);
                slot.n_past = i32::try_from(reuse).unwrap_or(0);
                slot.history = tokens;
            }
            Err(e) => {
                // The cache of this sequence is untouched and stays usable.
                slot.n_past = i32::try_from(self.caches.get(i).map_or(0, Vec::len)).unwrap_or(0);
                slot.history = self.caches.get(i).cloned().unwrap_or_default();
                slot.fail(e);
            }
        }
        if let Some(c) = self.caches.get_mut(i) {
            c.clear();
        }
        slot.flush();
        slots[i] = Some(slot);
    }

    /// Takes a sampled token: ends the generation (end of turn, stop sequence, max_tokens, full
    /// context) or queues its text and schedules it for the next step.
    fn on_token(&self, s: &mut Slot, token: LlamaToken) {
        s.generated += 1;
        self.shared.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let vocab = self.model.llama.vocab();
        if vocab.is_eog(token) {
            s.finish(FinishReason::Stop, true);
            return;
        }
        let mut piece = vocab.token_to_piece(token, false, None);
        if piece.is_empty() {
            // A control token renders as nothing, unless it is one of the format's tags
            // (`[TOOL_CALLS]`, `<|python_tag|>` are control tokens in their models' vocabularies).
            if let Some(format) = s.tool_format {
                let special = vocab.token_to_piece(token, true, None);
                if format.preserved().iter().any(|m| m.as_bytes() == special.as_slice()) {
                    piece = special;
                }
            }
        }
        let step = s.text.push(&piece);
        if !step.emit.is_empty() {
            s.pending.push_back(Event::Text(step.emit));
        }
        if step.stopped {
            s.finish(FinishReason::Stop, false);
        } else if s.generated >= s.max_tokens || s.n_past >= self.context as i32 {
            s.finish(FinishReason::Length, true);
        } else {
            s.next = Some(token);
        }
    }
}
