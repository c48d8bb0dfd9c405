//! Issue 17, "Reliability and security suite": the HTTP/2 attacks, end to end on pods. Needs
//! root.
//!
//! A meshed server pod (identity disabled: plaintext HTTP/2, so the attacker's frames reach the
//! inbound proxy's HTTP/2 server as written) runs an application on port 8080; an attacker pod
//! sends raw frames ([`mesh_tests::h2raw`]) to that port with prior knowledge, which the pod's
//! redirect hands to the inbound proxy; a second, well-behaved client pod sends requests over
//! HTTP/2 to the same port before and during the attack and measures their latency. Each test
//! records (section "HTTP/2 attacks") the proxy's peak RSS growth and CPU time during the attack,
//! the other client's p99 before and during, and how the attacker's connections ended, and
//! asserts that the proxy stayed bounded, that the other client's requests all succeeded within a
//! generous latency bound, and that the proxy sent GOAWAY where h2's mitigations say it does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_cli::local::{require_root, Cluster, MeshOptions, Pod, Proxy};
use mesh_tests::h2raw::{self, Conn, Seen};
use mesh_tests::record;
use mesh_tests::reliability::{thousands, Usage};

const SECTION: &str = "HTTP/2 attacks";
/// The application's port on the server pod, which its inbound proxy intercepts.
const APP_PORT: u16 = 8080;
/// The body of the application's `/big`: far more than a proxy should hold for one client.
const BIG_BODY: usize = 16 << 20;
/// How much the proxy's peak RSS may grow during an attack.
const RSS_CEILING_KB: u64 = 32 << 10;
/// The other client's requests before the attack.
const BEFORE_REQUESTS: usize = 300;
/// The other client's pause between requests (pacing, so a few hundred requests span the
/// attack).
const PACE: Duration = Duration::from_millis(5);
/// How long one of the other client's requests may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The other client's p99 during an attack may be this many times its p99 before, or
/// [`P99_FLOOR`], whichever is larger: generous, the machine is shared.
const P99_FACTOR: u32 = 10;
const P99_FLOOR: Duration = Duration::from_millis(500);
/// How long an attack goes on at most (Rapid Reset: [`RAPID_RESET_SECS`]).
const ATTACK: Duration = Duration::from_secs(5);

/// One attack at a time in this binary: each measures the proxy's memory and latency, which a
/// neighbour would skew (`scripts/reliability` also runs one test at a time).
static SERIAL: Mutex<()> = Mutex::new(());

// === the attacks ===

/// Rapid Reset pairs at most.
const RAPID_RESET_PAIRS: u64 = 100_000;
const RAPID_RESET_SECS: Duration = Duration::from_secs(10);

