//! The reliability suite's record of what it measured (issue 17): every check of the attack,
//! chaos and resource tests calls [`record!`] with its figure, its target and whether it met it.
//! The figure always goes to stderr; when `MESH_RELIABILITY_OUT` names a file, it is also
//! appended there as a JSON line, and `scripts/reliability` folds those lines into RELIABILITY.md
//! (`reliability-report`, see `src/bin/reliability-report.rs`). The test still asserts: a record
//! is what the suite saw, the assertion is what CI holds it to.
//!
//! [`Usage`] reads what a process holds (RSS, peak RSS, CPU time, open files) from `/proc`, the
//! figures most checks report about the proxy under attack.

use std::io::Write as _;
use std::time::Duration;

/// Where a run's records go, a JSON line each (appended).
pub const OUT_ENV: &str = "MESH_RELIABILITY_OUT";

/// One check's outcome, as a row of RELIABILITY.md.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Check {
    /// The RELIABILITY.md section: "HTTP/2 attacks", "HTTP/1 attacks", "Identity attacks",
    /// "Chaos under load", "Resources".
    pub section: String,
    /// What was done, in a few words; unique within its section (a later run replaces the row).
    pub check: String,
    /// What was measured, with units.
    pub figure: String,
    /// What it should be.
    pub target: String,
    pub passed: bool,
    /// The test binary (`tests/tests/<test>.rs`) and test function that measured it.
    pub test: String,
    pub function: String,
}

/// Records a check (see the module's documentation):
/// `record!("HTTP/2 attacks", "Rapid Reset", figure, "RSS ≤ 64 MB", passed)`.
/// Returns `passed`, for the caller's assertion.
#[macro_export]
macro_rules! record {
    ($section:expr, $check:expr, $figure:expr, $target:expr, $passed:expr $(,)?) => {
        $crate::reliability::write(&$crate::reliability::Check {
            section: ($section).to_string(),
            check: ($check).to_string(),
            figure: ($figure).to_string(),
            target: ($target).to_string(),
            passed: $passed,
            test: env!("CARGO_CRATE_NAME").to_string(),
            function: ::std::thread::current()
                .name()
                .unwrap_or("?")
                .rsplit("::")
                .next()
                .unwrap_or("?")
                .to_string(),
        })
    };
}

/// Writes `check` to stderr and, when [`OUT_ENV`] is set, to its file; returns `check.passed`.
pub fn write(check: &Check) -> bool {
    eprintln!(
        "reliability: [{}] {}: {} (target {}) {}",
        check.section,
        check.check,
        check.figure,
        check.target,
        if check.passed { "ok" } else { "MISSED" }
    );
    if let Some(path) = std::env::var_os(OUT_ENV) {
        let line = serde_json::to_string(check).expect("a check serializes");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(err) = written {
            panic!("{OUT_ENV}={}: {err}", path.to_string_lossy());
        }
    }
    check.passed
}

/// What a process holds, from `/proc/PID/{status,stat,fd}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Resident set size, kB.
    pub rss_kb: u64,
    /// The peak resident set size so far (`VmHWM`), kB.
    pub peak_rss_kb: u64,
    /// User and system CPU time so far.
    pub cpu: Duration,
    /// Open file descriptors.
    pub fds: usize,
}

impl Usage {
    /// Reads process `pid`'s usage; an error when it is gone.
    pub fn of(pid: u32) -> anyhow::Result<Usage> {
        use anyhow::Context as _;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("process {pid}"))?;
        let kb = |key: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {key} in /proc/{pid}/status"))
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid}"))?;
        // Fields after the command name (which may hold spaces, so split after its `)`):
        // utime is field 14 and stime 15 of the whole line, 12 and 13 after the `)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("/proc/{pid}/stat: {stat}"))
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as u64;
        let cpu_ticks = ticks(11)? + ticks(12)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("process {pid}"))?
            .count();
        Ok(Usage {
            rss_kb: kb("VmRSS:")?,
            peak_rss_kb: kb("VmHWM:")?,
            cpu: Duration::from_millis(cpu_ticks * 1000 / hz),
            fds,
        })
    }
}

/// `kb` as MB with one decimal, for figures.
pub fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// `12345` as `12,345`, for a figure.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (120_000, "120,000"),
        ] {
            assert_eq!(thousands(n), s);
        }
    }

    #[test]
    fn usage_of_this_process() {
        let usage = Usage::of(std::process::id()).unwrap();
        assert!(usage.rss_kb > 0 && usage.peak_rss_kb >= usage.rss_kb);
        assert!(usage.fds >= 3);
        assert!(Usage::of(u32::MAX).is_err());
    }

    #[test]
    fn record_returns_passed_and_appends_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let check = Check {
            section: "Resources".into(),
            check: "a check".into(),
            figure: "1 MB".into(),
            target: "≤ 2 MB".into(),
            passed: true,
            test: "t".into(),
            function: "f".into(),
        };
        // The variable is read by `write` only; set it for this test's process alone.
        std::env::set_var(OUT_ENV, &out);
        assert!(write(&check));
        assert!(!write(&Check {
            passed: false,
            ..check.clone()
        }));
        std::env::remove_var(OUT_ENV);
        let lines: Vec<Check> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].passed && !lines[1].passed);
    }
}
