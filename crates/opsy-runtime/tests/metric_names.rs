//! Every metric the charts' alert rules (and dashboards) query is one the operators export.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeSet, path::Path};

use opsy_aws::CallCounter;
use opsy_runtime::{fleet, metrics::Metrics};

/// The series names a scrape shows once every family has a sample.
fn exported() -> BTreeSet<String> {
    let calls = CallCounter::default();
    let metrics = Metrics::new(calls.clone());
    calls.record("ec2", "DescribeImages", "ok");
    metrics.reconciled(std::time::Duration::from_millis(5), Some("aws"));
    metrics.transition("BuildSucceeded");
    metrics.transition("NodeGroupUpdated");
    metrics.reclaimed(1);
    metrics.build_ended(true, std::time::Duration::from_secs(60));
    metrics.fleet().add_source(Box::new(|| {
        vec![(
            "ns".to_owned(),
            "name".to_owned(),
            fleet::ALL.iter().map(|g| (*g, Vec::new(), 1.0)).collect(),
        )]
    }));
    metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// `opsy_…` names in `text`.
fn queried(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("opsy_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn the_alert_rules_and_dashboards_query_only_exported_metrics() {
    let exported = exported();
    let charts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts");
    let mut checked = 0;
    for chart in ["packer-builder-operator", "ami-refresh-operator"] {
        for file in [
            charts.join(chart).join("templates/prometheusrule.yaml"),
            charts.join(chart).join(format!("dashboards/{chart}.json")),
        ] {
            let text = std::fs::read_to_string(&file).unwrap();
            let names = queried(&text);
            assert!(
                !names.is_empty(),
                "{} queries no opsy_ metric",
                file.display()
            );
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{} queries {name}, which the operators do not export; they export {exported:?}",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 16, "only {checked} names checked");
}
