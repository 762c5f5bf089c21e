//! Leader election against a real API server: of two replicas one leads, the other stands by
//! until the Lease is released, and a leader whose Lease is taken learns it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use opsy_runtime::leader::{Leadership, LeaseTiming};
use opsy_testkit::{ControlPlane, partition::Partition};

const LEASE: &str = "packer-builder-operator";
const FAST: LeaseTiming = LeaseTiming {
    duration_seconds: 2,
    renew_before_seconds: 1,
};

async fn holder(client: &Client, ns: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get(LEASE)
        .await
        .unwrap();
    lease.spec.and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn one_replica_leads_and_the_standby_takes_over_when_it_lets_go() {
    let ns = ControlPlane::shared()
        .unwrap()
        .namespace("leader")
        .await
        .unwrap();
    let (client, namespace) = (ns.client.clone(), ns.name.as_str());
    let a = Leadership::acquire(client.clone(), namespace, LEASE, "replica-a", FAST)
        .await
        .unwrap();
    assert!(a.is_leader());
    assert_eq!(
        holder(&client, namespace).await.as_deref(),
        Some("replica-a")
    );

    let b = tokio::spawn({
        let client = client.clone();
        let ns = namespace.to_owned();
        async move { Leadership::acquire(client, &ns, LEASE, "replica-b", FAST).await }
    });
    // Several Lease durations pass: the leader keeps renewing, the standby keeps waiting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(a.is_leader());
    assert!(
        !b.is_finished(),
        "the standby became leader while the leader renewed"
    );
    assert_eq!(
        holder(&client, namespace).await.as_deref(),
        Some("replica-a")
    );

    a.release().await;
    let b = tokio::time::timeout(Duration::from_secs(15), b)
        .await
        .expect("the standby took over")
        .unwrap()
        .unwrap();
    assert!(b.is_leader());
    assert_eq!(
        holder(&client, namespace).await.as_deref(),
        Some("replica-b")
    );
    b.release().await;
}

/// Someone else holds the Lease now, for a long time (as after a partition).
async fn take_over(client: &Client, namespace: &str) {
    let intruder = serde_json::json!({
        "spec": {"holderIdentity": "replica-z", "leaseDurationSeconds": 3600,
                 "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}
    });
    Api::<Lease>::namespaced(client.clone(), namespace)
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(&intruder))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_learns_it() {
    let ns = ControlPlane::shared()
        .unwrap()
        .namespace("leader")
        .await
        .unwrap();
    let (client, namespace) = (ns.client.clone(), ns.name.as_str());
    let a = Leadership::acquire(client.clone(), namespace, LEASE, "replica-a", FAST)
        .await
        .unwrap();
    let lost = a.lost();
    take_over(&client, namespace).await;
    tokio::time::timeout(Duration::from_secs(15), lost)
        .await
        .expect("the leader noticed it lost the Lease");
    assert!(!a.is_leader());
}

#[tokio::test]
async fn once_its_lease_is_lost_a_replica_sends_no_mutating_aws_call() {
    let ns = ControlPlane::shared()
        .unwrap()
        .namespace("fence")
        .await
        .unwrap();
    let (client, namespace) = (ns.client.clone(), ns.name.as_str());
    let a = Leadership::acquire(client.clone(), namespace, LEASE, "replica-a", FAST)
        .await
        .unwrap();
    let calls = opsy_aws::CallCounter::default();
    calls.set_fence(a.fence());
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let call = |sent: std::sync::Arc<std::sync::atomic::AtomicU32>| async move {
        sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, opsy_aws::AwsError>(())
    };
    calls
        .track("ec2", "DeregisterImage", call(sent.clone()))
        .await
        .unwrap();
    let lost = a.lost();
    take_over(&client, namespace).await;
    tokio::time::timeout(Duration::from_secs(15), lost)
        .await
        .expect("the leader noticed it lost the Lease");
    // A reconcile still in flight: its next change is not sent; its reads are.
    let err = calls
        .track("ec2", "CreateTags", call(sent.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.category(), "fenced");
    calls
        .track("ec2", "DescribeImages", call(sent.clone()))
        .await
        .unwrap();
    assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_gives_up_before_its_lease_can_expire() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("partition").await.unwrap();
    let partition = Partition::start(cp.address().unwrap()).await.unwrap();
    let cut_off = cp.client_via(partition.address()).await.unwrap();
    let timing = LeaseTiming {
        duration_seconds: 6,
        renew_before_seconds: 2,
    };
    let a = Leadership::acquire(cut_off, &ns.name, LEASE, "replica-a", timing)
        .await
        .unwrap();
    let lost = a.lost();
    // Let it renew once or twice, then drop every packet between it and the API server.
    tokio::time::sleep(Duration::from_secs(3)).await;
    partition.cut();
    let cut = jiff::Timestamp::now();
    tokio::time::timeout(Duration::from_secs(15), lost)
        .await
        .expect("the cut-off leader noticed");
    let gave_up = jiff::Timestamp::now();
    assert!(!a.is_leader());
    // The last renewal the API server has, and when the Lease it extends could expire.
    let lease = Api::<Lease>::namespaced(ns.client.clone(), &ns.name)
        .get(LEASE)
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-a"));
    let expires = lease.renew_time.unwrap().0 + jiff::SignedDuration::from_secs(6);
    assert!(
        gave_up < expires,
        "gave up at {gave_up}, {} after the cut; the Lease could expire at {expires}",
        gave_up.duration_since(cut)
    );
}

/// A reconcile in flight when its replica is cut off from the API server (waiting on a read
/// that will not answer, a mutating AWS call next) is cancelled once the Lease cannot be
/// confirmed, before a standby could take over: it never gets to the call. Without the
/// cancellation it waits on the read for the client's timeout (minutes) and then goes on.
#[tokio::test]
async fn a_reconcile_in_flight_is_cancelled_when_the_lease_is_lost() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("cancel").await.unwrap();
    let partition = Partition::start(cp.address().unwrap()).await.unwrap();
    let cut_off = cp.client_via(partition.address()).await.unwrap();
    let timing = LeaseTiming {
        duration_seconds: 6,
        renew_before_seconds: 2,
    };
    let a = Leadership::acquire(cut_off.clone(), &ns.name, LEASE, "replica-a", timing)
        .await
        .unwrap();
    let calls = opsy_aws::CallCounter::default();
    calls.set_fence(a.fence());
    let attempted = Arc::new(AtomicU32::new(0));
    let reconcile = {
        let (client, namespace, attempted) = (cut_off.clone(), ns.name.clone(), attempted.clone());
        async move {
            // The read the reconcile is waiting on when the network goes.
            let _ = Api::<ConfigMap>::namespaced(client, &namespace)
                .get_opt("anything")
                .await;
            attempted.fetch_add(1, Ordering::SeqCst);
            let _ = calls
                .track("ec2", "DeregisterImage", async {
                    Ok::<_, opsy_aws::AwsError>(())
                })
                .await;
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    partition.cut();
    let cut = jiff::Timestamp::now();
    let out = tokio::time::timeout(Duration::from_secs(20), a.while_leading(reconcile))
        .await
        .expect("the reconcile was cancelled when the Lease could not be confirmed");
    let cancelled = jiff::Timestamp::now();
    assert!(out.is_none(), "the reconcile did not finish");
    assert_eq!(
        attempted.load(Ordering::SeqCst),
        0,
        "nothing after the read ran"
    );
    let lease = Api::<Lease>::namespaced(ns.client.clone(), &ns.name)
        .get(LEASE)
        .await
        .unwrap()
        .spec
        .unwrap();
    let expires = lease.renew_time.unwrap().0 + jiff::SignedDuration::from_secs(6);
    assert!(
        cancelled < expires,
        "cancelled at {cancelled}, {} after the cut; the Lease could expire at {expires}",
        cancelled.duration_since(cut)
    );
}
