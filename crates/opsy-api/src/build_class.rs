//! `BuildClass`: what the builds of some namespaces may use, owned by the platform team.
//!
//! A cluster-scoped class, the way StorageClass and IngressClass work: a namespaced
//! PackerBuilder names one (`spec.buildClassName`) or gets the class marked default
//! ([`DEFAULT_CLASS_ANNOTATION`]). The class says which namespaces may use it, and what their
//! builds may clone, run, run as and mount. Whoever may create a PackerBuilder in a namespace
//! gets no more than that.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::classes::{Class, ClassKind};
pub use crate::classes::{DEFAULT_CLASS_ANNOTATION, lists};

/// How PackerBuilders name a BuildClass.
pub const BUILD_CLASS: ClassKind = ClassKind {
    kind: "BuildClass",
    field: "spec.buildClassName",
    require_value: "builds.requireClass",
};

/// What the build Jobs of PackerBuilders using this class may use. A list that is left out
/// adds no limit beyond the operator's install (`builds.allowedRepositories`,
/// `builds.allowedImages`); a list that is given allows only what it names (`*`: any).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "ami.refresh.ops",
    version = "v1alpha1",
    kind = "BuildClass",
    plural = "buildclasses",
    singular = "buildclass",
    category = "opsy",
    derive = "PartialEq",
    doc = "BuildClass says which namespaces may build with it, and what their PackerBuilders' build Jobs may clone, run, run as and mount.",
    printcolumn(name = "Namespaces", type_ = "string", json_path = ".spec.namespaces"),
    printcolumn(
        name = "Repositories",
        type_ = "string",
        json_path = ".spec.repositories"
    ),
    printcolumn(
        name = "Service Accounts",
        type_ = "string",
        json_path = ".spec.serviceAccounts"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BuildClassSpec {
    /// The namespaces whose PackerBuilders may use this class, by name; `*`: every namespace.
    #[schemars(
        length(min = 1, max = 256),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
        )
    )]
    #[x_kube(validation = kube::core::Rule::new("!self.exists(n, n == '*') || size(self) == 1").message("namespaces: * means every namespace; list it alone").reason(kube::core::Reason::FieldValueInvalid))]
    pub namespaces: Vec<String>,
    /// Repositories builds may clone (`spec.builder.repoURL`): URLs, or prefixes that end at a
    /// path boundary (`https://github.com/example-org/` does not match
    /// `https://github.com/example-org-evil/…`). Left out: what the install allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub repositories: Option<Vec<String>>,
    /// Images the build Job may run (`spec.builder.image`, `spec.gitSync.image`): repositories
    /// (any tag or digest of them) or prefixes ending in `*`. Left out: what the install
    /// allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    pub images: Option<Vec<String>>,
    /// Service accounts the build Job may run as (`spec.builder.jobServiceAccountName`;
    /// `default` when it is not set), and so the IAM role it gets; `*`: any that allows the
    /// PackerBuilder by its annotation. Left out: any that allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub service_accounts: Option<Vec<String>>,
    /// Secrets the build Job may mount (`spec.gitSync.secret`, `spec.builder.secret`,
    /// `spec.builder.secretVariables[].secret`); `*`: any of the namespace. Left out: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub secrets: Option<Vec<String>>,
    /// Where build pods run unless the PackerBuilder says otherwise.
    #[serde(default, skip_serializing_if = "JobPlacement::is_empty")]
    pub job: JobPlacement,
}

/// Where build pods run unless a PackerBuilder sets its own `spec.builder.job` placement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobPlacement {
    /// Node selector of build pods whose PackerBuilder sets none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of build pods whose PackerBuilder sets none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

impl JobPlacement {
    /// Whether it sets nothing.
    pub fn is_empty(&self) -> bool {
        self.node_selector.is_empty() && self.tolerations.is_empty()
    }
}

impl Class for BuildClass {
    fn namespaces(&self) -> &[String] {
        &self.spec.namespaces
    }
}
