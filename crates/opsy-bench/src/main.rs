//! `cargo xtask bench`: what the operators cost — AWS calls per reconcile cycle, reconcile
//! latency and throughput, the time from a finished build to its AMI being `active`, and
//! memory — measured with the real reconcilers against the AWS emulator (moto, over HTTP) and
//! a real Kubernetes control plane on loopback (one per scenario). Prints a table and writes
//! `target/bench/results.json`.
//!
//! Every AWS call is counted twice: by the operator's own per-operation counters and by the
//! emulator at the HTTP level; the table shows both.

// The benchmark's output is a report for people.
#![allow(clippy::print_stdout)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, PostParams},
};
use opsy_api::{AMIRefresher, PackerBuilder};
use opsy_aws::{AwsOptions, CallCounter, ClientSet, calls::is_read_only};
use opsy_runtime::{context::Context, metrics::Metrics};
use opsy_testkit::{ACCOUNT_ID, ControlPlane, Fixture, Moto, NodeGroupSpec, kubelet};
use serde::Serialize;

mod process;

const NS: &str = "bench";
const REGION: &str = "us-west-2";
const CLUSTER: &str = "bench-cluster";
/// Reconciles run at the same time, as the operators' default `--concurrency`.
const CONCURRENCY: usize = 4;

#[derive(Debug, Serialize)]
struct Scenario {
    name: String,
    reproduce: String,
    custom_resources: usize,
    filter_sets: usize,
    /// AWS calls of one steady-state cycle (every custom resource reconciled once), by
    /// `service:Operation`, from the operator's counters.
    steady_calls: BTreeMap<String, u64>,
    steady_calls_total: u64,
    /// The same cycle counted by the emulator at the HTTP level.
    steady_http_requests: u64,
    steady_mutating_calls: u64,
    steady_describe_images: u64,
    /// Reconciles per second in the steady cycle (`CONCURRENCY` at a time).
    steady_throughput_per_s: f64,
    steady_latency_ms: Percentiles,
    /// From a finished build Job to its AMI tagged `active` and status written: the reconcile
    /// that processes the completion.
    completion_to_active_ms: Option<Percentiles>,
    /// The whole benchmark process: reconcilers, Kubernetes and AWS clients.
    peak_rss_mib: f64,
    /// The operator binary alone, holding the same custom resources and Jobs.
    operator_process: Option<process::ProcessFigures>,
}

#[derive(Debug, Serialize, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Peak resident memory of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Calls made since `before`, by `service:Operation`.
fn calls_since(
    calls: &CallCounter,
    before: &BTreeMap<(&'static str, &'static str, &'static str), u64>,
) -> BTreeMap<String, u64> {
    let mut by_operation = BTreeMap::new();
    for (key @ (service, operation, _), count) in calls.snapshot() {
        let delta = count - before.get(&key).copied().unwrap_or(0);
        if delta > 0 {
            *by_operation
                .entry(format!("{service}:{operation}"))
                .or_insert(0) += delta;
        }
    }
    by_operation
}

/// HTTP requests the emulator served, without its own control endpoints.
fn http_requests(moto: &Moto) -> anyhow::Result<u64> {
    Ok(moto
        .requests()?
        .iter()
        .filter(|(action, _)| !action.contains("/opsy-ext/") && !action.contains("/moto-api/"))
        .map(|(_, n)| n)
        .sum())
}

/// What one steady cycle cost.
struct Steady {
    calls: BTreeMap<String, u64>,
    http_requests: u64,
    latencies: Vec<Duration>,
    /// Reconciles run and the wall time they took.
    reconciles: usize,
    wall: Duration,
}

impl Scenario {
    fn new(
        name: String,
        reproduce: String,
        (custom_resources, filter_sets): (usize, usize),
        steady: Steady,
        completion_to_active_ms: Option<Percentiles>,
        operator_process: Option<process::ProcessFigures>,
    ) -> Self {
        let operation_calls = |read_only: bool| -> u64 {
            steady
                .calls
                .iter()
                .filter(|(op, _)| {
                    is_read_only(op.split(':').nth(1).unwrap_or_default()) == read_only
                })
                .map(|(_, n)| n)
                .sum()
        };
        Self {
            name,
            reproduce,
            custom_resources,
            filter_sets,
            steady_calls_total: steady.calls.values().sum(),
            steady_mutating_calls: operation_calls(false),
            steady_describe_images: steady.calls.get("ec2:DescribeImages").copied().unwrap_or(0),
            steady_http_requests: steady.http_requests,
            steady_throughput_per_s: steady.reconciles as f64 / steady.wall.as_secs_f64(),
            steady_latency_ms: percentiles(steady.latencies),
            steady_calls: steady.calls,
            completion_to_active_ms,
            peak_rss_mib: peak_rss_mib(),
            operator_process,
        }
    }
}

/// The command that measures scenario `only` again, with this build's profile.
fn reproduce(only: &str) -> String {
    let release = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    format!("cargo xtask bench{release} -- --only {only}")
}

fn packer_builder(i: usize, filter_set: usize) -> anyhow::Result<PackerBuilder> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "PackerBuilder",
        "metadata": {"name": format!("pb-{i:04}")},
        "spec": {
            "region": REGION,
            "clusterName": CLUSTER,
            "amiFilters": [
                {"name": "name", "values": [format!("bench-base-{filter_set}-*")]},
                {"name": "owner-id", "values": [ACCOUNT_ID]},
            ],
            "timeOuts": {"expiresIn": "30d", "controllerTimer": "5m"},
            "builder": {
                "repoURL": "https://github.com/example-org/eks-node-images",
                "branch": "main",
                "dir": "packer/al2023",
            },
        },
    }))?)
}

