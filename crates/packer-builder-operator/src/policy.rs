//! Who may build what: the repository a build clones and the images its Job runs must be
//! allowed by the operator's install (`--allowed-build-repositories`,
//! `--allowed-build-images`) and by the PackerBuilder's [`BuildClass`] (which also says which
//! namespaces may use it, which service accounts a build may run as and which Secrets it may
//! mount), and the service account it runs as must allow this PackerBuilder (annotation
//! [`ALLOW_BUILDS`]). Whoever may create a PackerBuilder must not be able to run any image, or
//! borrow any service account or Secret of the namespace (and its IAM role).

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{Api, ResourceExt};
use opsy_api::{
    BuildClass, PackerBuilder,
    build_class::BUILD_CLASS,
    classes::{Class, choose, lists, refusal},
};
use opsy_runtime::context::{BuildPolicy, image_matches, repository_matches};

/// Annotation on a ServiceAccount that lets build Jobs run as it: `*` (every PackerBuilder of
/// the namespace) or a comma-separated list of PackerBuilder names.
pub const ALLOW_BUILDS: &str = "ami.refresh.ops/packer-builders";

/// The images of `pb`'s Job are allowed by `policy`; else which is not, and how to allow it.
pub fn images(pb: &PackerBuilder, policy: &BuildPolicy) -> Result<(), String> {
    for (field, image) in [
        ("spec.builder.image", &pb.spec.builder.image),
        ("spec.gitSync.image", &pb.spec.git_sync.image),
    ] {
        if !policy.allows_image(image) {
            return Err(format!(
                "{field} {image:?} is not an image build Jobs may run here (allowed: {}); ask whoever installed the operator to add its repository to the chart's builds.allowedImages",
                policy.allowed_images.join(", ")
            ));
        }
    }
    Ok(())
}

/// `pb`'s repository is one builds may clone here; else why not, and how to allow it.
pub fn repository(pb: &PackerBuilder, policy: &BuildPolicy) -> Result<(), String> {
    let url = &pb.spec.builder.repo_url;
    if policy.allows_repository(url) {
        Ok(())
    } else {
        Err(format!(
            "spec.builder.repoURL {url:?} is not a repository builds may clone here (allowed: {}); ask whoever installed the operator to add it to the chart's builds.allowedRepositories",
            policy.allowed_repositories.join(", ")
        ))
    }
}

/// Whether the ServiceAccount `account` (or `None`: it does not exist) lets PackerBuilder
/// `builder` run its Jobs as it.
pub fn service_account_allows(
    account: Option<&ServiceAccount>,
    name: &str,
    builder: &str,
    namespace: &str,
) -> Result<(), String> {
    let Some(account) = account else {
        return Err(format!(
            "ServiceAccount {name:?} (spec.builder.jobServiceAccountName) does not exist in namespace {namespace}"
        ));
    };
    let allowed = account
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOW_BUILDS))
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|b| b == "*" || b == builder)
        });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "ServiceAccount {name:?} (spec.builder.jobServiceAccountName) does not allow builds of PackerBuilder {builder}: annotate it {ALLOW_BUILDS}={builder} (or *) if its permissions are meant for Packer"
        ))
    }
}

/// The class `pb` builds under, from every BuildClass of the cluster: the one it names, else
/// the one marked default; `None`: neither, and the install's lists alone apply. Else why it
/// may not build, and how to fix that.
pub fn class<'a>(
    classes: &'a [BuildClass],
    pb: &PackerBuilder,
    require: bool,
) -> Result<Option<&'a BuildClass>, String> {
    choose(
        BUILD_CLASS,
        classes,
        pb.spec.build_class_name.as_deref(),
        require,
    )
}

/// The Secrets `pb`'s build Job mounts, with the field that names each.
fn mounted_secrets(pb: &PackerBuilder) -> Vec<(String, &str)> {
    let builder = &pb.spec.builder;
    let mut secrets = Vec::new();
    if let Some(name) = &pb.spec.git_sync.secret {
        secrets.push(("spec.gitSync.secret".to_owned(), name.as_str()));
    }
    if let Some(name) = &builder.secret {
        secrets.push(("spec.builder.secret".to_owned(), name.as_str()));
    }
    for (i, variable) in builder.secret_variables.iter().enumerate() {
        secrets.push((
            format!("spec.builder.secretVariables[{i}].secret"),
            variable.secret.as_str(),
        ));
    }
    secrets
}

