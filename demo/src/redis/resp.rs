//! RESP2, Redis's wire protocol (<https://redis.io/docs/latest/develop/reference/protocol-spec/>):
//! the commands a client sends (arrays of bulk strings, or inline lines), the values a server
//! answers, and the bounds that keep both from growing without end.
//!
//! The parsers are incremental: given the bytes read so far they return a whole frame and its
//! length, `Ok(None)` when more bytes are needed, or an error that ends the connection. They
//! never panic, whatever the bytes.
//!
//! ```
//! use mesh_demo_app::redis::resp::{parse_command, Parsed};
//! let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n";
//! let Ok(Some((Parsed::Command(args), n))) = parse_command(input) else { panic!() };
//! assert_eq!(args, [&b"GET"[..], &b"k"[..]]);
//! assert_eq!(n, 20);
//! let Ok(Some((Parsed::Command(args), _))) = parse_command(&input[n..]) else { panic!() };
//! assert_eq!(args, [&b"PING"[..]]);
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// The largest request (one command with its arguments) or reply accepted: 1 MiB.
pub const MAX_FRAME: usize = 1024 * 1024;

/// How deep a reply's arrays may nest (a server's replies to the demo's commands nest once).
const MAX_DEPTH: usize = 8;

/// A frame that cannot be read: the connection that sent it is closed after the error is
/// answered, as Redis does. The messages are Redis's own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: invalid {0} line")]
    Line(&'static str),
    #[error("Protocol error: unexpected reply type '{0}'")]
    ReplyType(char),
    #[error("Protocol error: replies nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("Protocol error: frame larger than {MAX_FRAME} bytes")]
    TooLarge,
}

/// One frame read from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A command and its arguments (never empty).
    Command(Vec<Bytes>),
    /// An empty line or an empty array, which Redis skips.
    Nothing,
}

/// Reads one command from the start of `buf`: an array of bulk strings (`*2\r\n$3\r\nGET\r\n…`)
/// or, when `buf` does not start with `*`, an inline command (`GET key\r\n`, words split on
/// spaces, `"…"` and `'…'` quoting as redis-cli sends them).
pub fn parse_command(buf: &[u8]) -> Result<Option<(Parsed, usize)>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf);
    }
    let Some((line, mut pos)) = read_line(buf, 0, MAX_HEADER)? else {
        return Ok(None);
    };
    let count = integer(&line[1..]).ok_or(ProtocolError::MultibulkLength)?;
    if count <= 0 {
        return Ok(Some((Parsed::Nothing, pos)));
    }
    // Each argument takes at least 6 bytes (`$0\r\n\r\n`).
    let count = usize::try_from(count).map_err(|_| ProtocolError::MultibulkLength)?;
    if count > MAX_FRAME / 6 {
        return Err(ProtocolError::MultibulkLength);
    }
    let mut args = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let Some((line, after)) = read_line(buf, pos, MAX_HEADER)? else {
            return Ok(None);
        };
        if line[0] != b'$' {
            return Err(ProtocolError::ExpectedBulk(char::from(line[0])));
        }
        let len = integer(&line[1..])
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= MAX_FRAME)
            .ok_or(ProtocolError::BulkLength)?;
        let end = after + len;
        if end + 2 > MAX_FRAME {
            return Err(ProtocolError::TooLarge);
        }
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::BulkLength);
        }
        args.push(Bytes::copy_from_slice(&buf[after..end]));
        pos = end + 2;
    }
    Ok(Some((Parsed::Command(args), pos)))
}

/// An inline command: one line, `\n` or `\r\n` ended.
fn parse_inline(buf: &[u8]) -> Result<Option<(Parsed, usize)>, ProtocolError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_FRAME {
            return Err(ProtocolError::TooLarge);
        }
        return Ok(None);
    };
    if newline > MAX_FRAME {
        return Err(ProtocolError::TooLarge);
    }
    let text = &buf[..newline];
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let words = split_inline(text)?;
    let parsed = if words.is_empty() {
        Parsed::Nothing
    } else {
        Parsed::Command(words)
    };
    Ok(Some((parsed, newline + 1)))
}

