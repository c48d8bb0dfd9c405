//! The Redis codec: RESP2 and RESP3 commands and replies, and a command's name and first key.
//!
//! A client connection carries commands: arrays of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or inline commands (`GET k\r\n`, split as redis-server
//! splits them, quotes and escapes included). Like redis-server, the codec passes over empty
//! commands (a blank line, `*0`, `*-1`): they are answered by nothing, so they are no frame.
//!
//! A server connection carries replies of every RESP2 and RESP3 type, aggregates nested up to
//! 64 deep, streamed strings and aggregates (`$?`, `*?`) included. An attribute (`|`) is kept
//! with the reply it annotates, in the same frame; the reply decides the frame's [`Kind`]
//! (`-` and `!` are [`Kind::Error`], `>` is [`Kind::Push`]). Frames carry no id: Redis answers
//! in order.
//!
//! A command's metadata is its `command` (the first word, uppercased: `CLIENT SETNAME x` is
//! `CLIENT`) and, for the commands that have one, its first `key` (`EVAL`'s first key after
//! `numkeys`, `XREAD`'s first stream). [`Codec::encode`] writes a changed `key` back into the
//! command; the other keys of a command with several (`MSET`, `DEL`, `EVAL` …) are written as
//! they came.
//!
//! Decoding resumes where the previous call stopped: a huge array arriving a few bytes at a
//! time is read once, not again from its start on every call.

use super::{
    Codec, CodecError, Frame, Kind, LocalError, Metadata, Protocol, Session, Side, Text, MAX_FRAME,
};
use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use std::{borrow::Cow, ops::Range};

/// The codec's name, in errors.
const CODEC: &str = "redis";
/// The deepest nesting of aggregates (attributes and streamed strings count as a level).
const MAX_DEPTH: usize = 64;
/// The longest inline command, as redis-server's `PROTO_INLINE_MAX_SIZE`.
const MAX_INLINE: usize = 64 * 1024;
/// The longest line of a length or short scalar (`$`, `*`, `:`, `#` …), CRLF not counted.
const MAX_SHORT_LINE: usize = 32;
/// The longest `key` metadata value, in bytes.
const MAX_KEY: usize = 256;
/// The longest `command` metadata value, in bytes (real command names are far shorter; this
/// bounds what garbage sent as an inline command can put in a metric label).
const MAX_COMMAND: usize = 64;
/// The longest [`key_pattern`] of a key, in chars, `*` not counted.
const MAX_PATTERN: usize = 64;

/// The Redis protocol, RESP2 and RESP3.
pub struct Redis;

impl Protocol for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn codec(&self, side: Side) -> Box<dyn Codec> {
        Box::new(RedisCodec::new(side))
    }
}

/// How tap and top show a key: its prefix up to and including the first `:`, then `*`; a key
/// without `:` as it is. Either is cut to 64 chars (before the `*`).
///
/// ```
/// use mesh_proxy::codec::redis::key_pattern;
/// assert_eq!(key_pattern("user:42:name"), "user:*");
/// assert_eq!(key_pattern("counter"), "counter");
/// ```
pub fn key_pattern(key: &str) -> String {
    match key.find(':') {
        Some(colon) => {
            let mut pattern: String = key[..=colon].chars().take(MAX_PATTERN).collect();
            pattern.push('*');
            pattern
        }
        None => key.chars().take(MAX_PATTERN).collect(),
    }
}

// === impl RedisCodec ===

/// One connection's codec: commands from a client, replies from a server.
struct RedisCodec {
    side: Side,
    scan: Scan,
}

impl RedisCodec {
    fn new(side: Side) -> Self {
        let grammar = match side {
            Side::Client => Grammar::Command,
            Side::Server => Grammar::Reply,
        };
        Self {
            side,
            scan: Scan::new(grammar),
        }
    }

    fn decode_command(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        loop {
            let start = self.scan.start;
            if start > MAX_FRAME {
                // Only empty commands came before: bound what they hold in the buffer.
                return Err(too_large(start));
            }
            let Some(&first) = buf.get(start) else {
                return Ok(None);
            };

            if first == b'*' {
                // The usual case, a whole command in the buffer: read in one pass. Anything
                // else (a part, an empty or a malformed command) is the scan's to frame.
                if self.scan.pos == start {
                    let whole = bulk_prefix(&buf[start..])
                        .filter(|(args, len)| !args.is_empty() && start + len <= MAX_FRAME);
                    if let Some((args, len)) = whole {
                        self.scan.reset(0);
                        let bytes = take(buf, start, start + len);
                        let args: Args<&[u8]> = args.into_iter().map(|at| &bytes[at]).collect();
                        return Ok(Some(command(bytes.clone(), &args)));
                    }
                }
                let Some(end) = self.scan.scan(buf)? else {
                    return Ok(None);
                };
                if self.scan.empty {
                    self.scan.reset(end);
                    continue;
                }
                self.scan.reset(0);
                let bytes = take(buf, start, end);
                let args = bulk_args(&bytes)
                    .ok_or_else(|| malformed("command is not an array of bulk strings"))?;
                return Ok(Some(command(bytes.clone(), &args)));
            }

            // An inline command: one line, ended by LF (a CR before it is dropped).
            let from = self.scan.searched.max(start);
            let newline = buf
                .get(from..)
                .and_then(|rest| rest.iter().position(|&b| b == b'\n'));
            let Some(newline) = newline.map(|at| from + at) else {
                self.scan.searched = buf.len();
                if buf.len() - start > MAX_INLINE {
                    return Err(malformed("inline command longer than 64 KiB"));
                }
                return Ok(None);
            };
            let line = &buf[start..newline];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > MAX_INLINE {
                return Err(malformed("inline command longer than 64 KiB"));
            }
            let args =
                split_args(line).ok_or_else(|| malformed("unbalanced quotes in inline command"))?;
            if args.is_empty() {
                self.scan.reset(newline + 1);
                continue;
            }
            self.scan.reset(0);
            let bytes = take(buf, start, newline + 1);
            return Ok(Some(command(bytes, &args)));
        }
    }

    fn decode_reply(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(end) = self.scan.scan(buf)? else {
            return Ok(None);
        };
        let kind = match self.scan.head {
            Some(b'-' | b'!') => Kind::Error,
            Some(b'>') => Kind::Push,
            _ => Kind::Response,
        };
        self.scan.reset(0);
        Ok(Some(Frame {
            kind,
            id: None,
            metadata: Metadata::default(),
            session: Session::None,
            bytes: buf.split_to(end).freeze(),
        }))
    }
}

impl Codec for RedisCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if self.scan.pos > buf.len() {
            // The buffer is not the one the scan stopped in (the caller consumed from it while
            // a frame was incomplete): start over rather than read past its end.
            self.scan.reset(0);
        }
        let decoded = match self.side {
            Side::Client => self.decode_command(buf),
            Side::Server => self.decode_reply(buf),
        };
        if decoded.is_err() {
            self.scan.reset(0);
        }
        decoded
    }

    /// Writes the frame's bytes; a command whose `key` was changed is written again as an array
    /// of bulk strings with the new key in place of its first key (the other keys unchanged).
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        if frame.is_request() && frame.metadata.is_changed("key") {
            if let Some(key) = frame.get("key") {
                let args = command_args(&frame.bytes)
                    .ok_or_else(|| malformed("request to encode is not a command"))?;
                let name = command_name(&args);
                if let Some(at) = key_index(&name, &args) {
                    let args = args.iter().enumerate().map(|(i, arg)| {
                        if i == at {
                            key.as_bytes()
                        } else {
                            arg.as_ref()
                        }
                    });
                    write_command(args, dst);
                    return Ok(());
                }
            }
        }
        dst.extend_from_slice(&frame.bytes);
        Ok(())
    }

    /// `-ERR mesh: <error>\r\n`, which every Redis client reads as a command's error.
    fn local_reply(&self, _request: &Frame, error: &LocalError) -> Option<Frame> {
        let message: String = error
            .to_string()
            .chars()
            .filter(|&c| c != '\r' && c != '\n')
            .collect();
        Some(Frame {
            kind: Kind::Error,
            id: None,
            metadata: Metadata::default(),
            session: Session::None,
            bytes: Bytes::from(format!("-ERR mesh: {message}\r\n")),
        })
    }
}

