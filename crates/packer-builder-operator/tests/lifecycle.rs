//! The PackerBuilder reconciler against a real Kubernetes control plane (the Job controller
//! creates the build Pods) and the AWS emulator. The test plays the kubelet: it registers the
//! AMI a build would produce and ends the build Pod with Packer's artifact line as its
//! termination message. Every reconcile gets a fresh context, as after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::{batch::v1::Job, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, PostParams},
    runtime::events::{Recorder, Reporter},
};
use opsy_api::{PackerBuilder, PackerBuilderStatus};
use opsy_aws::{AwsOptions, CallCounter, ClientSet, ImageQuery};
use opsy_runtime::metrics::Metrics;
use opsy_testkit::{ACCOUNT_ID, ControlPlane, Fixture, Moto, TestNamespace, kubelet};
use packer_builder_operator::reconcile::{Context, reconcile};

const REGION: &str = "us-west-2";

struct World {
    ns: TestNamespace,
    moto: Moto,
    fixture: Fixture,
    client: Client,
    now: Timestamp,
    slack_api: String,
    /// Every AWS call of every (fresh) context, for the IAM check.
    calls: CallCounter,
    /// Sends what reconciles queue, shared by every context of the test.
    outbox: Arc<opsy_runtime::outbox::Outbox>,
}

fn pb_manifest(extra: serde_json::Value) -> PackerBuilder {
    let mut spec = serde_json::json!({
        "region": REGION,
        "clusterName": "prod-east",
        "amiFilters": [
            {"name": "name", "values": ["base-al2023-*"]},
            {"name": "owner-id", "values": [ACCOUNT_ID]},
        ],
        "timeOuts": {"expiresIn": "30d", "controllerTimer": "5m"},
        "builder": {
            "repoURL": "https://github.com/example-org/eks-node-images",
            "branch": "main",
            "dir": "packer/al2023",
            "commands": [{"subCommand": "build", "args": ["-force"], "onError": "cleanup"}],
        },
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    let pb: PackerBuilder = serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "PackerBuilder",
        "metadata": {"name": "al2023-hardened"},
        "spec": spec,
    }))
    .unwrap();
    pb
}

impl World {
    async fn new(pb: PackerBuilder) -> Self {
        let ns = ControlPlane::shared()
            .unwrap()
            .namespace("lifecycle")
            .await
            .unwrap();
        let client = ns.client.clone();
        Api::<PackerBuilder>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &pb)
            .await
            .unwrap();
        let moto = Moto::start().unwrap();
        let fixture = Fixture::new(&moto, REGION).await;
        Self {
            ns,
            calls: CallCounter::default(),
            outbox: Arc::default(),
            moto,
            fixture,
            client,
            now: Timestamp::now(),
            slack_api: "http://127.0.0.1:9".into(),
        }
    }

    /// A fresh context, as a restarted operator would build it.
    fn context(&self) -> Arc<Context> {
        self.context_caching_for(Duration::from_millis(1))
    }

    /// A fresh context whose `DescribeImages` answers are shared for `ttl`.
    fn context_caching_for(&self, ttl: Duration) -> Arc<Context> {
        let options = AwsOptions {
            image_cache_ttl: ttl,
            ..AwsOptions::emulator(self.moto.endpoint())
        };
        let now = self.now;
        Arc::new(Context {
            client: self.client.clone(),
            aws: ClientSet::with_counter(options, self.calls.clone()),
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: "packer-builder-operator".into(),
                    instance: None,
                },
            ),
            clock: Arc::new(move || now),
            poll_interval: Duration::from_secs(30),
            slack_api: self.slack_api.clone(),
            // Webhook tests post to a local server.
            webhook_addresses: opsy_runtime::context::AddressPolicy {
                loopback: true,
                ..Default::default()
            },
            failures: Default::default(),
            metrics: Arc::new(Metrics::new(self.calls.clone())),
            build_policy: Default::default(),
            require_class: false,
            namespaces: vec![None],
            outbox: self.outbox.clone(),
        })
    }

    fn builders(&self) -> Api<PackerBuilder> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn pb(&self) -> PackerBuilder {
        self.builders().get("al2023-hardened").await.unwrap()
    }

    async fn status(&self) -> PackerBuilderStatus {
        self.pb().await.status.unwrap_or_default()
    }

    async fn reconcile(&self) {
        reconcile(Arc::new(self.pb().await), self.context())
            .await
            .unwrap();
        // What the reconcile queued has been sent (or has failed) before the test looks.
        self.outbox.idle().await;
        self.invariants().await;
    }

    /// The invariants every run keeps (`opsy_testkit::invariants`), checked after each
    /// reconcile.
    async fn invariants(&self) {
        let scope =
            opsy_testkit::invariants::Scope::new(&self.moto, self.client.clone(), &self.ns.name);
        opsy_testkit::invariants::check(&scope).await;
    }

    async fn job_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .jobs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|j| j.name_any())
            .collect();
        names.sort();
        names
    }

    async fn events(&self) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|e| e.reason.clone().unwrap_or_default())
            .collect()
    }

    /// Creates (or replaces) Secret `name` with `data`.
    async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        use k8s_openapi::{ByteString, api::core::v1::Secret};
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns.name);
        let _ = secrets.delete(name, &Default::default()).await;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// Replaces `spec.maintenanceWindows`.
    async fn windows(&self, windows: serde_json::Value) {
        self.edit(|spec| spec.maintenance_windows = serde_json::from_value(windows).unwrap())
            .await;
    }

    /// Status is lost (the object restored from a backup without it).
    async fn lose_status(&self) {
        self.builders()
            .patch_status(
                "al2023-hardened",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"status": null})),
            )
            .await
            .unwrap();
    }

    /// Changes the spec as `change` says; returns the PackerBuilder as written.
    async fn edit(&self, change: impl FnOnce(&mut opsy_api::PackerBuilderSpec)) -> PackerBuilder {
        let mut pb = self.pb().await;
        change(&mut pb.spec);
        self.builders()
            .replace("al2023-hardened", &PostParams::default(), &pb)
            .await
            .unwrap()
    }

    /// Registers a base image in this account (what the filters look for).
    async fn publish_base(&self, name: &str) -> String {
        self.fixture.register_image(name, &[]).await.unwrap()
    }

    /// Plays the kubelet: the Job's pod ran Packer, which printed `output`; the Job is done.
    async fn finish_job(&self, job: &str, exit_code: i32, output: &str) {
        kubelet::finish_build_job(&self.client, &self.ns.name, job, exit_code, output)
            .await
            .unwrap();
    }

    /// The build "produced" an AMI: registered in EC2 like Packer would.
    /// The AMI a build registers, tagged as the sample Packer project tags it (the operator may
    /// write the contract's tags only on an AMI so tagged).
    async fn build_image(&self, name: &str) -> String {
        self.fixture
            .register_image(name, &[("opsy-packer-build", "true")])
            .await
            .unwrap()
    }

    async fn image_tags(&self, id: &str) -> std::collections::BTreeMap<String, String> {
        let aws = self.context().aws.region(REGION).await;
        aws.describe_images(&ImageQuery::default().ids([id]))
            .await
            .unwrap()[0]
            .tags
            .clone()
    }
}

fn artifact(ami: &str) -> String {
    kubelet::artifact_line(REGION, ami)
}

#[tokio::test]
async fn full_lifecycle_build_tag_rebuild_on_new_base_and_deprecate() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    let base1 = world.publish_base("base-al2023-v1").await;

    // 1. No managed AMI: exactly one Job, with the expected spec.
    world.reconcile().await;
    let jobs = world.job_names().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = world.jobs().get(&jobs[0]).await.unwrap();
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let init: Vec<&str> = pod
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["git-sync", "packer-init", "packer-validate"]);
    let build = &pod.containers[0];
    let args = build.args.as_ref().unwrap();
    assert_eq!(
        &args[..4],
        ["packer", "build", "-machine-readable", "-color=false"]
    );
    assert!(args.contains(&format!("ami_id={base1}")));
    assert!(args.contains(&"-force".to_owned()));
    assert_eq!(
        build.working_dir.as_deref(),
        Some("/workspace/repo/packer/al2023")
    );
    let status = world.status().await;
    assert_eq!(status.job_status.as_deref(), Some("running"));
    assert_eq!(status.job_name.as_deref(), Some(jobs[0].as_str()));
    assert_eq!(
        status.last_run_base_image_id.as_deref(),
        Some(base1.as_str())
    );
    assert_eq!(status.observed_generation, Some(1));
    assert!(
        status
            .command
            .as_deref()
            .unwrap()
            .starts_with("packer init . && packer validate -var ami_id=")
    );

    // 2. While it runs, nothing new starts.
    world.reconcile().await;
    assert_eq!(world.job_names().await, jobs);

    // 3. The build finishes with an artifact line for a real AMI.
    let built1 = world.build_image("al2023-hardened-1").await;
    world.finish_job(&jobs[0], 0, &artifact(&built1)).await;
    world.reconcile().await;
    let tags = world.image_tags(&built1).await;
    let uid = world.pb().await.uid().unwrap();
    for (key, value) in [
        ("brought-to-you-by", "opsy-the-ami-operator"),
        ("cluster-name", "prod-east"),
        ("created-by", "al2023-hardened"),
        (
            "packer-repo",
            "https://github.com/example-org/eks-node-images",
        ),
        ("packer-repo-branch", "main"),
        ("status", "active"),
        ("base-ami", base1.as_str()),
        ("build-id", uid.as_str()),
    ] {
        assert_eq!(tags.get(key).map(String::as_str), Some(value), "tag {key}");
    }
    assert!(tags.contains_key("create-timestamp") && tags.contains_key("job-id"));
    let status = world.status().await;
    assert_eq!(
        status.last_run_built_image_id.as_deref(),
        Some(built1.as_str())
    );
    assert_eq!(status.active_image.as_ref().unwrap().id, built1);
    assert_eq!(status.job_status.as_deref(), Some("completed"));
    assert_eq!(status.history.len(), 1);
    let ready = opsy_api::conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
    let events = world.events().await;
    assert!(
        events.contains(&"BuildStarted".to_owned())
            && events.contains(&"BuildSucceeded".to_owned()),
        "{events:?}"
    );

    // 4. Steady state: nothing is created.
    world.reconcile().await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 1);
    assert_eq!(world.status().await.active_image.unwrap().id, built1);

    // 5. A newer base AMI: one rebuild, and the old AMI is deprecated when the new one lands.
    let base2 = world.publish_base("base-al2023-v2").await;
    world.reconcile().await;
    world.reconcile().await;
    let jobs = world.job_names().await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let second = world.status().await.job_name.unwrap();
    assert_eq!(
        world.status().await.last_run_base_image_id.as_deref(),
        Some(base2.as_str())
    );
    let built2 = world.build_image("al2023-hardened-2").await;
    world.finish_job(&second, 0, &artifact(&built2)).await;
    world.reconcile().await;
    assert_eq!(
        world
            .image_tags(&built2)
            .await
            .get("status")
            .map(String::as_str),
        Some("active")
    );
    assert_eq!(
        world
            .image_tags(&built2)
            .await
            .get("base-ami")
            .map(String::as_str),
        Some(base2.as_str())
    );
    assert_eq!(
        world
            .image_tags(&built1)
            .await
            .get("status")
            .map(String::as_str),
        Some("deprecated")
    );
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 2);
    let status = world.status().await;
    assert_eq!(status.history.len(), 2);
    assert_eq!(
        status.history[0].built_image_id.as_deref(),
        Some(built2.as_str())
    );
    assert_eq!(
        status.history[1].built_image_id.as_deref(),
        Some(built1.as_str())
    );

    // Every AWS call the reconciler made is allowed by the operator's IAM policy.
    let calls = world.calls.snapshot();
    let called = calls
        .keys()
        .map(|(service, operation, _)| (*service, *operation));
    opsy_testkit::iam::check_calls("packer-builder-operator", called, 3).unwrap();
    // … on the resources it acted on, with their tags and the tags it wrote (as the emulator
    // saw each request).
    let calls = world.moto.operator_calls().unwrap();
    opsy_testkit::iam::check_resource_calls("packer-builder-operator", &calls, 3).unwrap();
}

