//! Apache Thrift on the framed transport, in the binary (strict and old) and compact protocols.
//!
//! A frame is a 4-byte big-endian length, then one message: its header (name, type, sequence
//! id), then its struct, which the codec carries as bytes without reading it. The header is
//! read whole and checked; the protocol is told from the first byte after the length and kept
//! for the connection (the binary protocol's strict and old headers may mix, as Thrift's own
//! readers allow).
//!
//! | wire                  | first bytes of the message                                    |
//! | --------------------- | ------------------------------------------------------------- |
//! | binary, strict        | `80 01 00 TT`, i32 name length, name, i32 seqid               |
//! | binary, old           | i32 name length (> 0), name, i8 type, i32 seqid               |
//! | compact               | `82`, `TTT00001` (type, version 1), varint seqid, varint name length, name |
//!
//! Frames carry the sequence id as their [`Frame::id`], and the metadata `method` (the whole
//! message name; `Service:method` for a multiplexed protocol), `service` (the part before the
//! `:`, when there is one) and `type` (`call`, `reply`, `exception` or `oneway`).
//!
//! ```text
//! client side:  CALL → Request   ONEWAY → OneWay
//! server side:  REPLY → Response, or Error when the result holds a declared exception
//!               EXCEPTION → Error (a TApplicationException)
//! ```
//!
//! Not read: the unframed (buffered) transport, whose strict binary and compact messages
//! open with what a framed reader takes for a negative length (the error says so), and the
//! THeader transport.

use super::{
    Codec, CodecError, Frame, Kind, LocalError, Metadata, Protocol, Session, Side, Text, MAX_FRAME,
};
use bytes::{BufMut, BytesMut};
use std::borrow::Cow;

/// The Thrift protocol: a codec per connection that learns from the connection's first frame
/// whether it speaks the binary or the compact protocol.
pub struct Thrift;

impl Protocol for Thrift {
    fn name(&self) -> &'static str {
        NAME
    }

    fn codec(&self, side: Side) -> Box<dyn Codec> {
        Box::new(ThriftCodec { side, proto: None })
    }
}

/// One connection's codec.
struct ThriftCodec {
    side: Side,
    /// The protocol of the last frame decoded (what a local reply to a frame this codec did
    /// not decode is written in).
    proto: Option<Proto>,
}

impl Codec for ThriftCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(len) = frame_len(buf)? else {
            return Ok(None);
        };
        // Bytes that cannot start a message fail now, not after up to MAX_FRAME more.
        if let Some(&lead) = buf.get(PREFIX) {
            // Each message in its own protocol: a connection between proxies carries many
            // clients' messages, binary and compact alike.
            Proto::sniff(lead).ok_or_else(|| not_thrift(&buf[PREFIX..]))?;
        }
        let end = PREFIX + len;
        if buf.len() < end {
            return Ok(None);
        }

        let msg = &buf[PREFIX..end];
        // Its protocol was checked from its first byte, above.
        let header = Header::parse(msg)?;
        let kind = self.kind(&header, &msg[header.body_at..])?;
        // The sequence id's bits, as the compact protocol's unsigned varint carries them.
        let id = Some(header.seqid as u32);
        let metadata = metadata(header.name, header.mtype);
        self.proto = Some(header.proto);
        Ok(Some(Frame {
            kind,
            id,
            metadata,
            session: Session::None,
            bytes: buf.split_to(end).freeze(),
        }))
    }

    /// Writes `frame` in the protocol its bytes are in, with its id as the sequence id and its
    /// `method` as the message name when that was changed (`service` is only read: a route
    /// that moves a call to another service renames `method`). The length is fixed when the
    /// header's length changes.
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let msg = message(&frame.bytes)?;
        let header = Header::parse(msg)?;
        let seqid = frame.id.map_or(header.seqid, |id| id as i32);
        let renamed = match frame.get("method") {
            Some(method)
                if frame.metadata.is_changed("method") && method.as_bytes() != header.name =>
            {
                if method.is_empty() {
                    return Err(malformed("method renamed to an empty name"));
                }
                Some(method.as_bytes())
            }
            _ => None,
        };

        match (renamed, header.proto) {
            (None, _) if seqid == header.seqid => dst.extend_from_slice(&frame.bytes),
            // A binary sequence id has a fixed width: patch it in place.
            (None, Proto::Binary { .. }) => {
                let at = PREFIX + header.seqid_at;
                dst.reserve(frame.bytes.len());
                dst.extend_from_slice(&frame.bytes[..at]);
                dst.put_i32(seqid);
                dst.extend_from_slice(&frame.bytes[at + 4..]);
            }
            // A new name, or a compact varint whose width may change: a new header.
            (renamed, proto) => write_message(
                dst,
                proto,
                renamed.unwrap_or(header.name),
                header.mtype,
                seqid,
                &msg[header.body_at..],
            )?,
        }
        Ok(())
    }

    /// An `EXCEPTION` message holding a `TApplicationException` (`INTERNAL_ERROR`, the message
    /// `mesh: <why>`), in the request's protocol, with the name and sequence id the client
    /// sent: the request's bytes, not an id or name the mesh set since.
    /// Binary and compact messages never share an upstream connection: a server reads each
    /// connection in one protocol.
    fn lane(&self, request: &Frame) -> u8 {
        match request.bytes.get(PREFIX).copied().and_then(Proto::sniff) {
            Some(Proto::Compact) => 1,
            _ => 0,
        }
    }

    fn local_reply(&self, request: &Frame, error: &LocalError) -> Option<Frame> {
        if request.kind != Kind::Request {
            return None;
        }
        let header = message(&request.bytes).and_then(Header::parse).ok();
        let (proto, name, seqid) = match &header {
            Some(h) if h.mtype == MessageType::Oneway => return None,
            Some(h) => (h.proto, h.name, h.seqid),
            // Not bytes this codec decoded: what the frame says, in a header any reader of
            // the connection's protocol takes.
            None => (
                match self.proto {
                    Some(Proto::Compact) => Proto::Compact,
                    _ => Proto::Binary { strict: true },
                },
                request.get("method").unwrap_or_default().as_bytes(),
                request.id.map_or(0, |id| id as i32),
            ),
        };

        let mut body = BytesMut::new();
        write_application_exception(&mut body, proto, &format!("mesh: {error}"), INTERNAL_ERROR);
        let mut bytes = BytesMut::new();
        // Only a request name within MAX_MESSAGE of MAX_FRAME makes the reply too long.
        write_message(
            &mut bytes,
            proto,
            name,
            MessageType::Exception,
            seqid,
            &body,
        )
        .ok()?;
        Some(Frame {
            kind: Kind::Error,
            id: Some(seqid as u32),
            metadata: metadata(name, MessageType::Exception),
            session: Session::None,
            bytes: bytes.freeze(),
        })
    }
}

