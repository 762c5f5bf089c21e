//! Crash at every step: each scenario runs once to count the operator's mutating AWS requests
//! M; then, for every N in 1..=M and both halves (the N-th request carried out by AWS, or lost
//! before AWS saw it), it runs again from scratch, the operator crashing at the N-th request
//! (the reconcile is dropped where it stands, its request never answered) and starting afresh
//! (a new context: nothing carried over but what the cluster and AWS hold) after AWS ended
//! whatever it had started meanwhile (a long downtime), to the end. After
//! every run the invariants of `opsy_testkit::invariants` hold and the scenario's end state is
//! reached.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use ami_refresh_operator::reconcile::{Context, reconcile};
use jiff::Timestamp;
use kube::{
    Api, Client,
    api::PostParams,
    runtime::events::{Recorder, Reporter},
};
use opsy_api::{
    AMIRefresher,
    ami_refresher::{NodeGroupPhase, NodeGroupStatus},
};
use opsy_aws::{AwsOptions, ClientSet};
use opsy_runtime::metrics::Metrics;
use opsy_testkit::{ControlPlane, Fixture, Moto, NodeGroupSpec, crash, invariants, seed::ids};

const REGION: &str = "us-west-2";
const CLUSTER: &str = "prod-east";
const NAME: &str = "amr";

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Two managed groups whose `updateConfig` changes first (a config update, then the
    /// version update) and a self-managed group, to a managed AMI; its soak evidence is
    /// written at the end.
    Rollout,
    /// A canary group fails the health gate on a bad managed AMI: quarantine, and with
    /// `onFailure: rollback` it goes back — EKS refusing its earlier launch template version,
    /// so through a new one carrying its previous image.
    Rollback,
}

struct World {
    moto: Moto,
    fixture: Fixture,
    client: Client,
    namespace: String,
    scenario: Scenario,
    /// The target AMI of this run.
    target: String,
    /// The refusal of the canary's earlier version was set up (Rollback).
    refused: bool,
}

impl World {
    async fn new(moto: Moto, scenario: Scenario) -> Self {
        let ns = ControlPlane::shared()
            .unwrap()
            .namespace("crash")
            .await
            .unwrap();
        let fixture = Fixture::new(&moto, REGION).await;
        Self {
            client: ns.client.clone(),
            namespace: ns.name.clone(),
            moto,
            fixture,
            scenario,
            target: String::new(),
            refused: false,
        }
    }

