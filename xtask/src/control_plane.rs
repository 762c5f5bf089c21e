//! `cargo xtask setup`, second half: the Kubernetes control plane the tests run on (etcd,
//! kube-apiserver, kube-controller-manager, kubectl) and helm, built from the pinned Go modules
//! under `test/control-plane/` into a cache outside the repository, once per machine.
//!
//! The cache directory is named after the pinned versions and a digest of the three modules'
//! `go.mod` and `go.sum`, so changing a pin builds anew and an unchanged pin is never rebuilt.
//! `target/control-plane` is a symlink to it: that is where `opsy-testkit` looks.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::run;

/// Kubernetes release of the control plane (an EKS-supported minor).
const KUBERNETES: &str = "v1.35.4";
/// The etcd release Kubernetes v1.35.4 pins in its go.mod.
const ETCD: &str = "v3.6.5";
const HELM: &str = "v3.20.2";

/// One Go module under `test/control-plane/` and what it builds.
struct GoModule {
    dir: &'static str,
    /// (package, binary name)
    binaries: &'static [(&'static str, &'static str)],
    ldflags: fn() -> String,
}

const MODULES: &[GoModule] = &[
    GoModule {
        dir: "kubernetes",
        binaries: &[
            ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
            (
                "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-controller-manager",
            ),
            ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
        ],
        ldflags: kubernetes_ldflags,
    },
    GoModule {
        dir: "etcd",
        binaries: &[("go.etcd.io/etcd/server/v3", "etcd")],
        ldflags: etcd_ldflags,
    },
    GoModule {
        dir: "helm",
        binaries: &[("helm.sh/helm/v3/cmd/helm", "helm")],
        ldflags: helm_ldflags,
    },
];

fn kubernetes_ldflags() -> String {
    let (major, minor) = KUBERNETES
        .trim_start_matches('v')
        .split_once('.')
        .map(|(major, rest)| (major, rest.split('.').next().unwrap_or_default()))
        .unwrap_or_default();
    let v = "k8s.io/component-base/version";
    format!(
        "-s -w -X {v}.gitVersion={KUBERNETES} -X {v}.gitMajor={major} -X {v}.gitMinor={minor} \
         -X {v}.gitTreeState=clean -X {v}.buildDate=1970-01-01T00:00:00Z"
    )
}

fn etcd_ldflags() -> String {
    "-s -w".to_owned()
}

fn helm_ldflags() -> String {
    format!(
        "-s -w -X helm.sh/helm/v3/internal/version.version={HELM} \
         -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    )
}

/// Every binary the tests need, by name.
fn binaries() -> impl Iterator<Item = &'static str> {
    MODULES
        .iter()
        .flat_map(|m| m.binaries.iter().map(|(_, name)| *name))
}

/// Builds the control plane and helm into the cache unless they are there, and points
/// `target/control-plane` at them. Returns the directory holding the binaries.
pub fn setup(root: &Path) -> anyhow::Result<PathBuf> {
    let modules = root.join("test/control-plane");
    let dir = cache_root()?.join(cache_key(&modules)?);
    let bin = dir.join("bin");
    if binaries().all(|b| bin.join(b).is_file()) {
        eprintln!("setup: control plane is up to date in {}", bin.display());
    } else {
        build(&modules, &dir)?;
    }
    link(root, &bin)?;
    Ok(bin)
}

/// `$OPSY_CACHE_DIR`, else `$XDG_CACHE_HOME/opsy-ami-operator`, else
/// `~/.cache/opsy-ami-operator`; the control plane lives in its `control-plane/`.
fn cache_root() -> anyhow::Result<PathBuf> {
    Ok(cache_base()?.join("control-plane"))
}

/// `$OPSY_CACHE_DIR`, else `$XDG_CACHE_HOME/opsy-ami-operator`, else
/// `~/.cache/opsy-ami-operator`: where tools built or fetched for the tests are kept.
pub fn cache_base() -> anyhow::Result<PathBuf> {
    let base = if let Some(dir) = std::env::var_os("OPSY_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("opsy-ami-operator")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".cache/opsy-ami-operator")
    } else {
        bail!("no cache directory: set OPSY_CACHE_DIR (or HOME)");
    };
    Ok(base)
}

fn cache_key(modules: &Path) -> anyhow::Result<String> {
    let hex = go_modules_digest(MODULES.iter().map(|m| modules.join(m.dir)))?;
    Ok(format!("k8s-{KUBERNETES}_etcd-{ETCD}_helm-{HELM}_{hex}"))
}

/// A short digest of the `go.mod` and `go.sum` of each Go module directory: a cache named
/// after it is built anew when a pin changes.
pub fn go_modules_digest(dirs: impl IntoIterator<Item = PathBuf>) -> anyhow::Result<String> {
    let mut digest = Sha256::new();
    for dir in dirs {
        for file in ["go.mod", "go.sum"] {
            let path = dir.join(file);
            digest.update(fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        }
    }
    Ok(digest
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn build(modules: &Path, dir: &Path) -> anyhow::Result<()> {
    let go = std::env::var_os("GO").map_or_else(|| PathBuf::from("go"), PathBuf::from);
    match Command::new(&go).arg("version").output() {
        Ok(out) if out.status.success() => eprintln!(
            "setup: building the Kubernetes {KUBERNETES} control plane, etcd {ETCD} and helm \
             {HELM} with {} (the first build takes tens of minutes on two cores)",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        _ => bail!(
            "the tests run on a Kubernetes control plane built from the Go modules in \
             test/control-plane/, and `{}` could not be run: install Go 1.25 or newer (or set GO \
             to its path), then run `cargo xtask setup` again",
            go.display()
        ),
    }
    let staging = dir.join("bin.partial");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    for module in MODULES {
        for (package, name) in module.binaries {
            let started = Instant::now();
            run(Command::new(&go)
                .current_dir(modules.join(module.dir))
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0")
                .env("GOFLAGS", "-mod=readonly -buildvcs=false")
                .args(["build", "-trimpath", "-ldflags", &(module.ldflags)(), "-o"])
                .arg(staging.join(name))
                .arg(package))?;
            eprintln!("setup: built {name} in {:.0?}", started.elapsed());
        }
    }
    let bin = dir.join("bin");
    if bin.exists() {
        fs::remove_dir_all(&bin).with_context(|| format!("removing {}", bin.display()))?;
    }
    fs::rename(&staging, &bin).with_context(|| format!("moving {}", staging.display()))?;
    Ok(())
}

/// `target/control-plane` → the cache's `bin/`, replaced when it points elsewhere.
fn link(root: &Path, bin: &Path) -> anyhow::Result<()> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let link = target.join("control-plane");
    if fs::read_link(&link).is_ok_and(|current| current == bin) {
        return Ok(());
    }
    if fs::symlink_metadata(&link).is_ok() {
        fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(bin, &link)
        .with_context(|| format!("linking {} to {}", link.display(), bin.display()))
}
