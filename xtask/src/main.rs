//! Project tasks: `cargo xtask <task>`.

mod bench;
mod charts;
mod ci;
mod control_plane;
mod crds;
mod lint_tools;
mod moto;
mod promtool;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Project tasks for opsy-ami-operator", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write the CRD YAML generated from crates/opsy-api into deploy/crds/.
    Crds {
        /// Fail if the committed YAML differs instead of writing it.
        #[arg(long)]
        check: bool,
    },
    /// Check the Helm charts offline (lint, render, validate, install paths) and that
    /// deploy/kustomize/ matches them.
    Charts {
        /// Rewrite deploy/kustomize/ from the charts instead of checking it.
        #[arg(long)]
        write: bool,
    },
    /// Install the pinned AWS emulator (moto) and the chart tools into .venv/, and build the
    /// Kubernetes control plane and helm from test/control-plane/ into a cache, when missing.
    Setup,
    /// Benchmarks: AWS calls per cycle, reconcile latency and throughput, memory (prints a
    /// table, writes target/bench/results.json). `-- --only pb-100x1` runs one scenario.
    Bench {
        /// Build optimised (the first release build takes a long time).
        #[arg(long)]
        release: bool,
        /// Passed to the benchmark binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Both operators at work on the local sandbox (AWS emulator, a local Kubernetes control
    /// plane).
    Demo {
        /// Leave the control plane and the emulator running at the end, with a KUBECONFIG to
        /// explore them; Ctrl-C stops everything.
        #[arg(long)]
        keep: bool,
    },
    /// The whole test suite, as CI runs it: setup, fmt check, clippy -D warnings, CRD and
    /// chart checks, tests.
    Ci,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.task {
        Task::Crds { check } => crds::run(&root, check),
        Task::Charts { write } => {
            // kubernetes-validate from .venv/, helm from the control plane's build.
            setup(&root)?;
            charts::check(&root, write)
        }
        Task::Setup => setup(&root),
        Task::Bench { release, args } => bench::run_bench(&root, release, &args),
        Task::Demo { keep } => {
            setup(&root)?;
            eprintln!("building the sandbox (the first build takes several minutes)");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut command = Command::new(cargo);
            command.current_dir(&root).args([
                "run",
                "--quiet",
                "--locked",
                "--package",
                "opsy-sandbox",
            ]);
            if keep {
                command.args(["--", "--keep"]);
            }
            run(&mut command)
        }
        Task::Ci => ci::run_all(&root),
    }
}

/// Everything the tests, the demo and the benchmarks need besides Rust.
fn setup(root: &Path) -> anyhow::Result<()> {
    moto::setup(root)?;
    control_plane::setup(root)?;
    promtool::setup(root)?;
    lint_tools::setup(root)?;
    Ok(())
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// Runs `command`, failing with its command line when it does not succeed.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
