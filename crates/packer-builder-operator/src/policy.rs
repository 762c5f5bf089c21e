//! Who may build what: the repository a build clones and the images its Job runs must be
//! allowed by the operator's install (`--allowed-build-repositories`,
//! `--allowed-build-images`), and the service account it runs as must allow this
//! PackerBuilder (annotation [`ALLOW_BUILDS`]). Whoever may create a PackerBuilder must not be
//! able to run any image, or borrow any service account of the namespace (and its IAM role).

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use opsy_api::PackerBuilder;
use opsy_runtime::context::BuildPolicy;

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

/// Checks `pb`'s images and service account (outer error: the API call failed).
pub async fn check(
    accounts: &Api<ServiceAccount>,
    pb: &PackerBuilder,
    policy: &BuildPolicy,
    namespace: &str,
) -> Result<Result<(), String>, kube::Error> {
    if let Err(refused) = repository(pb, policy).and_then(|()| images(pb, policy)) {
        return Ok(Err(refused));
    }
    let Some(name) = pb.spec.builder.job_service_account_name.as_deref() else {
        // The namespace's default service account: what any pod there gets anyway.
        return Ok(Ok(()));
    };
    let account = accounts.get_opt(name).await?;
    let builder = pb.metadata.name.as_deref().unwrap_or_default();
    Ok(service_account_allows(
        account.as_ref(),
        name,
        builder,
        namespace,
    ))
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
}
