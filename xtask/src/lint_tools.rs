//! The linters the test command runs over what is not Rust, fetched once per machine into the
//! cache beside the control plane (never installed system-wide):
//!
//! - `actionlint`, built from the Go module pinned in `test/tools/actionlint/` (like the control
//!   plane), checks `.github/workflows/`;
//! - Renovate's own config validator (`renovate-config-validator`, npm package `renovate`)
//!   checks `renovate.json` in strict mode (a config that needs migrating fails too).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::run;

/// The newest Renovate whose `engines` accept Node.js 20 (the 40 series needs 22).
const RENOVATE: &str = "39.264.1";

/// Builds `actionlint` and installs Renovate's validator unless they are in the cache.
pub fn setup(root: &Path) -> anyhow::Result<()> {
    let actionlint = actionlint(root)?;
    link(root, &actionlint, "actionlint")?;
    let validator = renovate_validator()?;
    link(root, &validator, "renovate-config-validator")?;
    Ok(())
}

/// `actionlint` over every workflow: any finding fails.
pub fn workflows(root: &Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = fs::read_dir(root.join(".github/workflows"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no workflows in .github/workflows");
    run(Command::new(root.join("target/actionlint"))
        .current_dir(root)
        .arg("-no-color")
        .args(&files))
}

/// Renovate's validator over the repository's `renovate.json`, strict.
pub fn renovate_config(root: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        root.join("renovate.json").is_file(),
        "renovate.json is missing"
    );
    // Without a file argument it validates the repository's config files, as a repository
    // config (with one, as the bot's global config).
    run(Command::new(root.join("target/renovate-config-validator"))
        .current_dir(root)
        .arg("--strict"))
}

fn actionlint(root: &Path) -> anyhow::Result<PathBuf> {
    let module = root.join("test/tools/actionlint");
    let hex = crate::control_plane::go_modules_digest([module.clone()])?;
    let dir = crate::control_plane::cache_base()?.join(format!("actionlint-{hex}"));
    let binary = dir.join("actionlint");
    if !binary.is_file() {
        let go = std::env::var_os("GO").map_or_else(|| PathBuf::from("go"), PathBuf::from);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        run(Command::new(&go)
            .current_dir(&module)
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .env("GOFLAGS", "-mod=readonly -buildvcs=false")
            .args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
            .arg(&binary)
            .arg("github.com/rhysd/actionlint/cmd/actionlint"))?;
    }
    eprintln!("setup: actionlint in {}", binary.display());
    Ok(binary)
}

fn renovate_validator() -> anyhow::Result<PathBuf> {
    let dir = crate::control_plane::cache_base()?.join(format!("renovate-{RENOVATE}"));
    let validator = dir.join("node_modules/.bin/renovate-config-validator");
    if !validator.is_file() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        run(Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .arg(format!("renovate@{RENOVATE}")))?;
    }
    eprintln!("setup: renovate-config-validator {RENOVATE}");
    Ok(validator)
}

/// `target/<name>` → `binary`, replaced when it points elsewhere.
fn link(root: &Path, binary: &Path, name: &str) -> anyhow::Result<()> {
    let target = root.join("target");
    fs::create_dir_all(&target)?;
    let link = target.join(name);
    if fs::read_link(&link).is_ok_and(|current| current == binary) {
        return Ok(());
    }
    if fs::symlink_metadata(&link).is_ok() {
        fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(binary, &link)
        .with_context(|| format!("linking {} to {}", link.display(), binary.display()))
}