/// CVE-2023-44487: HEADERS and RST_STREAM pairs as fast as the proxy takes them, on new
/// connections as the proxy closes them, until the proxy has taken 100,000 pairs or 10 s have
/// passed. h2 counts the streams reset before the server accepted them and sends GOAWAY
/// ENHANCE_YOUR_CALM past its limit (`max_pending_accept_reset_streams`, 20 by default).
#[test]
fn rapid_reset() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::new("h2-rapid-reset");
    let run = bed.attack(|addr| {
        let start = Instant::now();
        let mut conns = Conns::default();
        // Pairs written, and pairs the proxy took (up to a GOAWAY's last stream).
        let (mut written, mut taken) = (0u64, 0u64);
        let block = h2raw::request_block("GET", "/", "server");
        while taken < RAPID_RESET_PAIRS && start.elapsed() < RAPID_RESET_SECS {
            let mut conn = Conn::connect(addr, &[])?;
            conn.handshake(mesh_tests::TIMEOUT)?;
            let mut stream = 1u32;
            let mut on_conn = 0u64;
            let mut buf = Vec::new();
            while taken + on_conn < RAPID_RESET_PAIRS
                && start.elapsed() < RAPID_RESET_SECS
                && !conn.is_over()
            {
                buf.clear();
                for _ in 0..100 {
                    h2raw::headers(&mut buf, stream, &block, true, true);
                    h2raw::rst_stream(&mut buf, stream, h2raw::CANCEL);
                    stream += 2;
                }
                if conn.send(&buf).is_err() {
                    break;
                }
                on_conn += 100;
            }
            let attack_over =
                taken + on_conn >= RAPID_RESET_PAIRS || start.elapsed() >= RAPID_RESET_SECS;
            if attack_over && !conn.is_over() {
                // The attack's end, not the proxy's: not a connection the proxy let through.
                written += on_conn;
                taken += on_conn;
                conns.stopped += 1;
                break;
            }
            let seen = conn.wait_end(Duration::from_secs(1));
            written += on_conn;
            taken += match &seen.goaway {
                Some((goaway, _)) => u64::from(goaway.last_stream.div_ceil(2)),
                None => on_conn,
            };
            conns.add(&seen, on_conn);
        }
        Ok((
            Flood {
                conns,
                sent: written,
                took: start.elapsed(),
            },
            taken,
        ))
    });
    let (flood, taken) = &run.attack;
    let goaways = flood.conns.goaways(h2raw::ENHANCE_YOUR_CALM);
    let figure = format!(
        "{}, {} pairs written on {} connections in {:.1} s, {} taken by the proxy; {} after \
         median {} streams",
        run.summary(),
        thousands(flood.sent),
        thousands(flood.conns.count),
        flood.took.as_secs_f64(),
        thousands(*taken),
        flood.conns.outcomes(),
        thousands(flood.conns.median_last_stream_pairs()),
    );
    let goaway_ok = goaways == flood.conns.count && flood.conns.count > 0;
    let passed = run.bounded() && goaway_ok;
    assert!(
        record!(
            SECTION,
            "Rapid Reset (HEADERS + RST_STREAM pairs)",
            &figure,
            run.target("every connection GOAWAY ENHANCE_YOUR_CALM"),
            passed
        ),
        "{figure}\n{}",
        run.failures(&[(!goaway_ok).then(|| {
            "not every attacking connection ended with GOAWAY ENHANCE_YOUR_CALM".to_string()
        })])
    );
}

/// The CONTINUATION flood of 2024: HEADERS without END_HEADERS, then CONTINUATION frames full
/// of header fields and never END_HEADERS, until 64 MB are sent or the proxy closes, on new
/// connections for [`ATTACK`]. h2 counts the CONTINUATION frames of a header block against
/// what the header list size allows and sends GOAWAY ENHANCE_YOUR_CALM past it.
#[test]
fn continuation_flood() {
    const PER_CONN: u64 = 64 << 20;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::new("h2-continuation");
    let run = bed.attack(|addr| {
        let start = Instant::now();
        let mut conns = Conns::default();
        let mut sent = 0u64;
        // One frame's worth of small header fields.
        let mut fields = Vec::new();
        let mut i = 0;
        while fields.len() < h2raw::DEFAULT_MAX_FRAME - 200 {
            h2raw::hpack_literal(&mut fields, format!("x-flood-{i}").as_bytes(), &[b'a'; 100]);
            i += 1;
        }
        let mut frame = Vec::new();
        h2raw::continuation(&mut frame, 1, &fields, false);
        while start.elapsed() < ATTACK {
            let mut conn = Conn::connect(addr, &[])?;
            conn.handshake(mesh_tests::TIMEOUT)?;
            let mut buf = Vec::new();
            h2raw::headers(
                &mut buf,
                1,
                &h2raw::request_block("GET", "/", "server"),
                true,
                false,
            );
            let mut on_conn = 0;
            if conn.send(&buf).is_ok() {
                while on_conn < PER_CONN && !conn.is_over() && conn.send(&frame).is_ok() {
                    on_conn += frame.len() as u64;
                }
            }
            sent += on_conn;
            let seen = conn.wait_end(Duration::from_secs(1));
            conns.add(&seen, on_conn);
        }
        Ok(Flood {
            conns,
            sent,
            took: start.elapsed(),
        })
    });
    let flood = &run.attack;
    let goaways = flood.conns.goaways(h2raw::ENHANCE_YOUR_CALM);
    let figure = format!(
        "{}, {} of CONTINUATION on {} connections in {:.1} s; {}; sent per connection before \
         it ended: median {}",
        run.summary(),
        mb_bytes(flood.sent),
        thousands(flood.conns.count),
        flood.took.as_secs_f64(),
        flood.conns.outcomes(),
        mb_bytes(flood.conns.median_sent()),
    );
    let goaway_ok = goaways == flood.conns.count && flood.conns.count > 0;
    let passed = run.bounded() && goaway_ok;
    assert!(
        record!(
            SECTION,
            "CONTINUATION flood",
            &figure,
            run.target("every connection GOAWAY ENHANCE_YOUR_CALM"),
            passed
        ),
        "{figure}\n{}",
        run.failures(&[(!goaway_ok).then(|| {
            "not every attacking connection ended with GOAWAY ENHANCE_YOUR_CALM".to_string()
        })])
    );
}

