//! `mesh check`: is the cluster ready for mesh (`--pre`), is the control plane healthy (the
//! default, with its CRDs and whether the inbound policy resources refer to what exists), are
//! the proxies healthy (`--proxy`). Each check is a line of a checklist under
//! its category: ✔ passed, ‼ a warning (does not fail the run), × failed, with a hint. Every
//! check waits for the cluster at most `--check-timeout`, and each category is printed as soon
//! as its checks are done ([`Checklist`]).

mod checks;
mod local;
mod policy;

use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

use mesh_api::duration::parse_duration;
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
    /// With --proxy: only this namespace (and only its objects are listed).
    #[arg(short = 'n', long, value_name = "NAMESPACE", requires = "proxy")]
    pub namespace: Option<String>,
    /// `human` (a checklist, each category printed as soon as its checks are done) or `json`
    /// (one document at the end).
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub output: String,
    /// Retries a category whose checks fail until they pass or this much time has gone by
    /// (e.g. 30s, 5m); each category is printed once, when it passed or the time ran out.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// How long one check may wait for the cluster before it fails and says what it waited
    /// for (e.g. 10s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub check_timeout: Duration,
    /// With --proxy: `local` (the local mesh of `mesh demo`) or `kube`; by default the local
    /// mesh when one is running and no --context or --kubeconfig is given.
    #[arg(long, value_enum, requires = "proxy")]
    pub target: Option<crate::target::TargetKind>,
    /// With --proxy: the local mesh's folder (default: where `mesh demo` keeps it).
    #[arg(long, env = "MESH_LOCAL_STATE", value_name = "DIR")]
    pub state: Option<std::path::PathBuf>,
}

/// How a duration reads in messages: `10s`, `1m30s`, `250ms`.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 || d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
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
    /// What a passed check found that is worth showing, e.g. why proxies are classic sidecars.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What was found, when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    /// This check with `detail`.
    pub fn with_detail(self, detail: impl Into<String>) -> Self {
        Self {
            detail: Some(detail.into()),
            ..self
        }
    }
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

impl Category {
    /// Whether one of its checks failed (a warning is no failure).
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.result == Outcome::Error)
    }

    /// Its part of the checklist: the name, underlined, its checks and a blank line.
    pub fn human(&self) -> String {
        let mut out = format!("{}\n{}\n", self.name, "-".repeat(self.name.chars().count()));
        for check in &self.checks {
            let mark = match check.result {
                Outcome::Success => "✔",
                Outcome::Warning => "‼",
                Outcome::Error => "×",
            };
            out.push_str(&format!("{mark} {}\n", check.description));
            for line in [&check.detail, &check.error].into_iter().flatten() {
                out.push_str(&format!("    {line}\n"));
            }
            if let Some(hint) = &check.hint {
                out.push_str(&format!("    hint: {hint}\n"));
            }
        }
        out.push('\n');
        out
    }
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
        let success = !categories.iter().any(Category::failed);
        Self {
            success,
            categories,
        }
    }

    /// The checklist for a human: every category, then [`Report::footer`].
    pub fn human(&self) -> String {
        let mut out: String = self.categories.iter().map(Category::human).collect();
        out.push_str(self.footer());
        out
    }

    /// The checklist's last line.
    pub fn footer(&self) -> &'static str {
        if self.success {
            "Status check results are ✔\n"
        } else {
            "Status check results are ×\n"
        }
    }

    /// The report as JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes") + "\n"
    }
}

/// How long `--wait` waits between two attempts of a failed category.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// A run in progress: each category goes to `emit` as soon as its checks are done; with
/// `--wait`, a category with a failed check is tried again (it alone, not the ones before it)
/// until it passes or the wait is over, and only its last attempt is emitted.
pub struct Checklist<'a> {
    /// How long one check may wait for the cluster.
    pub check_timeout: Duration,
    wait_until: Option<Instant>,
    emit: &'a mut dyn FnMut(&Category),
    categories: Vec<Category>,
}

impl<'a> Checklist<'a> {
    /// A run whose checks wait at most `check_timeout` each, retried for `wait`.
    pub fn new(
        check_timeout: Duration,
        wait: Option<Duration>,
        emit: &'a mut dyn FnMut(&Category),
    ) -> Self {
        Self {
            check_timeout,
            wait_until: wait.map(|w| Instant::now() + w),
            emit,
            categories: Vec::new(),
        }
    }

