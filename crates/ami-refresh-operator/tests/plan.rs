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

    // Promotion gates and a closed window: a day's minimum age holds the fresh build back (an
    // older one is the target), and outside the window no group would start.
    let old = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48)).to_string();
    let older = fixture
        .register_image(
            "hardened-older",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", "ibeify-gitops"),
                ("status", "active"),
                ("base-ami", ids::AL2023_130_OCT),
                ("create-timestamp", old.as_str()),
            ],
        )
        .await
        .unwrap();
    let example: opsy_api::AMIRefresher =
        serde_saphyr::from_str(&std::fs::read_to_string(example()).unwrap()).unwrap();
    let mut gated = serde_json::to_value(example).unwrap();
    gated["spec"]["expiresIn"] = "30d".into();
    gated["spec"]["promotion"] = serde_json::json!({"minAge": "24h"});
    gated["spec"]["maintenanceWindows"] =
        serde_json::json!([{"schedule": "0 2 29 2 *", "duration": "1h"}]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gated.json");
    std::fs::write(&file, gated.to_string()).unwrap();
    let report = plan(&moto, file.to_str().unwrap());
    assert_eq!(report["target"], older.as_str(), "{report}");
    let held = report["held_back"][0].as_str().unwrap();
    assert!(
        held.starts_with(&format!(
            "{built} (MinAge): younger than spec.promotion.minAge 24h; promotable "
        )),
        "{held}"
    );
    let gates: Vec<&str> = report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        gates.contains(&"maintenance window: outside every maintenance window (spec.maintenanceWindows); the next opens at 2028-02-29T02:00:00Z; no group starts"),
        "{gates:?}"
    );
    assert!(
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["first_wave"] == false),
        "{report}"
    );
}

#[tokio::test]
async fn a_rollout_in_flight_shows_its_gates_and_the_tripped_breaker() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, "us-west-2").await;
    fixture.create_cluster("prod").await.unwrap();
    let now = jiff::Timestamp::now().to_string();
    let target = fixture
        .register_image(
            "hardened",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", "prod"),
                ("status", "active"),
                ("create-timestamp", now.as_str()),
            ],
        )
        .await
        .unwrap();
    // The canary already runs the target; the others do not.
    for (name, image) in [
        ("canary", target.as_str()),
        ("workers", ids::AL2023_130_SEP),
        ("batch", ids::AL2023_130_SEP),
    ] {
        fixture
            .create_node_group("prod", &NodeGroupSpec::with_image(name, image))
            .await
            .unwrap();
    }
    let write = |spec: Value, groups: Value| {
        let object = serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "AMIRefresher",
            "metadata": {"name": "prod", "namespace": "ops"},
            "spec": spec,
            "status": {"nodeGroups": groups},
        });
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, object.to_string().as_bytes()).unwrap();
        file
    };
    let group = |name: &str, phase: &str, message: &str| {
        serde_json::json!({
            "name": name, "kind": "Managed", "phase": phase, "message": message,
            "launchTemplateId": "lt-0", "fromVersion": "1", "toVersion": "2",
            "fromImage": ids::AL2023_130_SEP, "toImage": target,
        })
    };
    let spec = |extra: Value| {
        let mut spec = serde_json::json!({
            "region": "us-west-2", "clusterName": "prod", "ami": target,
            "selfManaged": {"enabled": false},
        });
        spec["rollout"] = extra;
        spec
    };

    // The canary is done: the rest waits for an approval.
    let file = write(
        spec(
            serde_json::json!({"canary": ["canary"], "approveAfterCanary": true, "bakeTime": "10m"}),
        ),
        serde_json::json!([group("canary", "Succeeded", "runs it")]),
    );
    let report = plan(&moto, file.path().to_str().unwrap());
    let gates: Vec<&str> = report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(
        gates,
        [
            "health: each group's nodes Ready on the target for 10m, within 30m",
            format!("approval: the canary is done; waiting for ami.refresh.ops/approve={target}")
                .as_str(),
            "disruption budgets: checked before each group starts; pdbPolicy wait",
            "quarantine: on evidence from nodes (rollout.quarantineOn); other failures halt only",
        ]
    );
    assert_eq!(report["breaker"], "closed");

    // A group failed with onFailure: rollback: the breaker is tripped and the moved go back.
    let file = write(
        spec(serde_json::json!({"maxInFlight": 2, "onFailure": "rollback"})),
        serde_json::json!([
            group("canary", "Succeeded", "runs it"),
            group("workers", "Failed", "2 of 2 new nodes NotReady"),
        ]),
    );
    let report = plan(&moto, file.path().to_str().unwrap());
    assert_eq!(
        report["breaker"],
        "tripped by workers: no group starts; canary, workers go back (onFailure: rollback)"
    );
    let actions: Vec<(&str, &str, bool)> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap(),
                g["action"].as_str().unwrap(),
                g["first_wave"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("batch", "update", false),
            ("canary", "none", false),
            ("workers", "failed", false)
        ]
    );
}