/// Frames per connection of a SETTINGS or PING flood.
const FLOOD_FRAMES: usize = 100_000;

/// SETTINGS frames by the hundred thousand, their ACKs never read: the proxy must stop reading
/// (backpressure) or close, not queue ACKs without bound.
#[test]
fn settings_flood() {
    let mut frame = Vec::new();
    h2raw::settings(&mut frame, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]);
    unread_flood("SETTINGS flood (ACKs never read)", "h2-settings", frame);
}

/// PING frames by the hundred thousand, their ACKs never read.
#[test]
fn ping_flood() {
    let mut frame = Vec::new();
    h2raw::ping(&mut frame, *b"mesh-h2!");
    unread_flood("PING flood (ACKs never read)", "h2-ping", frame);
}

/// Sends `frame` [`FLOOD_FRAMES`] times on a connection without reading, until the proxy stops
/// reading ([`Conn::WRITE_TIMEOUT`]) or closes; then reads what it answered; again on new
/// connections for [`ATTACK`]. The proxy may close such a connection or hold it with
/// backpressure; either way it stays bounded.
fn unread_flood(check: &str, cluster: &str, frame: Vec<u8>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::new(cluster);
    let run = bed.attack(move |addr| {
        let start = Instant::now();
        let mut conns = Conns::default();
        let mut sent = 0u64;
        let mut blocked = 0u64;
        let batch: Vec<u8> = frame.repeat(1_000);
        while start.elapsed() < ATTACK {
            let mut conn = Conn::connect(addr, &[])?;
            let mut frames = 0;
            while frames < FLOOD_FRAMES && start.elapsed() < ATTACK {
                match conn.send(&batch) {
                    Ok(()) => frames += 1_000,
                    Err(err) => {
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) {
                            blocked += 1;
                        }
                        break;
                    }
                }
            }
            sent += frames as u64;
            // Now read what the proxy answered, for a moment: its ACKs, maybe a GOAWAY.
            conn.start_reading()?;
            let seen = conn.wait_end(Duration::from_secs(1));
            conns.add(&seen, frames as u64);
        }
        Ok((
            Flood {
                conns,
                sent,
                took: start.elapsed(),
            },
            blocked,
        ))
    });
    let (flood, blocked) = &run.attack;
    let figure = format!(
        "{}, {} frames on {} connections in {:.1} s, {} of them held by backpressure (writes \
         blocked {:?}); then {}",
        run.summary(),
        thousands(flood.sent),
        thousands(flood.conns.count),
        flood.took.as_secs_f64(),
        blocked,
        Conn::WRITE_TIMEOUT,
        flood.conns.outcomes(),
    );
    assert!(
        record!(
            SECTION,
            check,
            &figure,
            run.target("backpressure or GOAWAY"),
            run.bounded()
        ),
        "{figure}\n{}",
        run.failures(&[])
    );
}