/// Takes `buf[start..end]` off the front of `buf`, dropping `buf[..start]` (empty commands).
fn take(buf: &mut BytesMut, start: usize, end: usize) -> Bytes {
    buf.advance(start);
    buf.split_to(end - start).freeze()
}

/// Writes `args` as an array of bulk strings.
fn write_command<'a>(args: impl ExactSizeIterator<Item = &'a [u8]>, dst: &mut BytesMut) {
    dst.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        dst.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        dst.extend_from_slice(arg);
        dst.extend_from_slice(b"\r\n");
    }
}

// === impl Scan ===

/// What a connection's frames may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grammar {
    /// A command: an array of bulk strings, nothing else.
    Command,
    /// A reply: any RESP2 or RESP3 value.
    Reply,
}

/// An aggregate whose end the scan has not reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// `left` elements to go; an attribute's are its key-value pairs, then the value it
    /// annotates.
    Count { left: u64, attr: bool },
    /// A streamed aggregate (`*?`), ended by `.`.
    Streamed,
    /// A streamed string (`$?`): chunks (`;4\r\nHell\r\n`), ended by `;0`.
    Chunks,
}

/// A resumable scan for the end of one RESP value at the front of a buffer. Offsets are from
/// the buffer's front, which the codec leaves in place until the value is whole.
#[derive(Debug)]
struct Scan {
    grammar: Grammar,
    /// Where the frame starts (after empty commands).
    start: usize,
    /// The next element's type byte.
    pos: usize,
    /// The current line has no line end before this offset.
    searched: usize,
    /// The open aggregates, innermost last.
    open: Vec<Level>,
    /// The type of the value the frame is (the first one after any attributes).
    head: Option<u8>,
    /// The frame is an empty array (`*0`, `*-1`): an empty command, when it is one.
    empty: bool,
}

/// A length line's value.
enum Len {
    Null,
    Streamed,
    Count(u64),
}

/// Every type byte of RESP2 and RESP3, streamed-string chunks and streamed-aggregate ends
/// included.
const REPLY_TYPES: &[u8] = b"+-:$*_,#!=(%~>|;.";

impl Scan {
    fn new(grammar: Grammar) -> Self {
        Self {
            grammar,
            start: 0,
            pos: 0,
            searched: 0,
            open: Vec::new(),
            head: None,
            empty: false,
        }
    }

    /// The next frame starts at `start`.
    fn reset(&mut self, start: usize) {
        self.start = start;
        self.pos = start;
        self.searched = 0;
        self.open.clear();
        self.head = None;
        self.empty = false;
    }

    /// Reads on from where the last call stopped: `Some(end)` once the value that begins at
    /// `start` is whole, `None` if more bytes are needed.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, CodecError> {
        loop {
            let Some(&ty) = buf.get(self.pos) else {
                return Ok(None);
            };
            self.check_type(ty)?;
            let Some((line, next)) = self.line(buf, ty)? else {
                return Ok(None);
            };
            if next > MAX_FRAME {
                return Err(too_large(next));
            }
            if self.head.is_none() && ty != b'|' && self.at_value() {
                self.head = Some(ty);
            }

            let mut end = next;
            let element = match ty {
                b'+' | b'-' => true,
                b':' => {
                    scalar(ty, line, is_integer(line))?;
                    true
                }
                b'(' => {
                    scalar(ty, line, is_big_number(line))?;
                    true
                }
                b',' => {
                    scalar(ty, line, is_double(line))?;
                    true
                }
                b'#' => {
                    scalar(ty, line, line == b"t" || line == b"f")?;
                    true
                }
                b'_' => {
                    scalar(ty, line, line.is_empty())?;
                    true
                }
                b'.' => {
                    scalar(ty, line, line.is_empty())?;
                    self.open.pop();
                    true
                }
                b'$' | b'!' | b'=' | b';' => match (length(ty, line)?, ty, self.grammar) {
                    (Len::Null, b'$', Grammar::Reply) => true,
                    (Len::Streamed, b'$', Grammar::Reply) => {
                        self.push(Level::Chunks)?;
                        false
                    }
                    (Len::Count(0), b';', _) => {
                        self.open.pop();
                        true
                    }
                    (Len::Count(len), _, _) => {
                        let data_end = usize::try_from(len)
                            .unwrap_or(usize::MAX)
                            .saturating_add(next);
                        if data_end.saturating_add(2) > MAX_FRAME {
                            return Err(too_large(data_end.saturating_add(2)));
                        }
                        let tail = buf.get(data_end..).unwrap_or_default();
                        let tail = &tail[..tail.len().min(2)];
                        if !b"\r\n".starts_with(tail) {
                            return Err(malformed(format!(
                                "'{}' data not followed by CRLF",
                                ty.escape_ascii()
                            )));
                        }
                        if tail.len() < 2 {
                            return Ok(None);
                        }
                        if ty == b'=' && (len < 4 || buf.get(next + 3) != Some(&b':')) {
                            return Err(malformed("verbatim string without its format"));
                        }
                        end = data_end + 2;
                        ty != b';'
                    }
                    _ => return Err(bad_length(ty, line)),
                },
                b'*' | b'%' | b'~' | b'>' | b'|' => match (length(ty, line)?, ty, self.grammar) {
                    (Len::Null, b'*', _) => {
                        self.empty = self.open.is_empty();
                        true
                    }
                    (Len::Streamed, b'*' | b'%' | b'~', Grammar::Reply) => {
                        self.push(Level::Streamed)?;
                        false
                    }
                    (Len::Count(count), _, _) => {
                        let elements = match ty {
                            b'%' => count.saturating_mul(2),
                            b'|' => count.saturating_mul(2).saturating_add(1),
                            _ => count,
                        };
                        // Every element takes 3 bytes at least (`_\r\n`).
                        let least = usize::try_from(elements)
                            .unwrap_or(usize::MAX)
                            .saturating_mul(3)
                            .saturating_add(next);
                        if least > MAX_FRAME {
                            return Err(too_large(least));
                        }
                        if elements == 0 {
                            self.empty = self.open.is_empty();
                            true
                        } else {
                            self.push(Level::Count {
                                left: elements,
                                attr: ty == b'|',
                            })?;
                            false
                        }
                    }
                    _ => return Err(bad_length(ty, line)),
                },
                // `check_type` let no other byte through.
                _ => return Err(unknown_type(ty)),
            };

            self.pos = end;
            if element && self.complete_element() {
                return Ok(Some(end));
            }
        }
    }

    /// Whether `ty` may come next.
    fn check_type(&self, ty: u8) -> Result<(), CodecError> {
        let top = self.open.last();
        match self.grammar {
            Grammar::Command => {
                let want = if top.is_none() { b'*' } else { b'$' };
                if ty != want {
                    return Err(malformed(format!(
                        "expected '{}' in a command, found '{}'",
                        want as char,
                        ty.escape_ascii()
                    )));
                }
            }
            Grammar::Reply => {
                if !REPLY_TYPES.contains(&ty) {
                    return Err(unknown_type(ty));
                }
                let in_chunks = top == Some(&Level::Chunks);
                if in_chunks && ty != b';' {
                    return Err(malformed("streamed string interrupted"));
                }
                if !in_chunks && ty == b';' {
                    return Err(malformed("string chunk outside a streamed string"));
                }
                if ty == b'.' && top != Some(&Level::Streamed) {
                    return Err(malformed("end of stream outside a streamed aggregate"));
                }
            }
        }
        Ok(())
    }

    /// The line of the element at `pos` (type byte and CRLF not included) and where the line
    /// ends, CRLF included; `None` if its CRLF has not come yet.
    fn line<'b>(&mut self, buf: &'b [u8], ty: u8) -> Result<Option<(&'b [u8], usize)>, CodecError> {
        let from = self.searched.max(self.pos + 1);
        let rest = buf.get(from..).unwrap_or_default();
        if let Some(at) = find_crlf(rest) {
            self.searched = 0;
            let end = from + at;
            let body = &buf[self.pos + 1..end];
            // The same bound as on a partial line: where the reads cut a stream must not
            // change how it is framed.
            if is_short(ty) && !is_short_line(body) {
                return Err(malformed(format!(
                    "'{}' line longer than {MAX_SHORT_LINE} bytes or not a number",
                    ty.escape_ascii()
                )));
            }
            return Ok(Some((body, end + 2)));
        }
        // The last byte may be the CR of a CRLF still to come.
        self.searched = buf.len().saturating_sub(1).max(self.pos + 1);
        if is_short(ty) {
            let partial = buf.get(self.pos + 1..).unwrap_or_default();
            let body = partial.strip_suffix(b"\r").unwrap_or(partial);
            if !is_short_line(body) {
                return Err(malformed(format!(
                    "'{}' line not ended by CRLF",
                    ty.escape_ascii()
                )));
            }
        }
        if buf.len() > MAX_FRAME {
            return Err(too_large(buf.len()));
        }
        Ok(None)
    }

    fn push(&mut self, level: Level) -> Result<(), CodecError> {
        if self.open.len() >= MAX_DEPTH {
            return Err(malformed("aggregates nested deeper than 64"));
        }
        self.open.push(level);
        Ok(())
    }

    /// Whether the next element is the frame's value: every open level is an attribute whose
    /// pairs are all read.
    fn at_value(&self) -> bool {
        self.open.iter().all(|level| {
            matches!(
                level,
                Level::Count {
                    left: 1,
                    attr: true
                }
            )
        })
    }

    /// Counts one whole element in the innermost open aggregate, closing every aggregate this
    /// completes; true when nothing is left open (the frame is whole).
    fn complete_element(&mut self) -> bool {
        while let Some(level) = self.open.last_mut() {
            match level {
                Level::Count { left, .. } => {
                    *left = left.saturating_sub(1);
                    if *left > 0 {
                        return false;
                    }
                    self.open.pop();
                }
                Level::Streamed | Level::Chunks => return false,
            }
        }
        true
    }
}

