//! RFC 6455 frame codec: sans-IO, zero-copy (OWNED BY THE CODEC HELPER — stub).
//!
//! Owns: parsing frame headers, unmasking payloads in place inside the connection's read
//! buffer, message assembly across fragments, incremental UTF-8 validation, size limits,
//! and encoding frame headers. Must not touch: sockets, JSON, auth.

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

/// Incremental message decoder; one per connection.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message: usize,
}

impl Decoder {
    /// New decoder with a message size limit (checked from headers before buffering).
    pub fn new(role: Role, max_message: usize) -> Self {
        Self { role, max_message }
    }
    /// Change the message size limit (e.g. 64 KiB → 25 MiB after hello-ok).
    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max;
    }
    /// Return the next complete message in `buf` (bytes read and not yet consumed), or
    /// `Ok(None)` when more bytes are needed. Payloads are unmasked in place.
    pub fn next<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Message<'b>>, WsError> {
        let _ = (self.role, self.max_message, buf);
        Ok(None)
    }
    /// Drop consumed bytes from the front of `buf`; call before reading more into it.
    pub fn reclaim(&mut self, buf: &mut Vec<u8>) {
        let _ = buf;
    }
    /// How many more bytes the decoder needs to make progress (a read-size hint; 0 = unknown).
    pub fn wanted(&self) -> usize {
        0
    }
}

/// Append one unmasked (server-side) frame with FIN set.
pub fn encode_frame(out: &mut Vec<u8>, op: OpCode, payload: &[u8]) {
    let _ = (out, op, payload);
}

/// Append one masked (client-side) frame with FIN set.
pub fn encode_frame_masked(out: &mut Vec<u8>, op: OpCode, payload: &[u8], mask: [u8; 4]) {
    let _ = (out, op, payload, mask);
}

/// Write a server-side (unmasked, FIN) frame header for a payload of `len` bytes into `out`;
/// returns the header length (2, 4 or 10). Used to splice headers before shared bodies.
pub fn write_header(out: &mut [u8; 10], op: OpCode, len: usize) -> usize {
    let _ = (out, op, len);
    0
}

/// Append a close frame with a code and a reason (truncated to fit 125 bytes on a UTF-8
/// boundary).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let _ = (out, code, reason);
}