/// Whether `class` lets PackerBuilder `pb` of `namespace` build as it asks; else the rule it
/// breaks, named by the class's field, and the fix.
pub fn class_allows(class: &BuildClass, pb: &PackerBuilder, namespace: &str) -> Result<(), String> {
    let name = class.name_any();
    let refused = |what: String, field: &str| refusal(BUILD_CLASS.kind, &name, &what, field);
    if !class.admits(namespace) {
        return Err(refused(format!("namespace {namespace}"), "namespaces"));
    }
    let spec = &class.spec;
    if let Some(allowed) = &spec.repositories {
        let url = &pb.spec.builder.repo_url;
        if !allowed.iter().any(|a| repository_matches(a, url)) {
            return Err(refused(
                format!("spec.builder.repoURL {url:?}"),
                "repositories",
            ));
        }
    }
    if let Some(allowed) = &spec.images {
        for (field, image) in [
            ("spec.builder.image", &pb.spec.builder.image),
            ("spec.gitSync.image", &pb.spec.git_sync.image),
        ] {
            if !allowed.iter().any(|a| image_matches(a, image)) {
                return Err(refused(format!("{field} {image:?}"), "images"));
            }
        }
    }
    let account = pb
        .spec
        .builder
        .job_service_account_name
        .as_deref()
        .unwrap_or("default");
    if !lists(spec.service_accounts.as_deref(), account) {
        return Err(refused(
            format!("ServiceAccount {account:?} (spec.builder.jobServiceAccountName)"),
            "serviceAccounts",
        ));
    }
    for (field, secret) in mounted_secrets(pb) {
        if !lists(spec.secrets.as_deref(), secret) {
            return Err(refused(format!("Secret {secret:?} ({field})"), "secrets"));
        }
    }
    Ok(())
}

/// `pb` with the placement its class gives build pods where it sets none.
pub fn placed(pb: &PackerBuilder, class: Option<&BuildClass>) -> PackerBuilder {
    let mut pb = pb.clone();
    if let Some(class) = class {
        let job = &mut pb.spec.builder.job;
        if job.node_selector.is_empty() {
            job.node_selector = class.spec.job.node_selector.clone();
        }
        if job.tolerations.is_empty() {
            job.tolerations = class.spec.job.tolerations.clone();
        }
    }
    pb
}

