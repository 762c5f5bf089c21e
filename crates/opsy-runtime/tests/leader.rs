//! Leader election against the in-memory Kubernetes API: of two replicas one leads, the other
//! stands by until the Lease is released, and a leader whose Lease is taken learns it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use kube_fake_client::ClientBuilder;
use opsy_runtime::leader::{Leadership, LeaseTiming};

const NS: &str = "opsy-system";
const LEASE: &str = "packer-builder-operator";
const FAST: LeaseTiming = LeaseTiming {
    duration_seconds: 2,
    renew_before_seconds: 1,
};

async fn holder(client: &Client) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), NS)
        .get(LEASE)
        .await
        .unwrap();
    lease.spec.and_then(|s| s.holder_identity)
}

/// The API server drops a manager's ownership of the fields its update removed; the in-memory
/// API keeps it, which would make the standby's server-side apply conflict forever. Clearing the
/// ownership records (as `kubectl` users do with `managedFields: [{}]`) restores the real
/// server's state after a release.
async fn forget_field_owners(client: &Client) {
    let clear = serde_json::json!({"metadata": {"managedFields": [{}]}});
    Api::<Lease>::namespaced(client.clone(), NS)
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .unwrap();
}

#[tokio::test]
async fn one_replica_leads_and_the_standby_takes_over_when_it_lets_go() {
    let client = ClientBuilder::new().build().await.unwrap();
    let a = Leadership::acquire(client.clone(), NS, LEASE, "replica-a", FAST)
        .await
        .unwrap();
    assert!(a.is_leader());
    assert_eq!(holder(&client).await.as_deref(), Some("replica-a"));

    let b = tokio::spawn({
        let client = client.clone();
        async move { Leadership::acquire(client, NS, LEASE, "replica-b", FAST).await }
    });
    // Several Lease durations pass: the leader keeps renewing, the standby keeps waiting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(a.is_leader());
    assert!(
        !b.is_finished(),
        "the standby became leader while the leader renewed"
    );
    assert_eq!(holder(&client).await.as_deref(), Some("replica-a"));

    a.release().await;
    forget_field_owners(&client).await;
    let b = tokio::time::timeout(Duration::from_secs(15), b)
        .await
        .expect("the standby took over")
        .unwrap()
        .unwrap();
    assert!(b.is_leader());
    assert_eq!(holder(&client).await.as_deref(), Some("replica-b"));
    b.release().await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_learns_it() {
    let client = ClientBuilder::new().build().await.unwrap();
    let a = Leadership::acquire(client.clone(), NS, LEASE, "replica-a", FAST)
        .await
        .unwrap();
    let lost = a.lost();
    // Someone else holds the Lease now, for a long time (as after a partition).
    let intruder = serde_json::json!({
        "spec": {"holderIdentity": "replica-z", "leaseDurationSeconds": 3600,
                 "renewTime": jiff::Timestamp::now().to_string()}
    });
    Api::<Lease>::namespaced(client.clone(), NS)
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(&intruder))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), lost)
        .await
        .expect("the leader noticed it lost the Lease");
    assert!(!a.is_leader());
}
