//! The header every benchmark payload starts with: when it was sent, by which
//! stream, with which sequence number.

use std::time::Instant;

/// Bytes the stamp takes at the front of a payload.
pub const STAMP_LEN: usize = 20;

/// Send time (nanoseconds since the run's start), stream and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_nanos: u64,
    pub stream: u32,
    pub sequence: u64,
}

impl Stamp {
    pub fn now(start: Instant, stream: u32, sequence: u64) -> Self {
        Stamp {
            sent_nanos: start.elapsed().as_nanos() as u64,
            stream,
            sequence,
        }
    }

    /// A payload of `size` bytes (at least the stamp) beginning with this stamp.
    pub fn payload(&self, size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size.max(STAMP_LEN)];
        self.write(&mut out);
        out
    }

    pub fn write(&self, out: &mut [u8]) {
        if out.len() < STAMP_LEN {
            return;
        }
        out[0..8].copy_from_slice(&self.sent_nanos.to_be_bytes());
        out[8..12].copy_from_slice(&self.stream.to_be_bytes());
        out[12..20].copy_from_slice(&self.sequence.to_be_bytes());
    }

    pub fn read(payload: &[u8]) -> Option<Self> {
        let b = payload.get(..STAMP_LEN)?;
        Some(Stamp {
            sent_nanos: u64::from_be_bytes(b[0..8].try_into().ok()?),
            stream: u32::from_be_bytes(b[8..12].try_into().ok()?),
            sequence: u64::from_be_bytes(b[12..20].try_into().ok()?),
        })
    }

    /// Microseconds from sending to `now`.
    pub fn latency_micros(&self, start: Instant) -> u64 {
        let now = start.elapsed().as_nanos() as u64;
        now.saturating_sub(self.sent_nanos) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_measures() {
        let start = Instant::now();
        let stamp = Stamp {
            sent_nanos: 5_000,
            stream: 7,
            sequence: 42,
        };
        let payload = stamp.payload(64);
        assert_eq!(payload.len(), 64);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(Stamp::read(&payload[..10]), None);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(stamp.latency_micros(start) >= 1_000);
    }
}
