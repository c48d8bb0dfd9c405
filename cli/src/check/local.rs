//! `mesh check --proxy` on the local mesh: the pods of its folder, their proxies reached in
//! their network namespaces (as `mesh viz` reaches them).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use mesh_viz::client::{self, Transport};
use mesh_viz::model::PodInfo;

use super::checks::{category, fail, ok, warn};
use super::{show_duration, Category, Checklist};
use crate::target::Local;
use crate::viz::local::{NetnsTransport, State};

/// Certificates expiring sooner than this get a warning (leaves live 24 h and renew at 70 %).
const EXPIRY_WARNING: Duration = Duration::from_secs(3600);
/// How many proxies are scraped at once.
const PROXIES_AT_ONCE: usize = 16;

/// Checks the proxies of the local mesh (of `namespace`, or all); the categories go to `list`
/// as they are done.
pub async fn run_proxy(local: &Local, namespace: Option<&str>, list: &mut Checklist<'_>) {
    list.category(|| async { (mesh(local), ()) }).await;
    if list.passed_so_far() {
        let timeout = list.check_timeout;
        list.category(|| async move { (data_plane(local, namespace, timeout).await, ()) })
            .await;
    }
}

fn mesh(local: &Local) -> Category {
    let what = "the local mesh is running";
    let check = match &local.running {
        Some(r) => ok(format!(
            "{what} (pid {}, since {}, {})",
            r.record.pid,
            r.record.started,
            match r.record.mode {
                crate::local::running::Mode::Root => "as root",
                crate::local::running::Mode::UserNamespace => "in a user namespace",
            }
        )),
        // A folder of objects whose pods live in the host's namespaces (the test harness).
        None => ok(format!("{what} (objects in {})", local.objects.display())),
    };
    category("mesh-local", vec![check])
}

async fn data_plane(local: &Local, namespace: Option<&str>, timeout: Duration) -> Category {
    let name = "mesh-data-plane";
    let state = match State::read(&local.objects) {
        Ok(state) => state,
        Err(e) => {
            return category(
                name,
                vec![fail(
                    "the local mesh's objects can be read",
                    format!("{e:#}"),
                    "restart the local mesh: mesh demo down; mesh demo",
                )],
            )
        }
    };
    let pods: Vec<PodInfo> = state
        .pods
        .into_iter()
        .filter(|p| p.meshed && namespace.is_none_or(|ns| p.namespace == ns))
        .collect();
    const FOUND: &str = "there are meshed pods";
    if pods.is_empty() {
        let error = match namespace {
            Some(ns) => format!("no meshed pod in namespace {ns}"),
            None => "no meshed pod".to_string(),
        };
        return category(
            name,
            vec![fail(
                FOUND,
                error,
                "the demo's pods are in namespace demo: mesh check --proxy -n demo",
            )],
        );
    }
    let mut checks = vec![ok(format!("{FOUND} ({})", pods.len()))];

    // Every proxy is asked at most until the check's deadline.
    let deadline = tokio::time::Instant::now() + timeout;
    let transport = NetnsTransport;
    let transport = &transport as &dyn Transport;
    let answers: Vec<_> = futures_util::stream::iter(&pods)
        .map(|pod| async move {
            let scrape = tokio::time::timeout_at(deadline, client::metrics(transport, pod));
            (pod, scrape.await)
        })
        .buffered(PROXIES_AT_ONCE)
        .collect()
        .await;
    let mut scrapes = Vec::new();
    let mut unreachable = Vec::new();
    let mut silent = false;
    for (pod, answer) in answers {
        match answer {
            Ok(Ok(samples)) => scrapes.push((pod, samples)),
            Ok(Err(e)) => unreachable.push(format!("{}/{}: {e}", pod.namespace, pod.name)),
            Err(_) => {
                silent = true;
                unreachable.push(format!(
                    "{}/{}: no answer within {} from its admin port",
                    pod.namespace,
                    pod.name,
                    show_duration(timeout)
                ));
            }
        }
    }
    checks.push(if unreachable.is_empty() {
        ok("the proxies answer on their admin port")
    } else {
        let hint = "see the demo's output, or restart it: mesh demo down; mesh demo";
        fail(
            "the proxies answer on their admin port",
            unreachable.join("; "),
            match silent {
                true => format!("{hint}; raise --check-timeout on a slow machine"),
                false => hint.to_string(),
            },
        )
    });

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let (mut missing, mut expired, mut expiring) = (Vec::new(), Vec::new(), Vec::new());
    for (pod, samples) in &scrapes {
        let id = format!("{}/{}", pod.namespace, pod.name);
        let expiry = samples
            .iter()
            .find(|s| s.name == "identity_cert_expiration_timestamp_seconds")
            .map(|s| s.value);
        match expiry {
            None | Some(0.0) => missing.push(id),
            Some(t) if t <= now => expired.push(id),
            Some(t) if t - now < EXPIRY_WARNING.as_secs_f64() => expiring.push(id),
            Some(_) => {}
        }
    }
    const CERTS: &str = "the proxies have a valid certificate for their identity";
    checks.push(if !missing.is_empty() || !expired.is_empty() {
        let mut error = Vec::new();
        if !missing.is_empty() {
            error.push(format!("no certificate: {}", missing.join(", ")));
        }
        if !expired.is_empty() {
            error.push(format!("expired: {}", expired.join(", ")));
        }
        fail(
            CERTS,
            error.join("; "),
            "the identity controller runs in pod control: restart the demo (mesh demo down; mesh demo)",
        )
    } else if !expiring.is_empty() {
        warn(
            CERTS,
            format!("expiring within the hour: {}", expiring.join(", ")),
            "proxies renew at 70 % of the lifetime: check that the identity controller answers",
        )
    } else {
        ok(CERTS)
    });

    // Meshed pods talk to each other over mutual TLS; plaintext inbound requests mean a
    // client outside the mesh (or a proxy without a certificate).
    let plaintext: Vec<String> = scrapes
        .iter()
        .filter(|(_, samples)| {
            samples.iter().any(|s| {
                s.name == "request_total"
                    && s.label("direction") == Some("inbound")
                    && s.label("tls") != Some("true")
                    && s.value > 0.0
            })
        })
        .map(|(pod, _)| format!("{}/{}", pod.namespace, pod.name))
        .collect();
    const MTLS: &str = "the meshed pods' requests are mutual TLS";
    checks.push(if plaintext.is_empty() {
        ok(MTLS)
    } else {
        warn(
            MTLS,
            format!("plaintext requests reached {}", plaintext.join(", ")),
            "see who calls them: mesh viz edges po",
        )
    });
    category(name, checks)
}