#[tokio::test]
async fn a_lost_status_write_does_not_start_a_second_build() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 1);
    // As if the operator crashed right after creating the Job: status never recorded it.
    let mut pb = world.pb().await;
    pb.status = Some(PackerBuilderStatus::default());
    world
        .builders()
        .replace_status("al2023-hardened", &PostParams::default(), &pb)
        .await
        .unwrap();
    world.reconcile().await;
    world.reconcile().await;
    let jobs = world.job_names().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        world.status().await.job_name.as_deref(),
        Some(jobs[0].as_str())
    );
}

#[tokio::test]
async fn failures_count_up_to_the_limit_and_a_spec_change_resumes() {
    let world = World::new(pb_manifest(serde_json::json!({"maxFailedBuilds": 2}))).await;
    world.publish_base("base-al2023-v1").await;
    for attempt in 1..=2 {
        world.reconcile().await;
        let job = world.status().await.job_name.unwrap();
        world.finish_job(&job, 1, "Error: plugin not found").await;
        world.reconcile().await;
        let status = world.status().await;
        assert_eq!(status.failed_job_count, attempt);
        assert_eq!(status.job_status.as_deref(), Some("failed"));
    }
    assert_eq!(world.job_names().await.len(), 2);
    // The limit stops further builds.
    world.reconcile().await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 2);
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "FailureLimitReached");
    assert!(
        degraded.message.contains("spec.maxFailedBuilds"),
        "{}",
        degraded.message
    );
    assert!(
        world
            .events()
            .await
            .contains(&"FailureLimitReached".to_owned())
    );

    // A spec change (new generation) resumes building.
    let mut pb = world.pb().await;
    pb.spec.builder.branch = "fix-plugins".into();
    world
        .builders()
        .replace("al2023-hardened", &PostParams::default(), &pb)
        .await
        .unwrap();
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 3);
    assert_eq!(world.status().await.failed_job_count, 0);
}

#[tokio::test]
async fn an_eligible_upstream_tagged_ami_is_adopted_without_a_build() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    let base = world.publish_base("base-al2023-v1").await;
    let created = "2024-11-01T00:00:00Z";
    let existing = world
        .fixture
        .register_image(
            "built-by-the-go-operator",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", "prod-east"),
                ("created-by", "al2023-hardened"),
                (
                    "packer-repo",
                    "https://github.com/example-org/eks-node-images",
                ),
                ("packer-repo-branch", "main"),
                ("status", "active"),
                ("base-ami", base.as_str()),
                ("create-timestamp", created),
            ],
        )
        .await
        .unwrap();
    let mut world = world;
    world.now = "2024-11-10T00:00:00Z".parse().unwrap();
    world.reconcile().await;
    assert!(world.job_names().await.is_empty(), "adopted, not rebuilt");
    let status = world.status().await;
    let active = status.active_image.unwrap();
    assert_eq!(active.id, existing);
    assert_eq!(
        active.created.unwrap().0.to_string(),
        "2024-11-01T00:00:00Z",
        "life not extended"
    );
    assert_eq!(
        world
            .image_tags(&existing)
            .await
            .get("create-timestamp")
            .map(String::as_str),
        Some(created)
    );
    assert!(world.events().await.contains(&"Adopted".to_owned()));

    // Past its expiry, it is rebuilt.
    world.now = "2024-12-05T00:00:00Z".parse().unwrap();
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 1);
    assert!(
        world
            .status()
            .await
            .last_run_message
            .unwrap()
            .contains("expired at 2024-12-01T00:00:00Z")
    );
}

#[tokio::test]
async fn filters_that_match_nothing_are_reported() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "NoBaseImage");
    assert!(degraded.message.contains("spec.amiFilters"));
}

#[tokio::test]
async fn a_needed_build_waits_for_a_maintenance_window() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    let hour = world.now.to_zoned(jiff::tz::TimeZone::UTC).hour();
    world
        .windows(serde_json::json!([
            {"schedule": format!("0 {} * * *", (hour + 3) % 24), "duration": "1h"}
        ]))
        .await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let status = world.status().await;
    let window = status.maintenance_window.clone().unwrap();
    assert!(!window.open);
    let next = window.next_opens.unwrap().0;
    assert!(next > world.now, "{next}");
    assert_eq!(
        next.to_zoned(jiff::tz::TimeZone::UTC).hour(),
        (hour + 3) % 24
    );
    let ready = opsy_api::conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.reason, "OutsideMaintenanceWindow");
    assert!(
        ready
            .message
            .contains("a build is needed (no managed AMI exists")
            && ready.message.contains(&format!("the next opens at {next}")),
        "{}",
        ready.message
    );
    assert!(
        world
            .events()
            .await
            .contains(&"OutsideMaintenanceWindow".to_owned())
    );

    // A window that is open now: the build starts.
    world
        .windows(serde_json::json!([
            {"schedule": format!("0 {hour} * * *"), "duration": "2h"}
        ]))
        .await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 1);
    assert!(world.status().await.maintenance_window.unwrap().open);
}

#[tokio::test]
async fn retention_deregisters_only_unused_amis_past_retention_with_their_marked_snapshots() {
    let mut world = World::new(pb_manifest(serde_json::json!({
        "retention": {"delete": true, "keepDeprecated": 1, "minAge": "1d"},
    })))
    .await;
    world.now = "2026-11-29T00:00:00Z".parse().unwrap();
    let base = world.publish_base("base-al2023-v1").await;
    let managed = |name: &'static str, status: &'static str, created: &'static str| {
        let fixture = world.fixture.clone();
        let base = base.clone();
        async move {
            fixture
                .register_image(
                    name,
                    &[
                        ("brought-to-you-by", "opsy-the-ami-operator"),
                        ("cluster-name", "prod-east"),
                        ("created-by", "al2023-hardened"),
                        (
                            "packer-repo",
                            "https://github.com/example-org/eks-node-images",
                        ),
                        ("packer-repo-branch", "main"),
                        ("status", status),
                        ("base-ami", base.as_str()),
                        ("create-timestamp", created),
                    ],
                )
                .await
                .unwrap()
        }
    };
    let active = managed("active", "active", "2026-11-28T00:00:00Z").await;
    let rollback = managed("rollback", "deprecated", "2026-11-20T00:00:00Z").await;
    let young = managed("young", "quarantined", "2026-11-28T12:00:00Z").await;
    let unused = managed("unused", "deprecated", "2026-11-10T00:00:00Z").await;
    let unmarked = managed("unmarked", "deprecated", "2026-11-09T00:00:00Z").await;
    let in_template = managed("in-template", "deprecated", "2026-11-08T00:00:00Z").await;
    let in_instance = managed("in-instance", "deprecated", "2026-11-07T00:00:00Z").await;
    let in_config = managed("in-config", "deprecated", "2026-11-06T00:00:00Z").await;
    let shared = managed("shared", "deprecated", "2026-11-05T00:00:00Z").await;
    let protected = managed("protected", "deprecated", "2026-11-04T00:00:00Z").await;
    let pinned = managed("pinned", "deprecated", "2026-11-03T00:00:00Z").await;
    let rolled_back_to = managed("rolled-back-to", "deprecated", "2026-11-02T00:00:00Z").await;
    // AMIRefreshers name two of them: one in its spec, one as a group's rollback image.
    let refreshers: Api<opsy_api::AMIRefresher> =
        Api::namespaced(world.client.clone(), &world.ns.name);
    let refresher: opsy_api::AMIRefresher = serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "AMIRefresher",
        "metadata": {"name": "prod-pinned"},
        "spec": {"region": REGION, "clusterName": "prod-east", "ami": pinned, "expiresIn": "30d"},
    }))
    .unwrap();
    refreshers
        .create(&PostParams::default(), &refresher)
        .await
        .unwrap();
    refreshers
        .patch_status(
            "prod-pinned",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": {"nodeGroups": [
                {"name": "web", "kind": "Managed", "phase": "Succeeded", "fromImage": rolled_back_to, "toImage": pinned},
            ]}})),
        )
        .await
        .unwrap();
    world
        .fixture
        .ec2
        .enable_image_deregistration_protection()
        .image_id(&protected)
        .send()
        .await
        .unwrap();

    // Users: an old version of a launch template (its latest runs another AMI), a stopped
    // instance, a launch configuration; and a share with another account.
    let template = world
        .fixture
        .create_launch_template("web", Some(&in_template))
        .await
        .unwrap();
    world
        .fixture
        .ec2
        .create_launch_template_version()
        .launch_template_id(&template.id)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(&active)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let instance = world
        .fixture
        .ec2
        .run_instances()
        .image_id(&in_instance)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances
        .unwrap()[0]
        .instance_id
        .clone()
        .unwrap();
    world
        .fixture
        .ec2
        .stop_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    world
        .fixture
        .autoscaling
        .create_launch_configuration()
        .launch_configuration_name("legacy-web")
        .image_id(&in_config)
        .instance_type("m5.large")
        .send()
        .await
        .unwrap();
    world
        .fixture
        .share_image(&shared, "210987654321")
        .await
        .unwrap();
    // What a build marks: the snapshot of `unused` is the operator's; that of `unmarked` is
    // not (an AMI built before snapshots were marked).
    let snapshot_of = |image: String| {
        let ec2 = world.fixture.ec2.clone();
        async move {
            ec2.describe_images()
                .image_ids(image)
                .send()
                .await
                .unwrap()
                .images
                .unwrap()[0]
                .block_device_mappings()
                .iter()
                .find_map(|m| m.ebs.as_ref().and_then(|e| e.snapshot_id.clone()))
                .unwrap()
        }
    };
    let unused_snapshot = snapshot_of(unused.clone()).await;
    let unmarked_snapshot = snapshot_of(unmarked.clone()).await;
    world
        .fixture
        .ec2
        .create_tags()
        .resources(&unused_snapshot)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("brought-to-you-by")
                .value("opsy-the-ami-operator")
                .build(),
        )
        .send()
        .await
        .unwrap();

    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.active_image.unwrap().id, active);
    let fates: Vec<(String, String, String)> = status
        .retention
        .iter()
        .map(|f| (f.image.clone(), f.fate.clone(), f.reason.clone()))
        .collect();
    let fate = |id: &str| fates.iter().find(|f| f.0 == id).unwrap().clone();
    assert_eq!(
        fate(&rollback).2,
        "rollback candidate 1 of 1 (retention.keepDeprecated)"
    );
    assert_eq!(fate(&young).2, "younger than retention.minAge 1d");
    assert_eq!(fate(&unused).1, "Deregistered", "{fates:?}");
    assert_eq!(fate(&unmarked).1, "Deregistered", "{fates:?}");
    assert!(
        fate(&unmarked)
            .2
            .contains(&format!("kept {unmarked_snapshot} (not marked")),
        "{fates:?}"
    );
    assert_eq!(
        fate(&in_template).2,
        format!("in use by launch template {} (web) version 1", template.id)
    );
    assert_eq!(
        fate(&in_instance).2,
        format!("in use by instance {instance} (stopped)")
    );
    assert_eq!(
        fate(&in_config).2,
        "in use by launch configuration legacy-web"
    );
    assert!(
        fate(&shared).2.starts_with("shared with 210987654321"),
        "{fates:?}"
    );
    assert_eq!(fate(&protected).2, "EC2 deregistration protection is on");
    let ns = &world.ns.name;
    assert_eq!(
        fate(&pinned).2,
        format!("in use by AMIRefresher {ns}/prod-pinned (spec.ami)")
    );
    assert_eq!(
        fate(&rolled_back_to).2,
        format!("in use by AMIRefresher {ns}/prod-pinned (rollback image of group web)")
    );

    // EC2 agrees: exactly the two unused AMIs are gone, with the marked snapshot only.
    let remaining: Vec<String> = world
        .fixture
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images
        .unwrap()
        .into_iter()
        .filter_map(|i| i.image_id)
        .collect();
    for gone in [&unused, &unmarked] {
        assert!(!remaining.contains(gone), "{gone} still registered");
    }
    for kept in [
        &active,
        &rollback,
        &young,
        &in_template,
        &in_instance,
        &in_config,
        &shared,
        &protected,
        &pinned,
        &rolled_back_to,
    ] {
        assert!(remaining.contains(kept), "{kept} was deregistered");
    }
    let snapshots: Vec<String> = world
        .fixture
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots
        .unwrap()
        .into_iter()
        .filter_map(|s| s.snapshot_id)
        .collect();
    assert!(!snapshots.contains(&unused_snapshot));
    assert!(snapshots.contains(&unmarked_snapshot));
    let notes: Vec<String> = Api::<Event>::namespaced(world.client.clone(), &world.ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("AmiDeregistered"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    for gone in [&unused, &unmarked] {
        assert!(
            notes[0].contains(&format!("deregistered {gone}")),
            "{notes:?}"
        );
    }

    // Quiet afterwards: the uses are not asked again within the hour.
    world.moto.clear_requests().unwrap();
    world.reconcile().await;
    assert_eq!(
        world
            .moto
            .requests()
            .unwrap()
            .get("DescribeLaunchTemplates"),
        None
    );

    // Every call within the operator's policy, on its resources and tags.
    let calls = world.moto.operator_calls().unwrap();
    opsy_testkit::iam::check_resource_calls("packer-builder-operator", &calls, 6).unwrap();
}

#[tokio::test]
async fn an_expiry_in_minutes_is_spelled_out_in_a_warning() {
    let world = World::new(pb_manifest(
        serde_json::json!({"timeOuts": {"expiresIn": "6m", "controllerTimer": "5m"}}),
    ))
    .await;
    world.reconcile().await;
    let status = world.status().await;
    let warning = opsy_api::conditions::find(&status.conditions, "ConfigWarning").unwrap();
    assert_eq!(warning.status, "True");
    assert!(
        warning
            .message
            .contains("spec.timeOuts.expiresIn is \"6m\", which is 6 minute(s)")
            && warning.message.contains("6 month(s) is \"6months\""),
        "{}",
        warning.message
    );
    assert!(world.events().await.contains(&"ShortExpiresIn".to_owned()));
}

#[tokio::test]
async fn a_quarantined_ami_is_built_again() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    let built = world.build_image("al2023-hardened-1").await;
    world.finish_job(&job, 0, &artifact(&built)).await;
    world.reconcile().await;
    assert_eq!(world.status().await.active_image.unwrap().id, built);
    // An AMIRefresher's health gate proved it bad and quarantined it.
    let aws = world.context().aws.region(REGION).await;
    aws.quarantine_image(
        &built,
        "prod-east/amr: a: 2 of 2 new nodes NotReady",
        world.now,
    )
    .await
    .unwrap();
    world.reconcile().await;
    let status = world.status().await;
    let second = status.job_name.clone().unwrap();
    assert_ne!(second, job, "a new build");
    let message = status.last_run_message.unwrap();
    assert!(
        message.contains(built.as_str()) && message.contains("status is quarantined"),
        "{message}"
    );
}

