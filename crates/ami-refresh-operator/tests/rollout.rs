//! The AMIRefresher reconciler against a real Kubernetes control plane and the AWS emulator with
//! the project's extension (EKS updates and instance refreshes progress over polls). Every
//! reconcile gets a fresh context, as after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ami_refresh_operator::reconcile::{Context, reconcile};
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
    runtime::events::{Recorder, Reporter},
};
use opsy_api::{
    AMIRefresher, AMIRefresherStatus,
    ami_refresher::{NodeGroupKind, NodeGroupPhase},
};
use opsy_aws::{AwsOptions, CallCounter, ClientSet};
use opsy_runtime::metrics::Metrics;
use opsy_testkit::{ControlPlane, Fixture, Moto, NodeGroupSpec, TestNamespace, seed::ids};

const REGION: &str = "us-west-2";
const CLUSTER: &str = "prod-east";

struct World {
    ns: TestNamespace,
    moto: Moto,
    fixture: Fixture,
    client: Client,
    slack_api: String,
    /// Every AWS call of every (fresh) context, for the IAM check.
    calls: CallCounter,
    /// AMIs whose nodes never become Ready (a bad AMI).
    broken: std::sync::Mutex<Vec<String>>,
    /// The played nodes carry no EKS labels (as with a custom AMI, whose user data EKS does
    /// not generate).
    unlabelled: std::sync::atomic::AtomicBool,
    /// Sends what reconciles queue, shared by every context of the test.
    outbox: Arc<opsy_runtime::outbox::Outbox>,
}

fn manifest(spec: serde_json::Value) -> AMIRefresher {
    let mut full = serde_json::json!({"region": REGION, "clusterName": CLUSTER});
    if let (Some(f), Some(s)) = (full.as_object_mut(), spec.as_object()) {
        f.extend(s.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "AMIRefresher",
        "metadata": {"name": "prod-rollout"},
        "spec": full,
    }))
    .unwrap()
}

impl World {
    async fn new() -> Self {
        let ns = ControlPlane::shared()
            .unwrap()
            .namespace("rollout")
            .await
            .unwrap();
        let client = ns.client.clone();
        let moto = Moto::start().unwrap();
        let fixture = Fixture::new(&moto, REGION).await;
        fixture.create_cluster(CLUSTER).await.unwrap();
        Self {
            ns,
            calls: CallCounter::default(),
            moto,
            fixture,
            client,
            slack_api: "http://127.0.0.1:9".into(),
            broken: std::sync::Mutex::new(Vec::new()),
            unlabelled: std::sync::atomic::AtomicBool::new(false),
            outbox: Arc::default(),
        }
    }

    /// Plays the kubelets: a Node per instance of the cluster's groups, Ready unless it runs
    /// an AMI marked broken.
    async fn sync_nodes(&self) {
        let broken = self.broken.lock().unwrap().clone();
        let labels = !self.unlabelled.load(std::sync::atomic::Ordering::SeqCst);
        self.fixture
            .sync_nodes_labelled(
                &self.client,
                CLUSTER,
                &move |image| !broken.iter().any(|b| b == image),
                labels,
            )
            .await
            .unwrap();
    }

    async fn apply(&self, amr: AMIRefresher) {
        let api = self.api();
        match api.get_opt("prod-rollout").await.unwrap() {
            None => drop(api.create(&PostParams::default(), &amr).await.unwrap()),
            Some(existing) => {
                let mut next = amr;
                next.metadata.resource_version = existing.metadata.resource_version.clone();
                next.status = existing.status;
                api.replace("prod-rollout", &PostParams::default(), &next)
                    .await
                    .unwrap();
            }
        }
    }

    fn api(&self) -> Api<AMIRefresher> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn context(&self) -> Arc<Context> {
        Arc::new(Context {
            client: self.client.clone(),
            aws: ClientSet::with_counter(
                AwsOptions::emulator(self.moto.endpoint()),
                self.calls.clone(),
            ),
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: "ami-refresh-operator".into(),
                    instance: None,
                },
            ),
            clock: Arc::new(Timestamp::now),
            poll_interval: Duration::from_secs(30),
            slack_api: self.slack_api.clone(),
            webhook_addresses: opsy_runtime::context::AddressPolicy::default(),
            failures: Default::default(),
            metrics: Arc::new(Metrics::new(self.calls.clone())),
            build_policy: Default::default(),
            require_class: false,
            namespaces: vec![None],
            outbox: self.outbox.clone(),
        })
    }

    async fn reconcile(&self) -> Result<(), ami_refresh_operator::Error> {
        self.sync_nodes().await;
        let amr = self.api().get("prod-rollout").await.unwrap();
        let result = Box::pin(reconcile(Arc::new(amr), self.context()))
            .await
            .map(drop);
        // What the reconcile queued has been sent (or has failed) before the test looks.
        self.outbox.idle().await;
        // The invariants every run keeps (`opsy_testkit::invariants`), after each reconcile.
        let scope =
            opsy_testkit::invariants::Scope::new(&self.moto, self.client.clone(), &self.ns.name);
        opsy_testkit::invariants::check(&scope).await;
        result
    }

    async fn status(&self) -> AMIRefresherStatus {
        self.api()
            .get("prod-rollout")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    async fn phases(&self) -> BTreeMap<String, NodeGroupPhase> {
        self.status()
            .await
            .node_groups
            .iter()
            .map(|g| (g.name.clone(), g.phase))
            .collect()
    }

    fn requests(&self, action: &str) -> u64 {
        let counts = self.moto.requests().unwrap();
        counts
            .iter()
            .filter(|(k, _)| k.as_str() == action || k.ends_with(action))
            .map(|(_, v)| *v)
            .sum()
    }

    async fn events(&self) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// The notes of the Events with `reason`.
    async fn event_notes(&self, reason: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect()
    }

    /// A managed AMI, active, created now.
    async fn active_ami(&self, name: &str) -> String {
        let now = Timestamp::now().to_string();
        self.fixture
            .register_image(
                name,
                &[("status", "active"), ("create-timestamp", now.as_str())],
            )
            .await
            .unwrap()
    }

    /// An AMI a PackerBuilder built for this cluster, active, created now.
    async fn managed_ami(&self, name: &str) -> String {
        let now = Timestamp::now().to_string();
        self.fixture
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
            .unwrap()
    }

    /// An AMI a PackerBuilder built for this cluster from the October EKS AMI, active,
    /// created at `created` (RFC 3339).
    async fn built_from_base(&self, name: &str, created: String) -> String {
        self.fixture
            .register_image(
                name,
                &[
                    ("brought-to-you-by", "opsy-the-ami-operator"),
                    ("cluster-name", CLUSTER),
                    ("status", "active"),
                    ("base-ami", ids::AL2023_130_OCT),
                    ("create-timestamp", created.as_str()),
                ],
            )
            .await
            .unwrap()
    }

    /// AWS publishes [`AL2_130_SEP`].
    fn publish_al2_september(&self) {
        self.moto
            .publish_image(
                REGION,
                AL2_130_SEP,
                "amazon-eks-node-1.30-v20240917",
                opsy_testkit::seed::EKS_OWNER,
            )
            .unwrap();
    }

    /// Managed groups, each on its image.
    async fn groups_on(&self, groups: &[(&str, &str)]) {
        for (name, image) in groups {
            self.fixture
                .create_node_group(CLUSTER, &NodeGroupSpec::with_image(name, image))
                .await
                .unwrap();
        }
    }

    /// An AMI a PackerBuilder built for this cluster from `base` for `architecture`, active,
    /// created `minutes_ago`, with the `extra` tags.
    async fn build_for(
        &self,
        architecture: &str,
        name: &str,
        base: &str,
        minutes_ago: i64,
        extra: &[(&str, &str)],
    ) -> String {
        let created = (Timestamp::now() - jiff::SignedDuration::from_mins(minutes_ago)).to_string();
        let mut tags = vec![
            ("brought-to-you-by", "opsy-the-ami-operator"),
            ("cluster-name", CLUSTER),
            ("status", "active"),
            ("base-ami", base),
            ("create-timestamp", created.as_str()),
        ];
        tags.extend_from_slice(extra);
        self.fixture
            .register_image_for(architecture, name, &tags)
            .await
            .unwrap()
    }

    /// Managed groups `names`, on the September EKS AMI.
    async fn managed_groups(&self, names: &[&str]) {
        for name in names {
            self.fixture
                .create_node_group(
                    CLUSTER,
                    &NodeGroupSpec::with_image(name, ids::AL2023_130_SEP),
                )
                .await
                .unwrap();
        }
    }

    /// The standard cluster: five managed groups and one self-managed group.
    async fn cluster(&self, target: &str) {
        for name in ["a", "b", "c"] {
            self.fixture
                .create_node_group(
                    CLUSTER,
                    &NodeGroupSpec::with_image(name, ids::AL2023_130_SEP),
                )
                .await
                .unwrap();
        }
        self.fixture
            .create_node_group(CLUSTER, &NodeGroupSpec::without_template("d"))
            .await
            .unwrap();
        self.fixture
            .create_node_group(CLUSTER, &NodeGroupSpec::with_image("e", target))
            .await
            .unwrap();
        self.fixture
            .create_self_managed_group(CLUSTER, "self-1", ids::AL2023_130_SEP, &[])
            .await
            .unwrap();
    }

    /// Every EKS update of managed group `name`, oldest first: (type, params, status).
    async fn updates(&self, name: &str) -> Vec<(String, BTreeMap<String, String>, String)> {
        self.fixture
            .nodegroup_updates(CLUSTER, name)
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.kind, u.params, u.status))
            .collect()
    }

    /// The launch template version of Auto Scaling group `name` and, per instance, the version
    /// it was launched from and the image it runs (sorted).
    async fn asg(&self, name: &str) -> (String, Vec<(String, String)>) {
        let group = self.fixture.auto_scaling_group(name).await.unwrap();
        (group.version, group.instances)
    }

    /// Reconciles until no group is Updating (at most `limit` times).
    async fn settle(&self, limit: usize) {
        for _ in 0..limit {
            self.reconcile().await.unwrap();
            if !self
                .phases()
                .await
                .values()
                .any(|p| matches!(p, Updating | Verifying))
            {
                return;
            }
        }
    }

    async fn entry(&self, name: &str) -> opsy_api::ami_refresher::NodeGroupStatus {
        self.status()
            .await
            .node_groups
            .into_iter()
            .find(|g| g.name == name)
            .unwrap()
    }

    async fn nodegroup_version(&self, name: &str) -> String {
        self.fixture
            .eks
            .describe_nodegroup()
            .cluster_name(CLUSTER)
            .nodegroup_name(name)
            .send()
            .await
            .unwrap()
            .nodegroup
            .unwrap()
            .launch_template
            .unwrap()
            .version
            .unwrap()
    }
}

use NodeGroupPhase::*;

/// This cluster's soak-evidence key: `healthy-on/<the emulator's account>/<cluster>`.
fn evidence_key() -> String {
    format!("healthy-on/{}/{CLUSTER}", opsy_testkit::ACCOUNT_ID)
}

fn map(entries: &[(&str, NodeGroupPhase)]) -> BTreeMap<String, NodeGroupPhase> {
    entries.iter().map(|(n, p)| (n.to_string(), *p)).collect()
}

