//! The engine's thread: one llama.cpp context with one KV-cache sequence per slot. Each step
//! admits waiting requests into free slots (prefilling their prompts), then decodes one token of
//! every running slot in a single batch and samples each slot's next token with its own sampler.
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

/// Tokens decoded at once while reading a prompt.
const PREFILL_BATCH: u32 = 512;

/// How long the thread sleeps when every running slot waits for its reader.
const PAUSED_POLL: Duration = Duration::from_millis(2);

pub(crate) struct Worker {
    model: Arc<Model>,
    shared: Arc<Shared>,
    parallel: u32,
    context: u32,
    threads: i32,
}

struct Slot {
    seq: i32,
    events: Sender<Event>,
    /// Given back just before the last event is handed over, so a reader that saw its answer
    /// end can be admitted again at once.
    permit: Option<Permit>,
    sampler: LlamaSampler,
    text: TextOut,
    /// The tool-call format whose calls are captured and parsed, when the request may call tools.
    tool_format: Option<ToolFormat>,
    /// Events not yet taken by the reader's channel.
    pending: VecDeque<Event>,
    /// The token to decode at the next step; `None` once the generation has ended.
    next: Option<LlamaToken>,
    /// Position of `next` in the sequence (= tokens in its KV cache).
    n_past: i32,
    prompt_tokens: u32,
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
        let usage = Usage { prompt_tokens: self.prompt_tokens, completion_tokens: self.generated };
        self.pending.push_back(Event::Finished { reason, usage });
        self.next = None;
    }

    fn fail(&mut self, e: EngineError) {
        self.pending.push_back(Event::Failed(e));
        self.next = None;
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

/// Adds the time since `began` to a nanosecond counter.
fn add_nanos(counter: &std::sync::atomic::AtomicU64, began: Instant) {
    let nanos = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(nanos, Ordering::Relaxed);
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
        }
    }

    pub fn run(self, queue: Receiver<Job>, ready: SyncSender<Result<(), String>>) {
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
        let mut ctx = match self.model.llama.new_context(backend, params) {
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
            for slot in &mut slots {
                self.service(slot, &mut ctx);
            }

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
            if stepping.is_empty() {
                if slots.iter().any(Option::is_some) {
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
                continue;
            }
            let began = Instant::now();
            let decoded = ctx.decode(&mut batch);
            add_nanos(&self.shared.generation_nanos, began);
            for i in stepping {
                let Some(s) = slots[i].as_mut() else { continue };
                match &decoded {
                    Ok(()) => {
                        s.n_past += 1;
                        let token = s.sampler.sample(&ctx, s.batch_index);
                        self.on_token(s, token);
                    }
                    Err(e) => s.fail(EngineError::Decode(e.to_string())),
                }
                s.flush();
            }
        }
    }

    /// Delivers a slot's events and frees it when its generation is over or its reader gone.
    fn service(&self, slot: &mut Option<Slot>, ctx: &mut LlamaContext<'_>) {
        let Some(s) = slot else { return };
        let reader_gone = s.events.is_closed() || !s.flush();
        let done = s.next.is_none() && s.pending.is_empty();
        if !(reader_gone || done) {
            return;
        }
        let counter = if s.next.is_some() { &self.shared.cancelled } else { &self.shared.finished };
        counter.fetch_add(1, Ordering::Relaxed);
        if s.next.is_some() {
            tracing::debug!(seq = s.seq, generated = s.generated, "local generation cancelled: its reader is gone");
        }
        let _ = ctx.clear_kv_cache_seq(u32::try_from(s.seq).ok(), None, None);
        *slot = None;
    }

    /// Reads a new request's prompt into a free slot and samples its first token.
    fn start(&self, job: Job, slots: &mut [Option<Slot>], ctx: &mut LlamaContext<'_>, batch: &mut LlamaBatch<'_>) {
        let Some(i) = slots.iter().position(Option::is_none) else { return };
        if job.events.is_closed() {
            self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
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
            prompt_tokens: 0,
            generated: 0,
            max_tokens: job.request.max_tokens.unwrap_or(u32::MAX),
            batch_index: 0,
        };
        let prefilled = sampler.and_then(|sampler| {
            slot.sampler = sampler;
            self.prefill(&job.request.messages, &job.request.tools, seq, ctx, batch)
        });
        match prefilled {
            Ok(n) => {
                slot.prompt_tokens = n;
                slot.n_past = i32::try_from(n).unwrap_or(i32::MAX);
                slot.pending.push_back(Event::Started { prompt_tokens: n });
                if slot.max_tokens == 0 {
                    slot.finish(FinishReason::Length, true);
                } else {
                    let token = slot.sampler.sample(ctx, batch.n_tokens() - 1);
                    self.on_token(&mut slot, token);
                }
            }
            Err(e) => {
                let _ = ctx.clear_kv_cache_seq(u32::try_from(seq).ok(), None, None);
                slot.fail(e);
            }
        }
        slot.flush();
        slots[i] = Some(slot);
    }

    /// Templates, tokenises and decodes the prompt into sequence `seq`; returns its length in
    /// tokens. The last token's logits are left in `batch`'s last position.
    fn prefill(
        &self,
        messages: &[crate::engine::Message],
        tools: &[crate::engine::Tool],
        seq: i32,
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch<'_>,
    ) -> Result<u32, EngineError> {
        let tokens = self.model.tokenize(&self.model.render(messages, tools)?);
        if tokens.is_empty() {
            return Err(EngineError::Template("the templated prompt is empty".into()));
        }
        if tokens.len() >= self.context as usize {
            return Err(EngineError::ContextExceeded { prompt: tokens.len(), context: self.context });
        }
        let _ = ctx.clear_kv_cache_seq(u32::try_from(seq).ok(), None, None);
        let last = tokens.len() - 1;
        let chunk = (ctx.n_batch() as usize).max(1);
        for (c, part) in tokens.chunks(chunk).enumerate() {
            batch.clear();
            for (j, &t) in part.iter().enumerate() {
                let pos = c * chunk + j;
                let pos32 = i32::try_from(pos).map_err(|e| EngineError::Decode(e.to_string()))?;
                batch.add(t, pos32, &[seq], pos == last).map_err(|e| EngineError::Decode(e.to_string()))?;
            }
            let began = Instant::now();
            ctx.decode(batch).map_err(|e| EngineError::Decode(e.to_string()))?;
            add_nanos(&self.shared.prompt_nanos, began);
        }
        self.shared.prompt_tokens.fetch_add(tokens.len() as u64, Ordering::Relaxed);
        u32::try_from(tokens.len()).map_err(|e| EngineError::Decode(e.to_string()))
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
