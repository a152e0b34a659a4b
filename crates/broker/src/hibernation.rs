//! Hibernation of idle connections. A plain TCP connection that has had
//! nothing to read or write for a while gives up its task, its buffers and
//! its registration with tokio's reactor, and waits as one small record in
//! an epoll set that a single thread watches. Its socket becoming readable
//! (a packet, or the peer closing), a delivery for its session, a takeover,
//! shutdown or its keep-alive deadline brings it back as a task with the
//! same state. An idle fleet then costs its sessions and little more: a
//! waiting task, its serve loop and its reactor registration are about 1 KB
//! per connection, paid by every device between its messages.
//!
//! Who wakes whom without losing a wake-up: a hibernating connection stores
//! its token in its session and only then looks at its queue, generation and
//! the shutdown flag; everything that changes those changes them first and
//! then takes the token from the session (`BrokerShared::wake`). One of the
//! two sees the other, and only the side that takes the token wakes it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tracing::{debug, warn};

use crate::connection::{self, Hibernated};

/// The token of the thread's own waker; connections use their slot index.
const WAKER: Token = Token(usize::MAX);

/// A wave of this many connections falling asleep has freed their tasks and
/// buffers (a few KB each) below the sessions that stay: the thread then
/// gives the allocator's free pages back to the system ...
const TRIM_AFTER_SLEEPERS: u32 = 256;
/// ... at most this often, as the walk locks each allocator arena in turn.
const TRIM_INTERVAL: Duration = Duration::from_millis(500);

/// Hibernated connections of one broker, and the thread that watches them.
/// The thread starts with the first connection that hibernates.
#[derive(Default)]
pub(crate) struct Hibernation {
    watcher: OnceLock<Option<Arc<Watcher>>>,
}

struct Watcher {
    registry: Registry,
    waker: Waker,
    den: Mutex<Den>,
    runtime: tokio::runtime::Handle,
    stopping: AtomicBool,
}

/// The hibernating connections: slots reused through a free list, each
/// with a generation so a token kept by a session for an earlier sleeper
/// wakes nobody.
struct Den {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Tokens handed over by `wake`, for the thread to resume.
    woken: Vec<u64>,
    /// Keep-alive deadlines (milliseconds since `epoch`, token), earliest first.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    /// Deadlines count from here: the watcher's start, before any of them.
    epoch: Instant,
    /// Connections that fell asleep since the free pages were last returned.
    asleep_since_trim: u32,
    trimmed_at: Instant,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    sleeper: Option<Box<Hibernated>>,
}

