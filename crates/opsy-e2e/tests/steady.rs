//! Steady state is quiet: a PackerBuilder whose AMI is active and an AMIRefresher whose groups
//! all run the target, with both controllers running and their watches open for 60 s, reconcile
//! only when their `controllerTimer` (30 s here, the shortest the CRDs accept) asks, and make no AWS call and no API write
//! beyond what those reconciles need. In particular, an operator's own status write must not
//! come back through its watch as another reconcile. Counted from the operators' reconcile
//! and AWS call counters and the API server's audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jiff::Timestamp;
use kube::{Api, Client, api::PostParams};
use opsy_api::{AMIRefresher, PackerBuilder};
use opsy_testkit::{ControlPlane, Fixture, Moto};
use support::{CLUSTER, Kind, REGION, counts, start, writes_by};

/// How long the operators are watched once they have settled.
const QUIET: Duration = Duration::from_secs(60);
/// Both objects' `controllerTimer`.
const TIMER_SECS: u64 = 30;

#[tokio::test]
async fn both_operators_are_quiet_in_steady_state() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("steady").await.unwrap();
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, REGION).await;

    // A PackerBuilder whose base has an active, unexpired AMI built from it (adopted, no build).
    let base = fixture.register_image("base-al2023-v1", &[]).await.unwrap();
    let now = Timestamp::now().to_string();
    let active = fixture
        .register_image(
            "al2023-hardened-1",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", CLUSTER),
                ("created-by", "al2023-hardened"),
                (
                    "packer-repo",
                    "https://github.com/example-org/eks-node-images",
                ),
                ("packer-repo-branch", "main"),
                ("status", "active"),
                ("base-ami", base.as_str()),
                ("create-timestamp", now.as_str()),
            ],
        )
        .await
        .unwrap();
    let pb = support::packer_builder("al2023-hardened", &format!("{TIMER_SECS}s"));
    // An AMIRefresher whose every group already runs its target.
    support::cluster(&fixture, &["a", "b"], &active).await;
    fixture
        .create_self_managed_group(CLUSTER, "self-1", &active, &[])
        .await
        .unwrap();
    let amr = support::refresher("prod-rollout", &active, &format!("{TIMER_SECS}s"));
    let client: Client = ns.client.clone();
    let builders: Api<PackerBuilder> = Api::namespaced(client.clone(), &ns.name);
    let refreshers: Api<AMIRefresher> = Api::namespaced(client.clone(), &ns.name);
    builders.create(&PostParams::default(), &pb).await.unwrap();
    refreshers
        .create(&PostParams::default(), &amr)
        .await
        .unwrap();

    let poll = Duration::from_secs(30);
    let builder = start(cp, &moto, Kind::Builder, "steady-builder", poll).await;
    let refresher = start(cp, &moto, Kind::Refresher, "steady-refresher", poll).await;
    support::active(&builders, "al2023-hardened", &active, 30).await;
    support::rolled_out(&refreshers, "prod-rollout", "3/3 on target", 30).await;
    // The first reconciles' own status writes come back through the watches; let that settle.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let before = [counts(&builder.operator), counts(&refresher.operator)];
    let writes_before = [
        writes_by(cp, "steady-builder").len(),
        writes_by(cp, "steady-refresher").len(),
    ];
    tokio::time::sleep(QUIET).await;
    let after = [counts(&builder.operator), counts(&refresher.operator)];
    let writes_after = [
        writes_by(cp, "steady-builder"),
        writes_by(cp, "steady-refresher"),
    ];

    // The timer fires QUIET / TIMER times; one more for where the window starts.
    let allowed = QUIET.as_secs() / TIMER_SECS + 1;
    for (i, name) in ["PackerBuilder", "AMIRefresher"].iter().enumerate() {
        let reconciles = after[i].0 - before[i].0;
        let aws_calls = after[i].1 - before[i].1;
        let writes = &writes_after[i][writes_before[i]..];
        assert!(
            reconciles <= allowed,
            "the {name} operator reconciled {reconciles} times in {QUIET:?} with a {TIMER_SECS} s \
             timer (at most {allowed}); {aws_calls} AWS calls; writes: {writes:#?}"
        );
        assert!(
            writes.len() as u64 <= reconciles,
            "the {name} operator wrote more than once per reconcile: {writes:#?}"
        );
        assert!(
            !writes.iter().any(|w| w.contains("/events")),
            "the {name} operator recorded Events in steady state: {writes:#?}"
        );
    }
}