#[tokio::test]
async fn groups_roll_in_waves_to_the_target_and_status_tracks_each() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world.cluster(&target).await;
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "exclude": ["c"], "rollout": {"maxInFlight": 2}}),
        ))
        .await;

    world.reconcile().await.unwrap();
    assert_eq!(
        world.phases().await,
        map(&[
            ("a", Updating),
            ("b", Updating),
            ("c", Excluded),
            ("d", Skipped),
            ("e", UpToDate),
            ("self-1", Pending)
        ])
    );
    let status = world.status().await;
    let d = status.node_groups.iter().find(|g| g.name == "d").unwrap();
    assert!(
        d.message
            .as_deref()
            .unwrap()
            .starts_with("no launch template"),
        "{d:?}"
    );
    let a = status.node_groups.iter().find(|g| g.name == "a").unwrap();
    assert_eq!(
        (a.from_version.as_deref(), a.to_version.as_deref()),
        (Some("1"), Some("2"))
    );
    assert_eq!(a.from_image.as_deref(), Some(ids::AL2023_130_SEP));
    assert_eq!(a.to_image.as_deref(), Some(target.as_str()));
    assert!(a.update_id.is_some());
    assert_eq!(status.target_image.as_ref().unwrap().id, target);

    // Follow the updates; the self-managed group starts only when a slot frees up.
    for _ in 0..12 {
        world.reconcile().await.unwrap();
        if world
            .phases()
            .await
            .values()
            .all(|p| !matches!(p, Updating | Verifying | Pending))
        {
            break;
        }
    }
    assert_eq!(
        world.phases().await,
        map(&[
            ("a", Succeeded),
            ("b", Succeeded),
            ("c", Excluded),
            ("d", Skipped),
            ("e", UpToDate),
            ("self-1", Succeeded)
        ])
    );
    let self_managed = world
        .status()
        .await
        .node_groups
        .into_iter()
        .find(|g| g.name == "self-1")
        .unwrap();
    assert_eq!(self_managed.kind, NodeGroupKind::SelfManaged);

    // Exactly one new template version and one update per updated group.
    assert_eq!(world.requests("CreateLaunchTemplateVersion"), 3);
    assert_eq!(world.requests("/update-version"), 2);
    assert_eq!(world.requests("StartInstanceRefresh"), 1);
    assert_eq!(world.nodegroup_version("a").await, "2");
    assert_eq!(world.nodegroup_version("c").await, "1", "excluded");

    let status = world.status().await;
    assert_eq!(status.progress.as_deref(), Some("4/4 on target"));
    let ready = opsy_api::conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.status, "True");
    let events = world.events().await;
    for reason in [
        "RolloutStarted",
        "NodeGroupUpdateStarted",
        "NodeGroupUpdated",
        "RolloutSucceeded",
    ] {
        assert!(
            events.contains(&reason.to_owned()),
            "{reason} in {events:?}"
        );
    }

    // Steady state: nothing more happens.
    world.reconcile().await.unwrap();
    assert_eq!(world.requests("CreateLaunchTemplateVersion"), 3);
    assert_eq!(world.requests("/update-version"), 2);

    // Every AWS call the reconciler made is allowed by the operator's IAM policy.
    let calls = world.calls.snapshot();
    let called = calls
        .keys()
        .map(|(service, operation, _)| (*service, *operation));
    opsy_testkit::iam::check_calls("ami-refresh-operator", called, 8).unwrap();
    // … on the resources it acted on, with their tags and the tags it wrote (as the emulator
    // saw each request).
    // As the refresher of CLUSTER (EKS Pod Identity tags its session so).
    let calls = opsy_testkit::iam::as_principal(
        world.moto.operator_calls().unwrap(),
        &[("eks-cluster-name", CLUSTER)],
    );
    opsy_testkit::iam::check_resource_calls("ami-refresh-operator", &calls, 8).unwrap();
}

/// Reconciles (a second apart) until `done` holds for the phases, at most `limit` times.
async fn reconcile_until(
    world: &World,
    limit: usize,
    done: impl Fn(&BTreeMap<String, NodeGroupPhase>) -> bool,
) -> BTreeMap<String, NodeGroupPhase> {
    for _ in 0..limit {
        world.reconcile().await.unwrap();
        let phases = world.phases().await;
        if done(&phases) {
            return phases;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    world.phases().await
}

#[tokio::test]
async fn each_wave_waits_for_ready_nodes_on_the_target_and_the_bake_time() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world.managed_groups(&["a", "b"]).await;
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "bakeTime": "3s"},
        })))
        .await;
    // AWS finishes group a; its nodes are then verified and baked while b waits.
    let phases = reconcile_until(&world, 20, |p| p.get("a") == Some(&Verifying)).await;
    assert_eq!(phases, map(&[("a", Verifying), ("b", Pending)]));
    let phases = reconcile_until(&world, 20, |p| p.get("a") == Some(&Succeeded)).await;
    assert_eq!(phases["a"], Succeeded);
    // a's two nodes of the four: b has just started.
    assert_eq!(
        world.status().await.nodes_on_target.as_deref(),
        Some("2/4 (50%)")
    );
    let a = world.entry("a").await;
    let health = a.health.clone().unwrap();
    assert_eq!((health.ready, health.desired), (2, 2), "{a:?}");
    let since = health.ready_since.unwrap().0;
    assert_eq!(
        health.bake_until.unwrap().0,
        since + jiff::SignedDuration::from_secs(3)
    );
    assert!(
        a.message
            .as_deref()
            .unwrap()
            .contains("2 of 2 nodes Ready, baked"),
        "{a:?}"
    );
    // b started only once a was healthy.
    let b = world.entry("b").await;
    assert!(
        b.started
            .as_ref()
            .is_none_or(|t| t.0 >= since + jiff::SignedDuration::from_secs(3)),
        "{b:?}"
    );
    let phases = reconcile_until(&world, 30, |p| p.get("b") == Some(&Succeeded)).await;
    assert_eq!(phases, map(&[("a", Succeeded), ("b", Succeeded)]));
    assert!(
        world
            .events()
            .await
            .contains(&"NodeGroupHealthy".to_owned())
    );
    assert_eq!(
        world.status().await.progress.as_deref(),
        Some("2/2 on target")
    );
    assert_eq!(
        world.status().await.nodes_on_target.as_deref(),
        Some("4/4 (100%)")
    );
}

#[tokio::test]
async fn a_bad_ami_whose_nodes_never_become_ready_fails_its_group_halts_the_rollout_and_is_quarantined()
 {
    let world = World::new().await;
    let target = world.managed_ami("hardened-broken").await;
    world.broken.lock().unwrap().push(target.clone());
    world.managed_groups(&["a", "b"]).await;
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "healthTimeout": "4s"},
        })))
        .await;
    // AWS reports a's update successful: its instances launched. They never become Ready.
    let phases = reconcile_until(&world, 30, |p| p.get("a") == Some(&Failed)).await;
    assert_eq!(phases, map(&[("a", Failed), ("b", Pending)]));
    let a = world.entry("a").await;
    let message = a.message.clone().unwrap();
    assert!(
        message.starts_with("2 of 2 new nodes NotReady: node-i-")
            && message.contains("KubeletNotReady")
            && message.ends_with("after 4s (rollout.healthTimeout)"),
        "{message}"
    );
    assert_eq!(a.health.as_ref().unwrap().not_ready.len(), 2);
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "RolloutHalted");
    assert!(
        world
            .events()
            .await
            .contains(&"NodeGroupUnhealthy".to_owned())
    );
    // The rollout stays halted: b is never started.
    world.reconcile().await.unwrap();
    assert_eq!(world.phases().await["b"], Pending);
    assert_eq!(world.requests("/update-version"), 1);

    // The breaker quarantined the AMI: tagged, EC2-deprecated, and refused by any refresher.
    let aws = world.context().aws.region(REGION).await;
    let image = aws
        .describe_images(&opsy_aws::ImageQuery::default().ids([target.as_str()]))
        .await
        .unwrap()[0]
        .clone();
    assert_eq!(image.tag("status"), Some("quarantined"));
    let reason = image.tag("quarantine-reason").unwrap();
    assert!(
        reason.starts_with("prod-east/prod-rollout: a: 2 of 2 new nodes NotReady"),
        "{reason}"
    );
    assert!(image.deprecation_time.is_some());
    assert!(world.events().await.contains(&"AmiQuarantined".to_owned()));
    let selection = aws
        .select_target(
            Some(target.as_str()),
            None,
            opsy_aws::managed::Scope {
                cluster_name: "another-cluster",
                accept_from: &[],
                promotion: None,
                kubernetes_version: None,
                account: None,
            },
            Duration::from_secs(30 * 86_400),
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert!(selection.chosen.is_none(), "{}", selection.explain());
    assert!(
        selection.explain().contains("status is quarantined"),
        "{}",
        selection.explain()
    );
    // Each call, on its resource, within the refresher's policy (the quarantine included).
    // As the refresher of CLUSTER (EKS Pod Identity tags its session so).
    let calls = opsy_testkit::iam::as_principal(
        world.moto.operator_calls().unwrap(),
        &[("eks-cluster-name", CLUSTER)],
    );
    opsy_testkit::iam::check_resource_calls("ami-refresh-operator", &calls, 5).unwrap();
}

#[tokio::test]
async fn a_quarantine_whose_write_is_denied_is_kept_in_status_and_lands_on_the_next_reconcile() {
    let world = World::new().await;
    let target = world.managed_ami("hardened-broken").await;
    world.broken.lock().unwrap().push(target.clone());
    world.managed_groups(&["a", "b"]).await;
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "healthTimeout": "4s"},
        })))
        .await;
    let phases = reconcile_until(&world, 30, |p| p.get("a") == Some(&Verifying)).await;
    assert_eq!(phases["a"], Verifying);
    // The quarantine's first write is refused.
    world
        .moto
        .inject_error("CreateTags", "UnauthorizedOperation", 403, 1)
        .unwrap();
    let phases = reconcile_until(&world, 30, |p| p.get("a") == Some(&Failed)).await;
    assert_eq!(phases, map(&[("a", Failed), ("b", Pending)]));
    assert_eq!(
        world.entry("a").await.failed_on,
        Some(opsy_api::ami_refresher::FailureEvidence::Nodes)
    );
    let pending = world.status().await.pending_evidence;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (pending[0].image.as_str(), pending[0].kind),
        (
            target.as_str(),
            opsy_api::ami_refresher::EvidenceKind::Quarantine
        )
    );
    assert!(
        pending[0]
            .value
            .starts_with("prod-east/prod-rollout: a: 2 of 2 new nodes NotReady"),
        "{pending:?}"
    );
    assert!(
        pending[0].error.contains("UnauthorizedOperation"),
        "{pending:?}"
    );
    assert_eq!(status_tag(&world, &target).await.as_deref(), Some("active"));
    assert!(
        world
            .events()
            .await
            .contains(&"QuarantineFailed".to_owned())
    );
    // The group is not judged again, yet the quarantine lands.
    world.reconcile().await.unwrap();
    assert!(world.status().await.pending_evidence.is_empty());
    assert_eq!(
        status_tag(&world, &target).await.as_deref(),
        Some("quarantined")
    );
    let aws = world.context().aws.region(REGION).await;
    let image = aws
        .describe_images(&opsy_aws::ImageQuery::default().ids([target.as_str()]))
        .await
        .unwrap()[0]
        .clone();
    assert!(image.deprecation_time.is_some());
    assert!(
        world
            .events()
            .await
            .contains(&"EvidenceRecorded".to_owned())
    );
    // Nothing is written again.
    let tagged = world.requests("CreateTags");
    world.reconcile().await.unwrap();
    assert_eq!(world.requests("CreateTags"), tagged);
}

/// The Nodes of managed group `group` that this test's fixture plays, sorted by name.
async fn group_nodes(world: &World, group: &str) -> Vec<k8s_openapi::api::core::v1::Node> {
    world.sync_nodes().await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(world.client.clone());
    let selector = format!(
        "eks.amazonaws.com/nodegroup={group},{}",
        world.fixture.node_selector()
    );
    let mut items = nodes
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    items
}

/// The images the nodes of managed group `group` run (from their labels), sorted.
async fn node_images(world: &World, group: &str) -> Vec<String> {
    let mut images: Vec<String> = group_nodes(world, group)
        .await
        .into_iter()
        .filter_map(|n| {
            n.metadata
                .labels?
                .get("eks.amazonaws.com/nodegroup-image")
                .cloned()
        })
        .collect();
    images.sort();
    images
}

