//! The local sandbox: both operators' real reconcilers, a real Kubernetes control plane on
//! loopback (etcd, kube-apiserver, kube-controller-manager) holding the upstream README's two
//! example resources, and the AWS emulator seeded with EKS base AMIs and a cluster. The sandbox
//! plays the kubelet for Packer Jobs (it registers the AMI a build would produce and ends the
//! Job controller's build Pod with Packer's artifact line) and narrates what happens. A second
//! story promotes the built AMI from the example's cluster (staging) to a production cluster
//! after 72 hours of soak, inside its maintenance window, by moving the operators' clock.
//!
//! `--keep` leaves the control plane running at the end and prints a `KUBECONFIG` to explore it
//! with kubectl; Ctrl-C stops everything.

#![allow(clippy::print_stdout)] // narrating is this program's job

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::events::{Recorder, Reporter},
};
use opsy_api::{
    AMIRefresher, PackerBuilder,
    ami_refresher::{NodeGroupPhase, NodeGroupStatus},
    tags,
};
use opsy_aws::{AwsOptions, ClientSet, ImageQuery};
use opsy_runtime::metrics::Metrics;
use opsy_testkit::{ControlPlane, Fixture, Moto, NodeGroupSpec, kubelet, seed};

const NAMESPACE: &str = "default";
const REGION: &str = "us-west-2";
const UPSTREAM_PB: &str = include_str!("../../../examples/upstream-packer-builder.yaml");
const UPSTREAM_AMR: &str = include_str!("../../../examples/upstream-ami-refresher.yaml");
/// The upstream example AMIRefresher; its cluster plays staging in the promotion story.
const STAGING_AMR: &str = "node-group-ami-refresh";
/// The production cluster of the promotion story, and its AMIRefresher.
const PROD_CLUSTER: &str = "ibeify-prod";
const PROD_AMR: &str = "prod-ami-refresh";

struct Sandbox {
    /// The EKS cluster the AMIRefresher updates.
    cluster: String,
    /// How far the sandbox's clock runs ahead of the real one (moved to show days of soak).
    ahead: Arc<Mutex<SignedDuration>>,
    moto: Moto,
    fixture: Fixture,
    client: Client,
    started: Instant,
    builds: u32,
}

fn say(text: &str) {
    println!("{text}");
}

fn detail(text: &str) {
    println!("    {text}");
}

impl Sandbox {
    fn elapsed(&self) -> String {
        format!("[{:>5.1}s]", self.started.elapsed().as_secs_f64())
    }

    fn step(&self, text: &str) {
        println!("\n{} {text}", self.elapsed());
    }

    /// The operators' clock: the real time plus how far the sandbox moved it.
    fn clock(&self) -> opsy_runtime::context::Clock {
        let ahead = self.ahead.clone();
        Arc::new(move || {
            let by = ahead.lock().map(|a| *a).unwrap_or_default();
            Timestamp::now()
                .checked_add(by)
                .unwrap_or_else(|_| Timestamp::now())
        })
    }

    /// Moves the clock so that it reads `at`.
    fn move_clock_to(&self, at: Timestamp) {
        if let Ok(mut ahead) = self.ahead.lock() {
            *ahead = at.duration_since(Timestamp::now());
        }
    }

    fn aws(&self) -> ClientSet {
        ClientSet::new(AwsOptions::emulator(self.moto.endpoint()))
    }

    fn recorder(&self, controller: &str) -> Recorder {
        Recorder::new(
            self.client.clone(),
            Reporter {
                controller: controller.into(),
                instance: None,
            },
        )
    }

