//! Promotion between environments, against a real Kubernetes control plane and the AWS emulator
//! with two accounts: the managed AMIs live in the account that builds them; the staging and
//! prod clusters run in another, where EC2 shows no tags of a shared AMI. Both AMIRefreshers
//! read the AMIs (and the soak evidence) in the owner account through a role. The clock is the
//! test's: days of soak pass in milliseconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ami_refresh_operator::reconcile::{Context, reconcile};
use jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::events::{Recorder, Reporter},
};
use opsy_api::{AMIRefresher, AMIRefresherStatus, ami_refresher::NodeGroupPhase};
use opsy_aws::{AwsOptions, CallCounter, ClientSet};
use opsy_runtime::metrics::Metrics;
use opsy_testkit::{ControlPlane, Fixture, Moto, NodeGroupSpec, TestNamespace, seed::ids};

const REGION: &str = "us-west-2";
const OWNER_ACCOUNT: &str = "210987654321";
const HOME_ACCOUNT: &str = "123456789012";
/// The role the AMIRefreshers read (and write evidence) through, in the owner account.
const ROLE: &str = "arn:aws:iam::210987654321:role/opsy-ami-owner-access";
/// The role the test arranges the owner account's state with.
const ADMIN: &str = "arn:aws:iam::210987654321:role/test-admin";

struct World {
    ns: TestNamespace,
    moto: Moto,
    /// The account the clusters (and the operator) run in.
    home: Fixture,
    /// The account that builds and owns the managed AMIs.
    owner: Fixture,
    client: Client,
    calls: CallCounter,
    now: Arc<Mutex<Timestamp>>,
    /// AMIs whose nodes never become Ready.
    broken: Mutex<Vec<String>>,
}

