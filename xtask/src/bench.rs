//! `cargo xtask bench`: the benchmarks of `crates/opsy-bench`, after installing the emulator.

use std::{path::Path, process::Command};

use crate::run;

pub fn run_bench(root: &Path, release: bool, args: &[String]) -> anyhow::Result<()> {
    crate::setup(root)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The operator binaries run as their own processes, to measure their memory alone.
    let mut build = Command::new(&cargo);
    build.current_dir(root).args([
        "build",
        "--quiet",
        "--locked",
        "--package",
        "packer-builder-operator",
        "--package",
        "ami-refresh-operator",
    ]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["run", "--quiet", "--locked", "--package", "opsy-bench"]);
    if release {
        command.arg("--release");
    }
    run(command.arg("--").args(args))
}
