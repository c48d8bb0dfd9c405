//! A small blocking Redis client for the codec tests (`tests/codec.rs`): commands written as
//! RESP arrays, replies read as RESP2 or RESP3 values, on a plain TCP connection that a test
//! opens from inside a pod (`Pod::run_in`). Enough to pipeline, hold a connection open across
//! calls, see a RESP3 map, or write bytes that are not RESP at all, which `redis-cli` cannot.
//!
//! ```no_run
//! # fn demo(pod: &mesh_cli::local::Pod) -> anyhow::Result<()> {
//! use mesh_tests::redis::{Conn, Value};
//! let reply = pod
//!     .run_in(|| Conn::connect("127.0.0.1:6379".parse()?)?.call(&["PING"]))
//!     .join()
//!     .expect("the client thread")?;
//! assert_eq!(reply, Value::Simple("PONG".into()));
//! # Ok(()) }
//! ```

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::TIMEOUT;

/// The longest bulk string or aggregate a reply may declare: more is a broken reply.
const MAX_LEN: i64 = 64 * 1024 * 1024;

/// A reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-ERR …` (and RESP3's `!` blob errors).
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$5\r\nhello`, and RESP3's verbatim strings (`=`), whose format prefix is dropped.
    Bulk(Vec<u8>),
    /// `*2 …`.
    Array(Vec<Value>),
    /// `$-1`, `*-1`, and RESP3's `_`.
    Nil,
    /// RESP3 `%`: key and value pairs, in the order sent.
    Map(Vec<(Value, Value)>),
    /// RESP3 `~`.
    Set(Vec<Value>),
    /// RESP3 `>`: what the server sends on its own (pub/sub messages in RESP3).
    Push(Vec<Value>),
    /// RESP3 `#t` / `#f`.
    Bool(bool),
    /// RESP3 `,` and `(`: doubles and big numbers, as sent.
    Number(String),
}

impl Value {
    /// A bulk string's text (lossy), or a simple string's; `None` otherwise.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// A bulk string of `text`: what a reply holding it compares equal to.
    pub fn bulk(text: &str) -> Value {
        Value::Bulk(text.as_bytes().to_vec())
    }
}

/// The RESP array of bulk strings that a client sends for `args`.
pub fn command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One client connection; every read and write times out after [`TIMEOUT`] unless
/// [`Conn::set_timeout`] says otherwise.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Connects to `addr` (from the calling thread's network namespace).
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let conn = Conn {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        };
        conn.set_timeout(TIMEOUT)?;
        Ok(conn)
    }

    /// How long a read or a write may block.
    pub fn set_timeout(&self, timeout: Duration) -> anyhow::Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    /// Sends one command and reads its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> anyhow::Result<Value> {
        self.send(args)?;
        self.read()
    }

    /// Sends one command without reading its reply.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> anyhow::Result<()> {
        self.write_raw(&command(args))
    }

    /// Writes `bytes` as they are: many commands at once (a pipeline), or bytes that are not
    /// RESP.
    pub fn write_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).context("writing to redis")
    }

    /// Reads the next reply.
    pub fn read(&mut self) -> anyhow::Result<Value> {
        read_value(&mut self.reader, 0)
    }

    /// Reads until the peer closes the connection and returns what came before; an error if it
    /// stays open past the timeout. A reset counts as closed.
    pub fn read_to_close(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => Ok(rest),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(rest),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "the connection is still open after {} bytes",
                    rest.len() + self.reader.buffer().len()
                )
            }),
        }
    }
}

/// Aggregates nest at most this deep.
const MAX_DEPTH: usize = 16;

