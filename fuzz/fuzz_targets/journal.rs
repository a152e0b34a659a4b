//! Any bytes as the broker's journal, after its magic: recovery reads them
//! without a panic, and never past the first damaged record.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut contents = journal::MAGIC.to_vec();
    contents.extend_from_slice(data);
    let good = journal::scan(&contents).count() as u64;
    assert!(broker::replay_journal(&contents) <= good);
});
