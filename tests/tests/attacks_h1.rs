//! Issue 17, the reliability suite's HTTP/1 attacks, end to end on pods: what a hostile HTTP/1
//! client can do to a meshed server's inbound proxy. Needs root.
//!
//! Each test builds a server pod meshed without identity, whose application is [`App`], a raw
//! HTTP/1 server written here that parses what reaches it strictly and records every byte per
//! connection, and two plain client pods: the attacker, which writes raw bytes to the server's
//! application port (the inbound proxy intercepts them), and a well-behaved victim that measures
//! its latency before and during the attack. Every check is recorded in RELIABILITY.md's
//! section "HTTP/1 attacks" ([`mesh_tests::record!`]) and asserted.
//!
//! - Request smuggling: ambiguous framing (CL.TE, TE.CL, duplicate Content-Length, obs-fold,
//!   bare LF, odd Transfer-Encodings, …). The proxy refuses (400, closed) or forwards one request
//!   whose framing is unambiguous; the application never sees a request the proxy did not answer.
//! - Slowloris: 1,000 connections dripping a request head a byte a second are closed by the
//!   header read timeout, while the proxy's files and memory stay bounded and others are served.
//!   Dripping the request line itself outlasts protocol detection: an unfinished request line
//!   is HTTP/1 still, so the header read timeout closes it too and nothing reaches the app past
//!   the HTTP stack (it went there as opaque TCP before: a client's own `mesh-client-id` too).
//! - Oversized heads (431), and 1 GiB bodies both ways: streamed in bounded memory.
//! - A client that never reads a 256 MiB answer: backpressure, not buffering.
//! - A client that half-closes after its request still gets its answer.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf as _, BytesMut};
use mesh_cli::local::{require_root, Cluster, MeshOptions, Pod, Proxy};
use mesh_tests::reliability::{mb, Usage};
use mesh_tests::{fixtures::eventually, record, TIMEOUT};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

const SECTION: &str = "HTTP/1 attacks";
/// The application's port on the server pod.
const APP_PORT: u16 = 8080;
/// Requests per latency measurement of the victim.
const VICTIM_REQUESTS: usize = 300;
/// How much the proxy's RSS may grow above its baseline during an attack.
const RSS_GROWTH_KB: u64 = 64 << 10;
/// How long an attacker waits for more of an answer before calling the connection kept open.
const IDLE_READ: Duration = Duration::from_millis(1500);

/// The tests measure the proxy's memory and latency: one at a time, also under plain
/// `cargo test`, where the test harness would run them side by side.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === request smuggling ===

/// One ambiguous request: its name in the report and its bytes (its first request names a path
/// of its own).
struct Variant {
    name: &'static str,
    bytes: Vec<u8>,
}

/// The smuggled request every variant tries to slip past the proxy.
const SMUGGLED: &str = "GET /admin HTTP/1.1\r\nHost: app\r\n\r\n";

