//! Which clusters and owner-access roles an AMIRefresher may use: its [`RefresherClass`] (the
//! one it names, or the default), owned by the platform team. The refresher's IAM role can
//! update every node group of its account, so without a class whoever may create an
//! AMIRefresher in a watched namespace may point it at any cluster, and at any owner account's
//! role. Checked before any AWS call of a reconcile.

use kube::ResourceExt;
use opsy_api::{
    AMIRefresher, RefresherClass,
    classes::{Class, choose, lists, refusal},
    refresher_class::REFRESHER_CLASS,
};

/// Whether `class` lets `amr` of `namespace` act; else the rule it breaks, by the class's field.
pub fn class_allows(
    class: &RefresherClass,
    amr: &AMIRefresher,
    namespace: &str,
) -> Result<(), String> {
    let name = class.name_any();
    let refused = |what: String, field: &str| refusal(REFRESHER_CLASS.kind, &name, &what, field);
    if !class.admits(namespace) {
        return Err(refused(format!("namespace {namespace}"), "namespaces"));
    }
    let cluster = &amr.spec.cluster_name;
    if !lists(class.spec.clusters.as_deref(), cluster) {
        return Err(refused(
            format!("cluster {cluster:?} (spec.clusterName)"),
            "clusters",
        ));
    }
    if let Some(role) = &amr.spec.image_owner_role_arn
        && !lists(class.spec.image_owner_role_arns.as_deref(), role)
    {
        return Err(refused(
            format!("role {role:?} (spec.imageOwnerRoleArn)"),
            "imageOwnerRoleArns",
        ));
    }
    Ok(())
}

/// Whether `amr` may act, from every RefresherClass of the cluster (`require`: an AMIRefresher
/// that names none, with no default class, may not); else why not.
pub fn allows(classes: &[RefresherClass], amr: &AMIRefresher, require: bool) -> Result<(), String> {
    let named = amr.spec.refresher_class_name.as_deref();
    match choose(REFRESHER_CLASS, classes, named, require)? {
        Some(class) => class_allows(class, amr, &amr.namespace().unwrap_or_default()),
        None => Ok(()),
    }
}

/// [`allows`], reading the classes (outer error: the API call failed).
pub async fn check(
    client: &kube::Client,
    amr: &AMIRefresher,
    require: bool,
) -> Result<Result<(), String>, kube::Error> {
    let classes = opsy_runtime::classes::list::<RefresherClass>(client).await?;
    Ok(allows(&classes, amr, require))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn class(name: &str, default: bool, spec: serde_json::Value) -> RefresherClass {
        let mut class: RefresherClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "RefresherClass",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        if default {
            class.metadata.annotations = Some(BTreeMap::from([(
                opsy_api::classes::DEFAULT_CLASS_ANNOTATION.to_owned(),
                "true".to_owned(),
            )]));
        }
        class
    }

    fn refresher(extra: serde_json::Value) -> AMIRefresher {
        let mut spec = serde_json::json!({
            "region": "us-west-2", "clusterName": "team-a-prod",
            "imageOwnerRoleArn": "arn:aws:iam::111122223333:role/opsy-ami-owner-access",
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "AMIRefresher",
            "metadata": {"name": "nodes", "namespace": "team-a"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_class_pins_the_clusters_and_owner_roles_of_its_namespaces() {
        let amr = refresher(serde_json::json!({}));
        let team_a = class(
            "team-a",
            true,
            serde_json::json!({
                "namespaces": ["team-a"],
                "clusters": ["team-a-prod", "team-a-staging"],
                "imageOwnerRoleArns": ["arn:aws:iam::111122223333:role/opsy-ami-owner-access"],
            }),
        );
        assert_eq!(allows(std::slice::from_ref(&team_a), &amr, false), Ok(()));
        let refused = |amr: &AMIRefresher, classes: &[RefresherClass], wanted: &str| {
            let err = allows(classes, amr, false).unwrap_err();
            assert!(err.contains(wanted), "{wanted:?} not in {err:?}");
        };
        // Another team's cluster, another account's role, another namespace's class.
        refused(
            &refresher(serde_json::json!({"clusterName": "team-b-prod"})),
            std::slice::from_ref(&team_a),
            "cluster \"team-b-prod\" (spec.clusterName) is not allowed by RefresherClass team-a (its spec.clusters)",
        );
        refused(
            &refresher(serde_json::json!({
                "imageOwnerRoleArn": "arn:aws:iam::444455556666:role/opsy-ami-owner-access"
            })),
            std::slice::from_ref(&team_a),
            "role \"arn:aws:iam::444455556666:role/opsy-ami-owner-access\" (spec.imageOwnerRoleArn) is not allowed by RefresherClass team-a (its spec.imageOwnerRoleArns)",
        );
        let team_b = class(
            "team-b",
            false,
            serde_json::json!({"namespaces": ["team-b"]}),
        );
        refused(
            &refresher(serde_json::json!({"refresherClassName": "team-b"})),
            &[team_a.clone(), team_b],
            "namespace team-a is not allowed by RefresherClass team-b (its spec.namespaces)",
        );
        // `[]` owner roles: the operator's own account only.
        let own_account = class(
            "own",
            true,
            serde_json::json!({"namespaces": ["*"], "imageOwnerRoleArns": []}),
        );
        refused(
            &amr,
            std::slice::from_ref(&own_account),
            "its spec.imageOwnerRoleArns",
        );
        let mut local = amr.clone();
        local.spec.image_owner_role_arn = None;
        assert_eq!(allows(&[own_account], &local, false), Ok(()));
        // No class at all: the install's limits, unless it requires a class.
        assert_eq!(allows(&[], &amr, false), Ok(()));
        let err = allows(&[], &amr, true).unwrap_err();
        assert!(err.contains("rollouts.requireClass"), "{err}");
    }
}
