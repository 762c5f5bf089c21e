//! Deleting a PackerBuilder mid-build: the real garbage collector removes its build Job and the
//! Job's Pods (owner references), and the operator starts nothing new for the deleted object.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use opsy_api::PackerBuilder;
use opsy_testkit::{ControlPlane, Fixture, Moto, kubelet};
use support::{Kind, REGION, start, wait_for};

#[tokio::test]
async fn a_deleted_packer_builder_takes_its_build_job_and_pods_with_it() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("deletion").await.unwrap();
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    fixture.register_image("base-al2023-v1", &[]).await.unwrap();
    let builders: Api<PackerBuilder> = Api::namespaced(ns.client.clone(), &ns.name);
    builders
        .create(
            &PostParams::default(),
            &support::packer_builder("pb", "10m"),
        )
        .await
        .unwrap();
    let _builder = start(
        cp,
        &moto,
        Kind::Builder,
        "deletion-builder",
        Duration::from_secs(1),
    )
    .await;
    let job = support::build_started(&builders, "pb").await;
    let pods = kubelet::build_pods(&ns.client, &ns.name, &job)
        .await
        .unwrap();
    assert_eq!(pods.len(), 1);

    builders
        .delete("pb", &DeleteParams::default())
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    let all_pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    wait_for(
        "the garbage collector to remove the Job and its Pods",
        60,
        || async {
            jobs.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
                && all_pods
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                    .is_empty()
        },
    )
    .await;
    // Nothing comes back: the operator does not rebuild for an object that is gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(builders.get_opt("pb").await.unwrap().is_none());
}

#[tokio::test]
async fn a_deleted_two_architecture_packer_builder_takes_its_packer_builders_with_it() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("deletion-arch").await.unwrap();
    let moto = Moto::start().unwrap();
    let builders: Api<PackerBuilder> = Api::namespaced(ns.client.clone(), &ns.name);
    builders
        .create(&PostParams::default(), &support::two_architectures("multi"))
        .await
        .unwrap();
    let _builder = start(
        cp,
        &moto,
        Kind::Builder,
        "deletion-arch-builder",
        Duration::from_secs(1),
    )
    .await;
    let names = ["multi-x86-64", "multi-arm64"];
    wait_for("one PackerBuilder per architecture", 60, || async {
        let mut all = true;
        for name in names {
            // Reconciled (their finalizer is on) before the parent goes.
            all &= builders
                .get_opt(name)
                .await
                .unwrap()
                .is_some_and(|b| !b.metadata.finalizers.unwrap_or_default().is_empty());
        }
        all
    })
    .await;

    builders
        .delete("multi", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the garbage collector to remove both PackerBuilders with their parent",
        60,
        || async {
            builders
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        },
    )
    .await;
}