#[tokio::test]
async fn with_on_failure_rollback_the_groups_a_bad_ami_reached_go_back_to_what_they_ran() {
    let world = World::new().await;
    let target = world.managed_ami("hardened-broken").await;
    world.broken.lock().unwrap().push(target.clone());
    world.managed_groups(&["a", "b", "c"]).await;
    world
        .fixture
        .create_self_managed_group(CLUSTER, "s", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": target,
            "exclude": ["c"],
            "rollout": {"maxInFlight": 3, "healthTimeout": "4s", "onFailure": "rollback"},
        })))
        .await;
    // a, b and s move; AWS reports each done; their nodes never become Ready.
    let phases = reconcile_until(&world, 30, |p| p.get("a") == Some(&Verifying)).await;
    assert_eq!(phases["a"], Verifying);
    assert_eq!(phases["c"], Excluded);
    assert_eq!(
        node_images(&world, "a").await,
        [target.clone(), target.clone()]
    );
    // EKS refuses group a's earlier launch template version (as its API reference says it may
    // for AMI versions): a then goes back through a new version carrying its previous image.
    world
        .moto
        .inject_error(
            &format!("POST /clusters/{CLUSTER}/node-groups/a/update-version"),
            "InvalidParameterException",
            400,
            1,
        )
        .unwrap();
    let phases = reconcile_until(&world, 40, |p| {
        ["a", "b", "s"]
            .iter()
            .all(|g| p.get(*g) == Some(&RolledBack))
    })
    .await;
    assert_eq!(
        phases,
        map(&[
            ("a", RolledBack),
            ("b", RolledBack),
            ("c", Excluded),
            ("s", RolledBack)
        ])
    );
    // Each group and its nodes run what they ran before; b on its previous version itself.
    let a = world.entry("a").await;
    assert_eq!(
        (
            a.from_version.as_deref(),
            a.to_version.as_deref(),
            a.rollback_version.as_deref()
        ),
        (Some("1"), Some("2"), Some("3")),
        "{a:?}"
    );
    assert_eq!(world.nodegroup_version("a").await, "3");
    assert_eq!(world.nodegroup_version("b").await, "1");
    assert_eq!(
        world.entry("b").await.rollback_version.as_deref(),
        Some("1")
    );
    let previous = ids::AL2023_130_SEP.to_owned();
    assert_eq!(
        node_images(&world, "a").await,
        [previous.clone(), previous.clone()]
    );
    assert_eq!(
        node_images(&world, "b").await,
        [previous.clone(), previous.clone()]
    );
    let (version, instances) = world.asg("s").await;
    assert_eq!(version, "1");
    assert!(
        instances
            .iter()
            .all(|(v, image)| v == "1" && *image == previous),
        "{instances:?}"
    );
    // The evidence stays in the group's message and in the halted rollout's condition.
    let message = a.message.clone().unwrap();
    assert!(
        message.starts_with("rolled back: runs ")
            && message.contains("it failed: 2 of 2 new nodes NotReady"),
        "{message}"
    );
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "RolloutHalted");
    assert!(
        degraded.message.contains("rolled back"),
        "{}",
        degraded.message
    );
    let events = world.events().await;
    for reason in [
        "NodeGroupUnhealthy",
        "AmiQuarantined",
        "NodeGroupRollingBack",
        "NodeGroupRolledBack",
    ] {
        assert!(events.contains(&reason.to_owned()), "{reason}: {events:?}");
    }
    // Nothing more happens: the rollout stays halted and nothing goes back twice.
    let updates = world.requests("/update-version");
    let refreshes = world.requests("StartInstanceRefresh");
    world.reconcile().await.unwrap();
    world.reconcile().await.unwrap();
    assert_eq!(world.requests("/update-version"), updates);
    assert_eq!(world.requests("StartInstanceRefresh"), refreshes);
    assert_eq!(
        updates,
        3 + 2,
        "a: forward, refused, with a new version; b: forward, back"
    );
    assert_eq!(refreshes, 2);
    // As the refresher of CLUSTER (EKS Pod Identity tags its session so).
    let calls = opsy_testkit::iam::as_principal(
        world.moto.operator_calls().unwrap(),
        &[("eks-cluster-name", CLUSTER)],
    );
    opsy_testkit::iam::check_resource_calls("ami-refresh-operator", &calls, 5).unwrap();
}

/// The names of the Nodes of managed group `group`, sorted.
async fn node_names(world: &World, group: &str) -> Vec<String> {
    group_nodes(world, group)
        .await
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect()
}

#[tokio::test]
async fn a_budget_that_allows_no_disruption_is_reported_by_name_before_the_group_starts() {
    use k8s_openapi::api::{core::v1::Pod, policy::v1::PodDisruptionBudget};
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    // Nodes are cluster-scoped and every test's groups label theirs: names of their own keep
    // this test's pods off the other tests' groups.
    world.managed_groups(&["web-a", "web-b"]).await;
    // Two pods of "web" on a's nodes, protected by a budget that wants both available; they
    // are not running (no kubelet here), so the disruption controller allows no disruption.
    let nodes = node_names(&world, "web-a").await;
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &world.ns.name);
    for (i, node) in nodes.iter().enumerate() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("web-{i}"), "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "web", "image": "web:1"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(world.client.clone(), &world.ns.name);
    // "web" wants both pods available; "elsewhere" protects no pod on these nodes and is not
    // reported.
    for (name, min_available) in [("web", 2), ("elsewhere", 1)] {
        let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": name}}},
        }))
        .unwrap();
        budgets
            .create(&PostParams::default(), &budget)
            .await
            .unwrap();
    }
    for _ in 0..100 {
        let status = budgets.get("web").await.unwrap().status;
        if status.is_some_and(|s| s.observed_generation == Some(1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        budgets
            .get("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .disruptions_allowed,
        0
    );
    let spec = |policy: &str| {
        manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "pdbPolicy": policy},
        }))
    };
    world.apply(spec("wait")).await;
    world.reconcile().await.unwrap();
    world.reconcile().await.unwrap();
    assert_eq!(
        world.phases().await,
        map(&[("web-a", Pending), ("web-b", Pending)])
    );
    let a = world.entry("web-a").await;
    let ns = &world.ns.name;
    assert_eq!(
        a.message.as_deref(),
        Some(
            format!(
                "waiting: PodDisruptionBudget {ns}/web allows no disruption of {ns}/web-0, {ns}/web-1 on its nodes (rollout.pdbPolicy: wait; the group starts once they allow it)"
            )
            .as_str()
        )
    );
    assert_eq!(world.requests("/update-version"), 0);
    let events = world.events().await;
    assert_eq!(
        events.iter().filter(|e| *e == "DisruptionBlocked").count(),
        1,
        "once, not per reconcile: {events:?}"
    );

    // With pdbPolicy: force, the group starts, and EKS is told to evict regardless.
    world.apply(spec("force")).await;
    world.reconcile().await.unwrap();
    assert_eq!(world.phases().await["web-a"], Updating);
    let updates = world.updates("web-a").await;
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].1.get("Force").map(String::as_str), Some("true"));
}

#[tokio::test]
async fn after_a_healthy_canary_the_rest_waits_for_an_approval_naming_the_ami() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world.managed_groups(&["a", "b", "c"]).await;
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 2, "canary": ["a"], "approveAfterCanary": true},
        })))
        .await;
    let phases = reconcile_until(&world, 30, |p| p.get("a") == Some(&Succeeded)).await;
    assert_eq!(
        phases,
        map(&[("a", Succeeded), ("b", Pending), ("c", Pending)])
    );
    world.reconcile().await.unwrap();
    let b = world.entry("b").await;
    assert_eq!(
        b.message.as_deref(),
        Some(
            format!(
                "waiting for approval after the canary: annotate the AMIRefresher ami.refresh.ops/approve={target}"
            )
            .as_str()
        )
    );
    let status = world.status().await;
    let progressing = opsy_api::conditions::find(&status.conditions, "Progressing").unwrap();
    assert_eq!(progressing.reason, "AwaitingApproval");
    assert!(progressing.message.contains(&target), "{progressing:?}");
    let events = world.events().await;
    assert_eq!(
        events.iter().filter(|e| *e == "ApprovalRequired").count(),
        1,
        "{events:?}"
    );
    assert_eq!(world.requests("/update-version"), 1, "only the canary");

    // An approval of another AMI is not this one's.
    let annotate = |value: String| {
        let api = world.api();
        async move {
            let patch = serde_json::json!({"metadata": {"annotations": {"ami.refresh.ops/approve": value}}});
            api.patch(
                "prod-rollout",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .unwrap();
        }
    };
    annotate("ami-0123456789abcdef0".into()).await;
    world.reconcile().await.unwrap();
    assert_eq!(world.requests("/update-version"), 1);
    annotate(target.clone()).await;
    world.reconcile().await.unwrap();
    assert_eq!(
        world.phases().await,
        map(&[("a", Succeeded), ("b", Updating), ("c", Updating)])
    );
    let phases = reconcile_until(&world, 40, |p| p.values().all(|p| *p == Succeeded)).await;
    assert_eq!(
        phases,
        map(&[("a", Succeeded), ("b", Succeeded), ("c", Succeeded)])
    );
}

/// The status tag of `image`, read afresh.
async fn status_tag(world: &World, image: &str) -> Option<String> {
    let aws = world.context().aws.region(REGION).await;
    aws.forget_images(&opsy_aws::ImageQuery::default().ids([image]))
        .await;
    aws.describe_images(&opsy_aws::ImageQuery::default().ids([image]))
        .await
        .unwrap()[0]
        .tag("status")
        .map(str::to_owned)
}

#[tokio::test]
async fn nodes_without_the_eks_labels_are_matched_by_instance_and_pass_the_gate_when_healthy() {
    let world = World::new().await;
    world
        .unlabelled
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let target = world.active_ami("hardened-custom").await;
    world.managed_groups(&["a", "b"]).await;
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "healthTimeout": "6s"},
        })))
        .await;
    let phases = reconcile_until(&world, 40, |p| p.values().all(|p| *p == Succeeded)).await;
    assert_eq!(phases, map(&[("a", Succeeded), ("b", Succeeded)]));
    let health = world.entry("a").await.health.unwrap();
    assert_eq!((health.ready, health.desired), (2, 2));
    // The nodes carried no EKS label: they were found through the groups' instances.
    assert!(node_images(&world, "a").await.is_empty());
    // As the refresher of CLUSTER (EKS Pod Identity tags its session so).
    let calls = opsy_testkit::iam::as_principal(
        world.moto.operator_calls().unwrap(),
        &[("eks-cluster-name", CLUSTER)],
    );
    assert!(
        calls
            .iter()
            .any(|c| c.action == "autoscaling:DescribeAutoScalingGroups")
    );
    opsy_testkit::iam::check_resource_calls("ami-refresh-operator", &calls, 5).unwrap();
}

#[tokio::test]
async fn a_node_group_deleted_mid_update_leaves_the_rollout_and_the_others_go_on() {
    let world = World::new().await;
    let target = world.active_ami("hardened-2").await;
    world.managed_groups(&["a", "b", "c"]).await;
    world
        .fixture
        .create_self_managed_group(CLUSTER, "s", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "rollout": {"maxInFlight": 4},
        })))
        .await;
    world.reconcile().await.unwrap();
    assert_eq!(
        world.phases().await,
        map(&[
            ("a", Updating),
            ("b", Updating),
            ("c", Updating),
            ("s", Updating)
        ])
    );
    // Someone deletes b while EKS updates it, and s during its instance refresh.
    world
        .fixture
        .eks
        .delete_nodegroup()
        .cluster_name(CLUSTER)
        .nodegroup_name("b")
        .send()
        .await
        .unwrap();
    world
        .fixture
        .autoscaling
        .delete_auto_scaling_group()
        .auto_scaling_group_name("s")
        .force_delete(true)
        .send()
        .await
        .unwrap();
    let phases = reconcile_until(&world, 40, |p| p.values().all(|p| *p == Succeeded)).await;
    assert_eq!(phases, map(&[("a", Succeeded), ("c", Succeeded)]));
    let mut notes = world.event_notes("NodeGroupGone").await;
    notes.sort();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes[0].starts_with("b was deleted while updating (update ")
            && notes[1].starts_with("s was deleted while updating (update "),
        "{notes:?}"
    );
    let status = world.status().await;
    let ready = opsy_api::conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
}