#[tokio::test]
async fn a_bad_base_is_built_at_most_max_failed_builds_times_then_waits_for_a_retry_or_a_new_base()
{
    let world = World::new(pb_manifest(serde_json::json!({"maxFailedBuilds": 2}))).await;
    world.publish_base("base-al2023-v1").await;
    let aws = world.context().aws.region(REGION).await;
    // Build → canary fails → quarantine, twice: each quarantine counts as a failed build.
    for attempt in 1..=2 {
        let built = build_once(&world, &format!("al2023-hardened-{attempt}")).await;
        aws.quarantine_image(
            &built,
            "staging/amr: canary: 2 of 2 new nodes NotReady",
            world.now,
        )
        .await
        .unwrap();
        world.reconcile().await;
        let status = world.status().await;
        assert_eq!(status.quarantined_builds, attempt, "{status:?}");
        assert_eq!(status.failed_job_count, 0);
        let record = status
            .history
            .iter()
            .find(|r| r.built_image_id.as_deref() == Some(built.as_str()))
            .unwrap();
        assert_eq!(record.result, "quarantined");
        assert_eq!(
            record.message.as_deref(),
            Some("staging/amr: canary: 2 of 2 new nodes NotReady")
        );
    }
    // The limit: no third build from the same base, said in Ready, an Event and status.
    world.reconcile().await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 2);
    let status = world.status().await;
    let ready = opsy_api::conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "FailureLimitReached")
    );
    assert!(
        ready.message.contains(
            "2 builds failed, 2 of them quarantined by an AMIRefresher (spec.maxFailedBuilds 2)"
        ) && ready.message.contains("ami.refresh.ops/retry"),
        "{}",
        ready.message
    );
    let events = world.events().await;
    assert_eq!(
        events.iter().filter(|e| *e == "BuildQuarantined").count(),
        2,
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| *e == "FailureLimitReached")
            .count(),
        1,
        "{events:?}"
    );
    // plan says so.
    let report = packer_builder_operator::dry_run::report(
        &world.context().aws,
        &world.pb().await,
        world.now,
    )
    .await
    .unwrap();
    let text = report.text();
    assert!(text.contains("builds failed (2 quarantined"), "{text}");

    // The retry annotation: one more build, once.
    let mut pb = world.pb().await;
    pb.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("ami.refresh.ops/retry".into(), "2026-12-03T10:00".into());
    world
        .builders()
        .replace("al2023-hardened", &PostParams::default(), &pb)
        .await
        .unwrap();
    let third = build_once(&world, "al2023-hardened-3").await;
    assert_eq!(world.job_names().await.len(), 3);
    assert_eq!(world.status().await.quarantined_builds, 0);
    assert!(world.events().await.contains(&"FailuresReset".to_owned()));
    aws.quarantine_image(
        &third,
        "staging/amr: canary: NodeCreationFailure",
        world.now,
    )
    .await
    .unwrap();
    world.reconcile().await;
    assert_eq!(world.status().await.quarantined_builds, 1);
    assert_eq!(world.job_names().await.len(), 4, "1 of 2 after the retry");
    let fourth_job = world.status().await.job_name.unwrap();
    let fourth = world.build_image("al2023-hardened-4").await;
    world.finish_job(&fourth_job, 0, &artifact(&fourth)).await;
    world.reconcile().await;
    aws.quarantine_image(
        &fourth,
        "staging/amr: canary: NodeCreationFailure",
        world.now,
    )
    .await
    .unwrap();
    world.reconcile().await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 4, "the limit again");

    // A new base: a fresh set of attempts.
    world.publish_base("base-al2023-v2").await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 5);
    let status = world.status().await;
    assert_eq!(crate_counted(&status), 0, "{status:?}");
}

fn crate_counted(status: &PackerBuilderStatus) -> i32 {
    status.failed_job_count + status.quarantined_builds
}

#[tokio::test]
async fn a_pod_that_cannot_start_and_a_deleted_job_end_as_failures_with_the_cause() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    // The git credentials Secret does not exist: the pod never starts.
    let pod = kubelet::build_pods(&world.client, &world.ns.name, &job)
        .await
        .unwrap()
        .remove(0);
    kubelet::container_waiting(
        &world.client,
        &world.ns.name,
        &pod.name_any(),
        "git-sync",
        true,
        "CreateContainerConfigError",
        "secret \"git-sync\" not found",
    )
    .await
    .unwrap();
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.failed_job_count, 1);
    assert_eq!(
        status.history[0].message.as_deref(),
        Some(
            "container git-sync cannot start: CreateContainerConfigError: secret \"git-sync\" not found"
        )
    );
    assert!(world.events().await.contains(&"BuildFailed".to_owned()));
    // Given up on, the Job is gone before the next build starts: it cannot run beside it once
    // the Secret appears.
    let abandoned = world.jobs().get_opt(&job).await.unwrap();
    assert!(
        abandoned.is_none_or(|j| j.metadata.deletion_timestamp.is_some()),
        "the abandoned Job is deleted"
    );

    // The next attempt's Job is deleted by someone before it finishes; a finalizer keeps it
    // around for a while (as deletions under load or with foreground propagation do).
    world.reconcile().await;
    let second = world.status().await.job_name.unwrap();
    assert_ne!(second, job);
    let hold = |finalizers: serde_json::Value| {
        let jobs = world.jobs();
        let second = second.clone();
        async move {
            jobs.patch(
                &second,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    serde_json::json!({"metadata": {"finalizers": finalizers}}),
                ),
            )
            .await
            .unwrap();
        }
    };
    hold(serde_json::json!(["opsy.test/hold"])).await;
    world
        .jobs()
        .delete(&second, &Default::default())
        .await
        .unwrap();
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.failed_job_count, 2);
    assert_eq!(
        status.last_run_message.as_deref(),
        Some(format!("Job {second} is gone before its result was read (deleted, or removed ttlAfterFinished after it ended)").as_str())
    );
    hold(serde_json::Value::Null).await;
}

#[tokio::test]
async fn an_image_pull_error_is_given_time_before_the_build_counts_as_failed() {
    let mut world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    world.now = Timestamp::now();
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    let pod = kubelet::build_pods(&world.client, &world.ns.name, &job)
        .await
        .unwrap()
        .remove(0);
    kubelet::container_waiting(
        &world.client,
        &world.ns.name,
        &pod.name_any(),
        "packer-build",
        false,
        "ImagePullBackOff",
        "Back-off pulling image",
    )
    .await
    .unwrap();
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.failed_job_count, 0, "still within the grace period");
    assert_eq!(status.job_status.as_deref(), Some("running"));
    assert!(world.jobs().get_opt(&job).await.unwrap().is_some());

    world.now = Timestamp::now()
        + jiff::SignedDuration::try_from(packer_builder_operator::state::IMAGE_PULL_GRACE).unwrap();
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.failed_job_count, 1);
    assert!(
        status
            .last_run_message
            .as_deref()
            .unwrap()
            .contains("ImagePullBackOff"),
        "{status:?}"
    );
    let abandoned = world.jobs().get_opt(&job).await.unwrap();
    assert!(abandoned.is_none_or(|j| j.metadata.deletion_timestamp.is_some()));
}

