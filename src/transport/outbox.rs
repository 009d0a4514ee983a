//! Per-connection write queue with a byte budget and the slow-consumer policy.
//!
//! Owns: the bytes waiting to go out on one socket, the socket's event `seq`, and the
//! decision to drop a droppable event or close a slow client. Must not touch: the socket
//! itself (the writer task does) or anything on another core. Single-threaded (`Rc`).
//!
//! Frames are coalesced into one contiguous buffer that the writer task swaps out and hands
//! to the kernel in a single write, so many small events cost one syscall. A broadcast body is
//! serialized once per event; each socket copies it once here with its own header and `seq`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

use monoio::io::{CancelHandle, Canceller};

use super::ws::codec::{self, OpCode};
use crate::protocol::frames::seq_tail;

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for writing.
    Queued,
    /// Skipped: droppable and the client is behind (its `seq` still advanced, so it sees a gap).
    Dropped,
    /// The connection is closing or was closed for being too slow.
    Closed,
}

/// Budgets for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Hard cap on queued bytes; passing it closes the connection (1008 "slow consumer").
    pub max_buffered: usize,
    /// Droppable events are skipped while more than this is queued.
    pub drop_threshold: usize,
}

impl Budget {
    /// Write budget of a socket that has not completed `connect` yet: 64 KiB. It only ever
    /// needs the challenge, pongs and an error; a peer that sends pings and never reads is
    /// closed (1008) before it can pin more than this.
    pub fn pre_auth(self) -> Self {
        const PRE_AUTH: usize = 64 * 1024;
        Self {
            max_buffered: self.max_buffered.min(PRE_AUTH),
            drop_threshold: self.drop_threshold.min(PRE_AUTH),
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_buffered: 50 * 1024 * 1024,
            drop_threshold: 1024 * 1024,
        }
    }
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    in_flight: usize,
    /// Close frame queued: nothing else may follow.
    closing: bool,
    /// Writer must stop now (slow consumer / fatal error); buffered bytes are discarded.
    dead: bool,
    waker: Option<Waker>,
    /// The writer while it waits for the kernel (woken on kill to abandon the write).
    kill_waker: Option<Waker>,
}

/// The write side of one connection, shared by its reader task, its writer task and the
/// core's broadcast fanout.
pub struct Outbox {
    st: RefCell<State>,
    seq: Cell<u64>,
    dropped: Cell<u64>,
    slow_closed: Cell<bool>,
    budget: Cell<Budget>,
    canceller: RefCell<Option<Canceller>>,
}

impl Outbox {
    /// New empty outbox.
    pub fn new(budget: Budget) -> Self {
        Self {
            st: RefCell::new(State::default()),
            seq: Cell::new(0),
            dropped: Cell::new(0),
            slow_closed: Cell::new(false),
            budget: Cell::new(budget),
            canceller: RefCell::new(Some(Canceller::new())),
        }
    }

    /// Switch budgets (the full one once the socket is authenticated).
    pub fn set_budget(&self, budget: Budget) {
        self.budget.set(budget);
    }

    /// A handle the reader passes to its reads so [`Outbox::kill`] can interrupt them.
    pub fn cancel_handle(&self) -> Option<CancelHandle> {
        self.canceller.borrow().as_ref().map(Canceller::handle)
    }

    /// Bytes queued or being written.
    pub fn queued(&self) -> usize {
        let st = self.st.borrow();
        st.buf.len() + st.in_flight
    }

    /// Events skipped for this socket so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// True once the connection is closing or dead.
    pub fn is_closed(&self) -> bool {
        let st = self.st.borrow();
        st.closing || st.dead
    }

    /// True when the writer was told to stop (slow consumer, write error).
    pub fn is_dead(&self) -> bool {
        self.st.borrow().dead
    }

    fn wake(st: &mut State) {
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }

    fn admit(&self, st: &mut State, len: usize, droppable: bool) -> Push {
        if st.closing || st.dead {
            return Push::Closed;
        }
        let queued = st.buf.len() + st.in_flight;
        let budget = self.budget.get();
        if droppable && queued > budget.drop_threshold {
            self.dropped.set(self.dropped.get() + 1);
            return Push::Dropped;
        }
        if queued + len > budget.max_buffered {
            // Return the backlog's memory now and leave only a 1008 close behind whatever the
            // kernel already holds; the connection loop gives it a short grace, then kills.
            st.buf = Vec::new();
            codec::encode_close(&mut st.buf, 1008, "slow consumer");
            st.closing = true;
            if let Some(w) = st.waker.take() {
                w.wake();
            }
            self.slow_closed.set(true);
            tracing::warn!(message = "Slow consumer closed.", queued_bytes = queued);
            return Push::Closed;
        }
        Push::Queued
    }

