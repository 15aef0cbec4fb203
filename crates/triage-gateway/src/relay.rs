//! Relaying an upstream stream to the client, read by read, in the client's format.
//!
//! An [`Encoder`] turns upstream items (OpenAI chunks or Anthropic events) into the client's SSE
//! events: [`OpenAiEncoder`] normalises chunks (translating Anthropic events first when the
//! upstream is Anthropic), [`AnthropicEncoder`] forwards Anthropic events as they came (or
//! translates OpenAI chunks). The [`Relay`] drives one: it never buffers more than one network
//! read, ends with the format's clean terminator or one well-formed error event, and records the
//! outcome exactly once (`cancelled` when the client leaves; dropping the relay closes the
//! upstream connection).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use triage_core::anthropic::{self as a, Event};
use triage_core::catalog::DeploymentId;
use triage_core::cost::TokenUsage;
use triage_core::openai::ChatChunk;
use triage_core::sse;
use triage_core::stream::ChunkNormalizer;
use triage_core::translate::{AnthropicToOpenAi, OpenAiToAnthropic};

use crate::accounting::Accounting;
use crate::error::GatewayError;
use crate::guarding::StreamRestore;
use crate::providers::{Batch, ChunkStream, StreamItem, UpstreamError};
use crate::request::RouteInfo;
use crate::state::{InFlight, SharedState};

/// Turns upstream items into the client's SSE bytes.
pub trait Encoder: Send + 'static {
    /// Encodes one upstream item, appending SSE bytes to `buf`.
    fn item(&mut self, item: StreamItem, buf: &mut Vec<u8>);
    /// True when the upstream's answer is complete.
    fn finished(&self) -> bool;
    /// Appends the clean end of the stream.
    fn end_ok(&mut self, buf: &mut Vec<u8>);
    /// Appends one error event (and no clean terminator).
    fn end_err(&mut self, err: &GatewayError, buf: &mut Vec<u8>);
    /// The usage the upstream reported.
    fn usage(&self) -> Option<TokenUsage>;
    /// Characters of output text streamed so far (for estimates when no usage comes).
    fn output_chars(&self) -> u64;
}

