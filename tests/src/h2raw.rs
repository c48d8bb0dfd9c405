//! A raw HTTP/2 client for the attack tests: writes frames byte for byte (including ones a
//! well-behaved client never sends) and reads what the peer answers.
//!
//! Frames are appended to a buffer, so an attack can batch thousands of them into one write;
//! [`Conn`] sends such buffers and, once [`Conn::start_reading`] is called, reads the peer's
//! frames on a thread of its own into a [`Seen`] (frame counts, the peer's SETTINGS, resets by
//! error code, the GOAWAY and how the connection ended).
//!
//! ```no_run
//! use mesh_tests::h2raw::{self, Conn};
//! # fn demo(addr: std::net::SocketAddr) -> std::io::Result<()> {
//! let mut conn = Conn::connect(addr, &[])?;
//! conn.handshake(std::time::Duration::from_secs(5))?;
//! let mut buf = Vec::new();
//! h2raw::headers(&mut buf, 1, &h2raw::request_block("GET", "/", "web"), true, true);
//! conn.send(&buf)?;
//! # Ok(()) }
//! ```
//!
//! The header blocks are HPACK literal fields without indexing and with literal names: the
//! simplest encoding a server must accept, and one that never touches its dynamic table.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// SETTINGS parameters.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Error codes.
pub const NO_ERROR: u32 = 0x0;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The largest frame payload every peer accepts (the initial SETTINGS_MAX_FRAME_SIZE).
pub const DEFAULT_MAX_FRAME: usize = 16_384;

/// Appends a frame: the 9-byte head (length, type, flags, stream id) and `payload`.
pub fn frame(buf: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("a frame payload fits 24 bits");
    assert!(len < 1 << 24, "a frame payload fits 24 bits");
    buf.extend_from_slice(&len.to_be_bytes()[1..]);
    buf.push(kind);
    buf.push(flags);
    buf.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    buf.extend_from_slice(payload);
}

/// Appends a SETTINGS frame with `params`.
pub fn settings(buf: &mut Vec<u8>, params: &[(u16, u32)]) {
    let mut payload = Vec::with_capacity(params.len() * 6);
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(buf, SETTINGS, 0, 0, &payload);
}

/// Appends a SETTINGS acknowledgement.
pub fn settings_ack(buf: &mut Vec<u8>) {
    frame(buf, SETTINGS, ACK, 0, &[]);
}

/// Appends a HEADERS frame on `stream` carrying (part of) the header block `block`.
pub fn headers(buf: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, end_headers: bool) {
    let flags =
        (if end_stream { END_STREAM } else { 0 }) | (if end_headers { END_HEADERS } else { 0 });
    frame(buf, HEADERS, flags, stream, block);
}

/// Appends a CONTINUATION frame on `stream`.
pub fn continuation(buf: &mut Vec<u8>, stream: u32, block: &[u8], end_headers: bool) {
    frame(
        buf,
        CONTINUATION,
        if end_headers { END_HEADERS } else { 0 },
        stream,
        block,
    );
}

/// Appends an RST_STREAM frame.
pub fn rst_stream(buf: &mut Vec<u8>, stream: u32, code: u32) {
    frame(buf, RST_STREAM, 0, stream, &code.to_be_bytes());
}

/// Appends a PING (not an acknowledgement) with `opaque` data.
pub fn ping(buf: &mut Vec<u8>, opaque: [u8; 8]) {
    frame(buf, PING, 0, 0, &opaque);
}

/// Appends a WINDOW_UPDATE on `stream` (0: the connection).
pub fn window_update(buf: &mut Vec<u8>, stream: u32, increment: u32) {
    frame(
        buf,
        WINDOW_UPDATE,
        0,
        stream,
        &(increment & 0x7fff_ffff).to_be_bytes(),
    );
}

/// Appends a DATA frame.
pub fn data(buf: &mut Vec<u8>, stream: u32, bytes: &[u8], end_stream: bool) {
    frame(
        buf,
        DATA,
        if end_stream { END_STREAM } else { 0 },
        stream,
        bytes,
    );
}

/// Appends an HPACK integer with an `n`-bit prefix whose high bits are `flags` (RFC 7541 §5.1).
pub fn hpack_integer(block: &mut Vec<u8>, flags: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        block.push(flags | value as u8);
        return;
    }
    block.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        block.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    block.push(value as u8);
}

/// Appends a literal header field without indexing, with a literal name (RFC 7541 §6.2.2):
/// neither side's dynamic table changes. Strings are not Huffman-coded.
pub fn hpack_literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    hpack_integer(block, 0x00, 7, name.len());
    block.extend_from_slice(name);
    hpack_integer(block, 0x00, 7, value.len());
    block.extend_from_slice(value);
}