/// Streams of one connection whose responses the client never takes.
const STALLED_STREAMS: u32 = 100;
/// How long the client holds them.
const STALL: Duration = Duration::from_secs(5);

/// 100 streams ask for a 16 MiB body each with a stream window of 0 and never a WINDOW_UPDATE:
/// the proxy must leave the bodies where they are (in the application, back-pressured), not
/// buffer 1.6 GB.
#[test]
fn stream_window_stall() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::new("h2-window-stall");
    let run = bed.attack(|addr| {
        let mut conn = Conn::connect(addr, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, 0)])?;
        conn.handshake(mesh_tests::TIMEOUT)?;
        let mut buf = Vec::new();
        let block = h2raw::request_block("GET", "/big", "server");
        for i in 0..STALLED_STREAMS {
            h2raw::headers(&mut buf, 1 + 2 * i, &block, true, true);
        }
        conn.send(&buf)?;
        // Pacing the attack: the streams stay stalled this long.
        std::thread::sleep(STALL);
        Ok(conn.seen())
    });
    let seen = &run.attack;
    let figure = format!(
        "{}, {} streams of {} each with window 0 for {:?}: {} responses began, {} of body \
         sent; connection {}",
        run.summary(),
        STALLED_STREAMS,
        mb_bytes(BIG_BODY as u64),
        STALL,
        seen.responses,
        mb_bytes(seen.data_bytes),
        seen.outcome(),
    );
    let no_data = seen.data_bytes == 0;
    let stalled = (!no_data).then(|| "the proxy sent DATA past a window of 0".to_string());
    record!(
        SECTION,
        "Stream-window stall (window 0, large responses)",
        format!("{figure}{}", hol_blocking(&run)),
        run.target("no DATA past the window"),
        run.bounded() && no_data
    );
    assert!(
        run.bounded() && no_data,
        "{figure}\n{}",
        run.failures(&[stalled])
    );
}

/// What the two stall tests would show if the other clients stalled too: the inbound proxy
/// sends every HTTP/2 request to an application port over one shared HTTP/2 connection
/// (`http/client.rs`), whose connection window stalled streams fill with their unread bodies.
/// One client connection's streams cannot fill it (`HTTP2_CONNECTION_WINDOW`: a stream window
/// for each stream a client connection may open); with hyper's defaults three streams did.
fn hol_blocking<T>(run: &Run<T>) -> &'static str {
    if run.bounded() {
        ""
    } else {
        "; the other clients of the application port stalled with the attacker's streams \
         (they share the proxy's one HTTP/2 connection to the application, whose connection \
         window the unread bodies filled)"
    }
}

/// The same 100 streams of 16 MiB with the windows wide open, but the client never reads its
/// socket: the proxy may buffer what it allows per stream
/// (`http::server::HTTP2_MAX_SEND_BUF_BYTES`, 64 KiB) and no more.
#[test]
fn unread_responses_with_open_windows() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::new("h2-unread");
    let run = bed.attack(|addr| {
        let max = 0x7fff_ffff;
        let mut conn = Conn::connect(addr, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, max)])?;
        let mut buf = Vec::new();
        h2raw::window_update(&mut buf, 0, max - 65_535);
        let block = h2raw::request_block("GET", "/big", "server");
        for i in 0..STALLED_STREAMS {
            h2raw::headers(&mut buf, 1 + 2 * i, &block, true, true);
        }
        conn.send(&buf)?;
        // Pacing the attack: the socket stays unread this long.
        std::thread::sleep(STALL);
        Ok(())
    });
    let figure = format!(
        "{}, {} streams of {} each, windows open, socket never read for {:?}",
        run.summary(),
        STALLED_STREAMS,
        mb_bytes(BIG_BODY as u64),
        STALL,
    );
    record!(
        SECTION,
        "Unread responses (windows open, socket never read)",
        format!("{figure}{}", hol_blocking(&run)),
        run.target("bounded"),
        run.bounded()
    );
    assert!(run.bounded(), "{figure}\n{}", run.failures(&[]));
}

