//! Password logins from strangers, bounded: one guard for the console's
//! HTTP login and for console accounts logging in over MQTT.
//!
//! Failures are counted per (user name, source) and per source, in maps
//! of bounded size. A user name is locked only for the source that failed
//! with it, so a flood from one address cannot lock the operator out from
//! another; a source that fails with many names is locked for all of them.
//! IPv6 sources count per /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use store::Store;

use crate::accounts::{self, AccountError, Session};

/// Failures of one user name from one source before it is locked there.
pub const MAX_FAILURES_PER_NAME: u32 = 5;
/// Failures from one source, any names, before the source is locked.
pub const MAX_FAILURES_PER_SOURCE: u32 = 30;
/// How long failures are remembered, and a lock lasts.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Longest user name looked at; longer ones fail without a password check.
pub const MAX_USERNAME_LEN: usize = 128;
/// Entries each map holds at most; the oldest goes first when full.
pub const MAX_TRACKED: usize = 10_000;

/// Why a login did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LoginRefusal {
    #[error("wrong user name or password")]
    BadCredentials,
    /// Locked after repeated failures; retry after this long.
    #[error("too many failed logins; try again in {0:?}")]
    Throttled(Duration),
    #[error("too many logins at once; try again shortly")]
    Busy,
    #[error(transparent)]
    Other(AccountError),
}

impl From<AccountError> for LoginRefusal {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::BadCredentials => LoginRefusal::BadCredentials,
            AccountError::Busy => LoginRefusal::Busy,
            other => LoginRefusal::Other(other),
        }
    }
}

/// Failure counts with the start of their window, at most `MAX_TRACKED`.
#[derive(Debug)]
struct Failures<K> {
    counts: HashMap<K, (u32, Instant)>,
}

impl<K: Hash + Eq + Clone> Failures<K> {
    fn new() -> Self {
        Failures {
            counts: HashMap::new(),
        }
    }

    fn locked_for(&self, key: &K, limit: u32, now: Instant) -> Option<Duration> {
        let (count, since) = self.counts.get(key)?;
        let elapsed = now.saturating_duration_since(*since);
        (*count >= limit && elapsed < WINDOW).then(|| WINDOW - elapsed)
    }

    fn fail(&mut self, key: K, now: Instant) {
        if !self.counts.contains_key(&key) && self.counts.len() >= MAX_TRACKED {
            self.counts
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < WINDOW);
            if self.counts.len() >= MAX_TRACKED {
                // The oldest sixteenth goes at once, so a flood of new
                // sources costs one scan per MAX_TRACKED / 16 of them.
                let mut starts: Vec<Instant> = self.counts.values().map(|(_, s)| *s).collect();
                let nth = MAX_TRACKED / 16;
                let (_, cutoff, _) = starts.select_nth_unstable(nth);
                let cutoff = *cutoff;
                self.counts.retain(|_, (_, since)| *since > cutoff);
            }
        }
        let entry = self.counts.entry(key).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }

    fn forget(&mut self, key: &K) {
        self.counts.remove(key);
    }

    fn len(&self) -> usize {
        self.counts.len()
    }
}

/// The source a failure is counted against: the address, or its /64.
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug)]
struct Attempts {
    by_name: Failures<(String, IpAddr)>,
    by_source: Failures<IpAddr>,
}

/// Throttles password logins; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct LoginGuard {
    attempts: Mutex<Attempts>,
}

impl Default for LoginGuard {
    fn default() -> Self {
        LoginGuard {
            attempts: Mutex::new(Attempts {
                by_name: Failures::new(),
                by_source: Failures::new(),
            }),
        }
    }
}