/// A token: the slot's generation (never 0) above its index.
fn token(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

fn index_of(token: u64) -> usize {
    (token & u64::from(u32::MAX)) as usize
}

impl Den {
    fn new(now: Instant) -> Self {
        Den {
            slots: Vec::new(),
            free: Vec::new(),
            woken: Vec::new(),
            deadlines: BinaryHeap::new(),
            epoch: now,
            asleep_since_trim: 0,
            trimmed_at: now,
        }
    }

    /// Connections hibernating now: the slots not on the free list.
    fn sleepers(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn millis(&self, at: Instant) -> u64 {
        // Rounded up: a keep-alive deadline is never brought forward.
        let since = at.saturating_duration_since(self.epoch);
        since.as_millis() as u64 + u64::from(!since.subsec_nanos().is_multiple_of(1_000_000))
    }

    /// When the thread must next wake by itself: the earliest keep-alive
    /// deadline, or the moment a due trim is allowed.
    fn next_deadline(&self) -> Option<Instant> {
        let keep_alive = self
            .deadlines
            .peek()
            .map(|Reverse((millis, _))| self.epoch + Duration::from_millis(*millis));
        let trim = self.trim_due().then(|| self.trimmed_at + TRIM_INTERVAL);
        match (keep_alive, trim) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn trim_due(&self) -> bool {
        self.asleep_since_trim >= TRIM_AFTER_SLEEPERS
    }

    /// Whether to return the free pages now; if so the count starts again.
    fn take_trim(&mut self, now: Instant) -> bool {
        if !self.trim_due() || now < self.trimmed_at + TRIM_INTERVAL {
            return false;
        }
        self.asleep_since_trim = 0;
        self.trimmed_at = now;
        true
    }

    /// Takes the sleeper `token` names, if it is still there, with its token.
    fn take(&mut self, token: u64) -> Option<(u64, Box<Hibernated>)> {
        let index = index_of(token);
        let slot = self.slots.get_mut(index)?;
        if token >> 32 != u64::from(slot.generation) {
            return None;
        }
        let sleeper = slot.sleeper.take()?;
        self.free.push(index as u32);
        Some((token, sleeper))
    }

    fn take_index(&mut self, index: usize) -> Option<(u64, Box<Hibernated>)> {
        let generation = self.slots.get(index)?.generation;
        self.take(token(index as u32, generation))
    }

    /// Deadlines of sleepers that have since woken stay in the heap until
    /// they come due; a heap far larger than the den is swept.
    fn sweep_deadlines(&mut self) {
        if self.deadlines.len() < 1024 || self.deadlines.len() < 2 * self.slots.len() {
            return;
        }
        let slots = &self.slots;
        self.deadlines.retain(|Reverse((_, token))| {
            slots.get(index_of(*token)).is_some_and(|slot| {
                slot.sleeper.is_some() && u64::from(slot.generation) == token >> 32
            })
        });
    }
}

impl Hibernation {
    fn watcher(&self) -> Option<&Arc<Watcher>> {
        self.watcher
            .get_or_init(|| match Watcher::start() {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    warn!(error = %e, "cannot start the hibernation thread; idle connections keep their tasks");
                    None
                }
            })
            .as_ref()
    }

    /// Whether connections can hibernate (the thread is running, started
    /// here by the first connection that asks).
    pub(crate) fn available(&self) -> bool {
        self.watcher().is_some()
    }

    /// Puts a connection to sleep, or hands it back when its socket cannot
    /// be watched.
    pub(crate) fn sleep(&self, mut sleeper: Box<Hibernated>) -> Result<(), Box<Hibernated>> {
        let Some(watcher) = self.watcher() else {
            return Err(sleeper);
        };
        let mut den = watcher.den();
        let index = match den.free.pop() {
            Some(index) => index,
            None => {
                den.slots.push(Slot::default());
                (den.slots.len() - 1) as u32
            }
        };
        let slot = &mut den.slots[index as usize];
        slot.generation = slot.generation.checked_add(1).unwrap_or(1);
        let token = token(index, slot.generation);
        if let Err(e) = watcher.registry.register(
            &mut sleeper.stream,
            Token(index as usize),
            Interest::READABLE,
        ) {
            warn!(error = %e, "cannot watch an idle connection; it keeps its task");
            den.free.push(index);
            return Err(sleeper);
        }
        // The thread sleeps until the earliest deadline: it is told only
        // when this one comes before that.
        let mut earliest = false;
        if let Some(deadline) = sleeper.keep_alive_deadline() {
            let millis = den.millis(deadline);
            earliest = den
                .deadlines
                .peek()
                .is_none_or(|Reverse((first, _))| millis < *first);
            den.deadlines.push(Reverse((millis, token)));
            den.sweep_deadlines();
        }
        den.asleep_since_trim = den.asleep_since_trim.saturating_add(1);
        // The thread learns of a trim coming due as of a deadline.
        earliest |= den.asleep_since_trim == TRIM_AFTER_SLEEPERS;
        // Named in its session while the den is locked, so the thread (which
        // takes the den's lock first) cannot wake it before.
        sleeper.session().hibernated.store(token, Ordering::SeqCst);
        den.slots[index as usize].sleeper = Some(sleeper);
        drop(den);
        if earliest {
            let _ = watcher.waker.wake();
        }
        Ok(())
    }

    /// Connections hibernating now, for `$SYS` and `/metrics`.
    pub(crate) fn count(&self) -> u64 {
        match self.watcher.get() {
            Some(Some(watcher)) => watcher.den().sleepers() as u64,
            _ => 0,
        }
    }

    /// Wakes the sleeper `token` names (taken from its session).
    pub(crate) fn wake(&self, token: u64) {
        if let Some(Some(watcher)) = self.watcher.get() {
            watcher.den().woken.push(token);
            let _ = watcher.waker.wake();
        }
    }
}

impl Drop for Hibernation {
    fn drop(&mut self) {
        if let Some(Some(watcher)) = self.watcher.get() {
            watcher.stopping.store(true, Ordering::SeqCst);
            let _ = watcher.waker.wake();
        }
    }
}

impl Watcher {
    fn start() -> std::io::Result<Arc<Watcher>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let poll = Poll::new()?;
        let watcher = Arc::new(Watcher {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKER)?,
            den: Mutex::new(Den::new(Instant::now())),
            runtime,
            stopping: AtomicBool::new(false),
        });
        let thread = watcher.clone();
        std::thread::Builder::new()
            .name("mqtt-hibernation".into())
            .spawn(move || thread.watch(poll))?;
        Ok(watcher)
    }

    fn den(&self) -> MutexGuard<'_, Den> {
        self.den.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self, mut poll: Poll) {
        let mut events = Events::with_capacity(1024);
        let mut waking = Vec::new();
        loop {
            let timeout = self
                .den()
                .next_deadline()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = poll.poll(&mut events, timeout)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                warn!(error = %e, "hibernation poll failed");
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let trim = {
                let mut den = self.den();
                for event in events.iter() {
                    if event.token() != WAKER {
                        waking.extend(den.take_index(event.token().0));
                    }
                }
                for token in std::mem::take(&mut den.woken) {
                    waking.extend(den.take(token));
                }
                let now = Instant::now();
                let now_millis = den.millis(now);
                while let Some(Reverse((due, token))) = den.deadlines.peek().copied() {
                    if due > now_millis {
                        break;
                    }
                    den.deadlines.pop();
                    waking.extend(den.take(token));
                }
                den.take_trim(now)
            };
            for (token, mut sleeper) in waking.drain(..) {
                let _ = self.registry.deregister(&mut sleeper.stream);
                let _ = sleeper.session().hibernated.compare_exchange(
                    token,
                    0,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                self.runtime.spawn(connection::wake_up(sleeper));
            }
            if trim {
                let started = Instant::now();
                let released = heap::release_free_pages();
                debug!(released, took = ?started.elapsed(), "returned free heap pages after connections fell asleep");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_pages_go_back_after_a_wave_at_most_every_interval() {
        let start = Instant::now();
        let mut den = Den::new(start);
        den.asleep_since_trim = TRIM_AFTER_SLEEPERS - 1;
        assert_eq!(den.next_deadline(), None, "no deadline, no trim due");
        assert!(!den.take_trim(start + TRIM_INTERVAL));
        den.asleep_since_trim += 1;
        assert_eq!(den.next_deadline(), Some(start + TRIM_INTERVAL));
        assert!(
            !den.take_trim(start + TRIM_INTERVAL / 2),
            "too soon after the last"
        );
        assert!(den.take_trim(start + TRIM_INTERVAL));
        assert_eq!(den.asleep_since_trim, 0);
        assert_eq!(den.next_deadline(), None);
        // A keep-alive deadline before the trim's comes first.
        den.asleep_since_trim = TRIM_AFTER_SLEEPERS;
        den.deadlines.push(Reverse((10, token(0, 1))));
        assert_eq!(den.next_deadline(), Some(start + Duration::from_millis(10)));
    }
}
