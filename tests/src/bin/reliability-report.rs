//! `reliability-report RECORDS RELIABILITY.md --date DATE --commit REV`: folds the JSON lines a
//! run of the reliability suite recorded (`mesh_tests::reliability`, one [`Check`] each) into
//! RELIABILITY.md. Each section lives between its own markers; a recorded check replaces the row
//! of the same name in its section and leaves the other rows (and sections, such as the fuzzing
//! one `scripts/fuzz` writes) as they were, so a run of one test updates its rows alone.

use std::collections::BTreeMap;
use std::process::ExitCode;

use mesh_tests::reliability::Check;

/// The sections in the order RELIABILITY.md shows them, and what each covers.
const SECTIONS: &[(&str, &str)] = &[
    (
        "HTTP/2 attacks",
        "Floods and stalls on one HTTP/2 connection to a meshed pod: the proxy's memory and CPU \
         stay bounded, other clients keep their latency, and the attacker gets GOAWAY where the \
         protocol says so.",
    ),
    (
        "HTTP/1 attacks",
        "Request smuggling, slow and oversized requests, and clients that never read: bounded, \
         no effect on other clients, and nothing reaches the application that it would parse \
         differently from the proxy.",
    ),
    (
        "Identity attacks",
        "Forged identities, foreign or expired certificates, plaintext and downgrades against \
         identity-required ports: always refused, and counted.",
    ),
    (
        "Chaos under load",
        "Failures injected while a client sends requests at a fixed rate: every request is \
         counted, and each loss is explained.",
    ),
    (
        "Resources",
        "What the proxy holds under many connections, many destinations and a long run.",
    ),
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("reliability-report: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut positional, mut date, mut commit) = (Vec::new(), None, None);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--date" => date = it.next(),
            "--commit" => commit = it.next(),
            _ => positional.push(arg),
        }
    }
    let [records, report] = positional.as_slice() else {
        anyhow::bail!("usage: reliability-report RECORDS RELIABILITY.md --date DATE --commit REV");
    };
    let run = format!(
        "{}, {}",
        date.context("--date is needed")?,
        commit.context("--commit is needed")?
    );
    let records = std::fs::read_to_string(records).with_context(|| records.clone())?;
    let checks = records
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Check>(l).with_context(|| format!("a record: {l}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut text = std::fs::read_to_string(report).with_context(|| report.clone())?;
    for (section, about) in SECTIONS {
        let ours: Vec<&Check> = checks.iter().filter(|c| c.section == *section).collect();
        if ours.is_empty() {
            continue;
        }
        text = fold(&text, section, about, &ours, &run);
    }
    if let Some(unknown) = checks
        .iter()
        .find(|c| !SECTIONS.iter().any(|(s, _)| *s == c.section))
    {
        anyhow::bail!(
            "check {:?} names no known section: {:?}",
            unknown.check,
            unknown.section
        );
    }
    std::fs::write(report, text).with_context(|| report.clone())?;
    Ok(())
}

/// `text` with `section` rewritten: its earlier rows, those of `checks` replacing the ones of the
/// same check, in first-seen order.
fn fold(text: &str, section: &str, about: &str, checks: &[&Check], run: &str) -> String {
    let begin = format!("<!-- reliability: {section}: begin -->");
    let end = format!("<!-- reliability: {section}: end -->");
    let (before, old, after) = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => (
            &text[..b],
            &text[b + begin.len()..e],
            &text[e + end.len()..],
        ),
        _ => (text.trim_end(), "", "\n"),
    };
    // Rows by check name, in order; a row is `| check | …`.
    let mut rows: Vec<(String, String)> = old
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| check |"))
        .map(|l| (cell(l), l.to_string()))
        .collect();
    let mut latest: BTreeMap<&str, &Check> = BTreeMap::new();
    for check in checks {
        latest.insert(&check.check, check);
    }
    for check in checks {
        let Some(check) = latest.remove(check.check.as_str()) else {
            continue;
        };
        let row = format!(
            "| {} | {} | {} | {} | `cargo test -p mesh-tests --test {} {}` | {} |",
            escape(&check.check),
            escape(&check.figure),
            escape(&check.target),
            if check.passed { "met" } else { "**missed**" },
            check.test,
            check.function,
            run
        );
        match rows
            .iter_mut()
            .find(|(name, _)| *name == escape(&check.check))
        {
            Some(existing) => existing.1 = row,
            None => rows.push((escape(&check.check), row)),
        }
    }
    let mut out = String::new();
    out.push_str(before);
    if !before.ends_with("\n\n") {
        out.push_str(if before.ends_with('\n') { "\n" } else { "\n\n" });
    }
    out.push_str(&begin);
    out.push_str(&format!(
        "\n\n## {section}\n\n_Written by `scripts/reliability` (do not edit by hand); each row's \
         command reruns its check, and the row is that check's last run._\n\n{about}\n\n\
         | check | figure | target | result | command | run |\n|---|---|---|---|---|---|\n"
    ));
    for (_, row) in rows {
        out.push_str(&row);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&end);
    out.push_str(after);
    out
}

/// The first cell of a table row.
fn cell(row: &str) -> String {
    row.trim_start_matches("| ")
        .split(" | ")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `s` safe in a table cell.
fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, figure: &str) -> Check {
        Check {
            section: "Resources".into(),
            check: name.into(),
            figure: figure.into(),
            target: "≤ 64 MB".into(),
            passed: true,
            test: "resources".into(),
            function: "f".into(),
        }
    }

    #[test]
    fn a_run_replaces_its_rows_and_keeps_the_rest() {
        let start =
            "# Reliability\n\n<!-- scripts/fuzz: begin -->\nfuzz\n<!-- scripts/fuzz: end -->\n";
        let one = fold(
            start,
            "Resources",
            "About.",
            &[&check("a", "1 MB"), &check("b", "2 MB")],
            "d1, r1",
        );
        assert!(one.starts_with(start.trim_end()));
        assert!(one.contains("| a | 1 MB |") && one.contains("| b | 2 MB |"));
        let two = fold(
            &one,
            "Resources",
            "About.",
            &[&check("b", "3 MB"), &check("c", "4 MB")],
            "d2, r2",
        );
        assert!(two.contains("| a | 1 MB |") && two.contains("d1, r1"));
        assert!(two.contains("| b | 3 MB |") && !two.contains("| b | 2 MB |"));
        assert!(two.contains("| c | 4 MB |"));
        assert_eq!(two.matches("## Resources").count(), 1);
        assert!(two.contains("<!-- scripts/fuzz: end -->"));
        // Rows keep their order: a, b, c.
        let (a, b, c) = (
            two.find("| a |").unwrap(),
            two.find("| b |").unwrap(),
            two.find("| c |").unwrap(),
        );
        assert!(a < b && b < c);
        // Folding again the same records changes nothing.
        assert_eq!(
            fold(
                &two,
                "Resources",
                "About.",
                &[&check("b", "3 MB"), &check("c", "4 MB")],
                "d2, r2"
            ),
            two
        );
    }
}
