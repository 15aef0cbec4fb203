//! Turning sampled token bytes into text that is safe to send: whole UTF-8 characters only,
//! never the start of a stop sequence that may still complete, and never a tool call: from the
//! first tool-call marker on, the text is captured for the tool-call parser instead.

/// What one push of token bytes produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Step {
    /// Text that can be sent now.
    pub emit: String,
    /// A stop sequence was found: `emit` ends right before it, and generation must end.
    pub stopped: bool,
}

/// The text of one generation, assembled from token pieces.
#[derive(Debug)]
pub(crate) struct TextOut {
    stops: Vec<String>,
    /// Strings that open a tool call (none when the request has no tools).
    markers: Vec<String>,
    /// The text from the first marker on, once one appeared; stop sequences no longer apply.
    capture: Option<String>,
    /// Bytes that do not form a whole UTF-8 character yet.
    bytes: Vec<u8>,
    /// Decoded text held back because it could be the start of a stop sequence.
    held: String,
}

impl TextOut {
    /// Empty stop strings are ignored (they would match everywhere).
    #[cfg(test)]
    pub fn new(stops: Vec<String>) -> TextOut {
        TextOut::with_markers(stops, Vec::new())
    }

    /// Like [`TextOut::new`], and text from the first of `markers` on is captured, not sent.
    pub fn with_markers(stops: Vec<String>, markers: Vec<String>) -> TextOut {
        let keep = |v: Vec<String>| v.into_iter().filter(|s| !s.is_empty()).collect();
        TextOut { stops: keep(stops), markers: keep(markers), capture: None, bytes: Vec::new(), held: String::new() }
    }

    /// The captured text (from the first marker to the end), once, after [`TextOut::finish`].
    pub fn take_capture(&mut self) -> Option<String> {
        self.capture.take()
    }

    /// Adds a token's bytes; returns what may be sent now and whether a stop sequence ended it.
    pub fn push(&mut self, piece: &[u8]) -> Step {
        self.bytes.extend_from_slice(piece);
        self.decode(false);
        self.release()
    }

    /// Ends the text: flushes held text, and any incomplete character as U+FFFD.
    /// While capturing, everything goes to the capture and nothing is returned.
    pub fn finish(&mut self) -> String {
        self.decode(true);
        if let Some(c) = &mut self.capture {
            c.push_str(&self.held);
            self.held.clear();
        }
        std::mem::take(&mut self.held)
    }

    fn decode(&mut self, last: bool) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.bytes[start..]) {
                Ok(s) => {
                    self.held.push_str(s);
                    start = self.bytes.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid UTF-8 by the error's own report.
                    self.held.push_str(&String::from_utf8_lossy(&self.bytes[start..start + valid]));
                    start += valid;
                    match e.error_len() {
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            start += bad;
                        }
                        None if last => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            start = self.bytes.len();
                            break;
                        }
                        // An incomplete character at the end: wait for the next token.
                        None => break,
                    }
                }
            }
        }
        self.bytes.drain(..start);
    }

    fn release(&mut self) -> Step {
        if let Some(c) = &mut self.capture {
            c.push_str(&self.held);
            self.held.clear();
            return Step::default();
        }
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        let first_marker = self.markers.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first_marker.filter(|m| first_stop.is_none_or(|s| *m < s)) {
            let emit = self.held[..at].to_owned();
            self.capture = Some(self.held[at..].to_owned());
            self.held.clear();
            return Step { emit, stopped: false };
        }
        if let Some(at) = first_stop {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return Step { emit, stopped: true };
        }
        // Hold back the longest tail of the text that is a proper prefix of some stop sequence
        // or marker.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().chain(&self.markers).any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let emit = self.held[..keep].to_owned();
        self.held.drain(..keep);
        Step { emit, stopped: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let mut t = TextOut::new(vec![]);
        let e = "é".as_bytes();
        assert_eq!(t.push(&e[..1]), Step { emit: String::new(), stopped: false });
        assert_eq!(t.push(&e[1..]), Step { emit: "é".into(), stopped: false });
        assert_eq!(t.push(&[0xff, b'a']).emit, "\u{fffd}a");
        t.push(&[0xe2, 0x82]);
        assert_eq!(t.finish(), "\u{fffd}");
    }

    #[test]
    fn a_stop_sequence_across_tokens_ends_the_text_before_it() {
        let mut t = TextOut::new(vec!["END".into(), String::new()]);
        assert_eq!(t.push(b"abc E").emit, "abc ");
        assert_eq!(t.push(b"N").emit, "");
        assert_eq!(t.push(b"D tail"), Step { emit: String::new(), stopped: true });
        let mut t = TextOut::new(vec!["xy".into()]);
        assert_eq!(t.push(b"x1"), Step { emit: "x1".into(), stopped: false });
        assert_eq!(t.push(b"ax"), Step { emit: "a".into(), stopped: false });
        assert_eq!(t.finish(), "x");
    }

    #[test]
    fn text_from_a_tool_call_marker_on_is_captured_not_sent() {
        let mut t = TextOut::with_markers(vec!["STOP".into()], vec!["<tool_call>".into()]);
        assert_eq!(t.push(b"I will call <tool").emit, "I will call ");
        assert_eq!(t.push(b"_call>{\"name\"").emit, "");
        // Stop sequences no longer apply inside the call.
        assert_eq!(t.push(b"STOP}"), Step { emit: String::new(), stopped: false });
        assert_eq!(t.finish(), "");
        assert_eq!(t.take_capture().as_deref(), Some("<tool_call>{\"name\"STOP}"));
        // A marker prefix that does not complete is sent at the end.
        let mut t = TextOut::with_markers(vec![], vec!["<tool_call>".into()]);
        assert_eq!(t.push(b"a <to").emit, "a ");
        assert_eq!(t.push(b"x").emit, "<tox");
        assert_eq!(t.push(b" <t").emit, " ");
        assert_eq!(t.finish(), "<t");
        assert_eq!(t.take_capture(), None);
        // A stop sequence before the marker wins.
        let mut t = TextOut::with_markers(vec!["X".into()], vec!["<tool_call>".into()]);
        assert_eq!(t.push(b"aX<tool_call>"), Step { emit: "a".into(), stopped: true });
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let mut t = TextOut::new(vec!["cd".into(), "b".into()]);
        assert_eq!(t.push(b"abcd"), Step { emit: "a".into(), stopped: true });
    }
}