/// Types whose line is a length or a short scalar: a long line without CRLF is an error early.
fn is_short(ty: u8) -> bool {
    b"$*%~>|!=;:#_.".contains(&ty)
}

/// A short type's line (or what came of it yet): at most [`MAX_SHORT_LINE`] bytes of a number
/// or a flag.
fn is_short_line(body: &[u8]) -> bool {
    body.len() <= MAX_SHORT_LINE && body.iter().all(|&b| is_short_line_byte(b))
}

fn is_short_line_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+-?.".contains(&b)
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = bytes.get(from..)?.iter().position(|&b| b == b'\r') {
        let cr = from + at;
        if bytes.get(cr + 1) == Some(&b'\n') {
            return Some(cr);
        }
        from = cr + 1;
    }
    None
}

/// A length line: `?` (streamed), `-1` (null) or a count.
fn length(ty: u8, line: &[u8]) -> Result<Len, CodecError> {
    match line {
        b"?" => Ok(Len::Streamed),
        b"-1" => Ok(Len::Null),
        digits => parse_count(digits)
            .map(Len::Count)
            .ok_or_else(|| bad_length(ty, line)),
    }
}

/// Decimal digits only, at most 19 (any such number fits a `u64`).
fn parse_count(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

fn is_integer(line: &[u8]) -> bool {
    std::str::from_utf8(line).is_ok_and(|s| s.parse::<i64>().is_ok())
}

fn is_big_number(line: &[u8]) -> bool {
    let digits = line
        .strip_prefix(b"-")
        .or_else(|| line.strip_prefix(b"+"))
        .unwrap_or(line);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// A RESP3 double: `1.5`, `-2e10`, `inf`, `-inf`, `nan`.
fn is_double(line: &[u8]) -> bool {
    std::str::from_utf8(line).is_ok_and(|s| s.parse::<f64>().is_ok())
}

fn scalar(ty: u8, line: &[u8], valid: bool) -> Result<(), CodecError> {
    if valid {
        return Ok(());
    }
    Err(malformed(format!(
        "invalid '{}' value {:?}",
        ty.escape_ascii(),
        shown(line)
    )))
}

fn bad_length(ty: u8, line: &[u8]) -> CodecError {
    malformed(format!(
        "invalid '{}' length {:?}",
        ty.escape_ascii(),
        shown(line)
    ))
}

/// The start of a line, for an error message.
fn shown(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(32)]).into_owned()
}

fn unknown_type(ty: u8) -> CodecError {
    malformed(format!("unknown type byte '{}'", ty.escape_ascii()))
}

fn malformed(what: impl Into<Cow<'static, str>>) -> CodecError {
    CodecError::malformed(CODEC, what)
}

fn too_large(len: usize) -> CodecError {
    CodecError::TooLarge {
        codec: CODEC,
        len,
        max: MAX_FRAME,
    }
}

// === Commands ===

/// A command frame: its `command`, first `key` and session. The metadata are slices of
/// `bytes` where they can be (an uppercase name, a short UTF-8 key): no copy.
fn command<A: AsRef<[u8]>>(bytes: Bytes, args: &[A]) -> Frame {
    let name = command_text(&bytes, args);
    let key = key_index(name.as_str(), args)
        .and_then(|at| args.get(at))
        .map(|key| {
            let key = key.as_ref();
            (key.len() <= MAX_KEY)
                .then(|| Text::shared(&bytes, key))
                .flatten()
                .unwrap_or_else(|| text(key, MAX_KEY).into())
        });
    let session = session(name.as_str(), args);
    let mut entries: Vec<(Cow<'static, str>, Text)> = Vec::with_capacity(2);
    entries.push((Cow::Borrowed("command"), name));
    if let Some(key) = key {
        entries.push((Cow::Borrowed("key"), key));
    }
    Frame {
        kind: Kind::Request,
        id: None,
        metadata: Metadata::decoded(entries),
        session,
        bytes,
    }
}

/// The command's name as [`command_name`] has it, sliced from `bytes` when it is already so.
fn command_text<A: AsRef<[u8]>>(bytes: &Bytes, args: &[A]) -> Text {
    if let Some(name) = args.first().map(AsRef::as_ref) {
        if name.len() <= MAX_COMMAND && !name.iter().any(u8::is_ascii_lowercase) {
            if let Some(text) = Text::shared(bytes, name) {
                return text;
            }
        }
    }
    command_name(args).into()
}

/// A command's arguments: the usual few without an allocation.
type Args<A> = SmallVec<[A; 8]>;

/// The arguments of a whole command frame, array or inline.
fn command_args(frame: &[u8]) -> Option<Args<Cow<'_, [u8]>>> {
    if frame.first() == Some(&b'*') {
        let args = bulk_args(frame)?;
        return Some(args.into_iter().map(Cow::Borrowed).collect());
    }
    let line = frame.strip_suffix(b"\n").unwrap_or(frame);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = split_args(line)?;
    Some(args.into_iter().map(Cow::Owned).collect())
}

/// The arguments of a whole array of bulk strings.
fn bulk_args(frame: &[u8]) -> Option<Args<&[u8]>> {
    let (args, len) = bulk_prefix(frame)?;
    (len == frame.len()).then(|| args.into_iter().map(|at| &frame[at]).collect())
}

/// Where the arguments are of the array of bulk strings at the front of `buf`, and its
/// length, when it is whole there.
fn bulk_prefix(buf: &[u8]) -> Option<(Args<Range<usize>>, usize)> {
    let mut at = 0;
    let count = header(buf, &mut at, b'*')?;
    let mut args = Args::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = header(buf, &mut at, b'$')?;
        let end = at.checked_add(len)?;
        if buf.get(end..end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        args.push(at..end);
        at = end + 2;
    }
    Some((args, at))
}

/// The count of a `ty` line at `at`, moving `at` past it.
fn header(frame: &[u8], at: &mut usize, ty: u8) -> Option<usize> {
    let rest = frame.get(*at..)?;
    if rest.first() != Some(&ty) {
        return None;
    }
    // A count is short: what has no line end soon is no count.
    let end = find_crlf(&rest[..rest.len().min(MAX_SHORT_LINE + 3)])?;
    let count = usize::try_from(parse_count(rest.get(1..end)?)?).ok()?;
    *at += end + 2;
    Some(count)
}

