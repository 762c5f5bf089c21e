//! A whole cluster rolled out by the AMIRefresher controller against the real control plane and
//! the AWS emulator: five managed node groups and two self-managed ones, a `refreshConfig` that
//! differs from the groups' own, a managed group whose pods cannot be evicted, an instance
//! refresh that fails and rolls back, and the operator killed mid-wave and started again. At the
//! end, status and AWS agree exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use kube::{Api, api::PostParams};
use opsy_api::{
    AMIRefresher,
    ami_refresher::{NodeGroupPhase, NodeGroupStatus},
};
use opsy_testkit::{ControlPlane, Fixture, Moto, seed::ids};
use support::{CLUSTER, Kind, REGION, start, wait_for};

const MANAGED: [&str; 5] = ["m1", "m2", "m3", "m4", "m5"];
const SELF_MANAGED: [&str; 2] = ["s1", "s2"];

fn requests(moto: &Moto, action: &str) -> u64 {
    moto.requests()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with(action))
        .map(|(_, v)| *v)
        .sum()
}

async fn entries(refreshers: &Api<AMIRefresher>) -> BTreeMap<String, NodeGroupStatus> {
    refreshers
        .get("amr")
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .node_groups
        .into_iter()
        .map(|g| (g.name.clone(), g))
        .collect()
}

/// The launch template version of Auto Scaling group `name` and the images its instances run.
async fn asg(fixture: &Fixture, name: &str) -> (String, Vec<String>) {
    let group = fixture.auto_scaling_group(name).await.unwrap();
    let mut images: Vec<String> = group
        .instances
        .into_iter()
        .map(|(_, image)| image)
        .collect();
    images.sort();
    (group.version, images)
}

/// The Auto Scaling group EKS runs managed group `name`'s nodes in.
async fn nodes_of(fixture: &Fixture, name: &str) -> (String, String) {
    let group = fixture
        .eks
        .describe_nodegroup()
        .cluster_name(CLUSTER)
        .nodegroup_name(name)
        .send()
        .await
        .unwrap()
        .nodegroup
        .unwrap();
    let version = group.launch_template.unwrap().version.unwrap();
    let asg = group.resources.unwrap().auto_scaling_groups.unwrap()[0]
        .name
        .clone()
        .unwrap();
    (version, asg)
}

async fn template_versions(fixture: &Fixture, template_id: &str) -> usize {
    fixture
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(template_id)
        .send()
        .await
        .unwrap()
        .launch_template_versions
        .unwrap_or_default()
        .len()
}