impl LoginGuard {
    fn attempts(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A name is kept at most [`MAX_USERNAME_LEN`] bytes long: a 2 MB user
    /// name in a login body must not become a 2 MB key.
    fn name_key(username: &str, source: IpAddr) -> (String, IpAddr) {
        let name = username.trim();
        let mut end = name.len().min(MAX_USERNAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        (name[..end].to_lowercase(), source_key(source))
    }

    /// How long logins as `username` from `source` stay refused, if they are.
    pub fn locked_for(&self, username: &str, source: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let attempts = self.attempts();
        let by_source =
            attempts
                .by_source
                .locked_for(&source_key(source), MAX_FAILURES_PER_SOURCE, now);
        let by_name = attempts.by_name.locked_for(
            &Self::name_key(username, source),
            MAX_FAILURES_PER_NAME,
            now,
        );
        by_source.max(by_name)
    }

    pub fn failed(&self, username: &str, source: IpAddr) {
        let now = Instant::now();
        let mut attempts = self.attempts();
        attempts.by_source.fail(source_key(source), now);
        attempts.by_name.fail(Self::name_key(username, source), now);
    }

    pub fn succeeded(&self, username: &str, source: IpAddr) {
        self.attempts()
            .by_name
            .forget(&Self::name_key(username, source));
    }

    /// Entries held, for tests of the bound.
    pub fn tracked(&self) -> usize {
        let attempts = self.attempts();
        attempts.by_name.len() + attempts.by_source.len()
    }

    /// Checks a console account's password under the throttle. A locked
    /// name or source is refused before any password work.
    pub async fn verify(
        &self,
        store: &Store,
        username: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<Session, LoginRefusal> {
        if let Some(wait) = self.locked_for(username, source) {
            return Err(LoginRefusal::Throttled(wait));
        }
        if username.len() > MAX_USERNAME_LEN {
            self.failed(username, source);
            return Err(LoginRefusal::BadCredentials);
        }
        match accounts::verify_login(store, username, password).await {
            Ok(session) => {
                self.succeeded(username, source);
                Ok(session)
            }
            Err(AccountError::BadCredentials) => {
                self.failed(username, source);
                Err(LoginRefusal::BadCredentials)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_name_locks_only_for_the_source_that_failed() {
        let guard = LoginGuard::default();
        let (attacker, operator) = (ip("203.0.113.9"), ip("198.51.100.7"));
        for _ in 0..MAX_FAILURES_PER_NAME {
            guard.failed("Admin", attacker);
        }
        assert!(guard.locked_for("admin ", attacker).is_some());
        assert!(guard.locked_for("admin", operator).is_none());
        guard.succeeded("admin", attacker);
        assert!(guard.locked_for("admin", attacker).is_none());
    }

    #[test]
    fn a_source_spraying_names_is_locked_for_all() {
        let guard = LoginGuard::default();
        let sprayer = ip("2001:db8:1:2:aaaa::1");
        for i in 0..MAX_FAILURES_PER_SOURCE {
            guard.failed(&format!("user{i}"), sprayer);
        }
        // The same /64 counts as one source.
        assert!(
            guard
                .locked_for("someone-else", ip("2001:db8:1:2:bbbb::9"))
                .is_some()
        );
        assert!(
            guard
                .locked_for("someone-else", ip("2001:db8:1:3::1"))
                .is_none()
        );
    }

    #[test]
    fn a_huge_user_name_is_kept_short() {
        let guard = LoginGuard::default();
        let source = ip("203.0.113.1");
        let huge = "é".repeat(1 << 20);
        guard.failed(&huge, source);
        let attempts = guard.attempts();
        let key = attempts.by_name.counts.keys().next().expect("tracked");
        assert!(key.0.len() <= MAX_USERNAME_LEN);
    }

    #[test]
    fn the_maps_stay_bounded_under_a_flood_of_sources() {
        let guard = LoginGuard::default();
        for i in 0..(MAX_TRACKED as u32 + 5_000) {
            guard.failed("admin", IpAddr::V4(i.into()));
        }
        assert!(guard.tracked() <= 2 * MAX_TRACKED);
    }
}
