//! The IAM policies of `deploy/iam/`, for tests that prove the code calls nothing they do not
//! allow.

use std::{collections::BTreeSet, path::PathBuf};

/// `deploy/iam/<name>.json` of the workspace.
pub fn policy_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/iam")
        .join(format!("{name}.json"))
}

/// The actions the `Allow` statements of policy `name` grant, lower-cased (`ec2:describeimages`).
/// Wildcard actions are refused: the policies are meant to be exact.
pub fn allowed_actions(name: &str) -> Result<BTreeSet<String>, String> {
    let path = policy_path(name);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let policy: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().into_iter().flatten() {
        if statement["Effect"] != "Allow" {
            continue;
        }
        let listed = match &statement["Action"] {
            serde_json::Value::String(one) => vec![one.clone()],
            serde_json::Value::Array(many) => many
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            other => return Err(format!("{}: Action is {other}", path.display())),
        };
        for action in listed {
            if action.contains('*') {
                return Err(format!("{}: wildcard action {action}", path.display()));
            }
            actions.insert(action.to_lowercase());
        }
    }
    Ok(actions)
}

/// The `service:Operation` pairs of `calls` that policy `name` does not allow.
pub fn missing_from_policy<'a>(
    name: &str,
    calls: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<String>, String> {
    let allowed = allowed_actions(name)?;
    let mut missing: Vec<String> = calls
        .into_iter()
        .map(|(service, operation)| format!("{service}:{operation}"))
        .filter(|action| !allowed.contains(&action.to_lowercase()))
        .collect();
    missing.sort();
    missing.dedup();
    Ok(missing)
}

/// Checks that policy `name` allows every one of `calls`, and that there were at least
/// `at_least` distinct ones (so that a test which made no calls cannot pass).
pub fn check_calls<'a>(
    name: &str,
    calls: impl IntoIterator<Item = (&'a str, &'a str)>,
    at_least: usize,
) -> Result<(), String> {
    let calls: BTreeSet<(&str, &str)> = calls.into_iter().collect();
    if calls.len() < at_least {
        return Err(format!(
            "only {} distinct AWS calls, expected at least {at_least}: {calls:?}",
            calls.len()
        ));
    }
    let missing = missing_from_policy(name, calls)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not allowed by deploy/iam/{name}.json: {missing:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_policies_parse_and_a_missing_action_is_found() {
        for name in [
            "packer-builder-operator",
            "ami-refresh-operator",
            "packer-job",
        ] {
            assert!(!allowed_actions(name).unwrap().is_empty(), "{name}");
        }
        let missing = missing_from_policy(
            "packer-builder-operator",
            [("ec2", "DescribeImages"), ("eks", "UpdateNodegroupVersion")],
        )
        .unwrap();
        assert_eq!(missing, ["eks:UpdateNodegroupVersion"]);
        assert!(check_calls("packer-builder-operator", [("ec2", "DescribeImages")], 2).is_err());
        assert!(check_calls("packer-builder-operator", [("ec2", "DescribeImages")], 1).is_ok());
    }
}
