//! The JSON-lines decoders of the watch streams: the destination watch (`Update`), the outbound
//! and inbound policy watches (`OutboundPolicy`, `InboundPolicy`) and the tap stream (`Event`),
//! each read as its client reads a response body: `mesh_api::LineDecoder` over the pieces the
//! body arrives in, every line decoded with serde into the API's types, the stream ending at its
//! first error. A policy that decodes is then compiled as the proxy compiles it (outbound:
//! route and MetaRoute matches with their regular expressions; inbound: authorizations, networks,
//! rate limits) and asked a decision.
//!
//! The input is read as all four streams. Asserts: the lines do not depend on where the body
//! was cut, carry no newline and are not blank; every value that decodes encodes back
//! (`to_line`) to a line that decodes to the same value.
//!
//! `watch --write-seeds DIR FILE.yaml…` writes the policy lines the destination controller
//! serves for the objects of those files (the seed corpus's policies).
#![forbid(unsafe_code)]

use bytes::Bytes;
use mesh_api::{
    destination::{Update, MAX_LINE},
    inbound::{DefaultPolicy, InboundPolicy},
    policy::OutboundPolicy,
    tap::Event,
    LineDecoder, TooLong,
};
use mesh_proxy::{inbound::policy::PortPolicy, metrics::AuthzMetrics, outbound::policy::Compiled};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir, yamls @ ..] = &args[..] {
        if flag == "--write-seeds" {
            return write_seeds(dir.as_ref(), yamls);
        }
    }
    // Counters only: a panic cannot leave them inconsistent.
    let metrics = std::panic::AssertUnwindSafe(AuthzMetrics::default());
    afl::fuzz!(|data: &[u8]| {
        let (lines, end) = lines_of(&mesh_fuzz::pieces(data));
        let (whole, whole_end) = lines_of(&[data]);
        assert_eq!(
            (&lines, &end),
            (&whole, &whole_end),
            "framing depends on the cut"
        );
        for line in &lines {
            assert!(!line.contains(&b'\n') && line.len() <= MAX_LINE);
            assert!(!line.iter().all(u8::is_ascii_whitespace), "a blank line");
        }

        stream::<Update>(&lines, Update::to_line, |_| {});
        stream::<OutboundPolicy>(&lines, OutboundPolicy::to_line, |policy| {
            let compiled = Compiled::new(policy.clone());
            let req = http::Request::get("http://web.demo.svc.cluster.local/api/vote?v=v2")
                .header("x-canary", "1")
                .body(())
                .expect("a valid request");
            let _ = compiled.select(&req);
        });
        stream::<InboundPolicy>(&lines, InboundPolicy::to_line, |policy| {
            for default in [DefaultPolicy::AllUnauthenticated, DefaultPolicy::Deny] {
                let port = PortPolicy::compile(policy.clone(), default, &metrics, None);
                let client = std::net::IpAddr::from([10, 0, 0, 1]);
                let _ = port.authorize_tcp(
                    client,
                    Some("web.demo.serviceaccount.identity.mesh.cluster.local"),
                );
                let _ = port.permits_connection(client, None);
            }
        });
        stream::<Event>(&lines, Event::to_line, |_| {});
    });
}

/// The lines of a body that arrives in `pieces`, and whether it ended with a line too long.
fn lines_of(pieces: &[&[u8]]) -> (Vec<Bytes>, Option<TooLong>) {
    let mut decoder = LineDecoder::default();
    let mut lines = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        loop {
            match decoder.next_line() {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => break,
                Err(e) => return (lines, Some(e)),
            }
        }
    }
    (lines, None)
}

/// Reads `lines` as a stream of `T` until the first line that is not one; each `T` is given to
/// `use_it`, and must round-trip through `encode`.
fn stream<T>(lines: &[Bytes], encode: fn(&T) -> Bytes, mut use_it: impl FnMut(&T))
where
    T: DeserializeOwned + PartialEq + Debug,
{
    for line in lines {
        let value: T = match serde_json::from_slice(line) {
            Ok(value) => value,
            Err(error) => {
                if mesh_fuzz::verbose() {
                    eprintln!("{}: {error}", std::any::type_name::<T>());
                }
                return;
            }
        };
        mesh_fuzz::assert_round_trip(&value, encode);
        use_it(&value);
    }
}

/// Writes, for the objects of `yamls` (folder source files), the outbound policy line of each
/// Service port and the inbound policy line of each Pod port, as the controller serves them.
fn write_seeds(dir: &std::path::Path, yamls: &[String]) {
    use mesh_controller::{
        index::{Index, IndexConfig, Kind, Target},
        source::folder::parse_yaml,
    };
    std::fs::create_dir_all(dir).expect("the seed folder can be created");
    for yaml in yamls {
        let text = std::fs::read_to_string(yaml).expect("the YAML file can be read");
        let (objects, errors) = parse_yaml(&text);
        assert!(errors.is_empty(), "{yaml}: {errors:?}");
        let mut index = Index::new(IndexConfig::default());
        index.reset(objects.clone());
        let stem = std::path::Path::new(yaml)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mut outbound, mut inbound) = (Vec::new(), Vec::new());
        for object in &objects {
            let key = object.key();
            match key.kind {
                Kind::Service => {
                    for port in [80, 6379] {
                        let target = Target::Service {
                            namespace: key.namespace.clone(),
                            name: key.name.clone(),
                            port,
                            hostname: None,
                        };
                        let policy = index.outbound_policy(&target, Some(&key.namespace));
                        if !policy.routes.is_empty() || !policy.meta_routes.is_empty() {
                            outbound.extend_from_slice(&policy.to_line());
                        }
                    }
                }
                Kind::Pod => {
                    let (policy, _) = index.inbound(&key.namespace, &key.name, 8080);
                    inbound.extend_from_slice(&policy.to_line());
                }
                _ => {}
            }
        }
        for (kind, lines) in [("outbound", outbound), ("inbound", inbound)] {
            if !lines.is_empty() {
                let path = dir.join(format!("{kind}-policy-{stem}.jsonl"));
                std::fs::write(path, lines).expect("the seed can be written");
            }
        }
    }
}