    async fn reconcile_builder(&self) -> anyhow::Result<PackerBuilder> {
        let api: Api<PackerBuilder> = Api::namespaced(self.client.clone(), NAMESPACE);
        let pb = api.get("packer-builder-local").await?;
        let aws = self.aws();
        let ctx = Arc::new(packer_builder_operator::reconcile::Context {
            client: self.client.clone(),
            metrics: Arc::new(Metrics::new(aws.calls().clone())),
            aws,
            recorder: self.recorder("packer-builder-operator"),
            clock: self.clock(),
            poll_interval: Duration::from_secs(30),
            // No Slack in the sandbox: notifications fail fast and show in status.
            slack_api: "http://127.0.0.1:9".into(),
            webhook_addresses: opsy_runtime::context::AddressPolicy::default(),
            failures: Default::default(),
            build_policy: Default::default(),
            require_class: false,
            namespaces: vec![None],
            outbox: Default::default(),
        });
        Box::pin(packer_builder_operator::reconcile::reconcile(
            Arc::new(pb),
            ctx,
        ))
        .await
        .context("PackerBuilder reconcile")?;
        Ok(api.get("packer-builder-local").await?)
    }

    async fn reconcile_refresher(&self) -> anyhow::Result<AMIRefresher> {
        self.reconcile_refresher_of(STAGING_AMR, &self.cluster)
            .await
    }

    /// Reconciles AMIRefresher `name` of `cluster`.
    async fn reconcile_refresher_of(
        &self,
        name: &str,
        cluster: &str,
    ) -> anyhow::Result<AMIRefresher> {
        // Plays the kubelets: the instances of the cluster's groups join as Ready Nodes (what
        // the refresher's health gate waits for after AWS reports an update done).
        self.fixture
            .sync_nodes(&self.client, cluster, &|_| true)
            .await
            .map_err(|e| anyhow::anyhow!("registering the nodes: {e}"))?;
        let api: Api<AMIRefresher> = Api::namespaced(self.client.clone(), NAMESPACE);
        let amr = api.get(name).await?;
        let aws = self.aws();
        let ctx = Arc::new(ami_refresh_operator::reconcile::Context {
            client: self.client.clone(),
            metrics: Arc::new(Metrics::new(aws.calls().clone())),
            aws,
            recorder: self.recorder("ami-refresh-operator"),
            clock: self.clock(),
            poll_interval: Duration::from_secs(30),
            slack_api: "http://127.0.0.1:9".into(),
            webhook_addresses: opsy_runtime::context::AddressPolicy::default(),
            failures: Default::default(),
            build_policy: Default::default(),
            require_class: false,
            namespaces: vec![None],
            outbox: Default::default(),
        });
        Box::pin(ami_refresh_operator::reconcile::reconcile(
            Arc::new(amr),
            ctx,
        ))
        .await
        .context("AMIRefresher reconcile")?;
        Ok(api.get(name).await?)
    }

    /// Plays the kubelet: the build "produces" an AMI (tagged as the sample Packer project tags
    /// it) and the Job completes with Packer's artifact line in the build container's
    /// termination message.
    async fn run_build(&mut self, job: &str) -> anyhow::Result<String> {
        self.builds += 1;
        let name = format!("opsy-al2023-hardened-{}", self.builds);
        let ami = self
            .fixture
            .register_image(&name, &[("opsy-packer-build", "true")])
            .await
            .map_err(|e| anyhow::anyhow!("registering the built AMI: {e}"))?;
        kubelet::finish_build_job(
            &self.client,
            NAMESPACE,
            job,
            0,
            &kubelet::artifact_line(REGION, &ami),
        )
        .await?;
        Ok(ami)
    }

