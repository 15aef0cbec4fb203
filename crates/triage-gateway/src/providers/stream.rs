//! An upstream SSE body decoded into chunks (OpenAI) or events (Anthropic), one network read
//! at a time, with the provider's idle timeout between reads (shared case C25).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use triage_core::anthropic::Event;
use triage_core::openai::ChatChunk;
use triage_core::sse::{SseDecoder, SseEvent};

use super::local::LocalChunks;
use super::{in_band_error, root_cause, Scrubber, TimeoutKind, UpstreamError, WireFormat};

/// One decoded item of an upstream stream.
#[derive(Debug)]
pub enum StreamItem {
    /// An OpenAI chunk.
    Chunk(ChatChunk),
    /// An Anthropic event (`error` events are reported as failures instead).
    Event(Event),
    /// `data: [DONE]` (OpenAI) or `message_stop` (Anthropic, which is also sent as an event).
    Done,
}

/// How a read of the stream ended.
#[derive(Debug)]
pub enum Batch {
    /// More may follow.
    More,
    /// The upstream closed the body.
    End,
    /// The stream failed; items decoded before the failure are still in the batch.
    Failed(UpstreamError),
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Where the items come from.
enum Source {
    /// An upstream SSE body.
    Sse { body: ByteStream, decoder: SseDecoder, events: Vec<SseEvent> },
    /// The in-process engine (already chunks; no bytes in between).
    Local(Box<LocalChunks>),
}

/// An upstream SSE body being decoded, or a local generation.
pub struct ChunkStream {
    source: Source,
    format: WireFormat,
    idle: Duration,
    done: bool,
    /// Removes the provider's key from the messages of failures (in-stream error events).
    scrubber: Scrubber,
}

impl ChunkStream {
    pub(super) fn new(body: ByteStream, format: WireFormat, idle: Duration) -> Self {
        let source = Source::Sse { body, decoder: SseDecoder::new(), events: Vec::new() };
        ChunkStream { source, format, idle, done: false, scrubber: Scrubber::default() }
    }

    /// The stream, with `scrubber` applied to the message of every failure it reports.
    pub(super) fn scrubbed_by(mut self, scrubber: Scrubber) -> Self {
        self.scrubber = scrubber;
        self
    }

    /// The chunks of a local generation (OpenAI format), with `idle` as the longest wait for
    /// the next one.
    pub(super) fn local(chunks: LocalChunks, idle: Duration) -> Self {
        ChunkStream {
            source: Source::Local(Box::new(chunks)),
            format: WireFormat::OpenAi,
            idle,
            done: false,
            scrubber: Scrubber::default(),
        }
    }

    /// The wire format of the items.
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// Waits for the next network read and decodes every complete event in it into `out`.
    /// Reads with no complete event (a split line, a comment) reset the idle timer and are
    /// followed by the next read before returning. After `[DONE]` / `message_stop`, nothing more
    /// is read. A failure's message (an upstream error event's text) is scrubbed of the
    /// provider's key.
    pub async fn next_batch(&mut self, out: &mut Vec<StreamItem>) -> Batch {
        match self.next_batch_unscrubbed(out).await {
            Batch::Failed(e) => Batch::Failed(self.scrubber.upstream_error(e)),
            b => b,
        }
    }

    async fn next_batch_unscrubbed(&mut self, out: &mut Vec<StreamItem>) -> Batch {
        let (body, decoder, events) = match &mut self.source {
            Source::Sse { body, decoder, events } => (body, decoder, events),
            Source::Local(chunks) => {
                if self.done {
                    return Batch::End;
                }
                let start = out.len();
                loop {
                    match tokio::time::timeout(self.idle, chunks.next_into(out)).await {
                        Err(_) => return Batch::Failed(UpstreamError::Timeout(TimeoutKind::Idle(self.idle))),
                        Ok(Ok(true)) if out.len() == start => continue,
                        Ok(Ok(true)) => {
                            self.done = out[start..].iter().any(|i| matches!(i, StreamItem::Done));
                            return Batch::More;
                        }
                        Ok(Ok(false)) => return Batch::End,
                        Ok(Err(e)) => {
                            self.done = true;
                            return Batch::Failed(e);
                        }
                    }
                }
            }
        };
        loop {
            if self.done {
                return Batch::End;
            }
            let read = match tokio::time::timeout(self.idle, body.next()).await {
                Err(_) => return Batch::Failed(UpstreamError::Timeout(TimeoutKind::Idle(self.idle))),
                Ok(None) => return Batch::End,
                Ok(Some(Err(e))) => return Batch::Failed(UpstreamError::Io(root_cause(&e))),
                Ok(Some(Ok(bytes))) => bytes,
            };
            if decoder.push(&read, events).is_err() {
                return Batch::Failed(UpstreamError::Protocol("the event stream is not valid UTF-8".into()));
            }
            for ev in events.drain(..) {
                let data = ev.data.trim();
                if data == "[DONE]" {
                    // OpenAI's terminator; some Anthropic-compatible proxies send it too.
                    out.push(StreamItem::Done);
                    self.done = true;
                    break;
                }
                let item = match self.format {
                    WireFormat::OpenAi => match serde_json::from_str::<ChatChunk>(data) {
                        Ok(c) if c.extra.get("error").is_none_or(serde_json::Value::is_null) => {
                            Ok(StreamItem::Chunk(c))
                        }
                        _ => Err(in_band_error(data.as_bytes()).map(UpstreamError::InBand).unwrap_or_else(|| {
                            UpstreamError::Protocol("an event of the stream is not a chat completion chunk".into())
                        })),
                    },
                    WireFormat::Anthropic => match Event::parse(data) {
                        Ok(Event::Error { error }) => Err(UpstreamError::InBand(super::InBandError {
                            kind: error.get("type").and_then(|t| t.as_str()).map(str::to_owned),
                            message: error
                                .get("message")
                                .and_then(|m| m.as_str())
                                .unwrap_or("upstream error event")
                                .to_owned(),
                        })),
                        Ok(e) => Ok(StreamItem::Event(e)),
                        Err(_) => {
                            Err(UpstreamError::Protocol("an event of the stream is not a Messages API event".into()))
                        }
                    },
                };
                match item {
                    Ok(StreamItem::Event(Event::MessageStop)) => {
                        out.push(StreamItem::Event(Event::MessageStop));
                        out.push(StreamItem::Done);
                        self.done = true;
                        break;
                    }
                    Ok(i) => out.push(i),
                    Err(e) => {
                        self.done = true;
                        return Batch::Failed(e);
                    }
                }
            }
            if !out.is_empty() {
                return Batch::More;
            }
        }
    }
}
