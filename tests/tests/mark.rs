//! The proxy's own traffic told from the application's by its socket mark rather than by its uid,
//! as in a rootless user namespace where only uid 0 exists: the client pod's proxy runs as uid 0
//! like its application, with `mesh-init --proxy-mark` and `MESH_PROXY_SOCKET_MARK`. Its calls,
//! its certificate and its discovery all get out without being redirected back into it. Needs
//! root.

use mesh_cli::local::{require_root, ControlOptions, ControlPlane, Pod, Proxy};
use mesh_tests::{
    http_get, metric_sum, raw_request, reach_service_by_name, read_marker, serve_app,
    serve_markers, web_service, APP_PORT, CLIENT_ID, CLUSTER_IP, SERVICE, TIMEOUT, WEB_ID,
};
use std::{
    io::Read as _,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

const MARK: u32 = 0x2102;
/// A port of the outside pod's marker server: MySQL's, opaque by default, so the proxy forwards
/// it at once (a server-speaks-first protocol would wait for detection).
const MARKER_PORT: u16 = 3306;

#[test]
fn a_proxy_that_shares_the_apps_uid_is_exempt_by_its_socket_mark() {
    require_root().expect("end-to-end tests need root and network namespaces");
    let mut cluster = mesh_cli::local::Cluster::new("mark").expect("cluster");
    let control_pod = cluster.add_pod("control").expect("control pod");
    let web = cluster.add_pod("web").expect("web pod");
    let client = cluster.add_pod("client").expect("client pod");
    let outside = cluster.add_pod("outside").expect("outside pod");
    let dir = tempfile::tempdir().expect("control folder");
    let control =
        ControlPlane::start(&control_pod, dir.path(), &ControlOptions::default()).expect("control");
    control
        .write("web-svc.yaml", &web_service(&web))
        .expect("service");

    let _app = serve_app(&web, APP_PORT, Duration::ZERO, "web").expect("web app");
    let web_opts = control
        .enroll(&web, "demo", "web", &[("app", "web")])
        .expect("enroll web");
    let web_proxy = web.mesh(web_opts).expect("mesh web (uid 2102, as usual)");
    let _markers = serve_markers(
        &outside,
        &[(SocketAddr::from(([0, 0, 0, 0], MARKER_PORT)), "outside")],
    )
    .expect("marker server");

    reach_service_by_name(&client).expect("hosts file and service route");
    let mut client_opts = control
        .enroll(&client, "demo", "client", &[("app", "client")])
        .expect("enroll client");
    client_opts.proxy_mark = Some(MARK);
    // Ready means it holds a certificate: the certify call to the identity controller got out.
    let client_proxy = client
        .mesh(client_opts)
        .expect("mesh client with a socket mark");

    // The proxy runs as the application does (this test's threads are uid 0), and only the mark
    // tells its connections apart.
    assert_eq!(uids(&client_proxy), (0, 0), "the proxy runs as uid 0");
    let rules = nat_rules(&client);
    assert!(
        rules.contains(&format!(
            "-A MESH_OUTBOUND -m mark --mark {MARK:#x} -j RETURN"
        )),
        "{rules}"
    );
    // No uid rule: in a user namespace, uid 2102 would not even exist.
    assert!(
        !rules.contains("--uid-owner"),
        "the mark alone exempts the proxy: {rules}"
    );

    // The application calls the service by name: one request through its proxy, which found the
    // endpoint and its identity through the destination controller and went on over mutual TLS.
    let response = raw_request(
        &client,
        SocketAddr::from((CLUSTER_IP, 80)),
        http_get("/header?name=mesh-client-id", SERVICE, ""),
    )
    .expect("the call from the client pod's application succeeds");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("server-addr: web\r\n"), "{response}");
    assert!(
        response.ends_with(CLIENT_ID),
        "the web app sees the client's verified identity: {response}"
    );

    let (_, client_metrics) = client_proxy.admin_get("/metrics").expect("client metrics");
    assert_eq!(
        metric_sum(
            &client_metrics,
            "response_total",
            &[
                "direction=\"outbound\"",
                "tls=\"true\"",
                "status_code=\"200\"",
                &format!("server_id=\"{WEB_ID}\""),
                "dst_service=\"web-svc\"",
            ]
        ),
        1,
        "one outbound request, discovered and mutual TLS: {client_metrics}"
    );
    assert_eq!(
        metric_sum(
            &client_metrics,
            "request_total",
            &["direction=\"outbound\""]
        ),
        1,
        "the proxy's own connections never came back into it: {client_metrics}"
    );
    assert!(
        metric_sum(
            &client_metrics,
            "identity_cert_refresh_total",
            &["result=\"ok\""]
        ) >= 1,
        "{client_metrics}"
    );
    let (_, web_metrics) = web_proxy.admin_get("/metrics").expect("web metrics");
    assert!(
        metric_sum(
            &web_metrics,
            "request_total",
            &[
                "direction=\"inbound\"",
                &format!("client_id=\"{CLIENT_ID}\"")
            ]
        ) >= 1,
        "{web_metrics}"
    );

    // What the mark does: from the same uid, an unmarked connection goes through the proxy and a
    // marked one leaves as it is.
    let marker = SocketAddr::from((outside.ip, MARKER_PORT));
    let through_proxy = |proxy: &Proxy| {
        let (_, metrics) = proxy.admin_get("/metrics").expect("metrics");
        metric_sum(
            &metrics,
            "tcp_open_total",
            &[
                "direction=\"outbound\"",
                &format!("target_addr=\"{marker}\""),
            ],
        )
    };
    assert_eq!(through_proxy(&client_proxy), 0);
    assert_eq!(read_marker(&client, marker).expect("unmarked"), "outside");
    assert_eq!(
        through_proxy(&client_proxy),
        1,
        "an unmarked connection of uid 0 is redirected to the proxy"
    );
    assert_eq!(
        read_marked(&client, marker, MARK).expect("marked"),
        "outside"
    );
    assert_eq!(
        through_proxy(&client_proxy),
        1,
        "a connection with the proxy's mark is not redirected"
    );
    assert_eq!(
        read_marked(&client, marker, MARK + 1).expect("other mark"),
        "outside"
    );
    assert_eq!(
        through_proxy(&client_proxy),
        2,
        "another mark is the application's: redirected"
    );
}

/// The real and effective uid of the proxy's process.
fn uids(proxy: &Proxy) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid()))
        .expect("the proxy's /proc status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("a Uid line");
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(|n| n.parse().expect("a uid"))
        .collect();
    (ids[0], ids[1])
}

/// `iptables-save -t nat` in `pod`.
fn nat_rules(pod: &Pod) -> String {
    let output = pod
        .command("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// [`read_marker`] over a socket that carries `mark`.
fn read_marked(pod: &Pod, addr: SocketAddr, mark: u32) -> anyhow::Result<String> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(v4) = addr else {
        anyhow::bail!("{addr}: IPv4 only")
    };
    pod.run_in(move || {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::setsockopt(&fd, sockopt::Mark, &mark)?;
        socket::connect(fd.as_raw_fd(), &SockaddrIn::from(v4))?;
        let mut stream = TcpStream::from(fd);
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.trim().to_string())
    })
    .join()
    .expect("client thread")
}
