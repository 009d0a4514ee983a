//! Group-commit bookkeeping for a file that is always written whole (a session index
//! shard, the device registry): which keys' latest change is on disk, in the write on its
//! way, or in one that failed.
//!
//! Owns: generation numbers only. Must not touch: the file, the store thread, or what a
//! caller does about a failure (sessions re-stage a key when it is touched again; the
//! device registry re-stages every record not yet on disk into its next save).
//!
//! A change is staged with the generation of the next write ([`Generations::stage`]); at
//! most one write is in flight; a write carries everything staged before it started, so
//! once generation `g` is on disk every key staged for `g` or earlier is durable.

use std::collections::HashMap;

/// Where a key's latest change is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// On disk (or nothing was staged).
    Durable,
    /// Waiting for a write (queued, in flight, or not yet started).
    Pending,
    /// The write meant to carry it failed (the message); it stays staged until the caller
    /// re-stages it.
    Failed(String),
}

/// The generations of one whole-file writer. See the module docs.
#[derive(Debug, Default)]
pub struct Generations {
    /// Last generation started.
    started: u64,
    /// Last generation whose outcome is known.
    done: u64,
    /// Last generation that reached the disk (every later one also carries what it did).
    ok: u64,
    /// A write is queued or running: changes staged now need the next one.
    in_flight: bool,
    /// Key → the generation that must succeed for its latest change to be durable.
    waiting: HashMap<String, u64>,
    /// Why the last failed write failed.
    last_error: Option<String>,
}

impl Generations {
    /// The generation the next write will have (what a change staged now waits for).
    pub fn next(&self) -> u64 {
        self.started + 1
    }

    /// `key` changed: it is durable once the next write succeeds.
    pub fn stage(&mut self, key: &str) -> u64 {
        let gen = self.next();
        self.waiting.insert(key.to_string(), gen);
        gen
    }

    /// Where `key`'s latest change is.
    pub fn durability(&self, key: &str) -> Durability {
        match self.waiting.get(key) {
            None => Durability::Durable,
            Some(g) if *g <= self.ok => Durability::Durable,
            Some(g) if *g <= self.done => Durability::Failed(
                self.last_error
                    .clone()
                    .unwrap_or_else(|| "write failed".into()),
            ),
            Some(_) => Durability::Pending,
        }
    }

    /// The generation `key` waits for, if that write has not reported yet.
    pub fn on_its_way(&self, key: &str) -> Option<u64> {
        self.waiting.get(key).copied().filter(|g| *g > self.done)
    }

    /// Whether generation `gen` was written and failed (and nothing later succeeded).
    pub fn failed(&self, gen: u64) -> bool {
        gen <= self.done && gen > self.ok
    }

    /// Whether a write should start now: none in flight and some key waits for the next.
    pub fn should_start(&self) -> bool {
        !self.in_flight && self.waiting.values().any(|g| *g > self.started)
    }

    /// Every key not yet on disk now waits for the next write (it carries the whole file,
    /// so keys whose own write failed land with it). Returns them.
    pub fn restage_not_durable(&mut self) -> Vec<String> {
        let (ok, next) = (self.ok, self.next());
        self.waiting
            .iter_mut()
            .filter(|(_, g)| **g > ok)
            .map(|(k, g)| {
                *g = (*g).max(next);
                k.clone()
            })
            .collect()
    }

    /// A write starts (its snapshot is taken now). It is in flight until its outcome is
    /// reported through [`Self::finish`] (at once when it ran inline or could not start).
    pub fn start(&mut self) -> u64 {
        self.started += 1;
        self.in_flight = true;
        self.started
    }

    /// The outcome of write `gen` is known. A success makes every key staged for `gen` or
    /// earlier durable (and forgets it).
    pub fn finish(&mut self, gen: u64, outcome: Result<(), String>) {
        if gen >= self.started {
            // (A late report of an older write must not free the slot of a newer one.)
            self.in_flight = false;
        }
        self.done = self.done.max(gen);
        match outcome {
            Ok(()) => {
                self.ok = self.ok.max(gen);
                self.last_error = None;
                let ok = self.ok;
                self.waiting.retain(|_, g| *g > ok);
            }
            Err(e) => self.last_error = Some(e),
        }
    }

    /// Everything staged is on disk (a blocking write outside this bookkeeping wrote the
    /// whole file after the last change). Returns the generation that stands for it.
    pub fn all_durable(&mut self) -> u64 {
        let gen = self.started.max(self.done) + 1;
        self.started = gen;
        self.finish(gen, Ok(()));
        gen
    }

    /// Whether any key waits for a write.
    pub fn any_staged(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The last generation that reached the disk.
    pub fn ok(&self) -> u64 {
        self.ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_durable_only_once_a_write_that_carries_it_succeeds() {
        let mut g = Generations::default();
        assert_eq!(g.durability("a"), Durability::Durable);
        assert_eq!(g.stage("a"), 1);
        assert!(g.should_start());
        assert_eq!(g.durability("a"), Durability::Pending);
        let w1 = g.start();
        assert!(!g.should_start(), "one write in flight");
        // Staged during write 1: needs write 2.
        assert_eq!(g.stage("b"), 2);
        assert_eq!(g.on_its_way("a"), Some(1));
        g.finish(w1, Ok(()));
        assert_eq!(g.durability("a"), Durability::Durable);
        assert_eq!(g.durability("b"), Durability::Pending);
        assert!(g.should_start());
        let w2 = g.start();
        g.finish(w2, Err("disk full".into()));
        assert_eq!(g.durability("b"), Durability::Failed("disk full".into()));
        assert!(g.failed(2));
        assert!(!g.should_start(), "a failed key waits to be re-staged");
        assert_eq!(g.restage_not_durable(), vec!["b".to_string()]);
        assert_eq!(g.durability("b"), Durability::Pending);
        let w3 = g.start();
        g.finish(w3, Ok(()));
        assert_eq!(g.durability("b"), Durability::Durable);
        assert!(!g.any_staged());
    }

    #[test]
    fn a_late_report_of_an_older_write_keeps_the_newer_one_in_flight() {
        let mut g = Generations::default();
        g.stage("a");
        let w1 = g.start();
        g.finish(w1, Ok(()));
        g.stage("b");
        let w2 = g.start();
        g.finish(w1, Ok(()));
        g.stage("c");
        assert!(!g.should_start(), "write {w2} is still in flight");
        g.finish(w2, Ok(()));
        assert!(g.should_start());
        assert_eq!(g.durability("c"), Durability::Pending);
        g.all_durable();
        assert_eq!(g.durability("c"), Durability::Durable);
        assert!(!g.any_staged());
    }
}
