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

#[test]
fn the_builder_may_write_exactly_the_contract_tags() {
    use opsy_aws::managed::{BuildFacts, BuildIdentity};
    let identity = BuildIdentity {
        cluster_name: "c".into(),
        created_by: "pb".into(),
        namespace: "ns".into(),
        packer_repo: "https://example.com/r".into(),
        packer_repo_branch: "main".into(),
    };
    let written: std::collections::BTreeSet<String> = identity
        .tags(&BuildFacts {
            created: "2024-11-19T00:00:00Z".parse().unwrap(),
            base_ami: Some("ami-base".into()),
            build_id: "b".into(),
            job_id: "j".into(),
            kubernetes_version: Some("1.31".into()),
            architecture: Some("arm64".into()),
            variant: Some("nvidia".into()),
            os_family: Some("al2023".into()),
        })
        .into_keys()
        // A copy in another region also says where it came from; a quarantine spread from a
        // copy to its source writes the reason.
        .chain(
            [
                opsy_api::tags::SOURCE_AMI,
                opsy_api::tags::SOURCE_REGION,
                opsy_api::tags::QUARANTINE_REASON,
            ]
            .map(str::to_owned),
        )
        .collect();
    let path = opsy_testkit::iam::policy_path("packer-builder-operator");
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let allowed: std::collections::BTreeSet<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Action"] == serde_json::json!(["ec2:CreateTags"]))
        .flat_map(|s| {
            s["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        allowed, written,
        "the policy's aws:TagKeys and the tag contract differ"
    );
}