/// The header block of a request: `:method`, `:scheme http`, `:path` and `:authority`.
pub fn request_block(method: &str, path: &str, authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    hpack_literal(&mut block, b":method", method.as_bytes());
    hpack_literal(&mut block, b":scheme", b"http");
    hpack_literal(&mut block, b":path", path.as_bytes());
    hpack_literal(&mut block, b":authority", authority.as_bytes());
    block
}

/// The name of an HTTP/2 error code (RFC 9113 §7), or its number.
pub fn reason(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("error {code:#x}"), |name| name.to_string())
}

/// One frame read from the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// A GOAWAY the peer sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoAway {
    pub last_stream: u32,
    pub code: u32,
    /// The debug data, lossily as text.
    pub debug: String,
}

impl std::fmt::Display for GoAway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GOAWAY {}", reason(self.code))?;
        if !self.debug.is_empty() {
            write!(f, " ({})", self.debug)?;
        }
        Ok(())
    }
}

impl Frame {
    /// The GOAWAY this frame is, if it is a well-formed one.
    pub fn goaway(&self) -> Option<GoAway> {
        if self.kind != GOAWAY || self.payload.len() < 8 {
            return None;
        }
        let word = |at: usize| u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap());
        Some(GoAway {
            last_stream: word(0) & 0x7fff_ffff,
            code: word(4),
            debug: String::from_utf8_lossy(&self.payload[8..]).into_owned(),
        })
    }

    /// The SETTINGS parameters of this frame (none for another kind).
    pub fn settings(&self) -> Vec<(u16, u32)> {
        if self.kind != SETTINGS {
            return Vec::new();
        }
        self.payload
            .chunks_exact(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
            .collect()
    }

    /// The error code of an RST_STREAM.
    pub fn rst_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4)
            .then(|| u32::from_be_bytes(self.payload[..4].try_into().unwrap()))
    }
}

/// Reads one frame; `None` when the peer closed the connection cleanly before a frame began.
/// Frames larger than 16 MiB are refused (the length field allows that much at most).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }))
}

/// How a connection ended, as far as the client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed it (a clean end of stream).
    Closed,
    /// Reading failed, e.g. a reset.
    Error(io::ErrorKind),
}

/// What the reader saw of the peer.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Frames read, by type.
    pub frames: BTreeMap<u8, u64>,
    /// The parameters of the peer's first SETTINGS frame (not an acknowledgement).
    pub settings: Option<Vec<(u16, u32)>>,
    /// RST_STREAM frames by error code.
    pub resets: BTreeMap<u32, u64>,
    /// HEADERS frames on streams: responses.
    pub responses: u64,
    /// DATA payload bytes read.
    pub data_bytes: u64,
    /// The first GOAWAY, and when it came (from [`Conn::connect`]).
    pub goaway: Option<(GoAway, Duration)>,
    /// How reading ended; `None` while the connection is open.
    pub end: Option<End>,
}

impl Seen {
    /// How many frames of `kind` were read.
    pub fn count(&self, kind: u8) -> u64 {
        self.frames.get(&kind).copied().unwrap_or(0)
    }

    /// A SETTINGS parameter of the peer's first SETTINGS frame.
    pub fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .as_ref()?
            .iter()
            .rev()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| *v)
    }

    /// How the connection ended, in a few words: `GOAWAY ENHANCE_YOUR_CALM (too_many_resets)`,
    /// `closed without GOAWAY`, `reset (ConnectionReset)`, or `still open`.
    pub fn outcome(&self) -> String {
        match (&self.goaway, &self.end) {
            (Some((goaway, _)), _) => goaway.to_string(),
            (None, Some(End::Closed)) => "closed without GOAWAY".to_string(),
            (None, Some(End::Error(kind))) => format!("reset ({kind:?})"),
            (None, None) => "still open".to_string(),
        }
    }
}

/// A raw HTTP/2 connection: the client's preface and SETTINGS are sent on connect; frames are
/// read back on a thread of its own once [`Conn::start_reading`] (or [`Conn::handshake`]) is
/// called (an attack that must not read, e.g. not read the ACKs of a SETTINGS flood, starts it
/// later or never).
///
/// Dropping it shuts the socket down and joins the reader.
pub struct Conn {
    stream: TcpStream,
    started: Instant,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
    /// Bytes written so far.
    pub sent: u64,
}

impl Conn {
    /// How long a write may block before [`Conn::send`] fails with `TimedOut`/`WouldBlock`: a
    /// peer that stopped reading.
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