#[tokio::test]
async fn a_group_whose_template_an_auto_scaling_group_follows_at_latest_is_not_moved_unless_allowed()
 {
    let world = World::new().await;
    let target = world.active_ami("hardened-2").await;
    world.managed_groups(&["a", "b"]).await;
    // A self-managed Auto Scaling group of the cluster (not one this refresher manages) runs
    // a's launch template at $Latest.
    let template = world
        .fixture
        .eks
        .describe_nodegroup()
        .cluster_name(CLUSTER)
        .nodegroup_name("a")
        .send()
        .await
        .unwrap()
        .nodegroup
        .unwrap()
        .launch_template
        .unwrap()
        .id
        .unwrap();
    world
        .fixture
        .autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name("batch-latest")
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_id(&template)
                .version("$Latest")
                .build(),
        )
        .min_size(0)
        .max_size(2)
        .desired_capacity(0)
        .availability_zones(format!("{REGION}a"))
        .tags(
            aws_sdk_autoscaling::types::Tag::builder()
                .key(format!("kubernetes.io/cluster/{CLUSTER}"))
                .value("owned")
                .build(),
        )
        .send()
        .await
        .unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false}, "rollout": {"maxInFlight": 1},
        })))
        .await;
    let phases = reconcile_until(&world, 40, |p| p.get("b") == Some(&Succeeded)).await;
    assert_eq!(phases, map(&[("a", Skipped), ("b", Succeeded)]));
    let message = world.entry("a").await.message.unwrap();
    assert!(
        message.starts_with(&format!(
            "launch template {template} is followed at $Latest by Auto Scaling group(s) batch-latest"
        )) && message.ends_with("or set rollout.allowLatestFollowers"),
        "{message}"
    );
    // Nothing was added to a's template.
    assert_eq!(world.nodegroup_version("a").await, "1");
    assert_eq!(world.event_notes("LatestFollowers").await.len(), 1);

    // Allowed: a moves.
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "allowLatestFollowers": true},
        })))
        .await;
    let phases = reconcile_until(&world, 40, |p| p.get("a") == Some(&Succeeded)).await;
    assert_eq!(phases, map(&[("a", Succeeded), ("b", Succeeded)]));
}

#[tokio::test]
async fn a_capacity_shortfall_or_an_alarm_halts_the_rollout_without_quarantining_unless_opted_in() {
    let world = World::new().await;
    let target = world.managed_ami("hardened-short").await;
    world.managed_groups(&["a", "b"]).await;
    world.fixture.alarm("web-5xx", "OK", "quiet").await.unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "bakeTime": "1h", "healthTimeout": "4s",
                        "alarms": ["web-5xx"]},
        })))
        .await;
    let phases = reconcile_until(&world, 30, |p| p.get("a") == Some(&Verifying)).await;
    assert_eq!(phases["a"], Verifying);
    // The group's Auto Scaling group runs one instance of the two desired (capacity ran
    // short): its one node is Ready, none is NotReady.
    let group = world
        .fixture
        .eks
        .describe_nodegroup()
        .cluster_name(CLUSTER)
        .nodegroup_name("a")
        .send()
        .await
        .unwrap()
        .nodegroup
        .unwrap();
    let asg = group.resources.unwrap().auto_scaling_groups.unwrap()[0]
        .name
        .clone()
        .unwrap();
    world
        .fixture
        .autoscaling
        .set_desired_capacity()
        .auto_scaling_group_name(&asg)
        .desired_capacity(1)
        .send()
        .await
        .unwrap();
    let phases = reconcile_until(&world, 30, |p| p.get("a") == Some(&Failed)).await;
    assert_eq!(phases, map(&[("a", Failed), ("b", Pending)]));
    let a = world.entry("a").await;
    assert_eq!(
        a.failed_on,
        Some(opsy_api::ami_refresher::FailureEvidence::Capacity)
    );
    let message = a.message.unwrap();
    assert!(
        message.starts_with(&format!(
            "1 of 2 nodes on {target} Ready (no node NotReady: capacity)"
        )),
        "{message}"
    );
    // Halted, not quarantined; the Event says which evidence decided and why.
    world.reconcile().await.unwrap();
    assert_eq!(world.phases().await["b"], Pending);
    assert_eq!(status_tag(&world, &target).await.as_deref(), Some("active"));
    let notes = world.event_notes("NodeGroupUnhealthy").await;
    assert!(
        notes.iter().any(|n| n.contains(
            "capacity evidence: this rollout halts, the AMI is not quarantined (rollout.quarantineOn does not list capacity)"
        )),
        "{notes:?}"
    );
    assert!(!world.events().await.contains(&"AmiQuarantined".to_owned()));

    // A new spec retries a: this time the workloads' alarm fires during the bake. Without
    // `alarms` in rollout.quarantineOn that halts, and does not quarantine either.
    world
        .fixture
        .autoscaling
        .set_desired_capacity()
        .auto_scaling_group_name(&asg)
        .desired_capacity(2)
        .send()
        .await
        .unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "bakeTime": "1h", "healthTimeout": "30s",
                        "alarms": ["web-5xx"]},
        })))
        .await;
    // a (back to two nodes) runs the AMI already; b moves and bakes.
    let phases = reconcile_until(&world, 30, |p| p.get("b") == Some(&Verifying)).await;
    assert_eq!(phases["b"], Verifying, "{phases:?}");
    world
        .fixture
        .alarm("web-5xx", "ALARM", "Threshold Crossed")
        .await
        .unwrap();
    let phases = reconcile_until(&world, 10, |p| p.get("b") == Some(&Failed)).await;
    assert_eq!(phases["b"], Failed);
    let b = world.entry("b").await;
    assert_eq!(
        b.failed_on,
        Some(opsy_api::ami_refresher::FailureEvidence::Alarms)
    );
    assert_eq!(status_tag(&world, &target).await.as_deref(), Some("active"));
    assert!(!world.events().await.contains(&"AmiQuarantined".to_owned()));
}

#[tokio::test]
async fn an_alarm_entering_alarm_during_the_bake_trips_the_breaker() {
    let world = World::new().await;
    let target = world.managed_ami("hardened-5xx").await;
    world.managed_groups(&["a", "b"]).await;
    world.fixture.alarm("web-5xx", "OK", "quiet").await.unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": 1, "bakeTime": "1h", "alarms": ["web-5xx", "web-latency"],
                        "quarantineOn": ["alarms"]},
        })))
        .await;
    // a's nodes are Ready and baking; the alarms are part of the evidence.
    let phases = reconcile_until(&world, 30, |p| p.get("a") == Some(&Verifying)).await;
    assert_eq!(phases, map(&[("a", Verifying), ("b", Pending)]));
    world.reconcile().await.unwrap();
    let health = world.entry("a").await.health.unwrap();
    assert_eq!(health.alarms, ["web-5xx: OK", "web-latency: not found"]);
    assert_eq!((health.ready, health.desired), (2, 2));

    // The workloads' 5xx alarm fires during the bake: a fails at once and the AMI is
    // quarantined, as when its nodes never become Ready.
    world
        .fixture
        .alarm(
            "web-5xx",
            "ALARM",
            "Threshold Crossed: 1 datapoint [42.0] was greater than 10.0",
        )
        .await
        .unwrap();
    world.reconcile().await.unwrap();
    assert_eq!(world.phases().await, map(&[("a", Failed), ("b", Pending)]));
    let message = world.entry("a").await.message.unwrap();
    assert!(
        message.starts_with("alarm web-5xx entered ALARM at ")
            && message.ends_with("while the group was being verified: Threshold Crossed: 1 datapoint [42.0] was greater than 10.0"),
        "{message}"
    );
    let aws = world.context().aws.region(REGION).await;
    let image = aws
        .describe_images(&opsy_aws::ImageQuery::default().ids([target.as_str()]))
        .await
        .unwrap()[0]
        .clone();
    assert_eq!(image.tag("status"), Some("quarantined"));
    assert!(
        image
            .tag("quarantine-reason")
            .unwrap()
            .contains("alarm web-5xx entered ALARM"),
        "{image:?}"
    );
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "RolloutHalted");
    // The alarms are read only while a group is being verified.
    let described = world.requests("DescribeAlarms");
    world.reconcile().await.unwrap();
    assert_eq!(world.requests("DescribeAlarms"), described);
    // As the refresher of CLUSTER (EKS Pod Identity tags its session so).
    let calls = opsy_testkit::iam::as_principal(
        world.moto.operator_calls().unwrap(),
        &[("eks-cluster-name", CLUSTER)],
    );
    assert!(
        calls
            .iter()
            .any(|c| c.action == "cloudwatch:DescribeAlarms")
    );
    opsy_testkit::iam::check_resource_calls("ami-refresh-operator", &calls, 5).unwrap();
}

#[tokio::test]
async fn a_group_is_healthy_only_when_enough_pods_on_its_new_nodes_are_ready() {
    use k8s_openapi::api::core::v1::Pod;
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world.managed_groups(&["pods-a"]).await;
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxUnreadyPodsPercent": 50},
        })))
        .await;
    let phases = reconcile_until(&world, 30, |p| p.get("pods-a") == Some(&Verifying)).await;
    assert_eq!(phases["pods-a"], Verifying);
    // Three pods land on the new nodes; none is Ready yet (no kubelet runs them), and one
    // that completed does not count.
    let nodes = node_names(&world, "pods-a").await;
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &world.ns.name);
    for (name, node) in [
        ("web-0", &nodes[0]),
        ("web-1", &nodes[1]),
        ("job-0", &nodes[0]),
    ] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "web:1"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let set_status = |name: &'static str, status: serde_json::Value| {
        let pods = pods.clone();
        async move {
            pods.patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"status": status})),
            )
            .await
            .unwrap();
        }
    };
    set_status("job-0", serde_json::json!({"phase": "Succeeded"})).await;
    let not_ready = serde_json::json!({"phase": "Running", "conditions": [
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}]});
    set_status("web-0", not_ready.clone()).await;
    set_status("web-1", not_ready).await;
    world.reconcile().await.unwrap();
    let a = world.entry("pods-a").await;
    assert_eq!(a.phase, Verifying);
    let ns = &world.ns.name;
    assert_eq!(
        a.message.as_deref(),
        Some(
            format!(
                "2 of 2 pods on the new nodes not Ready (rollout.maxUnreadyPodsPercent 50): {ns}/web-0 ContainersNotReady, {ns}/web-1 ContainersNotReady"
            )
            .as_str()
        )
    );
    // One turns Ready: 1 of 2 not Ready is within 50 %.
    set_status(
        "web-0",
        serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
    )
    .await;
    world.reconcile().await.unwrap();
    let a = world.entry("pods-a").await;
    assert_eq!(a.phase, Succeeded, "{a:?}");
    let health = a.health.unwrap();
    assert_eq!((health.pods_ready, health.pods), (Some(1), Some(2)));
}

