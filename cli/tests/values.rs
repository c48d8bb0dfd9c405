//! Every key of `values.yaml` (control plane and viz), set to something other than its default
//! with `--set`, renders arguments and environment variables that the consuming binary's own
//! parser accepts: `mesh-controller`'s clap definitions, `mesh-init`'s, and the proxy's
//! `MESH_PROXY_*` parser. The golden file shows what each key changes.
//!
//! Regression: `--set proxy.nativeSidecar=false` rendered `--native-sidecar=False`, which the
//! injector refused at start-up, restarting forever.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use clap::Parser as _;
use mesh_api::identity::ca;
use serde_json::Value;
use support::*;

const CONTROL_PLANE: &str = include_str!("../../manifests/control-plane/values.yaml");
const VIZ: &str = include_str!("../../manifests/viz/values.yaml");

/// A value other than the default for every string key (numbers and booleans are derived). A
/// key missing here fails the test: a new value needs a case.
fn other_value(key: &str) -> Option<&'static str> {
    Some(match key {
        "clusterDomain" => "cluster.example",
        "trustDomain" => "example.org",
        "imageTag" => "v9.9.9",
        "imagePullPolicy" => "Always",
        "proxy.image" => "registry.example/mesh/proxy",
        "proxy.logLevel" => "debug,mesh_proxy=trace",
        "proxy.nativeSidecar" => "false",
        "proxy.defaultInboundPolicy" => "cluster-authenticated",
        "proxy.clusterNetworks" => "10.244.0.0/16, fd00:10:244::/56",
        "controller.image" => "registry.example/mesh/controller",
        "controller.logLevel" => "debug",
        "controller.cpuRequest" => "250m",
        "controller.memoryRequest" => "64Mi",
        "controller.memoryLimit" => "512Mi",
        "prometheus.image" => "registry.example/prometheus:v2.50.0",
        "prometheus.scrapeInterval" => "15s",
        "prometheus.retention" => "1d",
        "prometheus.cpuRequest" => "200m",
        "prometheus.memoryRequest" => "300Mi",
        "prometheus.memoryLimit" => "2Gi",
        _ => return None,
    })
}

/// Every leaf of a values document: (dotted key, default).
fn leaves(values: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match values {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &key, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}

fn overrides(defaults: &str) -> Vec<(String, String)> {
    let values: Value = serde_yaml_ng::from_str(defaults).unwrap();
    let mut all = Vec::new();
    leaves(&values, "", &mut all);
    all.into_iter()
        .map(|(key, default)| {
            let value = match &default {
                Value::Bool(b) => (!b).to_string(),
                Value::Number(n) => (n.as_u64().expect("whole numbers") + 1).to_string(),
                _ => other_value(&key)
                    .unwrap_or_else(|| panic!("add a value for {key:?} to other_value"))
                    .to_string(),
            };
            (key, value)
        })
        .collect()
}

/// Every container of every workload of `docs`.
fn containers(docs: &[Value]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for doc in docs {
        let spec = &doc["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                let name = format!(
                    "{}/{}",
                    doc["metadata"]["name"].as_str().unwrap(),
                    c["name"]
                );
                out.push((name, c));
            }
        }
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().expect("a string argument").to_string())
        .collect()
}

/// The proxy's environment as the kubelet would give it: field references filled in with
/// plausible values and `$(NAME)` expanded.
fn proxy_env(container: &Value) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => "mesh".to_string(),
            Some("metadata.name") => "mesh-destination-5d4f-x2x9z".to_string(),
            Some("spec.serviceAccountName") => "mesh-destination".to_string(),
            Some(other) => panic!("{name}: an unexpected field reference {other}"),
            None => var["value"].as_str().unwrap_or_default().to_string(),
        };
        let mut expanded = value;
        for (k, v) in &env {
            expanded = expanded.replace(&format!("$({k})"), v);
        }
        env.insert(name, expanded);
    }
    env
}

