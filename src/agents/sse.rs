//! Incremental Server-Sent Events parser (the `text/event-stream` format of the WHATWG spec).
//!
//! Pure and I/O-free: feed it whatever byte slices the socket hands out — a read boundary may
//! fall anywhere, even inside a UTF-8 sequence or between the CR and LF of a CRLF — and it
//! returns every event completed so far. Lines end in CRLF, LF or a lone CR; `data:` lines
//! of one event are joined with `\n`; `:` lines are comments; a blank line dispatches.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if the event named one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line being read (no terminator yet).
    line: Vec<u8>,
    /// The previous byte was a CR, so an LF right after it is part of the same terminator.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// A line or an event went past its bound: the stream is not trustworthy any more.
    overflowed: bool,
}

/// Upper bound on one line, so a hostile upstream cannot grow the buffer without limit.
const MAX_LINE: usize = 4 << 20;
/// Upper bound on one event's joined `data:` lines (a stream of `data:` lines that never
/// ends in a blank line must not grow memory either).
pub const MAX_EVENT: usize = 8 << 20;

impl SseParser {
    /// A fresh parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// A line longer than 4 MiB or an event larger than [`MAX_EVENT`] was cut: the caller
    /// must end the stream with an error instead of trusting what follows.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Feed the next bytes; returns the events they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut rest = bytes;
        if self.after_cr {
            self.after_cr = false;
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push_line_bytes(&rest[..i]);
            let is_cr = rest[i] == b'\r';
            rest = &rest[i + 1..];
            if is_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut out);
        }
        self.push_line_bytes(rest);
        out
    }

    /// The stream ended: complete a final unterminated line and dispatch a pending event (the
    /// spec would drop it, but some servers omit the last blank line).
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut out);
        }
        self.process_line(b"", &mut out);
        out
    }

    fn push_line_bytes(&mut self, b: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        if b.len() > room {
            self.overflowed = true;
        }
        self.line.extend_from_slice(&b[..b.len().min(room)]);
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event = None;
            self.data.clear();
            self.has_data = false;
            return;
        }
        let line = String::from_utf8_lossy(line);
        let line = line.strip_prefix('\u{feff}').unwrap_or(&line);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    self.overflowed = true;
                    return;
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields do not matter here
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn feed_split(input: &[u8], sizes: &[usize]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut k = 0;
        while !rest.is_empty() {
            let n = sizes[k % sizes.len()].max(1).min(rest.len());
            out.extend(p.feed(&rest[..n]));
            rest = &rest[n..];
            k += 1;
        }
        out.extend(p.finish());
        out
    }

    const OPENAI: &str = "data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
        event: ping\ndata: {\"type\": \"ping\"}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"héllo wörld\"}}\n\n";

    #[test]
    fn lf_events() {
        let got = feed_split(OPENAI.as_bytes(), &[usize::MAX]);
        assert_eq!(
            got,
            vec![
                ev(None, "{\"a\":1}"),
                ev(None, "{\"b\":2}"),
                ev(None, "[DONE]")
            ]
        );
    }

    #[test]
    fn crlf_and_cr_line_endings_are_equivalent() {
        let lf = feed_split(ANTHROPIC.as_bytes(), &[usize::MAX]);
        let crlf = ANTHROPIC.replace('\n', "\r\n");
        let cr = ANTHROPIC.replace('\n', "\r");
        assert_eq!(lf.len(), 3);
        assert_eq!(feed_split(crlf.as_bytes(), &[usize::MAX]), lf);
        assert_eq!(feed_split(cr.as_bytes(), &[usize::MAX]), lf);
        assert_eq!(lf[0].event.as_deref(), Some("message_start"));
        assert_eq!(lf[1].event.as_deref(), Some("ping"));
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for text in [
            OPENAI.to_string(),
            ANTHROPIC.replace('\n', "\r\n"),
            ANTHROPIC.to_string(),
        ] {
            let whole = feed_split(text.as_bytes(), &[usize::MAX]);
            for a in 1..text.len() {
                // two pieces split at every byte (including inside CRLF and inside UTF-8)
                let mut p = SseParser::new();
                let mut got = p.feed(&text.as_bytes()[..a]);
                got.extend(p.feed(&text.as_bytes()[a..]));
                got.extend(p.finish());
                assert_eq!(got, whole, "split at {a}");
            }
            for sizes in [&[1usize][..], &[2, 3], &[7, 1, 5]] {
                assert_eq!(feed_split(text.as_bytes(), sizes), whole, "sizes {sizes:?}");
            }
        }
    }

    #[test]
    fn multi_line_data_comments_and_fields() {
        let text = ": keep-alive\nid: 7\nretry: 100\ndata: line one\ndata:line two\ndata\n\n";
        assert_eq!(
            feed_split(text.as_bytes(), &[usize::MAX]),
            vec![ev(None, "line one\nline two\n")]
        );
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        let text = "\n\n: comment\n\nevent: ping\n\ndata: x\n\n";
        assert_eq!(
            feed_split(text.as_bytes(), &[usize::MAX]),
            vec![ev(None, "x")]
        );
    }

    #[test]
    fn finish_flushes_an_unterminated_event() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: {\"x\":1}").is_empty());
        assert_eq!(p.finish(), vec![ev(None, "{\"x\":1}")]);
        assert!(p.finish().is_empty());
    }

    #[test]
    fn event_name_resets_between_events() {
        let text = "event: a\ndata: 1\n\ndata: 2\n\n";
        assert_eq!(
            feed_split(text.as_bytes(), &[usize::MAX]),
            vec![ev(Some("a"), "1"), ev(None, "2")]
        );
    }

    #[test]
    fn an_event_that_never_ends_is_cut_and_flagged() {
        let mut p = SseParser::new();
        let line = format!("data: {}\n", "x".repeat(1 << 20));
        let mut events = Vec::new();
        for _ in 0..9 {
            events.extend(p.feed(line.as_bytes()));
        }
        assert!(events.is_empty());
        assert!(p.overflowed());
        assert!(p.data.len() <= MAX_EVENT, "buffer grew past the bound");
        let mut q = SseParser::new();
        q.feed(&vec![b'y'; (4 << 20) + 1]);
        assert!(
            q.overflowed(),
            "an over-long line is flagged, not silently cut"
        );
        let mut ok = SseParser::new();
        assert_eq!(ok.feed(b"data: fine\n\n").len(), 1);
        assert!(!ok.overflowed());
    }
}