#[tokio::test]
async fn nodes_that_never_join_quarantine_the_ami_and_an_eviction_failure_does_not() {
    let world = World::new().await;
    let target = world.managed_ami("hardened-nojoin").await;
    world.managed_groups(&["a", "b"]).await;
    let spec = |max: i32| {
        manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false},
            "rollout": {"maxInFlight": max},
        }))
    };
    let status_tag = || async {
        let aws = world.context().aws.region(REGION).await;
        let images = aws
            .describe_images(&opsy_aws::ImageQuery::default().ids([target.as_str()]))
            .await
            .unwrap();
        (
            images[0].tag("status").map(str::to_owned),
            images[0].tag("quarantine-reason").map(str::to_owned),
        )
    };
    // EKS could not drain a's nodes: the rollout halts, but the AMI is not to blame.
    world
        .moto
        .fail_with("a", Some("PodEvictionFailure"))
        .unwrap();
    world.apply(spec(1)).await;
    let phases = reconcile_until(&world, 20, |p| p.get("a") == Some(&Failed)).await;
    assert_eq!(phases, map(&[("a", Failed), ("b", Pending)]));
    assert_eq!(status_tag().await, (Some("active".to_owned()), None));

    // Tried again (a spec change), a's new instances never join the cluster: EKS says
    // NodeCreationFailure, and the AMI is quarantined with that evidence.
    world
        .moto
        .fail_with("a", Some("NodeCreationFailure"))
        .unwrap();
    world.apply(spec(2)).await;
    let phases = reconcile_until(&world, 20, |p| p.get("a") == Some(&Failed)).await;
    assert_eq!(phases["a"], Failed);
    let (status, reason) = status_tag().await;
    assert_eq!(status.as_deref(), Some("quarantined"));
    let reason = reason.unwrap();
    assert!(
        reason.contains("a: NodeCreationFailure: Instances failed to join the kubernetes cluster"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_complete_healthy_rollout_records_since_when_the_ami_is_healthy_on_this_cluster() {
    let world = World::new().await;
    let target = world.managed_ami("hardened-soaked").await;
    world.managed_groups(&["a", "b"]).await;
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false}, "rollout": {"maxInFlight": 2},
        })))
        .await;
    let started = Timestamp::now();
    // The first write of the evidence is throttled: it is kept in status and lands next time.
    world
        .moto
        .inject_error("CreateTags", "RequestLimitExceeded", 503, 1)
        .unwrap();
    let phases = reconcile_until(&world, 30, |p| p.values().all(|p| *p == Succeeded)).await;
    assert_eq!(phases, map(&[("a", Succeeded), ("b", Succeeded)]));
    let pending = world.status().await.pending_evidence;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].image, target);
    assert_eq!(
        pending[0].kind,
        opsy_api::ami_refresher::EvidenceKind::HealthyOn
    );
    assert_eq!(status_tag(&world, &target).await.as_deref(), Some("active"));
    world.reconcile().await.unwrap();
    assert!(world.status().await.pending_evidence.is_empty());
    assert!(
        world
            .events()
            .await
            .contains(&"EvidenceRecorded".to_owned())
    );
    let aws = world.context().aws.region(REGION).await;
    aws.forget_images(&opsy_aws::ImageQuery::default().ids([target.as_str()]))
        .await;
    let tag = |image: &opsy_aws::Image| image.tag(&evidence_key()).map(str::to_owned);
    let image = aws
        .describe_images(&opsy_aws::ImageQuery::default().ids([target.as_str()]))
        .await
        .unwrap()[0]
        .clone();
    let since: Timestamp = tag(&image).unwrap().parse().unwrap();
    assert!(
        since >= started - jiff::SignedDuration::from_secs(1) && since <= Timestamp::now(),
        "{since}"
    );
    // Recorded once: later reconciles write nothing.
    let tagged = world.requests("CreateTags");
    world.reconcile().await.unwrap();
    world.reconcile().await.unwrap();
    assert_eq!(world.requests("CreateTags"), tagged);
    // As the refresher of CLUSTER (EKS Pod Identity tags its session so).
    let calls = opsy_testkit::iam::as_principal(
        world.moto.operator_calls().unwrap(),
        &[("eks-cluster-name", CLUSTER)],
    );
    assert!(calls.iter().any(|c| c.action == "ec2:CreateTags"));
    opsy_testkit::iam::check_resource_calls("ami-refresh-operator", &calls, 5).unwrap();
}

#[tokio::test]
async fn a_failed_group_halts_the_rollout_and_a_spec_change_resumes_it() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world.cluster(&target).await;
    world.moto.set_failing("b", true).unwrap();
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "exclude": ["c"], "rollout": {"maxInFlight": 2}}),
        ))
        .await;
    for _ in 0..8 {
        world.reconcile().await.unwrap();
    }
    assert_eq!(
        world.phases().await,
        map(&[
            ("a", Succeeded),
            ("b", Failed),
            ("c", Excluded),
            ("d", Skipped),
            ("e", UpToDate),
            ("self-1", Pending)
        ]),
        "the next wave does not start"
    );
    assert_eq!(world.requests("StartInstanceRefresh"), 0);
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RolloutHalted")
    );
    assert!(
        degraded.message.contains("NodeCreationFailure"),
        "{}",
        degraded.message
    );
    assert!(world.events().await.contains(&"RolloutHalted".to_owned()));

    // Fix the cause, change the spec: the rollout resumes without another template version.
    world.moto.set_failing("b", false).unwrap();
    let changed = manifest(
        serde_json::json!({"ami": target, "exclude": ["c"], "rollout": {"maxInFlight": 1}}),
    );
    world.apply(changed).await;
    for _ in 0..12 {
        world.reconcile().await.unwrap();
    }
    assert_eq!(
        world.phases().await,
        map(&[
            ("a", Succeeded),
            ("b", Succeeded),
            ("c", Excluded),
            ("d", Skipped),
            ("e", UpToDate),
            ("self-1", Succeeded)
        ])
    );
    assert_eq!(
        world.requests("CreateLaunchTemplateVersion"),
        3,
        "b's version from the first attempt was reused"
    );
    let status = world.status().await;
    assert_eq!(
        opsy_api::conditions::find(&status.conditions, "Degraded")
            .unwrap()
            .status,
        "False"
    );
}

#[tokio::test]
async fn a_restart_mid_rollout_adds_no_version_and_no_second_update() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world
        .fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("a", ids::AL2023_130_SEP),
        )
        .await
        .unwrap();
    world
        .apply(manifest(serde_json::json!({"ami": target})))
        .await;
    world.reconcile().await.unwrap();
    assert_eq!(world.phases().await, map(&[("a", Updating)]));
    // The status write of that reconcile is lost, as if the operator died right after it.
    let mut amr = world.api().get("prod-rollout").await.unwrap();
    amr.status = None;
    world
        .api()
        .replace_status("prod-rollout", &PostParams::default(), &amr)
        .await
        .unwrap();

    world.reconcile().await.unwrap();
    assert_eq!(world.phases().await, map(&[("a", Updating)]));
    assert_eq!(
        world.requests("CreateLaunchTemplateVersion"),
        1,
        "the operator's version was reused"
    );
    let updates = world
        .fixture
        .eks
        .list_updates()
        .name(CLUSTER)
        .nodegroup_name("a")
        .send()
        .await
        .unwrap()
        .update_ids
        .unwrap_or_default();
    assert_eq!(
        updates.len(),
        1,
        "the second UpdateNodegroupVersion was refused: {updates:?}"
    );
    for _ in 0..6 {
        world.reconcile().await.unwrap();
    }
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
    assert_eq!(world.nodegroup_version("a").await, "2");
}

#[tokio::test]
async fn a_newer_eligible_ami_rolls_out_and_an_expired_one_never_does() {
    let world = World::new().await;
    world
        .fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("a", ids::AL2023_130_SEP),
        )
        .await
        .unwrap();
    let filters = serde_json::json!([
        {"name": "name", "values": ["amazon-eks-node-al2023-x86_64-standard-1.30*"]},
        {"name": "owner-id", "values": ["602401143452"]},
    ]);
    let managed = |name: &'static str, created: String| world.built_from_base(name, created);
    // Expired: built 60 days ago with a 30 day life.
    let old = (Timestamp::now() - jiff::SignedDuration::from_hours(24 * 60)).to_string();
    let expired = managed("hardened-expired", old).await;
    world
        .apply(manifest(
            serde_json::json!({"amiFilters": filters, "expiresIn": "30d"}),
        ))
        .await;
    world.reconcile().await.unwrap();
    let status = world.status().await;
    assert!(status.node_groups.is_empty());
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "NoEligibleAmi");
    assert!(
        degraded
            .message
            .contains(&format!("{expired} (hardened-expired): expired at")),
        "{}",
        degraded.message
    );
    assert_eq!(world.requests("/update-version"), 0);

    let first = managed("hardened-1", Timestamp::now().to_string()).await;
    for _ in 0..5 {
        world.reconcile().await.unwrap();
    }
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
    assert_eq!(world.status().await.target_image.unwrap().id, first);

    let second = managed(
        "hardened-2",
        (Timestamp::now() + jiff::SignedDuration::from_secs(60)).to_string(),
    )
    .await;
    world.reconcile().await.unwrap();
    let status = world.status().await;
    assert_eq!(status.target_image.unwrap().id, second);
    assert_eq!(world.phases().await, map(&[("a", Updating)]));
    for _ in 0..5 {
        world.reconcile().await.unwrap();
    }
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
    assert_eq!(world.nodegroup_version("a").await, "3");
    assert_eq!(world.requests("/update-version"), 2);
}

#[tokio::test]
async fn a_newer_ami_during_a_rollout_waits_for_the_rollout_to_finish_on_its_target() {
    let world = World::new().await;
    world.managed_groups(&["a", "b"]).await;
    let filters = serde_json::json!([
        {"name": "name", "values": ["amazon-eks-node-al2023-x86_64-standard-1.30*"]},
        {"name": "owner-id", "values": ["602401143452"]},
    ]);
    let build =
        |name: &'static str, created: Timestamp| world.built_from_base(name, created.to_string());
    let first = build("hardened-1", Timestamp::now()).await;
    world
        .apply(manifest(serde_json::json!({"amiFilters": filters})))
        .await;
    world.reconcile().await.unwrap();
    assert_eq!(
        world.phases().await,
        map(&[("a", Updating), ("b", Pending)])
    );

    // A newer build lands while group a updates: the rollout finishes on its target.
    let second = build(
        "hardened-2",
        Timestamp::now() + jiff::SignedDuration::from_secs(60),
    )
    .await;
    world.reconcile().await.unwrap();
    let status = world.status().await;
    assert_eq!(status.target_image.unwrap().id, first);
    assert_eq!(status.held_back.len(), 1, "{:?}", status.held_back);
    assert_eq!(status.held_back[0].image, second);
    assert_eq!(status.held_back[0].gate, "RolloutUnderWay");
    for _ in 0..15 {
        if world.phases().await == map(&[("a", Succeeded), ("b", Succeeded)]) {
            break;
        }
        world.reconcile().await.unwrap();
        assert_eq!(world.status().await.target_image.unwrap().id, first);
    }
    let status = world.status().await;
    for group in &status.node_groups {
        assert_eq!(group.phase, Succeeded, "{group:?}");
        assert_eq!(group.to_image.as_deref(), Some(first.as_str()), "{group:?}");
    }
    assert_eq!(world.requests("/update-version"), 2);

    // Done: the next rollout takes the newer AMI.
    world.reconcile().await.unwrap();
    let status = world.status().await;
    assert_eq!(status.target_image.unwrap().id, second);
    assert!(status.held_back.is_empty(), "{:?}", status.held_back);
    assert_eq!(
        world.phases().await,
        map(&[("a", Updating), ("b", Pending)])
    );

    // With rollout.onNewerAmi: switch, a third build retargets the rollout under way.
    world
        .apply(manifest(serde_json::json!({
            "amiFilters": filters,
            "rollout": {"onNewerAmi": "switch"},
        })))
        .await;
    let third = build(
        "hardened-3",
        Timestamp::now() + jiff::SignedDuration::from_secs(120),
    )
    .await;
    world.reconcile().await.unwrap();
    assert_eq!(world.status().await.target_image.unwrap().id, third);
}

#[tokio::test]
async fn an_arm64_group_is_never_moved_to_an_x86_64_target() {
    let world = World::new().await;
    world
        .groups_on(&[
            ("mixed-x86", ids::AL2023_130_SEP),
            ("mixed-arm", ids::AL2023_130_ARM_OCT),
        ])
        .await;
    // Registered like a Packer build of the x86_64 project (EC2's default architecture).
    let target = world.managed_ami("hardened-x86").await;
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "rollout": {"maxInFlight": 2}}),
        ))
        .await;
    world.settle(10).await;
    assert_eq!(
        world.phases().await,
        map(&[("mixed-arm", Skipped), ("mixed-x86", Succeeded)])
    );
    let arm = world.entry("mixed-arm").await;
    let message = arm.message.unwrap();
    assert!(
        message.contains(&format!(
            "runs {}: no eligible candidate is arm64/standard/al2023, the lane of the AMI it \
             runs (1 eligible of other lanes; this cluster also runs x86_64/standard): a group \
             is never moved to another architecture, variant or OS family",
            ids::AL2023_130_ARM_OCT
        )),
        "{message}"
    );
    assert!(world.updates("mixed-arm").await.is_empty());
    assert_eq!(world.nodegroup_version("mixed-arm").await, "1");
}