fn variants() -> Vec<Variant> {
    let mut all = Vec::new();
    let mut add = |name: &'static str, bytes: String| {
        all.push(Variant {
            name,
            bytes: bytes.into_bytes(),
        })
    };
    // A chunked body that ends at once, followed by the smuggled request: what a parser that
    // believes Transfer-Encoding sees as the next request, and one that believes a
    // Content-Length covering it all sees as body.
    let zero_then_smuggled = format!("0\r\n\r\n{SMUGGLED}");
    let n = zero_then_smuggled.len();
    add(
        "CL.TE: Content-Length then Transfer-Encoding: chunked",
        format!(
            "POST /cl-te HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    // The smuggled request as one chunk: a parser that believes Content-Length: 4 reads `xx\r\n`
    // as the body and the smuggled request next.
    let chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    add(
        "TE.CL: Transfer-Encoding: chunked then Content-Length",
        format!(
            "POST /te-cl HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\
             Content-Length: 4\r\n\r\n{chunk}"
        ),
    );
    add(
        "two Content-Length lines, different values",
        format!(
            "POST /cl-cl HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\nContent-Length: {}\r\n\
             \r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
    );
    add(
        "one Content-Length line with two values",
        format!(
            "POST /cl-list HTTP/1.1\r\nHost: app\r\nContent-Length: 0, {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
    );
    add(
        "two Content-Length lines, same value",
        "POST /cl-same HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 5\r\n\
         \r\nhello"
            .to_string(),
    );
    add(
        "Content-Length with a plus sign",
        format!("POST /cl-plus HTTP/1.1\r\nHost: app\r\nContent-Length: +0\r\n\r\n{SMUGGLED}"),
    );
    add(
        "obs-fold: Transfer-Encoding continued on the next line",
        format!(
            "POST /fold-te HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\nTransfer-Encoding:\r\n \
             chunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "obs-fold: Transfer-Encoding folded into another header",
        format!(
            "POST /fold-x HTTP/1.1\r\nHost: app\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n\
             Content-Length: {n}\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "bare LF line endings throughout",
        "POST /bare-lf HTTP/1.1\nHost: app\nContent-Length: 5\n\nhello".to_string(),
    );
    add(
        "bare LF hiding Transfer-Encoding in another header",
        format!(
            "POST /bare-lf-te HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             X-Lf: a\nTransfer-Encoding: chunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "bare CR inside a header",
        format!(
            "POST /bare-cr HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             X-Cr: a\rTransfer-Encoding: chunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "Transfer-Encoding: xchunked",
        format!(
            "POST /xchunked HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding: xchunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "Transfer-Encoding: chunked, identity",
        format!(
            "POST /chunked-identity HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding: chunked, identity\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "Transfer-Encoding: identity, chunked",
        format!(
            "POST /identity-chunked HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding: identity, chunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "two Transfer-Encoding lines: chunked, then identity",
        format!(
            "POST /te-te HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "Transfer-Encoding with a space before the colon",
        format!(
            "POST /te-space HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding : chunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "Transfer-Encoding: CHUNKED in capitals, with Content-Length",
        format!(
            "POST /te-caps HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding: CHUNKED\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "Transfer-Encoding value led by a vertical tab",
        format!(
            "POST /te-vtab HTTP/1.1\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding: \x0bchunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "HTTP/1.0 with Transfer-Encoding: chunked",
        format!(
            "POST /http10-te HTTP/1.0\r\nHost: app\r\nContent-Length: {n}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{zero_then_smuggled}"
        ),
    );
    add(
        "chunk size that overflows 64 bits",
        format!(
            "POST /chunk-overflow HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             10000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        ),
    );
    add(
        "chunk extension hiding a line feed",
        format!(
            "POST /chunk-ext HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;x=\"a\nb\"\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        ),
    );
    all
}

/// What an attacker's connection got back.
struct Answer {
    /// The status codes of the answers, in order.
    statuses: Vec<u16>,
    /// Whether the proxy closed (or reset) the connection; otherwise it kept it open.
    closed: bool,
    text: String,
}

impl Answer {
    /// Whether an answer of the application names `method path`: the proxy saw that request.
    fn saw(&self, method_path: &str) -> bool {
        self.text.contains(&format!("app saw {method_path} "))
    }
}

#[test]
fn request_smuggling_never_reaches_the_app() {
    let _serial = serial();
    let bed = Bed::new("h1smuggle", &[]);
    let mut failures = Vec::new();
    for (i, variant) in variants().into_iter().enumerate() {
        let (before, before_aborted) = (bed.app.requests().len(), bed.app.aborted().len());
        let answer = bed.attack(variant.bytes.clone());
        let at_app: Vec<Seen> = bed.app.requests()[before..].to_vec();
        let aborted: Vec<String> = bed.app.aborted()[before_aborted..].to_vec();
        // A well-behaved request on its own connection afterwards gets its own answer: nothing
        // the attack left in a pooled connection to the app answers it instead.
        let victim = format!("/victim-{i}");
        let victim_answer = bed.attack(mesh_tests::http_get(&victim, "app", "").into_bytes());
        let victim_ok =
            victim_answer.statuses == [200] && victim_answer.saw(&format!("GET {victim}"));

        let mut problems = Vec::new();
        let ours: Vec<&Seen> = at_app.iter().filter(|s| s.path != victim).collect();
        for seen in &ours {
            if !seen.flaws.is_empty() {
                problems.push(format!(
                    "the app got {} {} framed ambiguously: {}",
                    seen.method,
                    seen.path,
                    seen.flaws.join(", ")
                ));
            }
            if !answer.saw(&format!("{} {}", seen.method, seen.path)) {
                problems.push(format!(
                    "the app got {} {} ({}), which the proxy never answered the client",
                    seen.method, seen.path, seen.framing
                ));
            }
        }
        if !victim_ok {
            problems.push(format!(
                "the next client's GET {victim} was answered {:?}: {:?}",
                victim_answer.statuses, victim_answer.text
            ));
        }
        let refused = answer.statuses.first() == Some(&400);
        if refused && !answer.closed {
            problems.push("answered 400 but kept the connection open".to_string());
        }
        // A malformed body: the proxy broke the request off when it found it (the app got at
        // most its head), the client got a 400 and a closed connection: the client's fault, not
        // the application's (it was a 502 once, which counted against the app's success rate).
        let broken_off = ours.is_empty() && answer.closed && answer.statuses == [400];
        if !refused && ours.is_empty() && !broken_off {
            problems.push(format!(
                "neither refused nor forwarded: answered {:?}, the app's broken-off requests {:?}",
                answer.statuses, aborted
            ));
        }
        let admin = ours.iter().any(|s| s.path == "/admin");
        let forwarded: Vec<String> = ours
            .iter()
            .map(|s| format!("{} {} ({})", s.method, s.path, s.framing))
            .collect();
        let figure = format!(
            "answered {:?}, connection {}; the app got {}; /admin at the app: {}{}",
            answer.statuses,
            if answer.closed { "closed" } else { "kept open" },
            match (forwarded.is_empty(), aborted.is_empty()) {
                (true, true) => "nothing".to_string(),
                (true, false) => format!("a head whose body broke off: {}", aborted.join(", ")),
                _ => forwarded.join(", "),
            },
            if admin { "yes" } else { "no" },
            if problems.is_empty() {
                String::new()
            } else {
                format!("; {}", problems.join("; "))
            }
        );
        let passed = record!(
            SECTION,
            format!("smuggling: {}", variant.name),
            figure,
            "400 and closed, or one unambiguously framed request (or its body broken off); \
             no unseen request at the app",
            problems.is_empty()
        );
        if !passed {
            failures.push(format!("{}: {}", variant.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "request smuggling:\n- {}\nthe proxy's log:\n{}",
        failures.join("\n- "),
        bed.proxy.log()
    );
}

// === slowloris ===

/// Connections of the slowloris attack.
const LORIS_CONNECTIONS: usize = 1_000;
/// The header read timeout the slowloris test gives the proxy.
const LORIS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The detect timeout the slowloris test gives the proxy.
const LORIS_DETECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections of the slowloris that drips the request line too, before detection ends.
const EARLY_CONNECTIONS: usize = 100;
/// How long a slowloris connection drips before the attacker gives up on the proxy closing it.
const LORIS_GIVE_UP: Duration = Duration::from_secs(25);

#[test]
fn slowloris_is_closed_by_the_header_read_timeout() {
    let _serial = serial();
    let timeout = format!("{}s", LORIS_HEADER_TIMEOUT.as_secs());
    let detect = format!("{}s", LORIS_DETECT_TIMEOUT.as_secs());
    let bed = Bed::new(
        "h1loris",
        &[
            ("MESH_PROXY_HEADER_READ_TIMEOUT", timeout.as_str()),
            ("MESH_PROXY_DETECT_TIMEOUT", detect.as_str()),
        ],
    );
    let baseline = bed.usage();
    let before = bed.victim_latency();

    let sampler = Sampler::start(bed.proxy.pid());
    let attack = slowloris(
        &bed.attacker,
        bed.app_addr(),
        LORIS_CONNECTIONS,
        true,
        LORIS_GIVE_UP,
    );
    // Let every connection open and start dripping, then measure the victim under it.
    std::thread::sleep(Duration::from_secs(2));
    let during = bed.victim_latency();
    let loris = attack.join().expect("slowloris thread").expect("slowloris");
    let peak = sampler.stop();
    let rt = runtime();
    let mut after = bed.usage();
    let settled = rt.block_on(eventually(Duration::from_secs(15), || {
        after = bed.usage();
        let ok = after.fds <= baseline.fds + 16;
        async move { ok }
    }));

    let closed = loris.closed_after.len();
    let mut times = loris.closed_after.clone();
    times.sort();
    let quantile = |q: f64| -> Duration {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let bound = LORIS_HEADER_TIMEOUT + Duration::from_secs(10);
    let all_closed = closed == LORIS_CONNECTIONS && quantile(1.0) <= bound;
    let figure = format!(
        "{closed}/{LORIS_CONNECTIONS} connections (of {} opened) closed by the proxy, after \
         p50 {:.1} s, max {:.1} s (header read timeout {}s); {} answered with a status first",
        loris.opened,
        quantile(0.5).as_secs_f64(),
        quantile(1.0).as_secs_f64(),
        LORIS_HEADER_TIMEOUT.as_secs(),
        loris.answered,
    );
    let closed_ok = record!(
        SECTION,
        "slowloris: 1,000 heads a byte a second",
        figure,
        format!(
            "all closed within the timeout + 10 s ({} s)",
            bound.as_secs()
        ),
        all_closed
    );
    let bounded = peak.fds <= baseline.fds + LORIS_CONNECTIONS + 64
        && peak.rss_kb <= baseline.rss_kb + RSS_GROWTH_KB
        && settled;
    let resources_ok = record!(
        SECTION,
        "slowloris: the proxy's files and memory",
        format!(
            "fds {} → peak {} → {} after; RSS {} → peak {}",
            baseline.fds,
            peak.fds,
            after.fds,
            mb(baseline.rss_kb),
            mb(peak.rss_kb)
        ),
        "fds ≤ baseline + 1,064 and back to baseline + 16; RSS ≤ baseline + 64 MB",
        bounded
    );
    let victim_ok = record!(
        SECTION,
        "slowloris: other clients",
        format!("{before} before; {during} during"),
        "no failures; p99 ≤ 10× before or ≤ 1 s",
        latency_ok(&before, &during)
    );

    // Before detection: the request line itself dripped, so that the protocol is still unknown
    // when the detect timeout ends.
    let accepted = bed.app.connections();
    let fds_before = bed.usage().fds;
    let give_up = LORIS_DETECT_TIMEOUT + LORIS_HEADER_TIMEOUT + Duration::from_secs(7);
    let sampler = Sampler::start(bed.proxy.pid());
    let early = slowloris(
        &bed.attacker,
        bed.app_addr(),
        EARLY_CONNECTIONS,
        false,
        give_up,
    )
    .join()
    .expect("slowloris thread")
    .expect("slowloris");
    let early_peak = sampler.stop();
    let handed = bed.app.connections() - accepted;
    let early_closed = early.closed_after.len();
    let early_ok = record!(
        SECTION,
        "slowloris before detection: 100 request lines a byte a second",
        format!(
            "{early_closed}/{EARLY_CONNECTIONS} closed by the proxy within {} s; {handed} handed \
             to the app as opaque TCP after the {} s detect timeout; proxy fds {fds_before} → \
             peak {}",
            give_up.as_secs(),
            LORIS_DETECT_TIMEOUT.as_secs(),
            early_peak.fds
        ),
        "all closed by the proxy, none handed to the app; ≤ 2 proxy fds each",
        early.opened == EARLY_CONNECTIONS
            && early_closed == EARLY_CONNECTIONS
            && handed == 0
            && early_peak.fds <= fds_before + 2 * EARLY_CONNECTIONS + 16
    );

    // A request line sent slower than the detect timeout is still HTTP: it gets everything the
    // proxy does to HTTP (here: the removal of a client's own `mesh-client-id`, which the app
    // must be able to trust); as opaque bytes it would not.
    let addr = bed.app_addr();
    let spoof = bed
        .attacker
        .run_in(move || {
            let mut io = connect(addr)?;
            let slow = b"GET /spoof";
            for byte in slow {
                io.write_all(&[*byte])?;
                // Pacing: the line takes longer than the detect timeout.
                std::thread::sleep(LORIS_DETECT_TIMEOUT * 4 / 3 / slow.len() as u32);
            }
            io.write_all(
                b" HTTP/1.1\r\nHost: app\r\nmesh-client-id: spoofed.attacker\r\n\
                  Connection: close\r\n\r\n",
            )?;
            read_answer(&mut io, TIMEOUT)
        })
        .join()
        .expect("spoof thread")
        .expect("spoof");
    let spoofed = bed.app.received("mesh-client-id: spoofed.attacker");
    // The same request sent at once is HTTP: the proxy removes the header.
    let fast = bed.attack(
        mesh_tests::http_get("/spoof", "app", "mesh-client-id: spoofed.fast\r\n").into_bytes(),
    );
    let fast_removed = fast.statuses == [200] && !bed.app.received("spoofed.fast");
    let spoof_ok = record!(
        SECTION,
        "a request line slower than the detect timeout",
        format!(
            "answered {:?}; the app {} the client's own mesh-client-id header (sent at once: \
             {}){}",
            spoof.statuses,
            if spoofed { "got" } else { "did not get" },
            if fast_removed {
                "removed"
            } else {
                "NOT removed"
            },
            if spoofed {
                "; MISS (security): the connection went to the app as opaque TCP, past the \
                 HTTP stack (header removal, per-route authorization, rate limit)"
            } else {
                ""
            }
        ),
        "answered; the header removed, sent slowly or at once",
        spoof.statuses.len() == 1 && !spoofed && fast_removed
    );
    assert!(
        closed_ok && resources_ok && victim_ok && early_ok && spoof_ok,
        "slowloris: see the records above; the proxy's log:\n{}",
        bed.proxy.log()
    );
}

/// What the slowloris connections saw.
struct Loris {
    opened: usize,
    /// How long after it opened each connection the proxy closed it.
    closed_after: Vec<Duration>,
    /// Connections the proxy answered (a 408, say) before closing.
    answered: usize,
}

/// Opens `connections` connections to `addr` from `pod`; each sends a request head a byte a
/// second until the proxy closes it or `give_up` passes. With `line_at_once`, the request line
/// goes at once (protocol detection is then done, and the HTTP server reads the head).
fn slowloris(
    pod: &Pod,
    addr: SocketAddr,
    connections: usize,
    line_at_once: bool,
    give_up: Duration,
) -> JoinHandle<anyhow::Result<Loris>> {
    pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for i in 0..connections {
                tasks.push(tokio::spawn(async move {
                    // Spread the connects over the first second.
                    let delay = Duration::from_micros(i as u64 * 1_000_000 / connections as u64);
                    tokio::time::sleep(delay).await;
                    let mut io = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
                        .await
                        .map_err(|_| anyhow!("connect timed out"))??;
                    let opened = Instant::now();
                    let line: &[u8] = b"GET /loris HTTP/1.1\r\n";
                    let rest: &[u8] = b"Host: app\r\nX-Loris: ";
                    let dripped = if line_at_once {
                        io.write_all(line).await?;
                        rest.to_vec()
                    } else {
                        [line, rest].concat()
                    };
                    let (mut read, mut write) = io.into_split();
                    let drip = async move {
                        let head = dripped.into_iter().chain(std::iter::repeat(b'a'));
                        for byte in head {
                            // Pacing the attack, not waiting for a condition.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if write.write_all(&[byte]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let closed = async move {
                        // Until EOF or a reset: either way the proxy closed it.
                        let mut got = Vec::new();
                        let _ = read.read_to_end(&mut got).await;
                        got
                    };
                    tokio::select! {
                        got = closed => Ok::<_, anyhow::Error>(Some((opened.elapsed(), !got.is_empty()))),
                        () = drip => Ok(Some((opened.elapsed(), false))),
                        () = tokio::time::sleep(give_up) => Ok(None),
                    }
                }));
            }
            let mut loris = Loris {
                opened: 0,
                closed_after: Vec::new(),
                answered: 0,
            };
            for task in tasks {
                if let Ok(Ok(outcome)) = task.await {
                    loris.opened += 1;
                    if let Some((after, answered)) = outcome {
                        loris.closed_after.push(after);
                        loris.answered += usize::from(answered);
                    }
                }
            }
            Ok(loris)
        })
    })
}

// === oversized heads ===

#[test]
fn oversized_heads_are_refused_with_431() {
    let _serial = serial();
    let bed = Bed::new("h1heads", &[]);
    let baseline = bed.usage();
    let before_latency = bed.victim_latency();
    let long = "a".repeat(100 << 10);
    let many: String = (0..200).map(|i| format!("X-Many-{i}: v\r\n")).collect();
    let uri = "u".repeat(70_000);
    let heads = [
        (
            "a 100 KiB header",
            format!("GET /big-header HTTP/1.1\r\nHost: app\r\nX-Long: {long}\r\n\r\n"),
            &[431][..],
        ),
        (
            "200 headers",
            format!("GET /many-headers HTTP/1.1\r\nHost: app\r\n{many}\r\n"),
            &[431][..],
        ),
        (
            "a 70,000-byte request target",
            format!("GET /{uri} HTTP/1.1\r\nHost: app\r\n\r\n"),
            &[431, 414][..],
        ),
    ];
    let mut ok = true;
    for (name, head, expected) in &heads {
        let before = bed.app.requests().len();
        let answer = bed.attack(head.clone().into_bytes());
        let reached = bed.app.requests().len() - before;
        let passed = answer.statuses.len() == 1
            && expected.contains(&answer.statuses[0])
            && answer.closed
            && reached == 0;
        ok &= record!(
            SECTION,
            format!("oversized head: {name}"),
            format!(
                "answered {:?}, connection {}; {reached} requests reached the app",
                answer.statuses,
                if answer.closed { "closed" } else { "kept open" }
            ),
            format!("{expected:?} and closed; nothing at the app"),
            passed
        );
    }

    // A flood of them, while the victim measures.
    let sampler = Sampler::start(bed.proxy.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let addr = bed.app_addr();
        let head = heads[0].1.clone();
        bed.attacker.run_in(move || {
            let mut sent = 0u64;
            let mut refused = 0u64;
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let stop = stop.clone();
                    let head = head.clone();
                    std::thread::spawn(move || {
                        let (mut sent, mut refused) = (0u64, 0u64);
                        while !stop.load(Ordering::Relaxed) {
                            sent += 1;
                            if let Ok(answer) = exchange(addr, head.as_bytes(), None) {
                                refused += u64::from(answer.statuses == [431]);
                            }
                        }
                        (sent, refused)
                    })
                })
                .collect();
            for t in threads {
                let (s, r) = t.join().map_err(|_| anyhow!("flood thread panicked"))?;
                sent += s;
                refused += r;
            }
            Ok((sent, refused))
        })
    };
    let during = bed.victim_latency();
    stop.store(true, Ordering::Relaxed);
    let (sent, refused) = flood.join().expect("flood thread").expect("flood");
    let peak = sampler.stop();
    let victim_ok = latency_ok(&before_latency, &during)
        && peak.rss_kb <= baseline.rss_kb + RSS_GROWTH_KB
        && refused * 10 >= sent * 9;
    ok &= record!(
        SECTION,
        "oversized heads: a flood of 100 KiB heads, other clients",
        format!(
            "{refused}/{sent} refused 431; victim {before_latency} before, {during} during; \
             proxy RSS {} → peak {}",
            mb(baseline.rss_kb),
            mb(peak.rss_kb)
        ),
        "≥ 90% refused 431; no victim failures, p99 ≤ 10× before or ≤ 1 s; RSS ≤ baseline + 64 MB",
        victim_ok
    );
    assert!(
        ok,
        "oversized heads: see the records above; the proxy's log:\n{}",
        bed.proxy.log()
    );
}

// === large bodies ===

const GIB: u64 = 1 << 30;

#[test]
fn one_gib_bodies_stream_through_in_bounded_memory() {
    let _serial = serial();
    let bed = Bed::new("h1bodies", &[]);
    let baseline = bed.usage();
    let before = bed.victim_latency();
    let addr = bed.app_addr();

    // Up: a 1 GiB request body, which the app reads and discards.
    let sampler = Sampler::start(bed.proxy.pid());
    let start = Instant::now();
    let upload = bed.attacker.run_in(move || {
        let mut io = connect(addr)?;
        io.set_read_timeout(Some(Duration::from_secs(60)))?;
        io.write_all(
            format!("POST /sink HTTP/1.1\r\nHost: app\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
        )?;
        let chunk = vec![b'x'; 256 << 10];
        let mut left = GIB;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            io.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        read_answer(&mut io, Duration::from_secs(60))
    });
    let during_up = bed.victim_latency();
    let up = upload.join().expect("upload thread").expect("upload");
    let up_took = start.elapsed();
    let up_peak = sampler.stop();
    let up_ok = up.statuses == [200]
        && up
            .text
            .contains(&format!("app saw POST /sink ({GIB} bytes)"));
    let up_bounded = up_peak.rss_kb <= baseline.rss_kb + RSS_GROWTH_KB;
    let passed = record!(
        SECTION,
        "1 GiB request body",
        format!(
            "{} in {:.1} s ({:.0} MB/s); proxy RSS {} → peak {}; victim {before} before, \
             {during_up} during",
            if up_ok {
                "streamed whole to the app"
            } else {
                "NOT delivered whole"
            },
            up_took.as_secs_f64(),
            GIB as f64 / 1e6 / up_took.as_secs_f64(),
            mb(baseline.rss_kb),
            mb(up_peak.rss_kb)
        ),
        "delivered; RSS ≤ baseline + 64 MB; victim no failures, p99 ≤ 10× before or ≤ 1 s",
        up_ok && up_bounded && latency_ok(&before, &during_up)
    );
    assert!(passed, "1 GiB up: {:?}", up.text);

    // Down: a 1 GiB response, which the client reads and discards.
    let sampler = Sampler::start(bed.proxy.pid());
    let start = Instant::now();
    let download = bed.attacker.run_in(move || {
        let mut io = connect(addr)?;
        io.set_read_timeout(Some(Duration::from_secs(30)))?;
        io.write_all(format!("GET /big/{GIB} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())?;
        let mut buf = vec![0u8; 256 << 10];
        // The head, then the body's bytes counted.
        let (mut head, mut body, mut in_body) = (Vec::new(), 0u64, false);
        while body < GIB {
            let n = io.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if in_body {
                body += n as u64;
                continue;
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&head, b"\r\n\r\n") {
                body += (head.len() - end - 4) as u64;
                head.truncate(end + 4);
                in_body = true;
            }
        }
        Ok((String::from_utf8_lossy(&head).into_owned(), body))
    });
    let during_down = bed.victim_latency();
    let (head, body) = download.join().expect("download thread").expect("download");
    let down_took = start.elapsed();
    let down_peak = sampler.stop();
    let down_ok = head.starts_with("HTTP/1.1 200") && body == GIB;
    let passed = record!(
        SECTION,
        "1 GiB response body",
        format!(
            "{body} bytes in {:.1} s ({:.0} MB/s); proxy RSS {} → peak {}; victim {during_down} \
             during",
            down_took.as_secs_f64(),
            body as f64 / 1e6 / down_took.as_secs_f64(),
            mb(baseline.rss_kb),
            mb(down_peak.rss_kb)
        ),
        "delivered; RSS ≤ baseline + 64 MB; victim no failures, p99 ≤ 10× before or ≤ 1 s",
        down_ok
            && down_peak.rss_kb <= baseline.rss_kb + RSS_GROWTH_KB
            && latency_ok(&before, &during_down)
    );
    assert!(passed, "1 GiB down: {head:?}, {body} bytes");
}

// === a client that never reads ===

const UNREAD: u64 = 256 << 20;

#[test]
fn a_client_that_never_reads_meets_backpressure() {
    let _serial = serial();
    let bed = Bed::new("h1unread", &[]);
    let baseline = bed.usage();
    let before = bed.victim_latency();
    let addr = bed.app_addr();
    let sampler = Sampler::start(bed.proxy.pid());
    // The client sends its request and then only holds the connection.
    let (release, released) = mpsc::channel::<()>();
    let client = bed.attacker.run_in(move || {
        let mut io = connect(addr)?;
        io.write_all(format!("GET /big/{UNREAD} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())?;
        let _ = released.recv_timeout(Duration::from_secs(60));
        drop(io);
        Ok(())
    });
    // Wait until the app's writes stall: the same count for a second.
    let rt = runtime();
    let mut last = (0, Instant::now());
    let stalled = rt.block_on(eventually(Duration::from_secs(30), || {
        let written = bed.app.written();
        let now = Instant::now();
        if written != last.0 {
            last = (written, now);
        }
        let ok = written > 0 && now.duration_since(last.1) >= Duration::from_secs(1);
        async move { ok }
    }));
    let written = bed.app.written();
    let during = bed.victim_latency();
    let peak = sampler.stop();
    // Then the client goes away: the proxy lets go of both connections.
    let _ = release.send(());
    client.join().expect("client thread").expect("client");
    let mut after = bed.usage();
    let released_fds = rt.block_on(eventually(Duration::from_secs(15), || {
        after = bed.usage();
        let ok = after.fds <= baseline.fds + 2;
        async move { ok }
    }));
    let app_closed = rt.block_on(eventually(Duration::from_secs(15), || {
        let ok = bed.app.streaming() == 0;
        async move { ok }
    }));
    let passed = record!(
        SECTION,
        "a client that never reads a 256 MiB answer",
        format!(
            "the app's writes stalled after {} of {}; proxy RSS {} → peak {}; victim {before} \
             before, {during} during; after the client left: fds {} → {}, the app's stream {}",
            mb(written >> 10),
            mb(UNREAD >> 10),
            mb(baseline.rss_kb),
            mb(peak.rss_kb),
            baseline.fds,
            after.fds,
            if app_closed { "ended" } else { "still open" }
        ),
        "writes stall (backpressure); RSS ≤ baseline + 64 MB; victim fine; all closed after",
        stalled
            && written < UNREAD
            && peak.rss_kb <= baseline.rss_kb + RSS_GROWTH_KB
            && latency_ok(&before, &during)
            && released_fds
            && app_closed
    );
    assert!(
        passed,
        "a client that never reads: see the record above; the proxy's log:\n{}",
        bed.proxy.log()
    );
}

// === half-close ===

#[test]
fn a_half_closed_client_still_gets_its_answer() {
    let _serial = serial();
    let bed = Bed::new("h1halfclose", &[]);
    let cases: [(&str, String, usize); 4] = [
        (
            "GET, no body",
            "GET /slow HTTP/1.1\r\nHost: app\r\n\r\n".to_string(),
            1,
        ),
        (
            "POST with Content-Length",
            "POST /slow HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello".to_string(),
            1,
        ),
        (
            "POST chunked",
            "POST /slow HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
                .to_string(),
            1,
        ),
        (
            "two pipelined GETs",
            "GET /slow HTTP/1.1\r\nHost: app\r\n\r\nGET /slow HTTP/1.1\r\nHost: app\r\n\r\n"
                .to_string(),
            2,
        ),
    ];
    let mut ok = true;
    for (name, request, expected) in cases {
        let addr = bed.app_addr();
        let answer = bed
            .attacker
            .run_in(move || {
                let mut io = connect(addr)?;
                io.write_all(request.as_bytes())?;
                io.shutdown(Shutdown::Write)?;
                read_answer(&mut io, Duration::from_secs(5))
            })
            .join()
            .expect("half-close thread")
            .expect("half-close exchange");
        let answered = answer.statuses.iter().filter(|s| **s == 200).count();
        ok &= record!(
            SECTION,
            format!("half-close after the request: {name}"),
            format!(
                "{answered}/{expected} answered 200 ({:?}), connection {}",
                answer.statuses,
                if answer.closed { "closed" } else { "kept open" }
            ),
            "every request answered, then closed",
            answered == expected && answer.closed
        );
    }
    assert!(
        ok,
        "half-close: see the records above; the proxy's log:\n{}",
        bed.proxy.log()
    );
}

// === the bed ===

/// A server pod meshed without identity, with [`App`] on [`APP_PORT`], and two plain client
/// pods: the attacker and the victim.
struct Bed {
    proxy: Proxy,
    app: App,
    server: Pod,
    attacker: Pod,
    victim: Pod,
    // Last: the pods' processes and namespaces go when it drops.
    _cluster: Cluster,
}

impl Bed {
    fn new(name: &str, env: &[(&str, &str)]) -> Bed {
        require_root().expect("end-to-end tests need root and network namespaces");
        let mut cluster = Cluster::new(name).expect("cluster");
        let server = cluster.add_pod("server").expect("server pod");
        let attacker = cluster.add_pod("attacker").expect("attacker pod");
        let victim = cluster.add_pod("victim").expect("victim pod");
        let app = App::start(&server).expect("the app");
        let proxy = server
            .mesh(MeshOptions {
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..MeshOptions::default()
            })
            .expect("the server pod is meshed");
        let addr = SocketAddr::from((server.ip, APP_PORT));
        victim
            .wait_http_ok(addr, "/ready", Duration::from_secs(10))
            .expect("the app answers through the proxy");
        Bed {
            proxy,
            app,
            server,
            attacker,
            victim,
            _cluster: cluster,
        }
    }

    fn app_addr(&self) -> SocketAddr {
        SocketAddr::from((self.server.ip, APP_PORT))
    }

    fn usage(&self) -> Usage {
        Usage::of(self.proxy.pid()).expect("the proxy is running")
    }

    /// Sends `bytes` from the attacker pod on a new connection and reads what comes back.
    fn attack(&self, bytes: Vec<u8>) -> Answer {
        let addr = self.app_addr();
        self.attacker
            .run_in(move || exchange(addr, &bytes, Some(IDLE_READ)))
            .join()
            .expect("attacker thread")
            .expect("attacker connection")
    }

    /// [`VICTIM_REQUESTS`] requests from the victim pod, one connection each.
    fn victim_latency(&self) -> Latency {
        let addr = self.app_addr();
        self.victim
            .run_in(move || {
                let mut latencies = Vec::with_capacity(VICTIM_REQUESTS);
                let mut failures = 0;
                for _ in 0..VICTIM_REQUESTS {
                    let start = Instant::now();
                    let request = mesh_tests::http_get("/victim", "app", "");
                    match exchange(addr, request.as_bytes(), None) {
                        Ok(answer) if answer.statuses == [200] => latencies.push(start.elapsed()),
                        _ => failures += 1,
                    }
                }
                Ok(Latency::of(latencies, failures))
            })
            .join()
            .expect("victim thread")
            .expect("victim")
    }
}

/// One connection to `addr`: writes `bytes`, then reads until the peer closes or, with `idle`,
/// until nothing came for that long.
fn exchange(addr: SocketAddr, bytes: &[u8], idle: Option<Duration>) -> anyhow::Result<Answer> {
    let mut io = connect(addr)?;
    io.write_all(bytes)?;
    read_answer(&mut io, idle.unwrap_or(TIMEOUT))
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let io = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("{addr}"))?;
    io.set_nodelay(true)?;
    io.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(io)
}

/// Reads until the peer closes or nothing comes for `idle`.
fn read_answer(io: &mut TcpStream, idle: Duration) -> anyhow::Result<Answer> {
    io.set_read_timeout(Some(idle))?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let closed = loop {
        match io.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) => return Err(e.into()),
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect();
    Ok(Answer {
        statuses,
        closed,
        text,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The victim's latencies.
struct Latency {
    p50: Duration,
    p99: Duration,
    failures: usize,
    n: usize,
}

impl Latency {
    fn of(mut latencies: Vec<Duration>, failures: usize) -> Latency {
        latencies.sort();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            failures,
            n: latencies.len() + failures,
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms",
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )?;
        if self.failures > 0 {
            write!(f, ", {}/{} failed", self.failures, self.n)?;
        }
        Ok(())
    }
}

/// The victim fared well enough under attack: no failures, and a p99 at most 10× the one before
/// or at most a second (the machine is shared and noisy).
fn latency_ok(before: &Latency, during: &Latency) -> bool {
    during.failures == 0 && (during.p99 <= before.p99 * 10 || during.p99 <= Duration::from_secs(1))
}

/// The peak of the proxy's usage, sampled every 50 ms on a thread until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Peak>,
}

#[derive(Default, Clone, Copy)]
struct Peak {
    rss_kb: u64,
    fds: usize,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = Peak::default();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(usage) = Usage::of(pid) {
                        peak.rss_kb = peak.rss_kb.max(usage.rss_kb);
                        peak.fds = peak.fds.max(usage.fds);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                peak
            })
        };
        Sampler { stop, thread }
    }

    fn stop(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread")
    }
}

// === the application ===

/// A request as the application parsed it, strictly (RFC 9112), with what was ambiguous about
/// its framing.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// `content-length: N`, `chunked` or `no body`.
    framing: String,
    /// What a lenient parser could read differently: both Content-Length and
    /// Transfer-Encoding, several Content-Lengths, obs-fold, bare CR or LF, …
    flaws: Vec<String>,
}

#[derive(Default)]
struct AppLog {
    requests: Vec<Seen>,
    /// Requests whose head arrived but whose body did not, whole: what failed.
    aborted: Vec<String>,
    /// Every connection's bytes, the first [`RECORD_BYTES`] of each.
    connections: Vec<Vec<u8>>,
    /// `/big/` answers being written.
    streaming: usize,
}

const RECORD_BYTES: usize = 1 << 20;

/// The raw HTTP/1 application: records the bytes of every connection and the requests it
/// parses from them, and answers each `200 app saw METHOD PATH (N bytes)`; `/big/N` answers N
/// bytes (counting what it wrote), `/slow` answers after 300 ms.
struct App {
    log: Arc<Mutex<AppLog>>,
    written: Arc<AtomicU64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl App {
    fn start(pod: &Pod) -> anyhow::Result<App> {
        let log = Arc::new(Mutex::new(AppLog::default()));
        let written = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (up, is_up) = mpsc::channel();
        let (l, w) = (log.clone(), written.clone());
        let _thread = pod.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], APP_PORT)))
                        .await?;
                let _ = up.send(());
                let accept = async {
                    while let Ok((io, _)) = listener.accept().await {
                        let id = {
                            let mut log = l.lock().unwrap();
                            log.connections.push(Vec::new());
                            log.connections.len() - 1
                        };
                        let (l, w) = (l.clone(), w.clone());
                        tokio::spawn(async move {
                            let _ = serve(io, id, &l, &w).await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
                Ok(())
            })
        });
        is_up
            .recv_timeout(TIMEOUT)
            .map_err(|_| anyhow!("the app in pod {} did not start", pod.name))?;
        Ok(App {
            log,
            written,
            _stop: stop,
        })
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Whether any connection's recorded bytes contain `needle`.
    fn received(&self, needle: &str) -> bool {
        let log = self.log.lock().unwrap();
        log.connections
            .iter()
            .any(|bytes| find(bytes, needle.as_bytes()).is_some())
    }

    /// Connections accepted so far.
    fn connections(&self) -> usize {
        self.log.lock().unwrap().connections.len()
    }

    fn aborted(&self) -> Vec<String> {
        self.log.lock().unwrap().aborted.clone()
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn streaming(&self) -> usize {
        self.log.lock().unwrap().streaming
    }
}

/// Reads a connection's bytes into `buf`, recording them in the log.
struct Reader<'a> {
    io: tokio::net::tcp::OwnedReadHalf,
    buf: BytesMut,
    id: usize,
    log: &'a Mutex<AppLog>,
}

impl Reader<'_> {
    /// Reads more; false at EOF.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        let from = self.buf.len();
        let n = read_some(&mut self.io, &mut self.buf).await?;
        let mut log = self.log.lock().unwrap();
        let record = &mut log.connections[self.id];
        let room = RECORD_BYTES.saturating_sub(record.len());
        record.extend_from_slice(&self.buf[from..from + n.min(room)]);
        Ok(n > 0)
    }

    /// The bytes up to and with `delimiter`, at most `limit` long.
    async fn until(&mut self, delimiter: &[u8], limit: usize) -> anyhow::Result<Option<BytesMut>> {
        loop {
            if let Some(at) = find(&self.buf, delimiter) {
                return Ok(Some(self.buf.split_to(at + delimiter.len())));
            }
            if self.buf.len() > limit {
                bail!("no {delimiter:?} in {limit} bytes");
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads and drops `n` bytes.
    async fn skip(&mut self, mut n: u64) -> anyhow::Result<()> {
        loop {
            let take = n.min(self.buf.len() as u64);
            self.buf.advance(take as usize);
            n -= take;
            if n == 0 {
                return Ok(());
            }
            if !self.fill().await? {
                bail!("EOF with {n} body bytes to go");
            }
        }
    }
}

async fn read_some(
    io: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    buf.reserve(64 << 10);
    io.read_buf(buf).await
}

/// Serves one connection of the app.
async fn serve(
    io: tokio::net::TcpStream,
    id: usize,
    log: &Mutex<AppLog>,
    written: &AtomicU64,
) -> anyhow::Result<()> {
    let (read, mut write) = io.into_split();
    let mut reader = Reader {
        io: read,
        buf: BytesMut::new(),
        id,
        log,
    };
    loop {
        let Some(head) = reader.until(b"\r\n\r\n", 1 << 20).await? else {
            return Ok(());
        };
        let mut seen = parse_head(&head);
        let body = match read_body(&mut reader, &mut seen).await {
            Ok(n) => n,
            Err(err) => {
                let aborted = format!("{} {} ({}): {err:#}", seen.method, seen.path, seen.framing);
                log.lock().unwrap().aborted.push(aborted);
                return Err(err);
            }
        };
        let (method, path) = (seen.method.clone(), seen.path.clone());
        log.lock().unwrap().requests.push(seen);
        if path == "/slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(n) = path
            .strip_prefix("/big/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            log.lock().unwrap().streaming += 1;
            let streamed = async {
                write
                    .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n").as_bytes())
                    .await?;
                let chunk = vec![b'z'; 64 << 10];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    write.write_all(&chunk[..k]).await?;
                    written.fetch_add(k as u64, Ordering::Relaxed);
                    left -= k as u64;
                }
                Ok::<_, std::io::Error>(())
            }
            .await;
            log.lock().unwrap().streaming -= 1;
            streamed?;
        } else {
            let answer = format!("app saw {method} {path} ({body} bytes)\n");
            write
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    )
                    .as_bytes(),
                )
                .await?;
        }
    }
}

/// Reads the body of the request `seen` announced, noting flaws in its chunks; its length.
async fn read_body(reader: &mut Reader<'_>, seen: &mut Seen) -> anyhow::Result<u64> {
    Ok(match seen.framing.as_str() {
        "chunked" => {
            let mut total = 0u64;
            loop {
                let line = reader
                    .until(b"\r\n", 4096)
                    .await?
                    .context("EOF in a chunk size")?;
                let size = std::str::from_utf8(&line[..line.len() - 2])
                    .ok()
                    .and_then(|l| u64::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                    .context("a bad chunk size")?;
                if line[..line.len() - 2].contains(&b'\n')
                    || line[..line.len() - 2].contains(&b'\r')
                {
                    seen.flaws.push("bare CR or LF in a chunk line".into());
                }
                if size == 0 {
                    // Trailers, up to the empty line.
                    while reader
                        .until(b"\r\n", 4096)
                        .await?
                        .context("EOF in trailers")?
                        .len()
                        > 2
                    {}
                    break;
                }
                reader.skip(size).await?;
                let end = reader
                    .until(b"\r\n", 2)
                    .await?
                    .context("EOF after a chunk")?;
                if &end[..] != b"\r\n" {
                    seen.flaws.push("chunk data longer than its size".into());
                }
                total += size;
            }
            total
        }
        framing => match framing.strip_prefix("content-length: ") {
            Some(n) => {
                let n: u64 = n.parse()?;
                reader.skip(n).await?;
                n
            }
            None => 0,
        },
    })
}

/// Parses a request head (ending in `\r\n\r\n`) strictly, noting every ambiguity.
fn parse_head(head: &[u8]) -> Seen {
    let mut flaws = Vec::new();
    let text = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
    let lines: Vec<&str> = text.split("\r\n").collect();
    if lines.iter().any(|l| l.contains('\n')) {
        flaws.push("bare LF".to_string());
    }
    if lines.iter().any(|l| l.contains('\r')) {
        flaws.push("bare CR".to_string());
    }
    let mut request_line = lines[0].split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in &lines[1..] {
        if line.starts_with([' ', '\t']) {
            flaws.push(format!("obs-fold {line:?}"));
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            flaws.push(format!("not a field {line:?}"));
            continue;
        };
        if name.contains(|c: char| c.is_whitespace()) {
            flaws.push(format!("whitespace in a field name {name:?}"));
        }
        fields
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.trim_matches([' ', '\t']).to_string());
    }
    let cl = fields.get("content-length").cloned().unwrap_or_default();
    let te = fields.get("transfer-encoding").cloned().unwrap_or_default();
    if !cl.is_empty() && !te.is_empty() {
        flaws.push(format!(
            "both Content-Length {cl:?} and Transfer-Encoding {te:?}"
        ));
    }
    if cl.len() > 1 {
        flaws.push(format!("{} Content-Length fields {cl:?}", cl.len()));
    }
    if cl
        .iter()
        .any(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()))
    {
        flaws.push(format!("Content-Length {cl:?}"));
    }
    if te.len() > 1 || te.iter().any(|v| v != "chunked") {
        flaws.push(format!("Transfer-Encoding {te:?}"));
    }
    let framing = if !te.is_empty() {
        "chunked".to_string()
    } else if let Some(n) = cl.first().and_then(|v| v.parse::<u64>().ok()) {
        format!("content-length: {n}")
    } else {
        "no body".to_string()
    };
    Seen {
        method,
        path,
        framing,
        flaws,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
