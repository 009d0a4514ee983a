//! RFC 6455 frame codec: sans-IO, zero-copy.
//!
//! Owns: parsing frame headers, unmasking payloads in place inside the connection's read
//! buffer, message assembly across fragments, incremental UTF-8 validation, size limits,
//! and encoding frame headers. Must not touch: sockets, JSON, auth.
//!
//! # Buffer contract
//!
//! The connection loop owns one `Vec<u8>` read buffer and only ever *appends* to it (reads
//! go to the end), except through [`Decoder::reclaim`]. The decoder keeps indices into that
//! buffer between calls:
//!
//! ```text
//! [ consumed | assembled payload of a fragmented message | dead gap | next frame ... ]
//! 0          asm.start                                   asm.end    pos            len
//! ```
//!
//! * [`Decoder::next`] parses from `pos`, unmasks (and, for text, UTF-8 validates) payload
//!   bytes in place as soon as they arrive — even for a frame that is not complete yet — and
//!   returns a [`Message`] borrowing the buffer once a message (or control frame) is complete.
//!   Pipelined frames are returned one after the other without moving any bytes.
//! * A message returned by `next` is consumed by the next call to `next` or `reclaim`.
//! * Fragments are assembled in place: when a continuation frame completes, its payload is
//!   moved down to sit right after the payload assembled so far. Control frames interleaved
//!   with fragments are returned immediately; their bytes become part of the dead gap.
//! * [`Decoder::reclaim`] compacts the buffer: it drops consumed bytes and the dead gap,
//!   keeping the assembled payload and the unparsed tail. It is a no-op when there is nothing
//!   to drop, and it is safe to call at any time.
//! * [`Decoder::wanted`] is a read-size hint, valid after `next` returned `Ok(None)`.
//!
//! Errors are sticky: once `next` returned an error, it returns the same error forever; the
//! connection must send a close frame with [`WsError::close_code`] and shut down.

use std::ops::Range;

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation = 0x0,
    /// UTF-8 text.
    Text = 0x1,
    /// Binary data.
    Binary = 0x2,
    /// Close.
    Close = 0x8,
    /// Ping.
    Ping = 0x9,
    /// Pong.
    Pong = 0xA,
}

impl OpCode {
    /// Decode the low nibble of the first header byte; `None` for reserved opcodes.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// Close, ping and pong are control frames (FIN required, payload ≤ 125 bytes).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Which side of the connection this decoder is on (servers require masked frames,
/// clients require unmasked ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decodes client-to-server frames (must be masked).
    Server,
    /// Decodes server-to-client frames (must not be masked).
    Client,
}

/// A complete message (or control frame) borrowed from the read buffer, already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message (UTF-8 validated).
    Text(&'a [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// Ping with its payload.
    Ping(&'a [u8]),
    /// Pong with its payload.
    Pong(&'a [u8]),
    /// Close with optional code and reason (reason UTF-8 validated).
    Close(Option<u16>, &'a [u8]),
}

/// Protocol violations. Each maps to the close code the peer must receive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// Malformed framing (reserved bits, bad opcode, masking, control frame rules...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Text payload (or close reason) is not UTF-8.
    #[error("invalid utf-8")]
    InvalidUtf8,
    /// A frame or message exceeds the current limit.
    #[error("message too big")]
    TooBig,
}

impl WsError {
    /// Close code to send for this error (1002, 1007, 1009).
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::InvalidUtf8 => 1007,
            WsError::TooBig => 1009,
        }
    }
}

/// Largest control-frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest close reason that fits a control frame after the 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Whether a close code received from the peer is acceptable (RFC 6455 §7.4 plus the IANA
/// registry): 1000–1003, 1007–1014 and 3000–4999. 1004–1006, 1015, everything below 1000,
/// 1016–2999 and 5000+ are invalid.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XOR `data` with `mask` (RFC 6455 §5.3), as if `data` started at payload offset 0.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    apply_mask_at(data, mask, 0);
}

/// XOR `data` with `mask`, where `data` starts at payload offset `offset`.
/// Word-at-a-time: 8 bytes per step (a u64 holds the 4-byte key twice, so the key phase is
/// unchanged from one chunk to the next), then a byte loop for the < 8 byte remainder.
fn apply_mask_at(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % 4);
    let [a, b, c, d] = key;
    let word = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(bytes) = <[u8; 8]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
        }
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// Incremental UTF-8 validator: remembers an incomplete trailing sequence (≤ 3 bytes)
/// between chunks, rejects invalid sequences as soon as their offending byte is seen.
#[derive(Debug, Clone, Copy, Default)]
struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

/// Byte length of the UTF-8 sequence introduced by a (valid) lead byte.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

impl Utf8Validator {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), WsError> {
        if self.pending_len > 0 {
            let have = self.pending_len;
            let need = utf8_width(self.pending[0]).saturating_sub(have);
            let take = need.min(data.len());
            let mut seq = self.pending;
            let (Some(dst), Some(src)) = (seq.get_mut(have..have + take), data.get(..take)) else {
                return Err(WsError::InvalidUtf8);
            };
            dst.copy_from_slice(src);
            let filled = seq.get(..have + take).unwrap_or_default();
            match std::str::from_utf8(filled) {
                Ok(_) => {
                    self.pending_len = 0;
                    data = data.get(take..).unwrap_or_default();
                }
                Err(e) if e.error_len().is_none() => {
                    // Still a valid but incomplete prefix: `data` is exhausted.
                    self.pending = seq;
                    self.pending_len = have + take;
                    return Ok(());
                }
                Err(_) => return Err(WsError::InvalidUtf8),
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = data.get(e.valid_up_to()..).unwrap_or_default();
                let dst = self
                    .pending
                    .get_mut(..tail.len())
                    .ok_or(WsError::InvalidUtf8)?;
                dst.copy_from_slice(tail);
                self.pending_len = tail.len();
                Ok(())
            }
            Err(_) => Err(WsError::InvalidUtf8),
        }
    }

    /// End of message: an incomplete trailing sequence is an error. Resets the state.
    fn finish(&mut self) -> Result<(), WsError> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete {
            Ok(())
        } else {
            Err(WsError::InvalidUtf8)
        }
    }
}