    /// Builds until the PackerBuilder has an active AMI; returns it.
    async fn build_cycle(&mut self) -> anyhow::Result<String> {
        let pb = self.reconcile_builder().await?;
        let status = pb.status.clone().unwrap_or_default();
        let job = status
            .job_name
            .clone()
            .context("no build Job was started")?;
        if let Some(base) = &status.base_image {
            detail(&format!(
                "base AMI: {} ({})",
                base.id,
                base.name.as_deref().unwrap_or("")
            ));
        }
        detail(status.last_run_message.as_deref().unwrap_or(""));
        detail(&format!(
            "commands: {}",
            status.command.as_deref().unwrap_or("")
        ));
        let ami = self.run_build(&job).await?;
        self.step(&format!(
            "Packer reports artifact {ami}; the operator verifies and tags it"
        ));
        let pb = self.reconcile_builder().await?;
        let status = pb.status.unwrap_or_default();
        let active = status
            .active_image
            .context("no active AMI after the build")?;
        let aws = self.aws().region(REGION).await;
        let image = aws
            .describe_images(&ImageQuery::default().ids([active.id.as_str()]))
            .await?;
        let image = image.first().context("the active AMI is not in EC2")?;
        detail(&format!(
            "{} tagged {}={}, {}={}, expires {}",
            active.id,
            tags::STATUS,
            image.tag(tags::STATUS).unwrap_or("?"),
            tags::BASE_AMI,
            image.tag(tags::BASE_AMI).unwrap_or("?"),
            active.expires.map(|t| t.0.to_string()).unwrap_or_default()
        ));
        detail(status.last_run_message.as_deref().unwrap_or(""));
        Ok(active.id)
    }

    /// Reconciles the AMIRefresher until no group is pending or updating, narrating each
    /// group's transitions.
    async fn rollout(&self) -> anyhow::Result<Vec<NodeGroupStatus>> {
        self.rollout_of(STAGING_AMR, &self.cluster).await
    }

    /// [`Sandbox::rollout`] of AMIRefresher `name` of `cluster`.
    async fn rollout_of(&self, name: &str, cluster: &str) -> anyhow::Result<Vec<NodeGroupStatus>> {
        let mut seen: BTreeMap<String, NodeGroupPhase> = BTreeMap::new();
        for round in 1..=40 {
            let amr = self.reconcile_refresher_of(name, cluster).await?;
            let status = amr.status.unwrap_or_default();
            if round == 1 {
                if let Some(target) = &status.target_image {
                    detail(&format!(
                        "target AMI: {} ({})",
                        target.id,
                        target.name.as_deref().unwrap_or("")
                    ));
                }
                if !status.unknown_groups.is_empty() {
                    detail(&format!(
                        "warning: unknown groups in spec: {}",
                        status.unknown_groups.join(", ")
                    ));
                }
            }
            for group in &status.node_groups {
                if seen.get(&group.name) != Some(&group.phase) {
                    seen.insert(group.name.clone(), group.phase);
                    let extra = match group.phase {
                        NodeGroupPhase::Updating => format!(
                            "launch template {} v{} → v{}",
                            group.launch_template_id.as_deref().unwrap_or("?"),
                            group.from_version.as_deref().unwrap_or("?"),
                            group.to_version.as_deref().unwrap_or("?")
                        ),
                        _ => group.message.clone().unwrap_or_default(),
                    };
                    println!(
                        "{}   {:<12} {:<11} {:<10} {extra}",
                        self.elapsed(),
                        group.name,
                        format!("{:?}", group.kind),
                        format!("{:?}", group.phase)
                    );
                }
            }
            let busy = status.node_groups.iter().any(|g| {
                matches!(
                    g.phase,
                    NodeGroupPhase::Pending | NodeGroupPhase::Updating | NodeGroupPhase::Verifying
                )
            });
            if !busy {
                detail(&format!(
                    "rollout done: {}",
                    status.progress.as_deref().unwrap_or("")
                ));
                return Ok(status.node_groups);
            }
        }
        bail!("the rollout did not finish in 40 reconciles")
    }
}