    /// Runs `attempt` (again while it fails and `--wait` lasts), emits its category and
    /// returns what it found for the categories after it (e.g. the client).
    pub async fn category<T, F, Fut>(&mut self, mut attempt: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = (Category, T)>,
    {
        let mut told = false;
        loop {
            let (category, found) = attempt().await;
            match self.wait_until {
                Some(until) if category.failed() && Instant::now() < until => {
                    if !told {
                        eprintln!("waiting for the checks of {} to pass…", category.name);
                        told = true;
                    }
                    let left = until.saturating_duration_since(Instant::now());
                    tokio::time::sleep(RETRY_EVERY.min(left)).await;
                }
                _ => {
                    (self.emit)(&category);
                    self.categories.push(category);
                    return found;
                }
            }
        }
    }

    /// Whether every category so far passed (warnings pass).
    pub fn passed_so_far(&self) -> bool {
        !self.categories.iter().any(Category::failed)
    }

    /// The report of the categories emitted.
    pub fn report(self) -> Report {
        Report::new(self.categories)
    }
}

/// Runs the checks `args` asks for: each category goes to `emit` as soon as its checks are done
/// (see [`Checklist`]); the whole report at the end. `local`: the local mesh `--proxy` looks
/// at instead of the cluster (see [`crate::target`]).
pub async fn check(
    args: &CheckArgs,
    cluster: &crate::kube::ClusterArgs,
    local: Option<&crate::target::Local>,
    emit: &mut dyn FnMut(&Category),
) -> Report {
    let mut list = Checklist::new(args.check_timeout, args.wait, emit);
    let namespace = args.namespace.as_deref();
    match (args.pre, args.proxy, local) {
        (true, _, _) => run_pre(cluster, &mut list).await,
        (_, true, Some(local)) => local::run_proxy(local, namespace, &mut list).await,
        (_, true, None) => run_proxy(cluster, namespace, &mut list).await,
        _ => run_control_plane(cluster, &mut list).await,
    }
    list.report()
}

/// `mesh check`: the checklist on stdout, each category written and flushed as soon as it is
/// done (or, with `-o json`, one document at the end). Whether every check passed.
pub fn run(args: &CheckArgs, cluster: &crate::kube::ClusterArgs) -> anyhow::Result<bool> {
    let local = match args.proxy {
        true => match crate::target::resolve(args.target, args.state.as_deref(), cluster)? {
            crate::target::Target::Local(local) => Some(local),
            crate::target::Target::Kube => None,
        },
        false => None,
    };
    // Into the local mesh's namespaces while no thread runs yet.
    if let Some(local) = &local {
        local.enter()?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let json = args.output == "json";
    let mut out = Stdout::default();
    let report = runtime.block_on(check(args, cluster, local.as_ref(), &mut |category| {
        if !json {
            out.write(&category.human());
        }
    }));
    match json {
        true => out.write(&report.json()),
        false => out.write(report.footer()),
    }
    out.error.map_or(Ok(report.success), Err)
}

/// stdout, flushed at every write; a closed pipe (`mesh check | head`) ends the writing, not
/// the run, and is no error.
#[derive(Default)]
struct Stdout {
    closed: bool,
    error: Option<anyhow::Error>,
}

impl Stdout {
    fn write(&mut self, text: &str) {
        if self.closed {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            self.closed = true;
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                self.error = Some(anyhow::Error::new(e).context("writing the output"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(result: Outcome) -> Check {
        Check {
            description: "x".into(),
            result,
            detail: None,
            error: None,
            hint: None,
        }
    }

    fn cat(checks: Vec<Check>) -> Category {
        Category {
            name: "c".into(),
            checks,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        for (d, shown) in [
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0ms"),
        ] {
            assert_eq!(show_duration(d), shown);
        }
    }

    #[test]
    fn a_warning_does_not_fail_the_run_an_error_does() {
        assert!(Report::new(vec![cat(vec![check(Outcome::Warning)])]).success);
        let failed = Report::new(vec![cat(vec![
            check(Outcome::Success),
            check(Outcome::Error),
        ])]);
        assert!(!failed.success);
        assert!(failed.human().ends_with("Status check results are ×\n"));
    }

    #[test]
    fn a_detail_is_shown_under_a_passed_check_and_kept_out_of_json_when_absent() {
        let with = cat(vec![check(Outcome::Success).with_detail("why")]);
        assert_eq!(with.human(), "c\n-\n✔ x\n    why\n\n");
        let json = Report::new(vec![with, cat(vec![check(Outcome::Success)])]).json();
        assert_eq!(json.matches("\"detail\": \"why\"").count(), 1, "{json}");
        assert_eq!(json.matches("detail").count(), 1, "{json}");
    }

    #[tokio::test]
    async fn wait_retries_a_failed_category_and_emits_only_its_last_attempt() {
        let mut emitted = Vec::new();
        let mut emit = |c: &Category| emitted.push(c.checks[0].result);
        let mut list = Checklist::new(
            Duration::from_secs(1),
            Some(Duration::from_millis(50)),
            &mut emit,
        );
        let mut attempts = 0;
        list.category(|| {
            attempts += 1;
            let result = match attempts {
                1 => Outcome::Error,
                _ => Outcome::Success,
            };
            async move { (cat(vec![check(result)]), ()) }
        })
        .await;
        assert!(list.passed_so_far());
        // Without time left, a failed category is emitted at once.
        list.category(|| async { (cat(vec![check(Outcome::Error)]), ()) })
            .await;
        let report = list.report();
        assert!(!report.success);
        assert_eq!(attempts, 2);
        assert_eq!(emitted, [Outcome::Success, Outcome::Error]);
    }
}
