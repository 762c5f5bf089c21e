//! RBAC is exactly enough in the default, cluster-wide install (`deploy/kustomize/both`,
//! rendered from the umbrella chart): see [`support::rbac`].

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use opsy_testkit::ControlPlane;

#[tokio::test]
async fn the_operators_need_every_rule_their_charts_grant_and_no_other() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("rbac").await.unwrap();
    support::rbac::operators_need_every_rule_granted(
        cp,
        ns.client.clone(),
        &ns.name,
        "deploy/kustomize/both/manifests.yaml",
        Vec::new(),
    )
    .await;
}
