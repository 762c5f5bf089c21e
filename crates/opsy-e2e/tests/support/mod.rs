//! What the end-to-end tests share: operators running in this process against the test's
//! control plane and emulator, each acting as a user of its own (so that the audit log tells
//! their requests apart), and the objects they work on.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{future::Future, sync::Arc, time::Duration};

use jiff::Timestamp;
use opsy_api::{AMIRefresher, PackerBuilder};
use opsy_aws::{AwsOptions, ClientSet};
use opsy_runtime::{context::Context, operator::Operator};
use opsy_testkit::{ACCOUNT_ID, ControlPlane, Moto};

pub mod rbac;

pub const REGION: &str = "us-west-2";
pub const CLUSTER: &str = "prod-east";

/// An operator whose controller runs in this process until dropped.
pub struct Running {
    pub operator: Arc<Operator>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which controller to run.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Builder,
    Refresher,
}

/// Starts the `kind` controller as `user` (in `system:masters`) with updates in flight polled
/// every `poll`.
pub async fn start(
    cp: &ControlPlane,
    moto: &Moto,
    kind: Kind,
    user: &str,
    poll: Duration,
) -> Running {
    let client = cp.client_as(user, &["system:masters"]).await.unwrap();
    start_with(client, moto, kind, poll)
}

/// Starts the `kind` controller with `client`.
pub fn start_with(client: kube::Client, moto: &Moto, kind: Kind, poll: Duration) -> Running {
    start_watching(client, moto, kind, poll, Vec::new())
}

/// [`start_with`], watching only `namespaces` (every namespace when empty).
pub fn start_watching(
    client: kube::Client,
    moto: &Moto,
    kind: Kind,
    poll: Duration,
    namespaces: Vec<String>,
) -> Running {
    let operator = Arc::new(Operator::new(
        client,
        ClientSet::new(AwsOptions::emulator(moto.endpoint())),
    ));
    let manager = match kind {
        Kind::Builder => packer_builder_operator::reconcile::MANAGER,
        Kind::Refresher => ami_refresh_operator::reconcile::MANAGER,
    };
    let mut ctx = operator.context(manager, Arc::new(Timestamp::now));
    if let Some(ctx) = Arc::get_mut(&mut ctx) {
        ctx.poll_interval = poll;
        // No Slack here: a notification fails fast without leaving the machine.
        ctx.slack_api = "http://127.0.0.1:9".into();
        ctx.namespaces = opsy_runtime::cli::watch_scopes(&namespaces);
    }
    let task = tokio::spawn(run(kind, ctx, operator.clone(), namespaces));
    Running { operator, task }
}

async fn run(kind: Kind, ctx: Arc<Context>, operator: Arc<Operator>, namespaces: Vec<String>) {
    match kind {
        Kind::Builder => {
            packer_builder_operator::controller::run(ctx, 4, &operator, &namespaces).await;
        }
        Kind::Refresher => {
            ami_refresh_operator::controller::run(ctx, 4, &operator, &namespaces).await;
        }
    }
}

/// (reconciles, AWS calls) the operator has made so far.
pub fn counts(operator: &Operator) -> (u64, u64) {
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
pub fn writes_by(cp: &ControlPlane, user: &str) -> Vec<String> {
    cp.audit_events()
        .unwrap()
        .into_iter()
        .filter(|e| e.acting_user() == user && e.is_write())
        .map(|e| format!("{} {}", e.verb, e.request_u_r_i))
        .collect()
}

/// Polls `done` every 100 ms for up to `secs` seconds.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} within {secs} s");
}

/// A suspended PackerBuilder for x86_64 and arm64 (it creates one PackerBuilder each; none
/// builds).
pub fn two_architectures(name: &str) -> PackerBuilder {
    let mut pb = packer_builder(name, "10m");
    pb.spec.suspend = true;
    pb.spec.architectures = vec![
        opsy_api::lanes::Architecture::X86_64,
        opsy_api::lanes::Architecture::Arm64,
    ];
    pb
}

