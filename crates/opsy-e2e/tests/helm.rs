//! The charts install for real: each of the three install paths (builder only, refresher only,
//! both through the umbrella chart) is installed with helm into a control plane of its own,
//! and the API server accepts every object (CRDs, RBAC, ServiceAccount, Service,
//! Deployment); `helm upgrade` changes the Deployment; `helm uninstall` removes the operator
//! and, with `crds.keep` (the default), keeps the CRDs and the custom resources, as the chart
//! READMEs say.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use opsy_testkit::ControlPlane;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command, failing the test with its output when it fails; returns its stdout.
fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm(cp: &ControlPlane) -> Command {
    let mut command = Command::new(cp.binary("helm"));
    command
        .current_dir(charts().path())
        .arg("--kubeconfig")
        .arg(cp.kubeconfig());
    command
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    run(Command::new(cp.binary("kubectl"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(args))
}

/// A copy of `charts/` (so that `helm dependency build` leaves the sources alone).
fn charts() -> &'static tempfile::TempDir {
    static COPY: OnceLock<tempfile::TempDir> = OnceLock::new();
    COPY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("cp")
            .arg("-r")
            .arg(root().join("charts"))
            .arg(dir.path()));
        dir
    })
}

/// `helm dependency build` for every chart, once per test binary and in order (the umbrella
/// packages the two operator charts, which need their shared library chart first).
fn dependencies_built(cp: &ControlPlane) {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        for chart in [
            "charts/packer-builder-operator",
            "charts/ami-refresh-operator",
            "charts/opsy-ami-operator",
        ] {
            run(helm(cp).args(["dependency", "build", chart]));
        }
    });
}

const PB: &str = "apiVersion: ami.refresh.ops/v1alpha1\nkind: PackerBuilder\nmetadata: {name: kept}\n\
spec: {region: us-west-2, clusterName: c, builder: {repoURL: 'https://github.com/example-org/images'}}\n";
const AMR: &str = "apiVersion: ami.refresh.ops/v1alpha1\nkind: AMIRefresher\nmetadata: {name: kept}\n\
spec: {region: us-west-2, clusterName: c, ami: ami-0123456789abcdef0}\n";

/// Installs `chart` as release `release`, upgrades it with `--set upgrade`, then uninstalls it;
/// `operators` are the Deployments it runs and `crds` (with a custom resource of each) what
/// must outlive it.
fn install_upgrade_uninstall(
    chart: &str,
    release: &str,
    upgrade: &str,
    operators: &[&str],
    crds: &[(&str, &str)],
) {
    let cp = ControlPlane::start_without_crds().unwrap();
    dependencies_built(&cp);
    let ns = "opsy-system";
    run(helm(&cp).args([
        "install",
        release,
        chart,
        "-n",
        ns,
        "--create-namespace",
        "--wait=false",
    ]));
    for (crd, _) in crds {
        kubectl(
            &cp,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd",
                crd,
            ],
        );
    }
    for operator in operators {
        let name = format!("{release}-{operator}");
        for kind in ["deployment", "serviceaccount"] {
            kubectl(&cp, &["get", "-n", ns, kind, &name]);
        }
        kubectl(
            &cp,
            &["get", "-n", ns, "service", &format!("{name}-metrics")],
        );
        kubectl(&cp, &["get", "clusterrole,clusterrolebinding", &name]);
        let election = format!("{name}-leader-election");
        kubectl(&cp, &["get", "-n", ns, "role,rolebinding", &election]);
    }
    for (_, object) in crds {
        let file = std::env::temp_dir().join(format!("opsy-helm-{release}-{}.yaml", object.len()));
        std::fs::write(&file, object).unwrap();
        kubectl(&cp, &["create", "-n", ns, "-f", file.to_str().unwrap()]);
    }

    run(helm(&cp).args([
        "upgrade",
        release,
        chart,
        "-n",
        ns,
        "--reuse-values",
        "--set",
        upgrade,
    ]));
    for operator in operators {
        let generation = kubectl(
            &cp,
            &[
                "get",
                "-n",
                ns,
                "deployment",
                &format!("{release}-{operator}"),
                "-o",
                "jsonpath={.metadata.generation}",
            ],
        );
        assert_eq!(
            generation, "2",
            "{operator}: the upgrade changed the Deployment"
        );
    }

    run(helm(&cp).args(["uninstall", release, "-n", ns]));
    let left = kubectl(&cp, &["get", "-n", ns, "deployments", "-o", "name"]);
    assert!(left.trim().is_empty(), "Deployments left: {left}");
    for (crd, _) in crds {
        kubectl(&cp, &["get", "crd", crd]);
        let kind = crd.split('.').next().unwrap();
        let kept = kubectl(&cp, &["get", "-n", ns, kind, "-o", "name"]);
        assert!(
            kept.contains("/kept"),
            "{crd}: custom resources kept: {kept:?}"
        );
    }
}

#[test]
fn the_builder_chart_installs_upgrades_and_uninstalls() {
    install_upgrade_uninstall(
        "charts/packer-builder-operator",
        "pb",
        "concurrency=8",
        &["packer-builder-operator"],
        &[("packerbuilders.ami.refresh.ops", PB)],
    );
}

#[test]
fn the_refresher_chart_installs_upgrades_and_uninstalls() {
    install_upgrade_uninstall(
        "charts/ami-refresh-operator",
        "amr",
        "concurrency=8",
        &["ami-refresh-operator"],
        &[("amirefreshers.ami.refresh.ops", AMR)],
    );
}

#[test]
fn the_umbrella_chart_installs_upgrades_and_uninstalls() {
    install_upgrade_uninstall(
        "charts/opsy-ami-operator",
        "both",
        "packer-builder-operator.concurrency=8,ami-refresh-operator.concurrency=8",
        &["packer-builder-operator", "ami-refresh-operator"],
        &[
            ("packerbuilders.ami.refresh.ops", PB),
            ("amirefreshers.ami.refresh.ops", AMR),
        ],
    );
}