// === impl ThriftCodec ===

impl ThriftCodec {
    /// The kind of a message read on this side, whose struct is `body`.
    fn kind(&self, header: &Header<'_>, body: &[u8]) -> Result<Kind, CodecError> {
        match (self.side, header.mtype) {
            (Side::Client, MessageType::Call) => Ok(Kind::Request),
            (Side::Client, MessageType::Oneway) => Ok(Kind::OneWay),
            (Side::Server, MessageType::Reply) if holds_exception(header.proto, body) => {
                Ok(Kind::Error)
            }
            (Side::Server, MessageType::Reply) => Ok(Kind::Response),
            (Side::Server, MessageType::Exception) => Ok(Kind::Error),
            (side, mtype) => Err(malformed(format!(
                "a message of type {} from a {}",
                mtype.as_str(),
                match side {
                    Side::Client => "client",
                    Side::Server => "server",
                }
            ))),
        }
    }
}

// === Wire format ===

const NAME: &str = "thrift";

/// The framed transport's length prefix.
const PREFIX: usize = 4;

/// A strict binary header's first two bytes (`VERSION_1`, `0x80010000`, masked).
const BINARY_VERSION: [u8; 2] = [0x80, 0x01];
const COMPACT_ID: u8 = 0x82;
const COMPACT_VERSION: u8 = 1;
const COMPACT_VERSION_MASK: u8 = 0x1f;
const COMPACT_TYPE_SHIFT: u8 = 5;
/// The THeader transport's first two bytes.
const HEADER_MAGIC: [u8; 2] = [0x0f, 0xff];

/// `TApplicationException.INTERNAL_ERROR`.
const INTERNAL_ERROR: i32 = 6;
/// The longest `TApplicationException` message a local reply carries (an upstream's error
/// text is cut there).
const MAX_MESSAGE: usize = 4096;

/// A Thrift protocol, as told from a message's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// `TBinaryProtocol`; `strict: false` is the old header without a version.
    Binary { strict: bool },
    /// `TCompactProtocol`.
    Compact,
}

impl Proto {
    /// The protocol a message starting with `lead` is in: the old binary header starts with
    /// its name's length, whose high byte is 0 in a frame of at most [`MAX_FRAME`] bytes.
    fn sniff(lead: u8) -> Option<Self> {
        match lead {
            0x80 => Some(Self::Binary { strict: true }),
            0x00 => Some(Self::Binary { strict: false }),
            COMPACT_ID => Some(Self::Compact),
            _ => None,
        }
    }
}

/// `TMessageType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageType {
    Call = 1,
    Reply = 2,
    Exception = 3,
    Oneway = 4,
}

impl MessageType {
    fn from_u8(n: u8) -> Result<Self, CodecError> {
        match n {
            1 => Ok(Self::Call),
            2 => Ok(Self::Reply),
            3 => Ok(Self::Exception),
            4 => Ok(Self::Oneway),
            n => Err(malformed(format!("unknown message type {n}"))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Reply => "reply",
            Self::Exception => "exception",
            Self::Oneway => "oneway",
        }
    }
}

/// A message's header, read from the message (the frame without its length prefix).
#[derive(Debug)]
struct Header<'a> {
    proto: Proto,
    name: &'a [u8],
    mtype: MessageType,
    seqid: i32,
    /// Where the sequence id is: 4 bytes in the binary protocol, a varint in the compact one.
    seqid_at: usize,
    /// Where the message's struct starts.
    body_at: usize,
}

impl<'a> Header<'a> {
    fn parse(msg: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader { buf: msg, pos: 0 };
        let (proto, name, mtype) = match msg.first().copied().and_then(Proto::sniff) {
            Some(proto @ Proto::Binary { strict: true }) => {
                let word = r.take(4)?;
                if word[..2] != BINARY_VERSION {
                    return Err(malformed(format!(
                        "binary protocol version 0x{:02x}{:02x} (expected 0x8001)",
                        word[0], word[1]
                    )));
                }
                let mtype = MessageType::from_u8(word[3])?;
                (proto, r.binary_name()?, mtype)
            }
            Some(proto @ Proto::Binary { strict: false }) => {
                let name = r.binary_name()?;
                if name.is_empty() {
                    return Err(malformed("old binary message with an empty name"));
                }
                (proto, name, MessageType::from_u8(r.u8()?)?)
            }
            Some(proto @ Proto::Compact) => {
                r.u8()?;
                let byte = r.u8()?;
                let version = byte & COMPACT_VERSION_MASK;
                if version != COMPACT_VERSION {
                    return Err(malformed(format!(
                        "compact protocol version {version} (expected {COMPACT_VERSION})"
                    )));
                }
                let mtype = MessageType::from_u8(byte >> COMPACT_TYPE_SHIFT)?;
                // The sequence id comes before the name in the compact protocol.
                let seqid = r.varint()? as i32;
                let len = r.varint()?;
                // An i32 to Thrift's readers.
                if len > i32::MAX as u32 {
                    return Err(negative_name(len));
                }
                let name = r.name(len as usize)?;
                return Ok(Self {
                    proto,
                    name,
                    mtype,
                    seqid,
                    seqid_at: 2,
                    body_at: r.pos,
                });
            }
            None => return Err(not_thrift(msg)),
        };
        let seqid_at = r.pos;
        let seqid = r.i32()?;
        Ok(Self {
            proto,
            name,
            mtype,
            seqid,
            seqid_at,
            body_at: r.pos,
        })
    }
}

/// Whether a `REPLY`'s result struct, `body`, holds a declared exception: its first field is
/// not the success field (id 0). A body too short to tell is a plain response (the codec does
/// not read bodies; the client will).
fn holds_exception(proto: Proto, body: &[u8]) -> bool {
    let mut r = Reader { buf: body, pos: 0 };
    let Ok(field) = r.u8() else {
        return false;
    };
    match proto {
        // i8 type (0 is the struct's end), i16 id.
        Proto::Binary { .. } => field != 0 && r.i16().is_ok_and(|id| id != 0),
        // The low nibble is the type (0 is the end), the high one the id's delta from the
        // previous field's (0 here): a delta of 0 means a zigzag varint id follows.
        Proto::Compact => match (field & 0x0f, field >> 4) {
            (0, _) => false,
            (_, 0) => r.varint().is_ok_and(|id| id != 0),
            _ => true,
        },
    }
}