#[tokio::test]
async fn hostile_values_reach_git_sync_and_packer_as_literal_arguments() {
    let hostile = "x'; rm -rf / #$(id)`id`";
    // The API server refuses whitespace in a repository URL and a branch (CRD patterns).
    let unspaced = "x';rm${IFS}-rf${IFS}/#$(id)`id`";
    let world = World::new(pb_manifest(serde_json::json!({
        "builder": {
            "repoURL": format!("https://github.com/example-org/r.git?{unspaced}"),
            "branch": format!("main;{unspaced}"),
            "dir": format!("packer/{hostile}"),
            "commands": [{"subCommand": "build", "args": [hostile], "variables": {"name": hostile}}],
        },
    })))
    .await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    let job = world
        .jobs()
        .get(&world.status().await.job_name.unwrap())
        .await
        .unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let git = &pod.init_containers.as_ref().unwrap()[0];
    assert!(
        git.command.is_none(),
        "git-sync runs its own entrypoint, no shell"
    );
    let git_args = git.args.as_ref().unwrap();
    assert!(git_args.contains(&format!(
        "--repo=https://github.com/example-org/r.git?{unspaced}"
    )));
    assert!(git_args.contains(&format!("--ref=main;{unspaced}")));
    for init in &pod.init_containers.as_ref().unwrap()[1..] {
        assert_eq!(
            init.command.as_deref(),
            Some(&["packer".to_owned()][..]),
            "no shell for {}",
            init.name
        );
    }
    let build = &pod.containers[0];
    // The only shell runs the fixed script; user values arrive as "$@".
    assert_eq!(
        build.command.as_ref().unwrap()[2],
        packer_builder_operator::job::BUILD_SCRIPT
    );
    assert!(!packer_builder_operator::job::BUILD_SCRIPT.contains(hostile));
    let args = build.args.as_ref().unwrap();
    assert!(args.contains(&hostile.to_owned()));
    assert!(args.contains(&format!("name={hostile}")));
    assert_eq!(
        build.working_dir.as_deref(),
        Some(format!("/workspace/repo/packer/{hostile}").as_str())
    );
}

#[tokio::test]
async fn git_credentials_are_checked_before_the_job_and_reach_git_sync_as_git_sync_expects() {
    let world = World::new(pb_manifest(serde_json::json!({
        "gitSync": {"secret": "git-creds"},
        "builder": {"repoURL": "https://git.example/org/images.git", "secret": "aws-creds"},
    })))
    .await;
    world.publish_base("base-al2023-v1").await;
    let put = |name: &'static str, keys: &'static [&'static str]| {
        let data: Vec<(&str, &str)> = keys.iter().map(|k| (*k, "s3cret-value")).collect();
        let world = &world;
        async move { world.put_secret(name, &data).await }
    };
    let degraded = || async {
        opsy_api::conditions::find(&world.status().await.conditions, "Degraded")
            .map(|c| (c.reason.clone(), c.message.clone()))
            .unwrap_or_default()
    };

    // Neither Secret exists: no Job; the condition names the Secret, its field and the fix.
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let (reason, message) = degraded().await;
    assert_eq!(reason, "SecretMissing");
    assert!(
        message.contains("Secret \"aws-creds\" (spec.builder.secret) does not exist"),
        "{message}"
    );
    assert!(world.events().await.contains(&"SecretMissing".to_owned()));

    // The git Secret lacks the token.
    put("aws-creds", &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]).await;
    put("git-creds", &["username"]).await;
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let (_, message) = degraded().await;
    assert!(
        message.contains("Secret \"git-creds\" (spec.gitSync.secret) has no key token or password"),
        "{message}"
    );

    // Complete: the Job starts; git-sync gets the username and the password from the Secret
    // by reference, never the values.
    put("git-creds", &["username", "password"]).await;
    world.reconcile().await;
    let job = world
        .jobs()
        .get(&world.status().await.job_name.unwrap())
        .await
        .unwrap();
    let text = serde_json::to_string(&job).unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    let pod = job.spec.unwrap().template.spec.unwrap();
    let git = &pod.init_containers.as_ref().unwrap()[0];
    let from_secret = |var: &str| {
        git.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == var)
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
            .map(|r| (r.name, r.key))
    };
    assert_eq!(
        from_secret("GITSYNC_USERNAME"),
        Some(("git-creds".into(), "username".into()))
    );
    assert_eq!(
        from_secret("GITSYNC_PASSWORD"),
        Some(("git-creds".into(), "password".into()))
    );
}

#[tokio::test]
async fn a_build_clones_only_a_repository_the_install_allows() {
    let world = World::new(pb_manifest(serde_json::json!({
        "builder": {"repoURL": "https://github.com/example-org-evil/eks-node-images"},
    })))
    .await;
    world.publish_base("base-al2023-v1").await;
    let allowing = |repositories: &[&str]| {
        let mut ctx = world.context();
        Arc::get_mut(&mut ctx)
            .unwrap()
            .build_policy
            .allowed_repositories = repositories.iter().map(|r| (*r).to_owned()).collect();
        ctx
    };
    let only_ours = allowing(&["https://github.com/example-org/"]);
    reconcile(Arc::new(world.pb().await), only_ours.clone())
        .await
        .unwrap();
    assert!(world.job_names().await.is_empty(), "no Job");
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "BuildNotAllowed");
    assert!(
        degraded.message.contains(
            "spec.builder.repoURL \"https://github.com/example-org-evil/eks-node-images\" is not a repository builds may clone here"
        ) && degraded.message.contains("builds.allowedRepositories"),
        "{}",
        degraded.message
    );
    // The organisation's own repository builds.
    world
        .builders()
        .patch(
            "al2023-hardened",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"builder": {
                "repoURL": "https://github.com/example-org/eks-node-images"
            }}})),
        )
        .await
        .unwrap();
    reconcile(Arc::new(world.pb().await), only_ours)
        .await
        .unwrap();
    assert_eq!(world.job_names().await.len(), 1);
}

/// A BuildClass (cluster-scoped, the platform team's) binds the PackerBuilders that name it:
/// a namespace it does not list, a Secret it does not list, or a class that does not exist
/// start no Job, with a condition naming the rule; the class's placement reaches the Job. The
/// default class is left to the unit tests: marking one default here would bind every
/// PackerBuilder of this binary's other tests.
#[tokio::test]
async fn a_build_class_binds_the_builders_that_name_it() {
    use opsy_api::BuildClass;
    let world = World::new(pb_manifest(serde_json::json!({
        "builder": {
            "repoURL": "https://github.com/example-org/eks-node-images",
            "secretVariables": [{"name": "vault_token", "secret": "vault", "key": "token"}],
        },
    })))
    .await;
    world.publish_base("base-al2023-v1").await;
    world
        .put_secret("vault", &[("token", "s3cret-token")])
        .await;
    let classes: Api<BuildClass> = Api::all(world.client.clone());
    let name = format!("{}-builds", world.ns.name);
    let class = |spec: serde_json::Value| -> BuildClass {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "BuildClass",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap()
    };
    let refused = || async {
        let status = world.status().await;
        let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
        (degraded.reason.clone(), degraded.message.clone())
    };
    let name_class = |class: &str| {
        let builders = world.builders();
        let patch = serde_json::json!({"spec": {"buildClassName": class}});
        async move {
            builders
                .patch(
                    "al2023-hardened",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await
                .unwrap();
        }
    };

    // The API server refuses a class whose namespaces are not names, or mix * with names.
    for (namespaces, wanted) in [
        (
            serde_json::json!(["Team A"]),
            "spec.namespaces[0]: Invalid value",
        ),
        (
            serde_json::json!(["*", "team-b"]),
            "namespaces: * means every namespace; list it alone",
        ),
    ] {
        let err = classes
            .create(
                &PostParams::default(),
                &class(serde_json::json!({ "namespaces": namespaces })),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains(wanted), "{err}");
    }

    // A class that does not exist.
    name_class(&name).await;
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let (reason, message) = refused().await;
    assert_eq!(reason, "BuildNotAllowed");
    assert!(
        message.contains(&format!(
            "BuildClass {name:?} (spec.buildClassName) does not exist"
        )),
        "{message}"
    );

    // A class for another namespace.
    classes
        .create(
            &PostParams::default(),
            &class(serde_json::json!({"namespaces": ["team-b"]})),
        )
        .await
        .unwrap();
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let (reason, message) = refused().await;
    assert_eq!(reason, "BuildNotAllowed");
    assert!(
        message.contains(&format!(
            "namespace {} is not allowed by BuildClass {name} (its spec.namespaces)",
            world.ns.name
        )),
        "{message}"
    );

    // This namespace, but not the Secret the build would mount.
    let replace = |spec: serde_json::Value| {
        let classes = classes.clone();
        let mut wanted = class(spec);
        let name = name.clone();
        async move {
            let current = classes.get(&name).await.unwrap();
            wanted.metadata.resource_version = current.metadata.resource_version;
            classes
                .replace(&name, &PostParams::default(), &wanted)
                .await
                .unwrap();
        }
    };
    replace(serde_json::json!({
        "namespaces": [world.ns.name],
        "secrets": ["git-credentials"],
        "job": {"nodeSelector": {"pool": "builds"}},
    }))
    .await;
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let (reason, message) = refused().await;
    assert_eq!(reason, "BuildNotAllowed");
    assert!(
        message.contains(&format!(
            "Secret \"vault\" (spec.builder.secretVariables[0].secret) is not allowed by BuildClass {name} (its spec.secrets)"
        )),
        "{message}"
    );

    // Allowed: the build starts, placed where the class says.
    replace(serde_json::json!({
        "namespaces": [world.ns.name],
        "secrets": ["vault"],
        "job": {"nodeSelector": {"pool": "builds"}},
    }))
    .await;
    world.reconcile().await;
    let job = world
        .jobs()
        .get(&world.status().await.job_name.unwrap())
        .await
        .unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("pool")
            .map(String::as_str),
        Some("builds")
    );
    classes.delete(&name, &Default::default()).await.unwrap();
}

#[tokio::test]
async fn a_build_runs_only_allowed_images_as_a_service_account_that_allows_it() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let world = World::new(pb_manifest(serde_json::json!({
        "builder": {
            "repoURL": "https://github.com/example-org/eks-node-images",
            "image": "attacker.example/packer:1",
            "jobServiceAccountName": "packer",
            "secretVariables": [{"name": "vault_token", "secret": "vault", "key": "token"}],
        },
    })))
    .await;
    world.publish_base("base-al2023-v1").await;
    let refused = || async {
        let status = world.status().await;
        let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
        (degraded.reason.clone(), degraded.message.clone())
    };

    // An image outside the operator's allow-list: no Job.
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let (reason, message) = refused().await;
    assert_eq!(reason, "BuildNotAllowed");
    assert!(
        message.contains("spec.builder.image \"attacker.example/packer:1\" is not an image"),
        "{message}"
    );

    // An allowed image, but a service account that does not lend itself to this builder.
    world
        .builders()
        .patch(
            "al2023-hardened",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"builder": {"image": "hashicorp/packer:1.11.2"}}}),
            ),
        )
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(world.client.clone(), &world.ns.name);
    let account = |annotation: &str| ServiceAccount {
        metadata: ObjectMeta {
            name: Some("packer".into()),
            annotations: Some(
                [(
                    "ami.refresh.ops/packer-builders".to_owned(),
                    annotation.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    accounts
        .create(&PostParams::default(), &account("gpu-builder"))
        .await
        .unwrap();
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let (reason, message) = refused().await;
    assert_eq!(reason, "BuildNotAllowed");
    assert!(
        message.contains("does not allow builds of PackerBuilder al2023-hardened"),
        "{message}"
    );

    // Allowed; the secret variable's Secret is checked, then reaches Packer by reference.
    accounts
        .replace("packer", &Default::default(), &{
            let mut a = account("gpu-builder, al2023-hardened");
            a.metadata.resource_version = accounts
                .get("packer")
                .await
                .unwrap()
                .metadata
                .resource_version;
            a
        })
        .await
        .unwrap();
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let (reason, message) = refused().await;
    assert_eq!(reason, "SecretMissing");
    assert!(
        message.contains("Secret \"vault\" (spec.builder.secretVariables[0], variable vault_token) does not exist"),
        "{message}"
    );
    world
        .put_secret("vault", &[("token", "s3cret-token")])
        .await;
    world.reconcile().await;
    let job = world
        .jobs()
        .get(&world.status().await.job_name.unwrap())
        .await
        .unwrap();
    let text = serde_json::to_string(&job).unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("packer"));
    let build = &pod.containers[0];
    let var = build
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "PKR_VAR_vault_token")
        .unwrap();
    let reference = var
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (reference.name.as_str(), reference.key.as_str()),
        ("vault", "token")
    );
    assert!(
        !build
            .args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a.contains("vault_token"))
    );
}

