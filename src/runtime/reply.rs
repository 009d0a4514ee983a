//! A one-shot reply slot that crosses cores without locks (a 1-slot lock-free queue + waker).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

/// Shared slot; the requester awaits [`ReplySlot::wait`], the owner core calls [`ReplySlot::send`].
pub struct ReplySlot<T> {
    value: ArrayQueue<T>,
    waker: AtomicWaker,
}

impl<T> ReplySlot<T> {
    /// A fresh slot.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            value: ArrayQueue::new(1),
            waker: AtomicWaker::new(),
        })
    }
    /// Deliver the reply (a second send is ignored).
    pub fn send(&self, v: T) {
        let _ = self.value.push(v);
        self.waker.wake();
    }
    /// Wait for the reply.
    pub async fn wait(&self) -> T {
        poll_fn(|cx| {
            if let Some(v) = self.value.pop() {
                return Poll::Ready(v);
            }
            self.waker.register(cx.waker());
            match self.value.pop() {
                Some(v) => Poll::Ready(v),
                None => Poll::Pending,
            }
        })
        .await
    }
}