    /// A fresh account and a fresh namespace for the next run.
    async fn reset(&mut self) {
        self.moto.clear_crash().unwrap();
        self.moto.reset().unwrap();
        let ns = ControlPlane::shared()
            .unwrap()
            .namespace("crash")
            .await
            .unwrap();
        self.client = ns.client.clone();
        self.namespace = ns.name.clone();
        self.refused = false;
        let fixture = &self.fixture;
        fixture.create_cluster(CLUSTER).await.unwrap();
        let now = Timestamp::now().to_string();
        let name = match self.scenario {
            Scenario::Rollout => "hardened-1",
            Scenario::Rollback => "hardened-broken",
        };
        self.target = fixture
            .register_image(
                name,
                &[
                    ("brought-to-you-by", "opsy-the-ami-operator"),
                    ("cluster-name", CLUSTER),
                    ("status", "active"),
                    ("create-timestamp", now.as_str()),
                ],
            )
            .await
            .unwrap();
        // The scenario's managed groups, self-managed groups and spec.
        let (managed, self_managed, spec): (&[&str], &[&str], _) = match self.scenario {
            Scenario::Rollout => (
                &["m1", "m2"],
                &["s1"],
                serde_json::json!({
                    "refreshConfig": {"maxUnavailable": 2},
                    "rollout": {"maxInFlight": 3},
                    "selfManaged": {"enabled": true, "minHealthyPercentage": 50},
                }),
            ),
            Scenario::Rollback => (
                &["canary", "m1"],
                &[],
                serde_json::json!({
                    "selfManaged": {"enabled": false},
                    "rollout": {"canary": ["canary"], "healthTimeout": "2s", "onFailure": "rollback"},
                }),
            ),
        };
        for name in managed {
            fixture
                .create_node_group(
                    CLUSTER,
                    &NodeGroupSpec::with_image(name, ids::AL2023_130_SEP),
                )
                .await
                .unwrap();
        }
        for name in self_managed {
            fixture
                .create_self_managed_group(CLUSTER, name, ids::AL2023_130_SEP, &[])
                .await
                .unwrap();
        }
        let mut full = serde_json::json!({
            "region": REGION, "clusterName": CLUSTER, "ami": self.target, "expiresIn": "30d",
            "timeOuts": {"controllerTimer": "10m"},
        });
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        let amr: AMIRefresher = serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "AMIRefresher",
            "metadata": {"name": NAME},
            "spec": full,
        }))
        .unwrap();
        self.api()
            .create(&PostParams::default(), &amr)
            .await
            .unwrap();
    }

    fn api(&self) -> Api<AMIRefresher> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A context as a newly started operator process builds it.
    fn context(&self) -> Arc<Context> {
        let calls = opsy_aws::CallCounter::default();
        Arc::new(Context {
            client: self.client.clone(),
            aws: ClientSet::with_counter(AwsOptions::emulator(self.moto.endpoint()), calls.clone()),
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: "ami-refresh-operator".into(),
                    instance: None,
                },
            ),
            clock: Arc::new(Timestamp::now),
            poll_interval: Duration::from_secs(1),
            slack_api: "http://127.0.0.1:9".into(),
            webhook_addresses: opsy_runtime::context::AddressPolicy::default(),
            failures: Default::default(),
            metrics: Arc::new(Metrics::new(calls)),
            build_policy: Default::default(),
            require_class: false,
            namespaces: vec![None],
            outbox: Default::default(),
        })
    }

    async fn entries(&self) -> Vec<NodeGroupStatus> {
        self.api()
            .get(NAME)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .node_groups
    }

    /// Plays the kubelets: a Node per instance, Ready unless it runs the bad AMI.
    async fn sync_nodes(&self) {
        let bad = (self.scenario == Scenario::Rollback).then(|| self.target.clone());
        self.fixture
            .sync_nodes(&self.client, CLUSTER, &move |image| {
                bad.as_deref() != Some(image)
            })
            .await
            .unwrap();
    }

    /// Whether the scenario reached its end.
    async fn done(&self) -> bool {
        let entries = self.entries().await;
        let phase = |name: &str| entries.iter().find(|e| e.name == name).map(|e| e.phase);
        match self.scenario {
            Scenario::Rollout => {
                let ready = self
                    .api()
                    .get(NAME)
                    .await
                    .unwrap()
                    .status
                    .and_then(|s| {
                        opsy_api::conditions::find(&s.conditions, "Ready").map(|c| c.status.clone())
                    })
                    .is_some_and(|s| s == "True");
                // The soak evidence lands with the reconcile that found the rollout done.
                ready && self.healthy_on().await
            }
            Scenario::Rollback => phase("canary") == Some(NodeGroupPhase::RolledBack),
        }
    }

    /// Whether the target carries this cluster's soak evidence.
    async fn healthy_on(&self) -> bool {
        let facts = self.moto.facts().unwrap();
        facts.images.iter().any(|i| {
            i.id == self.target
                && i.tags.contains_key(&format!(
                    "healthy-on/{}/{CLUSTER}",
                    opsy_testkit::ACCOUNT_ID
                ))
        })
    }

    /// What must hold at the end of the scenario beyond the invariants.
    async fn check_end(&self) {
        let facts = self.moto.facts().unwrap();
        let image = facts.images.iter().find(|i| i.id == self.target).unwrap();
        match self.scenario {
            Scenario::Rollout => {
                // Every group runs the target, on AWS.
                for group in ["m1", "m2"] {
                    let nodes = self
                        .fixture
                        .nodegroup_updates(CLUSTER, group)
                        .await
                        .unwrap();
                    assert!(
                        nodes
                            .iter()
                            .any(|u| u.kind == "VersionUpdate" && u.status == "Successful"),
                        "{group}: {nodes:?}"
                    );
                }
                assert_eq!(image.tags.get("status").map(String::as_str), Some("active"));
            }
            Scenario::Rollback => {
                assert_eq!(
                    image.tags.get("status").map(String::as_str),
                    Some("quarantined"),
                    "{image:?}"
                );
                // The whole quarantine: EC2-deprecated too, and no evidence left pending.
                let described = self
                    .fixture
                    .ec2
                    .describe_images()
                    .image_ids(&self.target)
                    .include_deprecated(true)
                    .send()
                    .await
                    .unwrap()
                    .images
                    .unwrap_or_default();
                assert!(
                    described
                        .first()
                        .and_then(|i| i.deprecation_time())
                        .is_some(),
                    "{described:?}"
                );
                let pending = self
                    .api()
                    .get(NAME)
                    .await
                    .unwrap()
                    .status
                    .map(|s| s.pending_evidence)
                    .unwrap_or_default();
                assert!(pending.is_empty(), "{pending:?}");
                // The canary runs its previous image again; m1 never moved.
                let running: Vec<&str> = facts
                    .instances
                    .iter()
                    .filter(|i| i.state == "running")
                    .map(|i| i.image.as_str())
                    .collect();
                assert!(
                    running.iter().all(|i| *i == ids::AL2023_130_SEP),
                    "{running:?}"
                );
                assert!(
                    self.fixture
                        .nodegroup_updates(CLUSTER, "m1")
                        .await
                        .unwrap()
                        .is_empty()
                );
            }
        }
    }

    /// What the test does between two reconciles besides the kubelets: in the rollback
    /// scenario, EKS refuses the canary's earlier launch template version once it runs the bad
    /// AMI (as in `rollout.rs`).
    async fn between(&mut self) {
        if self.scenario == Scenario::Rollback && !self.refused {
            let canary = self
                .entries()
                .await
                .into_iter()
                .find(|e| e.name == "canary");
            if canary.is_some_and(|e| e.phase == NodeGroupPhase::Verifying) {
                self.moto
                    .inject_error(
                        &format!("POST /clusters/{CLUSTER}/node-groups/canary/update-version"),
                        "InvalidParameterException",
                        400,
                        1,
                    )
                    .unwrap();
                self.refused = true;
            }
        }
    }

    /// The operator stays down long enough for AWS to end whatever it started: the updates
    /// and instance refreshes in flight are polled (as the test, which advances them) to their
    /// end before the next process starts.
    async fn downtime(&self) {
        for _ in 0..30 {
            let facts = self.moto.facts().unwrap();
            let updating: Vec<String> = facts
                .updates
                .iter()
                .filter(|u| u.status == "InProgress")
                .filter_map(|u| u.nodegroup.clone())
                .collect();
            let refreshing: Vec<String> = facts
                .refreshes
                .iter()
                .filter(|r| {
                    matches!(
                        r.status.as_str(),
                        "Pending" | "InProgress" | "RollbackInProgress"
                    )
                })
                .map(|r| r.group.clone())
                .collect();
            if updating.is_empty() && refreshing.is_empty() {
                return;
            }
            for group in updating {
                self.fixture
                    .nodegroup_updates(CLUSTER, &group)
                    .await
                    .unwrap();
            }
            for group in refreshing {
                self.fixture
                    .autoscaling
                    .describe_instance_refreshes()
                    .auto_scaling_group_name(group)
                    .send()
                    .await
                    .unwrap();
            }
        }
        panic!("AWS did not end its updates while the operator was down");
    }
}