/// The length the frame at the start of `buf` declares, `None` before the whole prefix.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    let [a, b, c, d, ..] = *buf else {
        return Ok(None);
    };
    match i32::from_be_bytes([a, b, c, d]) {
        0 => Err(malformed("frame of length 0")),
        len if len < 0 => Err(malformed(if [a, b] == BINARY_VERSION {
            Cow::Borrowed("an unframed binary message (the framed transport is expected)")
        } else if a == COMPACT_ID && b & COMPACT_VERSION_MASK == COMPACT_VERSION {
            Cow::Borrowed("an unframed compact message (the framed transport is expected)")
        } else {
            Cow::Owned(format!("negative frame length {len}"))
        })),
        // Positive: fits a usize.
        len if len as usize > MAX_FRAME => Err(CodecError::TooLarge {
            codec: NAME,
            len: len as usize,
            max: MAX_FRAME,
        }),
        len => Ok(Some(len as usize)),
    }
}

/// The message of a whole frame (what `decode` returned): the bytes after the prefix.
fn message(frame: &[u8]) -> Result<&[u8], CodecError> {
    let len = frame_len(frame)?.ok_or_else(|| malformed("frame shorter than its length prefix"))?;
    match frame.get(PREFIX..) {
        Some(msg) if msg.len() == len => Ok(msg),
        _ => Err(malformed(format!(
            "frame of {} bytes declares {len}",
            frame.len().saturating_sub(PREFIX)
        ))),
    }
}

/// Appends a frame holding a message with this header and `body`.
fn write_message(
    dst: &mut BytesMut,
    proto: Proto,
    name: &[u8],
    mtype: MessageType,
    seqid: i32,
    body: &[u8],
) -> Result<(), CodecError> {
    let too_large = |len| CodecError::TooLarge {
        codec: NAME,
        len,
        max: MAX_FRAME,
    };
    if name.len() > MAX_FRAME {
        return Err(too_large(name.len()));
    }
    // Below MAX_FRAME: fits a u32 and an i32.
    let name_len = name.len() as u32;
    let header = match proto {
        Proto::Binary { strict: true } => 12,
        Proto::Binary { strict: false } => 9,
        Proto::Compact => 2 + varint_len(seqid as u32) + varint_len(name_len),
    };
    let len = header + name.len() + body.len();
    if len > MAX_FRAME {
        return Err(too_large(len));
    }

    dst.reserve(PREFIX + len);
    dst.put_u32(len as u32);
    match proto {
        Proto::Binary { strict: true } => {
            dst.put_slice(&BINARY_VERSION);
            dst.put_u8(0);
            dst.put_u8(mtype as u8);
            dst.put_u32(name_len);
            dst.put_slice(name);
            dst.put_i32(seqid);
        }
        Proto::Binary { strict: false } => {
            dst.put_u32(name_len);
            dst.put_slice(name);
            dst.put_u8(mtype as u8);
            dst.put_i32(seqid);
        }
        Proto::Compact => {
            dst.put_u8(COMPACT_ID);
            dst.put_u8(COMPACT_VERSION | (mtype as u8) << COMPACT_TYPE_SHIFT);
            put_varint(dst, seqid as u32);
            put_varint(dst, name_len);
            dst.put_slice(name);
        }
    }
    dst.put_slice(body);
    Ok(())
}

/// Appends `TApplicationException { 1: string message, 2: i32 type }`, the message cut to
/// [`MAX_MESSAGE`] bytes.
fn write_application_exception(dst: &mut BytesMut, proto: Proto, message: &str, ty: i32) {
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    // At most MAX_MESSAGE.
    let len = message.len() as u32;
    match proto {
        Proto::Binary { .. } => {
            // Field headers: i8 type (11 string, 8 i32), i16 id.
            dst.put_u8(11);
            dst.put_i16(1);
            dst.put_u32(len);
            dst.put_slice(message.as_bytes());
            dst.put_u8(8);
            dst.put_i16(2);
            dst.put_i32(ty);
        }
        Proto::Compact => {
            // Field headers: id delta << 4 | type (8 binary, 5 i32).
            dst.put_u8(1 << 4 | 8);
            put_varint(dst, len);
            dst.put_slice(message.as_bytes());
            dst.put_u8(1 << 4 | 5);
            // Zigzag.
            put_varint(dst, ((ty << 1) ^ (ty >> 31)) as u32);
        }
    }
    // The struct's end.
    dst.put_u8(0);
}