/// Characters of content, reasoning and tool arguments in a chunk.
fn chunk_chars(c: &ChatChunk) -> u64 {
    c.choices
        .iter()
        .map(|ch| {
            let text = ch.delta.content.as_deref().map_or(0, str::len);
            let args: usize = ch
                .delta
                .tool_calls
                .iter()
                .flatten()
                .filter_map(|t| t.function.as_ref().and_then(|f| f.arguments.as_deref()))
                .map(str::len)
                .sum();
            (text + args) as u64
        })
        .sum()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// OpenAI client: normalised chunks, the usage chunk if asked, one `[DONE]`.
pub struct OpenAiEncoder {
    chars: u64,
    normalizer: ChunkNormalizer,
    from_anthropic: AnthropicToOpenAi,
    chunks: Vec<ChatChunk>,
    /// True once an Anthropic event came: usage is then Anthropic's own (cache writes apart).
    anthropic_upstream: bool,
}

impl OpenAiEncoder {
    /// An encoder for a client that did or did not ask for the usage chunk.
    pub fn new(wants_usage: bool) -> Self {
        OpenAiEncoder {
            chars: 0,
            normalizer: ChunkNormalizer::new(wants_usage),
            from_anthropic: AnthropicToOpenAi::new(now_secs()),
            chunks: Vec::new(),
            anthropic_upstream: false,
        }
    }

    fn write(&mut self, c: ChatChunk, buf: &mut Vec<u8>) {
        self.chars += chunk_chars(&c);
        if let Some(c) = self.normalizer.push(c) {
            if let Ok(json) = serde_json::to_vec(&c) {
                sse::write_data(buf, &json);
            }
        }
    }
}

impl Encoder for OpenAiEncoder {
    fn item(&mut self, item: StreamItem, buf: &mut Vec<u8>) {
        match item {
            StreamItem::Chunk(c) => self.write(c, buf),
            StreamItem::Event(e) => {
                self.anthropic_upstream = true;
                if let triage_core::translate::Flow::Done = self.from_anthropic.push(&e, &mut self.chunks) {
                    self.normalizer.upstream_done();
                }
                for c in std::mem::take(&mut self.chunks) {
                    self.write(c, buf);
                }
            }
            StreamItem::Done => self.normalizer.upstream_done(),
        }
    }

    fn finished(&self) -> bool {
        self.normalizer.finished()
    }

    fn end_ok(&mut self, buf: &mut Vec<u8>) {
        if let Some(chunk) = self.normalizer.usage_chunk() {
            if let Ok(json) = serde_json::to_vec(&chunk) {
                sse::write_data(buf, &json);
            }
        }
        sse::write_data(buf, b"[DONE]");
    }

    fn end_err(&mut self, err: &GatewayError, buf: &mut Vec<u8>) {
        sse::write_data(buf, &err.to_sse_json());
    }

    fn usage(&self) -> Option<TokenUsage> {
        // Cache writes are priced as such (`cache_write`) on translated streams too.
        if self.anthropic_upstream {
            return Some(TokenUsage::from_anthropic(self.from_anthropic.anthropic_usage()));
        }
        self.normalizer.usage().map(TokenUsage::from_openai)
    }

    fn output_chars(&self) -> u64 {
        self.chars
    }
}

/// Anthropic client: Anthropic events, ending with exactly one `message_stop` and no `[DONE]`.
pub struct AnthropicEncoder {
    chars: u64,
    from_openai: OpenAiToAnthropic,
    events: Vec<Event>,
    /// Usage of a forwarded Anthropic stream.
    usage: Option<a::Usage>,
    stopped: bool,
    upstream_done: bool,
    openai_upstream: bool,
}

impl AnthropicEncoder {
    /// An encoder; `prompt_estimate` fills `message_start.usage.input_tokens` when the upstream
    /// is OpenAI-compatible (its real count arrives in `message_delta`).
    pub fn new(prompt_estimate: u64) -> Self {
        AnthropicEncoder {
            chars: 0,
            from_openai: OpenAiToAnthropic::new(prompt_estimate),
            events: Vec::new(),
            usage: None,
            stopped: false,
            upstream_done: false,
            openai_upstream: false,
        }
    }

    fn write(buf: &mut Vec<u8>, e: &Event) {
        if let Ok(json) = serde_json::to_vec(&e.to_json()) {
            sse::write_event(buf, e.name(), &json);
        }
    }
}

impl Encoder for AnthropicEncoder {
    fn item(&mut self, item: StreamItem, buf: &mut Vec<u8>) {
        match item {
            StreamItem::Event(e) => {
                match &e {
                    Event::MessageStart { message } => self.usage = Some(message.usage.clone()),
                    Event::ContentBlockDelta { delta, .. } => {
                        for k in ["text", "partial_json", "thinking"] {
                            self.chars += delta.get(k).and_then(|v| v.as_str()).map_or(0, str::len) as u64;
                        }
                    }
                    Event::MessageDelta { .. } => {
                        if let (Some(d), Some(u)) = (e.delta_usage(), self.usage.as_mut()) {
                            d.apply(u);
                        }
                    }
                    Event::MessageStop => {
                        if self.stopped {
                            return;
                        }
                        self.stopped = true;
                    }
                    _ => {}
                }
                Self::write(buf, &e);
            }
            StreamItem::Chunk(c) => {
                self.openai_upstream = true;
                self.chars += chunk_chars(&c);
                self.from_openai.push(&c, &mut self.events);
                for e in std::mem::take(&mut self.events) {
                    Self::write(buf, &e);
                }
            }
            StreamItem::Done => self.upstream_done = true,
        }
    }

    fn finished(&self) -> bool {
        self.stopped || (self.openai_upstream && (self.from_openai.has_finished() || self.upstream_done))
    }

    fn end_ok(&mut self, buf: &mut Vec<u8>) {
        if self.openai_upstream && !self.stopped {
            self.stopped = true;
            self.from_openai.finish(&mut self.events);
            for e in std::mem::take(&mut self.events) {
                Self::write(buf, &e);
            }
        }
    }

    fn end_err(&mut self, err: &GatewayError, buf: &mut Vec<u8>) {
        sse::write_event(buf, "error", &err.to_anthropic_sse_json());
    }

    fn usage(&self) -> Option<TokenUsage> {
        if self.openai_upstream {
            return self.from_openai.usage().map(TokenUsage::from_openai);
        }
        self.usage.as_ref().map(TokenUsage::from_anthropic)
    }

    fn output_chars(&self) -> u64 {
        self.chars
    }
}

/// Per-stream bookkeeping: TTFT, and the request's accounting, done exactly once.
pub struct Finisher {
    acct: Option<Accounting>,
    _in_flight: InFlight,
    info: RouteInfo,
    deployment: DeploymentId,
    ttft_ms: Option<f64>,
    /// A sampled request's evaluation, queued when the stream (this) is dropped: after the
    /// client has the last byte. Declared last, so it drops after the accounting.
    _release: Option<crate::shadow::Release>,
}

impl Finisher {
    /// Bookkeeping for a stream of `deployment`.
    pub fn new(acct: Accounting, info: RouteInfo, deployment: DeploymentId, in_flight: InFlight) -> Self {
        Finisher { acct: Some(acct), _in_flight: in_flight, info, deployment, ttft_ms: None, _release: None }
    }

    /// Queues `release`'s evaluation job once the stream is dropped (production evaluation).
    pub fn with_release(mut self, release: Option<crate::shadow::Release>) -> Self {
        self._release = release;
        self
    }

    /// Copies the text of an item the client gets into a sampled request's ticket.
    fn observe(&mut self, item: &StreamItem) {
        if let Some(t) = self.acct.as_mut().and_then(|a| a.shadow.as_mut()) {
            t.observe(item);
        }
    }

    fn first_chunk(&mut self) {
        if self.ttft_ms.is_some() {
            return;
        }
        let Some(acct) = &self.acct else { return };
        let secs = acct.started.elapsed().as_secs_f64();
        self.ttft_ms = Some(secs * 1000.0);
        let c = &acct.state.catalog;
        let (model, tier) = (self.info.model, self.info.tier);
        match acct.state.instruments.ttft(c, model).filter(|_| c.models()[model].tier == tier) {
            Some(h) => h.record(secs),
            None => metrics::histogram!("triage_ttft_seconds", "model" => c.models()[model].id.clone(), "tier" => c.tiers()[tier].clone())
                .record(secs),
        }
    }

    fn finish(&mut self, status: &str, usage: Option<TokenUsage>, output_chars: u64) {
        if let Some(acct) = self.acct.take() {
            if status == "cancelled" {
                tracing::debug!(request_id = %acct.request_id, "client disconnected; upstream request cancelled");
            }
            acct.finish(Some(&self.info), status, usage, output_chars, self.ttft_ms);
        }
    }

    fn state(&self) -> Option<&SharedState> {
        self.acct.as_ref().map(|a| &a.state)
    }
}

/// Relays one upstream stream to the client through an [`Encoder`].
pub struct Relay<E> {
    upstream: ChunkStream,
    encoder: E,
    /// Items decoded but not yet sent (at first: those held back while priming).
    items: Vec<StreamItem>,
    /// How priming's last read ended; consumed before reading on.
    first: Option<Batch>,
    ended: bool,
    ctx: Finisher,
    /// Puts the guard's placeholders back, when the request was redacted.
    restore: Option<StreamRestore>,
    /// The encoder's usage so far and output length, kept for a drop mid-stream.
    usage: Option<TokenUsage>,
    output_chars: u64,
}

impl<E> Drop for Relay<E> {
    fn drop(&mut self) {
        // Still open: the client went away (or the server shut down) mid-stream.
        if !self.ended {
            let usage = self.usage.take();
            self.ctx.finish("cancelled", usage, self.output_chars);
        }
    }
}

impl<E: Encoder> Relay<E> {
    /// A relay that first sends `held` (and acts on `ended`, how priming's last read ended).
    pub fn new(
        upstream: ChunkStream,
        held: Vec<StreamItem>,
        ended: Option<Batch>,
        encoder: E,
        ctx: Finisher,
        restore: Option<StreamRestore>,
    ) -> Self {
        Relay {
            upstream,
            encoder,
            items: held,
            first: Some(ended.unwrap_or(Batch::More)),
            ended: false,
            ctx,
            restore,
            usage: None,
            output_chars: 0,
        }
    }

    /// The relay as a response body stream.
    pub fn into_body(self) -> axum::body::Body {
        let s = futures_util::stream::unfold(self, |mut r| async move {
            r.next_bytes().await.map(|b| (Ok::<_, std::convert::Infallible>(b), r))
        });
        axum::body::Body::from_stream(s)
    }

    /// The bytes of the next network read, re-framed; `None` after the end.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        loop {
            let batch = match self.first.take() {
                Some(b) => b,
                None => {
                    let stopped = match self.ctx.state() {
                        Some(s) => s.stopped(),
                        None => return None,
                    };
                    tokio::select! {
                        b = self.upstream.next_batch(&mut self.items) => b,
                        _ = stopped => {
                            let mut buf = Vec::new();
                            self.ended = true;
                            let err = GatewayError::ShuttingDown;
                            self.encoder.end_err(&err, &mut buf);
                            let (usage, chars) = (self.encoder.usage(), self.encoder.output_chars());
                            self.ctx.finish("shutdown", usage, chars);
                            return Some(buf.into());
                        }
                    }
                }
            };
            let mut buf = Vec::new();
            for mut item in self.items.drain(..) {
                if let Some(r) = &mut self.restore {
                    match &mut item {
                        StreamItem::Chunk(c) => r.chunk(c),
                        StreamItem::Event(e) => {
                            if let Some(extra) = r.event(e) {
                                self.encoder.item(StreamItem::Event(extra), &mut buf);
                            }
                        }
                        StreamItem::Done => {}
                    }
                }
                self.ctx.observe(&item);
                self.encoder.item(item, &mut buf);
            }
            if !buf.is_empty() {
                self.ctx.first_chunk();
            }
            self.usage = self.encoder.usage();
            self.output_chars = self.encoder.output_chars();
            match batch {
                Batch::More if buf.is_empty() => continue,
                Batch::More => return Some(buf.into()),
                Batch::End => {
                    let failure = (!self.encoder.finished()).then_some(UpstreamError::Truncated);
                    self.end(&mut buf, failure);
                    return Some(buf.into());
                }
                Batch::Failed(e) => {
                    // An upstream that finished its answer and then stalls or breaks before its
                    // terminator has still delivered a whole answer.
                    let failure = (!self.encoder.finished()).then_some(e);
                    self.end(&mut buf, failure);
                    return Some(buf.into());
                }
            }
        }
    }

    /// Ends the stream cleanly, or with one well-formed error event (shared cases C04, C25).
    fn end(&mut self, buf: &mut Vec<u8>, failure: Option<UpstreamError>) {
        self.ended = true;
        let chars = self.encoder.output_chars();
        match failure {
            None => {
                self.encoder.end_ok(buf);
                let usage = self.encoder.usage();
                self.ctx.finish("200", usage, chars);
            }
            Some(source) => {
                let Some(state) = self.ctx.state().cloned() else { return };
                // A stream that breaks after its first token is the deployment's failure (unless it
                // says the prompt was too long: the request's fault, never the breaker's).
                let too_long =
                    matches!(&source, UpstreamError::InBand(e) if crate::error::is_context_window_error(&e.message));
                if !too_long {
                    state.record_failure(self.ctx.deployment);
                }
                let d = &state.catalog.deployments()[self.ctx.deployment];
                let provider = state.catalog.providers()[d.provider].name.clone();
                tracing::warn!(provider = %provider, error = %source, "upstream stream failed");
                let err = GatewayError::Upstream { provider, source };
                self.encoder.end_err(&err, buf);
                let usage = self.encoder.usage();
                self.ctx.finish("stream_error", usage, chars);
            }
        }
    }
}
