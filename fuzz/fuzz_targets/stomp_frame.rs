//! Fuzz target for the STOMP frame decoder.
//!
//! Input layout: 8 control bytes, then the bytes fed to the decoder.
//! * bytes 0..4: chunk sizes (`1 + b % 32`, cycled), so the fuzzer explores how frames
//!   are split across WebSocket messages;
//! * byte 4: bit 0 picks tiny limits (from bytes 5..8) instead of the defaults, so
//!   every limit check is reachable with short inputs.
//!
//! Checked properties:
//! 1. no panic, whatever the bytes;
//! 2. the decoder's buffers never exceed `Limits::max_buffered_bytes`;
//! 3. chunking is irrelevant: the same bytes give the same items and the same error
//!    whether fed whole or in pieces;
//! 4. every decoded frame survives `encode` + `decode` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The decoder itself, the very file the service compiles (it has no dependencies).
#[path = "../../src/transports/stomp/frame.rs"]
#[allow(dead_code)]
mod frame;

use frame::{Decoder, FrameError, Item, Limits};

fn run(limits: Limits, input: &[u8], sizes: &[usize]) -> (Vec<Item>, Option<FrameError>) {
    let mut decoder = Decoder::new(limits);
    let mut items = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        let (mut piece, tail) = rest.split_at(n);
        rest = tail;
        loop {
            match decoder.decode(&mut piece) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Some(e)),
            }
        }
        assert!(decoder.buffered_bytes() <= limits.max_buffered_bytes());
    }
    let _ = decoder.finish();
    (items, None)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (ctl, input) = data.split_at(8);
    let sizes: Vec<usize> = ctl[..4].iter().map(|&b| 1 + usize::from(b % 32)).collect();
    let limits = if ctl[4] & 1 == 1 {
        Limits {
            max_frame_bytes: usize::from(ctl[5]),
            max_headers: usize::from(ctl[6] % 8),
            max_header_bytes: usize::from(ctl[6] / 8),
            max_body_bytes: usize::from(ctl[7]),
        }
    } else {
        Limits::default()
    };

    let whole = run(limits, input, &[usize::MAX]);
    let chunked = run(limits, input, &sizes);
    assert_eq!(whole, chunked, "result depends on chunking");

    let roomy = Limits {
        max_frame_bytes: 1 << 24,
        max_headers: 1 << 16,
        max_header_bytes: 1 << 24,
        max_body_bytes: 1 << 24,
    };
    for item in &whole.0 {
        if let Item::Frame(frame) = item {
            let wire = frame.encode();
            let again = run(roomy, &wire, &[usize::MAX]);
            assert_eq!(again.1, None, "re-encoded frame rejected: {frame:?}");
            assert_eq!(
                again.0,
                vec![Item::Frame(frame.clone())],
                "round-trip changed the frame"
            );
        }
    }
});
