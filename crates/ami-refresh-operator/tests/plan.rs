//! `ami-refresh-operator plan` against the emulator: the target, each group's action, and no
//! change to anything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use opsy_testkit::{Fixture, Moto, NodeGroupSpec, seed::ids};
use serde_json::Value;

fn plan(moto: &Moto, file: &str) -> Value {
    moto.clear_requests().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ami-refresh-operator"))
        .args(["plan", "-f", file, "-o", "json"])
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
    serde_json::from_slice(&output.stdout).unwrap()
}

fn example() -> String {
    format!(
        "{}/../../examples/upstream-ami-refresher.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn nothing_eligible_then_each_groups_action() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, "us-west-2").await;
    fixture.create_cluster("ibeify-gitops").await.unwrap();
    fixture
        .create_node_group(
            "ibeify-gitops",
            &NodeGroupSpec::with_image("workers", ids::AL2023_130_SEP),
        )
        .await
        .unwrap();
    fixture
        .create_node_group(
            "ibeify-gitops",
            &NodeGroupSpec::with_image("ingress-dev", ids::AL2023_130_SEP),
        )
        .await
        .unwrap();
    fixture
        .create_node_group("ibeify-gitops", &NodeGroupSpec::without_template("system"))
        .await
        .unwrap();

    let report = plan(&moto, &example());
    assert!(report["target"].is_null());
    assert!(
        report["selection"]
            .as_str()
            .unwrap()
            .contains("not tagged status=active"),
        "{report}"
    );

    let now = jiff::Timestamp::now().to_string();
    // Another cluster's AMI is passed over, and the plan says how to accept it.
    fixture
        .register_image(
            "hardened-staging",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", "staging"),
                ("created-by", "pb-staging"),
                ("status", "active"),
                ("base-ami", ids::AL2023_130_OCT),
                ("create-timestamp", now.as_str()),
            ],
        )
        .await
        .unwrap();
    let report = plan(&moto, &example());
    assert!(report["target"].is_null(), "{report}");
    let selection = report["selection"].as_str().unwrap();
    assert!(
        selection.contains("built for cluster staging by PackerBuilder pb-staging")
            && selection.contains("add {clusterName: staging} to spec.acceptFrom"),
        "{report}"
    );

    let built = fixture
        .register_image(
            "hardened",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", "ibeify-gitops"),
                ("status", "active"),
                ("base-ami", ids::AL2023_130_OCT),
                ("create-timestamp", now.as_str()),
            ],
        )
        .await
        .unwrap();
    let report = plan(&moto, &example());
    assert_eq!(report["target"], built.as_str());
    let groups: Vec<(String, String, bool)> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_owned(),
                g["action"].as_str().unwrap().to_owned(),
                g["first_wave"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("ingress-dev".to_owned(), "excluded".to_owned(), false),
            ("system".to_owned(), "skipped".to_owned(), false),
            ("workers".to_owned(), "update".to_owned(), true),
        ]
    );
    for action in moto.requests().unwrap().keys() {
        assert!(
            action.starts_with("Describe") || action.starts_with("GET "),
            "plan made a mutating call: {action}"
        );
    }
}