fn read_value(r: &mut BufReader<TcpStream>, depth: usize) -> anyhow::Result<Value> {
    if depth > MAX_DEPTH {
        bail!("a reply nests deeper than {MAX_DEPTH}");
    }
    let line = read_line(r)?;
    if !line.is_char_boundary(1) {
        bail!("not a RESP reply: {line:?}");
    }
    let (kind, rest) = line.split_at(1);
    let len = || -> anyhow::Result<Option<usize>> {
        let n: i64 = rest
            .parse()
            .with_context(|| format!("a length in {line:?}"))?;
        match n {
            -1 => Ok(None),
            0..=MAX_LEN => Ok(Some(n as usize)),
            _ => bail!("a length out of range in {line:?}"),
        }
    };
    let items = |r: &mut BufReader<TcpStream>, n: usize| -> anyhow::Result<Vec<Value>> {
        (0..n).map(|_| read_value(r, depth + 1)).collect()
    };
    Ok(match kind {
        "+" => Value::Simple(rest.to_string()),
        "-" => Value::Error(rest.to_string()),
        ":" => Value::Int(rest.parse().with_context(|| format!("{line:?}"))?),
        "_" => Value::Nil,
        "#" => Value::Bool(rest == "t"),
        "," | "(" => Value::Number(rest.to_string()),
        "$" | "=" | "!" => match len()? {
            None => Value::Nil,
            Some(n) => {
                let mut bytes = vec![0; n + 2];
                r.read_exact(&mut bytes).context("reading a bulk string")?;
                if !bytes.ends_with(b"\r\n") {
                    bail!("a bulk string of {n} bytes does not end in CRLF");
                }
                bytes.truncate(n);
                match kind {
                    "!" => Value::Error(String::from_utf8_lossy(&bytes).into_owned()),
                    // A verbatim string starts with its format: `txt:`.
                    "=" if bytes.len() >= 4 => Value::Bulk(bytes[4..].to_vec()),
                    _ => Value::Bulk(bytes),
                }
            }
        },
        "*" | "~" | ">" => match len()? {
            None => Value::Nil,
            Some(n) => {
                let v = items(r, n)?;
                match kind {
                    "*" => Value::Array(v),
                    "~" => Value::Set(v),
                    _ => Value::Push(v),
                }
            }
        },
        "%" => match len()? {
            None => Value::Nil,
            Some(n) => {
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = read_value(r, depth + 1)?;
                    let v = read_value(r, depth + 1)?;
                    pairs.push((k, v));
                }
                Value::Map(pairs)
            }
        },
        // RESP3 attributes (`|`) come before the reply they describe: skip them.
        "|" => {
            let n = len()?.unwrap_or(0);
            items(r, 2 * n)?;
            read_value(r, depth)?
        }
        _ => bail!("not a RESP reply: {line:?}"),
    })
}

/// One line without its CRLF; an error at the end of the stream or on a line too long.
fn read_line(r: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .context("reading a reply")?;
    if n == 0 {
        bail!("the connection closed before a reply");
    }
    if !line.ends_with(b"\r\n") || line.len() < 3 {
        bail!(
            "a reply line that does not end in CRLF: {:?}",
            String::from_utf8_lossy(&line)
        );
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).context("a reply line that is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&["SET", "k", "v w"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv w\r\n"
        );
        assert_eq!(command::<&str>(&[]), b"*0\r\n");
    }

    /// Parses `bytes` as the replies a server sends on one connection.
    fn check(bytes: &'static [u8], expected: &[Value]) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut io, _) = listener.accept().unwrap();
            io.write_all(bytes).unwrap();
        });
        let mut conn = Conn::connect(addr).unwrap();
        for want in expected {
            assert_eq!(
                &conn.read().unwrap(),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        server.join().unwrap();
        assert!(conn.read().is_err(), "nothing more");
    }

    #[test]
    fn reads_resp2_and_resp3_replies() {
        use Value::*;
        check(b"+OK\r\n", &[Simple("OK".into())]);
        check(b"-ERR no\r\n", &[Error("ERR no".into())]);
        check(b":-3\r\n", &[Int(-3)]);
        check(b"$5\r\nhe\r\no\r\n$-1\r\n", &[Value::bulk("he\r\no"), Nil]);
        check(b"$0\r\n\r\n", &[Value::bulk("")]);
        check(
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n*-1\r\n",
            &[Array(vec![Value::bulk("a"), Array(vec![Int(1)])]), Nil],
        );
        check(
            b"%1\r\n$1\r\nk\r\n$1\r\nv\r\n",
            &[Map(vec![(Value::bulk("k"), Value::bulk("v"))])],
        );
        check(
            b"~1\r\n:2\r\n_\r\n#t\r\n,1.5\r\n",
            &[Set(vec![Int(2)]), Nil, Bool(true), Number("1.5".into())],
        );
        check(
            b">2\r\n$7\r\nmessage\r\n:1\r\n",
            &[Push(vec![Value::bulk("message"), Int(1)])],
        );
        check(b"=7\r\ntxt:abc\r\n", &[Value::bulk("abc")]);
        check(b"|1\r\n+a\r\n+b\r\n:7\r\n", &[Int(7)]);
    }

    #[test]
    fn broken_replies_are_errors() {
        for bytes in [
            &b"?\r\n"[..],
            b"$3\r\nabcd\r\n",
            b"$-7\r\n",
            b":x\r\n",
            b"+no end",
            b"*99999999999\r\n",
            "\u{e9}\r\n".as_bytes(),
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut io, _) = listener.accept().unwrap();
                io.write_all(bytes).unwrap();
            });
            let mut conn = Conn::connect(addr).unwrap();
            server.join().unwrap();
            assert!(
                conn.read().is_err(),
                "{:?} is not a reply",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
