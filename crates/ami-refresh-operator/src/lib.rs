//! The AMIRefresher controller: rolls the newest active, unexpired AMI out to an EKS cluster's
//! node groups in waves — managed groups through a new launch template version and
//! `UpdateNodegroupVersion`, self-managed Auto Scaling groups through an instance refresh.
//!
//! The reconcile ([`reconcile`]) is a thin driver over a pure [`plan`].

mod breaker;
pub mod controller;
pub mod dry_run;
pub mod fleet;
mod follow;
pub mod health;
pub mod lanes;
pub mod observe;
pub mod plan;
mod promotion;
pub mod reconcile;
mod report;
mod start;
pub mod tenancy;
pub mod transitions;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] opsy_aws::AwsError),
    /// The object has no namespace (AMIRefreshers are namespaced).
    #[error("the AMIRefresher has no namespace")]
    MissingNamespace,
    /// Its RefresherClass does not allow it (the message names the rule and the fix).
    #[error("{0}")]
    NotAllowed(String),
}

impl Error {
    /// A short static label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Aws(e) => e.category(),
            Error::MissingNamespace => "invalid_object",
            Error::NotAllowed(_) => "not_allowed",
        }
    }
}

/// The owner account's role `amr` reads and writes managed AMIs through
/// (`spec.imageOwnerRoleArn`), assumed for its namespace, its cluster and that cluster's
/// `account`; `None`: the operator's own account.
pub fn owner_role(amr: &opsy_api::AMIRefresher, account: Option<&str>) -> Option<opsy_aws::Assume> {
    amr.spec
        .image_owner_role_arn
        .as_ref()
        .map(|role_arn| opsy_aws::Assume {
            role_arn: role_arn.clone(),
            namespace: kube::ResourceExt::namespace(amr).unwrap_or_default(),
            cluster: amr.spec.cluster_name.clone(),
            account: account.map(str::to_owned),
        })
}

/// The soak-evidence tag key of `cluster` in `account`: `healthy-on/<account>/<cluster>`, or
/// the older `healthy-on/<cluster>` when the account is not known.
pub fn evidence_key(cluster: &str, account: Option<&str>) -> String {
    match account {
        Some(account) => opsy_api::tags::healthy_on(account, cluster),
        None => opsy_api::tags::healthy_on_any_account(cluster),
    }
}
