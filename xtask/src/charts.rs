//! `cargo xtask charts`: the offline Helm chart checks of `scripts/charts/check.py`, run with
//! the project's virtualenv.

use std::{path::Path, process::Command};

use crate::run;

pub fn check(root: &Path, write: bool) -> anyhow::Result<()> {
    let mut command = Command::new(root.join(".venv/bin/python"));
    command
        .current_dir(root)
        .arg(root.join("scripts/charts/check.py"));
    if write {
        command.arg("--write");
    }
    run(&mut command)
}
