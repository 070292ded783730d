//! Fuzzes the telemetry batch decoder: typed errors only, never a panic, and every accepted batch is the one
//! encoding of what it decoded to, within the limits it was decoded under.
#![no_main]
use outpost_shared::telemetry::{Batch, BatchLimits};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = BatchLimits::default();
    if let Ok(batch) = Batch::decode(data, &limits) {
        let again = batch.encode(&limits).expect("a decoded batch re-encodes within its limits");
        assert_eq!(again, data, "accepted batch is canonical: {batch:?}");
    }
});
