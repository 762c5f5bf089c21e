//! Every AWS operation this crate can call is allowed by one of the operators' IAM policies in
//! `deploy/iam/` (the operator tests check, call by call, that each operator's own policy
//! covers what it called).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// `(service, operation)` of every `self.call("<service>", OP, …)` whose `const OP` names the
/// operation, in this crate's sources.
fn operations() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        // Each function declares its OP, then calls with it: pair them in order.
        let mut current = None;
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("const OP: &str = \"") {
                current = rest.split('"').next().map(str::to_owned);
            }
            let service = line
                .split("self.call(\"")
                .nth(1)
                .and_then(|rest| rest.split_once("\", OP"))
                .map(|(service, _)| service.to_owned());
            if let (Some(service), Some(operation)) = (service, current.as_ref()) {
                found.push((service, operation.clone()));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn every_operation_of_the_aws_layer_is_in_an_operator_policy() {
    let operations = operations();
    // The AWS layer's calls: a floor that catches the scan silently finding nothing.
    assert!(operations.len() >= 15, "found only {operations:?}");
    let pairs = operations.iter().map(|(s, o)| (s.as_str(), o.as_str()));
    let builder =
        opsy_testkit::iam::missing_from_policy("packer-builder-operator", pairs.clone()).unwrap();
    let refresher = opsy_testkit::iam::missing_from_policy("ami-refresh-operator", pairs).unwrap();
    let in_neither: Vec<_> = builder.iter().filter(|a| refresher.contains(a)).collect();
    assert!(
        in_neither.is_empty(),
        "allowed by no policy in deploy/iam/: {in_neither:?}"
    );
}
