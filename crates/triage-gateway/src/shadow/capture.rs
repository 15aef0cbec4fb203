//! A sampled request's ticket: a copy of the request and the answer's text as the client got it,
//! and the response body that queues the job once it has been written.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use triage_core::anthropic::{Block, Event};
use triage_core::openai::ChatRequest;

use super::{Job, Meta, Release};
use crate::providers::{Completion, StreamItem};

/// Characters of answer kept for the judge (twice what it is shown, so the cut is the judge's).
const MAX_ANSWER_CHARS: usize = 2 * triage_core::evals::MAX_JUDGE_CHARS;

/// A sampled request on its way: see the module docs of [`crate::evals`].
#[derive(Debug)]
pub struct Ticket {
    request: ChatRequest,
    answer: String,
    job: Arc<Mutex<Option<Job>>>,
}

impl Ticket {
    pub(super) fn new(request: ChatRequest, job: Arc<Mutex<Option<Job>>>) -> Ticket {
        Ticket { request, answer: String::new(), job }
    }

    fn push(&mut self, text: &str) {
        if self.answer.len() + text.len() <= MAX_ANSWER_CHARS {
            self.answer.push_str(text);
        }
    }

    /// Appends the text an upstream stream item carries (content, tool names and arguments).
    pub fn observe(&mut self, item: &StreamItem) {
        match item {
            StreamItem::Chunk(c) => {
                let Some(ch) = c.choices.iter().find(|ch| ch.index == 0) else { return };
                if let Some(t) = &ch.delta.content {
                    self.push(t);
                }
                for tc in ch.delta.tool_calls.iter().flatten() {
                    if let Some(f) = &tc.function {
                        if let Some(n) = &f.name {
                            self.push(&format!("[calls {n}]"));
                        }
                        if let Some(a) = &f.arguments {
                            self.push(a);
                        }
                    }
                }
            }
            StreamItem::Event(Event::ContentBlockStart { content_block: Block::ToolUse { name, .. }, .. }) => {
                self.push(&format!("[calls {name}]"));
            }
            StreamItem::Event(Event::ContentBlockDelta { delta, .. }) => {
                for k in ["text", "partial_json"] {
                    if let Some(t) = delta.get(k).and_then(|v| v.as_str()) {
                        self.push(t);
                    }
                }
            }
            _ => {}
        }
    }

    /// Sets the answer from a whole (non-streamed) completion.
    pub fn set_answer(&mut self, c: &Completion) {
        self.answer = match c {
            Completion::OpenAi(c) => triage_core::evals::completion_text(c),
            Completion::Anthropic(r) => triage_core::evals::anthropic_text(r),
        };
        if self.answer.len() > MAX_ANSWER_CHARS {
            let mut end = MAX_ANSWER_CHARS;
            while !self.answer.is_char_boundary(end) {
                end -= 1;
            }
            self.answer.truncate(end);
        }
    }

    /// Hands the job to the release, which queues it when the response body is dropped.
    pub(super) fn into_job(self, meta: Meta) {
        let job = Job { request: self.request, answer: self.answer, meta };
        if let Ok(mut slot) = self.job.lock() {
            *slot = Some(job);
        }
    }
}

/// A whole response body that queues a sampled request's job when it is dropped, that is once
/// the server has written it (or the client went away). Its size stays exact, so the response
/// keeps its `content-length`.
struct Released {
    inner: Body,
    _release: Release,
}

impl HttpBody for Released {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `body`, queueing `release`'s job once it has been written.
pub fn with_release(body: Body, release: Release) -> Body {
    Body::new(Released { inner: body, _release: release })
}
