//! The ordered backlog of mesh messages that a full core-to-core queue refused, one lane per
//! destination core.
//!
//! Owns: order per destination, coalescing (a newer replica update replaces the older one
//! still waiting; a leave cancels its own waiting join) and the byte budget that keeps a
//! stalled core from growing another core's memory without bound.
//! Must not touch: what the messages mean — the caller classifies them through [`Pending`]
//! and decides what a refusal costs.

use std::collections::{HashMap, VecDeque};

/// Bytes a destination's lane may hold before non-exempt messages are refused. A core that
/// has not drained 64 MiB of waiting messages is stalled; its clients would be slow
/// consumers (closed past 50 MiB) anywhere else.
pub const LANE_BUDGET_BYTES: usize = 64 << 20;

/// How a message relates to older ones waiting in the same lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coalesce {
    /// Always queued on its own.
    No,
    /// Replaces an older waiting message with the same key (a replica's newest state is all
    /// the destination needs); it goes to the back, behind everything sent before it.
    Replaces(u128),
    /// Cancels an older waiting `Replaces` message with this key and is itself dropped (a
    /// leave whose join never arrived); queued as usual when there is none.
    Cancels(u128),
}

/// What the backlog needs to know about a message.
pub trait Pending {
    /// Bytes it holds while waiting (an estimate is fine; it is a budget, not an allocator).
    fn cost(&self) -> usize;
    /// Its coalescing rule.
    fn coalesce(&self) -> Coalesce;
    /// Bounded elsewhere and never refused (e.g. run-slot bookkeeping that would leak).
    fn exempt(&self) -> bool {
        false
    }
}

/// How [`Backlog::push`] kept a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// Appended.
    Queued,
    /// Appended, and an older message with its key was removed.
    Coalesced,
    /// Dropped together with the older message it cancels.
    Cancelled,
}

struct Lane<M> {
    /// `None` marks a message removed by coalescing (skipped when flushed).
    queue: VecDeque<Option<M>>,
    /// Absolute index of `queue[0]` (indices keep counting across pops).
    head: u64,
    bytes: usize,
    /// `None` slots in `queue`; compacted away when they outnumber the live messages.
    dead: usize,
    /// `Some` slots in `queue`.
    live: usize,
    /// Key → absolute index of the waiting message that carries it.
    keyed: HashMap<u128, u64>,
}

impl<M> Default for Lane<M> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            head: 0,
            bytes: 0,
            dead: 0,
            live: 0,
            keyed: HashMap::new(),
        }
    }
}

/// Per-destination ordered lanes.
pub struct Backlog<M> {
    lanes: Vec<Lane<M>>,
    budget: usize,
    live: usize,
}

impl<M: Pending> Backlog<M> {
    /// Lanes holding at most `budget` bytes each.
    pub fn new(budget: usize) -> Self {
        Self {
            lanes: Vec::new(),
            budget,
            live: 0,
        }
    }

    /// Nothing waits for any destination.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Something waits for `to` (a message sent directly now would overtake it).
    pub fn is_waiting(&self, to: usize) -> bool {
        self.lanes.get(to).is_some_and(|l| l.live > 0)
    }

    /// Bytes waiting for `to`.
    pub fn bytes(&self, to: usize) -> usize {
        self.lanes.get(to).map_or(0, |l| l.bytes)
    }

    /// Keep `msg` for `to` behind what already waits there. `Err(msg)` when the lane is over
    /// its budget and the message is not exempt.
    pub fn push(&mut self, to: usize, msg: M) -> Result<Kept, M> {
        if self.lanes.len() <= to {
            self.lanes.resize_with(to + 1, Lane::default);
        }
        let Some(lane) = self.lanes.get_mut(to) else {
            return Err(msg);
        };
        let rule = msg.coalesce();
        if let Coalesce::Cancels(key) = rule {
            if lane.take_keyed(key).is_some() {
                self.live -= 1;
                return Ok(Kept::Cancelled);
            }
        }
        let cost = msg.cost();
        // Replacing frees the older one's bytes: the budget is checked against the lane as
        // it will be, and a refusal leaves the older message where it was.
        let freed = match rule {
            Coalesce::Replaces(key) => lane.keyed_cost(key),
            _ => 0,
        };
        if !msg.exempt() && (lane.bytes - freed).saturating_add(cost) > self.budget {
            return Err(msg);
        }
        let mut kept = Kept::Queued;
        if let Coalesce::Replaces(key) = rule {
            if lane.take_keyed(key).is_some() {
                self.live -= 1;
                kept = Kept::Coalesced;
            }
        }
        if lane.dead > 64 && lane.dead * 2 > lane.queue.len() {
            lane.compact();
        }
        let index = lane.head + lane.queue.len() as u64;
        if let Coalesce::Replaces(key) = rule {
            lane.keyed.insert(key, index);
        }
        lane.bytes = lane.bytes.saturating_add(cost);
        lane.queue.push_back(Some(msg));
        lane.live += 1;
        self.live += 1;
        Ok(kept)
    }