/// The second story: production takes the AMI staging (the upstream example's cluster) ran
/// healthy for 72 hours, and only inside its Saturday maintenance window. The sandbox moves its
/// clock instead of waiting.
async fn promotion(
    sandbox: &Sandbox,
    ami: &str,
    builder_cluster: &str,
    filters: &[opsy_api::AmiFilter],
) -> anyhow::Result<()> {
    let staging = &sandbox.cluster;
    sandbox.step(&format!(
        "Promotion: production cluster {PROD_CLUSTER} takes only AMIs healthy on {staging} for 72h, inside its window (Saturdays 02:00 UTC, 4h)"
    ));
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| {
        anyhow::anyhow!("setting up the production cluster: {e}")
    };
    sandbox
        .fixture
        .create_cluster(PROD_CLUSTER)
        .await
        .map_err(fail)?;
    for name in ["prod-a", "prod-b"] {
        sandbox
            .fixture
            .create_node_group(
                PROD_CLUSTER,
                &NodeGroupSpec::with_image(name, seed::ids::AL2023_130_SEP),
            )
            .await
            .map_err(fail)?;
    }
    let prod: AMIRefresher = serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "AMIRefresher",
        "metadata": {"name": PROD_AMR, "namespace": NAMESPACE},
        "spec": {
            "region": REGION,
            "clusterName": PROD_CLUSTER,
            "amiFilters": filters,
            "expiresIn": "30d",
            "acceptFrom": [{"clusterName": builder_cluster}],
            "promotion": {"soakOn": [{"clusterName": staging, "duration": "72h"}]},
            "maintenanceWindows": [{"schedule": "0 2 * * SAT", "duration": "4h"}],
        },
    }))?;
    Api::<AMIRefresher>::namespaced(sandbox.client.clone(), NAMESPACE)
        .create(&PostParams::default(), &prod)
        .await
        .context("creating the production AMIRefresher")?;
    let aws = sandbox.aws().region(REGION).await;
    let image = aws
        .describe_images(&ImageQuery::default().ids([ami]))
        .await?;
    let account = aws.cluster(staging).await?.and_then(|c| c.account);
    let evidence = ami_refresh_operator::evidence_key(staging, account.as_deref());
    detail(&format!(
        "{ami} carries {evidence}={} (written when {staging}'s rollout was complete and healthy)",
        image
            .first()
            .and_then(|i| i.tag(&evidence))
            .unwrap_or("(none)")
    ));
    let amr = sandbox
        .reconcile_refresher_of(PROD_AMR, PROD_CLUSTER)
        .await?;
    let status = amr.status.unwrap_or_default();
    for held in &status.held_back {
        detail(&format!(
            "held back: {} ({}): {}",
            held.image, held.gate, held.message
        ));
    }
    let opens = status
        .held_back
        .iter()
        .find_map(|h| h.opens.as_ref().map(|t| t.0))
        .context("the soak gate named no time it opens")?;

    let soaked = opens + SignedDuration::from_mins(1);
    sandbox.step(&format!("Moving the sandbox's clock to {soaked}: soaked"));
    sandbox.move_clock_to(soaked);
    let amr = sandbox
        .reconcile_refresher_of(PROD_AMR, PROD_CLUSTER)
        .await?;
    let status = amr.status.unwrap_or_default();
    let window = status.maintenance_window.clone().unwrap_or_default();
    if !window.open {
        if let Some(progressing) =
            opsy_api::conditions::find(&status.conditions, opsy_api::conditions::PROGRESSING)
        {
            detail(&format!("{}: {}", progressing.reason, progressing.message));
        }
        let next = window
            .next_opens
            .map(|t| t.0)
            .context("no maintenance window opens")?;
        let inside = next + SignedDuration::from_mins(5);
        sandbox.step(&format!(
            "Moving the sandbox's clock to {inside}: inside the window"
        ));
        sandbox.move_clock_to(inside);
    } else {
        detail("the window happens to be open");
    }
    sandbox.step(&format!(
        "AMIRefresher {PROD_AMR}: roll {ami} out to {PROD_CLUSTER}"
    ));
    sandbox.rollout_of(PROD_AMR, PROD_CLUSTER).await?;
    let image = aws
        .describe_images(&ImageQuery::default().ids([ami]))
        .await?;
    let account = aws.cluster(PROD_CLUSTER).await?.and_then(|c| c.account);
    let evidence = ami_refresh_operator::evidence_key(PROD_CLUSTER, account.as_deref());
    detail(&format!(
        "promoted: {ami} now also carries {evidence}={}",
        image
            .first()
            .and_then(|i| i.tag(&evidence))
            .unwrap_or("(none)"),
    ));
    Ok(())
}

