//! Identity and mutual TLS end to end on pods: the destination and identity controllers run in a
//! pod of their own on a folder of YAML with a fresh CA; meshed pods get certificates with their
//! service accounts' tokens and talk mutual TLS. The wire is captured with tcpdump. Needs root.

use mesh_cli::local::{require_root, Cluster, ControlOptions, ControlPlane, Pod, Proxy};
use mesh_tests::capture::{contains, Capture};
use mesh_tests::{
    http_get, metric_sum, raw_request, reach_service_by_name, serve_app, web_service, Load,
    APP_PORT, CLIENT_ID, CLUSTER_IP, SERVICE, WEB_ID,
};
use std::{net::SocketAddr, thread::JoinHandle, time::Duration};

/// A second port of the web pod that takes plaintext.
const PLAIN_PORT: u16 = 8081;

struct Mesh {
    cluster: Cluster,
    control: ControlPlane,
    web: Pod,
    client: Pod,
    web_proxy: Proxy,
    client_proxy: Proxy,
    _apps: Vec<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// A control pod, a meshed web pod (identity required on its app port) and a meshed client pod
/// that calls the service by name.
fn mesh(name: &str, opts: ControlOptions) -> Mesh {
    require_root().expect("end-to-end tests need root and network namespaces");
    let mut cluster = Cluster::new(name).expect("cluster");
    let control_pod = cluster.add_pod("control").expect("control pod");
    let web = cluster.add_pod("web").expect("web pod");
    let client = cluster.add_pod("client").expect("client pod");
    let dir = tempfile::tempdir().expect("control folder");
    let control = ControlPlane::start(&control_pod, dir.path(), &opts).expect("control plane");
    control
        .write("web-svc.yaml", &web_service(&web))
        .expect("service");

    let apps = vec![
        serve_app(&web, APP_PORT, Duration::ZERO, "web").expect("web app"),
        serve_app(&web, PLAIN_PORT, Duration::ZERO, "web-plain").expect("plain app"),
    ];
    let mut web_opts = control
        .enroll(&web, "demo", "web", &[("app", "web")])
        .expect("enroll web");
    web_opts.env.push((
        "MESH_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS".into(),
        APP_PORT.to_string(),
    ));
    let web_proxy = web.mesh(web_opts).expect("mesh web");

    reach_service_by_name(&client).expect("hosts file and service route");
    let client_opts = control
        .enroll(&client, "demo", "client", &[("app", "client")])
        .expect("enroll client");
    let client_proxy = client.mesh(client_opts).expect("mesh client");
    Mesh {
        cluster,
        control,
        web,
        client,
        web_proxy,
        client_proxy,
        _apps: apps,
        _dir: dir,
    }
}

#[test]
fn meshed_pods_talk_mutual_tls_that_carries_each_identity_and_hides_the_traffic() {
    let mut m = mesh("mtls", ControlOptions::default());
    let outsider = m.cluster.add_pod("outsider").expect("outsider pod");
    let capture_dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(&m.web, "eth0", capture_dir.path().join("web.pcap"));

    // A meshed call: the app sees the client's verified identity, not the forged header.
    let service = SocketAddr::from((CLUSTER_IP, 80));
    let response = raw_request(
        &m.client,
        service,
        http_get(
            "/header?name=mesh-client-id",
            SERVICE,
            "mesh-client-id: forged\r\nx-marker: SECRET-MESHED-7f3a\r\n",
        ),
    )
    .expect("the meshed call succeeds");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(CLIENT_ID), "{response}");

    // A plaintext call from outside the mesh to the port that takes it: it shows on the wire,
    // which proves the capture sees application bytes.
    let plain = raw_request(
        &outsider,
        SocketAddr::from((m.web.ip, PLAIN_PORT)),
        http_get("/", "web", "x-marker: PLAIN-MARKER-51c2\r\n"),
    )
    .expect("a plaintext call to a port without the requirement works");
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");

    // A plaintext call to the port that requires identity is refused.
    let refused = raw_request(
        &outsider,
        SocketAddr::from((m.web.ip, APP_PORT)),
        http_get("/", "web", ""),
    )
    .map_err(|e| format!("{e:#}"));
    assert!(
        refused.as_ref().map_or(true, |r| r.is_empty()),
        "a plaintext client must be refused: {refused:?}"
    );

    let wire = capture.stop();
    eprintln!("captured {} bytes", wire.len());
    assert!(
        contains(&wire, "PLAIN-MARKER-51c2"),
        "the capture sees plaintext"
    );
    assert!(
        !contains(&wire, "SECRET-MESHED-7f3a"),
        "the meshed request is encrypted on the wire"
    );
    assert!(
        !contains(&wire, CLIENT_ID),
        "the client's certificate is encrypted too (TLS 1.3)"
    );
    assert!(
        contains(&wire, WEB_ID),
        "the ClientHello names the server's identity"
    );