#[tokio::test]
async fn an_ssh_repository_gets_its_key_and_known_hosts_as_files() {
    let world = World::new(pb_manifest(serde_json::json!({
        "gitSync": {"secret": "git-ssh"},
        "builder": {"repoURL": "git@github.com:example-org/images.git"},
    })))
    .await;
    world.publish_base("base-al2023-v1").await;
    world
        .put_secret(
            "git-ssh",
            &[
                ("ssh", "KEY"),
                ("known_hosts", "github.com ssh-ed25519 AAAA"),
            ],
        )
        .await;
    world.reconcile().await;
    let job = world
        .jobs()
        .get(&world.status().await.job_name.unwrap())
        .await
        .unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "git-secret")
        .unwrap();
    let source = volume.secret.as_ref().unwrap();
    assert_eq!(source.secret_name.as_deref(), Some("git-ssh"));
    assert_eq!(source.default_mode, Some(0o440));
    let git = &pod.init_containers.as_ref().unwrap()[0];
    let var = |name: &str| {
        git.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        var("GITSYNC_SSH_KEY_FILE").as_deref(),
        Some("/etc/git-secret/ssh")
    );
    assert_eq!(var("GITSYNC_SSH_KNOWN_HOSTS").as_deref(), Some("true"));
    assert!(
        git.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "git-secret" && m.read_only == Some(true))
    );
    // The Packer containers never see the key.
    assert!(
        pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .all(|m| m.name != "git-secret")
    );
}

#[tokio::test]
async fn a_reported_ami_that_is_not_this_builds_is_never_tagged() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    // A PackerBuilder of the same name in another namespace built this one.
    let theirs = world
        .fixture
        .register_image(
            "their-hardened-1",
            &[
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", "prod-east"),
                ("created-by", "al2023-hardened"),
                ("created-by-namespace", "someone-else"),
                (
                    "packer-repo",
                    "https://github.com/example-org/eks-node-images",
                ),
                ("packer-repo-branch", "main"),
                ("status", "deprecated"),
            ],
        )
        .await
        .unwrap();
    let rejected = |expected_reason: &'static str, needle: String| {
        let world = &world;
        async move {
            let status = world.status().await;
            let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
            assert_eq!(degraded.reason, expected_reason, "{}", degraded.message);
            assert!(degraded.message.contains(&needle), "{}", degraded.message);
            assert_eq!(status.active_image, None);
            assert!(world.events().await.contains(&expected_reason.to_owned()));
        }
    };

    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    world.finish_job(&job, 0, &artifact(&theirs)).await;
    world.reconcile().await;
    rejected(
        "BuiltImageRejected",
        format!("{theirs} belongs to PackerBuilder someone-else/al2023-hardened"),
    )
    .await;
    assert_eq!(world.image_tags(&theirs).await["status"], "deprecated");
    assert_eq!(
        world.image_tags(&theirs).await["created-by-namespace"],
        "someone-else"
    );

    // The next build reports a public EKS AMI (another account's).
    world.reconcile().await;
    let second = world.status().await.job_name.unwrap();
    assert_ne!(second, job);
    let public = opsy_testkit::seed::ids::AL2023_130_SEP;
    world.finish_job(&second, 0, &artifact(public)).await;
    world.reconcile().await;
    rejected(
        "BuiltImageMissing",
        format!("{public}, which this account does not own"),
    )
    .await;
    assert_eq!(world.status().await.failed_job_count, 2);
}

#[tokio::test]
async fn notifications_are_sent_once_per_transition_and_failures_do_not_block_builds() {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"ok": true})))
        .mount(&slack)
        .await;
    let mut world = World::new(pb_manifest(serde_json::json!({
        "notifier": {
            "slack": {"channelIDs": ["C0123456789"], "secret": "slack-token"},
            "webhooks": [{"secret": "missing-webhook"}],
        },
    })))
    .await;
    world.slack_api = slack.uri();
    world
        .put_secret("slack-token", &[("token", "xoxb-test-token")])
        .await;
    world.publish_base("base-al2023-v1").await;

    world.reconcile().await;
    world.reconcile().await;
    let texts = sent(&slack).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].starts_with(&format!(
            "BuildStarted: PackerBuilder {}/al2023-hardened",
            world.ns.name
        )),
        "{}",
        texts[0]
    );

    // The webhook's Secret is missing: reported, and the build went ahead anyway.
    assert_eq!(world.job_names().await.len(), 1);
    let status = world.status().await;
    let failed = opsy_api::conditions::find(&status.conditions, "NotificationFailed").unwrap();
    assert_eq!(failed.status, "True");
    assert!(
        failed
            .message
            .contains("webhook #1: cannot read Secret missing-webhook: not found"),
        "{}",
        failed.message
    );
    assert!(
        world
            .events()
            .await
            .contains(&"NotificationFailed".to_owned())
    );

    let job = status.job_name.unwrap();
    let built = world.build_image("al2023-hardened-1").await;
    world.finish_job(&job, 0, &artifact(&built)).await;
    world.reconcile().await;
    world.reconcile().await;
    let texts = sent(&slack).await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[1].starts_with(&format!(
            "BuildSucceeded: PackerBuilder {}/al2023-hardened",
            world.ns.name
        )),
        "{}",
        texts[1]
    );
}

/// A webhook that takes a minute to answer does not hold up the reconcile that decided the
/// notification: the build starts and the notification waits in `status.outbox`. (Sent inline,
/// the reconcile waited out the 45-second delivery deadline first.)
#[tokio::test]
async fn a_slow_webhook_does_not_hold_up_the_reconcile() {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(60)))
        .mount(&hook)
        .await;
    let world = World::new(pb_manifest(serde_json::json!({
        "notifier": {"webhooks": [{"secret": "hook", "allowPlainHttp": true}]},
    })))
    .await;
    let url = hook.uri();
    world.put_secret("hook", &[("url", url.as_str())]).await;
    world.publish_base("base-al2023-v1").await;

    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(world.pb().await), world.context()),
    )
    .await
    .expect("the reconcile returns before the webhook answers")
    .unwrap();
    assert_eq!(world.job_names().await.len(), 1, "the build started");
    let status = world.status().await;
    assert_eq!(
        status
            .outbox
            .iter()
            .map(|o| (o.event.as_str(), o.delivered.len()))
            .collect::<Vec<_>>(),
        [("BuildStarted", 0)],
        "queued, not yet delivered"
    );
    // The sender has posted (and is waiting for the answer) while the reconcile is done.
    for _ in 0..100 {
        if !hook.received_requests().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hook.received_requests().await.unwrap().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(45));
}

async fn sent(slack: &wiremock::MockServer) -> Vec<String> {
    slack
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
        .collect()
}

#[tokio::test]
async fn a_crash_between_tagging_and_the_status_write_leaves_one_active_ami() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    let before = world.pb().await;
    let job = before.status.as_ref().unwrap().job_name.clone().unwrap();
    let built = world.build_image("al2023-hardened-1").await;
    world.finish_job(&job, 0, &artifact(&built)).await;
    world.reconcile().await;
    // The AMI was tagged, but the status write is lost: status is as before the completion.
    let mut lost = world.pb().await;
    lost.status = before.status.clone();
    world
        .builders()
        .replace_status("al2023-hardened", &PostParams::default(), &lost)
        .await
        .unwrap();
    assert_eq!(world.status().await.job_status.as_deref(), Some("running"));
    world.reconcile().await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 1, "no rebuild");
    let status = world.status().await;
    assert_eq!(status.active_image.unwrap().id, built);
    assert_eq!(status.history.len(), 1);
    let aws = world.context().aws.region(REGION).await;
    let active = aws
        .describe_images(
            &ImageQuery::default()
                .owner(ACCOUNT_ID)
                .filter("tag:status", ["active"]),
        )
        .await
        .unwrap();
    assert_eq!(
        active.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [built.as_str()]
    );
}

#[tokio::test]
async fn a_cached_answer_older_than_the_recorded_ami_does_not_start_a_build() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    // A long-lived process looks while the build runs, and caches "no managed AMI".
    let long_lived = world.context_caching_for(Duration::from_secs(600));
    reconcile(Arc::new(world.pb().await), long_lived.clone())
        .await
        .unwrap();
    // The completion is handled elsewhere (the previous leader, say): the AMI is tagged active
    // and recorded in status, which the long-lived process's cached answer does not know.
    let built = world.build_image("al2023-hardened-1").await;
    world.finish_job(&job, 0, &artifact(&built)).await;
    world.reconcile().await;
    assert_eq!(world.status().await.active_image.unwrap().id, built);

    reconcile(Arc::new(world.pb().await), long_lived)
        .await
        .unwrap();
    assert_eq!(world.job_names().await.len(), 1, "no second build");
    let status = world.status().await;
    assert_eq!(status.active_image.unwrap().id, built);
    assert_eq!(status.last_run_status.as_deref(), Some("succeeded"));
}

/// Deleting a PackerBuilder must not hang on AWS: with no finished build to tag, its finalizer
/// has nothing to keep, so the deletion completes even when AWS refuses every call (the IAM
/// role removed first, as teams tearing down often do). Without the early release, the cleanup
/// looked up the base first and failed, and non-transient errors retry only every 5 minutes.
#[tokio::test]
async fn a_deletion_is_not_held_by_aws_when_no_finished_build_needs_tagging() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 1, "a build runs");
    assert!(
        !world.pb().await.finalizers().is_empty(),
        "the finalizer is on"
    );
    world
        .builders()
        .delete("al2023-hardened", &Default::default())
        .await
        .unwrap();
    let held = world.pb().await;
    assert!(held.metadata.deletion_timestamp.is_some());
    world
        .moto
        .inject_error("Describe", "UnauthorizedOperation", 403, 100)
        .unwrap();
    let calls_before: u64 = world.calls.snapshot().values().sum();
    Box::pin(reconcile(Arc::new(held), world.context()))
        .await
        .unwrap();
    assert!(
        world
            .builders()
            .get_opt("al2023-hardened")
            .await
            .unwrap()
            .is_none(),
        "the finalizer is removed and the object gone"
    );
    assert_eq!(
        world.calls.snapshot().values().sum::<u64>(),
        calls_before,
        "no AWS call was needed"
    );
}

#[tokio::test]
async fn aws_errors_are_reported_on_the_object() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    world
        .moto
        .inject_error("DescribeImages", "UnauthorizedOperation", 403, 1)
        .unwrap();
    let err = Box::pin(reconcile(Arc::new(world.pb().await), world.context()))
        .await
        .unwrap_err();
    assert_eq!(err.category(), "access_denied");
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "AwsAccessDenied");
    assert!(
        degraded.message.contains("ec2 DescribeImages was denied"),
        "{}",
        degraded.message
    );
    assert!(degraded.message.contains("IAM policy"));
    assert!(world.events().await.contains(&"AwsAccessDenied".to_owned()));
    assert!(world.job_names().await.is_empty());
    // Once IAM is fixed, the next reconcile builds and clears the condition.
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 1);
    let status = world.status().await;
    let degraded = opsy_api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("False", "Recovered")
    );
}

