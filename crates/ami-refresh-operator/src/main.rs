//! Rolls the newest active, unexpired AMI out to an EKS cluster's node groups in controlled waves.

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};
use opsy_api::crd::Kind;

/// Rolls the newest active, unexpired AMI out to an EKS cluster's node groups in controlled waves.
#[derive(Debug, Parser)]
#[command(name = "ami-refresh-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the AMIRefresher CustomResourceDefinition as YAML (for `kubectl apply -f -`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = Kind::AMIRefresher.yaml().context("serialising the CRD")?;
            std::io::stdout()
                .lock()
                .write_all(yaml.as_bytes())
                .context("writing to stdout")?;
        }
    }
    Ok(())
}
