//! The server: an in-memory keyspace of strings and hashes, the commands the demo (and
//! `redis-cli`) use, and the accept loop. Each connection is a task that answers every whole
//! command it has read, in order, with one write per batch (pipelining); a request larger than
//! [`MAX_FRAME`] or bytes that are no command are answered with an error and the connection is
//! closed, as Redis does.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::resp::{self, Parsed, Value, MAX_FRAME};
use crate::net::DRAIN_TIMEOUT;

/// The version `HELLO` reports.
const VERSION: &str = "7.0.0";

/// Answers are written once this much has piled up, even in the middle of a pipeline.
const WRITE_AT: usize = 64 * 1024;

/// Serves the keyspace on `listener` until `shutdown` completes; then stops accepting, lets
/// each connection finish the commands it has read, and closes them (waiting at most
/// [`DRAIN_TIMEOUT`]).
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let store = Arc::new(Store::new());
    let (stop, stopped) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (store, stopped) = (store.clone(), stopped.clone());
                    conns.spawn(async move {
                        if let Err(e) = connection(stream, &store, stopped).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: wait a
                    // little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "connections still open after the drain timeout");
        conns.abort_all();
    }
}

/// Serves one connection until the client leaves, sends garbage or `QUIT`, or the server stops.
async fn connection(
    mut stream: TcpStream,
    store: &Store,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut session = Session::new(store.next_client_id());
    let mut input = BytesMut::with_capacity(4096);
    let mut output = BytesMut::new();
    loop {
        let mut close = false;
        loop {
            match resp::parse_command(&input) {
                Ok(Some((parsed, n))) => {
                    input.advance(n);
                    let Parsed::Command(args) = parsed else {
                        continue;
                    };
                    let (value, next) = store.execute(&mut session, &args, Instant::now());
                    value.encode(&mut output);
                    if next == Next::Close {
                        close = true;
                        break;
                    }
                    if output.len() >= WRITE_AT {
                        stream.write_all(&output).await?;
                        output.clear();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "closing a connection that sent no command");
                    Value::error(format!("ERR {e}")).encode(&mut output);
                    close = true;
                    break;
                }
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if close {
            return stream.shutdown().await;
        }
        // The parser refuses a command before it grows past the bound; this is the backstop.
        if input.len() > MAX_FRAME {
            return Ok(());
        }
        input.reserve(16 * 1024);
        tokio::select! {
            read = stream.read_buf(&mut input) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            _ = stopped.changed() => return stream.shutdown().await,
        }
    }
}

// === impl Store ===

/// The keyspace (one database, number 0) and the server's counters.
pub struct Store {
    keys: Mutex<HashMap<Bytes, Entry>>,
    next_id: AtomicI64,
}

struct Entry {
    data: Data,
    /// When the key stops existing; checked on every access.
    expires: Option<Instant>,
}

enum Data {
    String(Bytes),
    Hash(HashMap<Bytes, Bytes>),
}

/// One connection's state.
pub struct Session {
    id: i64,
    name: Option<Bytes>,
}

impl Session {
    pub fn new(id: i64) -> Session {
        Session { id, name: None }
    }
}

/// What the connection does after answering a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Close,
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const SYNTAX: &str = "ERR syntax error";

impl Default for Store {
    fn default() -> Store {
        Store::new()
    }
}

impl Store {
    pub fn new() -> Store {
        Store {
            keys: Mutex::new(HashMap::new()),
            next_id: AtomicI64::new(1),
        }
    }

    pub fn next_client_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs one command (`args[0]`, any case) at time `now`: its answer, and whether the
    /// connection goes on. `args` is never empty (the parser says so).
    pub fn execute(&self, session: &mut Session, args: &[Bytes], now: Instant) -> (Value, Next) {
        let Some(name) = args.first() else {
            return (Value::error("ERR empty command"), Next::Continue);
        };
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = match (name.as_str(), arity(&name)) {
            (_, None) => unknown(args),
            (_, Some(n))
                if (n >= 0 && args.len() != n.unsigned_abs()) || args.len() < n.unsigned_abs() =>
            {
                Value::error(format!(
                    "ERR wrong number of arguments for '{name}' command"
                ))
            }
            ("quit", _) => return (Value::ok(), Next::Close),
            ("ping", _) => match args.len() {
                1 => Value::Simple("PONG".into()),
                2 => Value::Bulk(Some(args[1].clone())),
                _ => Value::error("ERR wrong number of arguments for 'ping' command"),
            },
            ("echo", _) => Value::Bulk(Some(args[1].clone())),
            ("hello", _) => hello(session, &args[1..]),
            ("command", _) => Value::Array(Some(Vec::new())),
            ("client", _) => client(session, args),
            ("select", _) => match int_arg(&args[1]) {
                Some(0) => Value::ok(),
                Some(_) => Value::error("ERR DB index is out of range"),
                None => Value::error(NOT_AN_INTEGER),
            },
            _ => self.keyspace(&name, args, now),
        };
        (value, Next::Continue)
    }

    /// The commands that read or write keys.
    fn keyspace(&self, name: &str, args: &[Bytes], now: Instant) -> Value {
        // The lock is only held while a command runs; a poisoned map is still a valid map.
        let mut guard = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let keys = &mut *guard;
        match name {
            "get" => match live(keys, &args[1], now).map(|e| &e.data) {
                None => Value::Bulk(None),
                Some(Data::String(s)) => Value::Bulk(Some(s.clone())),
                Some(Data::Hash(_)) => Value::error(WRONGTYPE),
            },
            "set" => {
                let options = match SetOptions::parse(&args[3..], now) {
                    Ok(o) => o,
                    Err(e) => return e,
                };
                let exists = live(keys, &args[1], now).is_some();
                if (options.nx && exists) || (options.xx && !exists) {
                    return Value::Bulk(None);
                }
                keys.insert(
                    args[1].clone(),
                    Entry {
                        data: Data::String(args[2].clone()),
                        expires: options.expires,
                    },
                );
                Value::ok()
            }
            "del" | "exists" => {
                let mut n = 0;
                for key in &args[1..] {
                    if live(keys, key, now).is_some() {
                        n += 1;
                        if name == "del" {
                            keys.remove(key);
                        }
                    }
                }
                Value::Integer(n)
            }
            "incr" | "incrby" => {
                let by = match args.get(2).map(|a| int_arg(a)) {
                    None => 1,
                    Some(Some(n)) => n,
                    Some(None) => return Value::error(NOT_AN_INTEGER),
                };
                let current = match live(keys, &args[1], now) {
                    None => 0,
                    Some(Entry {
                        data: Data::String(s),
                        ..
                    }) => match int_arg(s) {
                        Some(n) => n,
                        None => return Value::error(NOT_AN_INTEGER),
                    },
                    Some(_) => return Value::error(WRONGTYPE),
                };
                let Some(n) = current.checked_add(by) else {
                    return Value::error(OVERFLOW);
                };
                let data = Data::String(Bytes::from(n.to_string()));
                match live(keys, &args[1], now) {
                    // INCR keeps the key's time to live.
                    Some(entry) => entry.data = data,
                    None => {
                        keys.insert(
                            args[1].clone(),
                            Entry {
                                data,
                                expires: None,
                            },
                        );
                    }
                }
                Value::Integer(n)
            }
            "hincrby" => {
                let Some(by) = int_arg(&args[3]) else {
                    return Value::error(NOT_AN_INTEGER);
                };
                let hash = match hash_mut(keys, &args[1], now) {
                    Ok(h) => h,
                    Err(e) => return e,
                };
                let current = match hash.get(&args[2]) {
                    None => 0,
                    Some(v) => match int_arg(v) {
                        Some(n) => n,
                        None => return Value::error("ERR hash value is not an integer"),
                    },
                };
                let Some(n) = current.checked_add(by) else {
                    return Value::error(OVERFLOW);
                };
                hash.insert(args[2].clone(), Bytes::from(n.to_string()));
                Value::Integer(n)
            }
            "hset" => {
                let pairs = args[2..].chunks_exact(2);
                if !pairs.remainder().is_empty() {
                    return Value::error("ERR wrong number of arguments for 'hset' command");
                }
                let hash = match hash_mut(keys, &args[1], now) {
                    Ok(h) => h,
                    Err(e) => return e,
                };
                let mut added = 0;
                for pair in pairs {
                    if hash.insert(pair[0].clone(), pair[1].clone()).is_none() {
                        added += 1;
                    }
                }
                Value::Integer(added)
            }
            "hget" => match live(keys, &args[1], now).map(|e| &e.data) {
                None => Value::Bulk(None),
                Some(Data::Hash(h)) => Value::Bulk(h.get(&args[2]).cloned()),
                Some(Data::String(_)) => Value::error(WRONGTYPE),
            },
            "hgetall" => match live(keys, &args[1], now).map(|e| &e.data) {
                None => Value::Array(Some(Vec::new())),
                Some(Data::Hash(h)) => Value::Array(Some(
                    h.iter()
                        .flat_map(|(f, v)| {
                            [Value::Bulk(Some(f.clone())), Value::Bulk(Some(v.clone()))]
                        })
                        .collect(),
                )),
                Some(Data::String(_)) => Value::error(WRONGTYPE),
            },
            "flushall" => match args.get(1).map(|a| a.to_ascii_lowercase()) {
                None => {
                    keys.clear();
                    Value::ok()
                }
                Some(mode) if mode == b"sync" || mode == b"async" => {
                    keys.clear();
                    Value::ok()
                }
                Some(_) => Value::error(SYNTAX),
            },
            // `arity` names no other command.
            _ => unknown(args),
        }
    }
}

/// The arity of a known command, as Redis counts it (the name included): `n` exactly, or at
/// least `-n`.
fn arity(name: &str) -> Option<isize> {
    Some(match name {
        "ping" | "hello" | "command" | "quit" | "flushall" => -1,
        "echo" | "get" | "incr" | "hgetall" | "select" => 2,
        "incrby" | "hget" => 3,
        "hincrby" => 4,
        "set" => -3,
        "del" | "exists" | "client" => -2,
        "hset" => -4,
        _ => return None,
    })
}

/// Redis's answer to a command it does not know.
fn unknown(args: &[Bytes]) -> Value {
    let mut message = format!(
        "ERR unknown command '{}', with args beginning with: ",
        printable(&args[0])
    );
    for arg in args.iter().skip(1) {
        if message.len() > 256 {
            break;
        }
        message.push_str(&format!("'{}' ", printable(arg)));
    }
    Value::error(message)
}

/// At most 128 bytes of an argument, fit for an error line.
fn printable(arg: &[u8]) -> String {
    arg.iter()
        .take(128)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// An integer argument or stored value, spelled as Redis spells integers (no sign but `-`,
/// no leading zeros, no blanks).
fn int_arg(arg: &[u8]) -> Option<i64> {
    let n = resp::integer(arg)?;
    (n.to_string().as_bytes() == arg).then_some(n)
}

/// The entry at `key`, unless it has expired (then it is removed).
fn live<'a>(
    keys: &'a mut HashMap<Bytes, Entry>,
    key: &Bytes,
    now: Instant,
) -> Option<&'a mut Entry> {
    if keys
        .get(key)
        .is_some_and(|e| e.expires.is_some_and(|t| t <= now))
    {
        keys.remove(key);
    }
    keys.get_mut(key)
}

/// The hash at `key`, made if the key does not exist.
fn hash_mut<'a>(
    keys: &'a mut HashMap<Bytes, Entry>,
    key: &Bytes,
    now: Instant,
) -> Result<&'a mut HashMap<Bytes, Bytes>, Value> {
    live(keys, key, now);
    let entry = keys.entry(key.clone()).or_insert_with(|| Entry {
        data: Data::Hash(HashMap::new()),
        expires: None,
    });
    match &mut entry.data {
        Data::Hash(h) => Ok(h),
        Data::String(_) => Err(Value::error(WRONGTYPE)),
    }
}

