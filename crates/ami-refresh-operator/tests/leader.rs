//! Leader election across two operator processes on a real API server: the leader is killed
//! (SIGKILL) mid-rollout; the standby takes over within one Lease duration and finishes the
//! rollout without a second launch-template version or node-group update.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::PostParams};
use opsy_api::{AMIRefresher, ami_refresher::NodeGroupPhase};
use opsy_testkit::{
    ACCESS_KEY_ID, ControlPlane, Fixture, Moto, NodeGroupSpec, SECRET_ACCESS_KEY,
    control_plane::free_port, process::Running, seed::ids,
};

const REGION: &str = "us-west-2";
const CLUSTER: &str = "prod-east";
/// The operators' Lease duration (their default).
const LEASE: Duration = Duration::from_secs(15);

fn replica(name: &str, kubeconfig: &std::path::Path, namespace: &str, moto: &Moto) -> Running {
    let log = std::fs::File::create(kubeconfig.with_file_name(format!("{name}.log"))).unwrap();
    Running(
        Command::new(env!("CARGO_BIN_EXE_ami-refresh-operator"))
            .args(["run", "--leader-elect=true", "--poll-interval=1s"])
            .args(["--lease-namespace", namespace])
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{}", free_port().unwrap()),
            ])
            .args(["--aws-endpoint-url", moto.endpoint()])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .env("AWS_REGION", REGION)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ami-refresh-operator")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_standby_finishes_a_killed_leaders_rollout_without_repeating_it() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("leader").await.unwrap();
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    let now = Timestamp::now().to_string();
    let target = fixture
        .register_image(
            "hardened-1",
            &[("status", "active"), ("create-timestamp", now.as_str())],
        )
        .await
        .unwrap();
    fixture.create_cluster(CLUSTER).await.unwrap();
    let groups = ["a", "b", "c"];
    for name in groups {
        fixture
            .create_node_group(
                CLUSTER,
                &NodeGroupSpec::with_image(name, ids::AL2023_130_SEP),
            )
            .await
            .unwrap();
    }
    let amr: AMIRefresher = serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "AMIRefresher",
        "metadata": {"name": "amr"},
        "spec": {"region": REGION, "clusterName": CLUSTER, "ami": target, "expiresIn": "30d",
                 "timeOuts": {"controllerTimer": "10m"}, "rollout": {"maxInFlight": 1}},
    }))
    .unwrap();
    let refreshers: Api<AMIRefresher> = Api::namespaced(ns.client.clone(), &ns.name);
    refreshers
        .create(&PostParams::default(), &amr)
        .await
        .unwrap();

    // The groups' nodes join the cluster Ready (the health gate waits for them).
    let _kubelets = fixture.play_kubelets(ns.client.clone(), CLUSTER);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    cp.write_kubeconfig_as(&kubeconfig, "leader-test", &["system:masters"], &ns.name)
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut a = Some(replica("replica-a", &kubeconfig, &ns.name, &moto));
    eventually(
        "replica-a holds the Lease",
        Duration::from_secs(30),
        || async {
            holder(&leases)
                .await
                .is_some_and(|h| h.starts_with("replica-a"))
        },
    )
    .await;
    let _b = replica("replica-b", &kubeconfig, &ns.name, &moto);

    // Mid-rollout: the first group is being updated.
    eventually(
        "a group update in flight",
        Duration::from_secs(30),
        || async {
            refreshers
                .get("amr")
                .await
                .unwrap()
                .status
                .is_some_and(|s| {
                    s.node_groups
                        .iter()
                        .any(|g| g.phase == NodeGroupPhase::Updating)
                })
        },
    )
    .await;
    drop(a.take()); // SIGKILL: the Lease is not given up
    let killed = Instant::now();
    eventually(
        "replica-b takes the Lease over",
        LEASE + Duration::from_secs(5),
        || async {
            holder(&leases)
                .await
                .is_some_and(|h| h.starts_with("replica-b"))
        },
    )
    .await;
    let takeover = killed.elapsed();
    eventually("the rollout done", Duration::from_secs(120), || async {
        refreshers
            .get("amr")
            .await
            .unwrap()
            .status
            .and_then(|s| s.progress)
            .is_some_and(|p| p == "3/3 on target")
    })
    .await;
    eprintln!("the standby took over {takeover:?} after the leader was killed");

    let versions: u64 = moto
        .requests()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with("CreateLaunchTemplateVersion"))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(versions, 3, "one launch-template version per group");
    for group in groups {
        let updates = fixture
            .eks
            .list_updates()
            .name(CLUSTER)
            .nodegroup_name(group)
            .send()
            .await
            .unwrap()
            .update_ids
            .unwrap_or_default();
        assert_eq!(updates.len(), 1, "node group {group}: {updates:?}");
    }
}