fn metadata(name: &[u8], mtype: MessageType) -> Metadata {
    let method = String::from_utf8_lossy(name).into_owned();
    let service = method
        .split_once(':')
        .map(|(service, _)| service.to_owned())
        .filter(|service| !service.is_empty());
    let mut entries: Vec<(Cow<'static, str>, Text)> = Vec::with_capacity(3);
    entries.push((Cow::Borrowed("method"), method.into()));
    if let Some(service) = service {
        entries.push((Cow::Borrowed("service"), service.into()));
    }
    entries.push((Cow::Borrowed("type"), Text::from_static(mtype.as_str())));
    Metadata::decoded(entries)
}

fn put_varint(dst: &mut BytesMut, mut n: u32) {
    while n >= 0x80 {
        dst.put_u8(n as u8 | 0x80);
        n >>= 7;
    }
    dst.put_u8(n as u8);
}

fn varint_len(n: u32) -> usize {
    match n {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

fn malformed(what: impl Into<Cow<'static, str>>) -> CodecError {
    CodecError::malformed(NAME, what)
}

fn not_thrift(msg: &[u8]) -> CodecError {
    match msg {
        [a, b, ..] if [*a, *b] == HEADER_MAGIC => {
            malformed("a THeader message (the framed binary or compact protocol is expected)")
        }
        [lead, ..] => malformed(format!("no Thrift protocol starts with 0x{lead:02x}")),
        [] => malformed("empty message"),
    }
}

fn negative_name(len: u32) -> CodecError {
    malformed(format!("negative method name length {}", len as i32))
}

/// Reads a message's header fields; running out of bytes is an error.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| malformed("message header cut short"))?;
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, CodecError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, CodecError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned LEB128 varint of at most 32 bits (5 bytes).
    fn varint(&mut self) -> Result<u32, CodecError> {
        let mut n = 0u32;
        let mut shift = 0;
        loop {
            let byte = self.u8()?;
            // The fifth byte holds the top 4 bits, and ends the varint.
            if shift == 28 && byte > 0x0f {
                return Err(malformed("varint longer than 32 bits"));
            }
            n |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
            shift += 7;
        }
    }

    /// A binary protocol string: i32 length, bytes.
    fn binary_name(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.i32()?;
        let len = usize::try_from(len).map_err(|_| negative_name(len as u32))?;
        self.name(len)
    }

    fn name(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let left = self.buf.len() - self.pos;
        if len > left {
            return Err(malformed(format!(
                "method name of {len} bytes is longer than the {left} bytes left in its frame"
            )));
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    // Message types, as the wire spells them.
    const CALL: u8 = 1;
    const REPLY: u8 = 2;
    const EXCEPTION: u8 = 3;
    const ONEWAY: u8 = 4;

    // Structs, built by hand from the protocols' specifications.
    /// Binary `{ 1: i32 = 42 }`.
    const ARGS: &[u8] = &[0x08, 0x00, 0x01, 0, 0, 0, 42, 0x00];
    /// Compact `{ 1: i32 = 42 }`: field header delta 1, type 5; zigzag 42.
    const COMPACT_ARGS: &[u8] = &[0x15, 0x54, 0x00];
    /// Binary result `{ 0: i32 success = 7 }`.
    const SUCCESS: &[u8] = &[0x08, 0x00, 0x00, 0, 0, 0, 7, 0x00];
    /// Binary result `{ 1: NotFound e = { 1: string = "no" } }`.
    const DECLARED: &[u8] = &[
        0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01, 0, 0, 0, 2, b'n', b'o', 0x00, 0x00,
    ];
    /// Compact result `{ 0: i32 success = 7 }`: id 0 is no delta, so type 5 then zigzag id 0.
    const COMPACT_SUCCESS: &[u8] = &[0x05, 0x00, 0x0e, 0x00];
    /// Compact result `{ 1: NotFound e = { 1: string = "no" } }`.
    const COMPACT_DECLARED: &[u8] = &[0x1c, 0x18, 0x02, b'n', b'o', 0x00, 0x00];
    /// An empty struct: a `void` method's result.
    const VOID: &[u8] = &[0x00];

    fn framed(msg: &[u8]) -> Vec<u8> {
        [&(msg.len() as u32).to_be_bytes()[..], msg].concat()
    }

    /// A strict binary message: `80 01 00 type`, i32 name length, name, i32 seqid, body.
    fn binary(mtype: u8, name: &str, seqid: i32, body: &[u8]) -> Vec<u8> {
        framed(
            &[
                &[0x80, 0x01, 0x00, mtype][..],
                &(name.len() as u32).to_be_bytes(),
                name.as_bytes(),
                &seqid.to_be_bytes(),
                body,
            ]
            .concat(),
        )
    }

    /// An old binary message: i32 name length, name, i8 type, i32 seqid, body.
    fn old_binary(mtype: u8, name: &str, seqid: i32, body: &[u8]) -> Vec<u8> {
        framed(
            &[
                &(name.len() as u32).to_be_bytes()[..],
                name.as_bytes(),
                &[mtype],
                &seqid.to_be_bytes(),
                body,
            ]
            .concat(),
        )
    }

    /// A compact message whose seqid and name length fit one varint byte each.
    fn compact(mtype: u8, name: &str, seqid: u8, body: &[u8]) -> Vec<u8> {
        assert!(seqid < 0x80 && name.len() < 0x80);
        framed(
            &[
                &[0x82, mtype << 5 | 1, seqid, name.len() as u8][..],
                name.as_bytes(),
                body,
            ]
            .concat(),
        )
    }

    fn decode(codec: &mut dyn Codec, bytes: &[u8]) -> Frame {
        let mut buf = BytesMut::from(bytes);
        let frame = codec.decode(&mut buf).expect("decodes").expect("whole");
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        frame
    }

    fn encode(codec: &mut dyn Codec, frame: &Frame) -> Vec<u8> {
        let mut dst = BytesMut::new();
        codec.encode(frame, &mut dst).expect("encodes");
        dst.to_vec()
    }

    #[track_caller]
    fn check(side: Side, bytes: &[u8], kind: Kind, id: u32, metadata: &[(&str, &str)]) {
        let frame = decode(&mut *Thrift.codec(side), bytes);
        assert_eq!(frame.kind, kind);
        assert_eq!(frame.id, Some(id));
        assert_eq!(frame.metadata.iter().collect::<Vec<_>>(), metadata);
        assert_eq!(frame.session, Session::None);
        assert_eq!(frame.bytes, bytes);
    }

    #[track_caller]
    fn check_err(side: Side, bytes: &[u8], want: &str) {
        let mut buf = BytesMut::from(bytes);
        match Thrift.codec(side).decode(&mut buf) {
            Err(e) => assert!(e.to_string().contains(want), "{e:?} does not say {want:?}"),
            Ok(frame) => panic!("{bytes:02x?} decoded as {frame:?}, not an error: {want}"),
        }
    }

    #[test]
    fn protocol() {
        assert_eq!(Thrift.name(), "thrift");
        assert_eq!(
            super::super::by_name("thrift").map(|p| p.name()),
            Some("thrift")
        );
    }

    #[test]
    fn requests() {
        use Kind::{OneWay, Request};
        let c = Side::Client;
        let call = [("method", "add"), ("type", "call")];
        let oneway = [("method", "log"), ("type", "oneway")];
        check(c, &binary(CALL, "add", 1, ARGS), Request, 1, &call);
        check(c, &binary(ONEWAY, "log", 2, ARGS), OneWay, 2, &oneway);
        check(c, &old_binary(CALL, "add", 1, ARGS), Request, 1, &call);
        check(c, &old_binary(ONEWAY, "log", 2, ARGS), OneWay, 2, &oneway);
        check(c, &compact(CALL, "add", 1, COMPACT_ARGS), Request, 1, &call);
        check(
            c,
            &compact(ONEWAY, "log", 2, COMPACT_ARGS),
            OneWay,
            2,
            &oneway,
        );

        // TMultiplexedProtocol: the whole name is the method.
        let muxed = [
            ("method", "Calc:add"),
            ("service", "Calc"),
            ("type", "call"),
        ];
        check(c, &binary(CALL, "Calc:add", 3, ARGS), Request, 3, &muxed);
        check(c, &compact(CALL, "Calc:add", 3, ARGS), Request, 3, &muxed);
        check(
            c,
            &old_binary(CALL, "Calc:add", 3, ARGS),
            Request,
            3,
            &muxed,
        );
        let nested = [("method", "A:b:c"), ("service", "A"), ("type", "call")];
        check(c, &binary(CALL, "A:b:c", 3, ARGS), Request, 3, &nested);
        check(
            c,
            &binary(CALL, ":x", 3, ARGS),
            Request,
            3,
            &[("method", ":x"), ("type", "call")],
        );

        // Odd but valid headers.
        check(
            c,
            &binary(CALL, "", 4, ARGS),
            Request,
            4,
            &[("method", ""), ("type", "call")],
        );
        check(c, &binary(CALL, "add", 5, &[]), Request, 5, &call);
        let lossy = [("method", "a\u{fffd}"), ("type", "call")];
        let mut name = binary(CALL, "ab", 6, ARGS);
        name[13] = 0xff;
        check(c, &name, Request, 6, &lossy);

        // Sequence ids keep their bits.
        check(c, &binary(CALL, "add", -1, ARGS), Request, u32::MAX, &call);
        check(
            c,
            &binary(CALL, "add", i32::MIN, ARGS),
            Request,
            1 << 31,
            &call,
        );
        // Compact: an unsigned varint, not zigzag (300 is ac 02; -1 is five bytes).
        let mut seqid_300 = framed(&[0x82, 0x21, 0xac, 0x02, 0x03, b'a', b'd', b'd', 0x00]);
        check(c, &seqid_300, Request, 300, &call);
        let minus_one = framed(&[0x82, 0x21, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, b'f', 0x00]);
        check(
            c,
            &minus_one,
            Request,
            u32::MAX,
            &[("method", "f"), ("type", "call")],
        );
        // A longer varint than needed for the name's length is still the same length.
        seqid_300.splice(8..9, [0x83, 0x00]);
        seqid_300[3] += 1;
        check(c, &seqid_300, Request, 300, &call);
    }

    #[test]
    fn responses() {
        use Kind::{Error, Response};
        let s = Side::Server;
        let reply = [("method", "add"), ("type", "reply")];
        let exception = [("method", "add"), ("type", "exception")];
        check(s, &binary(REPLY, "add", 1, SUCCESS), Response, 1, &reply);
        check(s, &binary(REPLY, "add", 1, VOID), Response, 1, &reply);
        check(s, &binary(REPLY, "add", 1, DECLARED), Error, 1, &reply);
        check(s, &binary(EXCEPTION, "add", 1, VOID), Error, 1, &exception);
        check(
            s,
            &old_binary(REPLY, "add", 1, SUCCESS),
            Response,
            1,
            &reply,
        );
        check(s, &old_binary(REPLY, "add", 1, DECLARED), Error, 1, &reply);
        check(
            s,
            &old_binary(EXCEPTION, "add", 1, VOID),
            Error,
            1,
            &exception,
        );
        check(
            s,
            &compact(REPLY, "add", 1, COMPACT_SUCCESS),
            Response,
            1,
            &reply,
        );
        check(s, &compact(REPLY, "add", 1, VOID), Response, 1, &reply);
        check(
            s,
            &compact(REPLY, "add", 1, COMPACT_DECLARED),
            Error,
            1,
            &reply,
        );
        check(s, &compact(EXCEPTION, "add", 1, VOID), Error, 1, &exception);
        // Compact: an exception of id 16 is too far for a delta: type, then zigzag 16.
        let far = [0x0c, 0x20, 0x00, 0x00];
        check(s, &compact(REPLY, "add", 1, &far), Error, 1, &reply);
        // Too little of the result struct to tell: a response, for the client to read.
        check(s, &binary(REPLY, "add", 1, &[]), Response, 1, &reply);
        check(
            s,
            &binary(REPLY, "add", 1, &[0x0c, 0x00]),
            Response,
            1,
            &reply,
        );
        check(s, &compact(REPLY, "add", 1, &[0x0c]), Response, 1, &reply);
        check(
            s,
            &compact(REPLY, "add", 1, &[0x0c, 0x80]),
            Response,
            1,
            &reply,
        );
        let muxed = [
            ("method", "Calc:add"),
            ("service", "Calc"),
            ("type", "reply"),
        ];
        check(s, &binary(REPLY, "Calc:add", 9, VOID), Response, 9, &muxed);
    }

    #[test]
    fn malformed_frames() {
        let c = Side::Client;
        check_err(c, &[0, 0, 0, 0], "frame of length 0");
        check_err(c, &[0, 0, 0, 0, 0x80], "frame of length 0");
        check_err(c, &[0xff, 0xff, 0xff, 0xff], "negative frame length -1");
        let unframed = &binary(CALL, "add", 1, ARGS)[4..];
        check_err(c, unframed, "unframed binary message");
        check_err(
            c,
            &compact(CALL, "add", 1, ARGS)[4..],
            "unframed compact message",
        );

        // Not a protocol's first byte: refused before the rest of the frame comes.
        check_err(
            c,
            &[0, 0, 0, 100, b'G'],
            "no Thrift protocol starts with 0x47",
        );
        check_err(c, &framed(&[0x0f, 0xff, 0, 0]), "THeader");
        check_err(c, &framed(&[0x0f, 0x00, 0, 0]), "starts with 0x0f");

        // Strict binary.
        let mut version = binary(CALL, "add", 1, ARGS);
        version[5] = 0x02;
        check_err(c, &version, "binary protocol version 0x8002");
        check_err(c, &binary(0, "add", 1, ARGS), "unknown message type 0");
        check_err(c, &binary(5, "add", 1, ARGS), "unknown message type 5");
        let mut long_name = binary(CALL, "add", 1, &[]);
        long_name[11] = 8;
        check_err(
            c,
            &long_name,
            "method name of 8 bytes is longer than the 7 bytes left",
        );
        long_name[8] = 0x80;
        check_err(c, &long_name, "negative method name length");
        check_err(
            c,
            &framed(&[0x80, 0x01, 0x00, 0x01, 0, 0, 0, 1, b'a', 0, 0]),
            "cut short",
        );
        check_err(c, &framed(&[0x80, 0x01, 0x00]), "cut short");
        check_err(c, &framed(&[0x80]), "cut short");

        // Old binary.
        check_err(c, &framed(&[0, 0, 0, 0, 1, 0, 0, 0, 1]), "empty name");
        check_err(
            c,
            &framed(&[0, 0, 0, 9, b'a']),
            "9 bytes is longer than the 1 bytes",
        );
        check_err(c, &framed(&[0, 0, 0, 1, b'a']), "cut short");
        check_err(c, &old_binary(7, "add", 1, ARGS), "unknown message type 7");

        // Compact.
        let mut version = compact(CALL, "add", 1, ARGS);
        version[5] = 0x22;
        check_err(c, &version, "compact protocol version 2");
        check_err(c, &compact(0, "add", 1, ARGS), "unknown message type 0");
        check_err(c, &compact(7, "add", 1, ARGS), "unknown message type 7");
        let mut long_name = compact(CALL, "add", 1, &[]);
        long_name[7] = 4;
        check_err(
            c,
            &long_name,
            "method name of 4 bytes is longer than the 3 bytes left",
        );
        let negative = framed(&[0x82, 0x21, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        check_err(c, &negative, "negative method name length -1");
        let wide = framed(&[0x82, 0x21, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x00]);
        check_err(c, &wide, "varint longer than 32 bits");
        check_err(c, &framed(&[0x82, 0x21, 0x80, 0x80]), "cut short");

        // A message the other side sends.
        check_err(
            c,
            &binary(REPLY, "add", 1, VOID),
            "type reply from a client",
        );
        check_err(
            c,
            &compact(EXCEPTION, "add", 1, VOID),
            "type exception from a client",
        );
        let s = Side::Server;
        check_err(s, &binary(CALL, "add", 1, ARGS), "type call from a server");
        check_err(
            s,
            &old_binary(ONEWAY, "add", 1, ARGS),
            "type oneway from a server",
        );
    }

    #[test]
    fn too_large() {
        let over = (MAX_FRAME as u32 + 1).to_be_bytes();
        let mut buf = BytesMut::from(&over[..]);
        match Thrift.codec(Side::Client).decode(&mut buf) {
            Err(CodecError::TooLarge { codec, len, max }) => {
                assert_eq!((codec, len, max), ("thrift", MAX_FRAME + 1, MAX_FRAME));
            }
            other => panic!("{other:?}"),
        }
        // Text protocols read as a length are far over the limit, too.
        let mut http = BytesMut::from(&b"POST / HTTP/1.1\r\n"[..]);
        let err = Thrift.codec(Side::Client).decode(&mut http).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err:?}");

        // MAX_FRAME itself is allowed: waits for the rest.
        let mut most = BytesMut::from(&(MAX_FRAME as u32).to_be_bytes()[..]);
        most.extend_from_slice(&[0x80, 0x01, 0x00, 0x01]);
        assert!(Thrift
            .codec(Side::Client)
            .decode(&mut most)
            .unwrap()
            .is_none());
        assert_eq!(most.len(), 8);
    }

    #[test]
    fn partial_frames_wait_at_every_split_point() {
        let frames = [
            (Side::Client, binary(CALL, "Calc:add", 0x0102_0304, ARGS)),
            (Side::Client, old_binary(ONEWAY, "log", 7, ARGS)),
            (Side::Client, compact(CALL, "add", 9, COMPACT_ARGS)),
            (Side::Server, binary(REPLY, "add", 5, DECLARED)),
            (Side::Server, compact(REPLY, "add", 5, COMPACT_SUCCESS)),
        ];
        for (side, bytes) in frames {
            for split in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..split]);
                let got = Thrift.codec(side).decode(&mut buf).expect("a valid prefix");
                assert!(got.is_none(), "{split} of {} bytes", bytes.len());
                assert_eq!(buf, bytes[..split], "nothing is consumed");
            }
            // One codec, one byte at a time.
            let mut codec = Thrift.codec(side);
            let mut buf = BytesMut::new();
            for (i, byte) in bytes.iter().enumerate() {
                buf.extend_from_slice(&[*byte]);
                match codec.decode(&mut buf).expect("a valid prefix") {
                    None => assert!(i + 1 < bytes.len()),
                    Some(frame) => {
                        assert_eq!(i + 1, bytes.len());
                        assert_eq!(frame.bytes, bytes);
                    }
                }
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn pipelined_frames() {
        let frames = [
            binary(CALL, "add", 1, ARGS),
            binary(ONEWAY, "log", 2, ARGS),
            old_binary(CALL, "Calc:sub", 3, ARGS),
            binary(CALL, "mul", 4, &[]),
        ];
        let all = frames.concat();
        let mut codec = Thrift.codec(Side::Client);
        let mut buf = BytesMut::from(&all[..all.len() - 2]);
        for (frame, id) in frames.iter().take(3).zip(1..) {
            let got = codec.decode(&mut buf).unwrap().expect("a whole frame");
            assert_eq!((got.bytes.as_ref(), got.id), (&frame[..], Some(id)));
        }
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf, frames[3][..frames[3].len() - 2]);
        buf.extend_from_slice(&all[all.len() - 2..]);
        let last = codec.decode(&mut buf).unwrap().expect("the last frame");
        assert_eq!((last.get("method"), last.id), (Some("mul"), Some(4)));
        assert!(buf.is_empty());
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn each_message_is_read_in_its_own_protocol() {
        // A connection between proxies carries many clients' calls, in either protocol.
        let mut codec = Thrift.codec(Side::Client);
        decode(&mut *codec, &binary(CALL, "add", 1, ARGS));
        decode(&mut *codec, &old_binary(CALL, "add", 2, ARGS));
        decode(&mut *codec, &compact(CALL, "add", 3, COMPACT_ARGS));
        decode(&mut *codec, &binary(CALL, "add", 4, ARGS));
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 0x42, 1, 2, 3, 4][..]);
        assert!(
            codec.decode(&mut buf).is_err(),
            "no protocol starts with 0x42"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x7468_7269_6674);
        let seeds = [
            binary(CALL, "Calc:add", 1, ARGS),
            binary(REPLY, "add", -7, DECLARED),
            old_binary(ONEWAY, "log", 2, ARGS),
            compact(CALL, "add", 3, COMPACT_ARGS),
            compact(REPLY, "add", 3, COMPACT_DECLARED),
            [binary(CALL, "a", 1, &[]), binary(CALL, "b", 2, ARGS)].concat(),
        ];
        let mut decoded = 0;
        for _ in 0..20_000 {
            let bytes: Vec<u8> = if rng.u8(..4) == 0 {
                let len = rng.usize(..48);
                std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
            } else {
                let mut bytes = seeds[rng.usize(..seeds.len())].clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..bytes.len());
                    match rng.u8(..4) {
                        0 => bytes.truncate(at),
                        1 => bytes.insert(at, rng.u8(..)),
                        _ => bytes[at] = rng.u8(..),
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                bytes
            };
            for side in [Side::Client, Side::Server] {
                let mut codec = Thrift.codec(side);
                let mut buf = BytesMut::from(&bytes[..]);
                while let Ok(Some(frame)) = codec.decode(&mut buf) {
                    decoded += 1;
                    // What decodes encodes, changed or not, and reads back the same.
                    let mut changed = frame.clone();
                    changed.id = Some(rng.u32(..));
                    if rng.bool() {
                        changed.metadata.set("method", "Svc:renamed");
                    }
                    for frame in [&frame, &changed] {
                        let bytes = encode(&mut *codec, frame);
                        let again = decode(&mut *Thrift.codec(side), &bytes);
                        assert_eq!(again.id, frame.id);
                        assert_eq!(again.get("method"), frame.get("method"));
                        assert_eq!(again.kind, frame.kind);
                    }
                    let _ = codec.local_reply(&frame, &LocalError::Timeout);
                }
            }
        }
        assert!(decoded > 1_000, "the mutations left {decoded} frames whole");
    }

    /// Decodes `bytes`, sets the frame's id to `id`, encodes it: the frame the codec reads back.
    fn with_id(side: Side, bytes: &[u8], id: u32) -> Frame {
        let mut codec = Thrift.codec(side);
        let mut frame = decode(&mut *codec, bytes);
        frame.id = Some(id);
        decode(&mut *Thrift.codec(side), &encode(&mut *codec, &frame))
    }

    #[test]
    fn sequence_ids_are_rewritten() {
        let frames = [
            (Side::Client, binary(CALL, "Calc:add", 1, ARGS), ARGS),
            (Side::Client, old_binary(ONEWAY, "log", 1, ARGS), ARGS),
            (Side::Server, binary(REPLY, "add", 1, DECLARED), DECLARED),
            (
                Side::Client,
                compact(CALL, "Calc:add", 1, COMPACT_ARGS),
                COMPACT_ARGS,
            ),
            (Side::Server, compact(EXCEPTION, "add", 1, VOID), VOID),
        ];
        for (side, bytes, body) in frames {
            let before = decode(&mut *Thrift.codec(side), &bytes);
            // Compact varints of 1, 2 and 5 bytes; back to 1.
            for id in [300, u32::MAX, 0x8000_0000, 0, 1, 127] {
                let after = with_id(side, &bytes, id);
                assert_eq!(after.id, Some(id));
                assert_eq!(after.metadata, before.metadata);
                assert_eq!(after.kind, before.kind);
                assert!(after.bytes.ends_with(body), "{:02x?}", after.bytes);
                if before.bytes[4] != COMPACT_ID {
                    assert_eq!(after.bytes.len(), bytes.len(), "patched in place");
                }
            }
        }
        // Byte for byte: the seqid's bytes, and in compact the length prefix.
        let after = with_id(Side::Client, &binary(CALL, "add", 1, ARGS), 0x0a0b_0c0d);
        assert_eq!(after.bytes, binary(CALL, "add", 0x0a0b_0c0d, ARGS));
        let after = with_id(Side::Client, &compact(CALL, "add", 1, COMPACT_ARGS), 300);
        let want = framed(&[&[0x82, 0x21, 0xac, 0x02, 0x03][..], b"add", COMPACT_ARGS].concat());
        assert_eq!(after.bytes, want);
    }

    #[test]
    fn unchanged_frames_are_copied() {
        let bytes = [
            binary(CALL, "add", 1, ARGS),
            // A non-minimal varint stays as it came.
            framed(&[0x82, 0x21, 0x81, 0x00, 0x01, b'f', 0x00]),
        ];
        for bytes in bytes {
            let mut codec = Thrift.codec(Side::Client);
            let mut frame = decode(&mut *codec, &bytes);
            assert_eq!(encode(&mut *codec, &frame), bytes);
            // The same id, and the same name, are no change.
            frame.id = Some(1);
            frame
                .metadata
                .set("method", frame.get("method").unwrap().to_owned());
            frame.metadata.set("service", "Other");
            let mut dst = BytesMut::from(&b"before"[..]);
            codec.encode(&frame, &mut dst).unwrap();
            assert_eq!(dst, [&b"before"[..], &bytes].concat());
        }
        // No id: the bytes' own.
        let mut frame = decode(
            &mut *Thrift.codec(Side::Client),
            &binary(CALL, "a", 9, ARGS),
        );
        frame.id = None;
        assert_eq!(
            encode(&mut *Thrift.codec(Side::Client), &frame),
            frame.bytes
        );
    }

    #[test]
    fn methods_are_renamed() {
        let frames = [
            (
                binary(CALL, "add", 1, ARGS),
                binary(CALL, "Calc:plus", 1, ARGS),
            ),
            (
                old_binary(CALL, "add", 1, ARGS),
                old_binary(CALL, "Calc:plus", 1, ARGS),
            ),
            (
                compact(CALL, "add", 1, ARGS),
                compact(CALL, "Calc:plus", 1, ARGS),
            ),
            (
                binary(CALL, "Calc:plus", 1, ARGS),
                binary(CALL, "add", 1, ARGS),
            ),
            (
                compact(ONEWAY, "Calc:plus", 1, ARGS),
                compact(ONEWAY, "add", 1, ARGS),
            ),
        ];
        for (bytes, want) in frames {
            let mut codec = Thrift.codec(Side::Client);
            let mut frame = decode(&mut *codec, &bytes);
            let method = decode(&mut *Thrift.codec(Side::Client), &want);
            frame
                .metadata
                .set("method", method.get("method").unwrap().to_owned());
            assert_eq!(encode(&mut *codec, &frame), want);
        }

        // With a new id: compact's header is rebuilt once for both.
        let mut codec = Thrift.codec(Side::Client);
        let mut frame = decode(&mut *codec, &compact(CALL, "add", 1, COMPACT_ARGS));
        frame.metadata.set("method", "V2:add");
        frame.id = Some(300);
        let renamed = decode(
            &mut *Thrift.codec(Side::Client),
            &encode(&mut *codec, &frame),
        );
        let metadata = [("method", "V2:add"), ("service", "V2"), ("type", "call")];
        assert_eq!(renamed.metadata.iter().collect::<Vec<_>>(), metadata);
        assert_eq!(renamed.id, Some(300));
        assert!(renamed.bytes.ends_with(COMPACT_ARGS));

        // An empty name is no method.
        frame.metadata.set("method", "");
        let err = codec.encode(&frame, &mut BytesMut::new()).unwrap_err();
        assert!(err.to_string().contains("empty name"), "{err}");
    }

    #[test]
    fn encode_refuses_what_is_not_a_frame() {
        let mut codec = Thrift.codec(Side::Client);
        let mut frame = decode(&mut *codec, &binary(CALL, "add", 1, ARGS));
        for bytes in [
            &b""[..],
            &[0, 0, 0, 5, 0x80],
            &[0, 0, 0, 1, 0x80, 0x01],
            b"GET /",
        ] {
            frame.bytes = Bytes::copy_from_slice(bytes);
            let mut dst = BytesMut::new();
            assert!(codec.encode(&frame, &mut dst).is_err(), "{bytes:02x?}");
        }
    }

    const NO_ENDPOINTS: &[u8] = b"mesh: no endpoints for users.default.svc.cluster.local:9090";

    fn no_endpoints() -> LocalError {
        LocalError::NoEndpoints(Arc::from("users.default.svc.cluster.local:9090"))
    }

    fn local_reply(bytes: &[u8], error: &LocalError) -> Option<Frame> {
        let mut codec = Thrift.codec(Side::Client);
        let request = decode(&mut *codec, bytes);
        codec.local_reply(&request, error)
    }

    #[test]
    fn local_reply_binary() {
        let reply = local_reply(&binary(CALL, "getUser", 42, ARGS), &no_endpoints()).unwrap();
        let msg = [
            // EXCEPTION, "getUser", seqid 42.
            &[0x80, 0x01, 0x00, 0x03][..],
            &[0, 0, 0, 7],
            b"getUser",
            &[0, 0, 0, 42],
            // 1: string message.
            &[0x0b, 0x00, 0x01],
            &(NO_ENDPOINTS.len() as u32).to_be_bytes(),
            NO_ENDPOINTS,
            // 2: i32 type = INTERNAL_ERROR.
            &[0x08, 0x00, 0x02, 0, 0, 0, 6],
            // Stop.
            &[0x00],
        ]
        .concat();
        assert_eq!(reply.bytes, framed(&msg));
        assert_eq!(reply.kind, Kind::Error);
        assert_eq!(reply.id, Some(42));
        assert_eq!(reply.session, Session::None);
        let metadata = [("method", "getUser"), ("type", "exception")];
        assert_eq!(reply.metadata.iter().collect::<Vec<_>>(), metadata);

        // The old header is answered in kind.
        let reply = local_reply(&old_binary(CALL, "getUser", 42, ARGS), &no_endpoints());
        let old = [
            &[0, 0, 0, 7][..],
            b"getUser",
            &[0x03, 0, 0, 0, 42],
            &msg[19..],
        ]
        .concat();
        assert_eq!(reply.unwrap().bytes, framed(&old));
    }

    #[test]
    fn local_reply_compact() {
        let request = compact(CALL, "getUser", 42, COMPACT_ARGS);
        let reply = local_reply(&request, &no_endpoints()).unwrap();
        let msg = [
            // Protocol id, EXCEPTION << 5 | version 1, varint seqid, varint name length.
            &[0x82, 0x61, 42, 7][..],
            b"getUser",
            // 1: string message (delta 1, type 8), varint length.
            &[0x18, NO_ENDPOINTS.len() as u8],
            NO_ENDPOINTS,
            // 2: i32 type (delta 1, type 5) = zigzag 6; stop.
            &[0x15, 0x0c, 0x00],
        ]
        .concat();
        assert_eq!(reply.bytes, framed(&msg));
        assert_eq!((reply.kind, reply.id), (Kind::Error, Some(42)));

        // A five-byte seqid, a multiplexed name.
        let request = framed(&[
            0x82, 0x21, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x03, b'S', b':', b'm',
        ]);
        let reply = local_reply(&request, &LocalError::Timeout).unwrap();
        let msg = [
            &[
                0x82, 0x61, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x03, b'S', b':', b'm',
            ][..],
            &[0x18, 15],
            b"mesh: timed out",
            &[0x15, 0x0c, 0x00],
        ]
        .concat();
        assert_eq!(reply.bytes, framed(&msg));
        assert_eq!(reply.get("service"), Some("S"));
        assert_eq!(reply.id, Some(u32::MAX));
    }

    #[test]
    fn local_reply_reads_back_as_an_exception() {
        let errors = [
            LocalError::NoRoute,
            no_endpoints(),
            LocalError::RateLimited,
            LocalError::Timeout,
            LocalError::Unavailable("connection refused".into()),
            LocalError::Unauthorized,
        ];
        for request in [
            binary(CALL, "Calc:add", 7, ARGS),
            compact(CALL, "add", 7, ARGS),
        ] {
            for error in &errors {
                let reply = local_reply(&request, error).unwrap();
                let read = decode(&mut *Thrift.codec(Side::Server), &reply.bytes);
                assert_eq!(read, reply);
                let text = format!("mesh: {error}");
                let body = reply
                    .bytes
                    .windows(text.len())
                    .any(|w| w == text.as_bytes());
                assert!(body, "{text:?} in {:02x?}", reply.bytes);
            }
        }
    }

    #[test]
    fn local_reply_cuts_long_messages() {
        // "mesh: upstream unavailable: x" is 29 bytes: byte 4096 is inside an "é".
        let error = LocalError::Unavailable(format!("x{}", "é".repeat(MAX_MESSAGE)));
        let reply = local_reply(&binary(CALL, "a", 1, ARGS), &error).unwrap();
        // Prefix, header of "a", field header, then the message's length and bytes.
        let at = 4 + 13 + 3;
        let len = u32::from_be_bytes(reply.bytes[at..at + 4].try_into().unwrap()) as usize;
        let message = std::str::from_utf8(&reply.bytes[at + 4..at + 4 + len]).unwrap();
        assert!(message.starts_with("mesh: upstream unavailable: xéé"));
        assert_eq!(len, MAX_MESSAGE - 1, "cut at a character's start");
        assert!(reply.bytes.ends_with(&[0x08, 0x00, 0x02, 0, 0, 0, 6, 0x00]));
    }

    #[test]
    fn local_reply_answers_only_requests() {
        let error = LocalError::Timeout;
        assert_eq!(local_reply(&binary(ONEWAY, "log", 1, ARGS), &error), None);
        assert_eq!(local_reply(&compact(ONEWAY, "log", 1, ARGS), &error), None);
        let codec = Thrift.codec(Side::Server);
        let response = decode(
            &mut *Thrift.codec(Side::Server),
            &binary(REPLY, "a", 1, VOID),
        );
        assert_eq!(codec.local_reply(&response, &error), None);
    }

    #[test]
    fn local_reply_to_a_frame_of_no_thrift_bytes() {
        // A request the codec did not decode: its metadata and id, in the connection's protocol.
        let request = Frame {
            kind: Kind::Request,
            id: Some(5),
            metadata: Metadata::decoded(vec![("method".into(), Text::from("ping"))]),
            session: Session::None,
            bytes: Bytes::new(),
        };
        let mut codec = Thrift.codec(Side::Client);
        let reply = codec.local_reply(&request, &LocalError::Timeout).unwrap();
        assert_eq!(reply.bytes[4..20], binary(EXCEPTION, "ping", 5, &[])[4..20]);
        decode(&mut *codec, &compact(CALL, "add", 1, COMPACT_ARGS));
        let reply = codec.local_reply(&request, &LocalError::Timeout).unwrap();
        assert_eq!(reply.bytes[4..11], [0x82, 0x61, 5, 4, b'p', b'i', b'n']);
    }
}
