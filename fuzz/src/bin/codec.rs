//! The protocol codecs, Redis and Thrift (`mesh_proxy::codec::by_name`): a connection's bytes
//! decoded as the codec framework reads them, on both sides (`Side::Client`: requests,
//! `Side::Server`: responses), the input arriving in pieces; each request matched against the
//! MetaRoutes a policy could hold, and answered locally as the mesh answers what it cannot
//! forward.
//!
//! Asserts, for each codec and side: the frames do not depend on where the bytes were cut;
//! frames are non-empty, in order, and no longer than what was read; every frame encoded
//! again decodes to the same frame, also with the sequence id a pooled upstream connection
//! gives it (Thrift) and, Thrift, a renamed method; a local reply to a request reads back, on
//! the other side, as one error frame with the request's id.
#![forbid(unsafe_code)]

use bytes::BytesMut;
use mesh_api::policy::OutboundPolicy;
use mesh_proxy::codec::{
    by_name, route::MetaTable, Codec, Frame, Kind, LocalError, Protocol, Side, MAX_FRAME,
};
use std::sync::Arc;

/// The MetaRoutes requests are matched against: exact, prefix and regular-expression matches
/// on the metadata both codecs write.
const META_ROUTES: &str = r#"{"codec":"redis","metaRoutes":[{"namespace":"demo","name":"m","rules":[
{"matches":[{"metadata":[{"key":"command","value":"GET"},{"key":"key","type":"Prefix","value":"session:"}]}]},
{"matches":[{"metadata":[{"key":"method","type":"RegularExpression","value":"get_.*"}]}]},
{"matches":[{"metadata":[{"key":"type","value":"call"}]}]}]}]}"#;

fn main() {
    let codecs: Vec<Arc<dyn Protocol>> = ["redis", "thrift"]
        .into_iter()
        .map(|name| by_name(name).expect("the proxy has this codec"))
        .collect();
    let policy: OutboundPolicy = serde_json::from_str(META_ROUTES).expect("the policy parses");
    let table = MetaTable::new(&policy.meta_routes);
    // Stateless factories and a compiled table: a panic cannot leave them half-changed.
    let (codecs, table) = (
        std::panic::AssertUnwindSafe(codecs),
        std::panic::AssertUnwindSafe(table),
    );
    afl::fuzz!(|data: &[u8]| {
        for protocol in codecs.iter() {
            for side in [Side::Client, Side::Server] {
                check(protocol.as_ref(), side, data, &table);
            }
        }
    });
}

/// What decoding a connection's bytes gave: its frames, and whether it ended in an error.
type Decoded = (Vec<Frame>, bool);