/// `SET key value [NX|XX] [EX seconds|PX milliseconds]`.
struct SetOptions {
    nx: bool,
    xx: bool,
    expires: Option<Instant>,
}

impl SetOptions {
    fn parse(args: &[Bytes], now: Instant) -> Result<SetOptions, Value> {
        let mut options = SetOptions {
            nx: false,
            xx: false,
            expires: None,
        };
        let mut i = 0;
        while i < args.len() {
            match args[i].to_ascii_lowercase().as_slice() {
                b"nx" if !options.xx => options.nx = true,
                b"xx" if !options.nx => options.xx = true,
                unit @ (b"ex" | b"px") if options.expires.is_none() => {
                    let n = args
                        .get(i + 1)
                        .ok_or_else(|| Value::error(SYNTAX))?
                        .as_ref();
                    let n = int_arg(n).ok_or_else(|| Value::error(NOT_AN_INTEGER))?;
                    let millis = if unit == b"ex" {
                        n.checked_mul(1000)
                    } else {
                        Some(n)
                    };
                    let ttl = millis
                        .filter(|&ms| ms > 0)
                        .and_then(|ms| now.checked_add(Duration::from_millis(ms.unsigned_abs())));
                    let Some(at) = ttl else {
                        return Err(Value::error("ERR invalid expire time in 'set' command"));
                    };
                    options.expires = Some(at);
                    i += 1;
                }
                _ => return Err(Value::error(SYNTAX)),
            }
            i += 1;
        }
        Ok(options)
    }
}

