//! The IAM policies of `deploy/iam/`, for tests that prove the code calls nothing they do not
//! allow.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

/// `deploy/iam/<name>.json` of the workspace.
pub fn policy_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/iam")
        .join(format!("{name}.json"))
}

/// Policy `name`, parsed.
fn load(name: &str) -> Result<serde_json::Value, String> {
    let path = policy_path(name);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// The actions the `Allow` statements of policy `name` grant, lower-cased (`ec2:describeimages`).
/// Wildcard actions are refused: the policies are meant to be exact.
pub fn allowed_actions(name: &str) -> Result<BTreeSet<String>, String> {
    let path = policy_path(name);
    let policy = load(name)?;
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

/// One AWS request as the emulator saw it (`GET /opsy-ext/calls`): who made it, the IAM action,
/// the resources it acts on (ARNs; `*` for actions without resource-level permissions), the
/// tags it writes and the tags those resources carried, and other condition keys it sets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Call {
    /// The access key id that signed it.
    pub access_key: String,
    /// The role whose assumed credentials signed it, if any.
    #[serde(default)]
    pub role: Option<String>,
    /// `service:Operation`, e.g. `ec2:CreateTags`.
    pub action: String,
    /// The resources' ARNs.
    pub resources: Vec<String>,
    /// Tags the request writes (`aws:RequestTag/…`, `aws:TagKeys`).
    #[serde(default)]
    pub request_tags: BTreeMap<String, String>,
    /// Tags of each resource when the request arrived (`aws:ResourceTag/…`).
    #[serde(default)]
    pub resource_tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Other condition keys, e.g. `ec2:LaunchTemplate`.
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    /// Tags of the principal that signed it (`aws:PrincipalTag/…`: the role's tags and its
    /// session tags, e.g. EKS Pod Identity's `eks-cluster-name`). The emulator does not know
    /// them; a test says whom it plays with [`as_principal`].
    #[serde(default)]
    pub principal_tags: BTreeMap<String, String>,
}

/// `calls` as made by a principal tagged `tags` (the values of `${aws:PrincipalTag/…}`).
pub fn as_principal(mut calls: Vec<Call>, tags: &[(&str, &str)]) -> Vec<Call> {
    for call in &mut calls {
        call.principal_tags = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }
    calls
}

/// A condition value with its policy variables (`${aws:PrincipalTag/key}`,
/// `${aws:PrincipalAccount}`) replaced from
/// `call`; `None` when one has no value, which matches nothing (IAM User Guide, "IAM policy
/// elements: Variables and tags": a variable with no value in the request context).
fn substitute(value: &str, call: &Call) -> Option<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        let variable = rest[start + 2..end].to_lowercase();
        if variable == "aws:principalaccount" {
            // The assumed role's account; the emulator's own account for its own keys.
            let account = call
                .role
                .as_deref()
                .and_then(opsy_api::tags::account_of_arn)
                .unwrap_or(crate::ACCOUNT_ID);
            out.push_str(account);
        } else {
            let tag = variable.strip_prefix("aws:principaltag/")?;
            let value = call
                .principal_tags
                .iter()
                .find(|(k, _)| k.to_lowercase() == tag)?
                .1;
            out.push_str(value);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `*` and `?` wildcards, as IAM matches actions (case-insensitive) and resources.
fn glob(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if case_insensitive {
        (
            pattern.to_lowercase().chars().collect(),
            text.to_lowercase().chars().collect(),
        )
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    // Classic wildcard matching with backtracking over the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        serde_json::Value::Bool(b) => vec![b.to_string()],
        _ => Vec::new(),
    }
}

/// The values of condition key `key` for `call` acting on `resource` (none: absent).
fn context_values(call: &Call, resource: &str, key: &str) -> Vec<String> {
    let lower = key.to_lowercase();
    if let Some(tag) = lower.strip_prefix("aws:requesttag/") {
        return call
            .request_tags
            .iter()
            .filter(|(k, _)| k.to_lowercase() == tag)
            .map(|(_, v)| v.clone())
            .collect();
    }
    if lower == "aws:tagkeys" {
        return call.request_tags.keys().cloned().collect();
    }
    if let Some((_, tag)) = lower.split_once(":resourcetag/") {
        return call
            .resource_tags
            .get(resource)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.to_lowercase() == tag)
            .map(|(_, v)| v.clone())
            .collect();
    }
    call.context
        .iter()
        .filter(|(k, _)| k.to_lowercase() == lower)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Whether one condition operator holds (IAM policy reference, "Condition operators"); an
/// operator this evaluator does not know is an error, so a policy cannot pass by being
/// misunderstood.
fn condition_holds(
    operator: &str,
    key: &str,
    wanted: &[String],
    present: &[String],
) -> Result<bool, String> {
    let (set, op) = match operator.split_once(':') {
        Some((set @ ("ForAllValues" | "ForAnyValue"), op)) => (Some(set), op),
        _ => (None, operator),
    };
    let one = |value: &str| -> Result<bool, String> {
        Ok(match op {
            "StringEquals" | "ArnEquals" | "Bool" => wanted.iter().any(|w| w == value),
            "StringEqualsIgnoreCase" => wanted.iter().any(|w| w.eq_ignore_ascii_case(value)),
            "StringLike" | "ArnLike" => wanted.iter().any(|w| glob(w, value, false)),
            "StringNotEquals" | "ArnNotEquals" => wanted.iter().all(|w| w != value),
            "StringNotLike" | "ArnNotLike" => wanted.iter().all(|w| !glob(w, value, false)),
            other => {
                return Err(format!(
                    "condition operator {other} on {key} is not understood"
                ));
            }
        })
    };
    if op == "Null" {
        let absent = present.is_empty();
        return Ok(wanted.iter().any(|w| (w == "true") == absent));
    }
    let negated = op.contains("Not");
    match set {
        Some("ForAllValues") => {
            for value in present {
                if !one(value)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Some(_) => {
            for value in present {
                if one(value)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        None if present.is_empty() => Ok(negated),
        None => {
            for value in present {
                if one(value)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

/// Whether `statement` applies to `call` on `resource`.
fn statement_matches(
    statement: &serde_json::Value,
    call: &Call,
    resource: &str,
) -> Result<bool, String> {
    let actions = strings(&statement["Action"]);
    if !actions.iter().any(|a| glob(a, &call.action, true)) {
        return Ok(false);
    }
    let resources = strings(&statement["Resource"]);
    if !resources.iter().any(|r| glob(r, resource, false)) {
        return Ok(false);
    }
    if let Some(conditions) = statement["Condition"].as_object() {
        for (operator, keys) in conditions {
            for (key, wanted) in keys.as_object().into_iter().flatten() {
                let present = context_values(call, resource, key);
                let wanted: Vec<String> = strings(wanted)
                    .iter()
                    .filter_map(|w| substitute(w, call))
                    .collect();
                if !condition_holds(operator, key, &wanted, &present)? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// Why policy `name` refuses `call`, if it does: for every resource, an `Allow` statement must
/// match (action, resource, every condition) and no `Deny` may.
pub fn refuses(name: &str, call: &Call) -> Result<Option<String>, String> {
    refused_by(&statements(name)?, call)
}

/// The statements of policy `name`.
fn statements(name: &str) -> Result<Vec<serde_json::Value>, String> {
    Ok(load(name)?["Statement"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Why `statements` refuse `call`, if they do.
fn refused_by(statements: &[serde_json::Value], call: &Call) -> Result<Option<String>, String> {
    for resource in &call.resources {
        let mut allowed = false;
        for statement in statements {
            if !statement_matches(statement, call, resource)? {
                continue;
            }
            match statement["Effect"].as_str() {
                Some("Deny") => {
                    return Ok(Some(format!(
                        "{} on {resource}: denied by {}",
                        call.action, statement["Sid"]
                    )));
                }
                Some("Allow") => allowed = true,
                _ => {}
            }
        }
        if !allowed {
            return Ok(Some(format!(
                "{} on {resource} (request tags {:?}, resource tags {:?}): no statement allows it",
                call.action,
                call.request_tags,
                call.resource_tags.get(resource)
            )));
        }
    }
    Ok(None)
}

/// Checks that policy `name` allows each of `calls` on each of its resources, with its tags and
/// conditions, and that there were at least `at_least` distinct actions among them.
pub fn check_resource_calls(name: &str, calls: &[Call], at_least: usize) -> Result<(), String> {
    let actions: BTreeSet<&str> = calls.iter().map(|c| c.action.as_str()).collect();
    if actions.len() < at_least {
        return Err(format!(
            "only {} distinct actions, expected at least {at_least}: {actions:?}",
            actions.len()
        ));
    }
    let statements = statements(name)?;
    let mut refused = Vec::new();
    for call in calls {
        if let Some(why) = refused_by(&statements, call)? {
            refused.push(why);
        }
    }
    refused.sort();
    refused.dedup();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "deploy/iam/{name}.json refuses:\n{}",
            refused.join("\n")
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

    fn call(action: &str, resource: &str) -> Call {
        Call {
            access_key: "AKIA".into(),
            role: None,
            action: action.into(),
            resources: vec![resource.into()],
            request_tags: BTreeMap::new(),
            resource_tags: BTreeMap::new(),
            context: BTreeMap::new(),
            principal_tags: BTreeMap::new(),
        }
    }

    #[test]
    fn a_refresher_writes_soak_evidence_only_for_its_own_cluster_and_account() {
        let image = "arn:aws:ec2:us-west-2::image/ami-1";
        let evidence = |key: &str| Call {
            request_tags: BTreeMap::from([(key.to_owned(), "2026-12-04T00:00:00Z".to_owned())]),
            resource_tags: BTreeMap::from([(
                image.to_owned(),
                BTreeMap::from([(
                    "brought-to-you-by".to_owned(),
                    "opsy-the-ami-operator".to_owned(),
                )]),
            )]),
            ..call("ec2:CreateTags", image)
        };
        let own = crate::ACCOUNT_ID;
        let cluster_account = "111122223333";
        // Its own role, in the cluster's account (the cluster tag from EKS Pod Identity or
        // the role); and the owner account's role, in the session the refresher assumed it in
        // (the cluster and its account from the session's tags).
        let as_refresher = |c: Call| {
            as_principal(vec![c], &[("eks-cluster-name", "staging")])
                .pop()
                .unwrap()
        };
        let as_session = |c: Call| Call {
            role: Some("arn:aws:iam::444455556666:role/opsy-ami-owner-access".into()),
            ..as_principal(
                vec![c],
                &[
                    ("eks-cluster-name", "staging"),
                    ("eks-cluster-account", cluster_account),
                ],
            )
            .pop()
            .unwrap()
        };
        for (policy, principal, account) in [
            (
                "ami-refresh-operator",
                &as_refresher as &dyn Fn(Call) -> Call,
                own,
            ),
            ("ami-owner-access", &as_session, cluster_account),
        ] {
            let key = format!("healthy-on/{account}/staging");
            assert_eq!(
                refuses(policy, &principal(evidence(&key))).unwrap(),
                None,
                "{policy}"
            );
            for other in [
                format!("healthy-on/{account}/prod"),
                format!("healthy-on/{account}/staging-2"),
                format!("healthy-on/{account}/*"),
                // Another account's cluster of the same name, and the form without account.
                "healthy-on/444455556666/staging".to_owned(),
                "healthy-on/999988887777/staging".to_owned(),
                "healthy-on/staging".to_owned(),
            ] {
                assert!(
                    refuses(policy, &principal(evidence(&other)))
                        .unwrap()
                        .is_some(),
                    "{policy}: a refresher of staging in {account} may write {other}"
                );
            }
            // A principal with no cluster tag vouches for no cluster.
            assert!(
                refuses(policy, &evidence(&key)).unwrap().is_some(),
                "{policy}"
            );
        }
    }

    #[test]
    fn a_refresher_may_quarantine_a_managed_ami_but_never_un_quarantine_it() {
        let image = "arn:aws:ec2:us-west-2::image/ami-1";
        let tagging = |tags: &[(&str, &str)]| Call {
            request_tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            resource_tags: BTreeMap::from([(
                image.to_owned(),
                BTreeMap::from([
                    (
                        "brought-to-you-by".to_owned(),
                        "opsy-the-ami-operator".to_owned(),
                    ),
                    ("status".to_owned(), "quarantined".to_owned()),
                ]),
            )]),
            ..call("ec2:CreateTags", image)
        };
        for policy in ["ami-refresh-operator", "ami-owner-access"] {
            let quarantine = tagging(&[
                ("status", "quarantined"),
                ("quarantine-reason", "prod/amr: a: 2 of 2 nodes NotReady"),
            ]);
            assert_eq!(refuses(policy, &quarantine).unwrap(), None, "{policy}");
            for status in ["active", "deprecated"] {
                let lifted = tagging(&[("status", status)]);
                assert!(
                    refuses(policy, &lifted).unwrap().is_some(),
                    "{policy} lets a refresher set status={status}"
                );
            }
        }
    }

    #[test]
    fn resources_tags_and_conditions_are_evaluated() {
        assert!(glob(
            "arn:aws:ec2:*::image/*",
            "arn:aws:ec2:us-west-2::image/ami-1",
            false
        ));
        assert!(!glob(
            "arn:aws:ec2:*::image/*",
            "arn:aws:ec2:us-west-2:1:instance/i-1",
            false
        ));
        assert!(glob("ec2:describe*", "ec2:DescribeImages", true));
        // The refresher may start instance refreshes on Auto Scaling groups only.
        let start = |arn: &str| call("autoscaling:StartInstanceRefresh", arn);
        let asg = "arn:aws:autoscaling:us-west-2:123456789012:autoScalingGroup:uuid:autoScalingGroupName/g";
        assert_eq!(refuses("ami-refresh-operator", &start(asg)).unwrap(), None);
        assert!(
            refuses(
                "ami-refresh-operator",
                &start("arn:aws:ec2:us-west-2:1:instance/i-1")
            )
            .unwrap()
            .is_some()
        );
        // Negated operators hold when the key is absent; ForAllValues holds on no values.
        assert!(condition_holds("StringNotEquals", "k", &["x".into()], &[]).unwrap());
        assert!(!condition_holds("StringEquals", "k", &["x".into()], &[]).unwrap());
        assert!(condition_holds("ForAllValues:StringEquals", "k", &["x".into()], &[]).unwrap());
        assert!(
            !condition_holds(
                "ForAllValues:StringEquals",
                "k",
                &["x".into()],
                &["y".into()]
            )
            .unwrap()
        );
        assert!(condition_holds("Null", "k", &["true".into()], &[]).unwrap());
        assert!(condition_holds("NumericLessThan", "k", &["1".into()], &["0".into()]).is_err());
    }
}
