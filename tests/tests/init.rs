//! `mesh-init` in a pod: it prints, installs, reinstalls and removes the redirect rules, refuses
//! without CAP_NET_ADMIN, and the rules send the pod's TCP where they should.
//! The tests that build pods need root.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use mesh_cli::local::{self, Cluster, Pod, PROXY_UID};
use mesh_tests::{nat_table, read_marker, serve_markers, success};

fn root() {
    local::require_root().expect("these tests build network namespaces");
}

fn mesh_init() -> PathBuf {
    local::binary("mesh-init").expect("the mesh-init binary")
}

/// A cluster with one pod, `a`.
fn one_pod(name: &str) -> (Cluster, Pod) {
    let mut cluster = Cluster::new(name).expect("cluster");
    let pod = cluster.add_pod("a").expect("pod");
    (cluster, pod)
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    root();
    let (_cluster, pod) = one_pod("init-dry");
    let before = nat_table(&pod).expect("nat table");

    let out = pod
        .command(mesh_init())
        .args(["--dry-run", "--skip-outbound-ports=25,8000-8100"])
        .output()
        .expect("mesh-init");
    let rules = success(out).expect("mesh-init --dry-run");

    assert!(
        rules.starts_with("*nat\n:MESH_INBOUND - [0:0]\n"),
        "{rules}"
    );
    assert!(rules.contains("-j REDIRECT --to-ports 4143"), "{rules}");
    assert!(
        rules.contains("-m owner --uid-owner 2102 -j RETURN"),
        "{rules}"
    );
    assert!(rules.contains("--dport 8000:8100 -j RETURN"), "{rules}");
    assert!(
        rules.ends_with("-A OUTPUT -j MESH_OUTBOUND\nCOMMIT\n"),
        "{rules}"
    );
    assert_eq!(nat_table(&pod).expect("nat table"), before);
    assert!(!before.contains("MESH"), "{before}");
}

#[test]
fn install_twice_leaves_one_set_of_rules_and_remove_takes_them_out() {
    root();
    let (_cluster, pod) = one_pod("init-twice");
    let empty = nat_table(&pod).expect("nat table");

    let install = || {
        let out = pod
            .command(mesh_init())
            .arg("--skip-inbound-ports=22")
            .output()
            .expect("mesh-init");
        success(out).expect("mesh-init");
        nat_table(&pod).expect("nat table")
    };
    let once = install();
    for expected in [
        ":MESH_INBOUND - [0:0]",
        ":MESH_INBOUND_REDIRECT - [0:0]",
        ":MESH_OUTBOUND - [0:0]",
        ":MESH_OUTBOUND_REDIRECT - [0:0]",
        "-A PREROUTING -j MESH_INBOUND",
        "-A OUTPUT -j MESH_OUTBOUND",
        "-A MESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
        "-A MESH_OUTBOUND -o lo -j RETURN",
        "-A MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140",
    ] {
        let count = once.lines().filter(|line| *line == expected).count();
        assert_eq!(count, 1, "{expected:?} once in:\n{once}");
    }
    let twice = install();
    assert_eq!(twice, once, "a second run changes nothing");

    for _ in 0..2 {
        let out = pod
            .command(mesh_init())
            .arg("--remove")
            .output()
            .expect("mesh-init --remove");
        success(out).expect("mesh-init --remove");
        assert_eq!(nat_table(&pod).expect("nat table"), empty);
    }
}

#[test]
fn without_net_admin_it_fails_clearly_and_applies_nothing() {
    root();
    let (_cluster, pod) = one_pod("init-user");
    let before = nat_table(&pod).expect("nat table");

    let out = pod
        .command_as(PROXY_UID, mesh_init())
        .output()
        .expect("mesh-init as the proxy user");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("mesh-init: "), "{stderr}");
    assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
    assert_eq!(nat_table(&pod).expect("nat table"), before);
}

#[test]
fn a_bad_port_list_is_a_usage_error_naming_the_flag() {
    // No root needed: the flags are checked before anything else.
    for (flag, value) in [
        ("--skip-inbound-ports", "80,http"),
        ("--skip-outbound-ports", "9000-8000"),
        ("--skip-outbound-ports", "25,,26"),
    ] {
        let out = Command::new(mesh_init())
            .arg(format!("{flag}={value}"))
            .output()
            .expect("mesh-init");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}={value}: {stderr}");
        assert!(stderr.contains(flag), "{flag}={value}: {stderr}");
    }
}

#[test]
fn without_iptables_it_fails_clearly() {
    // No root needed: the tool is missing before any privilege matters.
    let out = Command::new(mesh_init())
        .env("PATH", "/nonexistent")
        .output()
        .expect("mesh-init");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "mesh-init: installing the redirect rules: iptables-save: not found on PATH \
         (install the iptables package)"
    );
}

#[test]
fn the_rules_send_tcp_to_the_proxy_ports_except_exempt_traffic() {
    root();
    let mut cluster = Cluster::new("init-redirect").expect("cluster");
    let meshed = cluster.add_pod("meshed").expect("meshed pod");
    let other = cluster.add_pod("other").expect("other pod");
    let addr = |ip, port| SocketAddr::from((ip, port));
    let any = |port| addr([0, 0, 0, 0].into(), port);

    // Stand-ins for the proxy's listeners and for applications, in both pods.
    let _meshed_servers = serve_markers(
        &meshed,
        &[
            (any(4140), "outbound proxy"),
            (any(4143), "inbound proxy"),
            (any(22), "meshed app on a skipped port"),
            (addr([127, 0, 0, 1].into(), 8080), "meshed app on lo"),
        ],
    )
    .expect("servers in the meshed pod");
    let _other_servers = serve_markers(
        &other,
        &[
            (any(80), "other app"),
            (any(81), "other app on a skipped port"),
        ],
    )
    .expect("servers in the other pod");

    let out = meshed
        .command(mesh_init())
        .args(["--skip-inbound-ports=22", "--skip-outbound-ports=81"])
        .output()
        .expect("mesh-init");
    success(out).expect("mesh-init");

    let check = |from: &Pod, to: SocketAddr, expected: &str| {
        let got = read_marker(from, to).unwrap_or_else(|err| panic!("{to}: {err:#}"));
        assert_eq!(got, expected, "{} -> {to}", from.name);
    };
    // Outbound from the meshed pod (as root) goes to the outbound port ...
    check(&meshed, addr(other.ip, 80), "outbound proxy");
    // ... except to a skipped port, and the pod talking to itself.
    check(&meshed, addr(other.ip, 81), "other app on a skipped port");
    check(
        &meshed,
        addr([127, 0, 0, 1].into(), 8080),
        "meshed app on lo",
    );
    // Inbound to the meshed pod goes to the inbound port, except to a skipped port.
    check(&other, addr(meshed.ip, 80), "inbound proxy");
    check(&other, addr(meshed.ip, 22), "meshed app on a skipped port");

    // The proxy's own connections are never redirected.
    let script = format!("exec 3<>/dev/tcp/{}/80 && cat <&3", other.ip);
    let out = meshed
        .command_as(PROXY_UID, "timeout")
        .args(["5", "bash", "-c", &script])
        .output()
        .expect("bash as the proxy user");
    assert_eq!(success(out).expect("bash").trim(), "other app");
}
