//! Server-sent events framing, as both providers stream with it.
//!
//! The decoder follows the WHATWG HTML "event stream interpretation" rules
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>):
//! lines end in CRLF, LF or a lone CR; `field:value` strips one optional space after the colon;
//! lines starting with `:` are comments; several `data:` lines join with `\n`; an event is
//! dispatched only at the blank line that ends it. It is incremental: bytes may arrive split
//! anywhere (inside a JSON payload, a multi-byte UTF-8 character, or between the `\r` and `\n` of
//! one line ending), which is how upstreams really deliver them (shared case C02).

/// One dispatched event: the `event:` name (if any) and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `None` when the event had none (OpenAI streams never name events).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`, without the final newline.
    pub data: String,
}

/// Error from [`SseDecoder::push`]: a line that is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the upstream event stream has a line that is not valid UTF-8")]
pub struct SseError;

/// Incremental SSE decoder. Feed it the body's bytes as they arrive.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The previous byte ended a line with `\r`; a `\n` right after it belongs to the same ending.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `bytes`, appending every event completed by them to `out`.
    ///
    /// Errors: [`SseError`] when a completed line is not UTF-8; the decoder stays usable.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, tail) = bytes.split_at(pos);
            let ended_by_cr = tail[0] == b'\r';
            bytes = &tail[1..];
            if ended_by_cr {
                match bytes {
                    [b'\n', rest @ ..] => bytes = rest,
                    [] => self.after_cr = true,
                    _ => {}
                }
            }
            let result = if self.line.is_empty() {
                self.process_line(head, out)
            } else {
                self.line.extend_from_slice(head);
                let line = std::mem::take(&mut self.line);
                let r = self.process_line(&line, out);
                self.line = line;
                self.line.clear();
                r
            };
            result?;
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data {
                if self.data.ends_with('\n') {
                    self.data.pop();
                }
                out.push(SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data) });
                self.has_data = false;
            } else {
                self.event = None;
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError)?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {} // `id`, `retry` and unknown fields carry nothing a gateway needs.
        }
        Ok(())
    }
}

/// Appends one `data:` event (`data: {data}\n\n`) to `buf`. `data` must not contain newlines
/// (serialized JSON never does).
pub fn write_data(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(b"data: ");
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\n\n");
}

/// Appends one named event (`event: {name}\ndata: {data}\n\n`) to `buf`.
pub fn write_event(buf: &mut Vec<u8>, name: &str, data: &[u8]) {
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\n");
    write_data(buf, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for p in pieces {
            d.push(p, &mut out).unwrap();
        }
        out
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn crlf_split_between_reads_gives_no_empty_or_duplicate_event() {
        let events = decode_in_pieces(&[b"data: {\"a\":1}\r", b"\n\r\ndata: [DONE]\r\n\r\n"]);
        assert_eq!(data(&events), vec!["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn lone_cr_line_endings() {
        let events = decode_in_pieces(&[b"data: x\r\rdata: y\r\r"]);
        assert_eq!(data(&events), vec!["x", "y"]);
    }

    #[test]
    fn data_without_space_and_multiline_data() {
        let events = decode_in_pieces(&[b"data:one\ndata: two\n\n"]);
        assert_eq!(data(&events), vec!["one\ntwo"]);
    }

    #[test]
    fn event_name_and_data_in_separate_reads_stay_paired() {
        let events = decode_in_pieces(&[b"event: content_block_delta\n", b"data: {}\n\n"]);
        assert_eq!(events[0].event.as_deref(), Some("content_block_delta"));
        assert_eq!(events[0].data, "{}");
    }

    #[test]
    fn comments_are_skipped_and_event_is_not_sent_before_blank_line() {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        d.push(b": keep-alive\n\ndata: x\n", &mut out).unwrap();
        assert!(out.is_empty());
        d.push(b"\n", &mut out).unwrap();
        assert_eq!(data(&out), vec!["x"]);
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let whole: &[u8] = "data: {\"t\":\"héllo\"}\r\n\r\nevent: e\ndata: 2\n\n".as_bytes();
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for b in whole {
            d.push(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out, decode_in_pieces(&[whole]));
        assert_eq!(out[0].data, "{\"t\":\"héllo\"}");
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.push(b"data: \xff\n\n", &mut out), Err(SseError));
    }

    #[test]
    fn unterminated_event_at_end_is_not_dispatched() {
        let events = decode_in_pieces(&[b"data: partial"]);
        assert!(events.is_empty());
    }
}
