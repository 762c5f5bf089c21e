//! `cargo xtask setup`: the pinned AWS emulator in a project-local virtualenv.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, bail};

use crate::run;

/// Creates `.venv/` and installs `scripts/requirements.txt` into it, unless the installed set
/// already matches the file.
pub fn setup(root: &Path) -> anyhow::Result<()> {
    let requirements = root.join("scripts/requirements.txt");
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = root.join(".venv");
    let stamp = venv.join(".opsy-requirements");
    let python = venv.join("bin/python");
    if python.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        eprintln!("setup: .venv is up to date");
        return Ok(());
    }
    if !python.exists() {
        let host = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        eprintln!("setup: creating .venv with {host}");
        let status = Command::new(&host)
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => bail!("`{host} -m venv .venv` failed ({s}); on Debian install python3-venv"),
            Err(e) => bail!("cannot run {host}: {e}; install Python 3 or set PYTHON"),
        }
    }
    eprintln!("setup: installing scripts/requirements.txt into .venv");
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    fs::write(&stamp, wanted).context("writing .venv/.opsy-requirements")?;
    Ok(())
}

/// The emulator's contract tests: each AWS behaviour it adds, checked through boto3 over HTTP.
pub fn contract_tests(root: &Path) -> anyhow::Result<()> {
    run(Command::new(root.join(".venv/bin/python"))
        .current_dir(root)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "scripts/moto/tests",
        ]))
}

/// The IAM policy linter over `deploy/iam/` (`scripts/iam/lint.py`, parliament in `.venv/`).
pub fn lint_iam(root: &Path) -> anyhow::Result<()> {
    run(Command::new(root.join(".venv/bin/python"))
        .current_dir(root)
        .arg("scripts/iam/lint.py"))
}