#[tokio::test]
async fn a_whole_cluster_rolls_out_through_failures_and_a_restart_and_aws_agrees_with_status() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("scenario").await.unwrap();
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let target = support::active_ami(&fixture, "hardened-1").await;
    support::cluster(&fixture, &MANAGED, ids::AL2023_130_SEP).await;
    for name in SELF_MANAGED {
        fixture
            .create_self_managed_group(CLUSTER, name, ids::AL2023_130_SEP, &[])
            .await
            .unwrap();
    }
    moto.fail_with("m3", Some("PodEvictionFailure")).unwrap();
    moto.fail_with("s2", Some("Failed")).unwrap();

    let refreshers: Api<AMIRefresher> = Api::namespaced(ns.client.clone(), &ns.name);
    let amr: AMIRefresher = serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "AMIRefresher",
        "metadata": {"name": "amr"},
        "spec": {
            "region": REGION, "clusterName": CLUSTER, "ami": target, "expiresIn": "30d",
            "timeOuts": {"controllerTimer": "10m"},
            "refreshConfig": {"maxUnavailable": 2},
            "rollout": {"maxInFlight": 2, "haltOnFailure": false},
            "selfManaged": {"enabled": true, "autoRollback": true, "minHealthyPercentage": 50},
        },
    }))
    .unwrap();
    refreshers
        .create(&PostParams::default(), &amr)
        .await
        .unwrap();

    let poll = Duration::from_secs(1);
    // The nodes of the groups join the cluster Ready (the refresher's health gate).
    let _kubelets = support::kubelets(ns.client.clone(), &fixture);
    let first = start(cp, &moto, Kind::Refresher, "scenario-refresher-1", poll).await;
    // Mid-wave: some groups done or updating, others still waiting.
    wait_for("the second wave under way", 60, || async {
        let entries = entries(&refreshers).await;
        let count = |phase| entries.values().filter(|e| e.phase == phase).count();
        count(NodeGroupPhase::Succeeded) + count(NodeGroupPhase::Failed) >= 1
            && count(NodeGroupPhase::Updating) >= 1
    })
    .await;
    drop(first);
    let in_flight = entries(&refreshers).await;
    let _second = start(cp, &moto, Kind::Refresher, "scenario-refresher-2", poll).await;

    wait_for("every group done", 180, || async {
        let entries = entries(&refreshers).await;
        entries.len() == 7
            && entries
                .values()
                .all(|e| matches!(e.phase, NodeGroupPhase::Succeeded | NodeGroupPhase::Failed))
    })
    .await;
    let entries = entries(&refreshers).await;
    let phase = |name: &str| entries[name].phase;
    for name in ["m1", "m2", "m4", "m5", "s1"] {
        assert_eq!(
            phase(name),
            NodeGroupPhase::Succeeded,
            "{:?}",
            entries[name]
        );
    }
    assert_eq!(phase("m3"), NodeGroupPhase::Failed);
    assert!(
        entries["m3"]
            .message
            .as_deref()
            .unwrap()
            .contains("PodEvictionFailure"),
        "{:?}",
        entries["m3"]
    );
    assert_eq!(phase("s2"), NodeGroupPhase::Failed);
    assert!(
        entries["s2"]
            .message
            .as_deref()
            .unwrap()
            .contains("RollbackSuccessful"),
        "{:?}",
        entries["s2"]
    );

    // Managed groups: one config update and one version update each, the one status names;
    // the group's version and its nodes' image as status says.
    for name in MANAGED {
        let entry = &entries[name];
        let updates = fixture.nodegroup_updates(CLUSTER, name).await.unwrap();
        let kinds: Vec<&str> = updates.iter().map(|u| u.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["ConfigUpdate", "VersionUpdate"],
            "{name}: {updates:?}"
        );
        assert_eq!(
            entry.update_id.as_deref(),
            Some(updates[1].id.as_str()),
            "{name}"
        );
        let (version, nodes) = nodes_of(&fixture, name).await;
        let (_, images) = asg(&fixture, &nodes).await;
        let template = entry.launch_template_id.as_deref().unwrap();
        assert_eq!(
            template_versions(&fixture, template).await,
            2,
            "{name}: no extra version"
        );
        if name == "m3" {
            assert_eq!(updates[1].status, "Failed");
            assert_eq!(version, "1", "{name} stays on its version");
            assert_eq!(images, [ids::AL2023_130_SEP; 2], "{name}");
        } else {
            assert_eq!(updates[1].status, "Successful");
            assert_eq!(
                Some(version.as_str()),
                entry.to_version.as_deref(),
                "{name}"
            );
            assert_eq!(images, [target.as_str(); 2], "{name}");
        }
    }
    // Self-managed groups: one refresh each; the group's version and instances as status says.
    assert_eq!(
        requests(&moto, "StartInstanceRefresh"),
        2,
        "one refresh per group"
    );
    for name in SELF_MANAGED {
        let entry = &entries[name];
        let (version, images) = asg(&fixture, name).await;
        let template = entry.launch_template_id.as_deref().unwrap();
        assert_eq!(
            template_versions(&fixture, template).await,
            2,
            "{name}: no extra version"
        );
        if name == "s2" {
            assert_eq!(version, "1", "rolled back");
            assert_eq!(images, [ids::AL2023_130_SEP; 2], "{name}");
        } else {
            assert_eq!(
                Some(version.as_str()),
                entry.to_version.as_deref(),
                "{name}"
            );
            assert_eq!(images, [target.as_str(); 2], "{name}");
        }
    }
    let status = refreshers.get("amr").await.unwrap().status.unwrap();
    assert_eq!(status.progress.as_deref(), Some("5/7 on target"));
    // The kill really happened mid-wave.
    assert!(
        in_flight
            .values()
            .any(|e| e.phase == NodeGroupPhase::Updating),
        "{in_flight:?}"
    );
    // And it repeated nothing (one version and one update per group and target, …).
    let scope = opsy_testkit::invariants::Scope::new(&moto, ns.client.clone(), &ns.name);
    opsy_testkit::invariants::check(&scope).await;
}
