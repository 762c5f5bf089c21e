//! A PackerBuilder deleted after its build produced an AMI but before the operator saw the
//! result: the finalizer keeps it until the AMI is tagged. (Its own test binary: operators
//! watch every namespace of the shared control plane, so two tests running operators at once
//! in one binary would reconcile each other's objects.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use opsy_api::PackerBuilder;
use opsy_testkit::{ControlPlane, Fixture, Moto, kubelet};
use support::{Kind, REGION, start, wait_for};

/// The build finished and produced an AMI, but the PackerBuilder was deleted before the operator
/// saw the result (here: while the operator was down). The finalizer keeps the object until the
/// operator has tagged the AMI; then the object, its Job and its Pods go.
#[tokio::test]
async fn a_packer_builder_deleted_after_its_build_finished_goes_only_once_the_ami_is_tagged() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("deletion").await.unwrap();
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;
    fixture.register_image("base-al2023-v1", &[]).await.unwrap();
    let built = fixture.register_image("hardened-1", &[]).await.unwrap();
    let builders: Api<PackerBuilder> = Api::namespaced(ns.client.clone(), &ns.name);
    builders
        .create(
            &PostParams::default(),
            &support::packer_builder("pb", "10m"),
        )
        .await
        .unwrap();
    let poll = Duration::from_secs(1);
    let operator = start(cp, &moto, Kind::Builder, "deletion-builder", poll).await;
    let job = support::build_started(&builders, "pb").await;
    drop(operator);

    kubelet::finish_build_job(
        &ns.client,
        &ns.name,
        &job,
        0,
        &kubelet::artifact_line(REGION, &built),
    )
    .await
    .unwrap();
    builders
        .delete("pb", &DeleteParams::default())
        .await
        .unwrap();
    let held = builders.get("pb").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.metadata.finalizers.as_deref(),
        Some(&[packer_builder_operator::reconcile::FINALIZER.to_owned()][..])
    );

    let _operator = start(cp, &moto, Kind::Builder, "deletion-builder-2", poll).await;
    wait_for("the PackerBuilder to go", 30, || async {
        builders.get_opt("pb").await.unwrap().is_none()
    })
    .await;
    let images = fixture
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images
        .unwrap();
    let image = images
        .iter()
        .find(|i| i.image_id() == Some(built.as_str()))
        .unwrap();
    let tags: std::collections::BTreeMap<String, String> = image
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    assert_eq!(
        tags.get("status").map(String::as_str),
        Some("active"),
        "{tags:?}"
    );
    assert_eq!(
        tags.get("created-by").map(String::as_str),
        Some("pb"),
        "{tags:?}"
    );
    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    wait_for("the garbage collector to remove the Job", 60, || async {
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
}