    /// Hand `to`'s waiting messages to `send` in order until it refuses one (which stays
    /// first). Returns how many were sent.
    pub fn flush(&mut self, to: usize, mut send: impl FnMut(M) -> Result<(), M>) -> usize {
        let Some(lane) = self.lanes.get_mut(to) else {
            return 0;
        };
        let mut sent = 0;
        while let Some(slot) = lane.queue.pop_front() {
            let index = lane.head;
            lane.head += 1;
            let Some(msg) = slot else {
                lane.dead = lane.dead.saturating_sub(1);
                continue;
            };
            let (cost, rule) = (msg.cost(), msg.coalesce());
            match send(msg) {
                Ok(()) => {
                    sent += 1;
                    self.live -= 1;
                    lane.live -= 1;
                    lane.bytes = lane.bytes.saturating_sub(cost);
                    if let Coalesce::Replaces(key) = rule {
                        if lane.keyed.get(&key) == Some(&index) {
                            lane.keyed.remove(&key);
                        }
                    }
                }
                Err(back) => {
                    lane.head -= 1;
                    lane.queue.push_front(Some(back));
                    break;
                }
            }
        }
        sent
    }

    /// Number of destinations that have (or had) a lane.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }
}

impl<M: Pending> Lane<M> {
    /// Bytes of the waiting message carrying `key` (0 if none).
    fn keyed_cost(&self, key: u128) -> usize {
        self.keyed
            .get(&key)
            .and_then(|i| usize::try_from(i.checked_sub(self.head)?).ok())
            .and_then(|offset| self.queue.get(offset))
            .and_then(Option::as_ref)
            .map_or(0, |m| m.cost().min(self.bytes))
    }

    /// Remove the waiting message carrying `key`, if any.
    fn take_keyed(&mut self, key: u128) -> Option<M> {
        let index = self.keyed.remove(&key)?;
        let offset = usize::try_from(index.checked_sub(self.head)?).ok()?;
        let msg = self.queue.get_mut(offset)?.take()?;
        self.dead += 1;
        self.live -= 1;
        self.bytes = self.bytes.saturating_sub(msg.cost());
        if self.live == 0 {
            // Only removed slots left: nothing waits, so nothing may be queued behind them.
            self.head += self.queue.len() as u64;
            self.queue.clear();
            self.dead = 0;
            self.bytes = 0;
        }
        Some(msg)
    }

