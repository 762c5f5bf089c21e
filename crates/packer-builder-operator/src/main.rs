//! Builds hardened EKS node AMIs with Packer whenever the base AMI moves on or the active AMI expires.

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};
use opsy_api::crd::Kind;

/// Builds hardened EKS node AMIs with Packer whenever the base AMI moves on or the active AMI expires.
#[derive(Debug, Parser)]
#[command(name = "packer-builder-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the PackerBuilder CustomResourceDefinition as YAML (for `kubectl apply -f -`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = Kind::PackerBuilder.yaml().context("serialising the CRD")?;
            std::io::stdout()
                .lock()
                .write_all(yaml.as_bytes())
                .context("writing to stdout")?;
        }
    }
    Ok(())
}
