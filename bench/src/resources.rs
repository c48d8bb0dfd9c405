//! CPU time and peak memory of processes, read from `/proc`, measured over one load-generator run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};

/// A process whose usage is measured during a run, e.g. a proxy.
#[derive(Clone, Debug)]
pub struct Watched {
    /// What to call it in the report, e.g. `client proxy`.
    pub name: String,
    pub pid: u32,
}

/// What one process used during a run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Usage {
    /// The process's name in the report.
    pub name: String,
    /// User plus system CPU time spent during the run, in seconds.
    pub cpu_seconds: f64,
    /// The peak resident set size during the run (`VmHWM`, reset at the start), in bytes.
    pub peak_rss_bytes: u64,
}

/// What a run used: the watched processes, and everyone else on the machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Metered {
    pub usage: Vec<Usage>,
    /// CPU seconds spent by processes outside this benchmark's process tree (other users of
    /// the machine, e.g. a compiler), approximately: a sign of noise.
    pub others_cpu_seconds: f64,
}

/// Measures processes over one run: [`Meter::start`] before, [`Meter::finish`] after.
pub struct Meter {
    clock_ticks: u64,
    started: Vec<(Watched, u64)>,
    others: u64,
}

impl Meter {
    /// Resets each process's peak RSS to its current RSS and notes the CPU time spent so far.
    pub fn start(clock_ticks: u64, watched: &[Watched]) -> anyhow::Result<Meter> {
        let mut started = Vec::with_capacity(watched.len());
        for w in watched {
            reset_peak_rss(w.pid)
                .with_context(|| format!("resetting the peak RSS of {}", w.name))?;
            let stat = stat(w.pid).with_context(|| w.name.clone())?;
            started.push((w.clone(), stat.cpu_ticks));
        }
        Ok(Meter {
            clock_ticks,
            started,
            others: others_cpu_ticks(),
        })
    }

    /// What was used since [`Meter::start`].
    pub fn finish(self) -> anyhow::Result<Metered> {
        let others = others_cpu_ticks().saturating_sub(self.others);
        let seconds = |ticks: u64| ticks as f64 / self.clock_ticks as f64;
        let usage = self
            .started
            .into_iter()
            .map(|(w, before)| {
                let after = stat(w.pid).with_context(|| w.name.clone())?.cpu_ticks;
                let peak = peak_rss(w.pid).with_context(|| w.name.clone())?;
                Ok(Usage {
                    name: w.name,
                    cpu_seconds: seconds(after.saturating_sub(before)),
                    peak_rss_bytes: peak,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Metered {
            usage,
            others_cpu_seconds: seconds(others),
        })
    }
}

/// The kernel's clock ticks per second, the unit of CPU times in `/proc/<pid>/stat`.
pub fn clock_ticks() -> anyhow::Result<u64> {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running `getconf CLK_TCK`")?;
    if !output.status.success() {
        bail!("`getconf CLK_TCK` failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&ticks| ticks > 0)
        .ok_or_else(|| {
            anyhow!(
                "`getconf CLK_TCK` printed {:?}, expected a number",
                text.trim()
            )
        })
}

/// The memory of process `pid` now: (`VmHWM`, `VmRSS`), in bytes.
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = proc_file(pid, "status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let field =
        |name| status_bytes(&status, name).with_context(|| format!("parsing {}", path.display()));
    Ok((field("VmHWM")?, field("VmRSS")?))
}

/// The CPU time process `pid` has used so far (user + system, all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    Ok(stat(pid)?.cpu_ticks)
}

// === helpers ===

/// The fields of `/proc/<pid>/stat` the benchmark reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    /// `utime + stime`: the process's own CPU time (all its threads).
    cpu_ticks: u64,
    /// `cutime + cstime`: the CPU time of its children that it has waited for.
    children_ticks: u64,
}

fn proc_file(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// Writing `5` to `clear_refs` resets the peak RSS (`VmHWM`) to the current RSS (Linux ≥ 4.0).
fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    let path = proc_file(pid, "clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("writing {}", path.display()))
}

fn stat(pid: u32) -> anyhow::Result<Stat> {
    let path = proc_file(pid, "stat");
    let stat =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_stat(&stat).with_context(|| format!("parsing {}", path.display()))
}

/// The peak RSS in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = proc_file(pid, "status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_peak_rss(&status).with_context(|| format!("parsing {}", path.display()))
}

/// The CPU time so far of every process outside this process's tree, children it reaped
/// included: the machine's other users. Processes that vanish while it reads are skipped.
fn others_cpu_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let stats: HashMap<u32, Stat> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid).ok()?)))
        .collect();
    others_ticks(std::process::id(), &stats)
}

