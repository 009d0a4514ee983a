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
    budget: Budget,
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
            budget,
            canceller: RefCell::new(Some(Canceller::new())),
        }
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
        if droppable && queued > self.budget.drop_threshold {
            self.dropped.set(self.dropped.get() + 1);
            return Push::Dropped;
        }
        if queued + len > self.budget.max_buffered {
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