/// Checks every argument list and proxy environment of `docs` with its binary's parser.
fn check_with_parsers(docs: &[Value], what: &str, controller_image: &str) {
    let mut checked = 0;
    for (name, c) in containers(docs) {
        let image = c["image"].as_str().unwrap_or_default();
        let mut argv = strings(&c["command"]);
        argv.extend(strings(&c["args"]));
        if c["name"] == "mesh-proxy" {
            let env = proxy_env(c);
            mesh_proxy::config::Config::from_env(|k| env.get(k).cloned()).unwrap_or_else(|e| {
                panic!("{what}: {name}: the proxy refuses its environment: {e}")
            });
            checked += 1;
        } else if c["name"] == "mesh-init" {
            assert_eq!(argv[0], "/usr/local/bin/mesh-init", "{what}: {name}");
            mesh_proxy::init::Args::try_parse_from(&argv)
                .unwrap_or_else(|e| panic!("{what}: {name}: mesh-init refuses {argv:?}: {e}"));
            checked += 1;
        } else if image.starts_with(controller_image) {
            let mut all = vec!["mesh-controller".to_string()];
            all.extend(argv);
            mesh_controller::cli::Cli::try_parse_from(&all)
                .unwrap_or_else(|e| panic!("{what}: {name}: mesh-controller refuses {all:?}: {e}"));
            checked += 1;
        }
    }
    assert!(checked >= 2, "{what}: no container was checked");
}

/// The lines of `new` that `old` does not have (as a multiset), certificates left out.
fn added_lines(old: &str, new: &str) -> Vec<String> {
    let mut have: BTreeMap<&str, usize> = BTreeMap::new();
    for l in old.lines() {
        *have.entry(l).or_default() += 1;
    }
    let mut out = Vec::new();
    for l in new.lines() {
        match have.get_mut(l) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(l.trim().to_string()),
        }
    }
    out
}