/// An admin client of `control_plane`, with the benchmark's namespace created.
async fn bench_namespace(control_plane: &ControlPlane) -> anyhow::Result<Client> {
    let client = control_plane.client().await?;
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(client)
}

/// Creates `objects` through `api`, a few at a time.
async fn create_all<K>(api: &Api<K>, objects: Vec<K>) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let created: Vec<kube::Result<K>> = stream::iter(objects)
        .map(|object| async move { api.create(&PostParams::default(), &object).await })
        .buffer_unordered(8)
        .collect()
        .await;
    for result in created {
        result?;
    }
    Ok(())
}

/// Reconciles every object of `objects` once, `CONCURRENCY` at a time; returns each
/// reconcile's duration and the wall time of the cycle.
async fn cycle<K, F, Fut>(
    objects: Vec<K>,
    reconcile: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(Arc<K>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = stream::iter(objects)
        .map(|object| {
            let run = reconcile(Arc::new(object));
            async move {
                let t = Instant::now();
                run.await?;
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let durations = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((durations, started.elapsed()))
}

/// One operator process: its context lives across cycles, as in the real process.
struct Process {
    ctx: Arc<Context>,
}

impl Process {
    fn new(moto: &Moto, client: &Client, calls: &CallCounter, manager: &str) -> Self {
        let mut options = AwsOptions::emulator(moto.endpoint());
        options.image_cache_ttl = Duration::from_secs(30);
        let aws = ClientSet::with_counter(options, calls.clone());
        let mut ctx = Context::new(
            manager,
            client.clone(),
            aws,
            Arc::new(Timestamp::now),
            Arc::new(Metrics::new(calls.clone())),
        );
        // No Slack here: a notification fails fast without a network call leaving the machine.
        if let Some(ctx) = Arc::get_mut(&mut ctx) {
            ctx.slack_api = "http://127.0.0.1:9".into();
        }
        Self { ctx }
    }

    /// The context for the next cycle. Cycles are `controllerTimer` apart, longer than
    /// `DescribeImages` answers are kept, so those are gone; what never changes (launch
    /// template versions) is still known.
    async fn next_cycle(&self) -> Arc<Context> {
        self.ctx.aws.region(REGION).await.invalidate_images();
        self.ctx.clone()
    }
}

async fn packer_builders(n: usize, filter_sets: usize) -> anyhow::Result<Scenario> {
    let moto = Moto::start().context("starting the AWS emulator (cargo xtask setup)")?;
    let fixture = Fixture::new(&moto, REGION).await;
    for set in 0..filter_sets {
        fixture
            .register_image(&format!("bench-base-{set}-v1"), &[])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let builders = (0..n)
        .map(|i| packer_builder(i, i % filter_sets))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let control_plane = ControlPlane::start()?;
    let client = bench_namespace(&control_plane).await?;
    let api: Api<PackerBuilder> = Api::namespaced(client.clone(), NS);
    create_all(&api, builders).await?;
    let calls = CallCounter::default();
    let operator = Process::new(&moto, &client, &calls, "packer-builder-operator");
    let reconcile_all = |ctx: Arc<Context>| {
        let api = api.clone();
        async move {
            let objects = api.list(&ListParams::default()).await?.items;
            cycle(objects, |pb| {
                let ctx = ctx.clone();
                async move {
                    packer_builder_operator::reconcile::reconcile(pb, ctx).await?;
                    Ok(())
                }
            })
            .await
        }
    };

    let setup = Instant::now();
    // 1. Every PackerBuilder starts a build; the "kubelet" finishes each with a new AMI.
    reconcile_all(operator.next_cycle().await).await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let started = jobs.list(&ListParams::default()).await?.items;
    anyhow::ensure!(
        started.len() == n,
        "{} build Jobs for {n} PackerBuilders",
        started.len()
    );
    eprintln!("bench:   {n} builds started ({:.0?})", setup.elapsed());
    for job in &started {
        let ami = fixture
            .register_image(&format!("built-{}", job.name_any()), &[])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        kubelet::finish_build_job(
            &client,
            NS,
            &job.name_any(),
            0,
            &kubelet::artifact_line(REGION, &ami),
        )
        .await?;
    }
    eprintln!("bench:   {n} builds finished ({:.0?})", setup.elapsed());
    // 2. Each completion: AMI verified, tagged active, status written.
    let (completion, _) = reconcile_all(operator.next_cycle().await).await?;
    let active = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|pb| {
            pb.status
                .as_ref()
                .and_then(|s| s.last_run_built_image_id.as_ref())
                .is_some()
        })
        .count();
    anyhow::ensure!(
        active == n,
        "{active} of {n} PackerBuilders have an active AMI"
    );

    eprintln!("bench:   {n} AMIs active ({:.0?})", setup.elapsed());
    // 3. Steady state: nothing to build, nothing to change.
    let before = calls.snapshot();
    moto.clear_requests()?;
    let (steady, wall) = reconcile_all(operator.next_cycle().await).await?;
    let steady_calls = calls_since(&calls, &before);
    let created_after = jobs.list(&ListParams::default()).await?.items.len();
    anyhow::ensure!(
        created_after == n,
        "the steady cycle started {} builds",
        created_after - n
    );
    // 4. The operator binary, started against this API and emulator, reconciles them all.
    eprintln!("bench:   starting the operator binary");
    let steady_http = http_requests(&moto)?;
    let binary = process::binary("packer-builder-operator");
    let alone = process::measure(&binary, &control_plane, &moto, n).await?;
    Ok(Scenario::new(
        format!("PackerBuilder steady cycle, {n} CRs, {filter_sets} filter set(s)"),
        reproduce(&format!("pb-{n}x{filter_sets}")),
        (n, filter_sets),
        Steady {
            calls: steady_calls,
            http_requests: steady_http,
            latencies: steady,
            reconciles: n,
            wall,
        },
        Some(percentiles(completion)),
        Some(alone),
    ))
}

async fn refresher(groups: usize) -> anyhow::Result<Scenario> {
    // Steady reconciles measured (after one that settles the status).
    const ROUNDS: usize = 5;
    let moto = Moto::start().context("starting the AWS emulator (cargo xtask setup)")?;
    let fixture = Fixture::new(&moto, REGION).await;
    let now = Timestamp::now().to_string();
    let target = fixture
        .register_image(
            "bench-hardened-1",
            &[("status", "active"), ("create-timestamp", &now)],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    fixture
        .create_cluster(CLUSTER)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for g in 0..groups {
        fixture
            .create_node_group(
                CLUSTER,
                &NodeGroupSpec::with_image(&format!("ng-{g:02}"), &target),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let amr: AMIRefresher = serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "AMIRefresher",
        "metadata": {"name": "fleet"},
        "spec": {"region": REGION, "clusterName": CLUSTER, "ami": target, "expiresIn": "30d"},
    }))?;
    let control_plane = ControlPlane::start()?;
    let client = bench_namespace(&control_plane).await?;
    let api: Api<AMIRefresher> = Api::namespaced(client.clone(), NS);
    create_all(&api, vec![amr]).await?;
    let calls = CallCounter::default();
    let operator = Process::new(&moto, &client, &calls, "ami-refresh-operator");
    let once = || async {
        let ctx = operator.next_cycle().await;
        let amr = api.get("fleet").await?;
        cycle(vec![amr], |amr| {
            let ctx = ctx.clone();
            async move {
                ami_refresh_operator::reconcile::reconcile(amr, ctx).await?;
                Ok(())
            }
        })
        .await
    };
    once().await?;
    let before = calls.snapshot();
    moto.clear_requests()?;
    let mut samples = Vec::new();
    let mut wall = Duration::ZERO;
    for _ in 0..ROUNDS {
        let (d, w) = once().await?;
        samples.extend(d);
        wall += w;
    }
    let steady_calls: BTreeMap<String, u64> = calls_since(&calls, &before)
        .into_iter()
        .map(|(op, n)| (op, n / ROUNDS as u64))
        .collect();
    let steady_http = http_requests(&moto)? / ROUNDS as u64;
    let binary = process::binary("ami-refresh-operator");
    let alone = process::measure(&binary, &control_plane, &moto, 1).await?;
    Ok(Scenario::new(
        format!("AMIRefresher steady cycle, {groups} node groups"),
        reproduce("amr-50"),
        (1, 0),
        Steady {
            calls: steady_calls,
            http_requests: steady_http,
            latencies: samples,
            reconciles: ROUNDS,
            wall,
        },
        None,
        Some(alone),
    ))
}

fn binary_sizes() -> BTreeMap<String, u64> {
    let root = opsy_testkit::moto::workspace_root();
    let mut sizes = BTreeMap::new();
    for profile in ["release", "debug"] {
        for binary in ["packer-builder-operator", "ami-refresh-operator"] {
            let path = root.join("target").join(profile).join(binary);
            if let Ok(meta) = std::fs::metadata(&path) {
                sizes.insert(format!("{profile}/{binary}"), meta.len());
            }
        }
    }
    sizes
}

fn print_table(scenarios: &[Scenario]) {
    println!(
        "\n{:<58} {:>6} {:>7} {:>6} {:>7} {:>6} {:>9} {:>8} {:>8} {:>12} {:>8}",
        "scenario",
        "calls",
        "http",
        "mut",
        "DescImg",
        "calls/CR",
        "recon/s",
        "p50 ms",
        "p99 ms",
        "done→active",
        "RSS MiB"
    );
    for s in scenarios {
        let per_cr = s.steady_calls_total as f64 / s.custom_resources.max(1) as f64;
        let completion = s
            .completion_to_active_ms
            .map_or("-".to_owned(), |p| format!("{:.1}/{:.1}", p.p50, p.p99));
        println!(
            "{:<58} {:>6} {:>7} {:>6} {:>7} {:>8.2} {:>9.1} {:>8.1} {:>8.1} {:>12} {:>8.1}",
            s.name,
            s.steady_calls_total,
            s.steady_http_requests,
            s.steady_mutating_calls,
            s.steady_describe_images,
            per_cr,
            s.steady_throughput_per_s,
            s.steady_latency_ms.p50,
            s.steady_latency_ms.p99,
            completion,
            s.peak_rss_mib,
        );
    }
    println!(
        "\nthe operator binary alone, against the same control plane and emulator (API requests from the audit log):"
    );
    for s in scenarios {
        if let Some(p) = s.operator_process {
            println!(
                "  {:<58} all reconciled {:.1} s after start with {} AWS requests and {} API requests ({} writes, {:.1} per reconcile); peak RSS {:.1} MiB; then RSS {:.1} MiB, of which heap {:.1} MiB",
                s.name,
                p.first_cycle_s,
                p.aws_requests,
                p.api_requests,
                p.api_writes,
                p.api_requests as f64 / s.custom_resources.max(1) as f64,
                p.peak_rss_mib,
                p.rss_mib,
                p.rss_anon_mib
            );
        }
    }
    println!("\ncalls by operation (steady cycle):");
    for s in scenarios {
        let ops: Vec<String> = s
            .steady_calls
            .iter()
            .map(|(op, n)| format!("{op}={n}"))
            .collect();
        println!("  {:<58} {}", s.name, ops.join(" "));
    }
    println!("\nreproduce a row:");
    for s in scenarios {
        println!("  {:<58} {}", s.name, s.reproduce);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    // The 1,000-resource rows run only when asked for: the emulator slows down with every AMI
    // it holds (to ~30 requests a minute past 1,000 built and tagged AMIs), so building them
    // takes hours on two cores.
    let wanted = |name: &str, n: usize| match only.as_deref() {
        Some(o) => o == name,
        None => n <= 100,
    };
    let mut scenarios = Vec::new();
    for (n, f) in [(1, 1), (100, 1), (100, 10), (1000, 1), (1000, 10)] {
        if wanted(&format!("pb-{n}x{f}"), n) {
            eprintln!("bench: {n} PackerBuilders, {f} filter set(s)");
            let scenario = packer_builders(n, f).await?;
            eprintln!(
                "bench:   {} AWS calls in the steady cycle ({} DescribeImages, {} mutating)",
                scenario.steady_calls_total,
                scenario.steady_describe_images,
                scenario.steady_mutating_calls
            );
            scenarios.push(scenario);
        }
    }
    if wanted("amr-50", 1) {
        eprintln!("bench: AMIRefresher over 50 node groups");
        scenarios.push(refresher(50).await?);
    }
    let profile = if cfg!(debug_assertions) {
        "debug (unoptimised)"
    } else {
        "release"
    };
    println!(
        "opsy-ami-operator benchmarks — {profile} build, {CONCURRENCY} reconciles at a time, AWS = moto over HTTP on loopback"
    );
    print_table(&scenarios);
    let sizes = binary_sizes();
    println!("\nbinary sizes (bytes): {sizes:?}");
    let root = opsy_testkit::moto::workspace_root();
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let results = serde_json::json!({
        "profile": profile,
        "concurrency": CONCURRENCY,
        "scenarios": scenarios,
        "binary_sizes": sizes,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    println!("wrote {}", out.join("results.json").display());
    Ok(())
}
