//! kube-apiserver restarted mid-run (etcd keeps its data): both operators reconnect and carry
//! on — the build started before the restart completes and is tagged, the rollout finishes —
//! with no second Job, launch-template version or node-group update.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use opsy_api::{AMIRefresher, PackerBuilder, ami_refresher::NodeGroupPhase};
use opsy_testkit::{ControlPlane, Fixture, Moto, kubelet, seed::ids};
use support::{Kind, REGION, start, wait_for};

fn requests(moto: &Moto, action: &str) -> u64 {
    moto.requests()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with(action))
        .map(|(_, v)| *v)
        .sum()
}

#[tokio::test]
async fn both_operators_carry_on_after_an_api_server_restart() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("restart").await.unwrap();
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    fixture.register_image("base-al2023-v1", &[]).await.unwrap();
    let target = support::active_ami(&fixture, "hardened-1").await;
    support::cluster(&fixture, &["a", "b"], ids::AL2023_130_SEP).await;
    let builders: Api<PackerBuilder> = Api::namespaced(ns.client.clone(), &ns.name);
    let refreshers: Api<AMIRefresher> = Api::namespaced(ns.client.clone(), &ns.name);
    builders
        .create(
            &PostParams::default(),
            &support::packer_builder("pb", "10m"),
        )
        .await
        .unwrap();
    refreshers
        .create(
            &PostParams::default(),
            &support::refresher("amr", &target, "10m"),
        )
        .await
        .unwrap();

    let poll = Duration::from_secs(1);
    let _builder = start(cp, &moto, Kind::Builder, "restart-builder", poll).await;
    // The nodes of the groups join the cluster Ready (the refresher's health gate).
    let _kubelets = support::kubelets(ns.client.clone(), &fixture);
    let _refresher = start(cp, &moto, Kind::Refresher, "restart-refresher", poll).await;
    let job = support::build_started(&builders, "pb").await;
    wait_for("a node group update in flight", 30, || async {
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
    })
    .await;

    cp.restart_apiserver().unwrap();

    let built = fixture
        .register_image("al2023-hardened-1", &[])
        .await
        .unwrap();
    kubelet::finish_build_job(
        &ns.client,
        &ns.name,
        &job,
        0,
        &kubelet::artifact_line(REGION, &built),
    )
    .await
    .unwrap();
    support::active(&builders, "pb", &built, 90).await;
    support::rolled_out(&refreshers, "amr", "2/2 on target", 90).await;

    let jobs = Api::<Job>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(jobs.len(), 1, "one build Job");
    assert_eq!(
        requests(&moto, "CreateLaunchTemplateVersion"),
        2,
        "one version per group"
    );
    assert_eq!(
        support::updates(&fixture, &["a", "b"]).await,
        [1, 1],
        "one update per group"
    );
}