/// A PackerBuilder of cluster [`CLUSTER`] building from this account's `base-al2023-*`.
pub fn packer_builder(name: &str, controller_timer: &str) -> PackerBuilder {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "PackerBuilder",
        "metadata": {"name": name},
        "spec": {
            "region": REGION,
            "clusterName": CLUSTER,
            "amiFilters": [
                {"name": "name", "values": ["base-al2023-*"]},
                {"name": "owner-id", "values": [ACCOUNT_ID]},
            ],
            "timeOuts": {"expiresIn": "30d", "controllerTimer": controller_timer},
            "builder": {
                "repoURL": "https://github.com/example-org/eks-node-images",
                "branch": "main",
            },
        },
    }))
    .unwrap()
}

/// An AMIRefresher of cluster [`CLUSTER`] that rolls out `ami`.
pub fn refresher(name: &str, ami: &str, controller_timer: &str) -> AMIRefresher {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "AMIRefresher",
        "metadata": {"name": name},
        "spec": {"region": REGION, "clusterName": CLUSTER, "ami": ami, "expiresIn": "30d",
                 "timeOuts": {"controllerTimer": controller_timer}},
    }))
    .unwrap()
}

/// Waits until PackerBuilder `name` has a build Job recorded; returns its name.
pub async fn build_started(builders: &kube::Api<PackerBuilder>, name: &str) -> String {
    wait_for("a build Job", 30, || async {
        builders
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.job_name)
            .is_some()
    })
    .await;
    builders
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .job_name
        .unwrap()
}

/// Waits until PackerBuilder `name` records `ami` as its active AMI.
pub async fn active(builders: &kube::Api<PackerBuilder>, name: &str, ami: &str, secs: u64) {
    wait_for(&format!("{ami} active"), secs, || async {
        builders
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.active_image)
            .is_some_and(|a| a.id == ami)
    })
    .await;
}

/// Waits until AMIRefresher `name` reports `progress` (e.g. `3/3 on target`).
pub async fn rolled_out(
    refreshers: &kube::Api<AMIRefresher>,
    name: &str,
    progress: &str,
    secs: u64,
) {
    wait_for(progress, secs, || async {
        refreshers
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.progress)
            .is_some_and(|p| p == progress)
    })
    .await;
}

/// How many EKS updates each of `groups` of [`CLUSTER`] has had.
pub async fn updates(fixture: &opsy_testkit::Fixture, groups: &[&str]) -> Vec<usize> {
    let mut counts = Vec::new();
    for group in groups {
        let ids = fixture
            .eks
            .list_updates()
            .name(CLUSTER)
            .nodegroup_name(*group)
            .send()
            .await
            .unwrap()
            .update_ids
            .unwrap_or_default();
        counts.push(ids.len());
    }
    counts
}

/// An AMI tagged `status=active`, created now, as a rollout target.
pub async fn active_ami(fixture: &opsy_testkit::Fixture, name: &str) -> String {
    let now = Timestamp::now().to_string();
    fixture
        .register_image(
            name,
            &[("status", "active"), ("create-timestamp", now.as_str())],
        )
        .await
        .unwrap()
}

/// Cluster [`CLUSTER`] with managed node groups `groups`, each on `image`.
pub async fn cluster(fixture: &opsy_testkit::Fixture, groups: &[&str], image: &str) {
    fixture.create_cluster(CLUSTER).await.unwrap();
    for name in groups {
        fixture
            .create_node_group(
                CLUSTER,
                &opsy_testkit::NodeGroupSpec::with_image(name, image),
            )
            .await
            .unwrap();
    }
}

/// Plays the kubelets of [`CLUSTER`] until dropped: a Ready Node per instance of its groups,
/// as the refresher's health gate expects.
pub fn kubelets(
    admin: kube::Client,
    fixture: &opsy_testkit::Fixture,
) -> opsy_testkit::fixtures::Kubelets {
    fixture.play_kubelets(admin, CLUSTER)
}
