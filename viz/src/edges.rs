//! Who talks to whom: edges between workloads, with the identities on each side and whether the
//! hop is mutual TLS, from the senders' outbound metrics (`dst_*` labels, `tls`, `server_id`)
//! checked against the receivers' inbound ones (`client_id`).

use std::collections::{BTreeMap, HashSet};

use crate::model::{Kind, PodInfo, Workload};
use crate::stat::Scrapes;

/// One edge of `mesh viz edges`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub src: Workload,
    pub dst: Workload,
    /// The sender's identity as the receiver verified it (inbound `client_id`).
    pub client_id: Option<String>,
    /// The receiver's identity as the sender verified it (outbound `server_id`).
    pub server_id: Option<String>,
    /// Whether every hop seen on this edge is mutual TLS.
    pub mtls: bool,
    /// Why not, when it is not (`no_tls_reason`).
    pub no_tls_reason: Option<String>,
    /// Requests (HTTP) and connections (opaque TCP) seen.
    pub requests: u64,
}

/// The edges between workloads of `kind` among `pods`, from their scrapes, sorted.
pub fn edges(pods: &[PodInfo], scrapes: &Scrapes, kind: Kind) -> Vec<Edge> {
    let by_name: BTreeMap<(&str, &str), &PodInfo> = pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
        .collect();
    // The client identities each pod's inbound side verified.
    let mut verified: HashSet<(&str, &str, &str)> = HashSet::new();
    for pod in pods {
        let Some(samples) = scrapes.get(&(pod.namespace.clone(), pod.name.clone())) else {
            continue;
        };
        for s in samples {
            if s.label("direction") == Some("inbound") && s.value > 0.0 {
                if let Some(id) = s.label("client_id") {
                    verified.insert((pod.namespace.as_str(), pod.name.as_str(), id));
                }
            }
        }
    }
    let mut edges: BTreeMap<(Workload, Workload), Edge> = BTreeMap::new();
    for src_pod in pods {
        let Some(samples) = scrapes.get(&(src_pod.namespace.clone(), src_pod.name.clone())) else {
            continue;
        };
        for s in samples {
            let counts = s.name == "request_total"
                || (s.name == "tcp_open_total" && s.label("dst_pod").is_some());
            if !counts || s.label("direction") != Some("outbound") || s.value <= 0.0 {
                continue;
            }
            let (Some(dst_ns), Some(dst_name)) = (s.label("dst_namespace"), s.label("dst_pod"))
            else {
                continue;
            };
            let dst_pod = by_name.get(&(dst_ns, dst_name));
            let dsts = match dst_pod {
                Some(p) => p.workloads(kind),
                // A pod the target does not list: its Deployment label still places it.
                None => match (kind, s.label("dst_deployment")) {
                    (Kind::Deployment, Some(d)) => vec![Workload::new(kind, dst_ns, d)],
                    (Kind::Pod, _) => vec![Workload::new(kind, dst_ns, dst_name)],
                    (Kind::Namespace, _) => vec![Workload::new(kind, dst_ns, dst_ns)],
                    _ => vec![],
                },
            };
            let mtls = s.label("tls") == Some("true");
            let client_id = src_pod
                .identity
                .as_deref()
                .filter(|id| verified.contains(&(dst_ns, dst_name, id)));
            for src in src_pod.workloads(kind) {
                for dst in &dsts {
                    let edge = edges
                        .entry((src.clone(), dst.clone()))
                        .or_insert_with(|| Edge {
                            src: src.clone(),
                            dst: dst.clone(),
                            client_id: None,
                            server_id: None,
                            mtls: true,
                            no_tls_reason: None,
                            requests: 0,
                        });
                    edge.requests += s.value.round() as u64;
                    edge.mtls &= mtls;
                    if !mtls && edge.no_tls_reason.is_none() {
                        edge.no_tls_reason = s.label("no_tls_reason").map(str::to_string);
                    }
                    if let Some(id) = s.label("server_id") {
                        edge.server_id.get_or_insert_with(|| id.to_string());
                    }
                    if let Some(id) = client_id {
                        edge.client_id.get_or_insert_with(|| id.to_string());
                    }
                }
            }
        }
    }
    edges.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::parse;

    fn pod(name: &str, deploy: &str, identity: Option<&str>) -> PodInfo {
        PodInfo {
            namespace: "demo".into(),
            name: name.into(),
            ip: None,
            owner: Workload::new(Kind::Deployment, "demo", deploy),
            services: vec!["web-svc".into()],
            meshed: true,
            identity: identity.map(str::to_string),
            address: String::new(),
        }
    }

    #[test]
    fn edges_join_both_sides() {
        let pods = vec![
            pod("client", "client", Some("client.demo.id")),
            pod("web-1", "web", Some("web.demo.id")),
            pod("web-2", "web", Some("web.demo.id")),
            pod("plain", "plain", None),
        ];
        let client = r#"
request_total{direction="outbound",authority="web-svc",target_addr="10.244.0.3:8080",dst_namespace="demo",dst_service="web-svc",dst_deployment="web",dst_pod="web-1",tls="true",server_id="web.demo.id"} 3
request_total{direction="outbound",authority="web-svc",target_addr="10.244.0.4:8080",dst_namespace="demo",dst_service="web-svc",dst_deployment="web",dst_pod="web-2",tls="true",server_id="web.demo.id"} 2
request_total{direction="outbound",authority="x",target_addr="10.244.0.9:80",tls="no_identity",no_tls_reason="not_provided_by_service_discovery"} 5
"#;
        let web1 = r#"request_total{direction="inbound",authority="web-svc",target_addr="127.0.0.1:8080",tls="true",client_id="client.demo.id"} 3"#;
        let plain = r#"
request_total{direction="outbound",authority="web-svc",target_addr="10.244.0.3:8080",dst_namespace="demo",dst_deployment="web",dst_pod="web-1",tls="no_identity",no_tls_reason="not_provided_by_service_discovery"} 1
tcp_open_total{direction="outbound",target_addr="10.244.0.3:5432",dst_namespace="demo",dst_deployment="db",dst_pod="db-0",tls="true",server_id="db.demo.id"} 4
"#;
        let scrapes: Scrapes = [("client", client), ("web-1", web1), ("plain", plain)]
            .iter()
            .map(|(p, t)| (("demo".to_string(), p.to_string()), parse(t).unwrap()))
            .collect();
        let got = edges(&pods, &scrapes, Kind::Deployment);
        let lines: Vec<String> = got
            .iter()
            .map(|e| {
                format!(
                    "{} -> {} client={:?} server={:?} mtls={} reason={:?} n={}",
                    e.src, e.dst, e.client_id, e.server_id, e.mtls, e.no_tls_reason, e.requests
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                r#"deploy/client -> deploy/web client=Some("client.demo.id") server=Some("web.demo.id") mtls=true reason=None n=5"#,
                r#"deploy/plain -> deploy/db client=None server=Some("db.demo.id") mtls=true reason=None n=4"#,
                r#"deploy/plain -> deploy/web client=None server=None mtls=false reason=Some("not_provided_by_service_discovery") n=1"#,
            ]
        );
        // By pod, the client's edges split per endpoint.
        let by_pod = edges(&pods, &scrapes, Kind::Pod);
        assert_eq!(by_pod.iter().filter(|e| e.src.name == "client").count(), 2);
    }
}