/// Streams opened on one connection.
const MANY_STREAMS: u32 = 10_000;

/// 10,000 streams on one connection, each a request whose body never ends (so each stays
/// open): the proxy admits at most its SETTINGS_MAX_CONCURRENT_STREAMS, refuses the rest with
/// REFUSED_STREAM, and h2 ends the connection with GOAWAY ENHANCE_YOUR_CALM once it has refused
/// more than its limit of local resets (`max_local_error_reset_streams`, 1,024 in hyper).
#[test]
fn ten_thousand_concurrent_streams() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::new("h2-many-streams");
    let run = bed.attack(|addr| {
        let mut conn = Conn::connect(addr, &[])?;
        // Behave until the proxy's SETTINGS are in and acknowledged, so its limit applies: the
        // attack is what follows.
        conn.handshake(mesh_tests::TIMEOUT)?;
        let block = h2raw::request_block("POST", "/echo", "server");
        let mut opened = 0;
        let mut buf = Vec::new();
        for i in 0..MANY_STREAMS {
            h2raw::headers(&mut buf, 1 + 2 * i, &block, false, true);
            if buf.len() > 64 << 10 || i + 1 == MANY_STREAMS {
                if conn.send(&buf).is_err() {
                    break;
                }
                buf.clear();
                opened = i + 1;
            }
        }
        // Pacing the attack: the streams stay open this long.
        std::thread::sleep(STALL);
        Ok((opened, conn.seen()))
    });
    let (opened, seen) = &run.attack;
    let limit = seen.setting(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS);
    let refused = seen
        .resets
        .get(&h2raw::REFUSED_STREAM)
        .copied()
        .unwrap_or(0);
    let figure = format!(
        "{}, {} of {} streams sent; SETTINGS_MAX_CONCURRENT_STREAMS {}, {} refused \
         (REFUSED_STREAM), {} answered; connection {}",
        run.summary(),
        thousands(u64::from(*opened)),
        thousands(u64::from(MANY_STREAMS)),
        limit.map_or_else(|| "unset".to_string(), |l| thousands(u64::from(l))),
        thousands(refused),
        seen.responses,
        seen.outcome(),
    );
    // The limit is announced, and enforced: streams past it were refused, or the connection
    // ended.
    let limited = limit.is_some_and(|l| l <= 1_000) && (refused > 0 || seen.goaway.is_some());
    assert!(
        record!(
            SECTION,
            "10,000 concurrent streams on one connection",
            &figure,
            run.target("a max concurrent streams limit ≤ 1,000"),
            run.bounded() && limited
        ),
        "{figure}\n{}",
        run.failures(&[(!limited)
            .then(|| "the proxy announced or enforced no limit of ≤ 1,000 streams".into())])
    );
}

// === the bed ===

/// The pods of one attack: a meshed server with the application, the attacker, the other
/// client.
struct Bed {
    // Dropped last: the pods' processes and namespaces go with it.
    proxy: Proxy,
    attacker: Pod,
    client: Pod,
    target: SocketAddr,
    _app: App,
    _cluster: Cluster,
}

impl Bed {
    fn new(name: &str) -> Bed {
        require_root().expect("end-to-end tests need root and network namespaces");
        let started = Instant::now();
        let mut cluster = Cluster::new(name).expect("cluster");
        let server = cluster.add_pod("server").expect("server pod");
        let attacker = cluster.add_pod("attacker").expect("attacker pod");
        let client = cluster.add_pod("client").expect("client pod");
        let app = App::start(&server).expect("the application");
        let proxy = server
            .mesh(MeshOptions::default())
            .expect("the server pod is meshed");
        let target = SocketAddr::from((server.ip, APP_PORT));
        client
            .wait_http_ok(target, "/", mesh_tests::TIMEOUT)
            .expect("the application answers through the inbound proxy");
        eprintln!("{name}: pods up in {:?}", started.elapsed());
        Bed {
            proxy,
            attacker,
            client,
            target,
            _app: app,
            _cluster: cluster,
        }
    }