fn check(protocol: &dyn Protocol, side: Side, data: &[u8], table: &MetaTable) {
    let name = protocol.name();
    let (frames, failed) = decode(protocol.codec(side).as_mut(), mesh_fuzz::pieces(data));
    let whole = decode(protocol.codec(side).as_mut(), vec![data]);
    assert_eq!(
        (&frames, failed),
        (&whole.0, whole.1),
        "{name} {side:?}: the frames depend on where the bytes were cut"
    );
    let total: usize = frames.iter().map(|f| f.bytes.len()).sum();
    assert!(
        total <= data.len(),
        "{name} {side:?}: frames hold more than was read"
    );
    for frame in &frames {
        assert!(!frame.bytes.is_empty(), "{name} {side:?}: an empty frame");
        assert!(
            frame.bytes.len() <= MAX_FRAME + 4,
            "{name} {side:?}: over MAX_FRAME"
        );
        let _ = frame.method();
        if frame.is_request() {
            let _ = table.select(frame);
        }
    }
    if mesh_fuzz::verbose() {
        eprintln!("{name} {side:?}: {} frames, failed: {failed}", frames.len());
    }

    // Encoded again, the frames decode to themselves.
    let mut encoder = protocol.codec(side);
    let mut again = BytesMut::new();
    for frame in &frames {
        encoder
            .encode(frame, &mut again)
            .unwrap_or_else(|e| panic!("{name} {side:?}: a decoded frame does not encode: {e}"));
    }
    let (back, failed) = decode(protocol.codec(side).as_mut(), vec![&again[..]]);
    assert!(!failed, "{name} {side:?}: re-encoded frames do not decode");
    assert_eq!(back, frames, "{name} {side:?}: re-encoded frames differ");

    for frame in &frames {
        // The sequence id an upstream connection gives a request (Thrift rewrites it).
        if frame.id.is_some() {
            let moved = Frame {
                id: Some(frame.id.unwrap_or_default().wrapping_add(0x0101_0101)),
                ..frame.clone()
            };
            let back = round_trip(protocol, side, &moved);
            assert_eq!(
                back.id, moved.id,
                "{name} {side:?}: the new id is not read back"
            );
            assert_eq!(back.kind, frame.kind);
            assert_eq!(back.get("method"), frame.get("method"));
        }
        // A MetaRoute's mutation (Thrift writes a changed `method` back).
        if name == "thrift" && frame.get("method").is_some() {
            let mut renamed = frame.clone();
            renamed.metadata.set("method", "renamed_by_route");
            let back = round_trip(protocol, side, &renamed);
            assert_eq!(
                back.get("method"),
                Some("renamed_by_route"),
                "{name} {side:?}"
            );
            assert_eq!(
                (back.id, back.kind),
                (frame.id, frame.kind),
                "{name} {side:?}"
            );
        }
        if side == Side::Client && frame.kind == Kind::Request {
            local_replies(protocol, frame);
        }
    }
}

/// Decodes `pieces` as they arrive, as the framework does: every whole frame after each read,
/// until the bytes end or a frame is malformed.
fn decode(codec: &mut dyn Codec, pieces: Vec<&[u8]>) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

/// `frame` encoded, then decoded by a new codec of the same side: exactly one frame.
fn round_trip(protocol: &dyn Protocol, side: Side, frame: &Frame) -> Frame {
    let name = protocol.name();
    let mut bytes = BytesMut::new();
    protocol
        .codec(side)
        .encode(frame, &mut bytes)
        .unwrap_or_else(|e| panic!("{name} {side:?}: {frame:?} does not encode: {e}"));
    let (mut frames, failed) = decode(protocol.codec(side).as_mut(), vec![&bytes[..]]);
    assert!(
        !failed && frames.len() == 1,
        "{name} {side:?}: {frame:?} encodes to {bytes:?}, which decodes to {frames:?}"
    );
    frames.remove(0)
}

/// Every local reply to `request`, written by the client's codec, reads back on the server's
/// side (as the client reads it) as one error frame with the request's id.
fn local_replies(protocol: &dyn Protocol, request: &Frame) {
    let name = protocol.name();
    let errors = [
        LocalError::NoRoute,
        LocalError::NoEndpoints("web.demo.svc.cluster.local:6379".into()),
        LocalError::RateLimited,
        LocalError::Timeout,
        LocalError::Unavailable("connection reset\r\nby peer".into()),
        LocalError::Unauthorized,
    ];
    let mut client = protocol.codec(Side::Client);
    // The client's codec has decoded the request (a Thrift codec answers in its protocol).
    let mut buf = BytesMut::from(&request.bytes[..]);
    let _ = client.decode(&mut buf);
    for error in errors {
        let Some(reply) = client.local_reply(request, &error) else {
            continue;
        };
        let mut bytes = BytesMut::new();
        client
            .encode(&reply, &mut bytes)
            .unwrap_or_else(|e| panic!("{name}: a local reply does not encode: {e}"));
        let (frames, failed) = decode(protocol.codec(Side::Server).as_mut(), vec![&bytes[..]]);
        assert!(
            !failed && frames.len() == 1,
            "{name}: the local reply {bytes:?} to {request:?} reads as {frames:?}"
        );
        assert_eq!(frames[0].kind, Kind::Error, "{name}: {bytes:?}");
        if request.id.is_some() {
            assert_eq!(frames[0].id, request.id, "{name}: the reply's id");
        }
    }
}
