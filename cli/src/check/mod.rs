//! `mesh check`: is the cluster ready for mesh (`--pre`), is the control plane healthy (the
//! default), are the proxies healthy (`--proxy`). Each check is a line of a checklist under
//! its category: ✔ passed, ‼ a warning (does not fail the run), × failed, with a hint.

mod checks;
mod local;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use checks::{run_control_plane, run_pre, run_proxy};

/// `mesh check`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct CheckArgs {
    /// Checks that the cluster is ready for `mesh install` instead.
    #[arg(long, conflicts_with = "proxy")]
    pub pre: bool,
    /// Checks the meshed pods' proxies instead (all namespaces unless -n).
    #[arg(long)]
    pub proxy: bool,
    /// With --proxy: only this namespace.
    #[arg(short = 'n', long, value_name = "NAMESPACE", requires = "proxy")]
    pub namespace: Option<String>,
    /// `human` (a checklist) or `json`.
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub output: String,
    /// Retries until every check passes or this much time has gone by (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// With --proxy: `local` (the local mesh of `mesh demo`) or `kube`; by default the local
    /// mesh when one is running and no --context or --kubeconfig is given.
    #[arg(long, value_enum, requires = "proxy")]
    pub target: Option<crate::target::TargetKind>,
    /// With --proxy: the local mesh's folder (default: where `mesh demo` keeps it).
    #[arg(long, env = "MESH_LOCAL_STATE", value_name = "DIR")]
    pub state: Option<std::path::PathBuf>,
}

/// Parses `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 5m)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad()),
    })
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// ✔
    Success,
    /// ‼ (does not fail the run)
    Warning,
    /// ×
    Error,
}

/// One line of the checklist.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is checked, as a statement that holds when it passes.
    pub description: String,
    /// How it came out.
    pub result: Outcome,
    /// What was found, when it did not pass (or a detail worth showing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A group of checks.
#[derive(Clone, Debug, Serialize)]
pub struct Category {
    /// Its name, e.g. `kubernetes-api`.
    #[serde(rename = "categoryName")]
    pub name: String,
    /// Its checks, in order.
    pub checks: Vec<Check>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Whether no check failed.
    pub success: bool,
    /// The categories, in order.
    pub categories: Vec<Category>,
}

impl Report {
    /// The report of these categories.
    pub fn new(categories: Vec<Category>) -> Self {
        let success = categories
            .iter()
            .flat_map(|c| &c.checks)
            .all(|c| c.result != Outcome::Error);
        Self {
            success,
            categories,
        }
    }

    /// The checklist for a human.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for category in &self.categories {
            out.push_str(&format!(
                "{}\n{}\n",
                category.name,
                "-".repeat(category.name.len())
            ));
            for check in &category.checks {
                let mark = match check.result {
                    Outcome::Success => "✔",
                    Outcome::Warning => "‼",
                    Outcome::Error => "×",
                };
                out.push_str(&format!("{mark} {}\n", check.description));
                if let Some(error) = &check.error {
                    out.push_str(&format!("    {error}\n"));
                }
                if let Some(hint) = &check.hint {
                    out.push_str(&format!("    hint: {hint}\n"));
                }
            }
            out.push('\n');
        }
        out.push_str(if self.success {
            "Status check results are ✔\n"
        } else {
            "Status check results are ×\n"
        });
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes") + "\n"
    }
}

/// Runs the checks `args` asks for, retrying failures until `--wait` runs out. `local`: the
/// local mesh `--proxy` looks at instead of the cluster (see [`crate::target`]).
pub async fn check(
    args: &CheckArgs,
    cluster: &crate::kube::ClusterArgs,
    local: Option<&crate::target::Local>,
) -> Report {
    let deadline = args.wait.map(|w| Instant::now() + w);
    loop {
        let report = match (args.pre, args.proxy, local) {
            (true, _, _) => run_pre(cluster).await,
            (_, true, Some(local)) => local::run_proxy(local, args.namespace.as_deref()).await,
            (_, true, None) => run_proxy(cluster, args.namespace.as_deref()).await,
            _ => run_control_plane(cluster).await,
        };
        match deadline {
            Some(deadline) if !report.success && Instant::now() < deadline => {
                eprintln!("waiting for the checks to pass…");
                tokio::time::sleep(Duration::from_secs(2).min(deadline - Instant::now())).await;
            }
            _ => return report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn a_warning_does_not_fail_the_run_an_error_does() {
        let check = |result| Check {
            description: "x".into(),
            result,
            error: None,
            hint: None,
        };
        let cat = |checks| Category {
            name: "c".into(),
            checks,
        };
        assert!(Report::new(vec![cat(vec![check(Outcome::Warning)])]).success);
        let failed = Report::new(vec![cat(vec![
            check(Outcome::Success),
            check(Outcome::Error),
        ])]);
        assert!(!failed.success);
        assert!(failed.human().ends_with("Status check results are ×\n"));
    }
}
