//! `mesh viz top`: tap events folded into one row per (source, destination, method, path) with
//! the count, best, worst and last latency and the success rate.

use std::collections::HashMap;
use std::net::IpAddr;

use mesh_api::tap::{Event, Peer};

use crate::tap::OpenRequests;

/// What identifies a row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RowKey {
    pub source: String,
    pub destination: String,
    pub method: String,
    pub path: String,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    #[serde(flatten)]
    pub key: RowKey,
    pub count: u64,
    pub successes: u64,
    pub best_ms: f64,
    pub worst_ms: f64,
    pub last_ms: f64,
}

impl Row {
    pub fn success_rate(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.successes as f64 / self.count as f64
        }
    }
}

/// The columns, in table order; the table sorts by one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Source,
    Destination,
    Method,
    Path,
    Count,
    Best,
    Worst,
    Last,
    SuccessRate,
}

impl Column {
    pub const ALL: [Column; 9] = [
        Column::Source,
        Column::Destination,
        Column::Method,
        Column::Path,
        Column::Count,
        Column::Best,
        Column::Worst,
        Column::Last,
        Column::SuccessRate,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Source => "Source",
            Column::Destination => "Destination",
            Column::Method => "Method",
            Column::Path => "Path",
            Column::Count => "Count",
            Column::Best => "Best",
            Column::Worst => "Worst",
            Column::Last => "Last",
            Column::SuccessRate => "Success Rate",
        }
    }
}

/// The aggregation and its sort order.
#[derive(Debug)]
pub struct Top {
    names: HashMap<IpAddr, String>,
    pending: OpenRequests<RowKey>,
    rows: HashMap<RowKey, Row>,
    pub sort: Column,
    /// Ascending instead of the column's natural order (counts and latencies descending).
    pub reversed: bool,
}

impl Top {
    /// `names` turns peer addresses into pod names where the tap event has no `pod` label.
    pub fn new(names: HashMap<IpAddr, String>) -> Top {
        Top {
            names,
            pending: OpenRequests::default(),
            rows: HashMap::new(),
            sort: Column::Count,
            reversed: false,
        }
    }

    /// Folds in one event from `pod`'s proxy. A request counts once it ends.
    pub fn record(&mut self, pod: &str, event: &Event) {
        match event {
            Event::RequestStart {
                id,
                source,
                destination,
                method,
                path,
                ..
            } => {
                let key = RowKey {
                    source: self.peer(source),
                    destination: self.peer(destination),
                    method: method.clone(),
                    path: path.clone(),
                };
                self.pending.insert(pod, *id, key);
            }
            Event::ResponseEnd {
                id,
                duration_ms,
                success,
                ..
            } => {
                let Some(key) = self.pending.remove(pod, *id) else {
                    return;
                };
                let row = self.rows.entry(key.clone()).or_insert(Row {
                    key,
                    count: 0,
                    successes: 0,
                    best_ms: f64::INFINITY,
                    worst_ms: 0.0,
                    last_ms: 0.0,
                });
                row.count += 1;
                row.successes += u64::from(*success);
                row.best_ms = row.best_ms.min(*duration_ms);
                row.worst_ms = row.worst_ms.max(*duration_ms);
                row.last_ms = *duration_ms;
            }
            Event::ResponseStart { .. } | Event::Dropped { .. } => {}
        }
    }

    /// The rows in the current order (ties broken by the key, so the order is stable).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self.rows.values().cloned().collect();
        let sort = self.sort;
        rows.sort_by(|a, b| {
            use std::cmp::Ordering;
            let by: Ordering = match sort {
                Column::Source => a.key.source.cmp(&b.key.source),
                Column::Destination => a.key.destination.cmp(&b.key.destination),
                Column::Method => a.key.method.cmp(&b.key.method),
                Column::Path => a.key.path.cmp(&b.key.path),
                Column::Count => b.count.cmp(&a.count),
                Column::Best => b.best_ms.total_cmp(&a.best_ms),
                Column::Worst => b.worst_ms.total_cmp(&a.worst_ms),
                Column::Last => b.last_ms.total_cmp(&a.last_ms),
                Column::SuccessRate => a.success_rate().total_cmp(&b.success_rate()),
            };
            let by = if self.reversed { by.reverse() } else { by };
            by.then_with(|| a.key.cmp(&b.key))
        });
        rows
    }

    /// Sorts by the next column to the right (wrapping).
    pub fn sort_next(&mut self) {
        self.sort = shift(self.sort, 1);
    }

    /// Sorts by the next column to the left (wrapping).
    pub fn sort_prev(&mut self) {
        self.sort = shift(self.sort, Column::ALL.len() - 1);
    }

    fn peer(&self, peer: &Peer) -> String {
        if let Some(pod) = peer.labels.get("pod") {
            return pod.clone();
        }
        match self.names.get(&peer.addr.ip()) {
            Some(name) => name.clone(),
            None => peer.addr.ip().to_string(),
        }
    }
}

fn shift(c: Column, by: usize) -> Column {
    let i = Column::ALL.iter().position(|x| *x == c).unwrap_or(0);
    Column::ALL[(i + by) % Column::ALL.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::tests::recorded;

    fn top() -> Top {
        let names = HashMap::from([("10.244.0.5".parse().unwrap(), "client".to_string())]);
        let mut top = Top::new(names);
        for e in recorded() {
            top.record("web-1", &e);
        }
        top
    }

    #[test]
    fn rows_aggregate_by_route() {
        let rows = top().rows();
        let summary: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} n={} best={} worst={} last={} sr={}",
                    r.key.source,
                    r.key.destination,
                    r.key.method,
                    r.key.path,
                    r.count,
                    r.best_ms,
                    r.worst_ms,
                    r.last_ms,
                    r.success_rate()
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "client web-1 GET / n=3 best=0.6 worst=2.6 last=0.6 sr=1",
                "client web-1 POST /grpc/fail n=2 best=1.5 worst=3.3 last=3.3 sr=0",
            ]
        );
    }

    #[test]
    fn sorting_changes_with_the_keys() {
        let mut top = top();
        top.sort = Column::Worst;
        assert_eq!(top.rows()[0].key.path, "/grpc/fail");
        top.reversed = true;
        assert_eq!(top.rows()[0].key.path, "/");
        top.sort_next();
        assert_eq!(top.sort, Column::Last);
        top.sort = Column::Source;
        top.sort_prev();
        assert_eq!(top.sort, Column::SuccessRate);
    }

    #[test]
    fn a_request_counts_when_it_ends() {
        let mut top = Top::new(HashMap::new());
        let events = recorded();
        top.record("web-1", &events[0]);
        top.record("web-1", &events[1]);
        assert!(top.rows().is_empty());
        // Another pod's stream with the same id does not end it.
        top.record("web-2", &events[2]);
        assert!(top.rows().is_empty());
        top.record("web-1", &events[2]);
        assert_eq!(top.rows()[0].key.source, "10.244.0.5");
    }
}
