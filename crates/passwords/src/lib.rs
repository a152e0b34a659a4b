//! Human passwords (console users, the standalone broker's password file):
//! argon2id with a random salt, verified on a bounded pool.
//!
//! One argon2id verification holds 19 MiB and a core for tens of
//! milliseconds. Run unbounded, a few hundred concurrent wrong logins took
//! gigabytes; here one worker thread per core verifies, at most
//! [`MAX_WAITING`] more wait, each at most [`MAX_WAIT`], and the rest are
//! refused at once with [`Busy`]. Device secrets are not passwords:
//! they are 256-bit random tokens compared by digest, with no pool.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Verifications that may wait for a free core before more are refused.
pub const MAX_WAITING: usize = 64;
/// How long one verification may wait for a free core.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Too many verifications are running or waiting: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many logins at once; try again shortly")]
pub struct Busy;

/// A password that could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// argon2id of `password` with a random salt, as a PHC string.
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| HashError(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `hash` is a PHC string argon2 can verify against.
pub fn is_phc(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok()
}

/// Largest argon2 memory a stored hash may ask for (256 MiB).
const MAX_BLOCKS: usize = 256 * 1024;

/// Verifies with `blocks` as argon2's working memory, reused from one
/// verification to the next: a worker holds one buffer for its life
/// instead of asking malloc for 19 MiB each time (which kept several
/// copies resident per thread).
fn verify_with(blocks: &mut Vec<Block>, password: &[u8], hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    if params.block_count() > MAX_BLOCKS {
        return false;
    }
    blocks.resize(params.block_count(), Block::default());
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..])
        .is_ok()
        // `Output`'s equality is constant-time.
        && Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A verification waiting for a worker, and where its answer goes.
struct Job {
    password: Vec<u8>,
    hash: String,
    answer: tokio::sync::oneshot::Sender<bool>,
}

/// One worker thread per core, fed by a queue of `MAX_WAITING`. Dedicated
/// threads rather than tokio's blocking pool: that pool starts a new
/// thread whenever none is idle, each new thread gets its own malloc
/// arena, and each arena kept its 19 MiB (300 wrong logins peaked serve
/// at 370 MiB that way).
fn queue() -> Option<&'static SyncSender<Job>> {
    static QUEUE: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(MAX_WAITING);
            let receiver = Arc::new(Mutex::new(receiver));
            let workers = std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2);
            let mut started = 0;
            for i in 0..workers {
                let receiver = receiver.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("argon2-{i}"))
                    .spawn(move || work(&receiver));
                started += usize::from(spawned.is_ok());
            }
            (started > 0).then_some(sender)
        })
        .as_ref()
}

fn work(receiver: &Mutex<Receiver<Job>>) {
    let mut blocks = Vec::new();
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // A caller that gave up waiting is not worked for.
        if job.answer.is_closed() {
            continue;
        }
        let _ = job
            .answer
            .send(verify_with(&mut blocks, &job.password, &job.hash));
    }
}

/// Whether `password` matches `hash`, verified on the bounded pool. A
/// malformed hash is a mismatch.
pub async fn verify(password: impl Into<Vec<u8>>, hash: impl Into<String>) -> Result<bool, Busy> {
    let queue = queue().ok_or(Busy)?;
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job = Job {
        password: password.into(),
        hash: hash.into(),
        answer,
    };
    match queue.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return Err(Busy),
    }
    match tokio::time::timeout(MAX_WAIT, answered).await {
        Ok(Ok(ok)) => Ok(ok),
        _ => Err(Busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_floods_are_refused_not_queued() {
        let h = hash("correct horse").expect("hash");
        assert!(is_phc(&h) && !is_phc("plain"));
        assert_eq!(verify("correct horse", h.clone()).await, Ok(true));
        assert_eq!(verify("wrong", h.clone()).await, Ok(false));
        assert_eq!(verify("x", "not a hash").await, Ok(false));
        // Many more than the pool takes at once: some are refused, none
        // waits for long, and every answer is either right or Busy.
        let attempts: Vec<_> = (0..MAX_WAITING * 3)
            .map(|_| tokio::spawn(verify("wrong", h.clone())))
            .collect();
        let mut busy = 0;
        for attempt in attempts {
            match attempt.await.expect("task") {
                Ok(ok) => assert!(!ok),
                Err(Busy) => busy += 1,
            }
        }
        assert!(busy > 0, "a flood must be refused in part");
        // The pool is free again afterwards.
        assert_eq!(verify("correct horse", h).await, Ok(true));
    }
}
