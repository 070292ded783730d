//! Fuzzes the decoding of a device's report as the hub reads it (`update::lanes::DeviceReport`, CBOR from any
//! device): typed errors only, never a panic, and what the hub derives from an accepted report never panics either.
#![no_main]
use outpost_shared::update::lanes::DeviceReport;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(report) = outpost_shared::canonical::from_slice::<DeviceReport>(data) {
        let _ = report.rolled_back();
        for capability in report.lanes.keys() {
            let _ = report.lane(capability);
        }
    }
});