    /// Drop the `None` slots and renumber what is left (indices restart at `head`).
    fn compact(&mut self) {
        self.queue.retain(Option::is_some);
        self.dead = 0;
        self.keyed.clear();
        for (offset, msg) in self.queue.iter().enumerate() {
            if let Some(Coalesce::Replaces(key)) = msg.as_ref().map(Pending::coalesce) {
                self.keyed.insert(key, self.head + offset as u64);
            }
        }
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Msg {
        Data(&'static str, usize),
        State(u8, u32),
        Join(u8),
        Leave(u8),
        Slot,
    }

    impl Pending for Msg {
        fn cost(&self) -> usize {
            match self {
                Msg::Data(_, n) => *n,
                _ => 10,
            }
        }
        fn coalesce(&self) -> Coalesce {
            match self {
                Msg::State(k, _) => Coalesce::Replaces(u128::from(*k)),
                Msg::Join(k) => Coalesce::Replaces(1000 + u128::from(*k)),
                Msg::Leave(k) => Coalesce::Cancels(1000 + u128::from(*k)),
                _ => Coalesce::No,
            }
        }
        fn exempt(&self) -> bool {
            matches!(self, Msg::Slot)
        }
    }

    fn drain(b: &mut Backlog<Msg>, to: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        b.flush(to, |m| {
            out.push(m);
            Ok(())
        });
        out
    }

    #[test]
    fn keeps_order_per_destination() {
        let mut b = Backlog::new(1000);
        b.push(1, Msg::Data("a", 1)).unwrap();
        b.push(2, Msg::Data("x", 1)).unwrap();
        b.push(1, Msg::Data("b", 1)).unwrap();
        assert!(b.is_waiting(1) && b.is_waiting(2) && !b.is_waiting(0));
        assert_eq!(drain(&mut b, 1), vec![Msg::Data("a", 1), Msg::Data("b", 1)]);
        assert!(!b.is_waiting(1));
        assert!(!b.is_empty());
        assert_eq!(drain(&mut b, 2), vec![Msg::Data("x", 1)]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_newer_state_replaces_the_older_and_goes_behind_what_came_between() {
        let mut b = Backlog::new(1000);
        b.push(1, Msg::State(7, 1)).unwrap();
        b.push(1, Msg::Data("between", 1)).unwrap();
        assert_eq!(b.push(1, Msg::State(7, 2)), Ok(Kept::Coalesced));
        b.push(1, Msg::State(8, 1)).unwrap();
        assert_eq!(b.bytes(1), 21);
        assert_eq!(
            drain(&mut b, 1),
            vec![Msg::Data("between", 1), Msg::State(7, 2), Msg::State(8, 1)]
        );
        assert!(b.is_empty());
        assert_eq!(b.bytes(1), 0);
    }

    #[test]
    fn a_leave_cancels_its_waiting_join_but_not_a_delivered_one() {
        let mut b = Backlog::new(1000);
        b.push(0, Msg::Join(3)).unwrap();
        assert_eq!(b.push(0, Msg::Leave(3)), Ok(Kept::Cancelled));
        assert!(b.is_empty() && !b.is_waiting(0));
        b.push(0, Msg::Join(4)).unwrap();
        assert_eq!(drain(&mut b, 0), vec![Msg::Join(4)]);
        // Join 4 was delivered: its leave must go too.
        assert_eq!(b.push(0, Msg::Leave(4)), Ok(Kept::Queued));
        assert_eq!(drain(&mut b, 0), vec![Msg::Leave(4)]);
    }

    #[test]
    fn over_budget_refuses_all_but_exempt_messages() {
        let mut b = Backlog::new(100);
        b.push(1, Msg::Data("a", 60)).unwrap();
        assert_eq!(b.push(1, Msg::Data("b", 60)), Err(Msg::Data("b", 60)));
        b.push(1, Msg::Slot).unwrap();
        b.push(1, Msg::Data("c", 31)).unwrap_err();
        // Other destinations have their own budget.
        b.push(2, Msg::Data("d", 60)).unwrap();
        assert_eq!(drain(&mut b, 1), vec![Msg::Data("a", 60), Msg::Slot]);
        b.push(1, Msg::Data("e", 60)).unwrap();
    }

    #[test]
    fn replacing_a_state_at_the_budget_edge_is_not_refused() {
        let mut b = Backlog::new(20);
        b.push(1, Msg::State(1, 1)).unwrap();
        b.push(1, Msg::State(2, 1)).unwrap();
        assert_eq!(b.push(1, Msg::State(1, 2)), Ok(Kept::Coalesced));
        assert_eq!(b.bytes(1), 20);
    }

    #[test]
    fn a_refused_replacement_leaves_the_older_state_in_place() {
        let mut b = Backlog::new(25);
        b.push(1, Msg::State(1, 1)).unwrap();
        b.push(1, Msg::Data("big", 15)).unwrap();
        // State costs 10: replacing fits (25 - 10 + 10); a data message of 1 does not.
        assert_eq!(b.push(1, Msg::State(1, 2)), Ok(Kept::Coalesced));
        assert!(b.push(1, Msg::Data("x", 1)).is_err());
        assert_eq!(
            drain(&mut b, 1),
            vec![Msg::Data("big", 15), Msg::State(1, 2)]
        );
    }

    #[test]
    fn a_refused_send_stays_first_and_keeps_its_key() {
        let mut b = Backlog::new(1000);
        b.push(1, Msg::State(1, 1)).unwrap();
        b.push(1, Msg::Data("a", 1)).unwrap();
        let mut calls = 0;
        let sent = b.flush(1, |m| {
            calls += 1;
            Err(m)
        });
        assert_eq!((sent, calls), (0, 1));
        assert_eq!(b.push(1, Msg::State(1, 2)), Ok(Kept::Coalesced));
        assert_eq!(drain(&mut b, 1), vec![Msg::Data("a", 1), Msg::State(1, 2)]);
    }

    #[test]
    fn a_stalled_destination_stays_bounded_under_endless_updates() {
        let mut b = Backlog::new(1 << 20);
        for i in 0..100_000u32 {
            b.push(1, Msg::State((i % 4) as u8, i)).unwrap();
            let _ = b.push(1, Msg::Data("event", 100));
        }
        assert!(b.bytes(1) <= 1 << 20);
        // Removed states leave slots that compaction reclaims: the lane holds about as many
        // slots as live messages, not one per update ever pushed.
        let live = (1 << 20) / 100 + 4;
        assert!(
            b.lanes[1].slots() <= 2 * live + 65,
            "{}",
            b.lanes[1].slots()
        );
        // The four newest states are all there, in order of last update.
        let out = drain(&mut b, 1);
        let states: Vec<_> = out
            .iter()
            .filter_map(|m| match m {
                Msg::State(k, v) => Some((*k, *v)),
                _ => None,
            })
            .collect();
        assert_eq!(
            states,
            vec![(0, 99_996), (1, 99_997), (2, 99_998), (3, 99_999)]
        );
    }
}