#[tokio::test]
async fn a_reconcile_from_a_stale_copy_repeats_nothing_and_overwrites_nothing() {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"ok": true})))
        .mount(&slack)
        .await;
    let mut world = World::new(pb_manifest(serde_json::json!({
        "notifier": {"slack": {"channelIDs": ["C0123456789"], "secret": "slack-token"}},
    })))
    .await;
    world.slack_api = slack.uri();
    world
        .put_secret("slack-token", &[("token", "xoxb-test-token")])
        .await;
    world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    let built = world.build_image("al2023-hardened-1").await;
    world.finish_job(&job, 0, &artifact(&built)).await;
    // The copy a lagging cache would still hold: the build running.
    let stale = world.pb().await;
    world.reconcile().await;
    let done = world.pb().await;
    assert_eq!(
        done.status.as_ref().unwrap().job_status.as_deref(),
        Some("completed")
    );
    let sent_before = sent(&slack).await.len();
    let events_before = world.events().await.len();

    reconcile(Arc::new(stale.clone()), world.context())
        .await
        .unwrap();
    assert_eq!(
        sent(&slack).await.len(),
        sent_before,
        "a notification was resent"
    );
    assert_eq!(
        world.events().await.len(),
        events_before,
        "an Event was repeated"
    );
    // The newer status stands: the build stays recorded once, as succeeded and notified.
    let (now, then) = (world.status().await, done.status.clone().unwrap());
    assert_eq!(now.history, then.history);
    assert_eq!(now.active_image, then.active_image);
    assert_eq!(now.job_status.as_deref(), Some("completed"));
    assert_eq!(now.last_notified, then.last_notified);

    // A status write from the stale copy is refused by the API server.
    let err = opsy_runtime::patch_status(
        &world.client,
        &stale,
        packer_builder_operator::reconcile::MANAGER,
        &stale.status,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 409),
        "{err}"
    );
    assert_eq!(world.status().await.history, then.history);
}

/// Builds once: a Job, the AMI it "produced", the completing reconcile. Returns the AMI.
async fn build_once(world: &World, name: &str) -> String {
    build_once_tagged(world, name, &[]).await
}

/// Builds once, the build tagging its AMI with `tags` (as `packer/`'s sample project does).
async fn build_once_tagged(world: &World, name: &str, tags: &[(&str, &str)]) -> String {
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    let tags: Vec<(&str, &str)> = [("opsy-packer-build", "true")]
        .into_iter()
        .chain(tags.iter().copied())
        .collect();
    let built = world.fixture.register_image(name, &tags).await.unwrap();
    world.finish_job(&job, 0, &artifact(&built)).await;
    world.reconcile().await;
    assert_eq!(world.status().await.active_image.unwrap().id, built);
    built
}

#[tokio::test]
async fn copies_in_another_region_are_shared_follow_their_source_and_fall_under_retention() {
    const EAST: &str = "us-east-1";
    const CONSUMER: &str = "210987654321";
    let mut world = World::new(pb_manifest(serde_json::json!({
        "distribution": {
            "regions": [{"region": EAST, "encrypted": true, "kmsKeyId": "alias/amis"}],
            "shareWith": [CONSUMER],
        },
        "retention": {"delete": true, "keepDeprecated": 0, "minAge": "1d", "allowShared": true},
    })))
    .await;
    let east = Fixture::new(&world.moto, EAST).await;
    world.publish_base("base-al2023-v1").await;
    // The same base is published in the other region under its own id.
    let east_base = east.register_image("base-al2023-v1", &[]).await.unwrap();

    // The sample project's own tags on what it builds (packer/eks-al2023-hardened): not the
    // contract's, so not copied (the policy allows only the contract's keys on a copy).
    let built1 = build_once_tagged(
        &world,
        "al2023-hardened-1",
        &[("opsy-packer-build", "true"), ("Name", "packer-al2023")],
    )
    .await;
    // The next (settled) reconcile copies it and shares it.
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.distribution.len(), 2, "{status:#?}");
    assert_eq!(status.distribution[0].region, REGION);
    assert_eq!(status.distribution[0].image_id, built1);
    assert_eq!(status.distribution[0].shared_with, [CONSUMER]);
    let copy1 = status.distribution[1].image_id.clone();
    assert_eq!(status.distribution[1].region, EAST);
    assert_ne!(copy1, built1);
    let copy_image = |id: String| {
        let ec2 = east.ec2.clone();
        async move {
            ec2.describe_images()
                .image_ids(id)
                .send()
                .await
                .unwrap()
                .images
                .unwrap()
                .remove(0)
        }
    };
    let image = copy_image(copy1.clone()).await;
    let tags: std::collections::BTreeMap<String, String> = image
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    assert_eq!(tags["source-ami"], built1);
    assert_eq!(tags["source-region"], REGION);
    assert_eq!(
        tags["base-ami"], east_base,
        "the copy names its region's base"
    );
    assert_eq!(tags["status"], "active");
    assert_eq!(tags["cluster-name"], "prod-east");
    assert_eq!(
        tags["create-timestamp"],
        world.image_tags(&built1).await["create-timestamp"]
    );
    let snapshot = image.block_device_mappings()[0]
        .ebs()
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_owned();
    let described = east
        .ec2
        .describe_snapshots()
        .snapshot_ids(&snapshot)
        .send()
        .await
        .unwrap()
        .snapshots
        .unwrap()
        .remove(0);
    assert_eq!(described.encrypted(), Some(true));

    // Pending for a poll, then available and shared; then nothing more is asked of EC2.
    world.reconcile().await;
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.distribution[1].state, "available");
    assert_eq!(status.distribution[1].shared_with, [CONSUMER]);
    let launch = east
        .ec2
        .describe_image_attribute()
        .image_id(&copy1)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .unwrap();
    assert_eq!(
        launch.launch_permissions()[0].user_id(),
        Some(CONSUMER),
        "launch permission on the copy"
    );
    let volumes = east
        .ec2
        .describe_snapshot_attribute()
        .snapshot_id(&snapshot)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .unwrap();
    assert_eq!(
        volumes.create_volume_permissions()[0].user_id(),
        Some(CONSUMER)
    );
    world.moto.clear_requests().unwrap();
    world.reconcile().await;
    let asked = world.moto.requests().unwrap();
    for quiet in [
        "CopyImage",
        "ModifyImageAttribute",
        "ModifySnapshotAttribute",
    ] {
        assert_eq!(asked.get(quiet), None, "{quiet} in steady state: {asked:?}");
    }

    // An AMIRefresher of that region, filtering for its own base, finds the copy.
    let filters: Vec<opsy_api::AmiFilter> = serde_json::from_value(serde_json::json!([
        {"name": "name", "values": ["base-al2023-*"]},
        {"name": "owner-id", "values": [ACCOUNT_ID]},
    ]))
    .unwrap();
    let east_clients = world.context().aws.region(EAST).await;
    let target = east_clients
        .select_target(
            None,
            Some(&filters),
            opsy_aws::managed::Scope {
                cluster_name: "prod-east",
                accept_from: &[],
                promotion: None,
                kubernetes_version: None,
                account: None,
            },
            Duration::from_secs(30 * 86_400),
            world.now,
        )
        .await
        .unwrap();
    assert_eq!(target.chosen.map(|c| c.image.id), Some(copy1.clone()));

    // A new base: a new build, whose copy replaces the old one; the old copy is deprecated
    // with its source, and two days later deregistered with its snapshot in its region.
    world.publish_base("base-al2023-v2").await;
    east.register_image("base-al2023-v2", &[]).await.unwrap();
    let built2 = build_once(&world, "al2023-hardened-2").await;
    world.reconcile().await;
    let copy2 = world.status().await.distribution[1].image_id.clone();
    assert_ne!(copy2, copy1);
    let old = copy_image(copy1.clone()).await;
    assert!(
        old.tags()
            .iter()
            .any(|t| t.key() == Some("status") && t.value() == Some("deprecated")),
        "{old:?}"
    );
    assert!(old.deprecation_time().is_some());
    world.now += jiff::SignedDuration::from_hours(48);
    world.reconcile().await;
    let status = world.status().await;
    let fates: Vec<(Option<String>, String, String)> = status
        .retention
        .iter()
        .map(|f| (f.region.clone(), f.image.clone(), f.fate.clone()))
        .collect();
    assert!(
        fates.contains(&(
            Some(EAST.to_owned()),
            copy1.clone(),
            "Deregistered".to_owned()
        )),
        "{fates:?}"
    );
    assert!(
        fates.contains(&(None, built1.clone(), "Deregistered".to_owned())),
        "{fates:?}"
    );
    let remaining = east
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images
        .unwrap();
    assert!(
        !remaining
            .iter()
            .any(|i| i.image_id() == Some(copy1.as_str()))
    );
    assert!(
        remaining
            .iter()
            .any(|i| i.image_id() == Some(copy2.as_str()))
    );
    let snapshots = east
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots
        .unwrap();
    assert!(
        !snapshots
            .iter()
            .any(|s| s.snapshot_id() == Some(snapshot.as_str()))
    );

    // An AMIRefresher of that region quarantines the copy: the source is quarantined with it
    // and the PackerBuilder builds anew.
    east_clients
        .quarantine_image(
            &copy2,
            "nodes of group web failed the health gate",
            world.now,
        )
        .await
        .unwrap();
    let jobs_before = world.job_names().await.len();
    world.reconcile().await;
    let tags = world.image_tags(&built2).await;
    assert_eq!(tags["status"], "quarantined");
    assert!(
        tags["quarantine-reason"].contains(&copy2),
        "{}",
        tags["quarantine-reason"]
    );
    assert!(world.events().await.contains(&"AmiQuarantined".to_owned()));
    world.reconcile().await;
    assert_eq!(
        world.job_names().await.len(),
        jobs_before + 1,
        "a new build"
    );

    // Every call within the operator's policy, on its resources and tags.
    let calls = world.moto.operator_calls().unwrap();
    opsy_testkit::iam::check_resource_calls("packer-builder-operator", &calls, 8).unwrap();
}

#[tokio::test]
async fn a_control_plane_upgrade_moves_the_base_to_the_new_minor_and_builds() {
    let world = World::new(pb_manifest(serde_json::json!({
        "amiFilters": [
            {"name": "name", "values": ["base-al2023-${KUBERNETES_VERSION}-*"]},
            {"name": "owner-id", "values": [ACCOUNT_ID]},
        ],
    })))
    .await;
    let base130 = world.publish_base("base-al2023-1.30-v1").await;
    let base131 = world.publish_base("base-al2023-1.31-v1").await;

    // Without the cluster, its version cannot be read: said so, nothing built.
    world.reconcile().await;
    let status = world.status().await;
    assert!(world.job_names().await.is_empty());
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        ready.contains("spec.amiFilters or spec.amiParameter use ${KUBERNETES_VERSION}, but EKS cluster prod-east (spec.clusterName) was not found"),
        "{status:#?}"
    );

    world
        .fixture
        .create_cluster_at("prod-east", "1.30")
        .await
        .unwrap();
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.kubernetes_version.as_deref(), Some("1.30"));
    assert_eq!(
        status.last_run_base_image_id.as_deref(),
        Some(base130.as_str())
    );
    let job = status.job_name.unwrap();
    let built = world.build_image("al2023-hardened-130").await;
    world.finish_job(&job, 0, &artifact(&built)).await;
    world.reconcile().await;
    assert_eq!(world.image_tags(&built).await["kubernetes-version"], "1.30");
    world.reconcile().await;
    assert_eq!(world.job_names().await.len(), 1, "steady on 1.30");

    // The control plane moves to 1.31: the base moves with it, and a build starts.
    world
        .fixture
        .upgrade_cluster("prod-east", "1.31")
        .await
        .unwrap();
    let built131 = build_once(&world, "al2023-hardened-131").await;
    let status = world.status().await;
    assert_eq!(status.kubernetes_version.as_deref(), Some("1.31"));
    assert_eq!(
        status.last_run_base_image_id.as_deref(),
        Some(base131.as_str())
    );
    assert_eq!(
        world.image_tags(&built131).await["kubernetes-version"],
        "1.31"
    );
    assert_eq!(world.image_tags(&built).await["status"], "deprecated");

    let calls = world.moto.operator_calls().unwrap();
    opsy_testkit::iam::check_resource_calls("packer-builder-operator", &calls, 3).unwrap();
}

