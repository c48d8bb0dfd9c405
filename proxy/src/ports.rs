//! Lists of TCP ports and port ranges, written `25,3306,8000-8100`: opaque ports, skipped ports.

use std::{fmt, str::FromStr};

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    start: u16,
    end: u16,
}

/// A list of ports and port ranges, written `25,3306,8000-8100`; the empty string is the empty list.
///
/// ```
/// use mesh_proxy::ports::PortList;
/// let ports: PortList = "25, 8000-8100".parse().unwrap();
/// assert_eq!(ports.to_string(), "25,8000-8100");
/// assert!("8100-8000".parse::<PortList>().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(Vec<PortRange>);

/// Why a port list does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParsePortsError {
    /// Two commas in a row, or a leading or trailing comma.
    #[error("empty entry in the port list (expected ports and ranges like 25,3306,8000-8100)")]
    EmptyEntry,
    /// Not a number in 1..=65535.
    #[error("`{0}` is not a port (expected a number from 1 to 65535)")]
    NotAPort(String),
    /// A malformed range, or one whose start is above its end.
    #[error("`{0}` is not a port range (expected START-END, two ports with START <= END)")]
    BadRange(String),
}

// === impl PortRange ===

impl PortRange {
    /// The range `start..=end`; `None` when `start > end` or `start` is 0.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start != 0 && start <= end).then_some(Self { start, end })
    }

    /// The argument of iptables' `--dport`: `25` or `8000:8100`.
    pub(crate) fn iptables(&self) -> String {
        if self.start == self.end {
            self.start.to_string()
        } else {
            format!("{}:{}", self.start, self.end)
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for PortRange {
    type Err = ParsePortsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParsePortsError::EmptyEntry);
        }
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(ParsePortsError::NotAPort(p.trim().to_string())),
        };
        match s.split_once('-') {
            None => {
                let p = port(s)?;
                Ok(Self { start: p, end: p })
            }
            Some((start, end)) => match (port(start), port(end)) {
                (Ok(start), Ok(end)) => Self::new(start, end),
                _ => None,
            }
            .ok_or_else(|| ParsePortsError::BadRange(s.to_string())),
        }
    }
}

// === impl PortList ===

impl PortList {
    /// Every port.
    pub fn all() -> Self {
        Self(vec![PortRange {
            start: 1,
            end: u16::MAX,
        }])
    }

    /// The ranges in the order they were written.
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    /// Whether `port` is in one of the ranges.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| (r.start..=r.end).contains(&port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These ranges and `ports`.
    pub fn with(&self, ports: impl IntoIterator<Item = u16>) -> Self {
        let mut ranges = self.0.clone();
        ranges.extend(
            ports
                .into_iter()
                .filter(|p| *p != 0)
                .map(|p| PortRange { start: p, end: p }),
        );
        Self(ranges)
    }
}

impl From<Vec<PortRange>> for PortList {
    fn from(ranges: Vec<PortRange>) -> Self {
        Self(ranges)
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

impl FromStr for PortList {
    type Err = ParsePortsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        s.split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        fn check(s: &str, expected: Result<&str, ParsePortsError>) {
            assert_eq!(
                s.parse::<PortList>().map(|p| p.to_string()),
                expected.map(String::from),
                "{s:?}"
            );
        }
        check("25, 587,8000-8100", Ok("25,587,8000-8100"));
        check("", Ok(""));
        check("80,", Err(ParsePortsError::EmptyEntry));
        check("65536", Err(ParsePortsError::NotAPort("65536".into())));
        check("0", Err(ParsePortsError::NotAPort("0".into())));
        check("1-2-3", Err(ParsePortsError::BadRange("1-2-3".into())));
        check("9-1", Err(ParsePortsError::BadRange("9-1".into())));
        let list: PortList = "25,8000-8100".parse().unwrap();
        assert!(list.contains(25) && list.contains(8000) && list.contains(8100));
        assert!(!list.contains(26) && !list.contains(8101));
    }
}