    /// True once the budget was exceeded (the socket is being closed with 1008).
    pub fn closed_as_slow(&self) -> bool {
        self.slow_closed.get()
    }

    fn interrupt_reader(&self) {
        if let Some(c) = self.canceller.borrow_mut().take() {
            let _ = c.cancel();
        }
    }

    /// Queue raw bytes that are not a WebSocket frame (the HTTP 101 head, so that it and the
    /// `connect.challenge` leave in one write).
    pub fn push_raw(&self, bytes: &[u8]) -> Push {
        let mut st = self.st.borrow_mut();
        let r = self.admit(&mut st, bytes.len(), false);
        if r == Push::Queued {
            st.buf.extend_from_slice(bytes);
            Self::wake(&mut st);
        }
        r
    }

    /// Queue one non-droppable frame (responses, control frames).
    pub fn push_frame(&self, op: OpCode, payload: &[u8]) -> Push {
        let mut st = self.st.borrow_mut();
        let r = self.admit(&mut st, payload.len() + 10, false);
        if r == Push::Queued {
            codec::encode_frame(&mut st.buf, op, payload);
            Self::wake(&mut st);
        } else if r == Push::Closed && self.slow_closed.get() {
            drop(st);
            self.interrupt_reader();
        }
        r
    }

    /// Queue an event: `body` is the shared serialized event without `seq`; this socket's
    /// next `seq` and the WebSocket header are added here.
    pub fn push_event(&self, body: &[u8], droppable: bool) -> Push {
        let seq = self.seq.get() + 1;
        let mut tail = [0u8; 32];
        let tail_len = seq_tail(&mut tail, seq);
        let total = body.len() + tail_len;
        let mut st = self.st.borrow_mut();
        let r = self.admit(&mut st, total + 10, droppable);
        match r {
            Push::Queued => {
                self.seq.set(seq);
                let mut header = [0u8; 10];
                let hl = codec::write_header(&mut header, OpCode::Text, total);
                st.buf.extend_from_slice(&header[..hl]);
                st.buf.extend_from_slice(body);
                st.buf.extend_from_slice(&tail[..tail_len]);
                Self::wake(&mut st);
            }
            // The client detects the gap from seq.
            Push::Dropped => self.seq.set(seq),
            Push::Closed => {
                if self.slow_closed.get() {
                    drop(st);
                    self.interrupt_reader();
                }
            }
        }
        r
    }

    /// Queue a close frame; nothing may be queued after it. The writer shuts the socket after
    /// writing it.
    pub fn close(&self, code: u16, reason: &str) {
        let mut st = self.st.borrow_mut();
        if st.closing || st.dead {
            return;
        }
        codec::encode_close(&mut st.buf, code, reason);
        st.closing = true;
        Self::wake(&mut st);
    }

    /// Stop now: discard queued bytes, stop the writer and interrupt the reader.
    pub fn kill(&self) {
        {
            let mut st = self.st.borrow_mut();
            drop_state(&mut st);
        }
        self.interrupt_reader();
    }

    /// Writer side: wait for bytes. Returns the filled buffer (swapped with `spare`) and whether
    /// it ends with the close frame, or `None` when the writer must stop.
    pub async fn next_batch(&self, spare: Vec<u8>) -> Option<(Vec<u8>, bool)> {
        let mut spare = Some(spare);
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if st.dead {
                return Poll::Ready(None);
            }
            if st.buf.is_empty() {
                if st.closing {
                    return Poll::Ready(None);
                }
                st.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut out = spare.take().unwrap_or_default();
            std::mem::swap(&mut out, &mut st.buf);
            st.in_flight = out.len();
            Poll::Ready(Some((out, st.closing)))
        })
        .await
    }

    /// Resolves once the connection is killed (the writer races this against a stuck write).
    pub async fn killed(&self) {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if st.dead {
                return Poll::Ready(());
            }
            st.kill_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Writer side: the in-flight batch was written.
    pub fn write_done(&self) {
        let mut st = self.st.borrow_mut();
        st.in_flight = 0;
        // Nothing queued meanwhile: an idle socket keeps no write buffer (under load pushes
        // arrive during the write and the swapped-in buffer is reused).
        if st.buf.is_empty() {
            st.buf = Vec::new();
        }
    }
}