fn b64(v: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a string"))
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

/// How long the first certificate of PEM `pem` lives from now, in days (rounded).
fn days_left(pem: &str) -> u64 {
    let der = &ca::certs_from_pem(pem, "cert").unwrap()[0];
    let info = ca::cert_info(der).unwrap();
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    (left.as_secs() + 43_200) / 86_400
}

#[test]
fn every_value_renders_what_its_binary_parses() {
    let certs = cert_flags();
    let certs: Vec<&str> = certs.iter().map(String::as_str).collect();
    let mut report = String::new();

    // The control plane.
    let base_args: Vec<&str> = [&["install", "--ignore-cluster"][..], &certs].concat();
    let (base, docs) = render(&base_args);
    check_with_parsers(&docs, "defaults", "ghcr.io/mesh/controller");
    for (key, value) in overrides(CONTROL_PLANE) {
        let set = format!("{key}={value}");
        report.push_str(&format!("# mesh install --set {set}\n"));
        if key.ends_with("LifetimeDays") {
            // Their effect is inside the generated certificates: read them back.
            let (_, docs) = render(&["install", "--ignore-cluster", "--set", &set]);
            let (object, field, name) = match key.as_str() {
                "identity.issuerLifetimeDays" => ("Secret", "tls.crt", "mesh-identity-issuer"),
                "webhook.certificateLifetimeDays" => ("Secret", "tls.crt", "mesh-injector-tls"),
                "identity.trustAnchorLifetimeDays" => {
                    ("ConfigMap", "ca-bundle.crt", "mesh-trust-anchors")
                }
                other => panic!("{other}: which certificate does it set?"),
            };
            let found = &find(&docs, object, name)["data"][field];
            let pem = if object == "Secret" {
                b64(found)
            } else {
                found.as_str().unwrap().to_string()
            };
            let days = days_left(&pem);
            let want: u64 = value.parse().unwrap();
            // The issuer never outlives the anchor; every other one lives as long as asked.
            assert!(
                days == want || (key == "identity.issuerLifetimeDays" && days < want),
                "{key}={value}: the certificate lives {days} days"
            );
            report.push_str(&format!("{name}: {days} days\n"));
            continue;
        }
        let mut args = base_args.clone();
        args.extend(["--set", &set]);
        let (text, docs) = render(&args);
        let controller = docs
            .iter()
            .flat_map(|d| containers(std::slice::from_ref(d)))
            .filter_map(|(_, c)| c["image"].as_str())
            .find(|i| !i.contains("/proxy:"))
            .map(|i| i.rsplit_once(':').unwrap().0.to_string())
            .unwrap();
        check_with_parsers(&docs, &set, &controller);
        let added = added_lines(&base, &text);
        assert!(!added.is_empty(), "--set {set} changed nothing");
        for line in added {
            report.push_str(&line);
            report.push('\n');
        }
    }

    // The viz component.
    let (base, docs) = render(&["viz", "install"]);
    check_with_parsers(&docs, "viz defaults", "ghcr.io/mesh/controller");
    for (key, value) in overrides(VIZ) {
        let set = format!("{key}={value}");
        report.push_str(&format!("# mesh viz install --set {set}\n"));
        let (text, docs) = render(&["viz", "install", "--set", &set]);
        let controller = if key == "controller.image" {
            value.clone()
        } else {
            "ghcr.io/mesh/controller".to_string()
        };
        check_with_parsers(&docs, &set, &controller);
        let added = added_lines(&base, &text);
        assert!(!added.is_empty(), "viz --set {set} changed nothing");
        for line in added {
            report.push_str(&line);
            report.push('\n');
        }
    }
    golden("values-set-every-key.txt", &report);
}

/// The install's defaults of the inbound policy are the proxy's own.
#[test]
fn the_default_inbound_policy_values_are_the_proxys_defaults() {
    let values: Value = serde_yaml_ng::from_str(CONTROL_PLANE).unwrap();
    assert_eq!(
        values["proxy"]["defaultInboundPolicy"],
        mesh_api::inbound::DefaultPolicy::default().as_str()
    );
    assert_eq!(
        values["proxy"]["clusterNetworks"],
        mesh_api::inbound::DEFAULT_CLUSTER_NETWORKS
    );
}

#[test]
fn values_a_consumer_would_refuse_are_refused_when_rendering() {
    for (args, message) in [
        (
            vec![
                "install",
                "--ignore-cluster",
                "--set",
                "proxy.nativeSidecar=False",
            ],
            "proxy.nativeSidecar: \"False\" is not auto, true or false",
        ),
        (
            vec!["install", "--ignore-cluster", "--set", "ha=yes"],
            "\"yes\" is not true or false",
        ),
        (
            vec![
                "install",
                "--ignore-cluster",
                "--set",
                "proxy.defaultInboundPolicy=allow",
            ],
            "proxy.defaultInboundPolicy: unknown default inbound policy \"allow\": use one of \
             all-unauthenticated, all-authenticated, cluster-authenticated, \
             cluster-unauthenticated, deny, audit",
        ),
        (
            vec![
                "install",
                "--ignore-cluster",
                "--set",
                "proxy.clusterNetworks=10.0.0.0/8,pods",
            ],
            "proxy.clusterNetworks: \"pods\" is not a network: use an address or address/prefix",
        ),
        (
            vec![
                "install",
                "--ignore-cluster",
                "--set",
                "proxy.clusterNetworks=",
            ],
            "proxy.clusterNetworks: no network",
        ),
        (
            vec!["viz", "install", "--set", "prometheus.retention=a day"],
            "prometheus.retention",
        ),
        (
            vec!["viz", "install", "--set", "prometheus.scrapeInterval=10"],
            "prometheus.scrapeInterval",
        ),
    ] {
        let out = mesh(&args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
}
