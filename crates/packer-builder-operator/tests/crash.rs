//! Crash at every step, for the PackerBuilder: a whole build with distribution and retention
//! runs once to count the operator's mutating AWS requests M; then, for every N in 1..=M and
//! both halves (the N-th request carried out by AWS, or lost before AWS saw it), it runs again
//! from scratch, the operator crashing at the N-th request (the reconcile is dropped where it
//! stands, its request never answered) and starting afresh (a new context: nothing carried over
//! but what the cluster and AWS hold), to the end. After every run the invariants of
//! `opsy_testkit::invariants` hold and the end state is the one a run without a crash reaches:
//! one build, its AMI active and copied once, the AMI it replaced deprecated, the AMI past
//! retention deregistered with its snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
    runtime::events::{Recorder, Reporter},
};
use opsy_api::PackerBuilder;
use opsy_aws::{AwsOptions, CallCounter, ClientSet};
use opsy_runtime::metrics::Metrics;
use opsy_testkit::{
    ACCOUNT_ID, ControlPlane, Fixture, Moto,
    crash::{self, Scenario},
    invariants, kubelet,
};
use packer_builder_operator::reconcile::{Context, reconcile};

const REGION: &str = "us-west-2";
const EAST: &str = "us-east-1";
const CONSUMER: &str = "210987654321";
const CLUSTER: &str = "prod-east";
const NAME: &str = "al2023-hardened";
const REPO: &str = "https://github.com/example-org/eks-node-images";

struct World {
    moto: Moto,
    home: Fixture,
    east: Fixture,
    client: Client,
    namespace: String,
    /// The managed AMI the build replaces (built from the previous base, active).
    replaced: String,
    /// A deprecated managed AMI past retention, and its snapshot.
    expired: (String, String),
    /// The AMIs the builds of this run produced, by Job.
    built: Vec<(String, String)>,
}

impl World {
    async fn new() -> Self {
        let moto = Moto::start().unwrap();
        let home = Fixture::new(&moto, REGION).await;
        let east = Fixture::new(&moto, EAST).await;
        let ns = ControlPlane::shared()
            .unwrap()
            .namespace("pb-crash")
            .await
            .unwrap();
        Self {
            moto,
            home,
            east,
            client: ns.client.clone(),
            namespace: ns.name.clone(),
            replaced: String::new(),
            expired: Default::default(),
            built: Vec::new(),
        }
    }

    fn builders(&self) -> Api<PackerBuilder> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A context as a newly started operator process builds it.
    fn context(&self) -> Arc<Context> {
        let calls = CallCounter::default();
        Arc::new(Context {
            client: self.client.clone(),
            aws: ClientSet::with_counter(AwsOptions::emulator(self.moto.endpoint()), calls.clone()),
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: "packer-builder-operator".into(),
                    instance: None,
                },
            ),
            clock: Arc::new(Timestamp::now),
            poll_interval: Duration::from_secs(30),
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

    /// A managed AMI of this PackerBuilder, as an earlier build left it; with its snapshot
    /// marked as the operator marks the snapshots of what it builds.
    async fn managed(&self, name: &str, status: &str, age: SignedDuration, base: &str) -> String {
        let created = (Timestamp::now() - age).to_string();
        let id = self
            .home
            .register_image(
                name,
                &[
                    ("brought-to-you-by", "opsy-the-ami-operator"),
                    ("cluster-name", CLUSTER),
                    ("created-by", NAME),
                    ("created-by-namespace", self.namespace.as_str()),
                    ("packer-repo", REPO),
                    ("packer-repo-branch", "main"),
                    ("status", status),
                    ("base-ami", base),
                    ("create-timestamp", created.as_str()),
                ],
            )
            .await
            .unwrap();
        let snapshot = self.snapshot_of(&id).await;
        self.home
            .ec2
            .create_tags()
            .resources(&snapshot)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("brought-to-you-by")
                    .value("opsy-the-ami-operator")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        id
    }

    async fn snapshot_of(&self, image: &str) -> String {
        let facts = self.moto.facts().unwrap();
        facts
            .images
            .iter()
            .find(|i| i.id == image)
            .and_then(|i| i.snapshots.first().cloned())
            .unwrap()
    }

    /// Whether `snapshot` still exists in the home region.
    async fn snapshot_exists(&self, snapshot: &str) -> bool {
        self.home
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .send()
            .await
            .unwrap()
            .snapshots()
            .iter()
            .any(|s| s.snapshot_id() == Some(snapshot))
    }

    async fn pb(&self) -> PackerBuilder {
        self.builders().get(NAME).await.unwrap()
    }

    /// The AMI of this run's build, once there is one.
    fn built_image(&self) -> Option<&str> {
        self.built.first().map(|(_, ami)| ami.as_str())
    }
}

impl Scenario for World {
    fn moto(&self) -> &Moto {
        &self.moto
    }