/// A frame whose header has been parsed; offsets are relative to `Decoder::pos`.
#[derive(Debug, Clone, Copy)]
struct FrameState {
    op: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    hdr_len: usize,
    len: usize,
    /// Payload bytes already unmasked (and validated if text).
    done: usize,
}

/// A fragmented message being assembled at `buf[start..end]` (absolute offsets).
#[derive(Debug, Clone, Copy)]
struct Assembly {
    text: bool,
    start: usize,
    end: usize,
}

impl Assembly {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

enum Header {
    /// At least this many more bytes are needed to finish the header.
    Need(usize),
    Frame(FrameState),
}

/// Big-endian integer from up to 8 bytes.
fn be_u64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Parse and validate a frame header at the start of `b`. Every rule that can be decided
/// from the bytes present is checked before asking for more (fail fast).
/// `in_message`: a fragmented message is in progress; `room`: how many payload bytes a data
/// frame may still carry under the message limit.
fn parse_header(b: &[u8], role: Role, in_message: bool, room: usize) -> Result<Header, WsError> {
    let Some(&b0) = b.first() else {
        return Ok(Header::Need(2));
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let op = OpCode::from_u8(b0 & 0x0F).ok_or(WsError::Protocol("reserved opcode"))?;
    if op.is_control() && !fin {
        return Err(WsError::Protocol("fragmented control frame"));
    }
    match op {
        OpCode::Continuation if !in_message => {
            return Err(WsError::Protocol("continuation without a started message"));
        }
        OpCode::Text | OpCode::Binary if in_message => {
            return Err(WsError::Protocol(
                "new data frame inside a fragmented message",
            ));
        }
        _ => {}
    }
    let Some(&b1) = b.get(1) else {
        return Ok(Header::Need(1));
    };
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(WsError::Protocol("client frame not masked")),
        (Role::Client, true) => return Err(WsError::Protocol("server frame masked")),
        _ => {}
    }
    let len7 = b1 & 0x7F;
    if op.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(WsError::Protocol("control frame payload over 125 bytes"));
    }
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let Some(ext_bytes) = b.get(2..2 + ext) else {
        return Ok(Header::Need(2 + ext - b.len()));
    };
    let len64 = if ext == 0 {
        u64::from(len7)
    } else {
        be_u64(ext_bytes)
    };
    if len64 >> 63 != 0 {
        return Err(WsError::Protocol(
            "64-bit payload length with the high bit set",
        ));
    }
    let len = usize::try_from(len64).map_err(|_| WsError::TooBig)?;
    if !op.is_control() && len > room {
        return Err(WsError::TooBig);
    }
    let hdr_len = 2 + ext + if masked { 4 } else { 0 };
    let mask = if masked {
        let Some(key) = b.get(2 + ext..hdr_len) else {
            return Ok(Header::Need(hdr_len - b.len()));
        };
        Some(<[u8; 4]>::try_from(key).map_err(|_| WsError::Protocol("mask key"))?)
    } else {
        None
    };
    Ok(Header::Frame(FrameState {
        op,
        fin,
        mask,
        hdr_len,
        len,
        done: 0,
    }))
}

/// What `advance` produced, as ranges into the buffer.
enum Ready {
    Text(Range<usize>),
    Binary(Range<usize>),
    Ping(Range<usize>),
    Pong(Range<usize>),
    Close(Option<u16>, Range<usize>),
}

/// Incremental message decoder; one per connection.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message: usize,
    /// Start of the next unparsed (or partially received) frame.
    pos: usize,
    /// Header of the frame at `pos`, once parsed.
    frame: Option<FrameState>,
    /// Fragmented message in progress.
    asm: Option<Assembly>,
    utf8: Utf8Validator,
    wanted: usize,
    error: Option<WsError>,
}

impl Decoder {
    /// New decoder with a message size limit (checked from headers before buffering).
    pub fn new(role: Role, max_message: usize) -> Self {
        Self {
            role,
            max_message,
            pos: 0,
            frame: None,
            asm: None,
            utf8: Utf8Validator::default(),
            wanted: 0,
            error: None,
        }
    }

