//! Every manifest in `examples/` is accepted by the generated CRDs exactly as written, and the
//! documents in `tests/invalid/` are rejected with a message that names the field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod schema;

use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use opsy_api::{AMIRefresher, BuildClass, PackerBuilder, RefresherClass};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

fn crd_for(object: &Value) -> CustomResourceDefinition {
    assert_eq!(object["apiVersion"], "ami.refresh.ops/v1alpha1");
    match object["kind"].as_str() {
        Some("PackerBuilder") => PackerBuilder::crd(),
        Some("AMIRefresher") => AMIRefresher::crd(),
        Some("BuildClass") => BuildClass::crd(),
        Some("RefresherClass") => RefresherClass::crd(),
        other => panic!("unexpected kind {other:?}"),
    }
}

/// Every leaf of `value` as a JSON pointer (`/builder/commands/0/args/0`).
fn leaf_pointers(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = k.replace('~', "~0").replace('/', "~1");
                leaf_pointers(&format!("{prefix}/{key}"), v, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaf_pointers(&format!("{prefix}/{i}"), v, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_example_is_accepted_and_round_trips_through_the_rust_types() {
    let files = yaml_files(&repo_root().join("examples"));
    assert!(
        files.len() >= 6,
        "expected the upstream and richer examples, found {files:?}"
    );
    for path in files {
        let object = load(&path);
        let errors = schema::check(&crd_for(&object), &object);
        assert!(
            errors.is_empty(),
            "{} is rejected:\n{}",
            path.display(),
            errors.join("\n")
        );

        let typed: Value = match object["kind"].as_str() {
            Some("PackerBuilder") => serde_json::to_value(
                serde_json::from_value::<PackerBuilder>(object.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            ),
            Some("BuildClass") => serde_json::to_value(
                serde_json::from_value::<BuildClass>(object.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            ),
            Some("RefresherClass") => serde_json::to_value(
                serde_json::from_value::<RefresherClass>(object.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            ),
            _ => serde_json::to_value(
                serde_json::from_value::<AMIRefresher>(object.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            ),
        }
        .unwrap();

        // Every value written in the example survives deserialisation: nothing is dropped by
        // the Rust types (the schema check above covers the API server's pruning).
        let mut leaves = Vec::new();
        leaf_pointers("/spec", &object["spec"], &mut leaves);
        for leaf in leaves {
            let written = object.pointer(&leaf).unwrap();
            let kept = typed.pointer(&leaf);
            let same = match (written, kept) {
                (Value::Bool(false), None) => true, // `false` flags are omitted when serialised
                (w, Some(k)) => w == k,
                _ => false,
            };
            assert!(
                same,
                "{}: {leaf} = {written} became {kept:?}",
                path.display()
            );
        }
    }
}

#[test]
fn invalid_documents_are_rejected_with_a_message_naming_the_field() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 10, "found {files:?}");
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        let object = load(&path);
        let errors = schema::check(&crd_for(&object), &object).join("\n");
        for needle in expected {
            assert!(
                errors.contains(needle),
                "{}: expected an error containing {needle:?}, got:\n{errors}",
                path.display()
            );
        }
    }
}

#[test]
fn the_upstream_examples_are_kept_verbatim() {
    // The upstream README lives in the shared design folder beside the checkout; a checkout
    // without it cannot run this comparison, and says so instead of passing silently.
    let readme = repo_root().join("../shared/spec/upstream-readme.md");
    let Ok(readme) = fs::read_to_string(&readme) else {
        eprintln!("skipped: {} not present", readme.display());
        return;
    };
    let blocks: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("apiVersion: ami.refresh.ops/v1alpha1"))
        .collect();
    assert_eq!(blocks.len(), 2);
    let examples = repo_root().join("examples");
    assert_eq!(
        fs::read_to_string(examples.join("upstream-packer-builder.yaml")).unwrap(),
        blocks[0]
    );
    assert_eq!(
        fs::read_to_string(examples.join("upstream-ami-refresher.yaml")).unwrap(),
        blocks[1]
    );
}

#[test]
fn upstream_examples_get_the_documented_defaults() {
    let pb: PackerBuilder = serde_json::from_value(load(
        &repo_root().join("examples/upstream-packer-builder.yaml"),
    ))
    .unwrap();
    assert_eq!(pb.spec.time_outs.expires_in.as_std().as_secs(), 48 * 3600);
    assert_eq!(pb.spec.time_outs.controller_timer.as_std().as_secs(), 300);
    assert_eq!(pb.spec.max_failed_builds, 3);
    assert_eq!(pb.spec.builder.commands.len(), 1);
    assert!(pb.spec.builder.commands[0].debug);

    let amr: AMIRefresher = serde_json::from_value(load(
        &repo_root().join("examples/upstream-ami-refresher.yaml"),
    ))
    .unwrap();
    assert_eq!(amr.spec.effective_expires_in().as_std().as_secs(), 300);
    assert_eq!(
        amr.spec.effective_controller_timer().as_std().as_secs(),
        300
    );
    assert_eq!(amr.spec.exclude, ["ingress-dev"]);
    assert_eq!(amr.spec.rollout.max_in_flight, 1);
    assert!(amr.spec.rollout.halt_on_failure);
}

#[test]
fn filters_without_an_owner_are_accepted_only_with_the_opt_out() {
    for file in [
        "examples/upstream-packer-builder.yaml",
        "examples/upstream-ami-refresher.yaml",
    ] {
        let mut object = load(&repo_root().join(file));
        let filters = object["spec"]["amiFilters"].as_array_mut().unwrap();
        filters.retain(|f| f["name"] != "owner-id");
        let errors = schema::check(&crd_for(&object), &object).join("\n");
        assert!(
            errors.contains("amiFilters must name the AMI owner"),
            "{file}: {errors}"
        );
        object["spec"]["allowAnyAmiOwner"] = Value::Bool(true);
        let errors = schema::check(&crd_for(&object), &object);
        assert!(errors.is_empty(), "{file}: {errors:?}");
    }
}
