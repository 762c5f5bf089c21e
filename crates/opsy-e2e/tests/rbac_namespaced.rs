//! RBAC is exactly enough in the namespaced install (`deploy/namespaced`, the umbrella chart
//! with `watchNamespaces: [ami-builds]`): Roles in `ami-builds` only, the same build and
//! rollout as the cluster-wide install, and nothing outside the watched namespace is read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use opsy_api::PackerBuilder;
use opsy_testkit::ControlPlane;

const WATCHED: &str = "ami-builds";

#[tokio::test]
async fn a_namespaced_install_needs_only_its_roles_and_reaches_no_other_namespace() {
    let cp = ControlPlane::shared().unwrap();
    // A namespace the operators do not watch, with a PackerBuilder in it.
    let other = cp.namespace("elsewhere").await.unwrap();
    let admin = other.client.clone();
    Api::<PackerBuilder>::namespaced(admin.clone(), &other.name)
        .create(
            &PostParams::default(),
            &support::packer_builder("not-watched", "10m"),
        )
        .await
        .unwrap();
    let watched = Namespace {
        metadata: ObjectMeta {
            name: Some(WATCHED.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &watched)
        .await
        .unwrap();
    support::rbac::operators_need_every_rule_granted(
        cp,
        admin.clone(),
        WATCHED,
        "deploy/namespaced/manifests.yaml",
        vec![WATCHED.to_owned()],
    )
    .await;
    // The unwatched PackerBuilder was never reconciled (no status, no finalizer).
    let untouched = Api::<PackerBuilder>::namespaced(admin, &other.name)
        .get("not-watched")
        .await
        .unwrap();
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(untouched.metadata.finalizers.is_none());
}