    /// Measures the other client, then runs `attack` (given the target address) in the
    /// attacker pod while the other client measures again, and what the proxy used meanwhile.
    fn attack<T: Send + 'static>(
        &self,
        attack: impl FnOnce(SocketAddr) -> anyhow::Result<T> + Send + 'static,
    ) -> Run<T> {
        let before = measure(&self.client, self.target, Until::Count(BEFORE_REQUESTS))
            .join()
            .expect("measuring thread")
            .expect("the other client before the attack");
        let pid = self.proxy.pid();
        eprintln!(
            "measured before: {} requests, p99 {}",
            before.samples.len(),
            ms(before.p99())
        );
        // Resets the proxy's peak RSS (VmHWM) to its current RSS, so the peak read after the
        // attack is the attack's; where the kernel refuses, the peak since start is an upper
        // bound.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        let usage_before = Usage::of(pid).expect("the proxy's usage");
        let stop = Arc::new(AtomicBool::new(false));
        let during = measure(&self.client, self.target, Until::Stopped(stop.clone()));
        let target = self.target;
        let attack = self.attacker.run_in(move || attack(target)).join();
        stop.store(true, Ordering::Relaxed);
        let usage_after = Usage::of(pid);
        let during = during
            .join()
            .expect("measuring thread")
            .expect("the other client during the attack");
        let attack = match attack {
            Ok(Ok(attack)) => attack,
            Ok(Err(err)) => panic!("the attack failed: {err:#}"),
            Err(_) => panic!("the attack panicked"),
        };
        let usage_after = usage_after.unwrap_or_else(|err| {
            panic!(
                "the proxy is gone after the attack ({err:#}); its log:\n{}",
                self.proxy.log()
            )
        });
        eprintln!("attack over");
        let after = measure(&self.client, self.target, Until::Count(20))
            .join()
            .expect("measuring thread")
            .expect("the other client after the attack");
        Run {
            attack,
            before,
            during,
            after,
            rss_growth_kb: usage_after.peak_rss_kb.saturating_sub(usage_before.rss_kb),
            cpu: usage_after.cpu.saturating_sub(usage_before.cpu),
        }
    }
}

/// What one attack did to the proxy and to the other client.
struct Run<T> {
    attack: T,
    before: Latency,
    during: Latency,
    after: Latency,
    /// The proxy's peak RSS during the attack, above its RSS before.
    rss_growth_kb: u64,
    /// The proxy's CPU time during the attack.
    cpu: Duration,
}

impl<T> Run<T> {
    /// The part of the figure every attack has.
    fn summary(&self) -> String {
        // A request that failed counts as slower than any answer: with 1% or more failed, the
        // p99 is no answer.
        let requests = self.during.samples.len() + self.during.failures.len();
        let during = if self.during.failures.len() * 100 > requests {
            "no answer".to_string()
        } else {
            ms(self.during.p99())
        };
        let failed = self.during.failures.len() + self.after.failures.len();
        let failed = match self.during.failures.first().or(self.after.failures.first()) {
            Some(first) => format!("{failed} failed: {first}"),
            None => "0 failed".to_string(),
        };
        format!(
            "peak RSS +{}, CPU {:.2} s, other client p99 {} → {} ({requests} requests during, \
             {failed})",
            mb(self.rss_growth_kb),
            self.cpu.as_secs_f64(),
            ms(self.before.p99()),
            during,
        )
    }

    /// The target every attack shares, and `more`.
    fn target(&self, more: &str) -> String {
        format!(
            "peak RSS ≤ +{}, other client all OK with p99 ≤ max({P99_FACTOR}× before, {}); {more}",
            mb(RSS_CEILING_KB),
            ms(P99_FLOOR)
        )
    }

