//! Gives the allocator's free pages back to the system.
//!
//! glibc's malloc returns memory to the kernel only from the top of each
//! arena. When thousands of connections go idle at once (a fleet settling
//! after a reconnect storm), their tasks and buffers are freed below the
//! long-lived sessions that arrived with them, and the freed pages stay
//! resident for as long as the process runs. `malloc_trim(0)` walks every
//! arena and hands back each whole free page with `madvise`, which brings the
//! resident size down to what is in use.
//!
//! The walk locks each arena in turn, so callers run it from a thread off the
//! hot path, after a wave of frees, and not more than a few times a second.

/// Returns free pages to the system; true when any were returned. Does
/// nothing (false) where the allocator is not glibc's: musl and the other
/// systems' allocators return memory themselves or have no such call.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_pages() -> bool {
    // SAFETY: malloc_trim takes no pointer and touches only the allocator's
    // own free lists, under the arena locks every malloc and free also take.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns free pages to the system; true when any were returned. Does
/// nothing (false) where the allocator is not glibc's.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_pages() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of this process, from /proc.
    fn resident_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    #[test]
    fn pages_freed_below_live_memory_go_back() {
        // Many small blocks with a survivor every few, then the rest freed:
        // the free pages sit below live memory, where only a trim reaches.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 1024]).collect();
        let mut kept = Vec::new();
        for (i, block) in blocks.drain(..).enumerate() {
            if i % 64 == 0 {
                kept.push(block);
            }
        }
        let before = resident_bytes();
        let released = release_free_pages();
        let after = resident_bytes();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(
                released,
                "the ~19 MiB freed below live blocks was not returned"
            );
            if let (Some(before), Some(after)) = (before, after) {
                assert!(
                    before.saturating_sub(after) > 8 << 20,
                    "resident size went from {before} to {after} bytes"
                );
            }
        }
        assert!(kept.iter().all(|b| b.len() == 1024));
    }
}
