//! What the fuzz targets share: the input cut into the pieces a network read would deliver,
//! a reader that hands them out, and the runtime the async targets run on.
//!
//! Each target in `src/bin/` feeds AFL's input to the mesh's own parsing code (never a copy)
//! and asserts what must hold for any input: no panic, bounded output, and a round trip where
//! the format has one. `scripts/fuzz` builds and runs them; a crash is a panic, an abort or an
//! assertion here.
#![forbid(unsafe_code)]

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, ReadBuf};

/// The sizes of the pieces [`pieces`] cuts, in turn: byte by byte at first (where a head is
/// read), then larger.
const PIECE_SIZES: [usize; 8] = [1, 1, 2, 3, 5, 13, 64, 509];

/// `data` cut into pieces of the sizes of [`PIECE_SIZES`], in turn: what a peer sending the
/// same bytes in several writes may deliver. Deterministic, so a crash replays.
pub fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for size in PIECE_SIZES.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// A connection's reading side that delivers the given pieces, one per read (a read smaller
/// than a piece gets the piece's start, the rest at the next read), then the end of the stream.
pub struct PiecesReader<'a> {
    pieces: std::collections::VecDeque<&'a [u8]>,
}

impl<'a> PiecesReader<'a> {
    pub fn new(pieces: Vec<&'a [u8]>) -> Self {
        Self {
            pieces: pieces.into(),
        }
    }
}

impl AsyncRead for PiecesReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(piece) = self.pieces.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.pieces.push_front(&piece[n..]);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A single-threaded runtime whose clock is paused: a timer fires as soon as nothing else can
/// run, so a target that waits on a timeout (a header read timeout) costs no wall time and
/// never hangs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        // Invariant: a current-thread runtime with no custom I/O driver settings builds.
        .expect("a current-thread runtime builds")
}

/// Whether the target was asked to say what it did (`MESH_FUZZ_VERBOSE=1`), when replaying an
/// input by hand: `target/release/<target> < input`.
pub fn verbose() -> bool {
    std::env::var_os("MESH_FUZZ_VERBOSE").is_some()
}

/// Asserts that `value`, encoded as one line of a watch (`encode`: the type's `to_line`),
/// decodes back to itself. Floating-point numbers may come back within rounding: serde_json
/// parses them to the nearest value only with its `float_roundtrip` feature, which the mesh
/// does not enable (a latency or a percentage off by one unit in the last place is harmless).
pub fn assert_round_trip<T>(value: &T, encode: fn(&T) -> bytes::Bytes)
where
    T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let line = encode(value);
    let back: T = serde_json::from_slice(&line).unwrap_or_else(|e| {
        panic!(
            "{value:?} encodes to {:?}, which does not decode: {e}",
            String::from_utf8_lossy(&line)
        )
    });
    if back == *value {
        return;
    }
    let again = encode(&back);
    let (a, b) = (json(&line), json(&again));
    assert!(
        same_up_to_rounding(&a, &b),
        "{value:?} encodes to {:?}, which decodes to {back:?}",
        String::from_utf8_lossy(&line)
    );
}

fn json(line: &[u8]) -> serde_json::Value {
    // Invariant: `line` is what serde_json wrote.
    serde_json::from_slice(line).expect("serde_json reads what it wrote")
}

/// Equal JSON values, numbers within a relative 1e-12.
fn same_up_to_rounding(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
            }
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_up_to_rounding(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_up_to_rounding(v, w)))
        }
        _ => a == b,
    }
}
