//! Rolls the newest active, unexpired AMI out to an EKS cluster's node groups in controlled
//! waves.

use std::{io::Write, sync::Arc};

use ami_refresh_operator::controller;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use opsy_api::crd::Kind;
use opsy_aws::{AwsOptions, ClientSet};

/// Rolls the newest active, unexpired AMI out to an EKS cluster's node groups in controlled
/// waves.
#[derive(Debug, Parser)]
#[command(name = "ami-refresh-operator", version, about, long_about = None)]
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
        /// AMIRefreshers reconciled at the same time.
        #[arg(long, env = "OPSY_CONCURRENCY", default_value_t = 4)]
        concurrency: u16,
    },
    /// Print the AMIRefresher CustomResourceDefinition as YAML (for `kubectl apply -f -`).
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        aws_endpoint_url: std::env::var("AWS_ENDPOINT_URL").ok(),
        concurrency: 4,
    }) {
        Command::Crd => {
            let yaml = Kind::AMIRefresher.yaml().context("serialising the CRD")?;
            std::io::stdout()
                .lock()
                .write_all(yaml.as_bytes())
                .context("writing to stdout")?;
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