/// `HELLO [protover [AUTH username password] [SETNAME name]]`: RESP2 only, so the server's
/// description comes as a flat array of names and values (what RESP3 would send as a map).
fn hello(session: &mut Session, args: &[Bytes]) -> Value {
    if let Some(version) = args.first() {
        match int_arg(version) {
            Some(2) => {}
            Some(_) => return Value::error("NOPROTO unsupported protocol version"),
            None => return Value::error("ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut i = 1;
    let mut name = None;
    while i < args.len() {
        match args[i].to_ascii_lowercase().as_slice() {
            // No passwords here: any credentials are accepted, as Redis's default user does.
            b"auth" if i + 2 < args.len() => i += 3,
            b"setname" if i + 1 < args.len() => {
                name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return Value::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    printable(&args[i])
                ))
            }
        }
    }
    if let Some(name) = name {
        if let Err(e) = set_name(session, name) {
            return e;
        }
    }
    let text = |s: &str| Value::bulk(Bytes::copy_from_slice(s.as_bytes()));
    Value::Array(Some(vec![
        text("server"),
        text("redis"),
        text("version"),
        text(VERSION),
        text("proto"),
        Value::Integer(2),
        text("id"),
        Value::Integer(session.id),
        text("mode"),
        text("standalone"),
        text("role"),
        text("master"),
        text("modules"),
        Value::Array(Some(Vec::new())),
    ]))
}

/// `CLIENT SETNAME | GETNAME | ID | SETINFO`.
fn client(session: &mut Session, args: &[Bytes]) -> Value {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let wrong = || {
        Value::error(format!(
            "ERR wrong number of arguments for 'client|{sub}' command"
        ))
    };
    match sub.as_str() {
        "setname" if args.len() == 3 => match set_name(session, args[2].clone()) {
            Ok(()) => Value::ok(),
            Err(e) => e,
        },
        "getname" if args.len() == 2 => Value::Bulk(session.name.clone()),
        "id" if args.len() == 2 => Value::Integer(session.id),
        // Client libraries announce themselves (LIB-NAME, LIB-VER): noted, not kept.
        "setinfo" if args.len() == 4 => Value::ok(),
        "setname" | "getname" | "id" | "setinfo" => wrong(),
        _ => Value::error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            printable(&args[1])
        )),
    }
}