    /// Change the message size limit (e.g. 64 KiB → 25 MiB after hello-ok). Applies to
    /// frames whose header has not been parsed yet.
    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max;
    }

    /// Return the next complete message in `buf` (bytes read and not yet consumed), or
    /// `Ok(None)` when more bytes are needed. Payloads are unmasked in place.
    ///
    /// `buf` must be the same buffer on every call, only appended to by the caller (apart
    /// from [`Decoder::reclaim`]). The returned message is consumed by the next call to
    /// `next` or `reclaim`. Bytes of a partially received frame are unmasked and (for text)
    /// UTF-8 checked as they arrive, so invalid text fails before its frame is complete.
    /// Errors are sticky.
    // Takes the `Vec` (not a slice) on purpose: it is the connection's read buffer, the same
    // object `reclaim` compacts, and the public API the connection loop is written against.
    #[allow(clippy::ptr_arg)]
    pub fn next<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Message<'b>>, WsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let ready = match self.advance(buf) {
            Ok(Some(ready)) => ready,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.error = Some(e.clone());
                self.frame = None;
                self.wanted = 0;
                return Err(e);
            }
        };
        self.wanted = 0;
        let buf: &'b Vec<u8> = buf;
        let slice = |r: Range<usize>| buf.get(r).unwrap_or_default();
        Ok(Some(match ready {
            Ready::Text(r) => Message::Text(slice(r)),
            Ready::Binary(r) => Message::Binary(slice(r)),
            Ready::Ping(r) => Message::Ping(slice(r)),
            Ready::Pong(r) => Message::Pong(slice(r)),
            Ready::Close(code, r) => Message::Close(code, slice(r)),
        }))
    }

    fn advance(&mut self, buf: &mut [u8]) -> Result<Option<Ready>, WsError> {
        loop {
            let mut frame = match self.frame {
                Some(frame) => frame,
                None => {
                    let avail = buf.get(self.pos..).unwrap_or_default();
                    let (in_message, room) = match self.asm {
                        Some(a) => (true, self.max_message.saturating_sub(a.len())),
                        None => (false, self.max_message),
                    };
                    match parse_header(avail, self.role, in_message, room)? {
                        Header::Need(n) => {
                            self.wanted = if avail.is_empty() { 0 } else { n };
                            return Ok(None);
                        }
                        Header::Frame(frame) => frame,
                    }
                }
            };
            let payload_start = self.pos + frame.hdr_len;
            let frame_end = payload_start
                .checked_add(frame.len)
                .ok_or(WsError::TooBig)?;
            let seen = payload_start + frame.done;
            if buf.len() < seen {
                return Err(WsError::Protocol("read buffer shrank under the decoder"));
            }
            let avail_end = buf.len().min(frame_end);
            if avail_end > seen {
                let text = match frame.op {
                    OpCode::Text => true,
                    OpCode::Continuation => self.asm.is_some_and(|a| a.text),
                    _ => false,
                };
                if let Some(fresh) = buf.get_mut(seen..avail_end) {
                    if let Some(mask) = frame.mask {
                        apply_mask_at(fresh, mask, frame.done);
                    }
                    if text {
                        self.utf8.feed(fresh)?;
                    }
                }
                frame.done = avail_end - payload_start;
            }
            if frame.done < frame.len {
                self.frame = Some(frame);
                self.wanted = frame.len - frame.done;
                return Ok(None);
            }

            // The frame is complete.
            self.frame = None;
            self.pos = frame_end;
            let payload = payload_start..frame_end;
            match frame.op {
                OpCode::Ping => return Ok(Some(Ready::Ping(payload))),
                OpCode::Pong => return Ok(Some(Ready::Pong(payload))),
                OpCode::Close => {
                    let body = buf.get(payload.clone()).unwrap_or_default();
                    return match body {
                        [] => Ok(Some(Ready::Close(None, payload))),
                        [_] => Err(WsError::Protocol("close payload of one byte")),
                        [hi, lo, reason @ ..] => {
                            let code = u16::from_be_bytes([*hi, *lo]);
                            if !is_valid_close_code(code) {
                                return Err(WsError::Protocol("invalid close code"));
                            }
                            if std::str::from_utf8(reason).is_err() {
                                return Err(WsError::InvalidUtf8);
                            }
                            Ok(Some(Ready::Close(Some(code), payload_start + 2..frame_end)))
                        }
                    };
                }
                OpCode::Text | OpCode::Binary => {
                    let text = frame.op == OpCode::Text;
                    if frame.fin {
                        return Ok(Some(if text {
                            self.utf8.finish()?;
                            Ready::Text(payload)
                        } else {
                            Ready::Binary(payload)
                        }));
                    }
                    self.asm = Some(Assembly {
                        text,
                        start: payload_start,
                        end: frame_end,
                    });
                }
                OpCode::Continuation => {
                    let Some(mut asm) = self.asm else {
                        return Err(WsError::Protocol("continuation without a started message"));
                    };
                    if asm.end != payload_start {
                        move_down(buf, payload, asm.end)?;
                    }
                    asm.end += frame.len;
                    if !frame.fin {
                        self.asm = Some(asm);
                        continue;
                    }
                    self.asm = None;
                    let whole = asm.start..asm.end;
                    return Ok(Some(if asm.text {
                        self.utf8.finish()?;
                        Ready::Text(whole)
                    } else {
                        Ready::Binary(whole)
                    }));
                }
            }
        }
    }

    /// Drop consumed bytes from the front of `buf`; call before reading more into it.
    ///
    /// Keeps the payload assembled so far for a fragmented message (moved to the front) and
    /// the unparsed tail (moved right after it), dropping everything else: consumed
    /// messages, headers of assembled fragments and interleaved control frames. No-op when
    /// nothing can be dropped; safe to call at any time.
    pub fn reclaim(&mut self, buf: &mut Vec<u8>) {
        let len = buf.len();
        if self.pos > len {
            // The caller shrank the buffer behind our back; nothing sensible is left.
            buf.clear();
            self.pos = 0;
            self.frame = None;
            self.asm = None;
            self.utf8 = Utf8Validator::default();
            return;
        }
        match self.asm {
            None => {
                if self.pos > 0 {
                    buf.drain(..self.pos);
                    self.pos = 0;
                }
            }
            Some(asm) => {
                let kept = asm.len();
                if asm.start > 0 && move_down(buf, asm.start..asm.end, 0).is_err() {
                    return;
                }
                if self.pos > kept {
                    let tail = len - self.pos;
                    if move_down(buf, self.pos..len, kept).is_err() {
                        return;
                    }
                    buf.truncate(kept + tail);
                }
                self.pos = kept;
                self.asm = Some(Assembly {
                    text: asm.text,
                    start: 0,
                    end: kept,
                });
            }
        }
    }

    /// How many more bytes the decoder needs to make progress (a read-size hint; 0 = unknown).
    ///
    /// Valid after [`Decoder::next`] returned `Ok(None)`: the bytes still missing to
    /// complete the current frame's payload once its header is parsed, a lower bound on the
    /// missing header bytes while the header is incomplete, and 0 when no byte of the next
    /// frame has arrived yet (or after a message or an error was returned).
    pub fn wanted(&self) -> usize {
        self.wanted
    }
}