#[tokio::test]
async fn a_group_on_a_public_ami_aws_deprecated_since_is_still_refreshed() {
    let world = World::new().await;
    world
        .fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("on-old-public", ids::AL2023_130_AUG),
        )
        .await
        .unwrap();
    // AWS deprecated the EKS AMI the group runs: EC2 leaves it out of searches by default.
    world
        .moto
        .deprecated(REGION, ids::AL2023_130_AUG, "2023-11-14T22:13:20Z")
        .unwrap();
    let target = world.managed_ami("hardened").await;
    world
        .apply(manifest(serde_json::json!({"ami": target})))
        .await;
    world.settle(10).await;
    assert_eq!(world.phases().await, map(&[("on-old-public", Succeeded)]));
}

/// A RefresherClass (cluster-scoped, the platform team's) pins the clusters its namespaces'
/// AMIRefreshers roll out to: one naming a class that does not allow its cluster makes no AWS
/// call, and says which rule refuses it; once the class allows the cluster, it rolls out. (The
/// default class is left to the unit tests: marking one default here would bind every other
/// test of this binary.)
#[tokio::test]
async fn a_refresher_class_pins_the_clusters_a_namespace_may_roll_out_to() {
    use opsy_api::RefresherClass;
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world.managed_groups(&["a"]).await;
    let classes: Api<RefresherClass> = Api::all(world.client.clone());
    let name = format!("{}-rollouts", world.ns.name);
    let class = |clusters: &[&str]| -> RefresherClass {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "RefresherClass",
            "metadata": {"name": name},
            "spec": {"namespaces": [world.ns.name], "clusters": clusters},
        }))
        .unwrap()
    };
    classes
        .create(&PostParams::default(), &class(&["team-b-prod"]))
        .await
        .unwrap();
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "refresherClassName": name}),
        ))
        .await;
    let calls_before: u64 = world.calls.snapshot().values().sum();
    let err = world.reconcile().await.unwrap_err();
    assert!(
        matches!(err, ami_refresh_operator::Error::NotAllowed(_)),
        "{err}"
    );
    assert_eq!(
        world.calls.snapshot().values().sum::<u64>(),
        calls_before,
        "no AWS call"
    );
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "RolloutNotAllowed");
    assert!(
        degraded.message.contains(&format!(
            "cluster \"{CLUSTER}\" (spec.clusterName) is not allowed by RefresherClass {name} (its spec.clusters)"
        )),
        "{}",
        degraded.message
    );
    assert!(
        world
            .events()
            .await
            .contains(&"RolloutNotAllowed".to_owned())
    );
    assert!(status.node_groups.is_empty());

    // The platform team adds the cluster: the rollout starts.
    let mut allowing = class(&[CLUSTER]);
    allowing.metadata.resource_version =
        classes.get(&name).await.unwrap().metadata.resource_version;
    classes
        .replace(&name, &PostParams::default(), &allowing)
        .await
        .unwrap();
    world.reconcile().await.unwrap();
    assert_eq!(world.phases().await, map(&[("a", Updating)]));
    classes.delete(&name, &Default::default()).await.unwrap();
}

#[tokio::test]
async fn bad_input_is_reported_clearly() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world
        .fixture
        .create_node_group(CLUSTER, &NodeGroupSpec::with_image("a", target.as_str()))
        .await
        .unwrap();
    // Unknown names in exclude: a warning in status, the rollout goes on.
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "exclude": ["ingress-dev"]}),
        ))
        .await;
    world.reconcile().await.unwrap();
    let status = world.status().await;
    assert_eq!(status.unknown_groups, ["ingress-dev"]);
    assert!(
        world
            .events()
            .await
            .contains(&"UnknownNodeGroups".to_owned())
    );
    assert_eq!(
        opsy_api::conditions::find(&status.conditions, "Ready")
            .unwrap()
            .status,
        "True"
    );

    // The upstream example's `expiresIn: "5m"` (meant as months): accepted, spelled out.
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "expiresIn": "5m"}),
        ))
        .await;
    world.reconcile().await.unwrap();
    let warning = opsy_api::conditions::find(&world.status().await.conditions, "ConfigWarning")
        .unwrap()
        .clone();
    assert_eq!(
        (warning.status.as_str(), warning.reason.as_str()),
        ("True", "ShortExpiresIn")
    );
    assert!(
        warning
            .message
            .contains("spec.expiresIn is \"5m\", which is 5 minute(s)")
            && warning.message.contains("5 month(s) is \"5months\""),
        "{}",
        warning.message
    );
    assert!(world.events().await.contains(&"ShortExpiresIn".to_owned()));
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "expiresIn": "5months"}),
        ))
        .await;
    world.reconcile().await.unwrap();
    let warning = opsy_api::conditions::find(&world.status().await.conditions, "ConfigWarning")
        .unwrap()
        .clone();
    assert_eq!(warning.status, "False");

    // An explicit AMI that does not exist.
    let missing = manifest(serde_json::json!({"ami": "ami-0123456789abcdef0"}));
    world.apply(missing).await;
    world.reconcile().await.unwrap();
    let degraded = opsy_api::conditions::find(&world.status().await.conditions, "Degraded")
        .unwrap()
        .clone();
    assert_eq!(
        degraded.message,
        "spec.ami ami-0123456789abcdef0 is not eligible: no image matched"
    );

    // A cluster that does not exist.
    let elsewhere = manifest(serde_json::json!({"ami": target, "clusterName": "no-such-cluster"}));
    world.apply(elsewhere).await;
    let err = world.reconcile().await.unwrap_err();
    assert_eq!(err.category(), "not_found");
    let degraded = opsy_api::conditions::find(&world.status().await.conditions, "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded.reason, "ClusterNotFound");
    assert!(
        degraded
            .message
            .contains("No cluster found for name: no-such-cluster"),
        "{}",
        degraded.message
    );
}

#[tokio::test]
async fn rollouts_are_notified_once_per_transition() {
    let texts = notified_transitions(1, true).await;
    assert_eq!(
        events(&texts),
        ["RolloutStarted", "NodeGroupUpdated", "RolloutHalted"],
        "{texts:#?}"
    );
}

/// A group still in flight when another one halts the rollout finishes afterwards, and that is
/// notified too; the halt is not notified again. (One notification per reconcile, halt first,
/// lost the group.)
#[tokio::test]
async fn a_group_that_finishes_after_the_halt_is_notified_and_the_halt_once() {
    let texts = notified_transitions(2, true).await;
    assert_eq!(
        events(&texts),
        ["RolloutStarted", "RolloutHalted", "NodeGroupUpdated"],
        "{texts:#?}"
    );
}

/// The reconcile that sees the last groups finish notifies both transitions, in order: the
/// groups, then the rollout. (One notification per reconcile lost the groups.)
#[tokio::test]
async fn every_transition_of_one_reconcile_is_notified() {
    let texts = notified_transitions(2, false).await;
    assert_eq!(
        events(&texts),
        ["RolloutStarted", "NodeGroupUpdated", "RolloutSucceeded"],
        "{texts:#?}"
    );
    // Both groups finished in the reconcile that finished the rollout.
    assert!(texts[1].ends_with("2/2 on target"), "{texts:#?}");
}

/// Rolls `hardened-1` out to groups `a` and `b` (`b` fails if `fail_b`) `max_in_flight` at a
/// time and returns the texts Slack received, in order.
async fn notified_transitions(max_in_flight: u32, fail_b: bool) -> Vec<String> {
    use k8s_openapi::{ByteString, api::core::v1::Secret};
    use kube::api::ObjectMeta;
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"ok": true})))
        .mount(&slack)
        .await;
    let mut world = World::new().await;
    world.slack_api = slack.uri();
    let secrets: Api<Secret> = Api::namespaced(world.client.clone(), &world.ns.name);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("slack-token".into()),
            ..ObjectMeta::default()
        },
        data: Some([("token".to_owned(), ByteString(b"xoxb-test".to_vec()))].into()),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let target = world.active_ami("hardened-1").await;
    world.managed_groups(&["a", "b"]).await;
    world.moto.set_failing("b", fail_b).unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": target,
            "notifier": {"slack": {"channelIDs": ["C1"], "secret": "slack-token"}},
            "rollout": {"maxInFlight": max_in_flight},
        })))
        .await;
    for _ in 0..10 {
        world.reconcile().await.unwrap();
    }
    let texts: Vec<String> = slack
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    texts
}

/// The event each Slack text names.
fn events(texts: &[String]) -> Vec<&str> {
    texts.iter().map(|t| t.split(':').next().unwrap()).collect()
}

#[tokio::test]
async fn a_group_moved_off_the_target_is_brought_back() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    let template = world
        .fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("a", ids::AL2023_130_SEP),
        )
        .await
        .unwrap()
        .unwrap();
    world
        .apply(manifest(serde_json::json!({"ami": target})))
        .await;
    for _ in 0..5 {
        world.reconcile().await.unwrap();
    }
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));

    // Someone rolls the group back to the old version by hand.
    let update = world
        .fixture
        .eks
        .update_nodegroup_version()
        .cluster_name(CLUSTER)
        .nodegroup_name("a")
        .launch_template(
            aws_sdk_eks::types::LaunchTemplateSpecification::builder()
                .id(&template.id)
                .version("1")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let id = update.update.unwrap().id.unwrap();
    for _ in 0..3 {
        world
            .fixture
            .eks
            .describe_update()
            .name(CLUSTER)
            .nodegroup_name("a")
            .update_id(&id)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(world.nodegroup_version("a").await, "1");

    for _ in 0..5 {
        world.reconcile().await.unwrap();
    }
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
    assert_eq!(
        world.nodegroup_version("a").await,
        "2",
        "back on the operator's version"
    );
    assert_eq!(
        world.requests("CreateLaunchTemplateVersion"),
        1,
        "no new version for the drift"
    );
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_changed_update_config_ends_before_the_version_update_starts() {
    let world = World::new().await;
    let first = world.active_ami("hardened-1").await;
    world
        .fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("a", ids::AL2023_130_SEP),
        )
        .await
        .unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": first,
            "refreshConfig": {"maxUnavailable": 2, "force": true},
        })))
        .await;
    world.reconcile().await.unwrap();
    let a = world.entry("a").await;
    assert_eq!(a.phase, Updating);
    assert_eq!(
        a.update_type,
        Some(opsy_api::ami_refresher::UpdateType::ConfigUpdate)
    );
    assert_eq!(
        world.requests("/update-version"),
        0,
        "EKS runs one update at a time"
    );

    world.settle(12).await;
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
    let version = world.nodegroup_version("a").await;
    assert_eq!(
        world.updates("a").await,
        [
            (
                "ConfigUpdate".to_owned(),
                params(&[("MaxUnavailable", "2")]),
                "Successful".to_owned()
            ),
            (
                "VersionUpdate".to_owned(),
                params(&[
                    ("Force", "true"),
                    ("LaunchTemplateId", a.launch_template_id.as_deref().unwrap()),
                    ("LaunchTemplateVersion", version.as_str()),
                ]),
                "Successful".to_owned()
            ),
        ]
    );

    // A percentage, no force, a new AMI: the same order, the new values.
    let second = world.active_ami("hardened-2").await;
    world
        .apply(manifest(serde_json::json!({
            "ami": second,
            "refreshConfig": {"maxUnavailablePercentage": 50},
        })))
        .await;
    world.settle(12).await;
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
    let updates = world.updates("a").await;
    assert_eq!(updates.len(), 4, "{updates:?}");
    assert_eq!(
        (updates[2].0.as_str(), &updates[2].1),
        (
            "ConfigUpdate",
            &params(&[("MaxUnavailablePercentage", "50")])
        )
    );
    assert_eq!(updates[3].0, "VersionUpdate");
    assert_eq!(updates[3].1.get("Force").map(String::as_str), Some("false"));
    assert!(updates.iter().all(|u| u.2 == "Successful"), "{updates:?}");
}

