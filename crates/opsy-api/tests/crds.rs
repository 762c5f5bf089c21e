//! The committed CRD YAML is exactly what the types generate, and the generated schemas are
//! ones the API server accepts: structural, with CEL rules that compile within budget and
//! printer columns that point at real fields.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{fs, path::Path};

use opsy_api::crd::Kind;
use serde_json::Value;

mod schema {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    /// The `openAPIV3Schema` of the CRD's only version, as JSON.
    pub fn open_api_schema(crd: &CustomResourceDefinition) -> serde_json::Value {
        let version = &crd.spec.versions[0];
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        serde_json::to_value(schema.expect("CRD has an openAPIV3Schema")).unwrap()
    }
}

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    for kind in Kind::ALL {
        let path = dir.join(kind.file_name());
        let committed = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask crds`", path.display()));
        let generated = kind.yaml().unwrap();
        if committed != generated {
            let diff = similar::TextDiff::from_lines(&committed, &generated);
            panic!(
                "{} is stale; run `cargo xtask crds`:\n{}",
                path.display(),
                diff.unified_diff()
                    .context_radius(2)
                    .header("committed", "generated")
            );
        }
    }
}

#[test]
fn crd_yaml_parses_back_into_the_same_definition() {
    for kind in Kind::ALL {
        let parsed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_saphyr::from_str(&kind.yaml().unwrap()).unwrap();
        assert_eq!(parsed, kind.crd(), "{kind:?}");
    }
}

#[test]
fn names_scope_and_versions() {
    let pb = Kind::PackerBuilder.crd();
    assert_eq!(
        pb.metadata.name.as_deref(),
        Some("packerbuilders.ami.refresh.ops")
    );
    assert_eq!(pb.spec.scope, "Namespaced");
    assert_eq!(pb.spec.names.short_names, Some(vec!["pb".to_owned()]));
    let amr = Kind::AMIRefresher.crd();
    assert_eq!(
        amr.metadata.name.as_deref(),
        Some("amirefreshers.ami.refresh.ops")
    );
    assert_eq!(amr.spec.names.short_names, Some(vec!["amr".to_owned()]));
    let class = Kind::BuildClass.crd();
    assert_eq!(
        class.metadata.name.as_deref(),
        Some("buildclasses.ami.refresh.ops")
    );
    assert_eq!(class.spec.scope, "Cluster");
    let refresher_class = Kind::RefresherClass.crd();
    assert_eq!(
        refresher_class.metadata.name.as_deref(),
        Some("refresherclasses.ami.refresh.ops")
    );
    assert_eq!(refresher_class.spec.scope, "Cluster");
    for crd in [pb, amr] {
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
    }
}

/// Every node of a structural schema has a type (or is int-or-string / preserves unknown
/// fields), and no node uses `$ref`, `anyOf`, `oneOf` or `allOf` at the top of a property.
fn structural_errors(path: &str, schema: &Value, errors: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        return;
    };
    let exempt = map.contains_key("x-kubernetes-int-or-string")
        || map.contains_key("x-kubernetes-preserve-unknown-fields");
    if !exempt && !map.contains_key("type") {
        errors.push(format!("{path}: no type"));
    }
    for keyword in ["$ref", "oneOf", "allOf", "definitions", "$defs"] {
        if map.contains_key(keyword) {
            errors.push(format!("{path}: uses {keyword}"));
        }
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (key, sub) in properties {
            structural_errors(&format!("{path}.{key}"), sub, errors);
        }
    }
    if let Some(items) = map.get("items") {
        structural_errors(&format!("{path}[]"), items, errors);
    }
    if let Some(additional) = map.get("additionalProperties").filter(|a| a.is_object()) {
        structural_errors(&format!("{path}{{}}"), additional, errors);
    }
}

#[test]
fn schemas_are_structural() {
    for kind in Kind::ALL {
        let mut errors = Vec::new();
        structural_errors("", &schema::open_api_schema(&kind.crd()), &mut errors);
        assert!(errors.is_empty(), "{kind:?}:\n{}", errors.join("\n"));
    }
}

/// Compilation errors of every CEL rule anywhere in the compiled schema tree.
fn cel_errors(path: &str, node: &kube::core::cel::CompiledSchema, errors: &mut Vec<String>) {
    errors.extend(
        node.compilation_errors()
            .iter()
            .map(|e| format!("{path}: {e}")),
    );
    for (name, child) in &node.properties {
        cel_errors(&format!("{path}.{name}"), child, errors);
    }
    if let Some(items) = &node.items {
        cel_errors(&format!("{path}[]"), items, errors);
    }
    if let Some(additional) = &node.additional_properties {
        cel_errors(&format!("{path}{{}}"), additional, errors);
    }
}

#[test]
fn cel_rules_compile() {
    for kind in Kind::ALL {
        let schema = schema::open_api_schema(&kind.crd());
        let compiled = kube::core::cel::compile_schema(&schema);
        let mut errors = Vec::new();
        cel_errors("", &compiled, &mut errors);
        assert!(errors.is_empty(), "{kind:?}:\n{}", errors.join("\n"));
        assert!(
            serde_json::to_string(&schema)
                .unwrap()
                .contains("x-kubernetes-validations"),
            "{kind:?} has CEL rules"
        );
    }
}

#[test]
fn printer_columns_point_at_schema_fields() {
    for kind in Kind::ALL {
        let crd = kind.crd();
        let schema = schema::open_api_schema(&crd);
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        assert!(columns.len() >= 4, "{kind:?} has useful columns");
        for column in columns {
            if column.json_path == ".metadata.creationTimestamp" {
                continue;
            }
            // `.status.conditions[?(@.type=="Ready")].status` → status.conditions[].status
            let path = match column.json_path.split_once("[?(") {
                Some((head, tail)) => {
                    format!("{head}[]{}", tail.split_once(")]").map_or("", |t| t.1))
                }
                None => column.json_path.clone(),
            };
            let mut node = &schema;
            for part in path.trim_start_matches('.').split('.') {
                let (name, filtered) = match part.split_once('[') {
                    Some((name, _)) => (name, true),
                    None => (part, false),
                };
                node = node
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .unwrap_or_else(|| {
                        panic!("{kind:?}: column {} → no field {name}", column.name)
                    });
                if filtered {
                    node = node.get("items").expect("array");
                }
            }
            let mut ty = node.get("type").and_then(Value::as_str).unwrap_or_default();
            // A list of strings prints as one string column (`[team-a team-b]`).
            if ty == "array" && node.pointer("/items/type") == Some(&Value::from("string")) {
                ty = "string";
            }
            let expected = match column.type_.as_str() {
                "integer" => "integer",
                _ => "string",
            };
            assert_eq!(ty, expected, "{kind:?}: column {}", column.name);
        }
    }
}