impl crash::Scenario for World {
    fn moto(&self) -> &Moto {
        &self.moto
    }

    async fn reset(&mut self) {
        World::reset(self).await;
    }

    async fn between(&mut self) {
        World::between(self).await;
        self.sync_nodes().await;
    }

    async fn step(&self) {
        let amr = self.api().get(NAME).await.unwrap();
        // An error is reported on the object and retried by the next step.
        let _ = reconcile(Arc::new(amr), self.context()).await;
    }

    async fn downtime(&mut self) {
        World::downtime(self).await;
    }

    async fn done(&self) -> bool {
        World::done(self).await
    }

    async fn violations(&self) -> Vec<String> {
        let scope = invariants::Scope::new(&self.moto, self.client.clone(), &self.namespace);
        let found = invariants::violations(&scope).await.unwrap();
        if found.is_empty() {
            self.check_end().await;
        }
        found
    }
}

async fn enumerate(scenario: Scenario, carried_out: bool) {
    let mut world = World::new(Moto::start().unwrap(), scenario).await;
    crash::enumerate(&mut world, &format!("{scenario:?}"), carried_out, 80).await;
}

#[tokio::test]
async fn a_rollout_survives_a_crash_after_each_change() {
    enumerate(Scenario::Rollout, true).await;
}

#[tokio::test]
async fn a_rollout_survives_each_change_lost_in_a_crash() {
    enumerate(Scenario::Rollout, false).await;
}

#[tokio::test]
async fn a_rollback_survives_a_crash_after_each_change() {
    enumerate(Scenario::Rollback, true).await;
}

#[tokio::test]
async fn a_rollback_survives_each_change_lost_in_a_crash() {
    enumerate(Scenario::Rollback, false).await;
}