    // Each side's metrics name the other.
    let (_, client_metrics) = m.client_proxy.admin_get("/metrics").expect("metrics");
    assert!(
        metric_sum(
            &client_metrics,
            "response_total",
            &[
                "direction=\"outbound\"",
                "tls=\"true\"",
                &format!("server_id=\"{WEB_ID}\"")
            ]
        ) >= 1,
        "{client_metrics}"
    );
    let (_, web_metrics) = m.web_proxy.admin_get("/metrics").expect("metrics");
    assert!(
        metric_sum(
            &web_metrics,
            "request_total",
            &[
                "direction=\"inbound\"",
                "tls=\"true\"",
                &format!("client_id=\"{CLIENT_ID}\"")
            ]
        ) >= 1,
        "{web_metrics}"
    );
    assert!(
        metric_sum(
            &web_metrics,
            "tcp_refused_total",
            &["reason=\"identity_required\""]
        ) >= 1,
        "{web_metrics}"
    );
    assert!(
        metric_sum(
            &web_metrics,
            "tcp_open_total",
            &[
                "no_tls_reason=\"not_provided_by_remote\"",
                &format!(":{PLAIN_PORT}")
            ]
        ) >= 1,
        "the plaintext connection is counted as such: {web_metrics}"
    );
    for metrics in [&client_metrics, &web_metrics] {
        let expiry = metric_sum(metrics, "identity_cert_expiration_timestamp_seconds", &[]);
        assert!(expiry > 1_700_000_000, "{metrics}");
    }
}

#[test]
fn a_pod_with_a_certificate_from_another_ca_is_refused() {
    let mut m = mesh("mtls-ca", ControlOptions::default());
    // A second control plane with a CA of its own, which knows the same service and web pod.
    let rogue = m.cluster.add_pod("rogue").expect("rogue control pod");
    let stranger = m.cluster.add_pod("stranger").expect("stranger pod");
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_control =
        ControlPlane::start(&rogue, rogue_dir.path(), &ControlOptions::default()).expect("rogue");
    rogue_control
        .write("web-svc.yaml", &web_service(&m.web))
        .unwrap();
    rogue_control
        .write(
            "web-pod.yaml",
            &std::fs::read_to_string(m.control.state_dir().join("pod-demo-web.yaml")).unwrap(),
        )
        .unwrap();
    reach_service_by_name(&stranger).unwrap();
    let opts = rogue_control
        .enroll(&stranger, "demo", "client", &[])
        .expect("enroll the stranger");
    let _stranger_proxy = stranger.mesh(opts).expect("mesh the stranger");

    let response = raw_request(
        &stranger,
        SocketAddr::from((CLUSTER_IP, 80)),
        http_get("/", SERVICE, ""),
    )
    .expect("the stranger's proxy answers");
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    assert!(
        response
            .to_lowercase()
            .contains("mesh-proxy-error: mutual tls"),
        "{response}"
    );
    let (_, web_metrics) = m.web_proxy.admin_get("/metrics").expect("metrics");
    assert!(
        metric_sum(
            &web_metrics,
            "tcp_refused_total",
            &["reason=\"tls_handshake\""]
        ) >= 1,
        "{web_metrics}"
    );
    assert_eq!(
        metric_sum(&web_metrics, "request_total", &["direction=\"inbound\""]),
        0,
        "no request of the stranger reached the app: {web_metrics}"
    );
    // The meshed client still gets through.
    let ok = raw_request(
        &m.client,
        SocketAddr::from((CLUSTER_IP, 80)),
        http_get("/", SERVICE, ""),
    )
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[test]
fn certificates_rotate_every_minute_under_load_without_losing_a_request() {
    let m = mesh(
        "mtls-rot",
        ControlOptions {
            leaf_lifetime: Some(Duration::from_secs(60)),
        },
    );
    // Renewal at 70 % of 60 s: one renewal by ~42 s; 75 s of load spans it with room to spare.
    let load = Load::start(
        &m.client,
        env!("CARGO_BIN_EXE_mesh-load"),
        &format!("http://{SERVICE}/"),
        4,
        Duration::from_secs(75),
    )
    .expect("load");
    let result = load.finish().expect("mesh-load");
    assert!(
        result.failures.is_empty(),
        "failures: {:?}",
        result.failures
    );
    let total: u64 = result.servers.values().sum();
    assert!(total > 1_000, "enough traffic to judge: {result:?}");
    for proxy in [&m.client_proxy, &m.web_proxy] {
        let (_, metrics) = proxy.admin_get("/metrics").expect("metrics");
        assert!(
            metric_sum(&metrics, "identity_cert_refresh_total", &["result=\"ok\""]) >= 2,
            "a renewal happened: {metrics}"
        );
    }
    let (_, web_metrics) = m.web_proxy.admin_get("/metrics").unwrap();
    assert!(
        metric_sum(
            &web_metrics,
            "request_total",
            &["tls=\"true\"", &format!("client_id=\"{CLIENT_ID}\"")]
        ) >= total,
        "every request was mutual TLS: {web_metrics}"
    );
}
