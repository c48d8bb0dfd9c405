//! A parser for the Prometheus text format the proxies serve (also OpenMetrics' `# EOF`).
//!
//! Only what `mesh viz` reads: samples with their name, labels and value ([`Sample`], the type
//! the viz metrics API carries too, from `mesh_api::viz`). Comments (`# HELP`, `# TYPE`, `# EOF`)
//! and blank lines are skipped; a malformed line is an error naming its line.

use std::collections::BTreeMap;

/// The sample and its value's text live with the viz wire format, which carries them.
pub use mesh_api::viz::{parse_value, Sample};

/// A line that is not a sample.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("metrics line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Parses a whole exposition.
///
/// ```
/// let samples = mesh_viz::prom::parse("# TYPE x counter\nx_total{a=\"b\"} 3\n# EOF\n").unwrap();
/// assert_eq!(samples[0].name, "x_total");
/// assert_eq!(samples[0].label("a"), Some("b"));
/// assert_eq!(samples[0].value, 3.0);
/// ```
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|reason| ParseError {
            line: i + 1,
            reason,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

/// The value of `s`'s label `name`, empty when it has none: how the folds key their rows.
pub(crate) fn label(s: &Sample, name: &str) -> String {
    s.label(name).unwrap_or_default().to_string()
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        rest = parse_labels(body, &mut labels)?;
    }
    // The value, then an optional timestamp.
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("no value after {name}"))?;
    let value = parse_value(value).ok_or_else(|| format!("invalid value {value:?}"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `a="b",c="d"}` and returns what follows the `}`.
fn parse_labels<'a>(
    mut body: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        body = body.trim_start_matches([' ', ',']);
        if let Some(rest) = body.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = body
            .find('=')
            .ok_or("a label without `=`, or labels not closed with `}`")?;
        let key = body[..eq].trim();
        if key.is_empty() {
            return Err("an empty label name".into());
        }
        body = body[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: value not quoted"))?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("label {key}: unterminated value")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("label {key}: unterminated value")),
            }
        };
        labels.insert(key.to_string(), value);
        body = &body[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, name: &str, labels: &[(&str, &str)], value: f64) {
        let samples = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(samples.len(), 1, "{line}");
        let s = &samples[0];
        assert_eq!(s.name, name, "{line}");
        let expected: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(s.labels, expected, "{line}");
        assert!(
            s.value == value || (s.value.is_nan() && value.is_nan()),
            "{line}"
        );
    }

    #[test]
    fn samples() {
        check("up 1", "up", &[], 1.0);
        check("x_total{} 2", "x_total", &[], 2.0);
        check(
            r#"response_latency_ms_bucket{le="5.0",direction="outbound"} 1"#,
            "response_latency_ms_bucket",
            &[("le", "5.0"), ("direction", "outbound")],
            1.0,
        );
        check(r#"b{le="+Inf"} 7 1700000000"#, "b", &[("le", "+Inf")], 7.0);
        check(
            r#"q{a="x\"y\\z\n"} 1.5e3"#,
            "q",
            &[("a", "x\"y\\z\n")],
            1500.0,
        );
        check(r#"q{a="1",} +Inf"#, "q", &[("a", "1")], f64::INFINITY);
        check("n NaN", "n", &[], f64::NAN);
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = "# HELP a A.\n# TYPE a counter\n\na_total 1\n# EOF\n";
        assert_eq!(parse(text).unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, reason) in [
            ("ok 1\nbad", "no value"),
            ("ok 1\nx{a=\"1\" 2", "not closed"),
            ("ok 1\nx{a=1} 2", "not quoted"),
            ("ok 1\nx one", "invalid value"),
            ("ok 1\nx-y 1", "invalid metric name"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, 2, "{text}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn a_real_scrape_parses() {
        let samples = parse(include_str!("../tests/data/scrape-web-1.txt")).unwrap();
        assert!(samples.iter().any(|s| s.name == "response_total"
            && s.label("direction") == Some("inbound")
            && s.label("tls") == Some("true")));
        assert!(samples
            .iter()
            .any(|s| s.name == "response_latency_ms_bucket" && s.label("le") == Some("+Inf")));
    }
}
