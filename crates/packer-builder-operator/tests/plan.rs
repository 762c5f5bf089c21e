//! `packer-builder-operator plan` against the emulator: what it reports, and that it changes
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use opsy_testkit::{Fixture, Moto, seed::ids};
use serde_json::Value;

fn plan(moto: &Moto, file: &str, format: &str) -> String {
    moto.clear_requests().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_packer-builder-operator"))
        .args(["plan", "-f", file, "-o", format])
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "AKIAPLANTEST00000000")
        .env("AWS_SECRET_ACCESS_KEY", "plan-test")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read_only(moto: &Moto) {
    for action in moto.requests().unwrap().keys() {
        assert!(
            action.starts_with("Describe")
                || action.starts_with("List")
                || action.starts_with("GET "),
            "plan made a mutating call: {action}"
        );
    }
}

#[tokio::test]
async fn a_build_is_needed_when_no_managed_ami_exists() {
    let moto = Moto::start().unwrap();
    let report: Value = serde_json::from_str(&plan(
        &moto,
        &example("upstream-packer-builder.yaml"),
        "json",
    ))
    .unwrap();
    assert_eq!(report["resource"], "default/packer-builder-local");
    assert_eq!(report["base_ami"], ids::AL2023_130_OCT);
    assert_eq!(report["action"], "build");
    assert_eq!(report["reason"], "no managed AMI exists yet");
    assert!(
        report["commands"]
            .as_str()
            .unwrap()
            .contains(&format!("-var ami_id={}", ids::AL2023_130_OCT))
    );
    read_only(&moto);

    let text = plan(&moto, &example("upstream-packer-builder.yaml"), "text");
    assert!(
        text.contains("action:       build — no managed AMI exists yet"),
        "{text}"
    );
}

#[tokio::test]
async fn nothing_to_do_and_not_eligible_are_explained() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, "us-west-2").await;
    let contract = |status: &'static str, created: String| {
        vec![
            ("brought-to-you-by", "opsy-the-ami-operator".to_owned()),
            ("cluster-name", "opsy-gitops".to_owned()),
            ("created-by", "packer-builder-local".to_owned()),
            (
                "packer-repo",
                "https://github.com/ibeify/eks-node-group-ami-refresh".to_owned(),
            ),
            ("packer-repo-branch", "main".to_owned()),
            ("status", status.to_owned()),
            ("base-ami", ids::AL2023_130_OCT.to_owned()),
            ("create-timestamp", created),
        ]
    };
    let register = |name: &'static str, tags: Vec<(&'static str, String)>| {
        let fixture = fixture.clone();
        async move {
            let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
            fixture.register_image(name, &tags).await.unwrap()
        }
    };
    let now = jiff::Timestamp::now();
    let expired = register(
        "old",
        contract(
            "active",
            (now - jiff::SignedDuration::from_hours(72)).to_string(),
        ),
    )
    .await;
    let text = plan(&moto, &example("upstream-packer-builder.yaml"), "text");
    assert!(
        text.contains(&format!(
            "{expired} (old) from {}: expired at",
            ids::AL2023_130_OCT
        )),
        "{text}"
    );
    assert!(
        text.contains("action:       build — no managed AMI is eligible"),
        "{text}"
    );
    assert!(
        !text.contains("plan reads AWS only"),
        "nothing to deregister: {text}"
    );

    let fresh = register("fresh", contract("active", now.to_string())).await;
    let report: Value = serde_json::from_str(&plan(
        &moto,
        &example("upstream-packer-builder.yaml"),
        "json",
    ))
    .unwrap();
    assert_eq!(report["action"], "none");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{fresh} is eligible"))
    );
    assert_eq!(report["managed_amis"][0]["id"], fresh.as_str());
    assert_eq!(report["managed_amis"][0]["verdict"], "eligible");
    read_only(&moto);

    // Retention: three deprecated AMIs are kept for rollback, the fourth would go (deletion is
    // off by default, and plan never deletes).
    let mut deprecated = Vec::new();
    for days in 10..14 {
        let created = (now - jiff::SignedDuration::from_hours(24 * days)).to_string();
        deprecated.push(register("deprecated", contract("deprecated", created)).await);
    }
    let text = plan(&moto, &example("upstream-packer-builder.yaml"), "text");
    assert!(
        text.contains("retention: Keep: rollback candidate 3 of 3 (retention.keepDeprecated)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} (deprecated) from {}: status is deprecated, not active\n      retention: Deregister: unused; frees 1 snapshot(s), 15 GiB (retention.delete is off)",
            deprecated[3],
            ids::AL2023_130_OCT
        )),
        "{text}"
    );
    assert!(
        text.contains("plan reads AWS only: an AMI an AMIRefresher names"),
        "{text}"
    );
    read_only(&moto);

    // Distribution: the active AMI has no copy in eu-west-1 yet (plan would copy it); an
    // older copy there is judged by retention in its region.
    let west = Fixture::new(&moto, "eu-west-1").await;
    let mut tags = contract(
        "deprecated",
        (now - jiff::SignedDuration::from_hours(24 * 20)).to_string(),
    );
    tags.push(("source-ami", deprecated[0].clone()));
    let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let old_copy = west.register_image("old-copy", &tags).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pb.yaml");
    let mut yaml = std::fs::read_to_string(example("upstream-packer-builder.yaml")).unwrap();
    yaml.push_str("  distribution:\n    regions:\n      - region: eu-west-1\n");
    std::fs::write(&file, yaml).unwrap();
    let text = plan(&moto, file.to_str().unwrap(), "text");
    assert!(
        text.contains(&format!(
            "  copies in eu-west-1:\n    would copy {fresh} there\n    {old_copy} (old-copy): status is deprecated, not active\n      retention: Keep: rollback candidate 1 of 3 (retention.keepDeprecated)"
        )),
        "{text}"
    );
    read_only(&moto);
}

#[tokio::test]
async fn two_architectures_are_planned_as_the_packer_builder_of_each() {
    let moto = Moto::start().unwrap();
    let manifest = serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "PackerBuilder",
        "metadata": {"name": "al2023", "namespace": "images"},
        "spec": {
            "region": "us-west-2",
            "clusterName": "prod-east",
            "architectures": ["x86_64", "arm64"],
            "amiFilters": [
                {"name": "name", "values": ["amazon-eks-node-al2023-${ARCHITECTURE}-standard-1.30-*"]},
                {"name": "owner-id", "values": [opsy_testkit::seed::EKS_OWNER]},
            ],
            "builder": {
                "repoURL": "https://github.com/example-org/eks-node-images",
                "branch": "main",
                "dir": "packer/al2023",
            },
        },
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pb.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    let reports: Value =
        serde_json::from_str(&plan(&moto, file.to_str().unwrap(), "json")).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    for (report, name, base, architecture) in [
        (
            &reports[0],
            "images/al2023-x86-64",
            ids::AL2023_130_OCT,
            "x86_64",
        ),
        (
            &reports[1],
            "images/al2023-arm64",
            ids::AL2023_130_ARM_OCT,
            "arm64",
        ),
    ] {
        assert_eq!(report["resource"], name);
        assert_eq!(report["base_ami"], base, "{report}");
        let commands = report["commands"].as_str().unwrap();
        assert!(
            commands.contains(&format!("-var ami_id={base}"))
                && commands.contains(&format!("-var architecture={architecture}")),
            "{commands}"
        );
    }
    read_only(&moto);
}