    fn p99_bound(&self) -> Duration {
        (self.before.p99() * P99_FACTOR).max(P99_FLOOR)
    }

    /// Whether the proxy stayed bounded and the other client was served.
    fn bounded(&self) -> bool {
        self.failures(&[]).is_empty()
    }

    fn memory_failure(&self) -> Option<String> {
        (self.rss_growth_kb > RSS_CEILING_KB).then(|| {
            format!(
                "the proxy's peak RSS grew by {} (ceiling {})",
                mb(self.rss_growth_kb),
                mb(RSS_CEILING_KB)
            )
        })
    }

    /// What went wrong, one line each, with the attack's own `more` failures.
    fn failures(&self, more: &[Option<String>]) -> String {
        let mut failures: Vec<String> = more.iter().flatten().cloned().collect();
        failures.extend(self.memory_failure());
        for (when, latency) in [("during", &self.during), ("after", &self.after)] {
            if !latency.failures.is_empty() {
                failures.push(format!(
                    "{} of the other client's requests {when} the attack failed, e.g. {}",
                    latency.failures.len(),
                    latency.failures[0]
                ));
            }
        }
        if self.during.samples.is_empty() {
            failures.push("the other client got no answer during the attack".into());
        }
        if self.during.p99() > self.p99_bound() {
            failures.push(format!(
                "the other client's p99 went from {} to {} (bound {})",
                ms(self.before.p99()),
                ms(self.during.p99()),
                ms(self.p99_bound())
            ));
        }
        failures.join("\n")
    }
}

/// The attacking connections of a flood, and how they ended.
#[derive(Default)]
struct Conns {
    /// Connections the proxy ended or let through (not counting [`Conns::stopped`]).
    count: u64,
    /// Connections still open when the attack reached its own end.
    stopped: u64,
    /// Connections by outcome ([`Seen::outcome`]).
    outcomes: BTreeMap<String, u64>,
    /// What each connection sent before it ended (units of the attack).
    sent: Vec<u64>,
    /// The last stream each GOAWAY said the proxy processed.
    last_streams: Vec<u32>,
}

impl Conns {
    fn add(&mut self, seen: &Seen, sent: u64) {
        self.count += 1;
        *self.outcomes.entry(seen.outcome()).or_insert(0) += 1;
        self.sent.push(sent);
        if let Some((goaway, _)) = &seen.goaway {
            self.last_streams.push(goaway.last_stream);
        }
    }

    /// How many connections ended with GOAWAY `code`.
    fn goaways(&self, code: u32) -> u64 {
        let prefix = format!("GOAWAY {}", h2raw::reason(code));
        self.outcomes
            .iter()
            .filter(|(outcome, _)| outcome.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// `GOAWAY ENHANCE_YOUR_CALM (too_many_resets) ×12, still open ×1`.
    fn outcomes(&self) -> String {
        let mut outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(outcome, n)| format!("{outcome} ×{}", thousands(*n)))
            .collect();
        if self.stopped > 0 {
            outcomes.push(format!("open at the attack's end ×{}", self.stopped));
        }
        outcomes.join(", ")
    }

    fn median_sent(&self) -> u64 {
        median(&self.sent)
    }

    /// The median number of client streams up to a GOAWAY's last stream id.
    fn median_last_stream_pairs(&self) -> u64 {
        let pairs: Vec<u64> = self
            .last_streams
            .iter()
            .map(|s| u64::from(s.div_ceil(2)))
            .collect();
        median(&pairs)
    }
}

/// A flood on successive connections.
struct Flood {
    conns: Conns,
    /// What was sent in all (pairs, bytes or frames).
    sent: u64,
    took: Duration,
}

// === the other client ===

/// When the other client stops.
enum Until {
    Count(usize),
    Stopped(Arc<AtomicBool>),
}

/// The other client's latencies and failures.
struct Latency {
    samples: Vec<Duration>,
    failures: Vec<String>,
}

impl Latency {
    fn p99(&self) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        match sorted.len() {
            0 => Duration::ZERO,
            n => sorted[(n * 99 / 100).min(n - 1)],
        }
    }
}

