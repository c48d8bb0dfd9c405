//! Protocol detection (`mesh_proxy::detect`): a connection's first bytes, as the detection
//! layer reads them.
//!
//! Drives `detect::classify` on every prefix the detection loop could see, and
//! `Recognizers::detect` itself over a connection that delivers the input in pieces. Asserts:
//! the bytes kept for replay are the connection's first bytes, no more than the buffer allows;
//! a decision from the bytes is what `classify` says of them; a connection that ended undecided
//! was undecided by its bytes.
#![forbid(unsafe_code)]

use mesh_fuzz::{pieces, runtime, PiecesReader};
use mesh_proxy::detect::{classify, Fallback, Protocol, Recognizers};
use std::time::Duration;

/// The detection buffer: the proxy's is its header limit; a small one reaches the
/// buffer-full path with small inputs.
const CAPACITIES: [usize; 2] = [1024, 64 * 1024];

fn main() {
    // Each input is read on its own: a panic cannot leave the runtime half-changed.
    let rt = std::panic::AssertUnwindSafe(runtime());
    afl::fuzz!(|data: &[u8]| {
        // What the detection loop asks as bytes arrive: every prefix up to the buffer.
        for n in 1..=data.len().min(CAPACITIES[0]) {
            let _ = classify(&data[..n]);
        }
        for capacity in CAPACITIES {
            for cut in [vec![data], pieces(data)] {
                let largest = cut.iter().map(|p| p.len()).max().unwrap_or(0);
                let mut io = PiecesReader::new(cut);
                let detected = rt
                    .block_on(Recognizers::default().detect(
                        &mut io,
                        Duration::from_secs(10),
                        capacity,
                    ))
                    .expect("reading from memory does not fail");
                let prefix = &detected.prefix[..];
                assert!(
                    data.starts_with(prefix),
                    "the replayed bytes are the first ones"
                );
                assert!(
                    prefix.len() < capacity + largest.max(64),
                    "read {} bytes with a buffer of {capacity}",
                    prefix.len()
                );
                match detected.fallback {
                    Some(Fallback::Eof) => {
                        assert_eq!(detected.protocol, Protocol::OPAQUE);
                        assert_eq!(prefix.len(), data.len(), "everything was read");
                        assert_eq!(classify(prefix), None, "decidable bytes were not decided");
                    }
                    Some(Fallback::Timeout) => unreachable!("a reader in memory never waits"),
                    None if prefix.len() >= capacity => {}
                    None => assert_eq!(
                        classify(prefix),
                        Some(detected.protocol),
                        "{:?}",
                        String::from_utf8_lossy(prefix)
                    ),
                }
            }
        }
    });
}
