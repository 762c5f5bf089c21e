//! `cargo xtask ci`: the whole test suite, exactly as CI runs it.

use std::{path::Path, process::Command, time::Instant};

use crate::{charts, crds, moto, run};

pub fn run_all(root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    step(
        "install the AWS emulator and the chart tools, build the control plane",
        || crate::setup(root),
    )?;
    step("cargo fmt --check", || {
        run(cargo(root).args(["fmt", "--all", "--", "--check"]))
    })?;
    step("cargo clippy -D warnings", || {
        run(cargo(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("CRD drift (deploy/crds, chart templates)", || {
        crds::run(root, true)
    })?;
    step(
        "charts: lint, render, validate, install paths, kustomize drift",
        || charts::check(root, false),
    )?;
    step("IAM policies: parliament (scripts/iam/lint.py)", || {
        moto::lint_iam(root)
    })?;
    step("AWS emulator contract tests (scripts/moto/tests)", || {
        moto::contract_tests(root)
    })?;
    step("doc tests", || {
        run(cargo(root).args(["test", "--workspace", "--doc", "--locked", "--quiet"]))
    })?;
    eprintln!("==> tests (after {:.0?} of checks)", started.elapsed());
    // The test runner's summary is the last thing printed.
    if has_nextest(root) {
        run(cargo(root).args([
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ]))
    } else {
        run(cargo(root).args(["test", "--workspace", "--locked", "--no-fail-fast"]))
    }
}

fn step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("==> {name}");
    f()?;
    eprintln!("    {name}: ok in {:.1?}", started.elapsed());
    Ok(())
}

fn cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root);
    command
}

fn has_nextest(root: &Path) -> bool {
    cargo(root)
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
