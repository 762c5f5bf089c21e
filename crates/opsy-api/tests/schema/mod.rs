//! Validates a custom resource against a generated CRD the way the API server would, as far as
//! can be done without one: OpenAPI schema (types, patterns, enums, bounds, required), pruning
//! of unknown fields, list-type uniqueness, and the CEL rules (`x-kubernetes-validations`).
//!
//! Every error names the field it is about, e.g. `spec.timeOuts.expiresIn: ...`.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// The `openAPIV3Schema` of the CRD's first version, as JSON.
fn open_api_schema(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("schema serialises")
}

/// All the errors the API server would report for `object` (empty when it would accept it).
pub fn check(crd: &CustomResourceDefinition, object: &Value) -> Vec<String> {
    let schema = open_api_schema(crd);
    let mut errors = Vec::new();
    openapi_errors(&schema, object, &mut errors);
    unknown_fields("", &schema, object, &mut errors);
    list_type_errors("", &schema, object, &mut errors);
    if let Err(cel) = kube::core::cel::Validator::new().validate(&schema, object, None) {
        errors.extend(
            cel.iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    errors
}

/// OpenAPI v3 validation with a JSON Schema draft-4 validator (OpenAPI 3.0 schemas are a
/// draft-4 dialect); `nullable` is translated into a `null` type.
fn openapi_errors(schema: &Value, object: &Value, errors: &mut Vec<String>) {
    let mut schema = schema.clone();
    translate_nullable(&mut schema);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .expect("the CRD schema is a valid JSON schema");
    for error in validator.iter_errors(object) {
        errors.push(format!(
            "{}: {}",
            field_path(error.instance_path().as_str()),
            error
        ));
    }
}

fn translate_nullable(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type").cloned()
            {
                map.insert("type".into(), serde_json::json!([t, "null"]));
            }
            map.values_mut().for_each(translate_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(translate_nullable),
        _ => {}
    }
}

/// `/spec/builder/commands/0/onError` → `spec.builder.commands[0].onError`.
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    if out.is_empty() { "<root>".into() } else { out }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Fields the API server would silently drop (prune) because the schema does not know them.
fn unknown_fields(path: &str, schema: &Value, object: &Value, errors: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match object {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, value) in fields {
                let child = join(path, key);
                // ObjectMeta and the type fields are validated by the API server itself.
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(sub), _) => unknown_fields(&child, sub, value, errors),
                    (None, Some(sub)) if sub.is_object() => {
                        unknown_fields(&child, sub, value, errors)
                    }
                    (None, Some(Value::Bool(true))) => {}
                    _ => errors.push(format!(
                        "{child}: unknown field, would be pruned by the API server"
                    )),
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(&format!("{path}[{i}]"), sub, item, errors);
                }
            }
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type: map` (unique keys) and `set` (unique items).
fn list_type_errors(path: &str, schema: &Value, object: &Value, errors: &mut Vec<String>) {
    match object {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, value) in fields {
                if let Some(sub) = properties.and_then(|p| p.get(key)).or(additional) {
                    list_type_errors(&join(path, key), sub, value, errors);
                }
            }
        }
        Value::Array(items) => {
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let identity = match list_type {
                    Some("map") => keys
                        .iter()
                        .map(|k| format!("{k}={}", item.get(*k).unwrap_or(&Value::Null)))
                        .collect::<Vec<_>>()
                        .join(","),
                    Some("set") => item.to_string(),
                    _ => continue,
                };
                if !seen.insert(identity.clone()) {
                    errors.push(format!("{path}[{i}]: duplicate entry ({identity})"));
                }
            }
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    list_type_errors(&format!("{path}[{i}]"), sub, item, errors);
                }
            }
        }
        _ => {}
    }
}