fn drop_state(st: &mut State) {
    st.dead = true;
    // Return the memory of a dropped slow client at once.
    st.buf = Vec::new();
    st.in_flight = 0;
    if let Some(w) = st.waker.take() {
        w.wake();
    }
    if let Some(w) = st.kill_waker.take() {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ws::codec::{Decoder, Message, Role};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        rt.block_on(f)
    }

    fn take(ob: &Outbox) -> (Vec<u8>, bool) {
        let r = block_on(ob.next_batch(Vec::new())).expect("a batch");
        ob.write_done();
        r
    }

    /// Decode every server frame in `bytes` into (text or "close:<code>").
    fn frames(bytes: &[u8]) -> Vec<String> {
        let mut buf = bytes.to_vec();
        let mut dec = Decoder::new(Role::Client, usize::MAX);
        let mut out = Vec::new();
        while let Ok(Some(m)) = dec.next(&mut buf) {
            out.push(match m {
                Message::Text(t) => String::from_utf8_lossy(t).into_owned(),
                Message::Close(c, _) => format!("close:{}", c.unwrap_or(0)),
                _ => "other".into(),
            });
        }
        out
    }

    fn budget(drop_threshold: usize, max_buffered: usize) -> Budget {
        Budget {
            max_buffered,
            drop_threshold,
        }
    }

    #[test]
    fn frames_coalesce_into_one_batch_with_per_socket_seq() {
        let ob = Outbox::new(Budget::default());
        ob.push_raw(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        let body = br#"{"type":"event","event":"tick","payload":{}"#;
        assert_eq!(ob.push_event(body, true), Push::Queued);
        assert_eq!(ob.push_event(body, true), Push::Queued);
        let (batch, last) = take(&ob);
        assert!(!last);
        let head_len = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".len();
        assert!(batch.starts_with(b"HTTP/1.1 101"));
        assert_eq!(
            frames(&batch[head_len..]),
            vec![
                r#"{"type":"event","event":"tick","payload":{},"seq":1}"#,
                r#"{"type":"event","event":"tick","payload":{},"seq":2}"#,
            ]
        );
        assert_eq!(ob.queued(), 0);
    }

    #[test]
    fn droppable_events_are_skipped_past_the_threshold_and_leave_a_seq_gap() {
        let ob = Outbox::new(budget(100, 10_000));
        let body = [b'x'; 150];
        assert_eq!(ob.push_event(&body, true), Push::Queued); // 0 queued before: admitted
        assert_eq!(ob.push_event(&body, true), Push::Dropped); // > 100 queued: skipped
        assert_eq!(ob.push_frame(OpCode::Text, b"reply"), Push::Queued); // responses never dropped
        assert_eq!(ob.dropped(), 1);
        let (batch, _) = take(&ob);
        assert_eq!(frames(&batch).len(), 2);
        // The next event carries seq 3: the client sees the gap.
        ob.push_event(br#"{"a":1"#, true);
        let (batch, _) = take(&ob);
        assert_eq!(frames(&batch), vec![r#"{"a":1,"seq":3}"#]);
    }

    #[test]
    fn passing_max_buffered_frees_the_backlog_and_leaves_only_a_1008_close() {
        let ob = Outbox::new(budget(usize::MAX, 1000));
        let body = [b'y'; 400];
        assert_eq!(ob.push_event(&body, false), Push::Queued);
        assert_eq!(ob.push_event(&body, false), Push::Queued);
        assert_eq!(ob.push_event(&body, false), Push::Closed);
        assert!(ob.closed_as_slow());
        assert!(ob.is_closed());
        assert_eq!(ob.push_frame(OpCode::Text, b"late"), Push::Closed);
        let (batch, last) = take(&ob);
        assert!(last, "the close frame ends the stream");
        assert!(
            batch.len() < 64,
            "backlog was not freed: {} bytes",
            batch.len()
        );
        assert_eq!(frames(&batch), vec!["close:1008"]);
    }

    #[test]
    fn close_is_final_and_kill_discards_everything() {
        let ob = Outbox::new(Budget::default());
        ob.push_frame(OpCode::Text, b"a");
        ob.close(1000, "bye");
        ob.close(1011, "ignored: already closing");
        assert_eq!(ob.push_frame(OpCode::Text, b"b"), Push::Closed);
        let (batch, last) = take(&ob);
        assert!(last);
        assert_eq!(frames(&batch), vec!["a".to_string(), "close:1000".into()]);
        // Nothing after the close frame.
        assert!(block_on(ob.next_batch(Vec::new())).is_none());

        let ob = Outbox::new(Budget::default());
        ob.push_frame(OpCode::Text, b"never sent");
        ob.kill();
        assert!(ob.is_dead());
        assert_eq!(ob.queued(), 0);
        assert!(block_on(ob.next_batch(Vec::new())).is_none());
    }

    #[test]
    fn an_idle_outbox_holds_no_buffer_after_a_write() {
        let ob = Outbox::new(Budget::default());
        ob.push_frame(OpCode::Text, &[b'z'; 300]);
        // The writer hands in its spare buffer, which the swap leaves in the outbox.
        let _ = block_on(ob.next_batch(Vec::with_capacity(1024))).expect("a batch");
        assert_eq!(ob.st.borrow().buf.capacity(), 1024);
        ob.write_done();
        assert_eq!(ob.st.borrow().buf.capacity(), 0);
    }
}
