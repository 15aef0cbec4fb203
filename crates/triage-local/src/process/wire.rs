//! The frames between the gateway and its engine worker process, and their encoding.
//!
//! One frame is a 4-byte little-endian length followed by that many bytes of JSON (serde's
//! encoding of [`ToWorker`] or [`FromWorker`], internally tagged by `"t"`). JSON keeps the
//! protocol readable in a packet dump; a token's event is about 40 bytes, and encoding it costs
//! microseconds against the milliseconds a decode step takes.
//!
//! The conversation, in order:
//!
//! 1. the worker connects to the socket the gateway named and sends [`FromWorker::Hello`] with
//!    the token it was given (so no other local process can pose as it);
//! 2. the gateway sends [`ToWorker::Load`]; the worker loads the model and answers
//!    [`FromWorker::Ready`] or [`FromWorker::LoadFailed`] (and exits);
//! 3. then, in any order: [`ToWorker::Generate`] starts a generation, whose events come back
//!    as [`FromWorker::Event`] until `Finished` or `Failed`; [`ToWorker::Cancel`] stops one,
//!    which the worker confirms with [`FromWorker::Cancelled`] once the engine let go of it;
//!    [`ToWorker::Credit`] lets a generation send more events (flow control: a slow client
//!    pauses its generation instead of filling memory); [`FromWorker::Stats`] carries the
//!    engine's counters before every end of a generation and every second while any runs.
//!
//! Each generation ends with exactly one terminal frame (`Finished`, `Failed` or `Cancelled`);
//! the gateway frees its place in the queue only then, so its count of admitted requests is
//! never below the worker's.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::engine::{EngineConfig, EngineError, EngineStats, Event, GenerateRequest};
use crate::tools::ToolFormat;

/// Largest frame accepted, in bytes: a request carries a whole conversation (tools included),
/// at most a few MiB in practice.
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// Events a generation may send ahead of what the gateway has read; the gateway grants more
/// with [`ToWorker::Credit`] every `WINDOW / 2` events read.
pub(crate) const WINDOW: u32 = 64;

/// The gateway to the worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    /// Load this model (the first frame, once).
    Load {
        /// The engine's settings.
        config: EngineConfig,
    },
    /// Start a generation.
    Generate {
        /// The gateway's id of it, unique for the gateway's lifetime.
        id: u64,
        /// What to generate.
        request: GenerateRequest,
    },
    /// Stop a generation (its reader went away).
    Cancel {
        /// Its id.
        id: u64,
    },
    /// The gateway read `n` more events of a generation.
    Credit {
        /// Its id.
        id: u64,
        /// Events read.
        n: u32,
    },
    /// Test only: end the worker process abnormally. Honoured only by a worker started with
    /// [`crate::WorkerOptions::allow_crash`], which only test builds set; others log and ignore it.
    Crash,
}

/// The worker to the gateway.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum FromWorker {
    /// The first frame: who is speaking.
    Hello {
        /// The token from the worker's environment.
        token: String,
        /// The worker's process id.
        pid: u32,
    },
    /// The model is loaded and the engine runs.
    Ready {
        /// The model's tool-call format, or why it cannot call tools.
        tools: Result<ToolFormat, String>,
        /// Where the model's prompt format comes from.
        template: crate::TemplateSource,
    },
    /// The model cannot be loaded; the worker exits after this.
    LoadFailed {
        /// Why.
        error: EngineError,
    },
    /// An event of a generation.
    Event {
        /// The generation's id.
        id: u64,
        /// The event.
        event: Event,
    },
    /// A cancelled generation is gone from the engine (its slot or queue place is free).
    Cancelled {
        /// Its id.
        id: u64,
    },
    /// The engine's counters now.
    Stats {
        /// The counters (`in_flight` and the request outcomes are the gateway's own).
        stats: EngineStats,
    },
}

/// `frame` encoded: length prefix and JSON.
pub(crate) fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    // Serialising these types cannot fail: no maps with non-string keys, no foreign impls.
    let body = serde_json::to_vec(frame).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads one frame; `Ok(None)` at a clean end of the stream (between frames).
///
/// Errors: the stream fails or ends inside a frame, a frame is longer than [`MAX_FRAME`], or
/// its JSON is not a `T`.
pub(crate) async fn read<T, R>(r: &mut R) -> std::io::Result<Option<T>>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame that does not parse: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::engine::{FinishReason, Usage};

    #[tokio::test]
    async fn frames_round_trip_and_a_short_stream_is_an_error() {
        let frames = [
            FromWorker::Event { id: 7, event: Event::Text("héllo".into()) },
            FromWorker::Event {
                id: 7,
                event: Event::Finished {
                    reason: FinishReason::Length,
                    usage: Usage { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 1 },
                },
            },
            FromWorker::Ready { tools: Err("no".into()), template: crate::TemplateSource::File },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
        let mut r = &bytes[..];
        for f in &frames {
            let got: FromWorker = read(&mut r).await.unwrap().unwrap();
            assert_eq!(format!("{got:?}"), format!("{f:?}"));
        }
        assert!(read::<FromWorker, _>(&mut r).await.unwrap().is_none(), "a clean end");
        let cut = &bytes[..bytes.len() - 1];
        let mut r = cut;
        let _: FromWorker = read(&mut r).await.unwrap().unwrap();
        let _: FromWorker = read(&mut r).await.unwrap().unwrap();
        assert!(read::<FromWorker, _>(&mut r).await.is_err(), "ends inside a frame");
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(read::<FromWorker, _>(&mut &huge[..]).await.unwrap_err().to_string().contains("at most"));
    }
}
