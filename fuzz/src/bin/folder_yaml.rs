//! The destination controller's folder source: a file of the watched folder, as
//! `source::folder::parse_yaml` reads it (multi-document YAML or JSON, lists, every kind the
//! index holds), then the index built from its objects (`Index::reset`, as a rescan does) and
//! asked what the controller serves from it: each Service's resolution and outbound policy
//! (routes, faults, MetaRoutes), each Pod's inbound policy (Servers, authorizations, rate limits),
//! the route reports and the warnings of objects and of the inbound index.
//!
//! The input is the file's text (a file that is not UTF-8 is refused before parsing). Asserts:
//! an index emptied by deleting every object it holds holds nothing; a policy served encodes to
//! a line that decodes back to it (what the proxy reads).
#![forbid(unsafe_code)]

use mesh_api::{inbound::InboundPolicy, policy::OutboundPolicy};
use mesh_controller::{
    index::{Index, IndexConfig, Kind, Object, Target},
    source::folder::parse_yaml,
};

/// Every kind the index holds.
const KINDS: [Kind; 13] = [
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
    Kind::ReplicaSet,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::HttpFault,
    Kind::Server,
    Kind::AuthorizationPolicy,
    Kind::MeshTlsAuthentication,
    Kind::NetworkAuthentication,
    Kind::HttpLocalRateLimitPolicy,
    Kind::MetaRoute,
];

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let (objects, errors) = parse_yaml(text);
        if mesh_fuzz::verbose() {
            eprintln!("{} objects, errors: {errors:?}", objects.len());
        }
        let mut index = Index::new(IndexConfig::default());
        index.reset(objects.clone());
        for object in &objects {
            let _ = object.warnings();
            query(&index, object);
        }
        let _ = index.inbound_warnings();
        let _ = index.route_reports();

        // Emptied object by object, the index holds nothing.
        for kind in KINDS {
            for key in index.keys(kind) {
                index.delete(&key);
            }
        }
        let sizes = index.sizes();
        assert_eq!(
            (sizes.services, sizes.endpoint_slices, sizes.pods),
            (0, 0, 0),
            "deleted every key"
        );
        // And filled again one by one, as a watch delivers them.
        for object in objects {
            index.apply(object);
        }
        let _ = index.inbound_warnings();
    });
}

/// Asks the index what the controller would serve about `object`.
fn query(index: &Index, object: &Object) {
    let key = object.key();
    match key.kind {
        Kind::Service => {
            for port in [80, 6379, 9090] {
                let target = Target::Service {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    port,
                    hostname: None,
                };
                let _ = index.resolve(&target);
                let policy = index.outbound_policy(&target, Some(&key.namespace));
                mesh_fuzz::assert_round_trip(&policy, OutboundPolicy::to_line);
                let authority = format!("{}.{}.svc.cluster.local:{port}", key.name, key.namespace);
                if let Ok(parsed) = Target::parse(&authority, None, "cluster.local") {
                    let _ = index.resolve(&parsed);
                }
            }
        }
        Kind::Pod => {
            for port in [80, 8080, 9090] {
                let (policy, _) = index.inbound(&key.namespace, &key.name, port);
                mesh_fuzz::assert_round_trip(&policy, InboundPolicy::to_line);
            }
        }
        _ => {}
    }
}