    /// Connects to `addr` (from the calling thread's network namespace), sends the preface and a
    /// SETTINGS frame with `settings`.
    pub fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, crate::TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Self::WRITE_TIMEOUT))?;
        let mut conn = Conn {
            stream,
            started: Instant::now(),
            seen: Arc::default(),
            reader: None,
            sent: 0,
        };
        let mut buf = PREFACE.to_vec();
        self::settings(&mut buf, settings);
        conn.send(&buf)?;
        Ok(conn)
    }

    /// Starts reading the peer's frames on a thread, counting them in [`Conn::seen`]. The
    /// reader never writes (a write of its own could land between a HEADERS and its
    /// CONTINUATION, or inside a frame): [`Conn::handshake`] acknowledges the peer's SETTINGS.
    pub fn start_reading(&mut self) -> io::Result<()> {
        if self.reader.is_some() {
            return Ok(());
        }
        let mut read = self.stream.try_clone()?;
        let seen = self.seen.clone();
        let started = self.started;
        self.reader = Some(std::thread::spawn(move || loop {
            let frame = match read_frame(&mut read) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    seen.lock().unwrap().end = Some(End::Closed);
                    return;
                }
                Err(err) => {
                    seen.lock().unwrap().end = Some(End::Error(err.kind()));
                    return;
                }
            };
            let mut seen = seen.lock().unwrap();
            *seen.frames.entry(frame.kind).or_insert(0) += 1;
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 && seen.settings.is_none() => {
                    seen.settings = Some(frame.settings());
                }
                RST_STREAM => {
                    if let Some(code) = frame.rst_code() {
                        *seen.resets.entry(code).or_insert(0) += 1;
                    }
                }
                GOAWAY if seen.goaway.is_none() => {
                    seen.goaway = frame.goaway().map(|g| (g, started.elapsed()));
                }
                HEADERS if frame.stream != 0 => seen.responses += 1,
                DATA => seen.data_bytes += frame.payload.len() as u64,
                _ => {}
            }
        }));
        Ok(())
    }

    /// Completes the handshake as a well-behaved client does: waits (starting the reader) for
    /// the peer's SETTINGS and acknowledges them, so the peer applies its own settings to what
    /// follows. Fails when none come within `timeout`.
    pub fn handshake(&mut self, timeout: Duration) -> io::Result<()> {
        self.start_reading()?;
        let deadline = Instant::now() + timeout;
        while self.seen().settings.is_none() {
            if self.is_over() || Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent no SETTINGS",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut ack = Vec::new();
        settings_ack(&mut ack);
        self.send(&ack)
    }

    /// Writes `bytes` whole; fails when the peer closed the connection or stopped reading for
    /// [`Conn::WRITE_TIMEOUT`].
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n as u64;
                    rest = &rest[n..];
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// A copy of what the reader saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Whether the peer sent GOAWAY or the connection ended.
    pub fn is_over(&self) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.goaway.is_some() || seen.end.is_some()
    }

    /// Waits up to `timeout` for the peer to end the connection (the reader must be running);
    /// returns what was seen then.
    pub fn wait_end(&self, timeout: Duration) -> Seen {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen();
            if seen.end.is_some() || Instant::now() >= deadline || self.reader.is_none() {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The local socket, e.g. to read with a timeout instead of the reader thread.
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Unblocks the reader; the socket may be closed already.
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_written_byte_for_byte() {
        let mut buf = Vec::new();
        rst_stream(&mut buf, 3, CANCEL);
        assert_eq!(buf, [0, 0, 4, RST_STREAM, 0, 0, 0, 0, 3, 0, 0, 0, 8]);
        buf.clear();
        settings(&mut buf, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
        assert_eq!(buf, [0, 0, 6, SETTINGS, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        buf.clear();
        headers(&mut buf, 1, b"x", true, false);
        assert_eq!(buf, [0, 0, 1, HEADERS, END_STREAM, 0, 0, 0, 1, b'x']);
        let frame = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.stream, &frame.payload[..]),
            (HEADERS, 1, &b"x"[..])
        );
        assert_eq!(read_frame(&mut &[][..]).unwrap(), None);
    }

    #[test]
    fn hpack_integers_follow_rfc_7541() {
        // RFC 7541 C.1.1 and C.1.2: 10 and 1337 with a 5-bit prefix.
        let mut block = Vec::new();
        hpack_integer(&mut block, 0, 5, 10);
        assert_eq!(block, [10]);
        block.clear();
        hpack_integer(&mut block, 0, 5, 1337);
        assert_eq!(block, [31, 154, 10]);
        block.clear();
        hpack_literal(&mut block, b"a", b"bc");
        assert_eq!(block, [0, 1, b'a', 2, b'b', b'c']);
    }

    #[test]
    fn goaway_is_parsed() {
        let mut buf = Vec::new();
        let mut payload = 7u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        payload.extend_from_slice(b"too_many_resets");
        frame(&mut buf, GOAWAY, 0, 0, &payload);
        let goaway = read_frame(&mut &buf[..])
            .unwrap()
            .unwrap()
            .goaway()
            .unwrap();
        assert_eq!(
            goaway.to_string(),
            "GOAWAY ENHANCE_YOUR_CALM (too_many_resets)"
        );
        assert_eq!(goaway.last_stream, 7);
    }
}