/// Splits an inline command into words: blanks separate them; a word in double quotes takes
/// `\n`, `\r`, `\t`, `\\`, `\"` and `\xHH` escapes, one in single quotes only `\'`.
fn split_inline(text: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut word = Vec::new();
        match text[i] {
            quote @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&b) = text.get(i) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    i += 1;
                    if b == quote {
                        break;
                    }
                    if b != b'\\' || i >= text.len() {
                        word.push(b);
                        continue;
                    }
                    let e = text[i];
                    i += 1;
                    match (quote, e) {
                        (b'"', b'n') => word.push(b'\n'),
                        (b'"', b'r') => word.push(b'\r'),
                        (b'"', b't') => word.push(b'\t'),
                        (b'"', b'b') => word.push(0x08),
                        (b'"', b'a') => word.push(0x07),
                        (b'"', b'x') => match (text.get(i), text.get(i + 1)) {
                            (Some(&h), Some(&l))
                                if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() =>
                            {
                                word.push(hex(h) << 4 | hex(l));
                                i += 2;
                            }
                            _ => word.push(b'x'),
                        },
                        (b'"', e) | (b'\'', e @ b'\'') => word.push(e),
                        (_, e) => word.extend_from_slice(&[b'\\', e]),
                    }
                }
                // A closing quote must end the word.
                if text.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
            }
            _ => {
                while i < text.len() && !text[i].is_ascii_whitespace() {
                    word.push(text[i]);
                    i += 1;
                }
            }
        }
        words.push(Bytes::from(word));
    }
    Ok(words)
}

fn hex(b: u8) -> u8 {
    // Only called on ASCII hex digits.
    (char::from(b).to_digit(16).unwrap_or(0)) as u8
}

/// The longest header line (a type byte and a number): anything longer is garbage.
const MAX_HEADER: usize = 32;

/// The line starting at `from` (without its `\r\n`, never empty, at most `limit` bytes) and
/// where the next one starts; `None` until the whole line is there.
fn read_line(
    buf: &[u8],
    from: usize,
    limit: usize,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = buf.get(from..).unwrap_or_default();
    let window = &rest[..rest.len().min(limit)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(0) => Err(ProtocolError::Line("empty")),
        Some(n) => Ok(Some((&rest[..n], from + n + 2))),
        None if rest.len() >= limit => Err(ProtocolError::Line("header")),
        None => Ok(None),
    }
}

/// A RESP integer: an optional `-`, then digits, no more than an `i64` holds.
pub fn integer(s: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(s).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

// === values ===

/// A RESP2 value, as a server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`: a line of text.
    Simple(String),
    /// `-ERR …`: the first word is the error's kind.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nfoo`; `None` is the null bulk string `$-1`.
    Bulk(Option<Bytes>),
    /// `*2\r\n…`; `None` is the null array `*-1`.
    Array(Option<Vec<Value>>),
}

impl Value {
    pub fn ok() -> Value {
        Value::Simple("OK".into())
    }

    pub fn bulk(b: impl Into<Bytes>) -> Value {
        Value::Bulk(Some(b.into()))
    }

    pub fn error(message: impl Into<String>) -> Value {
        Value::Error(message.into())
    }

