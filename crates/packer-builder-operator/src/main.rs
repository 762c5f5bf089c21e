//! Builds hardened EKS node AMIs with Packer whenever the base AMI moves on or the active AMI
//! expires.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use opsy_api::crd::Kind;
use opsy_runtime::{
    cli::{self, PlanArgs, RunArgs},
    operator::Operator,
};
use packer_builder_operator::{controller, dry_run, fan_out, reconcile::MANAGER};

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
    Run(RunArgs),
    /// Print the PackerBuilder CustomResourceDefinition as YAML (for `kubectl apply -f -`).
    Crd,
    /// Show what the operator would do for a PackerBuilder file, and why, against AWS (or an
    /// emulator). Read-only: it only describes and lists.
    Plan(PlanArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = match Cli::parse().command {
        Some(command) => command,
        None => Cli::parse_from(["packer-builder-operator", "run"])
            .command
            .context("no command")?,
    };
    match command {
        Command::Crd => {
            // The PackerBuilder CRD and the BuildClass CRD it reads.
            let mut yaml = Kind::PackerBuilder.yaml().context("serialising the CRD")?;
            yaml.push_str(&Kind::BuildClass.yaml().context("serialising the CRD")?);
            cli::print(&yaml)?;
        }
        Command::Plan(args) => {
            let object: opsy_api::PackerBuilder = cli::read_resource(&args, "PackerBuilder")?;
            let aws = cli::aws(args.aws_endpoint_url.clone());
            let now = jiff::Timestamp::now();
            if object.spec.architectures.len() > 1 {
                // The PackerBuilder of each architecture, as the operator would make them.
                let mut reports = Vec::new();
                for architecture in &object.spec.architectures {
                    let child = fan_out::child(&object, *architecture);
                    reports.push(dry_run::report(&aws, &child, now).await?);
                }
                let text: Vec<String> = reports.iter().map(dry_run::Report::text).collect();
                cli::print_report(&args, &aws, &reports, text.join("\n"))?;
            } else {
                let report = dry_run::report(&aws, &object, now).await?;
                cli::print_report(&args, &aws, &report, report.text())?;
            }
        }
        Command::Run(args) => {
            let crd = Kind::PackerBuilder.crd().metadata.name.unwrap_or_default();
            let operator = Operator::start(&args, MANAGER, &crd).await?;
            let mut ctx = operator.context(MANAGER, Arc::new(jiff::Timestamp::now));
            if let Some(ctx) = Arc::get_mut(&mut ctx) {
                ctx.build_policy = args.build_policy();
                ctx.require_class = args.require_class;
                ctx.namespaces = cli::watch_scopes(&args.watch_namespaces);
            }
            controller::run(ctx, args.concurrency, &operator, &args.watch_namespaces).await;
            operator.stop().await?;
        }
    }
    Ok(())
}