/// Sums the CPU time of the processes in `stats` that do not descend from `me` (nor are it).
fn others_ticks(me: u32, stats: &HashMap<u32, Stat>) -> u64 {
    let ours = |mut pid: u32| {
        // A parent chain ends at pid 0 (init's parent, kernel threads'); bound it anyway.
        for _ in 0..stats.len() + 1 {
            if pid == me {
                return true;
            }
            match stats.get(&pid) {
                Some(stat) if stat.ppid != pid => pid = stat.ppid,
                _ => return false,
            }
        }
        false
    };
    stats
        .iter()
        .filter(|(&pid, _)| !ours(pid))
        .map(|(_, s)| s.cpu_ticks + s.children_ticks)
        .sum()
}

/// Parses `/proc/<pid>/stat`, counting fields after the command name, which is in parentheses
/// and may itself hold spaces and parentheses.
fn parse_stat(stat: &str) -> anyhow::Result<Stat> {
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("no `)` after the command name"))?;
    // `rest` starts at field 3 (the state), so field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        let value = fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("only {} fields", fields.len() + 2))?;
        // `cutime` and `cstime` are signed in the kernel; they are never negative in practice.
        value
            .parse::<i64>()
            .map(|v| v.max(0).unsigned_abs())
            .map_err(|_| anyhow!("field {n} is {value:?}, expected a number"))
    };
    Ok(Stat {
        ppid: u32::try_from(field(4)?).map_err(|_| anyhow!("ppid out of range"))?,
        cpu_ticks: field(14)? + field(15)?,
        children_ticks: field(16)? + field(17)?,
    })
}

/// `VmHWM` from `/proc/<pid>/status`, which the kernel writes in kB (KiB).
fn parse_peak_rss(status: &str) -> anyhow::Result<u64> {
    status_bytes(status, "VmHWM")
}

/// The field `name` of `/proc/<pid>/status` (written in kB, i.e. KiB), in bytes.
fn status_bytes(status: &str, name: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .ok_or_else(|| anyhow!("no {name} line"))?;
    let kib = line
        .trim()
        .strip_suffix("kB")
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("{name} is {:?}, expected `<n> kB`", line.trim()))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let check = |stat: &str, expected: Result<(u32, u64, u64), &str>| {
            let actual = parse_stat(stat)
                .map(|s| (s.ppid, s.cpu_ticks, s.children_ticks))
                .map_err(|e| e.to_string());
            assert_eq!(actual, expected.map_err(str::to_string), "{stat:?}");
        };
        check(
            "4242 (mesh-proxy) S 1 4242 4242 0 -1 4194560 1203 0 0 0 150 37 4 3 20 0 3 0 123 0 0",
            Ok((1, 187, 7)),
        );
        // The command name may hold spaces and parentheses.
        check(
            "7 (a) b (c) R 9 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1 0 0",
            Ok((9, 11, 0)),
        );
        check("7 (x) R 1 2", Err("only 5 fields"));
        check(
            "7 (x) R 1 7 7 0 -1 0 0 0 0 0 x 6 0 0",
            Err("field 14 is \"x\", expected a number"),
        );
        check("garbage", Err("no `)` after the command name"));
    }

    #[test]
    fn others_are_everyone_outside_my_tree() {
        let stat = |ppid, cpu_ticks| Stat {
            ppid,
            cpu_ticks,
            children_ticks: 1,
        };
        // 1 → 10 (me) → 11 → 12; 1 → 20 → 21; 2 (kthreadd, parent 0).
        let stats = HashMap::from([
            (1, stat(0, 100)),
            (2, stat(0, 1)),
            (10, stat(1, 1000)),
            (11, stat(10, 1000)),
            (12, stat(11, 1000)),
            (20, stat(1, 50)),
            (21, stat(20, 5)),
        ]);
        assert_eq!(others_ticks(10, &stats), 101 + 2 + 51 + 6);
    }

    #[test]
    fn peak_rss_from_status() {
        let check = |status: &str, expected: Result<u64, &str>| {
            let actual = parse_peak_rss(status).map_err(|e| e.to_string());
            assert_eq!(actual, expected.map_err(str::to_string), "{status:?}");
        };
        check(
            "Name:\tmesh-proxy\nVmPeak:\t  20000 kB\nVmHWM:\t    6144 kB\nVmRSS:\t 5000 kB\n",
            Ok(6144 * 1024),
        );
        check("Name:\tx\n", Err("no VmHWM line"));
        let status = "VmHWM:\t    6144 kB\nVmRSS:\t 5000 kB\n";
        assert_eq!(status_bytes(status, "VmRSS").ok(), Some(5000 * 1024));
        check(
            "VmHWM:\t lots\n",
            Err("VmHWM is \"lots\", expected `<n> kB`"),
        );
    }
}
