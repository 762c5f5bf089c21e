//! Rolls the newest active, unexpired AMI out to an EKS cluster's node groups in controlled
//! waves.

use std::sync::Arc;

use ami_refresh_operator::{controller, dry_run, reconcile::MANAGER};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use opsy_api::crd::Kind;
use opsy_runtime::{
    cli::{self, PlanArgs, RunArgs},
    operator::Operator,
};

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
    Run(RunArgs),
    /// Print the AMIRefresher CustomResourceDefinition as YAML (for `kubectl apply -f -`).
    Crd,
    /// Show what the operator would do for an AMIRefresher file, and why, against AWS (or an
    /// emulator). Read-only: it only describes and lists.
    Plan(PlanArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = match Cli::parse().command {
        Some(command) => command,
        None => Cli::parse_from(["ami-refresh-operator", "run"])
            .command
            .context("no command")?,
    };
    match command {
        Command::Crd => {
            // The AMIRefresher CRD and the RefresherClass CRD it reads.
            let mut yaml = Kind::AMIRefresher.yaml().context("serialising the CRD")?;
            yaml.push_str(&Kind::RefresherClass.yaml().context("serialising the CRD")?);
            cli::print(&yaml)?;
        }
        Command::Plan(args) => {
            let object: opsy_api::AMIRefresher = cli::read_resource(&args, "AMIRefresher")?;
            let aws = cli::aws(args.aws_endpoint_url.clone());
            let report = dry_run::report(&aws, &object, jiff::Timestamp::now()).await?;
            cli::print_report(&args, &aws, &report, report.text())?;
        }
        Command::Run(args) => {
            let crd = Kind::AMIRefresher.crd().metadata.name.unwrap_or_default();
            let operator = Operator::start(&args, MANAGER, &crd).await?;
            let mut ctx = operator.context(MANAGER, Arc::new(jiff::Timestamp::now));
            if let Some(ctx) = Arc::get_mut(&mut ctx) {
                ctx.require_class = args.require_class;
            }
            controller::run(ctx, args.concurrency, &operator, &args.watch_namespaces).await;
            operator.stop().await?;
        }
    }
    Ok(())
}