fn set_name(session: &mut Session, name: Bytes) -> Result<(), Value> {
    if name.iter().any(|&b| !(0x21..0x7f).contains(&b)) {
        return Err(Value::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    session.name = (!name.is_empty()).then_some(name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs commands (inline syntax, one per line) on a fresh store and session, at `now` plus
    /// each line's offset in milliseconds (`+1500 GET k`), and compares the answers, written
    /// as RESP with `\r\n` shown as `|`.
    fn check(script: &[(&str, &str)]) {
        let store = Store::new();
        let mut session = Session::new(store.next_client_id());
        let start = Instant::now();
        for (line, expected) in script {
            let (at, line) = match line.strip_prefix('+') {
                Some(rest) => {
                    let (ms, line) = rest.split_once(' ').unwrap();
                    (start + Duration::from_millis(ms.parse().unwrap()), line)
                }
                None => (start, *line),
            };
            let input = format!("{line}\r\n");
            let Ok(Some((Parsed::Command(args), _))) = resp::parse_command(input.as_bytes()) else {
                panic!("not a command: {line}");
            };
            let (value, _) = store.execute(&mut session, &args, at);
            let mut out = BytesMut::new();
            value.encode(&mut out);
            let got = String::from_utf8_lossy(&out).replace("\r\n", "|");
            assert_eq!(&got, expected, "{line}");
        }
    }

    #[test]
    fn strings() {
        check(&[
            ("GET k", "$-1|"),
            ("SET k v", "+OK|"),
            ("get k", "$1|v|"),
            ("SET k \"two words\"", "+OK|"),
            ("GET k", "$9|two words|"),
            ("EXISTS k k nope", ":2|"),
            ("DEL k nope", ":1|"),
            ("DEL k", ":0|"),
            ("SET k v NX", "+OK|"),
            ("SET k w NX", "$-1|"),
            ("SET other w XX", "$-1|"),
            ("SET k w XX", "+OK|"),
            ("GET k", "$1|w|"),
            ("SET k v NX XX", "-ERR syntax error|"),
            ("SET k v EX", "-ERR syntax error|"),
            ("SET k v EX 0", "-ERR invalid expire time in 'set' command|"),
            (
                "SET k v PX -5",
                "-ERR invalid expire time in 'set' command|",
            ),
            (
                "SET k v EX ten",
                "-ERR value is not an integer or out of range|",
            ),
            (
                "SET k v EX 9223372036854775807",
                "-ERR invalid expire time in 'set' command|",
            ),
            ("SET k v EX 1 PX 1", "-ERR syntax error|"),
            ("SET k v KEEPTTL", "-ERR syntax error|"),
            ("SET k", "-ERR wrong number of arguments for 'set' command|"),
            ("GET", "-ERR wrong number of arguments for 'get' command|"),
            (
                "GET a b",
                "-ERR wrong number of arguments for 'get' command|",
            ),
        ]);
    }

    #[test]
    fn keys_expire() {
        check(&[
            ("SET k v EX 1", "+OK|"),
            ("+999 GET k", "$1|v|"),
            ("+1000 GET k", "$-1|"),
            ("+1000 EXISTS k", ":0|"),
            ("SET k v PX 10", "+OK|"),
            ("+5 INCR n", ":1|"),
            ("+20 SET k 5 px 10", "+OK|"),
            ("+25 INCR k", ":6|"),
            // INCR keeps the time to live.
            ("+30 GET k", "$-1|"),
            ("SET h v PX 10", "+OK|"),
            ("+10 HINCRBY h f 1", ":1|"),
        ]);
    }

    #[test]
    fn counters() {
        check(&[
            ("INCR n", ":1|"),
            ("INCRBY n 41", ":42|"),
            ("INCRBY n -50", ":-8|"),
            ("GET n", "$2|-8|"),
            (
                "INCRBY n x",
                "-ERR value is not an integer or out of range|",
            ),
            (
                "INCRBY n 007",
                "-ERR value is not an integer or out of range|",
            ),
            ("SET s abc", "+OK|"),
            ("INCR s", "-ERR value is not an integer or out of range|"),
            ("SET big 9223372036854775807", "+OK|"),
            ("INCR big", "-ERR increment or decrement would overflow|"),
            ("HSET h f v", ":1|"),
            (
                "INCR h",
                "-WRONGTYPE Operation against a key holding the wrong kind of value|",
            ),
        ]);
    }

    #[test]
    fn hashes() {
        check(&[
            ("HGETALL votes", "*0|"),
            ("HINCRBY votes :joy: 1", ":1|"),
            ("HINCRBY votes :joy: 2", ":3|"),
            ("HGET votes :joy:", "$1|3|"),
            ("HGET votes :nope:", "$-1|"),
            ("HGET nope f", "$-1|"),
            ("HGETALL votes", "*2|$5|:joy:|$1|3|"),
            ("HSET votes a 1 b 2 a 3", ":2|"),
            ("HGET votes a", "$1|3|"),
            (
                "HSET votes a",
                "-ERR wrong number of arguments for 'hset' command|",
            ),
            (
                "HSET votes a 1 b",
                "-ERR wrong number of arguments for 'hset' command|",
            ),
            (
                "HINCRBY votes a x",
                "-ERR value is not an integer or out of range|",
            ),
            ("HSET votes s text", ":1|"),
            ("HINCRBY votes s 1", "-ERR hash value is not an integer|"),
            ("HSET votes m 9223372036854775807", ":1|"),
            (
                "HINCRBY votes m 1",
                "-ERR increment or decrement would overflow|",
            ),
            ("SET str v", "+OK|"),
            (
                "HGETALL str",
                "-WRONGTYPE Operation against a key holding the wrong kind of value|",
            ),
            (
                "HINCRBY str f 1",
                "-WRONGTYPE Operation against a key holding the wrong kind of value|",
            ),
            (
                "HGET str f",
                "-WRONGTYPE Operation against a key holding the wrong kind of value|",
            ),
            (
                "GET votes",
                "-WRONGTYPE Operation against a key holding the wrong kind of value|",
            ),
            // SET replaces a key of any type.
            ("SET votes v", "+OK|"),
            ("FLUSHALL", "+OK|"),
            ("EXISTS votes str", ":0|"),
            ("FLUSHALL ASYNC", "+OK|"),
            ("FLUSHALL NOW", "-ERR syntax error|"),
        ]);
    }

    #[test]
    fn connection_commands() {
        check(&[
            ("PING", "+PONG|"),
            ("ping hello", "$5|hello|"),
            (
                "PING a b",
                "-ERR wrong number of arguments for 'ping' command|",
            ),
            ("ECHO \"a\\r\\nb\"", "$4|a|b|"),
            ("SELECT 0", "+OK|"),
            ("SELECT 1", "-ERR DB index is out of range|"),
            ("SELECT x", "-ERR value is not an integer or out of range|"),
            ("COMMAND", "*0|"),
            ("COMMAND DOCS", "*0|"),
            ("CLIENT SETNAME voting", "+OK|"),
            ("CLIENT GETNAME", "$6|voting|"),
            (
                "CLIENT SETNAME \"a b\"",
                "-ERR Client names cannot contain spaces, newlines or special characters.|",
            ),
            (
                "CLIENT SETNAME",
                "-ERR wrong number of arguments for 'client|setname' command|",
            ),
            ("CLIENT ID", ":1|"),
            ("CLIENT SETINFO LIB-NAME redis-py", "+OK|"),
            (
                "CLIENT KILL x",
                "-ERR unknown subcommand 'KILL'. Try CLIENT HELP.|",
            ),
            (
                "CLIENT",
                "-ERR wrong number of arguments for 'client' command|",
            ),
            ("QUIT", "+OK|"),
        ]);
    }

    #[test]
    fn hello_speaks_resp2_only() {
        let description = "*14|$6|server|$5|redis|$7|version|$5|7.0.0|$5|proto|:2|$2|id|:1|\
                           $4|mode|$10|standalone|$4|role|$6|master|$7|modules|*0|";
        check(&[
            ("HELLO", description),
            ("HELLO 2", description),
            ("HELLO 2 AUTH default secret SETNAME app", description),
            ("CLIENT GETNAME", "$3|app|"),
            ("HELLO 3", "-NOPROTO unsupported protocol version|"),
            ("HELLO 1", "-NOPROTO unsupported protocol version|"),
            (
                "HELLO two",
                "-ERR Protocol version is not an integer or out of range|",
            ),
            (
                "HELLO 2 AUTH default",
                "-ERR Syntax error in HELLO option 'AUTH'|",
            ),
            ("HELLO 2 FOO", "-ERR Syntax error in HELLO option 'FOO'|"),
        ]);
    }

    #[test]
    fn unknown_commands() {
        check(&[
            (
                "FOO",
                "-ERR unknown command 'FOO', with args beginning with: |",
            ),
            (
                "nope a \"b\\r\\nc\"",
                "-ERR unknown command 'nope', with args beginning with: 'a' 'b??c' |",
            ),
        ]);
    }

    #[test]
    fn quit_closes_and_others_do_not() {
        let store = Store::new();
        let mut session = Session::new(1);
        let cmd = |s: &str| vec![Bytes::copy_from_slice(s.as_bytes())];
        let now = Instant::now();
        assert_eq!(
            store.execute(&mut session, &cmd("QUIT"), now).1,
            Next::Close
        );
        assert_eq!(
            store.execute(&mut session, &cmd("PING"), now).1,
            Next::Continue
        );
        assert_eq!(
            store.execute(&mut session, &cmd("NOPE"), now).1,
            Next::Continue
        );
    }
}
