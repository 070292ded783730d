//! Fuzzes the wire frame decoders (both directions, fed in uneven pieces): typed errors only, never a panic, and
//! every accepted frame is the canonical encoding of what it decoded to.
#![no_main]
use outpost_shared::wire::{FrameDecoder, Limits, Message, Request, Response, encode_frame};

fn check<M: Message + std::fmt::Debug>(data: &[u8], step: usize) {
    let limits = Limits::default();
    let mut decoder = FrameDecoder::<M>::new(limits);
    let mut start = 0; // where the current frame began
    let mut at = 0;
    while at < data.len() {
        let end = (at + step).min(data.len());
        let Ok(used) = decoder.push(&data[at..end]) else { return };
        at += used;
        if let Some(msg) = decoder.pop() {
            let again = encode_frame(&msg, &limits).expect("a decoded message re-encodes within its limit");
            assert_eq!(again, &data[start..at], "accepted frame is canonical: {msg:?}");
            start = at;
        } else if used == 0 {
            break;
        }
    }
    let _ = decoder.finish();
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    check::<Request>(data, step);
    check::<Response>(data, step);
});