fn with_namespace<K: kube::Resource>(mut object: K) -> K {
    object.meta_mut().namespace = Some(NAMESPACE.into());
    object
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    say(
        "opsy-ami-operator sandbox: both reconcilers, a local Kubernetes control plane, the AWS emulator",
    );

    let moto =
        Moto::start().context("starting the AWS emulator (run `cargo xtask setup` first)")?;
    let fixture = Fixture::new(&moto, REGION).await;
    let pb: PackerBuilder = with_namespace(serde_saphyr::from_str(UPSTREAM_PB)?);
    let amr: AMIRefresher = with_namespace(serde_saphyr::from_str(UPSTREAM_AMR)?);
    let cluster = amr.spec.cluster_name.clone();
    let amr_filters = amr.spec.ami_filters.clone().unwrap_or_default();
    let builder_cluster = pb.spec.cluster_name.clone();
    let keep = std::env::args().skip(1).any(|a| a == "--keep");
    let control_plane = ControlPlane::start().context("starting the Kubernetes control plane")?;
    let client = control_plane.client().await?;
    Api::<PackerBuilder>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &pb)
        .await
        .context("creating the upstream PackerBuilder example")?;
    Api::<AMIRefresher>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &amr)
        .await
        .context("creating the upstream AMIRefresher example")?;
    let mut sandbox = Sandbox {
        cluster: cluster.clone(),
        ahead: Arc::default(),
        moto,
        fixture,
        client,
        started,
        builds: 0,
    };

    sandbox.step(&format!(
        "AWS emulator on {} seeded with EKS AL2023 base AMIs; EKS cluster {cluster}:",
        sandbox.moto.endpoint()
    ));
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| {
        anyhow::anyhow!("setting up the cluster: {e}")
    };
    sandbox
        .fixture
        .create_cluster(&cluster)
        .await
        .map_err(fail)?;
    for name in ["workers-a", "workers-b", "ingress-dev"] {
        sandbox
            .fixture
            .create_node_group(
                &cluster,
                &NodeGroupSpec::with_image(name, seed::ids::AL2023_130_SEP),
            )
            .await
            .map_err(fail)?;
    }
    sandbox
        .fixture
        .create_node_group(&cluster, &NodeGroupSpec::without_template("system"))
        .await
        .map_err(fail)?;
    sandbox
        .fixture
        .create_self_managed_group(&cluster, "legacy-asg", seed::ids::AL2023_130_SEP, &[])
        .await
        .map_err(fail)?;
    detail(
        "managed node groups workers-a, workers-b, ingress-dev (excluded by the example), system (no launch template)",
    );
    detail(&format!(
        "self-managed Auto Scaling group legacy-asg; all on {}",
        seed::ids::AL2023_130_SEP
    ));
    detail(
        "custom resources: examples/upstream-packer-builder.yaml and examples/upstream-ami-refresher.yaml, unchanged",
    );

    sandbox.step("AMIRefresher before any build: nothing eligible yet");
    let amr = sandbox.reconcile_refresher().await?;
    let status = amr.status.unwrap_or_default();
    let degraded = opsy_api::conditions::find(&status.conditions, opsy_api::conditions::DEGRADED);
    detail(
        degraded
            .map(|c| c.message.as_str())
            .unwrap_or("(no condition)"),
    );

    if let Some(warning) =
        opsy_api::conditions::find(&status.conditions, opsy_api::conditions::CONFIG_WARNING)
    {
        detail(&format!("ConfigWarning: {}", warning.message));
    }

    sandbox.step("PackerBuilder: the example names Secrets git-sync and aws-creds; without them no build starts");
    let pb = sandbox.reconcile_builder().await?;
    detail(
        pb.status
            .as_ref()
            .and_then(|s| opsy_api::conditions::find(&s.conditions, opsy_api::conditions::DEGRADED))
            .map(|c| c.message.as_str())
            .unwrap_or("(no condition)"),
    );
    let secrets: Api<Secret> = Api::namespaced(sandbox.client.clone(), NAMESPACE);
    for (name, keys) in [
        ("git-sync", &["username", "token"][..]),
        (
            "aws-creds",
            &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"][..],
        ),
    ] {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            string_data: Some(
                keys.iter()
                    .map(|k| ((*k).to_owned(), "placeholder".to_owned()))
                    .collect(),
            ),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .with_context(|| format!("creating Secret {name}"))?;
    }
    detail(
        "created them (placeholder values): git-sync {username, token}, aws-creds {AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY}",
    );

    sandbox.step("PackerBuilder: find the base AMI, start a build");
    let first = sandbox.build_cycle().await?;

    sandbox.step("PackerBuilder again: the AMI is active and unexpired, nothing to do");
    let pb = sandbox.reconcile_builder().await?;
    let jobs: Api<Job> = Api::namespaced(sandbox.client.clone(), NAMESPACE);
    detail(&format!(
        "{} Job(s) in total; Ready: {}",
        jobs.list(&ListParams::default()).await?.items.len(),
        pb.status
            .as_ref()
            .and_then(|s| opsy_api::conditions::find(&s.conditions, "Ready"))
            .map(|c| c.message.clone())
            .unwrap_or_default()
    ));

    sandbox.step(&format!(
        "AMIRefresher: {first} was built for cluster {builder_cluster}, not {cluster}: passed over"
    ));
    let amr = sandbox.reconcile_refresher().await?;
    let status = amr.status.unwrap_or_default();
    detail(
        opsy_api::conditions::find(&status.conditions, opsy_api::conditions::DEGRADED)
            .map(|c| c.message.as_str())
            .unwrap_or("(no condition)"),
    );
    sandbox.step(&format!(
        "The one-line change that accepts it: spec.acceptFrom: [{{clusterName: {builder_cluster}}}]"
    ));
    Api::<AMIRefresher>::namespaced(sandbox.client.clone(), NAMESPACE)
        .patch(
            STAGING_AMR,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": {"acceptFrom": [{"clusterName": builder_cluster}]}
            })),
        )
        .await
        .context("accepting the builder's cluster")?;

    sandbox.step(&format!(
        "AMIRefresher: roll {first} out, one group at a time"
    ));
    sandbox.rollout().await?;

    let newer = "ami-0a130202412050000";
    sandbox.step(&format!("AWS publishes a newer EKS base AMI: {newer}"));
    sandbox.moto.publish_image(
        REGION,
        newer,
        "amazon-eks-node-al2023-x86_64-standard-1.30-v20241205",
        seed::EKS_OWNER,
    )?;
    sandbox.step("PackerBuilder: the base moved on, rebuild");
    let second = sandbox.build_cycle().await?;
    let aws = sandbox.aws().region(REGION).await;
    let old = aws
        .describe_images(&ImageQuery::default().ids([first.as_str()]))
        .await?;
    if let Some(old) = old.first() {
        detail(&format!(
            "previous AMI {first}: status={}",
            old.tag(tags::STATUS).unwrap_or("?")
        ));
    }

    sandbox.step(&format!("AMIRefresher: re-roll to {second}"));
    let groups = sandbox.rollout().await?;

    sandbox.step("Summary");
    println!(
        "    {:<12} {:<11} {:<10} {:<24} {:<24} version",
        "group", "kind", "phase", "from", "to"
    );
    for g in &groups {
        println!(
            "    {:<12} {:<11} {:<10} {:<24} {:<24} {}",
            g.name,
            format!("{:?}", g.kind),
            format!("{:?}", g.phase),
            g.from_image.as_deref().unwrap_or("-"),
            g.to_image.as_deref().unwrap_or("-"),
            match (&g.from_version, &g.to_version) {
                (Some(f), Some(t)) => format!("v{f} → v{t}"),
                (Some(f), None) => format!("v{f}"),
                _ => "-".into(),
            }
        );
    }
    let requests = sandbox.moto.requests()?;
    let total: u64 = requests.values().sum();
    let describe_images = requests.get("DescribeImages").copied().unwrap_or(0);
    detail(&format!(
        "{} builds, {total} AWS requests served by the emulator ({describe_images} DescribeImages), {:.1}s in all",
        sandbox.builds,
        sandbox.started.elapsed().as_secs_f64()
    ));
    promotion(&sandbox, &second, &builder_cluster, &amr_filters).await?;

    fleet_gauges(&sandbox).await?;
    sandbox.step("kubectl get pb,amr -A  (the printer columns)");
    kubectl(&control_plane, &["get", "pb,amr", "-A"])?;
    sandbox.step("kubectl get events  (what the operators reported)");
    kubectl(
        &control_plane,
        &[
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--sort-by=.metadata.creationTimestamp",
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,KIND:.involvedObject.kind,OBJECT:.involvedObject.name,MESSAGE:.message",
        ],
    )?;
    if keep {
        say(&format!(
            "\nThe control plane keeps running (the AWS emulator too, at {}):\n    export KUBECONFIG={}\n    kubectl get pb,amr -A\nCtrl-C stops everything.",
            sandbox.moto.endpoint(),
            control_plane.kubeconfig().display()
        ));
        tokio::signal::ctrl_c().await?;
    }
    drop(sandbox); // stops the emulator
    drop(control_plane);
    Ok(())
}