/// `buf.copy_within(src, dst)` for `dst <= src.start`, bounds-checked instead of panicking.
fn move_down(buf: &mut [u8], src: Range<usize>, dst: usize) -> Result<(), WsError> {
    if src.start > src.end || src.end > buf.len() || dst > src.start {
        return Err(WsError::Protocol("read buffer shrank under the decoder"));
    }
    buf.copy_within(src, dst);
    Ok(())
}

/// Write a header into `out`; returns its length (2, 4 or 10; the mask key is not included).
fn header_into(out: &mut [u8; 10], fin: bool, op: OpCode, len: usize, masked: bool) -> usize {
    let mask_bit = if masked { 0x80 } else { 0 };
    let b0 = if fin { 0x80 } else { 0 } | op as u8;
    if len < 126 {
        // `len < 126` fits in 7 bits.
        *out = [b0, mask_bit | len as u8, 0, 0, 0, 0, 0, 0, 0, 0];
        2
    } else if let Ok(len16) = u16::try_from(len) {
        let [h, l] = len16.to_be_bytes();
        *out = [b0, mask_bit | 126, h, l, 0, 0, 0, 0, 0, 0];
        4
    } else {
        let [a, b, c, d, e, f, g, h] = (len as u64).to_be_bytes();
        *out = [b0, mask_bit | 127, a, b, c, d, e, f, g, h];
        10
    }
}

/// Append one frame with explicit FIN bit and optional mask (payload masked on the way
/// out). Building block for fragmenting senders, tests and fuzzing.
pub fn encode_raw_frame(
    out: &mut Vec<u8>,
    fin: bool,
    op: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let mut hdr = [0u8; 10];
    let n = header_into(&mut hdr, fin, op, payload.len(), mask.is_some());
    out.reserve(n + 4 + payload.len());
    out.extend_from_slice(hdr.get(..n).unwrap_or_default());
    match mask {
        None => out.extend_from_slice(payload),
        Some(key) => {
            out.extend_from_slice(&key);
            let start = out.len();
            out.extend_from_slice(payload);
            if let Some(body) = out.get_mut(start..) {
                apply_mask(body, key);
            }
        }
    }
}

/// Append one unmasked (server-side) frame with FIN set.
pub fn encode_frame(out: &mut Vec<u8>, op: OpCode, payload: &[u8]) {
    encode_raw_frame(out, true, op, payload, None);
}

/// Append one masked (client-side) frame with FIN set.
pub fn encode_frame_masked(out: &mut Vec<u8>, op: OpCode, payload: &[u8], mask: [u8; 4]) {
    encode_raw_frame(out, true, op, payload, Some(mask));
}

/// Write a server-side (unmasked, FIN) frame header for a payload of `len` bytes into `out`;
/// returns the header length (2, 4 or 10). Used to splice headers before shared bodies.
pub fn write_header(out: &mut [u8; 10], op: OpCode, len: usize) -> usize {
    header_into(out, true, op, len, false)
}

/// Append a close frame with a code and a reason (truncated to fit 125 bytes on a UTF-8
/// boundary).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = reason.get(..cut).unwrap_or_default().as_bytes();
    let mut hdr = [0u8; 10];
    let n = header_into(&mut hdr, true, OpCode::Close, 2 + reason.len(), false);
    out.reserve(n + 2 + reason.len());
    out.extend_from_slice(hdr.get(..n).unwrap_or_default());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