/// The command's name, uppercased.
fn command_name<A: AsRef<[u8]>>(args: &[A]) -> String {
    let Some(name) = args.first() else {
        return String::new();
    };
    let name = name.as_ref();
    // A few bytes over the limit, so that `text` cuts at a char boundary of the whole name.
    let head = &name[..name.len().min(MAX_COMMAND + 3)];
    text(&head.to_ascii_uppercase(), MAX_COMMAND)
}

/// `bytes` as text (invalid UTF-8 replaced), cut to `max` bytes at a char boundary.
fn text(bytes: &[u8], max: usize) -> String {
    // A replacement char is 3 bytes, at least as long as what it replaces: the first `max`
    // bytes of the text come from the first `max` bytes, or 3 more for a char cut short.
    let head = &bytes[..bytes.len().min(max + 3)];
    let mut text = String::from_utf8_lossy(head).into_owned();
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Where a command's first key is.
enum FirstKey {
    /// At this argument (the command's name is argument 0).
    At(usize),
    /// After a count of keys at this argument, when the count is above zero
    /// (`EVAL script numkeys key …`).
    Counted(usize),
    /// After the `STREAMS` argument (`XREAD`, `XREADGROUP`).
    Streams,
}

/// The common commands that name keys. Commands whose key follows a subcommand (`OBJECT`,
/// `XINFO`, `MEMORY USAGE` …) are left out: they have no `key`.
fn first_key(command: &str) -> Option<FirstKey> {
    Some(match command {
        // Strings and keys.
        "GET" | "SET" | "SETEX" | "PSETEX" | "SETNX" | "GETSET" | "GETDEL" | "GETEX" | "APPEND"
        | "STRLEN" | "INCR" | "INCRBY" | "INCRBYFLOAT" | "DECR" | "DECRBY" | "GETRANGE"
        | "SETRANGE" | "SUBSTR" | "LCS" | "GETBIT" | "SETBIT" | "BITCOUNT" | "BITPOS"
        | "BITFIELD" | "BITFIELD_RO" | "MGET" | "MSET" | "MSETNX" | "DEL" | "UNLINK" | "EXISTS"
        | "TOUCH" | "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "EXPIRETIME"
        | "PEXPIRETIME" | "TTL" | "PTTL" | "PERSIST" | "TYPE" | "DUMP" | "RESTORE" | "RENAME"
        | "RENAMENX" | "COPY" | "WATCH" | "SORT" | "SORT_RO" => FirstKey::At(1),
        // Hashes.
        "HGET" | "HSET" | "HSETNX" | "HMSET" | "HMGET" | "HDEL" | "HGETALL" | "HINCRBY"
        | "HINCRBYFLOAT" | "HEXISTS" | "HLEN" | "HKEYS" | "HVALS" | "HSTRLEN" | "HRANDFIELD"
        | "HSCAN" => FirstKey::At(1),
        // Lists.
        "LPUSH" | "LPUSHX" | "RPUSH" | "RPUSHX" | "LPOP" | "RPOP" | "LRANGE" | "LLEN"
        | "LINDEX" | "LSET" | "LREM" | "LTRIM" | "LINSERT" | "LPOS" | "LMOVE" | "RPOPLPUSH"
        | "BLPOP" | "BRPOP" | "BLMOVE" | "BRPOPLPUSH" => FirstKey::At(1),
        // Sets.
        "SADD" | "SREM" | "SMEMBERS" | "SISMEMBER" | "SMISMEMBER" | "SCARD" | "SPOP"
        | "SRANDMEMBER" | "SMOVE" | "SINTER" | "SUNION" | "SDIFF" | "SINTERSTORE"
        | "SUNIONSTORE" | "SDIFFSTORE" | "SSCAN" => FirstKey::At(1),
        // Sorted sets.
        "ZADD" | "ZREM" | "ZRANGE" | "ZRANGEBYSCORE" | "ZREVRANGE" | "ZREVRANGEBYSCORE"
        | "ZRANGEBYLEX" | "ZREVRANGEBYLEX" | "ZRANGESTORE" | "ZSCORE" | "ZMSCORE" | "ZCARD"
        | "ZCOUNT" | "ZLEXCOUNT" | "ZINCRBY" | "ZRANK" | "ZREVRANK" | "ZREMRANGEBYSCORE"
        | "ZREMRANGEBYRANK" | "ZREMRANGEBYLEX" | "ZPOPMIN" | "ZPOPMAX" | "ZRANDMEMBER"
        | "ZSCAN" | "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" | "BZPOPMIN" | "BZPOPMAX" => {
            FirstKey::At(1)
        }
        // Streams, HyperLogLogs, geo.
        "XADD"
        | "XRANGE"
        | "XREVRANGE"
        | "XLEN"
        | "XDEL"
        | "XTRIM"
        | "XACK"
        | "XCLAIM"
        | "XAUTOCLAIM"
        | "XPENDING"
        | "XSETID"
        | "PFADD"
        | "PFCOUNT"
        | "PFMERGE"
        | "GEOADD"
        | "GEODIST"
        | "GEOHASH"
        | "GEOPOS"
        | "GEOSEARCH"
        | "GEOSEARCHSTORE"
        | "GEORADIUS"
        | "GEORADIUS_RO"
        | "GEORADIUSBYMEMBER"
        | "GEORADIUSBYMEMBER_RO" => FirstKey::At(1),
        "BITOP" => FirstKey::At(2),
        "LMPOP" | "ZMPOP" | "SINTERCARD" | "ZINTERCARD" | "ZUNION" | "ZINTER" | "ZDIFF" => {
            FirstKey::Counted(1)
        }
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" | "BLMPOP"
        | "BZMPOP" => FirstKey::Counted(2),
        "XREAD" | "XREADGROUP" => FirstKey::Streams,
        _ => return None,
    })
}

/// The argument that is the command's first key, if it has one.
fn key_index<A: AsRef<[u8]>>(command: &str, args: &[A]) -> Option<usize> {
    let at = match first_key(command)? {
        FirstKey::At(at) => at,
        FirstKey::Counted(count) => {
            let keys = std::str::from_utf8(args.get(count)?.as_ref())
                .ok()?
                .parse::<i64>()
                .ok()?;
            if keys <= 0 {
                return None;
            }
            count + 1
        }
        FirstKey::Streams => {
            stream_options(command, args).position(|arg| arg.eq_ignore_ascii_case(b"STREAMS"))?
                + stream_options_from(command)
                + 1
        }
    };
    (at < args.len()).then_some(at)
}

/// What a command does to its connection.
fn session<A: AsRef<[u8]>>(command: &str, args: &[A]) -> Session {
    match command {
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR" => Session::Stream,
        // Connection state.
        "MULTI" | "EXEC" | "DISCARD" | "WATCH" | "SELECT" | "AUTH" | "HELLO" | "CLIENT"
        | "READONLY" | "READWRITE" | "RESET" => Session::Pin,
        // The server closes the connection that asks: never a shared one (client libraries
        // send it when they close).
        "QUIT" => Session::Pin,
        // Blocking: the connection waits for the answer, other requests must not queue on it.
        "BLPOP" | "BRPOP" | "BLMOVE" | "BRPOPLPUSH" | "BZPOPMIN" | "BZPOPMAX" | "BLMPOP"
        | "BZMPOP" | "WAIT" | "WAITAOF" => Session::Pin,
        "XREAD" | "XREADGROUP"
            if stream_options(command, args)
                .take_while(|arg| !arg.eq_ignore_ascii_case(b"STREAMS"))
                .any(|arg| arg.eq_ignore_ascii_case(b"BLOCK")) =>
        {
            Session::Pin
        }
        _ => Session::None,
    }
}

/// The options of an `XREAD` or `XREADGROUP`, from after its `GROUP group consumer`.
fn stream_options<'a, A: AsRef<[u8]>>(
    command: &str,
    args: &'a [A],
) -> impl Iterator<Item = &'a [u8]> {
    args.iter()
        .skip(stream_options_from(command))
        .map(AsRef::as_ref)
}

fn stream_options_from(command: &str) -> usize {
    if command == "XREADGROUP" {
        4
    } else {
        1
    }
}

// === Inline commands ===