/// Checks `pb`'s class, repository, images, service account and Secrets; on success the class
/// it builds under (outer error: an API call failed).
pub async fn check(
    client: &kube::Client,
    pb: &PackerBuilder,
    policy: &BuildPolicy,
    require_class: bool,
    namespace: &str,
) -> Result<Result<Option<BuildClass>, String>, kube::Error> {
    if let Err(refused) = repository(pb, policy).and_then(|()| images(pb, policy)) {
        return Ok(Err(refused));
    }
    let classes = opsy_runtime::classes::list(client).await?;
    let class = match class(&classes, pb, require_class) {
        Ok(class) => class,
        Err(refused) => return Ok(Err(refused)),
    };
    if let Some(class) = class
        && let Err(refused) = class_allows(class, pb, namespace)
    {
        return Ok(Err(refused));
    }
    if let Some(name) = pb.spec.builder.job_service_account_name.as_deref() {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let account = accounts.get_opt(name).await?;
        let builder = pb.metadata.name.as_deref().unwrap_or_default();
        if let Err(refused) = service_account_allows(account.as_ref(), name, builder, namespace) {
            return Ok(Err(refused));
        }
    }
    // Without one: the namespace's default service account, what any pod there gets anyway.
    Ok(Ok(class.cloned()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use super::*;

    fn account(annotation: Option<&str>) -> ServiceAccount {
        ServiceAccount {
            metadata: ObjectMeta {
                name: Some("packer".into()),
                annotations: annotation
                    .map(|v| BTreeMap::from([(ALLOW_BUILDS.to_owned(), v.to_owned())])),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        }
    }

    #[test]
    fn a_service_account_lends_itself_only_to_the_builders_it_names() {
        let ok =
            |a: Option<&str>| service_account_allows(Some(&account(a)), "packer", "al2023", "ns");
        assert_eq!(ok(Some("*")), Ok(()));
        assert_eq!(ok(Some("gpu, al2023")), Ok(()));
        let err = ok(Some("gpu")).unwrap_err();
        assert!(
            err.contains("annotate it ami.refresh.ops/packer-builders=al2023"),
            "{err}"
        );
        assert!(ok(None).is_err());
        let err = service_account_allows(None, "packer", "al2023", "ns").unwrap_err();
        assert!(err.contains("does not exist in namespace ns"), "{err}");
    }

    #[test]
    fn images_outside_the_policy_are_named() {
        let mut pb: PackerBuilder = serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "PackerBuilder",
            "metadata": {"name": "al2023"},
            "spec": {"region": "us-west-2", "clusterName": "c",
                     "builder": {"repoURL": "https://git.example/x"}},
        }))
        .unwrap();
        assert_eq!(images(&pb, &BuildPolicy::default()), Ok(()));
        pb.spec.builder.image = "evil.example/packer:1".into();
        let err = images(&pb, &BuildPolicy::default()).unwrap_err();
        assert!(
            err.contains("spec.builder.image \"evil.example/packer:1\""),
            "{err}"
        );
    }

    fn build_class(name: &str, default: bool, spec: serde_json::Value) -> BuildClass {
        let mut class: BuildClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "BuildClass",
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

    fn builder(extra: serde_json::Value) -> PackerBuilder {
        let mut spec = serde_json::json!({
            "region": "us-west-2", "clusterName": "c",
            "builder": {"repoURL": "https://github.com/example-org/images",
                        "jobServiceAccountName": "packer",
                        "secretVariables": [{"name": "t", "secret": "vault", "key": "token"}]},
            "gitSync": {"secret": "git"},
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "PackerBuilder",
            "metadata": {"name": "al2023"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn the_class_is_the_named_one_else_the_single_default_else_the_install() {
        let any = serde_json::json!({"namespaces": ["*"]});
        let classes = [
            build_class("team-a", false, any.clone()),
            build_class("standard", true, any.clone()),
        ];
        let install = false;
        let named = builder(serde_json::json!({"buildClassName": "team-a"}));
        let pick = |classes: &[BuildClass], pb: &PackerBuilder, require: &bool| {
            class(classes, pb, *require).map(|c| c.map(ResourceExt::name_any))
        };
        assert_eq!(pick(&classes, &named, &install), Ok(Some("team-a".into())));
        let unnamed = builder(serde_json::json!({}));
        assert_eq!(
            pick(&classes, &unnamed, &install),
            Ok(Some("standard".into()))
        );
        // No default: the install's lists, unless the install requires a class.
        assert_eq!(pick(&classes[..1], &unnamed, &install), Ok(None));
        assert_eq!(pick(&[], &unnamed, &install), Ok(None));
        let strict = true;
        let err = pick(&classes[..1], &unnamed, &strict).unwrap_err();
        assert!(err.contains("builds.requireClass"), "{err}");
        // A named class that does not exist, and two defaults, are refused by name.
        let missing = builder(serde_json::json!({"buildClassName": "gone"}));
        let err = pick(&classes, &missing, &install).unwrap_err();
        assert!(
            err.contains("BuildClass \"gone\" (spec.buildClassName) does not exist"),
            "{err}"
        );
        let two = [
            build_class("a", true, any.clone()),
            build_class("b", true, any),
        ];
        let err = pick(&two, &unnamed, &install).unwrap_err();
        assert!(
            err.contains("2 BuildClasses are marked") && err.contains("(a, b)"),
            "{err}"
        );
    }

    #[test]
    fn a_class_names_the_rule_a_build_breaks() {
        let pb = builder(serde_json::json!({}));
        let allows = |spec: serde_json::Value| {
            class_allows(&build_class("team-a", false, spec), &pb, "team-a-ns")
        };
        assert_eq!(allows(serde_json::json!({"namespaces": ["*"]})), Ok(()));
        assert_eq!(
            allows(serde_json::json!({
                "namespaces": ["team-a-ns"],
                "repositories": ["https://github.com/example-org/"],
                "images": ["hashicorp/packer", "registry.k8s.io/git-sync/*"],
                "serviceAccounts": ["packer"],
                "secrets": ["git", "vault"],
            })),
            Ok(())
        );
        let refused = |spec: serde_json::Value, wanted: &str| {
            let err = allows(spec).unwrap_err();
            assert!(err.contains(wanted), "{wanted:?} not in {err:?}");
            assert!(err.contains("BuildClass team-a"), "{err}");
        };
        refused(
            serde_json::json!({"namespaces": ["team-b-ns"]}),
            "namespace team-a-ns is not allowed by BuildClass team-a (its spec.namespaces)",
        );
        refused(
            serde_json::json!({"namespaces": ["*"], "repositories": ["https://github.com/example-org-evil/"]}),
            "spec.builder.repoURL \"https://github.com/example-org/images\" is not allowed by BuildClass team-a (its spec.repositories)",
        );
        refused(
            serde_json::json!({"namespaces": ["*"], "repositories": []}),
            "(its spec.repositories)",
        );
        refused(
            serde_json::json!({"namespaces": ["*"], "images": ["hashicorp/packer"]}),
            "spec.gitSync.image \"registry.k8s.io/git-sync/git-sync:v4.4.2\" is not allowed",
        );
        refused(
            serde_json::json!({"namespaces": ["*"], "serviceAccounts": ["default"]}),
            "ServiceAccount \"packer\" (spec.builder.jobServiceAccountName) is not allowed by BuildClass team-a (its spec.serviceAccounts)",
        );
        refused(
            serde_json::json!({"namespaces": ["*"], "secrets": ["git"]}),
            "Secret \"vault\" (spec.builder.secretVariables[0].secret) is not allowed by BuildClass team-a (its spec.secrets)",
        );
        refused(
            serde_json::json!({"namespaces": ["*"], "secrets": []}),
            "Secret \"git\" (spec.gitSync.secret)",
        );
        // No jobServiceAccountName: the namespace's default account, which the class must list.
        let mut on_default = pb.clone();
        on_default.spec.builder.job_service_account_name = None;
        let class = build_class(
            "team-a",
            false,
            serde_json::json!({"namespaces": ["*"], "serviceAccounts": ["packer"]}),
        );
        let err = class_allows(&class, &on_default, "ns").unwrap_err();
        assert!(err.contains("ServiceAccount \"default\""), "{err}");
    }

    #[test]
    fn a_class_places_build_pods_that_set_no_placement() {
        let class = build_class(
            "team-a",
            false,
            serde_json::json!({"namespaces": ["*"], "job": {
                "nodeSelector": {"pool": "builds"},
                "tolerations": [{"key": "builds", "operator": "Exists", "effect": "NoSchedule"}],
            }}),
        );
        let pb = builder(serde_json::json!({}));
        let placed_pb = placed(&pb, Some(&class));
        assert_eq!(
            placed_pb
                .spec
                .builder
                .job
                .node_selector
                .get("pool")
                .map(String::as_str),
            Some("builds")
        );
        assert_eq!(placed_pb.spec.builder.job.tolerations.len(), 1);
        assert_eq!(placed(&pb, None), pb);
        // The PackerBuilder's own placement wins.
        let mut own = pb.clone();
        own.spec.builder.job.node_selector =
            BTreeMap::from([("pool".to_owned(), "mine".to_owned())]);
        assert_eq!(
            placed(&own, Some(&class))
                .spec
                .builder
                .job
                .node_selector
                .get("pool")
                .map(String::as_str),
            Some("mine")
        );
    }
}