#[tokio::test]
async fn an_ssm_parameter_names_the_base_and_its_new_version_starts_a_build() {
    const PARAMETER: &str = "/aws/service/eks/optimized-ami/${KUBERNETES_VERSION}/amazon-linux-2023/x86_64/standard/recommended/image_id";
    let resolved = PARAMETER.replace("${KUBERNETES_VERSION}", "1.30");
    let world = World::new(pb_manifest(serde_json::json!({
        "amiFilters": null,
        "amiParameter": PARAMETER,
    })))
    .await;
    world
        .fixture
        .create_cluster_at("prod-east", "1.30")
        .await
        .unwrap();

    // Not published (yet): said so, nothing built.
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let status = world.status().await;
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert_eq!(
        degraded,
        format!("SSM parameter {resolved} (spec.amiParameter) does not exist in {REGION}")
    );

    let base1 = world
        .publish_base("amazon-eks-node-al2023-x86_64-standard-1.30-v1")
        .await;
    world
        .moto
        .publish_parameter(REGION, &resolved, &base1)
        .unwrap();
    let built1 = build_once(&world, "al2023-hardened-1").await;
    let status = world.status().await;
    let parameter = status.base_parameter.unwrap();
    assert_eq!(
        (
            parameter.name.as_str(),
            parameter.version,
            parameter.image_id.as_str()
        ),
        (resolved.as_str(), 1, base1.as_str())
    );
    assert_eq!(
        status.last_run_base_image_id.as_deref(),
        Some(base1.as_str())
    );
    assert_eq!(
        world.image_tags(&built1).await["kubernetes-version"],
        "1.30"
    );

    // AWS publishes a new recommended AMI: version 2 of the parameter, and a build.
    let base2 = world
        .publish_base("amazon-eks-node-al2023-x86_64-standard-1.30-v2")
        .await;
    world
        .moto
        .publish_parameter(REGION, &resolved, &base2)
        .unwrap();
    build_once(&world, "al2023-hardened-2").await;
    let status = world.status().await;
    assert_eq!(status.base_parameter.unwrap().version, 2);
    assert_eq!(
        status.last_run_base_image_id.as_deref(),
        Some(base2.as_str())
    );

    let calls = world.moto.operator_calls().unwrap();
    opsy_testkit::iam::check_resource_calls("packer-builder-operator", &calls, 3).unwrap();
}

/// The spec shrinks to one architecture right after the architecture PackerBuilders were
/// created, so the status write that would list them fails (409: the object changed) and the
/// next reconcile finds no `status.architectures`. They are found by their label and deleted
/// all the same (they were left forever when only the status was read; CI's RBAC scenario hit
/// it: the parent's `Degraded` said `Recovered`, its status listed no architectures).
#[tokio::test]
async fn shrinking_to_one_architecture_deletes_its_packer_builders_even_when_status_lost_them() {
    let world = World::new(pb_manifest(serde_json::json!({
        "amiFilters": [
            {"name": "name", "values": ["base-al2023-${ARCHITECTURE}-*"]},
            {"name": "owner-id", "values": [ACCOUNT_ID]},
        ],
        "architectures": ["x86_64", "arm64"],
    })))
    .await;
    world.reconcile().await;
    let names = ["al2023-hardened-x86-64", "al2023-hardened-arm64"];
    for name in names {
        assert!(
            world.builders().get_opt(name).await.unwrap().is_some(),
            "{name}"
        );
    }
    // The status write that listed them never happened.
    world.lose_status().await;
    assert!(world.status().await.architectures.is_empty());
    world
        .edit(|spec| spec.architectures = vec![opsy_api::lanes::Architecture::X86_64])
        .await;
    world.reconcile().await;
    for name in names {
        let child = world.builders().get_opt(name).await.unwrap();
        assert!(
            child.is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
            "{name} should be deleted"
        );
    }
}

#[tokio::test]
async fn two_architectures_are_two_packer_builders_each_building_for_its_own() {
    let world = World::new(pb_manifest(serde_json::json!({
        "amiFilters": [
            {"name": "name", "values": ["base-al2023-${ARCHITECTURE}-*"]},
            {"name": "owner-id", "values": [ACCOUNT_ID]},
        ],
        "architectures": ["x86_64", "arm64"],
    })))
    .await;
    let x86_base = world
        .fixture
        .register_image_for("x86_64", "base-al2023-x86_64-v1", &[])
        .await
        .unwrap();
    let arm_base = world
        .fixture
        .register_image_for("arm64", "base-al2023-arm64-v1", &[])
        .await
        .unwrap();
    // Named like an arm64 base, newer, but x86_64: never the arm64 build's base.
    world
        .fixture
        .register_image_for("x86_64", "base-al2023-arm64-v2", &[])
        .await
        .unwrap();

    // The parent builds nothing: it creates one PackerBuilder per architecture, owned by it.
    world.reconcile().await;
    assert!(world.job_names().await.is_empty());
    let parent = world.pb().await;
    let mut children = Vec::new();
    for (name, architecture) in [
        ("al2023-hardened-x86-64", "x86_64"),
        ("al2023-hardened-arm64", "arm64"),
    ] {
        let child = world.builders().get(name).await.unwrap();
        assert_eq!(
            serde_json::to_value(&child.spec.architectures).unwrap(),
            serde_json::json!([architecture])
        );
        assert_eq!(child.spec.ami_filters, parent.spec.ami_filters);
        let owner = &child.owner_references()[0];
        assert_eq!(
            (owner.name.as_str(), owner.controller),
            ("al2023-hardened", Some(true))
        );
        assert_eq!(
            child
                .labels()
                .get("ami.refresh.ops/parent")
                .map(String::as_str),
            Some("al2023-hardened")
        );
        children.push(child);
    }
    // (One Event: the recorder folds the two of one reconcile into a series.)
    assert!(
        world
            .events()
            .await
            .contains(&"ArchitectureBuilderCreated".to_owned())
    );

    // Each builds from its own architecture's base, told its architecture.
    let mut built = Vec::new();
    for (child, base, architecture) in [
        (&children[0], &x86_base, "x86_64"),
        (&children[1], &arm_base, "arm64"),
    ] {
        reconcile(Arc::new(child.clone()), world.context())
            .await
            .unwrap();
        let status = world
            .builders()
            .get(&child.name_any())
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(
            status.last_run_base_image_id.as_deref(),
            Some(base.as_str()),
            "{architecture}"
        );
        let job_name = status.job_name.unwrap();
        let job = world.jobs().get(&job_name).await.unwrap();
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(
            args.contains(&format!("architecture={architecture}")),
            "{args:?}"
        );
        assert!(args.contains(&format!("ami_id={base}")), "{args:?}");
        let image = world
            .fixture
            .register_image_for(
                architecture,
                &format!("hardened-{architecture}"),
                &[("opsy-packer-build", "true")],
            )
            .await
            .unwrap();
        world.finish_job(&job_name, 0, &artifact(&image)).await;
        let latest = world.builders().get(&child.name_any()).await.unwrap();
        reconcile(Arc::new(latest), world.context()).await.unwrap();
        let tags = world.image_tags(&image).await;
        assert_eq!(tags["status"], "active");
        assert_eq!(tags["architecture"], architecture);
        assert_eq!(tags["variant"], "standard");
        // The base's OS family (its name says AL2023), so AMIRefreshers keep AL2 groups off it.
        assert_eq!(tags["os-family"], "al2023");
        assert_eq!(tags["created-by"], child.name_any());
        built.push(image);
    }

    // The parent sums them up.
    world.reconcile().await;
    let status = world.status().await;
    let summary: Vec<(String, String, Option<String>)> = status
        .architectures
        .iter()
        .map(|a| {
            (
                a.architecture.clone(),
                a.ready.clone(),
                a.active_image.as_ref().map(|i| i.id.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("x86_64".into(), "True".into(), Some(built[0].clone())),
            ("arm64".into(), "True".into(), Some(built[1].clone())),
        ]
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "ArchitecturesBuilt")
    );

    // Quiet: nothing is written again.
    let versions = || async {
        let list = world.builders().list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .map(|p| p.metadata.resource_version.clone())
            .collect::<Vec<_>>()
    };
    let before = versions().await;
    world.reconcile().await;
    assert_eq!(before, versions().await);

    // A change of the parent's spec reaches both.
    let parent = world
        .edit(|spec| spec.time_outs.expires_in = "20d".parse().unwrap())
        .await;
    world.reconcile().await;
    for name in ["al2023-hardened-x86-64", "al2023-hardened-arm64"] {
        let child = world.builders().get(name).await.unwrap();
        assert_eq!(
            child.spec.time_outs.expires_in, parent.spec.time_outs.expires_in,
            "{name}"
        );
    }

    // Down to one architecture.
    world
        .edit(|spec| spec.architectures = vec![opsy_api::lanes::Architecture::X86_64])
        .await;
    world.reconcile().await;
    // One architecture left: the parent builds it itself, and both of its PackerBuilders go.
    for name in ["al2023-hardened-x86-64", "al2023-hardened-arm64"] {
        let child = world.builders().get_opt(name).await.unwrap();
        assert!(
            child.is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
            "{name} should be deleted"
        );
    }
    assert!(world.status().await.architectures.is_empty());
    assert!(
        world
            .events()
            .await
            .contains(&"ArchitectureBuilderDeleted".to_owned())
    );

    let calls = world.moto.operator_calls().unwrap();
    opsy_testkit::iam::check_resource_calls("packer-builder-operator", &calls, 2).unwrap();
}

#[tokio::test]
async fn builds_beyond_the_history_never_come_back_when_it_rolls_over() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    // Twelve builds within the Jobs' time to live (each from a newer base): more than the ten
    // that status.history keeps; the first one failed.
    world.publish_base("base-al2023-v00").await;
    world.reconcile().await;
    let failed = world.status().await.job_name.unwrap();
    world.finish_job(&failed, 1, "boom").await;
    world.reconcile().await;
    assert_eq!(world.status().await.failed_job_count, 1);
    let mut built = Vec::new();
    for n in 1..=11 {
        world.publish_base(&format!("base-al2023-v{n:02}")).await;
        built.push(build_once(&world, &format!("al2023-hardened-{n}")).await);
    }
    assert_eq!(
        world.job_names().await.len(),
        12,
        "every Job is still there"
    );
    let status = world.status().await;
    assert_eq!(status.history.len(), 10);
    let newest = built.last().unwrap().clone();

    // Further reconciles complete no old Job again: the active AMI stays the newest build,
    // the first build is still deprecated, no failure is counted again.
    for _ in 0..3 {
        world.reconcile().await;
    }
    let status = world.status().await;
    assert_eq!(status.active_image.unwrap().id, newest);
    assert_eq!(status.failed_job_count, 0, "{:?}", status.history);
    assert_eq!(status.history, world.status().await.history);
    assert_eq!(world.image_tags(&built[0]).await["status"], "deprecated");
    assert_eq!(world.image_tags(&newest).await["status"], "active");
    assert_eq!(world.job_names().await.len(), 12, "no new build");
}

