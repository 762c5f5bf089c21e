//! Builds hardened EKS node AMIs with Packer whenever the base AMI moves on or the active AMI
//! expires.

use std::{io::Write, sync::Arc};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use opsy_api::crd::Kind;
use opsy_aws::{AwsOptions, ClientSet};
use packer_builder_operator::controller;

/// Builds hardened EKS node AMIs with Packer whenever the base AMI moves on or the active AMI
/// expires.
#[derive(Debug, Parser)]
#[command(name = "packer-builder-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run {
        /// Send AWS requests here instead of AWS (an emulator).
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        aws_endpoint_url: Option<String>,
        /// PackerBuilders reconciled at the same time.
        #[arg(long, env = "OPSY_CONCURRENCY", default_value_t = 4)]
        concurrency: u16,
    },
    /// Print the PackerBuilder CustomResourceDefinition as YAML (for `kubectl apply -f -`).
    Crd,
    /// Show what the operator would do for a PackerBuilder file, and why, against AWS (or an
    /// emulator). Read-only: it only describes and lists.
    Plan {
        /// The PackerBuilder manifest (YAML).
        #[arg(short = 'f', long)]
        file: std::path::PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
        output: Format,
        /// Send AWS requests here instead of AWS (an emulator).
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        aws_endpoint_url: Option<String>,
    },
}

/// Output format of `plan`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        aws_endpoint_url: std::env::var("AWS_ENDPOINT_URL").ok(),
        concurrency: 4,
    }) {
        Command::Crd => {
            let yaml = Kind::PackerBuilder.yaml().context("serialising the CRD")?;
            std::io::stdout()
                .lock()
                .write_all(yaml.as_bytes())
                .context("writing to stdout")?;
        }
        Command::Plan {
            file,
            output,
            aws_endpoint_url,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let object: opsy_api::PackerBuilder = serde_saphyr::from_str(&text)
                .with_context(|| format!("{} is not a valid PackerBuilder", file.display()))?;
            let aws = ClientSet::new(AwsOptions {
                endpoint_url: aws_endpoint_url,
                ..AwsOptions::default()
            });
            let clients = aws.region(&object.spec.region).await;
            let report =
                packer_builder_operator::dry_run::report(&clients, &object, jiff::Timestamp::now())
                    .await?;
            let rendered = match output {
                Format::Text => report.text(),
                Format::Json => serde_json::to_string_pretty(&report)? + "\n",
            };
            std::io::stdout().lock().write_all(rendered.as_bytes())?;
            if aws.calls().mutating() > 0 {
                anyhow::bail!("plan made a mutating AWS call; this is a bug");
            }
        }
        Command::Run {
            aws_endpoint_url,
            concurrency,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .init();
            let client = kube::Client::try_default()
                .await
                .context("connecting to Kubernetes")?;
            let aws = ClientSet::new(AwsOptions {
                endpoint_url: aws_endpoint_url,
                ..AwsOptions::default()
            });
            let ctx = controller::context(client, aws, Arc::new(jiff::Timestamp::now));
            controller::run(ctx, concurrency).await;
        }
    }
    Ok(())
}
