//! The CRDs on a real API server: every manifest in `examples/` (the upstream README's two
//! among them) is accepted as written, and every document in `crates/opsy-api/tests/invalid/`
//! is refused by the server itself — OpenAPI schema, CEL rules and strict field validation as
//! Kubernetes evaluates them — with the message its `# server:` lines give, which names the
//! field. Submitted with kubectl as a user would, as server-side dry runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use opsy_testkit::ControlPlane;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubectl create --dry-run=server -f file` (in `namespace` unless the file names one).
fn dry_run(cp: &ControlPlane, file: &Path, namespace: &str) -> Output {
    let text = fs::read_to_string(file).unwrap();
    let mut command = Command::new(cp.binary("kubectl"));
    command
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["create", "--dry-run=server", "-o", "name", "-f"])
        .arg(file);
    if !text.contains("\n  namespace:") {
        command.args(["-n", namespace]);
    }
    command.output().unwrap()
}

#[tokio::test]
async fn the_examples_are_accepted_and_invalid_documents_refused_by_the_api_server() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("crds").await.unwrap();
    // Some examples name their namespace.
    let named = Namespace {
        metadata: ObjectMeta {
            name: Some("opsy".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(ns.client.clone())
        .create(&PostParams::default(), &named)
        .await
        .unwrap();

    let examples = yaml_files(&root().join("examples"));
    assert!(examples.len() >= 6, "{examples:?}");
    for file in &examples {
        let out = dry_run(cp, file, &ns.name);
        assert!(
            out.status.success(),
            "{} was refused: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ami.refresh.ops/"),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let invalid = yaml_files(&root().join("crates/opsy-api/tests/invalid"));
    assert!(invalid.len() >= 10, "{invalid:?}");
    for file in &invalid {
        let text = fs::read_to_string(file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# server: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# server:` line",
            file.display()
        );
        let out = dry_run(cp, file, &ns.name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", file.display());
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "{}: expected the API server to say {needle:?}, it said:\n{stderr}",
                file.display()
            );
        }
    }
}
