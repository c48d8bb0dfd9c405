//! Whether the injector makes the proxy a native sidecar: as configured, or (`auto`, the
//! default) from the API server's version, read at start-up and again every few minutes, so a
//! cluster upgraded to 1.29 gets native sidecars without a restart of the injector. A pod's
//! `config.mesh.io/native-sidecar` annotation still wins (see `mesh_api::inject`).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_api::inject::SidecarMode;

/// How often `auto` re-reads the API server's version.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(600);
/// How soon `auto` tries again after the version could not be read.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// How long one read of the version may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `--native-sidecar`: `auto`, `true` or `false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SidecarPolicy {
    /// From the API server's version (1.29 and later: native).
    #[default]
    Auto,
    /// Always native, or always classic.
    Fixed(bool),
}

impl FromStr for SidecarPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "true" => Ok(Self::Fixed(true)),
            "false" => Ok(Self::Fixed(false)),
            other => Err(format!("{other:?} is not auto, true or false")),
        }
    }
}

/// Where the decision comes from, for `/metrics` (`injector_native_sidecar{source=…}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Source {
    /// `--native-sidecar=true|false`.
    Configured = 0,
    /// The API server's version.
    Version = 1,
    /// The version could not be read yet: classic, which every version runs.
    Unknown = 2,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Configured => "configured",
            Source::Version => "version",
            Source::Unknown => "unknown",
        }
    }
}

/// The current decision, shared by every admission and updated by [`follow`].
#[derive(Debug)]
pub struct Sidecar {
    native: AtomicBool,
    source: AtomicU8,
}

impl Sidecar {
    /// The starting decision of a policy: `auto` starts classic until the version is read.
    pub fn new(policy: SidecarPolicy) -> Arc<Self> {
        let (native, source) = match policy {
            SidecarPolicy::Fixed(native) => (native, Source::Configured),
            SidecarPolicy::Auto => (false, Source::Unknown),
        };
        Arc::new(Self {
            native: AtomicBool::new(native),
            source: AtomicU8::new(source as u8),
        })
    }

    /// Whether the proxy is a native sidecar unless the pod says otherwise.
    pub fn native(&self) -> bool {
        self.native.load(Ordering::Relaxed)
    }

    fn source(&self) -> Source {
        match self.source.load(Ordering::Relaxed) {
            0 => Source::Configured,
            1 => Source::Version,
            _ => Source::Unknown,
        }
    }

    fn set(&self, mode: &SidecarMode) {
        let was = self.native.swap(mode.native, Ordering::Relaxed);
        let known = self.source() == Source::Version;
        self.source.store(Source::Version as u8, Ordering::Relaxed);
        if !known || was != mode.native {
            tracing::info!(mode = mode.name(), reason = %mode.reason, "proxies are injected as {} sidecars", mode.name());
        }
    }

    /// `injector_native_sidecar`, in the Prometheus text format.
    pub fn encode(&self) -> String {
        format!(
            "# HELP injector_native_sidecar Whether proxies are injected as native sidecars (1) or classic ones (0), and why.\n\
             # TYPE injector_native_sidecar gauge\n\
             injector_native_sidecar{{source=\"{}\"}} {}\n",
            self.source().label(),
            u8::from(self.native())
        )
    }
}

/// Keeps `sidecar` in step with the API server's version (for `auto`): reads it once before
/// returning (so the first admissions already get the cluster's mode), then in the background
/// every [`REREAD_INTERVAL`] (every [`RETRY_INTERVAL`] while it cannot be read).
pub async fn follow(client: kube::Client, sidecar: Arc<Sidecar>) -> tokio::task::JoinHandle<()> {
    let mut wait = update(&client, &sidecar).await;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(wait).await;
            wait = update(&client, &sidecar).await;
        }
    })
}

/// Reads the version once into `sidecar`; how long to wait before the next read.
async fn update(client: &kube::Client, sidecar: &Sidecar) -> Duration {
    match read(client).await {
        Ok(mode) => {
            sidecar.set(&mode);
            REREAD_INTERVAL
        }
        Err(error) => {
            if sidecar.source() == Source::Version {
                tracing::warn!(%error, "reading the API server's version failed; keeping the last decision");
            } else {
                tracing::warn!(%error, "reading the API server's version failed; injecting classic sidecars until it can be read");
            }
            RETRY_INTERVAL
        }
    }
}

/// The mode for the API server `client` talks to.
pub async fn read(client: &kube::Client) -> Result<SidecarMode, String> {
    match tokio::time::timeout(READ_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(info)) => Ok(SidecarMode::for_version(&info.major, &info.minor)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {READ_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_the_manifests_write_them() {
        assert_eq!("auto".parse(), Ok(SidecarPolicy::Auto));
        assert_eq!("true".parse(), Ok(SidecarPolicy::Fixed(true)));
        assert_eq!("false".parse(), Ok(SidecarPolicy::Fixed(false)));
        // The spelling a template engine may produce for a boolean is refused by name.
        let e = "False".parse::<SidecarPolicy>().unwrap_err();
        assert!(e.contains("\"False\""), "{e}");
    }

    #[test]
    fn auto_starts_classic_and_follows_the_version() {
        let sidecar = Sidecar::new(SidecarPolicy::Auto);
        assert!(!sidecar.native());
        assert!(sidecar.encode().contains("{source=\"unknown\"} 0"));
        sidecar.set(&SidecarMode::for_version("1", "30"));
        assert!(sidecar.native());
        assert!(sidecar.encode().contains("{source=\"version\"} 1"));
        sidecar.set(&SidecarMode::for_version("1", "28"));
        assert!(!sidecar.native());
        let fixed = Sidecar::new(SidecarPolicy::Fixed(true));
        assert!(fixed.native());
        assert!(fixed.encode().contains("{source=\"configured\"} 1"));
    }
}
