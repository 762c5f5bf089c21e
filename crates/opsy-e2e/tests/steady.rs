//! Steady state is quiet: a PackerBuilder whose AMI is active and an AMIRefresher whose groups
//! all run the target, with both controllers running and their watches open for 60 s, reconcile
//! only when their `controllerTimer` (20 s here) asks, and make no AWS call and no API write
//! beyond what those reconciles need. In particular, an operator's own status write must not
//! come back through its watch as another reconcile. Counted from the operators' reconcile
//! and AWS call counters and the API server's audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{Api, Client, api::PostParams};
use opsy_api::{AMIRefresher, PackerBuilder};
use opsy_aws::{AwsOptions, ClientSet};
use opsy_runtime::operator::Operator;
use opsy_testkit::{ACCOUNT_ID, ControlPlane, Fixture, Moto, NodeGroupSpec};

const REGION: &str = "us-west-2";
const CLUSTER: &str = "prod-east";
/// How long the operators are watched once they have settled.
const QUIET: Duration = Duration::from_secs(60);
/// Both objects' `controllerTimer`.
const TIMER_SECS: u64 = 20;

/// An operator running its controller in this process, as the user `user` (so that the audit
/// log tells its requests apart).
struct Running {
    operator: Arc<Operator>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_builder(cp: &ControlPlane, moto: &Moto, user: &str) -> Running {
    let client = cp.client_as(user, &["system:masters"]).await.unwrap();
    let operator = Arc::new(Operator::new(
        client,
        ClientSet::new(AwsOptions::emulator(moto.endpoint())),
    ));
    let ctx = operator.context(
        packer_builder_operator::reconcile::MANAGER,
        Arc::new(Timestamp::now),
    );
    let task = tokio::spawn({
        let operator = operator.clone();
        async move { packer_builder_operator::controller::run(ctx, 4, &operator).await }
    });
    Running { operator, task }
}

async fn start_refresher(cp: &ControlPlane, moto: &Moto, user: &str) -> Running {
    let client = cp.client_as(user, &["system:masters"]).await.unwrap();
    let operator = Arc::new(Operator::new(
        client,
        ClientSet::new(AwsOptions::emulator(moto.endpoint())),
    ));
    let ctx = operator.context(
        ami_refresh_operator::reconcile::MANAGER,
        Arc::new(Timestamp::now),
    );
    let task = tokio::spawn({
        let operator = operator.clone();
        async move { ami_refresh_operator::controller::run(ctx, 4, &operator).await }
    });
    Running { operator, task }
}

/// (reconciles, AWS calls) the operator has made so far.
fn counts(operator: &Operator) -> (u64, u64) {
    let reconciles = operator
        .metrics
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix("opsy_reconciles_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    (reconciles, operator.aws.calls().snapshot().values().sum())
}

/// Writes (create, update, patch, delete) the audit log has recorded for `user`.
fn writes_by(cp: &ControlPlane, user: &str) -> Vec<String> {
    cp.audit_events()
        .unwrap()
        .into_iter()
        .filter(|e| e.acting_user() == user && e.is_write())
        .map(|e| format!("{} {}", e.verb, e.request_u_r_i))
        .collect()
}

async fn wait_for<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..300 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} within 30 s");
}

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
    let pb: PackerBuilder = serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "PackerBuilder",
        "metadata": {"name": "al2023-hardened"},
        "spec": {
            "region": REGION,
            "clusterName": CLUSTER,
            "amiFilters": [
                {"name": "name", "values": ["base-al2023-*"]},
                {"name": "owner-id", "values": [ACCOUNT_ID]},
            ],
            "timeOuts": {"expiresIn": "30d", "controllerTimer": format!("{TIMER_SECS}s")},
            "builder": {
                "repoURL": "https://github.com/example-org/eks-node-images",
                "branch": "main",
            },
        },
    }))
    .unwrap();
    // An AMIRefresher whose every group already runs its target.
    fixture.create_cluster(CLUSTER).await.unwrap();
    for name in ["a", "b"] {
        fixture
            .create_node_group(CLUSTER, &NodeGroupSpec::with_image(name, &active))
            .await
            .unwrap();
    }
    fixture
        .create_self_managed_group(CLUSTER, "self-1", &active, &[])
        .await
        .unwrap();
    let amr: AMIRefresher = serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "AMIRefresher",
        "metadata": {"name": "prod-rollout"},
        "spec": {"region": REGION, "clusterName": CLUSTER, "ami": active, "expiresIn": "30d",
                 "timeOuts": {"controllerTimer": format!("{TIMER_SECS}s")}},
    }))
    .unwrap();
    let client: Client = ns.client.clone();
    let builders: Api<PackerBuilder> = Api::namespaced(client.clone(), &ns.name);
    let refreshers: Api<AMIRefresher> = Api::namespaced(client.clone(), &ns.name);
    builders.create(&PostParams::default(), &pb).await.unwrap();
    refreshers
        .create(&PostParams::default(), &amr)
        .await
        .unwrap();

    let builder = start_builder(cp, &moto, "steady-builder").await;
    let refresher = start_refresher(cp, &moto, "steady-refresher").await;
    wait_for("the PackerBuilder adopts its AMI", || async {
        builders
            .get("al2023-hardened")
            .await
            .unwrap()
            .status
            .and_then(|s| s.active_image)
            .is_some_and(|a| a.id == active)
    })
    .await;
    wait_for("the AMIRefresher finds every group on target", || async {
        refreshers
            .get("prod-rollout")
            .await
            .unwrap()
            .status
            .and_then(|s| s.progress)
            .is_some_and(|p| p == "3/3 on target")
    })
    .await;
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
