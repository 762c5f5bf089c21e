//! The command line both binaries share: `run` (the default), `crd` and `plan`.

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use opsy_aws::{AwsOptions, ClientSet};
use serde::{Serialize, de::DeserializeOwned};

/// `run`: the controller.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Send AWS requests here instead of AWS (an emulator).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// How often node-group updates, instance refreshes and builds in flight are checked
    /// (humantime: `30s`, `1m`).
    #[arg(long, env = "OPSY_POLL_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_interval: std::time::Duration,
    /// Custom resources reconciled at the same time.
    #[arg(long, env = "OPSY_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    #[arg(long, env = "OPSY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Hold a Lease before reconciling, so that of several replicas only one acts.
    #[arg(long, env = "OPSY_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Log format.
    #[arg(long, env = "OPSY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Watch custom resources only in these namespaces (comma-separated), for an install whose
    /// RBAC is Roles in those namespaces; empty: every namespace (a ClusterRole).
    #[arg(long, env = "OPSY_WATCH_NAMESPACES", value_delimiter = ',', num_args = 0..)]
    pub watch_namespaces: Vec<String>,
    /// PackerBuilder operator: the images build Jobs may run (comma-separated repositories,
    /// or prefixes ending in `*`); empty: the default Packer and git-sync repositories.
    #[arg(long, env = "OPSY_ALLOWED_BUILD_IMAGES", value_delimiter = ',', num_args = 0..)]
    pub allowed_build_images: Vec<String>,
    /// PackerBuilder operator: the repositories builds may clone (comma-separated URLs or
    /// prefixes ending at a path boundary, e.g. `https://github.com/example-org/`); empty: any.
    #[arg(long, env = "OPSY_ALLOWED_BUILD_REPOSITORIES", value_delimiter = ',', num_args = 0..)]
    pub allowed_build_repositories: Vec<String>,
    /// Refuse a PackerBuilder that names no BuildClass (`spec.buildClassName`), or an
    /// AMIRefresher that names no RefresherClass (`spec.refresherClassName`), when no class of
    /// that kind is marked default (`ami.refresh.ops/is-default-class: "true"`). Off: the
    /// install's own limits act as the default class.
    #[arg(long, env = "OPSY_REQUIRE_CLASS", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_class: bool,
    /// Let webhooks reach private addresses (10/8, 172.16/12, 192.168/16, 100.64/10,
    /// `fc00::/7`), for webhook receivers inside the VPC. Loopback and link-local addresses
    /// (the instance metadata service) stay refused.
    #[arg(long, env = "OPSY_ALLOW_PRIVATE_WEBHOOKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_webhooks: bool,
}

impl RunArgs {
    /// The build policy these arguments set.
    pub fn build_policy(&self) -> crate::context::BuildPolicy {
        let listed = |values: &[String]| -> Vec<String> {
            values
                .iter()
                .map(|i| i.trim().to_owned())
                .filter(|i| !i.is_empty())
                .collect()
        };
        let mut policy = crate::context::BuildPolicy::default();
        let images = listed(&self.allowed_build_images);
        if !images.is_empty() {
            policy.allowed_images = images;
        }
        policy.allowed_repositories = listed(&self.allowed_build_repositories);
        policy
    }
}

/// Runs `run_in(scope)` for each scope of [`watch_scopes`] at the same time, until all end.
pub async fn in_each_scope<F, Fut>(namespaces: &[String], run_in: F)
where
    F: Fn(Option<String>) -> Fut,
    Fut: Future<Output = ()>,
{
    futures::future::join_all(watch_scopes(namespaces).into_iter().map(run_in)).await;
}

/// The scopes a controller watches: every namespace (`None`), or one per listed namespace.
pub fn watch_scopes(namespaces: &[String]) -> Vec<Option<String>> {
    let mut listed: Vec<Option<String>> = namespaces
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| Some(n.to_owned()))
        .collect();
    listed.sort();
    listed.dedup();
    if listed.is_empty() {
        vec![None]
    } else {
        listed
    }
}

/// Log format of `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `plan`: what the operator would do for a custom resource file. Read-only.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The custom resource manifest (YAML).
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Send AWS requests here instead of AWS (an emulator).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
}

/// Output format of `plan`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// AWS clients for `endpoint` (or AWS itself), with the default credential chain.
pub fn aws(endpoint: Option<String>) -> ClientSet {
    ClientSet::new(AwsOptions {
        endpoint_url: endpoint,
        ..AwsOptions::default()
    })
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`, kube at `warn`).
pub fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,kube=warn".into()),
    );
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Writes `text` to stdout.
pub fn print(text: &str) -> anyhow::Result<()> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}

/// Reads the custom resource of `args.file`.
pub fn read_resource<K: DeserializeOwned>(args: &PlanArgs, kind: &str) -> anyhow::Result<K> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    serde_saphyr::from_str(&text)
        .with_context(|| format!("{} is not a valid {kind}", args.file.display()))
}

/// Prints a plan report in the chosen format, and fails if `aws` made a mutating call.
pub fn print_report<R: Serialize>(
    args: &PlanArgs,
    aws: &ClientSet,
    report: &R,
    text: String,
) -> anyhow::Result<()> {
    let rendered = match args.output {
        Format::Text => text,
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
    };
    print(&rendered)?;
    if aws.calls().mutating() > 0 {
        anyhow::bail!("plan made a mutating AWS call; this is a bug");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn watch_namespaces_default_to_every_namespace() {
        let cli = Cli::try_parse_from(["op"]).unwrap();
        assert_eq!(watch_scopes(&cli.run.watch_namespaces), [None]);
        let cli =
            Cli::try_parse_from(["op", "--watch-namespaces", "builds,team-a,builds"]).unwrap();
        assert_eq!(
            watch_scopes(&cli.run.watch_namespaces),
            [Some("builds".to_owned()), Some("team-a".to_owned())]
        );
        // The chart's empty value.
        assert_eq!(watch_scopes(&[String::new()]), [None]);
    }

    #[test]
    fn webhooks_reach_private_addresses_only_when_allowed() {
        let cli = Cli::try_parse_from(["op"]).unwrap();
        assert!(!cli.run.allow_private_webhooks);
        let cli = Cli::try_parse_from(["op", "--allow-private-webhooks", "true"]).unwrap();
        assert!(cli.run.allow_private_webhooks);
    }
}
