//! What the viz crate's unit tests share: pods, their scrapes, and the check that a fold reads
//! only families the sources keep.

use crate::model::{Kind, PodInfo, Workload};
use crate::prom::parse;
use crate::stat::Scrapes;

/// A meshed pod `name` of Deployment `deploy`, in namespace demo.
pub fn pod(name: &str, deploy: &str) -> PodInfo {
    PodInfo {
        namespace: "demo".into(),
        name: name.into(),
        ip: None,
        owner: Workload::new(Kind::Deployment, "demo", deploy),
        services: vec![],
        meshed: true,
        identity: None,
        address: String::new(),
    }
}

/// The scrapes of pods of namespace demo: each pod's text, written in short and spelled out by
/// `expand`.
pub fn scrapes(entries: &[(&str, &str)], expand: impl Fn(&str) -> String) -> Scrapes {
    entries
        .iter()
        .map(|(pod, text)| {
            let samples = parse(&expand(text)).unwrap_or_else(|e| panic!("{e}\n{text}"));
            (("demo".to_string(), pod.to_string()), samples)
        })
        .collect()
}

/// Asserts that every family a fold reads is in `mesh_api::viz::FAMILIES`, which both sources
/// keep (and the metrics API queries).
pub fn assert_the_sources_keep(families: &[&str]) {
    for family in families {
        assert!(
            mesh_api::viz::FAMILIES.contains(family),
            "{family} is not in mesh_api::viz::FAMILIES: the sources would drop it"
        );
    }
}