#[cfg(test)]
#[allow(clippy::panic)] // tests fail by panicking
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Owned copy of a decoded message, for comparisons after the buffer moved on.
    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, Vec<u8>),
    }

    fn own(m: Message<'_>) -> Owned {
        match m {
            Message::Text(p) => Owned::Text(p.to_vec()),
            Message::Binary(p) => Owned::Binary(p.to_vec()),
            Message::Ping(p) => Owned::Ping(p.to_vec()),
            Message::Pong(p) => Owned::Pong(p.to_vec()),
            Message::Close(c, p) => Owned::Close(c, p.to_vec()),
        }
    }

    /// Raw frame builder that can break every rule: `b0` is the whole first byte,
    /// `len_code` forces a length encoding (None = minimal).
    fn raw(b0: u8, payload: &[u8], mask: Option<[u8; 4]>, len_code: Option<u8>) -> Vec<u8> {
        let mut out = vec![b0];
        let mbit = if mask.is_some() { 0x80 } else { 0 };
        let code = len_code.unwrap_or(match payload.len() {
            0..=125 => payload.len() as u8,
            126..=65535 => 126,
            _ => 127,
        });
        out.push(mbit | code);
        match code {
            126 => out.extend_from_slice(&(payload.len() as u16).to_be_bytes()),
            127 => out.extend_from_slice(&(payload.len() as u64).to_be_bytes()),
            _ => {}
        }
        if let Some(k) = mask {
            out.extend_from_slice(&k);
        }
        let body = out.len();
        out.extend_from_slice(payload);
        if let Some(k) = mask {
            apply_mask(&mut out[body..], k);
        }
        out
    }

    fn masked(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_raw_frame(&mut v, fin, op, payload, Some(MASK));
        v
    }

    /// Decode everything in `bytes` (fed in one go) with a server decoder.
    fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Owned>, WsError> {
        let mut d = Decoder::new(Role::Server, max);
        let mut buf = bytes.to_vec();
        let mut out = Vec::new();
        while let Some(m) = d.next(&mut buf)? {
            out.push(own(m));
        }
        Ok(out)
    }

    /// Feed `bytes` one byte at a time, reclaiming before every "read".
    fn decode_bytewise(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Owned>, WsError> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for &b in bytes {
            d.reclaim(&mut buf);
            buf.push(b);
            while let Some(m) = d.next(&mut buf)? {
                out.push(own(m));
            }
        }
        Ok(out)
    }

    fn err(bytes: &[u8]) -> WsError {
        decode_all(bytes, 1 << 20).unwrap_err()
    }

    #[test]
    fn single_masked_text_frame() {
        let f = masked(true, OpCode::Text, b"hello");
        assert_eq!(
            decode_all(&f, 1024).unwrap(),
            vec![Owned::Text(b"hello".to_vec())]
        );
    }

    #[test]
    fn payload_unmasked_in_place_without_copy() {
        let f = masked(true, OpCode::Binary, b"0123456789abcdef");
        let mut buf = f.clone();
        let base = buf.as_ptr() as usize;
        let mut d = Decoder::new(Role::Server, 1024);
        match d.next(&mut buf).unwrap() {
            Some(Message::Binary(p)) => {
                assert_eq!(p, b"0123456789abcdef");
                assert_eq!(
                    p.as_ptr() as usize,
                    base + 6,
                    "payload borrowed from buffer"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pipelined_frames_do_not_move_the_buffer() {
        let mut bytes = Vec::new();
        for i in 0..5u8 {
            bytes.extend(masked(true, OpCode::Binary, &[i; 3]));
        }
        let mut buf = bytes.clone();
        let mut d = Decoder::new(Role::Server, 1024);
        for i in 0..5u8 {
            let before = buf.len();
            assert_eq!(
                d.next(&mut buf).unwrap(),
                Some(Message::Binary(&[i; 3][..]))
            );
            assert_eq!(buf.len(), before);
        }
        assert_eq!(d.next(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), bytes.len());
        d.reclaim(&mut buf);
        assert!(buf.is_empty());
    }

    #[test]
    fn reclaim_keeps_partial_frame_and_is_noop_when_nothing_to_drop() {
        let a = masked(true, OpCode::Text, b"first");
        let b = masked(true, OpCode::Text, b"second frame");
        let mut buf = a.clone();
        buf.extend_from_slice(&b[..5]);
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(
            d.next(&mut buf).unwrap(),
            Some(Message::Text(&b"first"[..]))
        );
        assert_eq!(d.next(&mut buf).unwrap(), None);
        d.reclaim(&mut buf);
        assert_eq!(buf.len(), 5);
        d.reclaim(&mut buf);
        assert_eq!(buf.len(), 5);
        buf.extend_from_slice(&b[5..]);
        assert_eq!(
            d.next(&mut buf).unwrap(),
            Some(Message::Text(&b"second frame"[..]))
        );
        d.reclaim(&mut buf);
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_at_a_time_all_length_encodings() {
        for len in [0usize, 1, 7, 8, 9, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = masked(true, OpCode::Binary, &payload);
            let mut d = Decoder::new(Role::Server, 1 << 20);
            assert_eq!(
                decode_bytewise(&mut d, &f).unwrap(),
                vec![Owned::Binary(payload)],
                "len {len}"
            );
        }
    }

    #[test]
    fn fragmented_message_with_interleaved_controls() {
        let mut bytes = masked(false, OpCode::Text, "héllo ".as_bytes());
        bytes.extend(masked(true, OpCode::Ping, b"p1"));
        bytes.extend(masked(false, OpCode::Continuation, b"wor"));
        bytes.extend(masked(true, OpCode::Pong, b""));
        bytes.extend(masked(false, OpCode::Continuation, b""));
        bytes.extend(masked(true, OpCode::Continuation, b"ld"));
        bytes.extend(masked(true, OpCode::Binary, b"\x00\xff"));
        let expected = vec![
            Owned::Ping(b"p1".to_vec()),
            Owned::Pong(vec![]),
            Owned::Text("héllo world".as_bytes().to_vec()),
            Owned::Binary(vec![0, 255]),
        ];
        assert_eq!(decode_all(&bytes, 1024).unwrap(), expected);
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(decode_bytewise(&mut d, &bytes).unwrap(), expected);
    }

    #[test]
    fn fragments_assembled_contiguously_in_same_buffer() {
        let mut buf = masked(false, OpCode::Binary, b"abc");
        buf.extend(masked(true, OpCode::Ping, b"x"));
        buf.extend(masked(true, OpCode::Continuation, b"def"));
        let base = buf.as_ptr() as usize;
        let total = buf.len();
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(d.next(&mut buf).unwrap(), Some(Message::Ping(&b"x"[..])));
        match d.next(&mut buf).unwrap() {
            Some(Message::Binary(p)) => {
                assert_eq!(p, b"abcdef");
                assert_eq!(p.as_ptr() as usize, base + 6);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(buf.len(), total);
        d.reclaim(&mut buf);
        assert!(buf.is_empty());
    }

    #[test]
    fn reclaim_mid_assembly_drops_headers_and_control_frames() {
        let mut d = Decoder::new(Role::Server, 1024);
        let mut buf = masked(false, OpCode::Binary, b"abc");
        buf.extend(masked(true, OpCode::Ping, b"pingpayload"));
        buf.extend(masked(false, OpCode::Continuation, b"def"));
        assert_eq!(
            d.next(&mut buf).unwrap(),
            Some(Message::Ping(&b"pingpayload"[..]))
        );
        assert_eq!(d.next(&mut buf).unwrap(), None);
        d.reclaim(&mut buf);
        assert_eq!(buf, b"abcdef", "only the assembled payload is left");
        buf.extend(masked(true, OpCode::Continuation, b"g"));
        assert_eq!(
            d.next(&mut buf).unwrap(),
            Some(Message::Binary(&b"abcdefg"[..]))
        );
    }

    #[test]
    fn continuation_without_start_is_protocol_error() {
        assert!(matches!(
            err(&masked(true, OpCode::Continuation, b"x")),
            WsError::Protocol(_)
        ));
    }

    #[test]
    fn new_data_frame_during_fragmented_message_is_protocol_error() {
        for op in [OpCode::Text, OpCode::Binary] {
            let mut bytes = masked(false, OpCode::Text, b"a");
            bytes.extend(masked(true, op, b"b"));
            assert!(matches!(err(&bytes), WsError::Protocol(_)));
        }
    }

    #[test]
    fn invalid_utf8_in_complete_frame() {
        let e = err(&masked(true, OpCode::Text, b"ab\xffcd"));
        assert_eq!(e, WsError::InvalidUtf8);
        assert_eq!(e.close_code(), 1007);
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_partial_frame() {
        let mut payload = b"valid prefix ".to_vec();
        payload.extend_from_slice(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"); // κόσμε
        let bad_at = payload.len();
        payload.extend_from_slice(b"\xf4\x90\x80\x80"); // > U+10FFFF: invalid at 2nd byte
        payload.extend_from_slice(&[b'z'; 200]);
        let f = masked(true, OpCode::Text, &payload);
        let hdr = f.len() - payload.len();
        let mut d = Decoder::new(Role::Server, 1 << 20);
        let mut buf = Vec::new();
        for (i, &b) in f.iter().enumerate() {
            buf.push(b);
            match d.next(&mut buf) {
                Ok(None) => assert!(i < hdr + bad_at + 1, "missed invalid byte at {i}"),
                Err(WsError::InvalidUtf8) => {
                    assert_eq!(i, hdr + bad_at + 1, "must fail on the offending byte");
                    return;
                }
                other => panic!("{other:?}"),
            }
        }
        panic!("no error");
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_unfinished_fragmented_message() {
        let mut bytes = masked(false, OpCode::Text, "κόσμε".as_bytes());
        bytes.extend(masked(false, OpCode::Continuation, b"\xed\xa0\x80")); // surrogate
                                                                            // No final fragment ever arrives: the error must come anyway.
        assert_eq!(err(&bytes), WsError::InvalidUtf8);
    }

    #[test]
    fn utf8_sequence_split_across_fragments_and_reads_is_valid() {
        let text = "a€b😀c";
        let raw_text = text.as_bytes();
        for cut in 0..=raw_text.len() {
            let mut bytes = masked(false, OpCode::Text, &raw_text[..cut]);
            bytes.extend(masked(true, OpCode::Ping, b""));
            bytes.extend(masked(true, OpCode::Continuation, &raw_text[cut..]));
            let expected = vec![Owned::Ping(vec![]), Owned::Text(raw_text.to_vec())];
            assert_eq!(decode_all(&bytes, 1024).unwrap(), expected);
            let mut d = Decoder::new(Role::Server, 1024);
            assert_eq!(decode_bytewise(&mut d, &bytes).unwrap(), expected);
        }
    }

    #[test]
    fn incomplete_utf8_at_end_of_message_is_invalid() {
        assert_eq!(
            err(&masked(true, OpCode::Text, b"ok\xe2\x82")),
            WsError::InvalidUtf8
        );
        let mut bytes = masked(false, OpCode::Text, b"ok\xe2");
        bytes.extend(masked(true, OpCode::Continuation, b"\x82"));
        assert_eq!(err(&bytes), WsError::InvalidUtf8);
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        assert_eq!(
            decode_all(&masked(true, OpCode::Binary, b"\xff\xfe"), 64).unwrap(),
            vec![Owned::Binary(vec![0xff, 0xfe])]
        );
    }

    #[test]
    fn reserved_bits_are_protocol_errors() {
        for rsv in [0x40u8, 0x20, 0x10] {
            let f = raw(0x80 | rsv | 0x1, b"x", Some(MASK), None);
            assert!(matches!(err(&f), WsError::Protocol(_)));
            // Detected from the first byte alone.
            let mut d = Decoder::new(Role::Server, 1024);
            let mut buf = vec![f[0]];
            assert!(matches!(d.next(&mut buf), Err(WsError::Protocol(_))));
        }
    }

    #[test]
    fn reserved_opcodes_are_protocol_errors() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let e = err(&raw(0x80 | op, b"", Some(MASK), None));
            assert!(matches!(e, WsError::Protocol(_)), "opcode {op}");
            assert_eq!(e.close_code(), 1002);
        }
    }

    #[test]
    fn control_frames_must_be_final() {
        for op in [0x8u8, 0x9, 0xA] {
            assert!(matches!(
                err(&raw(op, b"", Some(MASK), None)),
                WsError::Protocol(_)
            ));
        }
    }

    #[test]
    fn control_frame_payload_limit() {
        for op in [OpCode::Ping, OpCode::Pong] {
            let ok = masked(true, op, &[b'a'; 125]);
            assert_eq!(decode_all(&ok, 1024).unwrap().len(), 1);
            let bad = masked(true, op, &[b'a'; 126]);
            assert!(matches!(err(&bad), WsError::Protocol(_)));
        }
        // Also when the 126 comes through a non-minimal 16-bit length.
        let bad = raw(0x89, &[0; 5], Some(MASK), Some(126));
        assert!(matches!(err(&bad), WsError::Protocol(_)));
    }

    #[test]
    fn server_requires_mask_client_forbids_it() {
        let unmasked = raw(0x81, b"hi", None, None);
        assert!(matches!(err(&unmasked), WsError::Protocol(_)));
        let mut d = Decoder::new(Role::Client, 1024);
        let mut buf = unmasked.clone();
        assert_eq!(d.next(&mut buf).unwrap(), Some(Message::Text(&b"hi"[..])));

        let mut d = Decoder::new(Role::Client, 1024);
        let mut buf = raw(0x81, b"hi", Some(MASK), None);
        assert!(matches!(d.next(&mut buf), Err(WsError::Protocol(_))));
    }

    #[test]
    fn length_with_msb_set_is_protocol_error() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        f.extend_from_slice(&MASK);
        assert!(matches!(err(&f), WsError::Protocol(_)));
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        for code in [126u8, 127] {
            let f = raw(0x82, b"abcde", Some(MASK), Some(code));
            assert_eq!(
                decode_all(&f, 1024).unwrap(),
                vec![Owned::Binary(b"abcde".to_vec())]
            );
        }
    }

    #[test]
    fn close_frames() {
        assert_eq!(
            decode_all(&masked(true, OpCode::Close, b""), 64).unwrap(),
            vec![Owned::Close(None, vec![])]
        );
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice("bye é".as_bytes());
        assert_eq!(
            decode_all(&masked(true, OpCode::Close, &p), 64).unwrap(),
            vec![Owned::Close(Some(1000), "bye é".as_bytes().to_vec())]
        );
        assert!(matches!(
            err(&masked(true, OpCode::Close, b"\x03")),
            WsError::Protocol(_)
        ));
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(b"\xc0\xaf");
        assert_eq!(
            err(&masked(true, OpCode::Close, &bad_reason)),
            WsError::InvalidUtf8
        );
    }

    #[test]
    fn close_code_validity() {
        let valid = [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ];
        let invalid = [
            0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in valid {
            let f = masked(true, OpCode::Close, &code.to_be_bytes());
            assert_eq!(
                decode_all(&f, 64).unwrap(),
                vec![Owned::Close(Some(code), vec![])],
                "{code}"
            );
        }
        for code in invalid {
            let f = masked(true, OpCode::Close, &code.to_be_bytes());
            assert!(matches!(err(&f), WsError::Protocol(_)), "{code}");
        }
    }

    #[test]
    fn too_big_detected_from_header_before_payload() {
        let f = masked(true, OpCode::Binary, &[0; 1000]);
        let mut d = Decoder::new(Role::Server, 999);
        let mut buf = f[..4].to_vec(); // header up to the 16-bit length, no payload
        assert_eq!(d.next(&mut buf), Err(WsError::TooBig));
        assert_eq!(WsError::TooBig.close_code(), 1009);
        let mut d = Decoder::new(Role::Server, 1000);
        let mut buf = f.clone();
        assert!(matches!(d.next(&mut buf), Ok(Some(Message::Binary(_)))));
    }

    #[test]
    fn fragmented_total_over_limit_is_too_big() {
        let mut bytes = masked(false, OpCode::Binary, &[1; 60]);
        bytes.extend(masked(false, OpCode::Continuation, &[2; 40]));
        bytes.extend(masked(true, OpCode::Continuation, &[3; 1]));
        assert_eq!(decode_all(&bytes, 100), Err(WsError::TooBig));
        assert_eq!(decode_all(&bytes, 101).unwrap().len(), 1);
        // Fails on the header of the offending fragment, before its payload arrives.
        let third_hdr = masked(false, OpCode::Binary, &[1; 60]).len()
            + masked(false, OpCode::Continuation, &[2; 40]).len()
            + 2;
        let mut d = Decoder::new(Role::Server, 100);
        let mut buf = bytes[..third_hdr].to_vec();
        assert_eq!(d.next(&mut buf), Err(WsError::TooBig));
    }

    #[test]
    fn set_max_message_applies_to_next_frames() {
        let big = masked(true, OpCode::Binary, &[7; 300]);
        let mut d = Decoder::new(Role::Server, 256);
        let mut buf = masked(true, OpCode::Text, b"hello");
        assert!(d.next(&mut buf).unwrap().is_some());
        d.set_max_message(1024);
        d.reclaim(&mut buf);
        buf.extend_from_slice(&big);
        assert!(matches!(d.next(&mut buf), Ok(Some(Message::Binary(p))) if p.len() == 300));
        d.set_max_message(10);
        d.reclaim(&mut buf);
        buf.extend_from_slice(&big);
        assert_eq!(d.next(&mut buf), Err(WsError::TooBig));
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = Decoder::new(Role::Server, 1024);
        let mut buf = raw(0x83, b"", Some(MASK), None);
        let e = d.next(&mut buf).unwrap_err();
        buf.extend(masked(true, OpCode::Text, b"ok"));
        assert_eq!(d.next(&mut buf), Err(e));
    }

    #[test]
    fn wanted_hints() {
        let f = masked(true, OpCode::Binary, &[9; 1000]);
        let mut d = Decoder::new(Role::Server, 4096);
        let mut buf = Vec::new();
        assert_eq!(d.next(&mut buf).unwrap(), None);
        assert_eq!(d.wanted(), 0, "nothing buffered: unknown");
        buf.push(f[0]);
        assert_eq!(d.next(&mut buf).unwrap(), None);
        assert_eq!(d.wanted(), 1);
        buf.push(f[1]);
        assert_eq!(d.next(&mut buf).unwrap(), None);
        assert_eq!(d.wanted(), 2, "16-bit length still missing");
        buf.extend_from_slice(&f[2..4]);
        assert_eq!(d.next(&mut buf).unwrap(), None);
        assert_eq!(d.wanted(), 4, "mask key missing");
        buf.extend_from_slice(&f[4..108]);
        assert_eq!(d.next(&mut buf).unwrap(), None);
        assert_eq!(d.wanted(), 900);
        d.reclaim(&mut buf);
        assert_eq!(d.wanted(), 900);
        buf.extend_from_slice(&f[108..]);
        assert!(d.next(&mut buf).unwrap().is_some());
        assert_eq!(d.wanted(), 0);
    }

    #[test]
    fn reclaim_safe_at_any_time() {
        let mut bytes = masked(false, OpCode::Text, "ab€".as_bytes());
        bytes.extend(masked(true, OpCode::Close, &1000u16.to_be_bytes()));
        bytes.extend(masked(true, OpCode::Continuation, &[b'c'; 300]));
        bytes.extend(masked(true, OpCode::Binary, b"tail"));
        let mut d = Decoder::new(Role::Server, 4096);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(7) {
            d.reclaim(&mut buf);
            d.reclaim(&mut buf);
            buf.extend_from_slice(chunk);
            d.reclaim(&mut buf);
            loop {
                d.reclaim(&mut buf);
                match d.next(&mut buf).unwrap() {
                    Some(m) => out.push(own(m)),
                    None => break,
                }
            }
        }
        let mut text = "ab€".as_bytes().to_vec();
        text.extend_from_slice(&[b'c'; 300]);
        assert_eq!(
            out,
            vec![
                Owned::Close(Some(1000), vec![]),
                Owned::Text(text),
                Owned::Binary(b"tail".to_vec())
            ]
        );
    }

    #[test]
    fn shrunk_buffer_does_not_panic() {
        let f = masked(true, OpCode::Binary, &[1; 50]);
        let mut d = Decoder::new(Role::Server, 1024);
        let mut buf = f[..30].to_vec();
        assert_eq!(d.next(&mut buf).unwrap(), None);
        buf.truncate(3);
        assert!(d.next(&mut buf).is_err());
        d.reclaim(&mut buf);
    }

    #[test]
    fn mask_word_loop_matches_bytewise() {
        let data: Vec<u8> = (0..67u8).collect();
        for offset in 0..8 {
            for len in 0..data.len() {
                let mut fast = data[..len].to_vec();
                apply_mask_at(&mut fast, MASK, offset);
                let slow: Vec<u8> = data[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ MASK[(i + offset) % 4])
                    .collect();
                assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn encoders_header_sizes_and_roundtrip() {
        for (len, hlen) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut h = [0u8; 10];
            assert_eq!(write_header(&mut h, OpCode::Binary, len), hlen);
            assert_eq!(h[0], 0x82);
            let payload = vec![5u8; len];
            let mut out = Vec::new();
            encode_frame(&mut out, OpCode::Binary, &payload);
            assert_eq!(&out[..hlen], &h[..hlen]);
            assert_eq!(out.len(), hlen + len);
            let mut d = Decoder::new(Role::Client, 1 << 20);
            assert_eq!(
                d.next(&mut out).unwrap(),
                Some(Message::Binary(&payload[..]))
            );

            let mut out = Vec::new();
            encode_frame_masked(&mut out, OpCode::Binary, &payload, MASK);
            assert_eq!(out.len(), hlen + 4 + len);
            let mut d = Decoder::new(Role::Server, 1 << 20);
            assert_eq!(
                d.next(&mut out).unwrap(),
                Some(Message::Binary(&payload[..]))
            );
        }
    }

    #[test]
    fn encode_close_truncates_on_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        encode_close(&mut out, 1001, &reason);
        assert!(out.len() <= 2 + 125);
        let mut d = Decoder::new(Role::Client, 1024);
        match d.next(&mut out).unwrap() {
            Some(Message::Close(Some(1001), r)) => {
                assert_eq!(r.len(), 122);
                assert!(std::str::from_utf8(r).is_ok());
            }
            other => panic!("{other:?}"),
        }
        let mut out = Vec::new();
        encode_close(&mut out, 1000, &"a".repeat(500));
        assert_eq!(out.len(), 2 + 125);
        let mut out = Vec::new();
        encode_close(&mut out, 1000, "");
        assert_eq!(out, [0x88, 2, 0x03, 0xE8]);
    }
}