impl World {
    async fn new(start: &str) -> Self {
        let ns = ControlPlane::shared()
            .unwrap()
            .namespace("promotion")
            .await
            .unwrap();
        let client = ns.client.clone();
        let moto = Moto::start().unwrap();
        let home = Fixture::new(&moto, REGION).await;
        let owner = Fixture::assuming(&moto, REGION, ADMIN).await;
        for cluster in ["staging", "prod"] {
            home.create_cluster(cluster).await.unwrap();
        }
        for (cluster, group) in [("staging", "s1"), ("prod", "p1"), ("prod", "p2")] {
            home.create_node_group(
                cluster,
                &NodeGroupSpec::with_image(group, ids::AL2023_130_SEP),
            )
            .await
            .unwrap();
        }
        Self {
            ns,
            moto,
            home,
            owner,
            client,
            calls: CallCounter::default(),
            now: Arc::new(Mutex::new(start.parse().unwrap())),
            broken: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap()
    }

    fn set_clock(&self, at: &str) {
        *self.now.lock().unwrap() = at.parse().unwrap();
    }

    fn advance(&self, by: SignedDuration) {
        let mut now = self.now.lock().unwrap();
        *now = now.checked_add(by).unwrap();
    }

    fn context(&self) -> Arc<Context> {
        let now = self.now.clone();
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
            clock: Arc::new(move || *now.lock().unwrap()),
            poll_interval: Duration::from_secs(30),
            slack_api: "http://127.0.0.1:9".into(),
            webhook_addresses: opsy_runtime::context::AddressPolicy::default(),
            failures: Default::default(),
            metrics: Arc::new(Metrics::new(self.calls.clone())),
            build_policy: Default::default(),
            require_class: false,
            namespaces: vec![None],
            outbox: Default::default(),
        })
    }

    fn api(&self) -> Api<AMIRefresher> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Creates or replaces the spec of AMIRefresher `cluster` (named after its cluster).
    async fn apply(&self, cluster: &str, spec: serde_json::Value) {
        let mut full = serde_json::json!({"region": REGION, "clusterName": cluster});
        if let (Some(f), Some(s)) = (full.as_object_mut(), spec.as_object()) {
            f.extend(s.clone());
        }
        let object = serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "AMIRefresher",
            "metadata": {"name": cluster},
            "spec": full,
        });
        self.api()
            .patch(
                cluster,
                &PatchParams::apply("promotion-test").force(),
                &Patch::Apply(object),
            )
            .await
            .unwrap();
    }

    async fn reconcile(&self, cluster: &str) {
        let broken = self.broken.lock().unwrap().clone();
        self.home
            .sync_nodes(&self.client, cluster, &move |image| {
                !broken.iter().any(|b| b == image)
            })
            .await
            .unwrap();
        let amr = self.api().get(cluster).await.unwrap();
        Box::pin(reconcile(Arc::new(amr), self.context()))
            .await
            .unwrap();
    }

    /// Reconciles `cluster` until no group is in flight (at most `limit` times).
    async fn settle(&self, cluster: &str, limit: usize) {
        for _ in 0..limit {
            self.reconcile(cluster).await;
            if !self
                .phases(cluster)
                .await
                .values()
                .any(|p| p.in_flight() || *p == NodeGroupPhase::Pending)
            {
                return;
            }
        }
    }

    async fn status(&self, cluster: &str) -> AMIRefresherStatus {
        self.api()
            .get(cluster)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    async fn phases(&self, cluster: &str) -> BTreeMap<String, NodeGroupPhase> {
        self.status(cluster)
            .await
            .node_groups
            .into_iter()
            .map(|g| (g.name, g.phase))
            .collect()
    }

    fn condition(status: &AMIRefresherStatus, type_: &str) -> (String, String) {
        let c = opsy_api::conditions::find(&status.conditions, type_).unwrap();
        (c.reason.clone(), c.message.clone())
    }

    /// The EKS version updates of the prod cluster's groups.
    async fn prod_updates(&self) -> usize {
        let mut n = 0;
        for group in ["p1", "p2"] {
            n += self
                .home
                .nodegroup_updates("prod", group)
                .await
                .unwrap()
                .iter()
                .filter(|u| u.kind == "VersionUpdate")
                .count();
        }
        n
    }

    /// An AMI the staging cluster's PackerBuilder built in the owner account, created now
    /// (by the test's clock) from `base`, shared with the home account.
    async fn build(&self, name: &str, base: &str) -> String {
        let created = self.now().to_string();
        let id = self
            .owner
            .register_image(
                name,
                &[
                    ("brought-to-you-by", "opsy-the-ami-operator"),
                    ("cluster-name", "staging"),
                    ("created-by", "staging-builder"),
                    ("status", "active"),
                    ("base-ami", base),
                    ("create-timestamp", created.as_str()),
                ],
            )
            .await
            .unwrap();
        self.owner.share_image(&id, HOME_ACCOUNT).await.unwrap();
        id
    }

    /// The tags of `image` as the owner account sees them.
    async fn owner_tags(&self, image: &str) -> BTreeMap<String, String> {
        let images = self
            .owner
            .ec2
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .unwrap()
            .images
            .unwrap_or_default();
        images
            .first()
            .map(|i| {
                i.tags()
                    .iter()
                    .map(|t| {
                        (
                            t.key().unwrap_or_default().to_owned(),
                            t.value().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn filters() -> serde_json::Value {
    serde_json::json!([
        {"name": "name", "values": ["base-al2023-*"]},
        {"name": "owner-id", "values": [OWNER_ACCOUNT]},
    ])
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// Build → staging rollout → 72 hours of soak → prod's Saturday window → prod rollout; then a
/// newer AMI that fails in staging before its soak ends never reaches prod.
#[tokio::test]
async fn prod_takes_an_ami_only_after_its_soak_in_staging_inside_its_window_and_never_a_quarantined_one()
 {
    // Tuesday noon.
    let world = World::new("2026-11-24T12:00:00Z").await;
    let base = world
        .owner
        .register_image("base-al2023-1", &[])
        .await
        .unwrap();
    let first = world.build("hardened-1", &base).await;

    // Without the role, the home account sees no contract tags (and here, not the AMI).
    let prod = serde_json::json!({
        "amiFilters": filters(),
        "acceptFrom": [{"clusterName": "staging"}],
        "rollout": {"maxInFlight": 2},
    });
    world.apply("prod", prod.clone()).await;
    world.reconcile("prod").await;
    let (reason, message) = World::condition(&world.status("prod").await, "Ready");
    assert_eq!(reason, "NoEligibleAmi", "{message}");
    assert!(message.contains("no image matched"), "{message}");

    // With the role and the gates: held back, not yet healthy on staging.
    let mut prod = prod;
    prod["imageOwnerRoleArn"] = ROLE.into();
    prod["promotion"] =
        serde_json::json!({"soakOn": [{"clusterName": "staging", "duration": "72h"}]});
    prod["maintenanceWindows"] = serde_json::json!([{"schedule": "0 2 * * SAT", "duration": "4h", "timeZone": "Europe/Berlin"}]);
    world.apply("prod", prod).await;
    world.reconcile("prod").await;
    let status = world.status("prod").await;
    assert_eq!(status.held_back.len(), 1, "{:?}", status.held_back);
    assert_eq!(status.held_back[0].image, first);
    assert_eq!(status.held_back[0].gate, "SoakOn");
    assert!(
        status.held_back[0]
            .message
            .contains("not yet healthy on staging"),
        "{}",
        status.held_back[0].message
    );
    let (reason, message) = World::condition(&status, "Ready");
    assert_eq!(reason, "NoEligibleAmi");
    assert!(
        message.contains("held back: not yet healthy on staging"),
        "{message}"
    );

    // Staging rolls it out an hour later; the evidence lands in the owner account.
    world.advance(SignedDuration::from_hours(1));
    let staging_done = world.now();
    world
        .apply(
            "staging",
            serde_json::json!({
                "amiFilters": filters(),
                "imageOwnerRoleArn": ROLE,
                "rollout": {"healthTimeout": "10m"},
            }),
        )
        .await;
    world.settle("staging", 8).await;
    assert_eq!(
        world.phases("staging").await,
        BTreeMap::from([("s1".to_owned(), NodeGroupPhase::Succeeded)])
    );
    assert_eq!(
        world
            .owner_tags(&first)
            .await
            .get(&format!("healthy-on/{}/staging", opsy_testkit::ACCOUNT_ID)),
        Some(&staging_done.to_string())
    );

    // Soaking: prod says since when and when it is promotable.
    world.advance(SignedDuration::from_hours(1));
    world.reconcile("prod").await;
    let status = world.status("prod").await;
    let promotable = staging_done + SignedDuration::from_hours(72);
    assert_eq!(
        status.held_back[0].opens.as_ref().map(|t| t.0),
        Some(promotable)
    );
    assert!(
        status.held_back[0]
            .message
            .contains(&format!("healthy on staging since {staging_done}")),
        "{}",
        status.held_back[0].message
    );
    assert_eq!(world.prod_updates().await, 0);

    // Soaked (Friday afternoon), but outside prod's window: nothing starts, status says when.
    world.set_clock("2026-11-27T14:00:00Z");
    world.reconcile("prod").await;
    let status = world.status("prod").await;
    assert!(status.held_back.is_empty(), "{:?}", status.held_back);
    assert_eq!(status.target_image.as_ref().unwrap().id, first);
    let window = status.maintenance_window.clone().unwrap();
    assert!(!window.open);
    // Saturday 02:00 in Berlin (UTC+1 in November).
    assert_eq!(
        window.next_opens.map(|t| t.0),
        Some(ts("2026-11-28T01:00:00Z"))
    );
    let (reason, message) = World::condition(&status, "Progressing");
    assert_eq!(reason, "OutsideMaintenanceWindow", "{message}");
    assert!(
        message.contains("the next opens at 2026-11-28T01:00:00Z"),
        "{message}"
    );
    assert_eq!(world.prod_updates().await, 0);

    // Inside the window, prod rolls out.
    world.set_clock("2026-11-28T01:30:00Z");
    world.settle("prod", 10).await;
    assert_eq!(
        world.phases("prod").await,
        BTreeMap::from([
            ("p1".to_owned(), NodeGroupPhase::Succeeded),
            ("p2".to_owned(), NodeGroupPhase::Succeeded),
        ])
    );
    assert_eq!(world.prod_updates().await, 2);
    assert!(world.status("prod").await.maintenance_window.unwrap().open);

    // A newer build fails in staging (its nodes never become Ready) and is quarantined there,
    // before its soak could end. Prod, inside its window, never takes it.
    world.advance(SignedDuration::from_mins(10));
    let second = world.build("hardened-2", &base).await;
    world.broken.lock().unwrap().push(second.clone());
    world.reconcile("prod").await;
    let status = world.status("prod").await;
    assert_eq!(status.target_image.as_ref().unwrap().id, first);
    assert_eq!(status.held_back[0].image, second);
    assert_eq!(status.held_back[0].gate, "SoakOn");
    let (reason, message) = World::condition(&status, "Ready");
    assert_eq!(reason, "RolledOut");
    assert!(
        message.contains(&format!(
            "newer held back: {second} (SoakOn): not yet healthy on staging"
        )),
        "{message}"
    );
    world.settle("staging", 4).await;
    world.advance(SignedDuration::from_mins(11));
    world.settle("staging", 4).await;
    assert_eq!(
        world.phases("staging").await,
        BTreeMap::from([("s1".to_owned(), NodeGroupPhase::Failed)])
    );
    assert_eq!(
        world
            .owner_tags(&second)
            .await
            .get("status")
            .map(String::as_str),
        Some("quarantined")
    );
    // A week later, inside the next window: prod still runs the first AMI.
    world.set_clock("2026-12-05T01:30:00Z");
    world.settle("prod", 4).await;
    let status = world.status("prod").await;
    assert_eq!(status.target_image.as_ref().unwrap().id, first);
    assert!(status.held_back.is_empty(), "{:?}", status.held_back);
    assert_eq!(world.prod_updates().await, 2);

    // Each call through the role is within the owner account's policy for it (read, soak
    // evidence, quarantine), and the operator's own calls within its policy (AssumeRole on
    // that role included).
    let calls = world.moto.calls_as(ROLE).unwrap();
    opsy_testkit::iam::check_resource_calls("ami-owner-access", &calls, 3).unwrap();
    let calls = world.moto.operator_calls().unwrap();
    // Each refresher assumes the role in a session tagged with its namespace and cluster, which
    // the role's trust policy can check and its permissions name: soak evidence through the
    // role is for the session's own cluster only (checked above, call by call).
    let sessions: std::collections::BTreeSet<(String, String)> = calls
        .iter()
        .filter(|c| c.action == "sts:AssumeRole")
        .map(|c| {
            (
                c.request_tags["kubernetes-namespace"].clone(),
                c.request_tags["eks-cluster-name"].clone(),
            )
        })
        .collect();
    let namespace = world.ns.name.clone();
    assert_eq!(
        sessions,
        [
            (namespace.clone(), "prod".to_owned()),
            (namespace, "staging".to_owned()),
        ]
        .into(),
    );
    assert!(calls.iter().any(|c| c.action == "sts:TagSession"));
    opsy_testkit::iam::check_resource_calls("ami-refresh-operator", &calls, 5).unwrap();
}

/// Min age, never and pin, each explained with when (if ever) it opens.
#[tokio::test]
async fn min_age_never_and_pin_hold_candidates_back_and_say_why() {
    let world = World::new("2026-11-24T12:00:00Z").await;
    let base = world
        .owner
        .register_image("base-al2023-1", &[])
        .await
        .unwrap();
    let older = world.build("hardened-1", &base).await;
    world.advance(SignedDuration::from_hours(2));
    let newer = world.build("hardened-2", &base).await;
    let spec = |promotion: serde_json::Value| {
        serde_json::json!({
            "amiFilters": filters(),
            "acceptFrom": [{"clusterName": "staging"}],
            "imageOwnerRoleArn": ROLE,
            "promotion": promotion,
            "suspend": true,
        })
    };
    world
        .apply("prod", spec(serde_json::json!({"minAge": "24h"})))
        .await;
    world.reconcile("prod").await;
    let status = world.status("prod").await;
    let held: Vec<(String, String)> = status
        .held_back
        .iter()
        .map(|h| (h.image.clone(), h.gate.clone()))
        .collect();
    assert_eq!(
        held,
        [
            (newer.clone(), "MinAge".to_owned()),
            (older.clone(), "MinAge".to_owned())
        ]
    );
    assert_eq!(
        status.held_back[1].opens.as_ref().map(|t| t.0),
        Some(ts("2026-11-25T12:00:00Z"))
    );
    // A day later the older one is old enough.
    world.set_clock("2026-11-25T13:00:00Z");
    world.reconcile("prod").await;
    let status = world.status("prod").await;
    assert_eq!(status.target_image.as_ref().unwrap().id, older);
    assert_eq!(status.held_back.len(), 1);
    assert!(
        status.held_back[0]
            .message
            .contains("promotable 2026-11-25T14:00:00Z"),
        "{}",
        status.held_back[0].message
    );

    world
        .apply(
            "prod",
            spec(serde_json::json!({"never": [newer.clone()], "minAge": "1h"})),
        )
        .await;
    world.reconcile("prod").await;
    let status = world.status("prod").await;
    assert_eq!(status.target_image.as_ref().unwrap().id, older);
    assert_eq!(status.held_back[0].gate, "Never");
    assert!(status.held_back[0].opens.is_none());

    world
        .apply("prod", spec(serde_json::json!({"pin": older.clone()})))
        .await;
    world.advance(SignedDuration::from_hours(48));
    world.reconcile("prod").await;
    let status = world.status("prod").await;
    assert_eq!(status.target_image.as_ref().unwrap().id, older);
    assert_eq!(status.held_back[0].gate, "Pin");
    assert!(
        status.held_back[0]
            .message
            .contains(&format!("spec.promotion.pin is {older}")),
        "{}",
        status.held_back[0].message
    );
}