    /// Appends the value's encoding to `out`. Lines (simple strings and errors) lose any CR or
    /// LF, which would end them early.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Value::Simple(s) => put_line(out, b'+', s),
            Value::Error(s) => put_line(out, b'-', s),
            Value::Integer(n) => {
                out.put_u8(b':');
                out.put_slice(n.to_string().as_bytes());
                out.put_slice(b"\r\n");
            }
            Value::Bulk(None) => out.put_slice(b"$-1\r\n"),
            Value::Bulk(Some(b)) => {
                out.put_u8(b'$');
                out.put_slice(b.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Value::Array(None) => out.put_slice(b"*-1\r\n"),
            Value::Array(Some(items)) => {
                out.put_u8(b'*');
                out.put_slice(items.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

fn put_line(out: &mut BytesMut, kind: u8, text: &str) {
    out.put_u8(kind);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

/// Encodes a command as a client sends it: an array of bulk strings.
pub fn encode_command(args: &[&[u8]], out: &mut BytesMut) {
    out.put_u8(b'*');
    out.put_slice(args.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for arg in args {
        out.put_u8(b'$');
        out.put_slice(arg.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// Reads one reply from the start of `buf`, as a client does.
pub fn parse_value(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    let parsed = value_at(buf, 0, 0)?;
    if let Some((_, end)) = &parsed {
        if *end > MAX_FRAME {
            return Err(ProtocolError::TooLarge);
        }
    }
    Ok(parsed)
}

fn value_at(
    buf: &[u8],
    from: usize,
    depth: usize,
) -> Result<Option<(Value, usize)>, ProtocolError> {
    if from > MAX_FRAME {
        return Err(ProtocolError::TooLarge);
    }
    // Simple strings and errors are text lines of any length; the others, headers.
    let limit = match buf.get(from) {
        Some(b'+' | b'-') => MAX_FRAME,
        _ => MAX_HEADER,
    };
    let Some((line, after)) = read_line(buf, from, limit)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(&line[1..]).into_owned();
    let value = match line[0] {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Integer(integer(&line[1..]).ok_or(ProtocolError::Line("integer"))?),
        b'$' => {
            let len = integer(&line[1..]).ok_or(ProtocolError::BulkLength)?;
            if len == -1 {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&n| n <= MAX_FRAME)
                .ok_or(ProtocolError::BulkLength)?;
            let end = after + len;
            if end + 2 > MAX_FRAME {
                return Err(ProtocolError::TooLarge);
            }
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::BulkLength);
            }
            return Ok(Some((
                Value::Bulk(Some(Bytes::copy_from_slice(&buf[after..end]))),
                end + 2,
            )));
        }
        b'*' => {
            let count = integer(&line[1..]).ok_or(ProtocolError::MultibulkLength)?;
            if count == -1 {
                return Ok(Some((Value::Array(None), after)));
            }
            let count = usize::try_from(count)
                .ok()
                .filter(|&n| n <= MAX_FRAME / 3)
                .ok_or(ProtocolError::MultibulkLength)?;
            if depth >= MAX_DEPTH {
                return Err(ProtocolError::TooDeep);
            }
            let mut items = Vec::with_capacity(count.min(64));
            let mut pos = after;
            for _ in 0..count {
                let Some((item, next)) = value_at(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                pos = next;
            }
            return Ok(Some((Value::Array(Some(items)), pos)));
        }
        other => return Err(ProtocolError::ReplyType(char::from(other))),
    };
    Ok(Some((value, after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's outcome: the arguments (`None` for a skipped frame) and the length used;
    /// `Ok(None)` for "needs more".
    type Outcome<'a> = Result<Option<(Option<&'a [&'a str]>, usize)>, ProtocolError>;

    fn check_command(input: &[u8], expected: Outcome<'_>) {
        let got = parse_command(input).map(|o| {
            o.map(|(p, n)| {
                let args = match p {
                    Parsed::Command(args) => Some(
                        args.iter()
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect::<Vec<_>>(),
                    ),
                    Parsed::Nothing => None,
                };
                (args, n)
            })
        });
        let expected = expected.map(|o| {
            o.map(|(args, n)| {
                (
                    args.map(|a| a.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                    n,
                )
            })
        });
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(input));
    }

    #[test]
    fn multibulk_commands() {
        check_command(b"*1\r\n$4\r\nPING\r\n", Ok(Some((Some(&["PING"]), 14))));
        check_command(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nrest",
            Ok(Some((Some(&["SET", "k", ""]), 26))),
        );
        // Binary-safe: a bulk string may hold CR LF.
        check_command(
            b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n",
            Ok(Some((Some(&["ECHO", "a\r\nb"]), 24))),
        );
        check_command(b"*0\r\n", Ok(Some((None, 4))));
        check_command(b"*-1\r\n", Ok(Some((None, 5))));
    }

    #[test]
    fn partial_commands_need_more() {
        let whole = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for n in 0..whole.len() {
            check_command(&whole[..n], Ok(None));
        }
        check_command(whole, Ok(Some((Some(&["GET", "key"]), whole.len()))));
    }

    #[test]
    fn inline_commands() {
        check_command(b"PING\r\n", Ok(Some((Some(&["PING"]), 6))));
        check_command(b"PING\n", Ok(Some((Some(&["PING"]), 5))));
        check_command(
            b"  set  k   v \r\n",
            Ok(Some((Some(&["set", "k", "v"]), 15))),
        );
        check_command(b"\r\n", Ok(Some((None, 2))));
        check_command(b"PING", Ok(None));
        check_command(br#"SET "a b" 'c\'d' "\x41\n""#, Ok(None));
        check_command(
            b"SET \"a b\" 'c\\'d' \"\\x41\\n\"\n",
            Ok(Some((Some(&["SET", "a b", "c'd", "A\n"]), 26))),
        );
        check_command(b"SET \"a\n", Err(ProtocolError::UnbalancedQuotes));
        check_command(b"SET \"a\"b\n", Err(ProtocolError::UnbalancedQuotes));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        check_command(b"*x\r\n", Err(ProtocolError::MultibulkLength));
        check_command(b"*1x\r\n", Err(ProtocolError::MultibulkLength));
        check_command(b"*\r\n", Err(ProtocolError::MultibulkLength));
        check_command(b"*+1\r\n", Err(ProtocolError::MultibulkLength));
        check_command(
            b"*99999999999999999999\r\n",
            Err(ProtocolError::MultibulkLength),
        );
        check_command(b"*1000000\r\n", Err(ProtocolError::MultibulkLength));
        check_command(b"*1\r\n:1\r\n", Err(ProtocolError::ExpectedBulk(':')));
        check_command(b"*1\r\n$-1\r\n", Err(ProtocolError::BulkLength));
        check_command(b"*1\r\n$x\r\n", Err(ProtocolError::BulkLength));
        check_command(b"*1\r\n$3\r\nabcd\r\n", Err(ProtocolError::BulkLength));
        check_command(b"*1\r\n\r\n", Err(ProtocolError::Line("empty")));
        check_command(
            b"*1\r\n$1111111111111111111111111111111",
            Err(ProtocolError::Line("header")),
        );
        check_command(b"*1\r\n$2000000\r\n", Err(ProtocolError::BulkLength));
        check_command(b"*1\r\n$1048576\r\n", Err(ProtocolError::TooLarge));
        // Bytes at random, and every prefix of them: an answer, never a panic.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..64);
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| *rng.choice(b"*$:+-\r\n0123456789-x \"'\\").unwrap())
                .collect();
            if rng.bool() {
                bytes.insert(0, b'*');
            }
            for n in 0..=bytes.len() {
                let _ = parse_command(&bytes[..n]);
                let _ = parse_value(&bytes[..n]);
            }
        }
    }

    #[test]
    fn oversized_inline_requests_are_refused() {
        let long = vec![b'a'; MAX_FRAME + 1];
        check_command(&long, Err(ProtocolError::TooLarge));
        check_command(&long[..MAX_FRAME], Ok(None));
    }

    fn encoded(v: &Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        v.encode(&mut out);
        out.to_vec()
    }

    #[test]
    fn values_round_trip() {
        for (value, wire) in [
            (Value::ok(), &b"+OK\r\n"[..]),
            (Value::error("ERR no"), b"-ERR no\r\n"),
            (Value::Integer(-3), b":-3\r\n"),
            (Value::bulk("a\r\nb"), b"$4\r\na\r\nb\r\n"),
            (Value::Bulk(None), b"$-1\r\n"),
            (Value::Array(None), b"*-1\r\n"),
            (Value::Array(Some(vec![])), b"*0\r\n"),
            (
                Value::Array(Some(vec![
                    Value::bulk("f"),
                    Value::Integer(1),
                    Value::Array(Some(vec![Value::Bulk(None)])),
                ])),
                b"*3\r\n$1\r\nf\r\n:1\r\n*1\r\n$-1\r\n",
            ),
        ] {
            assert_eq!(encoded(&value), wire, "{value:?}");
            assert_eq!(parse_value(wire), Ok(Some((value, wire.len()))));
            for n in 0..wire.len() {
                assert_eq!(parse_value(&wire[..n]), Ok(None), "{wire:?}[..{n}]");
            }
        }
    }

    #[test]
    fn lines_cannot_be_broken_by_their_text() {
        assert_eq!(encoded(&Value::error("ERR a\r\nb")), b"-ERR a  b\r\n");
    }

    #[test]
    fn garbage_replies_are_errors() {
        assert_eq!(parse_value(b"!3\r\n"), Err(ProtocolError::ReplyType('!')));
        assert_eq!(parse_value(b":x\r\n"), Err(ProtocolError::Line("integer")));
        assert_eq!(parse_value(b"$-2\r\n"), Err(ProtocolError::BulkLength));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(parse_value(deep.as_bytes()), Err(ProtocolError::TooDeep));
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode_command(&[b"HINCRBY", b"votes", b":joy:", b"1"], &mut out);
        assert_eq!(
            &out[..],
            b"*4\r\n$7\r\nHINCRBY\r\n$5\r\nvotes\r\n$5\r\n:joy:\r\n$1\r\n1\r\n"
        );
        let (parsed, n) = parse_command(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(
            parsed,
            Parsed::Command(vec![
                Bytes::from_static(b"HINCRBY"),
                Bytes::from_static(b"votes"),
                Bytes::from_static(b":joy:"),
                Bytes::from_static(b"1"),
            ])
        );
    }
}