#[tokio::test]
async fn a_lost_status_never_reactivates_the_ami_of_an_older_job() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    world.publish_base("base-al2023-v1").await;
    let first = build_once(&world, "al2023-hardened-1").await;
    world.publish_base("base-al2023-v2").await;
    let second = build_once(&world, "al2023-hardened-2").await;
    // The second Job is gone (its time to live ended) and status is lost (the object restored
    // from a backup without it): the first Job is the only one there, unrecorded.
    let jobs = world.job_names().await;
    let newest = world.status().await.job_name.unwrap();
    world
        .jobs()
        .delete(&newest, &kube::api::DeleteParams::background())
        .await
        .unwrap();
    world.lose_status().await;
    assert_eq!(jobs.len(), 2);
    world.reconcile().await;
    world.reconcile().await;
    assert_eq!(world.image_tags(&first).await["status"], "deprecated");
    assert_eq!(world.image_tags(&second).await["status"], "active");
    let status = world.status().await;
    assert_eq!(status.active_image.unwrap().id, second);
    assert_eq!(status.failed_job_count, 0);
    assert_eq!(world.job_names().await.len(), 1, "no new build");
}

#[tokio::test]
async fn a_snapshot_the_build_did_not_make_is_never_marked_shared_or_deleted() {
    const CONSUMER: &str = "210987654321";
    let mut world = World::new(pb_manifest(serde_json::json!({
        "distribution": {"shareWith": [CONSUMER]},
        "retention": {"delete": true, "keepDeprecated": 0, "minAge": "1d", "allowShared": true},
    })))
    .await;
    world.publish_base("base-al2023-v1").await;
    // A data set that exists before the build, which the Packer project wires into its AMI
    // (`ami_block_device_mappings { snapshot_id = … }`).
    let ec2 = world.fixture.ec2.clone();
    let volume = ec2
        .create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(20)
        .send()
        .await
        .unwrap()
        .volume_id
        .unwrap();
    let data = ec2
        .create_snapshot()
        .volume_id(&volume)
        .description("reference data set")
        .send()
        .await
        .unwrap()
        .snapshot_id
        .unwrap();
    // Creation times are whole seconds: the build starts in a later one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    let built = ec2
        .register_image()
        .name("al2023-hardened-1")
        .root_device_name("/dev/xvda")
        .block_device_mappings(
            aws_sdk_ec2::types::BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .build(),
        )
        .block_device_mappings(
            aws_sdk_ec2::types::BlockDeviceMapping::builder()
                .device_name("/dev/xvdb")
                .ebs(
                    aws_sdk_ec2::types::EbsBlockDevice::builder()
                        .snapshot_id(&data)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    ec2.create_tags()
        .resources(&built)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("opsy-packer-build")
                .value("true")
                .build(),
        )
        .send()
        .await
        .unwrap();
    world.finish_job(&job, 0, &artifact(&built)).await;
    world.reconcile().await;
    world.reconcile().await;
    let described = ec2
        .describe_images()
        .image_ids(&built)
        .send()
        .await
        .unwrap()
        .images
        .unwrap()
        .remove(0);
    let snapshots: Vec<String> = described
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
        .collect();
    assert_eq!(snapshots.len(), 2, "{described:?}");
    let root = snapshots.iter().find(|s| **s != data).unwrap().clone();
    let snapshot = |id: String| {
        let ec2 = ec2.clone();
        async move {
            let tags: Vec<String> = ec2
                .describe_snapshots()
                .snapshot_ids(&id)
                .send()
                .await
                .unwrap()
                .snapshots
                .unwrap()
                .remove(0)
                .tags()
                .iter()
                .filter_map(|t| t.key().map(str::to_owned))
                .collect();
            let shared: Vec<String> = ec2
                .describe_snapshot_attribute()
                .snapshot_id(&id)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .send()
                .await
                .unwrap()
                .create_volume_permissions()
                .iter()
                .filter_map(|p| p.user_id().map(str::to_owned))
                .collect();
            (tags, shared)
        }
    };
    assert_eq!(
        snapshot(root.clone()).await,
        (
            vec!["brought-to-you-by".to_owned()],
            vec![CONSUMER.to_owned()]
        ),
        "the build's own snapshot is marked and shared"
    );
    assert_eq!(
        snapshot(data.clone()).await,
        (vec![], vec![]),
        "the data set is neither marked nor shared"
    );

    // Replaced, and past retention two days later: deregistered with its own snapshot only.
    world.publish_base("base-al2023-v2").await;
    build_once(&world, "al2023-hardened-2").await;
    // EC2 refuses the deletion of the build's snapshot once: recorded, and deleted again.
    world.now += jiff::SignedDuration::from_hours(48);
    world
        .moto
        .inject_error("DeleteSnapshot", "InvalidSnapshot.InUse", 400, 1)
        .unwrap();
    world.reconcile().await;
    let status = world.status().await;
    let fate = status.retention.iter().find(|f| f.image == built).unwrap();
    assert_eq!(fate.fate, "Deregistered", "{:?}", status.retention);
    assert!(fate.reason.contains(&format!("kept {data}")), "{fate:?}");
    assert_eq!(
        status
            .pending_snapshot_deletions
            .iter()
            .map(|p| p.snapshot.as_str())
            .collect::<Vec<_>>(),
        [root.as_str()]
    );
    assert!(
        world
            .events()
            .await
            .contains(&"SnapshotDeletionFailed".to_owned())
    );
    world.reconcile().await;
    assert!(world.status().await.pending_snapshot_deletions.is_empty());
    let left: Vec<String> = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_owned))
        .collect();
    assert!(left.contains(&data), "the data set is still there");
    assert!(
        !left.contains(&root),
        "the build's snapshot went with its AMI"
    );
    let calls = world.moto.operator_calls().unwrap();
    opsy_testkit::iam::check_resource_calls("packer-builder-operator", &calls, 8).unwrap();
}

#[tokio::test]
async fn the_ami_of_a_build_whose_job_is_gone_is_adopted_or_named() {
    let world = World::new(pb_manifest(serde_json::json!({}))).await;
    let base = world.publish_base("base-al2023-v1").await;
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    // The build registered its AMI, tagged as the sample project tags it; its Job was removed
    // (ttlAfterFinished) while the operator was down, before anyone read its result.
    let built = world
        .fixture
        .register_image(
            "al2023-hardened-1",
            &[
                ("opsy-build-base-ami", base.as_str()),
                ("opsy-packer-build", "true"),
            ],
        )
        .await
        .unwrap();
    let jobs = world.jobs();
    let gone = |name: String| {
        let jobs = jobs.clone();
        async move {
            jobs.delete(&name, &kube::api::DeleteParams::background())
                .await
                .unwrap();
        }
    };
    gone(job.clone()).await;
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(
        status.active_image.as_ref().map(|i| i.id.as_str()),
        Some(built.as_str()),
        "{status:#?}"
    );
    assert_eq!(status.failed_job_count, 0);
    assert_eq!(world.image_tags(&built).await["status"], "active");
    assert!(world.events().await.contains(&"BuildAdopted".to_owned()));
    world.reconcile().await;
    assert!(world.job_names().await.is_empty(), "no rebuild");

    // The next build's AMI carries no base-ami tag: it is named in the failure, not adopted.
    world.publish_base("base-al2023-v2").await;
    world.reconcile().await;
    let job = world.status().await.job_name.unwrap();
    let unknown = world
        .fixture
        .register_image("al2023-hardened-2", &[])
        .await
        .unwrap();
    gone(job).await;
    world.reconcile().await;
    let status = world.status().await;
    assert_eq!(status.failed_job_count, 1);
    assert!(
        status
            .last_run_message
            .as_deref()
            .is_some_and(|m| m.contains(&unknown) && m.contains("no build claims")),
        "{:?}",
        status.last_run_message
    );
    assert_eq!(status.active_image.unwrap().id, built);
    let scope = opsy_testkit::invariants::Scope {
        built: vec![built.clone(), unknown.clone()],
        ..opsy_testkit::invariants::Scope::new(&world.moto, world.client.clone(), &world.ns.name)
    };
    opsy_testkit::invariants::check(&scope).await;
}

#[tokio::test]
async fn a_copy_that_failed_is_made_again_and_the_failed_one_deregistered() {
    const EAST: &str = "us-east-1";
    let world = World::new(pb_manifest(serde_json::json!({
        "distribution": {"regions": [{"region": EAST}]},
    })))
    .await;
    let east = Fixture::new(&world.moto, EAST).await;
    world.publish_base("base-al2023-v1").await;
    east.register_image("base-al2023-v1", &[]).await.unwrap();
    // The emulator fails copies of an AMI tagged so (as a snapshot copy can fail).
    let built = build_once_tagged(
        &world,
        "al2023-hardened-1",
        &[("opsy.test/copy-outcome", "failed")],
    )
    .await;
    world.reconcile().await;
    let first = world.status().await.distribution[1].image_id.clone();
    let state = |id: String| {
        let ec2 = east.ec2.clone();
        async move {
            ec2.describe_images()
                .image_ids(id)
                .send()
                .await
                .unwrap()
                .images
                .unwrap_or_default()
                .first()
                .and_then(|i| i.state().map(|s| s.as_str().to_owned()))
        }
    };
    // Pending for a poll, then failed.
    assert_eq!(state(first.clone()).await.as_deref(), Some("pending"));
    assert_eq!(state(first.clone()).await.as_deref(), Some("failed"));
    world
        .fixture
        .ec2
        .delete_tags()
        .resources(&built)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("opsy.test/copy-outcome")
                .build(),
        )
        .send()
        .await
        .unwrap();
    // Copied again (pending for a poll), then available.
    for _ in 0..3 {
        world.reconcile().await;
    }
    let copy = &world.status().await.distribution[1];
    assert_ne!(copy.image_id, first, "copied again");
    assert_eq!(copy.state, "available");
    assert_eq!(
        state(first.clone()).await,
        None,
        "the failed copy is deregistered"
    );
    assert!(world.events().await.contains(&"Distributed".to_owned()));
}

#[tokio::test]
async fn an_account_taken_out_of_share_with_loses_every_ami_even_after_status_was_lost() {
    const KEPT: &str = "210987654321";
    const REMOVED: &str = "310987654321";
    let world = World::new(pb_manifest(serde_json::json!({
        "distribution": {"shareWith": [KEPT, REMOVED]},
    })))
    .await;
    world.publish_base("base-al2023-v1").await;
    let first = build_once(&world, "al2023-hardened-1").await;
    world.reconcile().await;
    world.publish_base("base-al2023-v2").await;
    let second = build_once(&world, "al2023-hardened-2").await;
    world.reconcile().await;
    let shared_with = |image: String| {
        let ec2 = world.fixture.ec2.clone();
        async move {
            let mut accounts: Vec<String> = ec2
                .describe_image_attribute()
                .image_id(image)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
                .send()
                .await
                .unwrap()
                .launch_permissions()
                .iter()
                .filter_map(|p| p.user_id().map(str::to_owned))
                .collect();
            accounts.sort();
            accounts
        }
    };
    assert_eq!(shared_with(first.clone()).await, [KEPT, REMOVED]);
    assert_eq!(shared_with(second.clone()).await, [KEPT, REMOVED]);

    // Status is lost, and one account is taken out: no AMI of this PackerBuilder stays
    // shared with it, the older one included.
    world.lose_status().await;
    world
        .edit(|spec| {
            spec.distribution.as_mut().unwrap().share_with = vec![KEPT.to_owned()];
        })
        .await;
    // (The first reconcile records the last Job again, which status forgot.)
    world.reconcile().await;
    world.reconcile().await;
    assert_eq!(shared_with(first).await, [KEPT]);
    assert_eq!(shared_with(second).await, [KEPT]);
    // Checked once: the next reconcile asks EC2 about no AMI's sharing.
    world.moto.clear_requests().unwrap();
    world.reconcile().await;
    assert_eq!(
        world.moto.requests().unwrap().get("DescribeImageAttribute"),
        None
    );
}