    async fn reset(&mut self) {
        self.moto.clear_crash().unwrap();
        self.moto.reset().unwrap();
        let ns = ControlPlane::shared()
            .unwrap()
            .namespace("pb-crash")
            .await
            .unwrap();
        self.client = ns.client.clone();
        self.namespace = ns.name.clone();
        self.built.clear();
        // Two bases in each region; the managed AMIs were built from the older one.
        let old_base = self
            .home
            .register_image("base-al2023-v1", &[])
            .await
            .unwrap();
        self.home
            .register_image("base-al2023-v2", &[])
            .await
            .unwrap();
        self.east
            .register_image("base-al2023-v1", &[])
            .await
            .unwrap();
        self.east
            .register_image("base-al2023-v2", &[])
            .await
            .unwrap();
        self.replaced = self
            .managed(
                "al2023-hardened-old",
                "active",
                SignedDuration::from_hours(24 * 10),
                &old_base,
            )
            .await;
        let expired = self
            .managed(
                "al2023-hardened-older",
                "deprecated",
                SignedDuration::from_hours(24 * 40),
                &old_base,
            )
            .await;
        self.expired = (expired.clone(), self.snapshot_of(&expired).await);
        let pb: PackerBuilder = serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "PackerBuilder",
            "metadata": {"name": NAME},
            "spec": {
                "region": REGION,
                "clusterName": CLUSTER,
                "amiFilters": [
                    {"name": "name", "values": ["base-al2023-*"]},
                    {"name": "owner-id", "values": [ACCOUNT_ID]},
                ],
                "timeOuts": {"expiresIn": "30d", "controllerTimer": "5m"},
                "builder": {
                    "repoURL": REPO,
                    "branch": "main",
                    "dir": "packer/al2023",
                    "commands": [{"subCommand": "build", "args": ["-force"], "onError": "cleanup"}],
                },
                "distribution": {
                    "regions": [{"region": EAST}],
                    "shareWith": [CONSUMER],
                },
                "retention": {"delete": true, "keepDeprecated": 1, "minAge": "1d"},
            },
        }))
        .unwrap();
        self.builders()
            .create(&PostParams::default(), &pb)
            .await
            .unwrap();
    }

    /// Plays Packer and the kubelet: a build Job that is still running produces its AMI and
    /// ends with Packer's artifact line.
    async fn between(&mut self) {
        for job in self
            .jobs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            let name = job.name_any();
            if self.built.iter().any(|(j, _)| *j == name) {
                continue;
            }
            let ami = self
                .home
                .register_image(&format!("{NAME}-{}", self.built.len() + 1), &[])
                .await
                .unwrap();
            kubelet::finish_build_job(
                &self.client,
                &self.namespace,
                &name,
                0,
                &kubelet::artifact_line(REGION, &ami),
            )
            .await
            .unwrap();
            self.built.push((name, ami));
        }
    }

    async fn step(&self) {
        // An error is reported on the object and retried by the next step.
        let _ = reconcile(Arc::new(self.pb().await), self.context()).await;
    }

    /// Nothing of this scenario runs on AWS by itself (a copy is available when next asked).
    async fn downtime(&mut self) {}

    async fn done(&self) -> bool {
        let Some(built) = self.built_image() else {
            return false;
        };
        let status = self.pb().await.status.unwrap_or_default();
        let facts = self.moto.facts().unwrap();
        let shared = |d: &opsy_api::packer_builder::ImageCopy| {
            d.state == "available" && d.shared_with == [CONSUMER]
        };
        status.active_image.as_ref().map(|i| i.id.as_str()) == Some(built)
            && status.distribution.len() == 2
            && status.distribution.iter().all(shared)
            && status.distribution[0].image_id == built
            && !facts.images.iter().any(|i| i.id == self.expired.0)
    }

    async fn violations(&self) -> Vec<String> {
        let mut scope = invariants::Scope::new(&self.moto, self.client.clone(), &self.namespace);
        scope.built = self.built.iter().map(|(_, ami)| ami.clone()).collect();
        let mut out = invariants::violations(&scope).await.unwrap();
        let facts = self.moto.facts().unwrap();
        let status_of = |id: &str| {
            facts
                .images
                .iter()
                .find(|i| i.id == id)
                .and_then(|i| i.tags.get("status").cloned())
        };
        if self.built.len() != 1 {
            out.push(format!("one build expected: {:?}", self.built));
        }
        let built = self.built_image().unwrap_or_default();
        if status_of(built).as_deref() != Some("active") {
            out.push(format!("{built}, built, is {:?}", status_of(built)));
        }
        if status_of(&self.replaced).as_deref() != Some("deprecated") {
            out.push(format!(
                "{}, replaced, is {:?}",
                self.replaced,
                status_of(&self.replaced)
            ));
        }
        // One active managed AMI per region: the build, and its copy.
        for region in [REGION, EAST] {
            let active: Vec<&str> = facts
                .images
                .iter()
                .filter(|i| i.region == region)
                .filter(|i| i.tags.get("created-by").map(String::as_str) == Some(NAME))
                .filter(|i| i.tags.get("status").map(String::as_str) == Some("active"))
                .map(|i| i.id.as_str())
                .collect();
            if active.len() != 1 {
                out.push(format!("{region}: active managed AMIs {active:?}"));
            }
        }
        if self.snapshot_exists(&self.expired.1).await {
            out.push(format!(
                "{} was deregistered but its snapshot {} is left",
                self.expired.0, self.expired.1
            ));
        }
        out
    }
}

async fn enumerate(carried_out: bool) {
    let mut world = World::new().await;
    crash::enumerate(&mut world, "PackerBuilder build", carried_out, 40).await;
}

#[tokio::test]
async fn a_build_survives_a_crash_after_each_change() {
    enumerate(true).await;
}

#[tokio::test]
async fn a_build_survives_each_change_lost_in_a_crash() {
    enumerate(false).await;
}