/// From inside `pod`, `GET /` over one HTTP/2 connection (a new one after a failure) to `addr`
/// until `until`, [`PACE`] apart; every answer must be 200 `ok` within [`REQUEST_TIMEOUT`].
fn measure(
    pod: &Pod,
    addr: SocketAddr,
    until: Until,
) -> std::thread::JoinHandle<anyhow::Result<Latency>> {
    pod.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut latency = Latency {
                samples: Vec::new(),
                failures: Vec::new(),
            };
            let mut sender = None;
            loop {
                let done = match &until {
                    Until::Count(n) => latency.samples.len() + latency.failures.len() >= *n,
                    Until::Stopped(stop) => stop.load(Ordering::Relaxed),
                };
                if done {
                    return Ok(latency);
                }
                let start = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, get(&mut sender, addr)).await {
                    Ok(Ok(())) => latency.samples.push(start.elapsed()),
                    Ok(Err(err)) => {
                        sender = None;
                        latency.failures.push(format!("{err:#}"));
                    }
                    Err(_) => {
                        sender = None;
                        latency
                            .failures
                            .push(format!("no answer within {REQUEST_TIMEOUT:?}"));
                    }
                }
                // Pacing, not waiting for a condition: see `PACE`.
                tokio::time::sleep(PACE).await;
            }
        })
    })
}

type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// One `GET /` on `sender`, connecting it first when there is none.
async fn get(sender: &mut Option<Sender>, addr: SocketAddr) -> anyhow::Result<()> {
    if sender.is_none() {
        let io = tokio::net::TcpStream::connect(addr).await?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        *sender = Some(send);
    }
    let send = sender.as_mut().expect("connected above");
    let req = http::Request::get(format!("http://server:{APP_PORT}/")).body(Empty::new())?;
    let rsp = send.send_request(req).await?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status == 200 && body == "ok",
        "answered {status}: {:?}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

// === the application ===

/// The server pod's application (HTTP/1 and HTTP/2): `/big` answers [`BIG_BODY`] bytes,
/// streamed; `/echo` answers the request's body once it ends; anything else `ok`. Dropping it
/// stops it.
struct App {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl App {
    fn start(pod: &Pod) -> anyhow::Result<App> {
        let (up, is_up) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let _thread = pod.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let addr = SocketAddr::from(([0, 0, 0, 0], APP_PORT));
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let _ = up.send(());
                let serve = async move {
                    loop {
                        let Ok((io, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(answer);
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(io), service)
                                    .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
                Ok(())
            })
        });
        is_up
            .recv_timeout(mesh_tests::TIMEOUT)
            .map_err(|_| anyhow!("the application in pod {} did not start", pod.name))?;
        Ok(App { stop: Some(stop) })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The application may have ended already.
            let _ = stop.send(());
        }
    }
}

type AppBody = BoxBody<Bytes, Infallible>;

async fn answer(req: http::Request<Incoming>) -> Result<http::Response<AppBody>, Infallible> {
    let body = match req.uri().path() {
        "/big" => {
            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
            let chunks = (0..BIG_BODY / chunk.len())
                .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
            StreamBody::new(futures_util::stream::iter(chunks)).boxed()
        }
        "/echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Full::new(body).boxed()
        }
        _ => Full::new(Bytes::from_static(b"ok")).boxed(),
    };
    Ok(http::Response::new(body))
}

// === figures ===

/// Memory in kB as MB.
fn mb(kb: u64) -> String {
    mesh_tests::reliability::mb(kb)
}

/// Traffic in bytes as MB.
fn mb_bytes(bytes: u64) -> String {
    mb(bytes / 1024)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}