/// Splits an inline command into its arguments as redis-server does (`sdssplitargs`): on
/// spaces, with `"…"` (escapes `\n \r \t \b \a \xHH`, `\` before any other char is that char)
/// and `'…'` (only `\'`) quoting; a closing quote must be followed by a space or the end. A NUL
/// ends the line, as it ends the C string there. `None` for unbalanced quotes.
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    // The byte at `i`, NUL past the end (C string semantics).
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while at(i) != 0 && is_space(at(i)) {
            i += 1;
        }
        if at(i) == 0 {
            return Some(args);
        }
        let mut arg = Vec::new();
        let (mut double, mut single) = (false, false);
        loop {
            let mut done = false;
            let c = at(i);
            if double {
                match (c, at(i + 1)) {
                    (b'\\', b'x') if hex(at(i + 2)).is_some() && hex(at(i + 3)).is_some() => {
                        arg.push(hex(at(i + 2))? * 16 + hex(at(i + 3))?);
                        i += 3;
                    }
                    (b'\\', next) if next != 0 => {
                        i += 1;
                        arg.push(match next {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    (b'"', next) => {
                        if next != 0 && !is_space(next) {
                            return None;
                        }
                        done = true;
                    }
                    (0, _) => return None,
                    _ => arg.push(c),
                }
            } else if single {
                match (c, at(i + 1)) {
                    (b'\\', b'\'') => {
                        i += 1;
                        arg.push(b'\'');
                    }
                    (b'\'', next) => {
                        if next != 0 && !is_space(next) {
                            return None;
                        }
                        done = true;
                    }
                    (0, _) => return None,
                    _ => arg.push(c),
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => double = true,
                    b'\'' => single = true,
                    _ => arg.push(c),
                }
            }
            if at(i) != 0 {
                i += 1;
            }
            if done {
                break;
            }
        }
        args.push(arg);
    }
}

/// C's `isspace`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `scripts/fuzz` (codec target; fuzz/crashes/codec/redis-long-integer-reply-split):
    /// an integer reply whose line is longer than a short line was a frame when it came in one
    /// read and refused when it came in two.
    #[test]
    fn redis_long_integer_reply_split() {
        let stream = format!("+OK\r\n:{}42\r\n", "0".repeat(70));
        let decode = |cuts: &[usize]| {
            let mut codec = RedisCodec::new(Side::Server);
            let mut buf = BytesMut::new();
            let mut frames = 0;
            let mut from = 0;
            for &to in cuts.iter().chain([stream.len()].iter()) {
                buf.extend_from_slice(&stream.as_bytes()[from..to]);
                from = to;
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => frames += 1,
                        Ok(None) => break,
                        Err(_) => return (frames, true),
                    }
                }
            }
            (frames, false)
        };
        assert_eq!(
            decode(&[]),
            (1, true),
            "whole: +OK, then the long integer refused"
        );
        for cut in 1..stream.len() {
            assert_eq!(decode(&[cut]), decode(&[]), "cut at {cut}");
        }
    }
    use std::sync::Arc;

    fn codec(side: Side) -> Box<dyn Codec> {
        Redis.codec(side)
    }

    /// Every whole frame of `input`, and what is left of it.
    fn decode_all(side: Side, input: &[u8]) -> Result<(Vec<Frame>, BytesMut), CodecError> {
        let mut codec = codec(side);
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            frames.push(frame);
        }
        Ok((frames, buf))
    }

    /// The one frame `input` is, whole.
    fn decode_one(side: Side, input: &[u8]) -> Frame {
        let (mut frames, rest) = decode_all(side, input).unwrap();
        assert_eq!(frames.len(), 1, "{:?}", input.escape_ascii().to_string());
        assert!(rest.is_empty());
        frames.remove(0)
    }

    fn decode_err(side: Side, input: &[u8]) -> CodecError {
        match decode_all(side, input) {
            Err(e) => e,
            Ok((frames, rest)) => panic!(
                "{:?} decoded to {frames:?}, left {rest:?}",
                input.escape_ascii().to_string()
            ),
        }
    }

    /// `args` as an array of bulk strings.
    fn resp(args: &[&str]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        write_command(args.iter().map(|a| a.as_bytes()), &mut dst);
        dst.to_vec()
    }

    const COMMANDS: &[&[u8]] = &[
        b"*1\r\n$4\r\nPING\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n",
        b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n",
        b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n",
        b"PING\r\n",
        b"set \"a b\" 'c d'\n",
        b"GET \"\\x41\\r\\n\"\r\n",
    ];

    const REPLIES: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR unknown command\r\n",
        b":-42\r\n",
        b"$5\r\nhello\r\n",
        b"$0\r\n\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n",
        b"_\r\n",
        b"#t\r\n",
        b",3.14\r\n",
        b",-inf\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        b"%2\r\n+a\r\n:1\r\n+b\r\n~2\r\n:1\r\n:2\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        b"|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n",
        b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n",
        b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n",
        b"*?\r\n:1\r\n%?\r\n+a\r\n:1\r\n.\r\n.\r\n",
    ];

    #[test]
    fn protocol() {
        assert_eq!(Redis.name(), "redis");
        assert_eq!(super::super::by_name("redis").unwrap().name(), "redis");
    }

    #[test]
    fn pipelined_commands_decode_one_by_one() {
        let input = [
            b"*1\r\n$4\r\nPING\r\n".as_slice(),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            b"INCR n\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n",
        ];
        let mut codec = codec(Side::Client);
        let mut buf = BytesMut::from(input.concat().as_slice());
        for want in input {
            let frame = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(frame.bytes, want);
            assert_eq!(frame.kind, Kind::Request);
            assert_eq!(frame.id, None);
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn pipelined_replies_decode_one_by_one() {
        let mut codec = codec(Side::Server);
        let mut buf = BytesMut::from(REPLIES.concat().as_slice());
        for want in REPLIES {
            let frame = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(frame.bytes, want);
            assert_eq!(frame.id, None);
            assert_eq!(frame.metadata, Metadata::default());
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_at_every_split_point() {
        let cases = COMMANDS
            .iter()
            .map(|c| (Side::Client, *c))
            .chain(REPLIES.iter().map(|r| (Side::Server, *r)));
        for (side, input) in cases {
            for split in 0..input.len() {
                // A fresh codec given the first part, then the rest.
                let mut codec = codec(side);
                let mut buf = BytesMut::from(&input[..split]);
                assert_eq!(codec.decode(&mut buf).unwrap(), None, "split at {split}");
                assert_eq!(buf, &input[..split], "nothing consumed");
                buf.extend_from_slice(&input[split..]);
                let frame = codec.decode(&mut buf).unwrap().unwrap();
                assert_eq!(frame.bytes, input);
                assert!(buf.is_empty());
            }
            // One codec, one byte at a time: the scan resumes.
            let mut codec = codec(side);
            let mut buf = BytesMut::new();
            for (i, &byte) in input.iter().enumerate() {
                buf.extend_from_slice(&[byte]);
                let decoded = codec.decode(&mut buf).unwrap();
                if i + 1 < input.len() {
                    assert_eq!(decoded, None);
                    assert_eq!(buf.len(), i + 1);
                } else {
                    assert_eq!(decoded.unwrap().bytes, input);
                }
            }
        }
    }

    #[test]
    fn huge_array_byte_by_byte() {
        let args: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
        let mut words = vec!["DEL"];
        words.extend(args.iter().map(String::as_str));
        let input = resp(&words);
        let mut codec = codec(Side::Client);
        let mut buf = BytesMut::new();
        let mut decoded = None;
        for &byte in &input {
            buf.extend_from_slice(&[byte]);
            decoded = codec.decode(&mut buf).unwrap();
        }
        let frame = decoded.unwrap();
        assert_eq!(frame.bytes, input);
        assert_eq!(frame.get("key"), Some("0"));
    }

    #[test]
    fn inline_commands() {
        fn check(input: &[u8], want: &[&[u8]]) {
            let frame = decode_one(Side::Client, input);
            assert_eq!(frame.bytes, input);
            let args = command_args(&frame.bytes).unwrap();
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
            assert_eq!(args, want, "{:?}", input.escape_ascii().to_string());
        }
        check(b"PING\r\n", &[b"PING"]);
        check(b"PING\n", &[b"PING"]);
        check(b"  set   k\tv  \r\n", &[b"set", b"k", b"v"]);
        check(b"set \"a b\" 'c d'\r\n", &[b"set", b"a b", b"c d"]);
        check(
            b"set k \"\\x41\\n\\t\\\"q\\z\"\r\n",
            &[b"set", b"k", b"A\n\t\"qz"],
        );
        check(b"set k 'it\\'s'\r\n", &[b"set", b"k", b"it's"]);
        check(b"set k \"\"\r\n", &[b"set", b"k", b""]);
        check(b"set k\"v w\"\r\n", &[b"set", b"kv w"]);
        check(b"get k\0ignored\r\n", &[b"get", b"k"]);

        // Blank lines are empty commands: no frame, as redis-server answers none.
        let (frames, rest) = decode_all(Side::Client, b"\r\n  \n*0\r\n*-1\r\nPING\r\n").unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].bytes, "PING\r\n");
        assert!(rest.is_empty());
        // …and are not consumed while no frame follows.
        let (frames, rest) = decode_all(Side::Client, b"\r\n*0\r\nPI").unwrap();
        assert!(frames.is_empty());
        assert_eq!(rest, "\r\n*0\r\nPI");

        let long = [vec![b'a'; MAX_INLINE + 1], b"\r\n".to_vec()].concat();
        assert!(matches!(
            decode_err(Side::Client, &long),
            CodecError::Malformed { .. }
        ));
        let unended = vec![b'a'; MAX_INLINE + 1];
        assert!(matches!(
            decode_err(Side::Client, &unended),
            CodecError::Malformed { .. }
        ));
        let longest = [vec![b'a'; MAX_INLINE], b"\r\n".to_vec()].concat();
        assert_eq!(decode_one(Side::Client, &longest).bytes, longest);
    }

    #[test]
    fn resp3_replies() {
        fn check(input: &[u8], kind: Kind) {
            let frame = decode_one(Side::Server, input);
            assert_eq!(frame.bytes, input);
            assert_eq!(frame.kind, kind, "{:?}", input.escape_ascii().to_string());
            assert_eq!(frame.id, None);
            assert_eq!(frame.session, Session::None);
            assert_eq!(frame.metadata.iter().count(), 0);
        }
        use Kind::*;
        check(b"+OK\r\n", Response);
        check(b"-ERR wrong\r\n", Error);
        check(b"-WRONGTYPE Operation against a key\r\n", Error);
        check(b":0\r\n", Response);
        check(b":+7\r\n", Response);
        check(b"$3\r\nf\ro\r\n", Response);
        check(b"$-1\r\n", Response);
        check(b"*-1\r\n", Response);
        check(b"*3\r\n:1\r\n-ERR in exec\r\n+OK\r\n", Response);
        // Map, set, push.
        check(b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", Response);
        check(b"%0\r\n", Response);
        check(b"~3\r\n+a\r\n+b\r\n+c\r\n", Response);
        check(b">2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n", Push);
        // Double, big number, verbatim, null, boolean.
        check(b",1.23\r\n", Response);
        check(b",10\r\n", Response);
        check(b",inf\r\n", Response);
        check(b",-inf\r\n", Response);
        check(b",nan\r\n", Response);
        check(b",1.5e-10\r\n", Response);
        check(
            b"(-3492890328409238509324850943850943825024385\r\n",
            Response,
        );
        check(b"=15\r\ntxt:Some string\r\n", Response);
        check(b"=4\r\nmkd:\r\n", Response);
        check(b"_\r\n", Response);
        check(b"#t\r\n", Response);
        check(b"#f\r\n", Response);
        check(b"!10\r\nERR failed\r\n", Error);
        // Attributes stay with the reply they annotate, which decides the kind.
        check(
            b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
            Response,
        );
        check(b"|1\r\n+a\r\n+b\r\n-ERR annotated\r\n", Error);
        check(b"|0\r\n>1\r\n+p\r\n", Push);
        check(b"|1\r\n+k\r\n|1\r\n+a\r\n+b\r\n+v\r\n!3\r\nERR\r\n", Error);
        check(b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n-ERR x\r\n", Response);
        // Streamed strings and aggregates.
        check(b"$?\r\n;4\r\nHell\r\n;0\r\n", Response);
        check(b"$?\r\n;0\r\n", Response);
        check(b"*?\r\n:1\r\n:2\r\n.\r\n", Response);
        check(b"~?\r\n.\r\n", Response);
        check(b"%?\r\n+a\r\n:1\r\n.\r\n", Response);
        check(b"*1\r\n$?\r\n;1\r\na\r\n;0\r\n", Response);
    }

    #[test]
    fn nesting_up_to_64() {
        let nested = |depth: usize| [b"*1\r\n".repeat(depth), b":1\r\n".to_vec()].concat();
        let input = nested(MAX_DEPTH);
        assert_eq!(decode_one(Side::Server, &input).bytes, input);
        assert!(matches!(
            decode_err(Side::Server, &nested(MAX_DEPTH + 1)),
            CodecError::Malformed { .. }
        ));
        // Failed before the rest of the frame has come.
        assert!(matches!(
            decode_err(Side::Server, &b"*1\r\n".repeat(MAX_DEPTH + 1)),
            CodecError::Malformed { .. }
        ));
    }

    #[test]
    fn malformed_frames() {
        fn check(side: Side, input: &[u8]) {
            let err = decode_err(side, input);
            assert!(
                matches!(err, CodecError::Malformed { codec: "redis", .. }),
                "{:?}: {err}",
                input.escape_ascii().to_string()
            );
        }
        use Side::*;
        for reply in [
            b"$-2\r\n".as_slice(),
            b"$abc\r\n",
            b"$\r\n",
            b"$+3\r\nabc\r\n",
            b"$3\r\nfooXY",
            b"$3\r\nfoo\n",
            b"$3\nfoo\r\n",
            b"$12345678901234567890123456789012345",
            b"*2\r\n:1\r\n:x\r\n",
            b"*-2\r\n",
            b"*1x\r\n",
            b"%-1\r\n",
            b"|-1\r\n",
            b"|?\r\n",
            b">?\r\n",
            b"!-1\r\n",
            b"=3\r\ntxt\r\n",
            b"=4\r\ntxt \r\n",
            b"?\r\n",
            b"\r\n",
            b"OK\r\n",
            b":abc\r\n",
            b":\r\n",
            b":99999999999999999999\r\n",
            b"#x\r\n",
            b"_x\r\n",
            b",abc\r\n",
            b"(12a\r\n",
            b".\r\n",
            b"*1\r\n.\r\n",
            b";3\r\nabc\r\n",
            b"$?\r\n+x\r\n",
            b"$?\r\n;-1\r\n",
            b"*?\r\n.x\r\n",
        ] {
            check(Server, reply);
        }
        for command in [
            b"*1\r\n:1\r\n".as_slice(),
            b"*1\r\n$-1\r\n",
            b"*1\r\n$?\r\n",
            b"*?\r\n",
            b"*x\r\n",
            b"*-2\r\n",
            b"*1\r\n*1\r\n",
            b"*1\r\n$3\r\nGETxx",
            b"*1\r\n$3\r\nGET\n",
            b"\"unbalanced\r\n",
            b"get 'k\r\n",
            b"get \"k\"v\r\n",
            b"get 'k'v\r\n",
        ] {
            check(Client, command);
        }
    }

    #[test]
    fn too_large_frames() {
        fn check(side: Side, input: &[u8]) {
            let err = decode_err(side, input);
            assert!(
                matches!(
                    err,
                    CodecError::TooLarge {
                        codec: "redis",
                        max: MAX_FRAME,
                        ..
                    }
                ),
                "{:?}: {err}",
                input.escape_ascii().to_string()
            );
        }
        check(Side::Server, format!("${}\r\n", MAX_FRAME).as_bytes());
        check(Side::Server, b"$9999999999999999999\r\n");
        check(Side::Server, format!("*{}\r\n", MAX_FRAME / 3).as_bytes());
        check(Side::Server, format!("%{}\r\n", MAX_FRAME / 4).as_bytes());
        check(
            Side::Client,
            format!("*2\r\n$3\r\nSET\r\n${}\r\n", MAX_FRAME).as_bytes(),
        );
        // A line that never ends.
        check(
            Side::Server,
            &[b"+".as_slice(), &vec![b'a'; MAX_FRAME]].concat(),
        );

        // A frame of exactly MAX_FRAME bytes is fine.
        let len = MAX_FRAME - "$16777203\r\n".len() - 2;
        let mut exact = format!("${len}\r\n").into_bytes();
        exact.resize(exact.len() + len, b'x');
        exact.extend_from_slice(b"\r\n");
        assert_eq!(exact.len(), MAX_FRAME);
        assert_eq!(decode_one(Side::Server, &exact).bytes.len(), MAX_FRAME);
    }

    /// Decodes `line` both inline and as an array of bulk strings: both must give `command`,
    /// `key` and `session`.
    fn check_command(line: &str, command: &str, key: Option<&str>, session: Session) {
        let words: Vec<&str> = line.split(' ').collect();
        for input in [format!("{line}\r\n").into_bytes(), resp(&words)] {
            let frame = decode_one(Side::Client, &input);
            assert_eq!(frame.kind, Kind::Request);
            assert_eq!(frame.get("command"), Some(command), "{line}");
            assert_eq!(frame.method(), Some(command), "{line}");
            assert_eq!(frame.get("key"), key, "{line}");
            assert_eq!(frame.session, session, "{line}");
            let want = 1 + usize::from(key.is_some());
            assert_eq!(frame.metadata.iter().count(), want, "{line}");
        }
    }

    #[test]
    fn command_and_first_key() {
        use Session::None as Free;
        for (line, command, key) in [
            ("get user:1", "GET", Some("user:1")),
            ("Set k v EX 10", "SET", Some("k")),
            ("SETEX k 10 v", "SETEX", Some("k")),
            ("incrby n 2", "INCRBY", Some("n")),
            ("MGET a b c", "MGET", Some("a")),
            ("MSET a 1 b 2", "MSET", Some("a")),
            ("DEL a b", "DEL", Some("a")),
            ("EXPIRE k 10", "EXPIRE", Some("k")),
            ("HSET h f v", "HSET", Some("h")),
            ("HGETALL h", "HGETALL", Some("h")),
            ("LPUSH l a b", "LPUSH", Some("l")),
            ("LRANGE l 0 -1", "LRANGE", Some("l")),
            ("RPOPLPUSH src dst", "RPOPLPUSH", Some("src")),
            ("LMOVE src dst LEFT RIGHT", "LMOVE", Some("src")),
            ("SADD s m", "SADD", Some("s")),
            ("ZADD z 1 m", "ZADD", Some("z")),
            ("ZRANGEBYSCORE z 0 10", "ZRANGEBYSCORE", Some("z")),
            ("XADD s * f v", "XADD", Some("s")),
            ("PFCOUNT h1 h2", "PFCOUNT", Some("h1")),
            ("SETBIT b 7 1", "SETBIT", Some("b")),
            ("DUMP k", "DUMP", Some("k")),
            ("RENAME a b", "RENAME", Some("a")),
            ("SORT l LIMIT 0 5", "SORT", Some("l")),
            ("BITOP AND dst a b", "BITOP", Some("dst")),
            ("ZUNIONSTORE dst 2 a b", "ZUNIONSTORE", Some("dst")),
            ("LMPOP 2 a b LEFT", "LMPOP", Some("a")),
            ("EVAL script 2 k1 k2 arg", "EVAL", Some("k1")),
            ("evalsha sha 1 k1", "EVALSHA", Some("k1")),
            ("FCALL f 1 k", "FCALL", Some("k")),
            ("EVAL script 0 arg", "EVAL", None),
            ("EVAL script -1 k", "EVAL", None),
            ("EVAL script x k", "EVAL", None),
            ("EVAL script 1", "EVAL", None),
            ("XREAD COUNT 2 STREAMS s1 s2 0 0", "XREAD", Some("s1")),
            (
                "XREADGROUP GROUP g streams COUNT 1 STREAMS s >",
                "XREADGROUP",
                Some("s"),
            ),
            ("XREAD COUNT 2", "XREAD", None),
            ("GET", "GET", None),
            ("PING", "PING", None),
            ("INFO memory", "INFO", None),
            ("CONFIG GET maxmemory", "CONFIG", None),
            ("OBJECT ENCODING k", "OBJECT", None),
            ("XINFO STREAM s", "XINFO", None),
            ("SCAN 0 MATCH user:*", "SCAN", None),
            ("PUBLISH ch hi", "PUBLISH", None),
        ] {
            check_command(line, command, key, Free);
        }
    }

    #[test]
    fn key_value_is_lossy_and_cut() {
        let key = "k".repeat(300);
        let frame = decode_one(Side::Client, &resp(&["GET", &key]));
        assert_eq!(frame.get("key"), Some(&key[..MAX_KEY]));

        // A char that would cross the limit is left out whole.
        let key = format!("{}é", "k".repeat(MAX_KEY - 1));
        let frame = decode_one(Side::Client, &resp(&["GET", &key]));
        assert_eq!(frame.get("key"), Some(&key[..MAX_KEY - 1]));

        let frame = decode_one(Side::Client, b"*2\r\n$3\r\nget\r\n$3\r\na\xffb\r\n");
        assert_eq!(frame.get("key"), Some("a\u{fffd}b"));

        let name = "x".repeat(100);
        let frame = decode_one(Side::Client, format!("{name}\r\n").as_bytes());
        assert_eq!(frame.get("command"), Some(&"X".repeat(MAX_COMMAND)[..]));
    }

    #[test]
    fn sessions() {
        use Session::{Pin, Stream};
        for (line, command, key, session) in [
            ("MULTI", "MULTI", None, Pin),
            ("EXEC", "EXEC", None, Pin),
            ("DISCARD", "DISCARD", None, Pin),
            ("WATCH a b", "WATCH", Some("a"), Pin),
            ("SELECT 2", "SELECT", None, Pin),
            ("AUTH user pass", "AUTH", None, Pin),
            ("HELLO 3", "HELLO", None, Pin),
            ("CLIENT SETNAME app", "CLIENT", None, Pin),
            ("client id", "CLIENT", None, Pin),
            ("READONLY", "READONLY", None, Pin),
            ("READWRITE", "READWRITE", None, Pin),
            ("RESET", "RESET", None, Pin),
            ("QUIT", "QUIT", None, Pin),
            ("BLPOP a b 0", "BLPOP", Some("a"), Pin),
            ("BRPOP a 0", "BRPOP", Some("a"), Pin),
            ("BLMOVE a b LEFT LEFT 0", "BLMOVE", Some("a"), Pin),
            ("BRPOPLPUSH a b 0", "BRPOPLPUSH", Some("a"), Pin),
            ("BZPOPMIN z 0", "BZPOPMIN", Some("z"), Pin),
            ("BZPOPMAX z 0", "BZPOPMAX", Some("z"), Pin),
            ("BLMPOP 0 1 a LEFT", "BLMPOP", Some("a"), Pin),
            ("BZMPOP 0 1 z MIN", "BZMPOP", Some("z"), Pin),
            ("WAIT 1 0", "WAIT", None, Pin),
            ("WAITAOF 1 0 0", "WAITAOF", None, Pin),
            ("XREAD BLOCK 0 STREAMS s $", "XREAD", Some("s"), Pin),
            (
                "xread count 1 block 100 streams s $",
                "XREAD",
                Some("s"),
                Pin,
            ),
            (
                "XREAD STREAMS BLOCK 0",
                "XREAD",
                Some("BLOCK"),
                Session::None,
            ),
            (
                "XREADGROUP GROUP g c BLOCK 0 STREAMS s >",
                "XREADGROUP",
                Some("s"),
                Pin,
            ),
            (
                "XREADGROUP GROUP BLOCK c STREAMS s >",
                "XREADGROUP",
                Some("s"),
                Session::None,
            ),
            (
                "XREAD COUNT 1 STREAMS s 0",
                "XREAD",
                Some("s"),
                Session::None,
            ),
            ("SUBSCRIBE a b", "SUBSCRIBE", None, Stream),
            ("PSUBSCRIBE news.*", "PSUBSCRIBE", None, Stream),
            ("SSUBSCRIBE a", "SSUBSCRIBE", None, Stream),
            ("MONITOR", "MONITOR", None, Stream),
            ("GET k", "GET", Some("k"), Session::None),
            ("UNWATCH", "UNWATCH", None, Session::None),
            ("SWAPDB 0 1", "SWAPDB", None, Session::None),
        ] {
            check_command(line, command, key, session);
        }
    }

    /// Encodes `input`'s frame after setting its `key` to `key`.
    fn rewrite(input: &[u8], key: &str) -> BytesMut {
        let mut codec = codec(Side::Server);
        let mut frame = decode_one(Side::Client, input);
        frame.metadata.set("key", key);
        let mut dst = BytesMut::new();
        codec.encode(&frame, &mut dst).unwrap();
        dst
    }

    #[test]
    fn encode_rewrites_a_changed_key() {
        assert_eq!(
            rewrite(&resp(&["SET", "k", "v"]), "tenant:k"),
            resp(&["SET", "tenant:k", "v"])
        );
        // Inline commands are written back as arrays, the command's spelling kept.
        assert_eq!(rewrite(b"get \"a b\"\r\n", "c d"), resp(&["get", "c d"]));
        // Only the first key: the others are not written back.
        assert_eq!(
            rewrite(&resp(&["MSET", "a", "1", "b", "2"]), "x"),
            resp(&["MSET", "x", "1", "b", "2"])
        );
        assert_eq!(
            rewrite(&resp(&["EVAL", "s", "2", "k1", "k2", "a"]), "x"),
            resp(&["EVAL", "s", "2", "x", "k2", "a"])
        );
        assert_eq!(
            rewrite(&resp(&["XREAD", "STREAMS", "s", "0"]), "x"),
            resp(&["XREAD", "STREAMS", "x", "0"])
        );
        // A command without a key is written as it came.
        assert_eq!(rewrite(b"PING\r\n", "x"), "PING\r\n");
        assert_eq!(
            rewrite(&resp(&["EVAL", "s", "0"]), "x"),
            resp(&["EVAL", "s", "0"])
        );
    }

    #[test]
    fn encode_copies_unchanged_frames() {
        let mut codec = codec(Side::Server);
        for input in COMMANDS {
            let mut frame = decode_one(Side::Client, input);
            frame.metadata.set("command", "OTHER");
            let mut dst = BytesMut::new();
            codec.encode(&frame, &mut dst).unwrap();
            assert_eq!(dst, input);
        }
        let mut codec = Redis.codec(Side::Client);
        for input in REPLIES {
            let frame = decode_one(Side::Server, input);
            let mut dst = BytesMut::new();
            codec.encode(&frame, &mut dst).unwrap();
            assert_eq!(dst, input);
        }
    }

    #[test]
    fn local_reply_is_an_err() {
        let codec = codec(Side::Client);
        let request = decode_one(Side::Client, b"GET k\r\n");
        for (error, want) in [
            (
                LocalError::NoRoute,
                "-ERR mesh: no route has a usable backend\r\n",
            ),
            (
                LocalError::NoEndpoints(Arc::from("cache.default.svc:6379")),
                "-ERR mesh: no endpoints for cache.default.svc:6379\r\n",
            ),
            (LocalError::RateLimited, "-ERR mesh: rate limited\r\n"),
            (LocalError::Timeout, "-ERR mesh: timed out\r\n"),
            (
                LocalError::Unavailable("reset\r\nby peer\n".into()),
                "-ERR mesh: upstream unavailable: resetby peer\r\n",
            ),
            (LocalError::Unauthorized, "-ERR mesh: unauthorized\r\n"),
        ] {
            let reply = codec.local_reply(&request, &error).unwrap();
            assert_eq!(reply.kind, Kind::Error);
            assert_eq!(reply.id, None);
            assert_eq!(reply.bytes, want);
            // A client reads it as an error reply.
            assert_eq!(decode_one(Side::Server, &reply.bytes).kind, Kind::Error);
        }
    }

    #[test]
    fn key_patterns() {
        for (key, want) in [
            ("user:42", "user:*"),
            ("user:42:name", "user:*"),
            (":x", ":*"),
            ("user:", "user:*"),
            ("counter", "counter"),
            ("", ""),
        ] {
            assert_eq!(key_pattern(key), want, "{key}");
        }
        let long = "é".repeat(100);
        assert_eq!(key_pattern(&long), "é".repeat(MAX_PATTERN));
        assert_eq!(
            key_pattern(&format!("{long}:1")),
            format!("{}*", "é".repeat(MAX_PATTERN))
        );
    }

    /// Decodes `input` to its end, checking what any decode must do: a frame is bytes taken
    /// off the front, and nothing is consumed when more bytes are needed. The frames, and
    /// whether decoding ended in an error.
    fn decode_checked(side: Side, input: &[u8]) -> (Vec<Bytes>, bool) {
        let mut codec = codec(side);
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        loop {
            let before = buf.clone();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(!frame.bytes.is_empty());
                    let taken = before.len() - buf.len();
                    assert!(taken >= frame.bytes.len());
                    assert_eq!(&before[taken - frame.bytes.len()..taken], &frame.bytes[..]);
                    frames.push(frame.bytes);
                }
                Ok(None) => {
                    assert_eq!(buf, before);
                    return (frames, false);
                }
                Err(_) => return (frames, true),
            }
        }
    }

    /// As [`decode_checked`], given `input` one byte at a time.
    fn decode_bytewise(side: Side, input: &[u8]) -> (Vec<Bytes>, bool) {
        let mut codec = codec(side);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for &byte in input {
            buf.extend_from_slice(&[byte]);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame.bytes),
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
        }
        (frames, false)
    }

    #[test]
    fn random_and_damaged_bytes_never_panic_and_decode_alike_in_any_chunks() {
        const ALPHABET: &[u8] = b"*$:+-_,#!=(%~>|;.?\r\n\r\n0123456789-1 \"'\\xatf";
        let mut rng = fastrand::Rng::with_seed(0x7e5b);
        let samples: Vec<&[u8]> = COMMANDS.iter().chain(REPLIES).copied().collect();
        let byte = |rng: &mut fastrand::Rng| {
            if rng.u8(..) < 220 {
                ALPHABET[rng.usize(..ALPHABET.len())]
            } else {
                rng.u8(..)
            }
        };
        for round in 0..30_000 {
            let input: Vec<u8> = match round % 3 {
                0 => (0..rng.usize(0..64)).map(|_| byte(&mut rng)).collect(),
                1 => {
                    let sample = samples[rng.usize(..samples.len())];
                    sample[..rng.usize(0..=sample.len())].to_vec()
                }
                _ => {
                    let mut input: Vec<u8> = (0..rng.usize(1..4))
                        .flat_map(|_| samples[rng.usize(..samples.len())].iter().copied())
                        .collect();
                    for _ in 0..rng.usize(1..4) {
                        let at = rng.usize(..input.len());
                        match rng.usize(0..3) {
                            0 => input[at] = byte(&mut rng),
                            1 => input.insert(at, byte(&mut rng)),
                            _ => {
                                input.remove(at);
                            }
                        }
                        if input.is_empty() {
                            break;
                        }
                    }
                    input
                }
            };
            for side in [Side::Client, Side::Server] {
                let whole = decode_checked(side, &input);
                assert_eq!(
                    decode_bytewise(side, &input),
                    whole,
                    "{side:?} {:?}",
                    input.escape_ascii().to_string()
                );
            }
        }
    }

    #[test]
    fn any_chunking_decodes_the_same_frames() {
        let mut rng = fastrand::Rng::with_seed(0xc0de);
        for (side, samples) in [(Side::Client, COMMANDS), (Side::Server, REPLIES)] {
            let input = samples.concat();
            let (whole, _) = decode_checked(side, &input);
            assert_eq!(whole.len(), samples.len());
            for _ in 0..200 {
                let mut codec = codec(side);
                let mut buf = BytesMut::new();
                let mut frames = Vec::new();
                let mut rest = &input[..];
                while !rest.is_empty() {
                    let (chunk, more) = rest.split_at(rng.usize(1..=rest.len().min(16)));
                    rest = more;
                    buf.extend_from_slice(chunk);
                    while let Some(frame) = codec.decode(&mut buf).unwrap() {
                        frames.push(frame.bytes);
                    }
                }
                assert_eq!(frames, whole);
                assert!(buf.is_empty());
            }
        }
    }
}