/// Prints the fleet gauges `/metrics` serves for the sandbox's objects, beside the status
/// they are read from.
async fn fleet_gauges(sandbox: &Sandbox) -> anyhow::Result<()> {
    sandbox.step("Fleet gauges  (what /metrics serves, read from the resources' status)");
    let builders = Api::<PackerBuilder>::namespaced(sandbox.client.clone(), NAMESPACE)
        .list(&Default::default())
        .await?
        .items;
    let refreshers = Api::<AMIRefresher>::namespaced(sandbox.client.clone(), NAMESPACE)
        .list(&Default::default())
        .await?
        .items;
    for amr in &refreshers {
        let status = amr.status.clone().unwrap_or_default();
        detail(&format!(
            "AMIRefresher {}: status.nodesOnTarget {}",
            amr.name_any(),
            status.nodes_on_target.as_deref().unwrap_or("-")
        ));
        for group in &status.node_groups {
            if let Some(created) = &group.image_created {
                detail(&format!(
                    "AMIRefresher {} group {}: status.nodeGroups[].imageCreated {} ({} s)",
                    amr.name_any(),
                    group.name,
                    created.0,
                    created.0.as_second()
                ));
            }
        }
    }
    let metrics = Metrics::new(Default::default());
    metrics.fleet().add_source(Box::new(move || {
        let mut objects: Vec<opsy_runtime::fleet::Object> = builders
            .iter()
            .map(|pb| {
                (
                    NAMESPACE.to_owned(),
                    pb.name_any(),
                    packer_builder_operator::fleet::samples(pb),
                )
            })
            .collect();
        objects.extend(refreshers.iter().map(|amr| {
            (
                NAMESPACE.to_owned(),
                amr.name_any(),
                ami_refresh_operator::fleet::samples(amr),
            )
        }));
        objects
    }));
    for line in metrics.render().lines().filter(|l| {
        [
            "opsy_packerbuilder_",
            "opsy_amirefresher_",
            "opsy_nodegroup_",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    }) {
        detail(line);
    }
    Ok(())
}

/// Runs the control plane's kubectl as the admin; its output goes to ours.
fn kubectl(control_plane: &ControlPlane, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(control_plane.binary("kubectl"))
        .arg("--kubeconfig")
        .arg(control_plane.kubeconfig())
        .args(args)
        .status()
        .context("running kubectl")?;
    if !status.success() {
        bail!("kubectl {} failed: {status}", args.join(" "));
    }
    Ok(())
}
