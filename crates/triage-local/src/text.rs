//! Turning sampled token bytes into text that is safe to send: whole UTF-8 characters only, and
//! never the start of a stop sequence that may still complete.

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
    /// Bytes that do not form a whole UTF-8 character yet.
    bytes: Vec<u8>,
    /// Decoded text held back because it could be the start of a stop sequence.
    held: String,
}

impl TextOut {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new(stops: Vec<String>) -> TextOut {
        TextOut { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), bytes: Vec::new(), held: String::new() }
    }

    /// Adds a token's bytes; returns what may be sent now and whether a stop sequence ended it.
    pub fn push(&mut self, piece: &[u8]) -> Step {
        self.bytes.extend_from_slice(piece);
        self.decode(false);
        self.release()
    }

    /// Ends the text: flushes held text, and any incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        self.decode(true);
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
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first_stop {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return Step { emit, stopped: true };
        }
        // Hold back the longest tail of the text that is a proper prefix of some stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
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
    fn the_earliest_of_several_stops_wins() {
        let mut t = TextOut::new(vec!["cd".into(), "b".into()]);
        assert_eq!(t.push(b"abcd"), Step { emit: "a".into(), stopped: true });
    }
}
