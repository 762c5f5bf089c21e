//! `RefresherClass`: which clusters the AMIRefreshers of some namespaces may roll out to, and
//! through which owner-access roles they may read and mark managed AMIs; owned by the platform
//! team.
//!
//! The refresher's IAM role can update every node group of its account: without a class,
//! whoever may create an AMIRefresher in any watched namespace may point it at any cluster and
//! any owner account's role. A cluster-scoped class (named by `spec.refresherClassName`, or the
//! one marked default) narrows that per namespace.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::classes::{Class, ClassKind};

/// How AMIRefreshers name a RefresherClass.
pub const REFRESHER_CLASS: ClassKind = ClassKind {
    kind: "RefresherClass",
    field: "spec.refresherClassName",
    require_value: "rollouts.requireClass",
};

/// What the AMIRefreshers using this class may act on. A list that is left out adds no limit;
/// a list that is given allows only what it names (`*`: any).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "ami.refresh.ops",
    version = "v1alpha1",
    kind = "RefresherClass",
    plural = "refresherclasses",
    singular = "refresherclass",
    category = "opsy",
    derive = "PartialEq",
    doc = "RefresherClass says which namespaces may use it, which clusters their AMIRefreshers may roll out to and which owner-access roles they may assume.",
    printcolumn(name = "Namespaces", type_ = "string", json_path = ".spec.namespaces"),
    printcolumn(name = "Clusters", type_ = "string", json_path = ".spec.clusters"),
    printcolumn(
        name = "Owner Roles",
        type_ = "string",
        json_path = ".spec.imageOwnerRoleArns"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RefresherClassSpec {
    /// The namespaces whose AMIRefreshers may use this class, by name; `*`: every namespace.
    #[schemars(
        length(min = 1, max = 256),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
        )
    )]
    #[x_kube(validation = kube::core::Rule::new("!self.exists(n, n == '*') || size(self) == 1").message("namespaces: * means every namespace; list it alone").reason(kube::core::Reason::FieldValueInvalid))]
    pub namespaces: Vec<String>,
    /// EKS clusters (`spec.clusterName`) the AMIRefreshers may roll out to. Left out: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 100)))]
    pub clusters: Option<Vec<String>>,
    /// Owner-access roles (`spec.imageOwnerRoleArn`) the AMIRefreshers may assume, by ARN.
    /// `[]`: none (only the operator's own account). Left out: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 2048)))]
    pub image_owner_role_arns: Option<Vec<String>>,
}

impl Class for RefresherClass {
    fn namespaces(&self) -> &[String] {
        &self.spec.namespaces
    }
}
