//! `cargo xtask ci`: the whole test suite, exactly as CI runs it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use crate::{charts, crds, moto, run};

pub fn run_all(root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let target = target_dir(root);
    // A run from a fresh clone builds everything once: incremental caches would only take disk
    // (several GB for this workspace's test binaries) and time. A warm tree keeps its setting.
    let incremental =
        std::env::var_os("CARGO_INCREMENTAL").is_some() || built_before(&target, "opsy-e2e");
    report_disk(&target, "before");
    let cargo = |root: &Path| {
        let mut command = cargo(root);
        if !incremental {
            command.env("CARGO_INCREMENTAL", "0");
        }
        command
    };
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
    step(
        "workflow actions pinned by commit (.github/workflows)",
        || workflows_pinned(root),
    )?;
    step("workflows: actionlint", || {
        crate::lint_tools::workflows(root)
    })?;
    step("renovate.json: renovate-config-validator --strict", || {
        crate::lint_tools::renovate_config(root)
    })?;
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
    let tests = if has_nextest(root) {
        run(cargo(root).args([
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ]))
    } else {
        // `--tests`: the doc tests ran above; run once, and compiled before the long part.
        run(cargo(root).args([
            "test",
            "--workspace",
            "--tests",
            "--locked",
            "--no-fail-fast",
        ]))
    };
    report_disk(&target, "after");
    tests
}

/// Whether `package` (one that `cargo xtask` itself does not need) was built in `target` before.
fn built_before(target: &Path, package: &str) -> bool {
    std::fs::read_dir(target.join("debug/.fingerprint")).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix(package)
                .is_some_and(|rest| rest.starts_with('-'))
        })
    })
}

/// Where cargo builds: `CARGO_TARGET_DIR` or the workspace's `target/`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

/// Prints the size of the target directory and the space left beside it, so that a run that
/// ends for want of disk says so (a cold run's target peaked at 6.2 GiB, measured).
fn report_disk(target: &Path, when: &str) {
    let probe = if target.exists() {
        target
    } else {
        target.parent().unwrap_or(target)
    };
    let used = stdout_of("du", "-sk", target).and_then(|o| first_number(&o));
    let free = stdout_of("df", "-Pk", probe).and_then(|o| available_kib(&o));
    let gib = |kib: u64| kib as f64 / (1024.0 * 1024.0);
    eprintln!(
        "==> disk {when}: target {}, {} free",
        used.map_or("absent".into(), |k| format!("{:.1} GiB", gib(k))),
        free.map_or("unknown".into(), |k| format!("{:.1} GiB", gib(k))),
    );
}

/// What `program flag path` printed, if it ran.
fn stdout_of(program: &str, flag: &str, path: &Path) -> Option<String> {
    let output = Command::new(program).arg(flag).arg(path).output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn first_number(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The `Available` column of `df -Pk` (POSIX format: one header line, one line per file system).
fn available_kib(df: &str) -> Option<u64> {
    df.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// Every third-party action a workflow uses is pinned by a full commit SHA (a tag can be moved
/// to other code; a commit cannot), with the version it stands for in a comment.
fn workflows_pinned(root: &Path) -> anyhow::Result<()> {
    let dir = root.join(".github/workflows");
    let mut unpinned = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for (n, line) in text.lines().enumerate() {
            if let Some(problem) = unpinned_action(line) {
                unpinned.push(format!("{}:{}: {problem}", file.display(), n + 1));
            }
        }
    }
    anyhow::ensure!(
        unpinned.is_empty(),
        "actions not pinned by commit:\n  {}",
        unpinned.join("\n  ")
    );
    Ok(())
}

/// What is wrong with a workflow line's `uses:`, if anything.
fn unpinned_action(line: &str) -> Option<String> {
    let uses = line
        .trim_start()
        .trim_start_matches("- ")
        .strip_prefix("uses:")?;
    let (action, comment) = match uses.split_once('#') {
        Some((a, c)) => (a.trim(), c.trim()),
        None => (uses.trim(), ""),
    };
    if action.starts_with("./") || action.starts_with("docker://") {
        return None;
    }
    let Some((_, reference)) = action.split_once('@') else {
        return Some(format!("{action} names no version"));
    };
    if reference.len() != 40 || !reference.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some(format!("{action} is not pinned by a commit SHA"));
    }
    if comment.is_empty() {
        return Some(format!("{action} says in no comment which version it is"));
    }
    None
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

#[cfg(test)]
mod tests {
    use super::{available_kib, unpinned_action};

    #[test]
    fn df_posix_output_gives_the_available_column() {
        let df = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                  /dev/vda         263174212 20971520  75497472      22% /\n";
        assert_eq!(available_kib(df), Some(75_497_472));
        assert_eq!(available_kib("Filesystem 1024-blocks\n"), None);
    }

    #[test]
    fn only_commit_pins_with_their_version_pass() {
        assert_eq!(
            unpinned_action(
                "      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2"
            ),
            None
        );
        assert_eq!(
            unpinned_action("        uses: ./.github/actions/local"),
            None
        );
        assert_eq!(unpinned_action("      - run: echo uses: x@v1"), None);
        assert!(unpinned_action("      - uses: actions/checkout@v4").is_some());
        assert!(
            unpinned_action(
                "      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683"
            )
            .is_some()
        );
        assert!(unpinned_action("      - uses: some/action").is_some());
    }
}
