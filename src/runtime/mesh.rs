//! Core-to-core messaging: one bounded lock-free queue per ordered pair of cores plus one
//! waker per receiving core. The only way cores talk; there is no shared lock.
//!
//! A sender pushes into `queue[from][to]` and wakes `to`. Each core runs one drain task that
//! empties all its inbound queues. A full queue is reported to the sender, who decides (a
//! broadcast counts a drop; a request answers UNAVAILABLE), so a stalled core never blocks
//! another.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

/// Capacity of each ordered-pair queue.
pub const QUEUE_CAPACITY: usize = 2048;

/// The mesh of `n × n` queues (the diagonal is unused: a core calls itself directly).
pub struct Mesh<M> {
    n: usize,
    queues: Vec<ArrayQueue<M>>,
    wakers: Vec<AtomicWaker>,
}

impl<M: Send> Mesh<M> {
    /// A mesh for `n` cores.
    pub fn new(n: usize) -> Arc<Self> {
        Self::with_capacity(n, QUEUE_CAPACITY)
    }

    /// A mesh for `n` cores with `slots` per ordered-pair queue (tests use tiny ones to
    /// exercise the full-queue paths).
    pub fn with_capacity(n: usize, slots: usize) -> Arc<Self> {
        let n = n.max(1);
        Arc::new(Self {
            n,
            queues: (0..n * n).map(|_| ArrayQueue::new(slots.max(1))).collect(),
            wakers: (0..n).map(|_| AtomicWaker::new()).collect(),
        })
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.n
    }

    /// Send `msg` from core `from` to core `to`. `Err(msg)` when that queue is full.
    pub fn send(&self, from: usize, to: usize, msg: M) -> Result<(), M> {
        let Some(q) = self.queues.get(from * self.n + to) else {
            return Err(msg);
        };
        q.push(msg)?;
        if let Some(w) = self.wakers.get(to) {
            w.wake();
        }
        Ok(())
    }

    /// Receive a batch of messages for core `me` (waits until at least one arrives).
    pub async fn recv_batch(&self, me: usize, out: &mut Vec<M>) {
        poll_fn(|cx| {
            self.drain(me, out);
            if !out.is_empty() {
                return Poll::Ready(());
            }
            if let Some(w) = self.wakers.get(me) {
                w.register(cx.waker());
            }
            // Re-check after registering so a send racing with registration is not lost.
            self.drain(me, out);
            if out.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    fn drain(&self, me: usize, out: &mut Vec<M>) {
        for from in 0..self.n {
            if let Some(q) = self.queues.get(from * self.n + me) {
                // Bounded per round so one busy sender cannot starve the others.
                for _ in 0..1024 {
                    match q.pop() {
                        Some(m) => out.push(m),
                        None => break,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_threads_and_wake_the_receiver() {
        let mesh: Arc<Mesh<u32>> = Mesh::new(2);
        let m2 = mesh.clone();
        let sender = std::thread::spawn(move || {
            for i in 0..100 {
                while m2.send(0, 1, i).is_err() {}
            }
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let mut all = Vec::new();
            while all.len() < 100 {
                let mut batch = Vec::new();
                mesh.recv_batch(1, &mut batch).await;
                all.extend(batch);
            }
            all
        });
        sender.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn full_queue_returns_the_message() {
        let mesh: Arc<Mesh<usize>> = Mesh::new(2);
        for i in 0..QUEUE_CAPACITY {
            mesh.send(0, 1, i).unwrap();
        }
        assert_eq!(mesh.send(0, 1, 7), Err(7));
        assert_eq!(mesh.send(1, 0, 7), Ok(()));
    }
}