#[tokio::test]
async fn an_update_someone_else_started_is_waited_for_and_never_counted_as_ours() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world
        .fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("a", ids::AL2023_130_SEP),
        )
        .await
        .unwrap();
    // Someone scales the group; the update runs for a few polls.
    let theirs = world
        .fixture
        .eks
        .update_nodegroup_config()
        .cluster_name(CLUSTER)
        .nodegroup_name("a")
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .desired_size(3)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .update
        .unwrap()
        .id
        .unwrap();
    world
        .apply(manifest(serde_json::json!({"ami": target})))
        .await;
    world.reconcile().await.unwrap();
    let a = world.entry("a").await;
    assert_eq!(a.phase, Pending, "{a:?}");
    assert!(a.update_id.is_none(), "{a:?}");
    let message = a.message.unwrap();
    assert!(
        message.contains(&theirs) && message.contains("started outside this operator"),
        "{message}"
    );
    assert_eq!(world.requests("/update-version"), 0);
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.status, "False", "waiting is not a failure");

    for _ in 0..16 {
        world.reconcile().await.unwrap();
        if world.phases().await == map(&[("a", Succeeded)]) {
            break;
        }
    }
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
    let updates = world.updates("a").await;
    let kinds: Vec<&str> = updates.iter().map(|u| u.0.as_str()).collect();
    assert_eq!(kinds, ["ConfigUpdate", "VersionUpdate"]);
    assert_ne!(
        world.entry("a").await.update_id.as_deref(),
        Some(theirs.as_str())
    );
}

#[tokio::test]
async fn an_update_started_is_recorded_before_a_later_error_can_lose_it() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world.managed_groups(&["a", "b"]).await;
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "rollout": {"maxInFlight": 2}}),
        ))
        .await;
    // a's update starts; b's start then fails.
    world
        .moto
        .inject_error(
            &format!("POST /clusters/{CLUSTER}/node-groups/b/update-version"),
            "ClientException",
            400,
            1,
        )
        .unwrap();
    let error = world.reconcile().await.unwrap_err();
    assert!(error.to_string().contains("ClientException"), "{error}");

    let a = world.entry("a").await;
    assert_eq!(a.phase, Updating, "{a:?}");
    let started = a.update_id.clone().unwrap();
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.status, "True", "the error is reported too");

    world.settle(12).await;
    assert_eq!(
        world.phases().await,
        map(&[("a", Succeeded), ("b", Succeeded)])
    );
    assert_eq!(world.entry("a").await.update_id, Some(started));
    for name in ["a", "b"] {
        assert_eq!(world.updates(name).await.len(), 1, "{name}: one update");
    }
}

#[tokio::test]
async fn self_managed_groups_use_a_desired_configuration_and_roll_back_on_failure() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world
        .fixture
        .create_self_managed_group(CLUSTER, "s", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    world.moto.set_failing("s", true).unwrap();
    // The spec of examples/ami-refresher-waves.yaml: autoRollback on.
    let spec = |min_healthy: i32| {
        manifest(serde_json::json!({
            "ami": target,
            "selfManaged": {"enabled": true, "autoRollback": true, "minHealthyPercentage": min_healthy},
        }))
    };
    world.apply(spec(90)).await;
    world.settle(12).await;
    let s = world.entry("s").await;
    assert_eq!(s.phase, Failed, "{s:?}");
    assert!(
        s.message.as_deref().unwrap().contains("RollbackSuccessful"),
        "{s:?}"
    );
    assert_eq!(
        world.asg("s").await,
        (
            "1".to_owned(),
            vec![
                ("1".to_owned(), ids::AL2023_130_SEP.to_owned()),
                ("1".to_owned(), ids::AL2023_130_SEP.to_owned())
            ]
        ),
        "rolled back: the group and its instances as before"
    );

    world.moto.set_failing("s", false).unwrap();
    world.apply(spec(50)).await;
    world.settle(12).await;
    assert_eq!(world.phases().await, map(&[("s", Succeeded)]));
    assert_eq!(
        world.asg("s").await,
        (
            "2".to_owned(),
            vec![
                ("2".to_owned(), target.clone()),
                ("2".to_owned(), target.clone())
            ]
        )
    );
    assert_eq!(world.requests("CreateLaunchTemplateVersion"), 1, "reused");
    assert_eq!(world.requests("StartInstanceRefresh"), 2);
    assert_eq!(world.requests("UpdateAutoScalingGroup"), 0);
    // The policy allows each call on the Auto Scaling group and launch template it touched.
    // As the refresher of CLUSTER (EKS Pod Identity tags its session so).
    let calls = opsy_testkit::iam::as_principal(
        world.moto.operator_calls().unwrap(),
        &[("eks-cluster-name", CLUSTER)],
    );
    opsy_testkit::iam::check_resource_calls("ami-refresh-operator", &calls, 4).unwrap();
}

#[tokio::test]
async fn a_self_managed_group_is_on_target_only_when_its_instances_are() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world
        .fixture
        .create_self_managed_group(CLUSTER, "s", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    world.moto.set_failing("s", true).unwrap();
    let spec = |min_healthy: i32| {
        manifest(serde_json::json!({
            "ami": target,
            "selfManaged": {"enabled": true, "minHealthyPercentage": min_healthy},
        }))
    };
    world.apply(spec(50)).await;
    world.settle(12).await;
    let s = world.entry("s").await;
    assert_eq!(s.phase, Failed, "{s:?}");
    assert!(
        s.message
            .as_deref()
            .unwrap()
            .contains("instance refresh Failed"),
        "{s:?}"
    );
    // One batch was replaced before the failure: the group is half on the target.
    let (version, instances) = world.asg("s").await;
    assert_eq!(version, "1");
    assert_eq!(
        instances,
        [
            ("1".to_owned(), ids::AL2023_130_SEP.to_owned()),
            ("2".to_owned(), target.clone())
        ]
    );

    // Someone points the group at the new version by hand: its template says "target", half
    // its instances do not.
    world
        .fixture
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name("s")
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_id(s.launch_template_id.clone().unwrap())
                .version("2")
                .build(),
        )
        .send()
        .await
        .unwrap();
    world.moto.set_failing("s", false).unwrap();
    world.apply(spec(60)).await;
    world.reconcile().await.unwrap();
    let s = world.entry("s").await;
    assert_eq!(
        s.phase, Updating,
        "not on target while an instance runs the old AMI: {s:?}"
    );
    world.settle(12).await;
    assert_eq!(world.phases().await, map(&[("s", Succeeded)]));
    let (_, instances) = world.asg("s").await;
    assert!(
        instances.iter().all(|(_, image)| *image == target),
        "{instances:?}"
    );
}

#[tokio::test]
async fn a_crash_between_the_new_version_and_the_refresh_adds_no_second_version() {
    let world = World::new().await;
    let target = world.active_ami("hardened-1").await;
    world
        .fixture
        .create_self_managed_group(CLUSTER, "s", ids::AL2023_130_SEP, &[])
        .await
        .unwrap();
    world
        .apply(manifest(
            serde_json::json!({"ami": target, "selfManaged": {"enabled": true}}),
        ))
        .await;
    // The version is created, then the refresh cannot start (as if the operator died there).
    world
        .moto
        .inject_error("StartInstanceRefresh", "InternalFailure", 400, 1)
        .unwrap();
    world.reconcile().await.unwrap_err();
    assert_eq!(world.requests("CreateLaunchTemplateVersion"), 1);
    assert_eq!(world.asg("s").await.0, "1", "the group is untouched");

    world.settle(12).await;
    assert_eq!(world.phases().await, map(&[("s", Succeeded)]));
    assert_eq!(world.requests("CreateLaunchTemplateVersion"), 1, "reused");
    assert_eq!(world.entry("s").await.to_version.as_deref(), Some("2"));
    assert_eq!(world.asg("s").await.0, "2");
}

#[tokio::test]
async fn another_clusters_newer_ami_is_passed_over_until_accepted() {
    let world = World::new().await;
    world
        .fixture
        .create_node_group(
            CLUSTER,
            &NodeGroupSpec::with_image("a", ids::AL2023_130_SEP),
        )
        .await
        .unwrap();
    let managed = |name: &str, cluster: &str, created: Timestamp| {
        let fixture = world.fixture.clone();
        let (name, cluster, created) = (name.to_owned(), cluster.to_owned(), created.to_string());
        async move {
            fixture
                .register_image(
                    &name,
                    &[
                        ("brought-to-you-by", "opsy-the-ami-operator"),
                        ("cluster-name", cluster.as_str()),
                        ("created-by", "pb-gpu"),
                        ("status", "active"),
                        ("base-ami", ids::AL2023_130_OCT),
                        ("create-timestamp", created.as_str()),
                    ],
                )
                .await
                .unwrap()
        }
    };
    let now = Timestamp::now();
    let ours = managed(
        "hardened-prod",
        CLUSTER,
        now - jiff::SignedDuration::from_hours(1),
    )
    .await;
    // Another team's GPU image, built from the same base, newer.
    let theirs = managed("hardened-gpu", "gpu-east", now).await;
    let spec = |accept: serde_json::Value| {
        manifest(serde_json::json!({
            "amiFilters": [
                {"name": "name", "values": ["amazon-eks-node-al2023-x86_64-standard-1.30*"]},
                {"name": "owner-id", "values": ["602401143452"]},
            ],
            "acceptFrom": accept,
        }))
    };
    world.apply(spec(serde_json::json!([]))).await;
    world.settle(8).await;
    assert_eq!(world.status().await.target_image.unwrap().id, ours);
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
    let events: Api<Event> = Api::namespaced(world.client.clone(), &world.ns.name);
    let started = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("RolloutStarted"))
        .unwrap()
        .note
        .unwrap();
    assert!(
        started.contains(&format!("passed over 1 newer: {theirs}"))
            && started.contains("add {clusterName: gpu-east} to spec.acceptFrom"),
        "{started}"
    );

    world
        .apply(spec(serde_json::json!([{"clusterName": "gpu-east"}])))
        .await;
    world.settle(8).await;
    assert_eq!(world.status().await.target_image.unwrap().id, theirs);
    assert_eq!(world.phases().await, map(&[("a", Succeeded)]));
}

/// An EKS AL2 1.30 image of September (x86_64), not in the default seed.
const AL2_130_SEP: &str = "ami-0c130202409170000";

/// The NVIDIA and Neuron variants of the October EKS AMI (x86_64), published by AWS.
const GPU_BASE: &str = "ami-0d130202410240000";
const NEURON_BASE: &str = "ami-0e130202410240000";

#[tokio::test]
async fn a_mixed_cluster_rolls_each_group_to_the_ami_of_its_own_architecture_and_variant() {
    let world = World::new().await;
    world
        .moto
        .publish_image(
            REGION,
            GPU_BASE,
            "amazon-eks-node-al2023-x86_64-nvidia-1.30-v20241024",
            opsy_testkit::seed::EKS_OWNER,
        )
        .unwrap();
    world
        .moto
        .publish_image(
            REGION,
            NEURON_BASE,
            "amazon-eks-node-al2023-x86_64-neuron-1.30-v20241024",
            opsy_testkit::seed::EKS_OWNER,
        )
        .unwrap();
    world
        .groups_on(&[
            ("lane-x86", ids::AL2023_130_SEP),
            ("lane-arm", ids::AL2023_130_ARM_OCT),
            ("lane-gpu", GPU_BASE),
            ("lane-neuron", NEURON_BASE),
        ])
        .await;
    // What the PackerBuilders of this cluster built from each base; the x86_64 standard one
    // is the newest, so a single target would be it. The arm64 and GPU builds carry the tags
    // a PackerBuilder writes now; the standard one (an older build) only its base.
    let arm = world
        .build_for(
            "arm64",
            "hardened-arm64",
            ids::AL2023_130_ARM_OCT,
            30,
            &[("architecture", "arm64"), ("variant", "standard")],
        )
        .await;
    let gpu = world
        .build_for(
            "x86_64",
            "hardened-gpu",
            GPU_BASE,
            20,
            &[("architecture", "x86_64"), ("variant", "nvidia")],
        )
        .await;
    let x86 = world
        .build_for("x86_64", "hardened-x86", ids::AL2023_130_OCT, 10, &[])
        .await;

    world
        .apply(manifest(serde_json::json!({
            "amiFilters": [
                {"name": "name", "values": ["amazon-eks-node-al2023-*-1.30-*"]},
                {"name": "owner-id", "values": [opsy_testkit::seed::EKS_OWNER]},
            ],
            "rollout": {"maxInFlight": 4},
        })))
        .await;

    // plan shows each group's own target, and no group of another lane.
    let amr = world.api().get("prod-rollout").await.unwrap();
    let report =
        ami_refresh_operator::dry_run::report(&world.context().aws, &amr, Timestamp::now())
            .await
            .unwrap();
    let detail = |name: &str| {
        let g = report.groups.iter().find(|g| g.name == name).unwrap();
        (g.action.clone(), g.detail.clone())
    };
    let (action, text) = detail("lane-x86");
    assert_eq!(action, "update");
    assert!(
        text.contains(&format!("→ {x86} (x86_64/standard/al2023)")),
        "{text}"
    );
    let (_, text) = detail("lane-arm");
    assert!(
        text.contains(&format!("→ {arm} (arm64/standard/al2023)")),
        "{text}"
    );
    let (_, text) = detail("lane-gpu");
    assert!(
        text.contains(&format!("→ {gpu} (x86_64/nvidia/al2023)")),
        "{text}"
    );
    let (action, text) = detail("lane-neuron");
    assert_eq!(action, "skipped");
    assert!(
        text.contains("no eligible candidate is x86_64/neuron/al2023, the lane of the AMI it runs"),
        "{text}"
    );

    world.settle(12).await;
    let status = world.status().await;
    let expected = [
        ("lane-x86", &x86, "x86_64/standard/al2023"),
        ("lane-arm", &arm, "arm64/standard/al2023"),
        ("lane-gpu", &gpu, "x86_64/nvidia/al2023"),
    ];
    for (name, image, lane) in expected {
        let entry = world.entry(name).await;
        assert_eq!(entry.phase, Succeeded, "{entry:?}");
        assert_eq!(entry.to_image.as_deref(), Some(image.as_str()), "{entry:?}");
        assert_eq!(entry.lane.as_deref(), Some(lane), "{entry:?}");
        assert!(entry.image_created.is_some(), "{entry:?}");
        // EKS moved the group to a launch template version carrying its own lane's AMI.
        let updates = world.updates(name).await;
        assert_eq!(updates.len(), 1, "{name}: {updates:?}");
    }
    let neuron = world.entry("lane-neuron").await;
    assert_eq!(neuron.phase, Skipped, "{neuron:?}");
    assert!(world.updates("lane-neuron").await.is_empty());
    assert_eq!(world.nodegroup_version("lane-neuron").await, "1");
    // Status names each lane's target; the primary (status.targetImage) is the newest of them,
    // as every lane has one group.
    let lanes: Vec<(String, String, String)> = status
        .targets
        .iter()
        .map(|t| {
            (
                t.architecture.clone(),
                t.variant.clone(),
                t.image.id.clone(),
            )
        })
        .collect();
    assert_eq!(
        lanes,
        [
            ("arm64".into(), "standard".into(), arm.clone()),
            ("x86_64".into(), "nvidia".into(), gpu.clone()),
            ("x86_64".into(), "standard".into(), x86.clone()),
        ]
    );
    assert_eq!(status.target_image.unwrap().id, x86);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
    for image in [&x86, &arm, &gpu] {
        assert!(ready.message.contains(image.as_str()), "{}", ready.message);
    }

    // The next reconcile is quiet: no group moves again.
    world.reconcile().await.unwrap();
    for (name, _, _) in expected {
        assert_eq!(world.updates(name).await.len(), 1, "{name}");
    }
}

/// AL2 and AL2023 nodes join the cluster differently (`bootstrap.sh` vs `nodeadm`): filters that
/// match both families keep each group on its own. The AL2023 AMI is the newest, so without the
/// OS family in the lane the AL2 group would have moved to it.
#[tokio::test]
async fn an_al2_group_stays_on_al2_when_the_filters_also_match_al2023() {
    let world = World::new().await;
    world.publish_al2_september();
    world
        .groups_on(&[
            ("family-al2", AL2_130_SEP),
            ("family-al2023", ids::AL2023_130_SEP),
        ])
        .await;
    // This cluster's builds from the October bases: the AL2 one tagged as a PackerBuilder tags
    // now, the AL2023 one (the newest) only with its base — its family is its base's.
    let al2_build = world
        .build_for(
            "x86_64",
            "hardened-al2",
            ids::AL2_130_OCT,
            20,
            &[("os-family", "al2")],
        )
        .await;
    let al2023_build = world
        .build_for("x86_64", "hardened-al2023", ids::AL2023_130_OCT, 10, &[])
        .await;
    let filters = |names: serde_json::Value| {
        serde_json::json!([
            {"name": "name", "values": names},
            {"name": "owner-id", "values": [opsy_testkit::seed::EKS_OWNER]},
        ])
    };
    world
        .apply(manifest(serde_json::json!({
            "amiFilters": filters(serde_json::json!([
                "amazon-eks-node-1.30-v202410*",
                "amazon-eks-node-al2023-x86_64-standard-1.30-*",
            ])),
            "rollout": {"maxInFlight": 2},
        })))
        .await;
    world.settle(10).await;
    let al2 = world.entry("family-al2").await;
    let al2023 = world.entry("family-al2023").await;
    assert_eq!(
        (al2.phase, al2.to_image.as_deref(), al2.lane.as_deref()),
        (
            Succeeded,
            Some(al2_build.as_str()),
            Some("x86_64/standard/al2")
        ),
        "{al2:?}"
    );
    assert_eq!(
        (
            al2023.phase,
            al2023.to_image.as_deref(),
            al2023.lane.as_deref()
        ),
        (
            Succeeded,
            Some(al2023_build.as_str()),
            Some("x86_64/standard/al2023")
        ),
        "{al2023:?}"
    );
    let families: Vec<(Option<String>, String)> = world
        .status()
        .await
        .targets
        .iter()
        .map(|t| (t.os_family.clone(), t.image.id.clone()))
        .collect();
    assert_eq!(
        families,
        [
            (Some("al2".to_owned()), al2_build.clone()),
            (Some("al2023".to_owned()), al2023_build.clone()),
        ]
    );

    // Filters of AL2023 only: the AL2 group has no candidate of its family and stays put.
    world
        .apply(manifest(serde_json::json!({
            "amiFilters": filters(serde_json::json!([
                "amazon-eks-node-al2023-x86_64-standard-1.30-*",
            ])),
            "rollout": {"maxInFlight": 2},
        })))
        .await;
    world.settle(4).await;
    let al2 = world.entry("family-al2").await;
    assert_eq!(al2.phase, Skipped, "{al2:?}");
    let message = al2.message.unwrap_or_default();
    assert!(
        message
            .contains("no eligible candidate is x86_64/standard/al2, the lane of the AMI it runs")
            && message.contains("another architecture, variant or OS family"),
        "{message}"
    );
    assert_eq!(
        world.updates("family-al2").await.len(),
        1,
        "moved once, to AL2"
    );
}

/// A build from before the `os-family` tag, named by the team, whose base the filters no longer
/// match: its family is its base's, read from EC2. Guessing from the cluster's other groups
/// (all AL2023 here) would have moved this AL2 group to AL2023.
#[tokio::test]
async fn a_build_without_the_os_family_tag_is_of_its_bases_family() {
    let world = World::new().await;
    world.publish_al2_september();
    let legacy = world
        .build_for("x86_64", "hardened-node-7", AL2_130_SEP, 600, &[])
        .await;
    world
        .groups_on(&[
            ("legacy-al2", &legacy),
            ("current-al2023", ids::AL2023_130_SEP),
        ])
        .await;
    let al2023_build = world
        .build_for("x86_64", "hardened-node-8", ids::AL2023_130_OCT, 10, &[])
        .await;
    world
        .apply(manifest(serde_json::json!({
            "amiFilters": [
                {"name": "name", "values": ["amazon-eks-node-al2023-x86_64-standard-1.30-*"]},
                {"name": "owner-id", "values": [opsy_testkit::seed::EKS_OWNER]},
            ],
            "rollout": {"maxInFlight": 2},
        })))
        .await;
    world.settle(10).await;
    let current = world.entry("current-al2023").await;
    assert_eq!(
        (current.phase, current.to_image.as_deref()),
        (Succeeded, Some(al2023_build.as_str())),
        "{current:?}"
    );
    let legacy_entry = world.entry("legacy-al2").await;
    assert_eq!(legacy_entry.phase, Skipped, "{legacy_entry:?}");
    let message = legacy_entry.message.unwrap_or_default();
    assert!(
        message
            .contains("no eligible candidate is x86_64/standard/al2, the lane of the AMI it runs"),
        "{message}"
    );
    assert!(world.updates("legacy-al2").await.is_empty());
}

#[tokio::test]
async fn an_ssm_parameter_per_architecture_gives_each_lane_its_base() {
    const PARAMETER: &str = "/aws/service/eks/optimized-ami/${KUBERNETES_VERSION}/amazon-linux-2023/${ARCHITECTURE}/standard/recommended/image_id";
    let world = World::new().await;
    for (architecture, base) in [
        ("x86_64", ids::AL2023_130_OCT),
        ("arm64", ids::AL2023_130_ARM_OCT),
    ] {
        let name = PARAMETER
            .replace("${KUBERNETES_VERSION}", "1.30")
            .replace("${ARCHITECTURE}", architecture);
        world.moto.publish_parameter(REGION, &name, base).unwrap();
    }
    world
        .groups_on(&[
            ("ssm-x86", ids::AL2023_130_SEP),
            ("ssm-arm", ids::AL2023_130_ARM_OCT),
        ])
        .await;
    let x86 = world
        .build_for("x86_64", "hardened-x86", ids::AL2023_130_OCT, 0, &[])
        .await;
    let arm = world
        .build_for("arm64", "hardened-arm", ids::AL2023_130_ARM_OCT, 0, &[])
        .await;
    world
        .apply(manifest(serde_json::json!({
            "amiParameter": PARAMETER,
            "rollout": {"maxInFlight": 2},
        })))
        .await;
    world.settle(10).await;
    assert_eq!(
        world.entry("ssm-x86").await.to_image.as_deref(),
        Some(x86.as_str())
    );
    assert_eq!(
        world.entry("ssm-arm").await.to_image.as_deref(),
        Some(arm.as_str())
    );
    assert_eq!(
        world.phases().await,
        map(&[("ssm-arm", Succeeded), ("ssm-x86", Succeeded)])
    );
}

#[tokio::test]
async fn a_cluster_whose_groups_never_ran_the_ami_records_no_soak_evidence() {
    let world = World::new().await;
    let target = world.managed_ami("hardened-unproven").await;
    world.managed_groups(&["a"]).await;
    // A group without a launch template: EKS chooses its AMI, this operator never moves it.
    world
        .fixture
        .create_node_group(CLUSTER, &NodeGroupSpec::without_template("t"))
        .await
        .unwrap();
    world
        .apply(manifest(serde_json::json!({
            "ami": target, "selfManaged": {"enabled": false}, "exclude": ["a"],
        })))
        .await;
    let phases = reconcile_until(&world, 10, |p| p.get("a") == Some(&Excluded)).await;
    assert_eq!(phases, map(&[("a", Excluded), ("t", Skipped)]));
    world.reconcile().await.unwrap();
    let status = world.status().await;
    let ready = opsy_api::conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(
        ready.status, "True",
        "0 of 0 groups is rolled out: {ready:?}"
    );
    assert!(
        ready.message.ends_with(&format!(
            "; no soak evidence ({}) for {target}: no node group of the cluster moved to it through the health gate",
            evidence_key()
        )),
        "{ready:?}"
    );
    // plan says so too.
    let report = ami_refresh_operator::dry_run::report(
        &world.context().aws,
        &world.api().get("prod-rollout").await.unwrap(),
        Timestamp::now(),
    )
    .await
    .unwrap();
    assert!(
        report.text().contains(&format!(
            "soak evidence: none for {target}: no node group of cluster prod-east would move to it through the health gate"
        )),
        "{}",
        report.text()
    );
    let aws = world.context().aws.region(REGION).await;
    let image = aws
        .describe_images(&opsy_aws::ImageQuery::default().ids([target.as_str()]))
        .await
        .unwrap()[0]
        .clone();
    assert_eq!(
        image.tag(&evidence_key()),
        None,
        "no evidence without nodes"
    );
    assert!(world.events().await.contains(&"NoSoakEvidence".to_owned()));
}
