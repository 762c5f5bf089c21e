//! The managed-AMI tag contract and the labels put on Kubernetes objects.
//!
//! The tag keys and values are kept from the project this one replaces, so AMIs it built are
//! found and adopted. An AMI is *managed* when it carries [`BROUGHT_TO_YOU_BY`] =
//! [`BROUGHT_TO_YOU_BY_VALUE`], and *eligible* when [`STATUS`] = [`STATUS_ACTIVE`] and its
//! [`CREATE_TIMESTAMP`] (else its EC2 `CreationDate`) plus `expiresIn` lies in the future.

/// Marks an AMI as managed by this operator.
pub const BROUGHT_TO_YOU_BY: &str = "brought-to-you-by";
/// The only value of [`BROUGHT_TO_YOU_BY`].
pub const BROUGHT_TO_YOU_BY_VALUE: &str = "opsy-the-ami-operator";
/// The EKS cluster the AMI was built for (`spec.clusterName`).
pub const CLUSTER_NAME: &str = "cluster-name";
/// The name of the PackerBuilder that built the AMI.
pub const CREATED_BY: &str = "created-by";
/// The namespace of the PackerBuilder that built the AMI. AMIs without it (built by the
/// project this one replaces, or before this tag existed) are adopted by the PackerBuilder of
/// the same name, cluster, repository and branch, which then writes it.
pub const CREATED_BY_NAMESPACE: &str = "created-by-namespace";
/// The Packer repository the AMI was built from (`spec.builder.repoURL`).
pub const PACKER_REPO: &str = "packer-repo";
/// The branch of the Packer repository (`spec.builder.branch`).
pub const PACKER_REPO_BRANCH: &str = "packer-repo-branch";
/// Lifecycle status: [`STATUS_ACTIVE`], [`STATUS_DEPRECATED`] or [`STATUS_QUARANTINED`].
pub const STATUS: &str = "status";
/// The AMI may be rolled out.
pub const STATUS_ACTIVE: &str = "active";
/// The AMI was replaced by a newer build and must not be rolled out.
pub const STATUS_DEPRECATED: &str = "deprecated";
/// A rollout proved the AMI bad (its nodes failed the health gate): it must never be rolled
/// out again, and its PackerBuilder builds anew.
pub const STATUS_QUARANTINED: &str = "quarantined";
/// Why the AMI was quarantined: the node group and the evidence (at most 256 characters).
pub const QUARANTINE_REASON: &str = "quarantine-reason";
/// Soak evidence: `healthy-on/<account>/<cluster>` holds since when (RFC 3339) a rollout of
/// the AMI to that cluster of that AWS account was complete and healthy (every group on it,
/// those the rollout moved through the health gate). The account keeps two clusters of the
/// same name in two accounts that share AMIs from vouching for each other. The older form
/// `healthy-on/<cluster>` is still read. A quarantine marks the AMI as a whole
/// (`status=quarantined`).
pub const HEALTHY_ON_PREFIX: &str = "healthy-on/";

/// The soak-evidence tag key of `cluster` in `account`.
pub fn healthy_on(account: &str, cluster: &str) -> String {
    format!("{HEALTHY_ON_PREFIX}{account}/{cluster}")
}

/// The older soak-evidence tag key of `cluster`, which does not name the account; read, never
/// written.
pub fn healthy_on_any_account(cluster: &str) -> String {
    format!("{HEALTHY_ON_PREFIX}{cluster}")
}

/// The account (`None`: the older form) and cluster a soak-evidence key names; `None` when
/// `key` is not one.
pub fn parse_healthy_on(key: &str) -> Option<(Option<&str>, &str)> {
    let rest = key.strip_prefix(HEALTHY_ON_PREFIX)?;
    Some(match rest.split_once('/') {
        Some((account, cluster)) => (Some(account), cluster),
        None => (None, rest),
    })
}

/// The account id in an ARN (`arn:aws:eks:us-west-2:111122223333:cluster/prod` →
/// `111122223333`); `None` when it names none.
pub fn account_of_arn(arn: &str) -> Option<&str> {
    arn.split(':')
        .nth(4)
        .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
}

/// When the AMI was built, RFC 3339. Adoption never resets it.
pub const CREATE_TIMESTAMP: &str = "create-timestamp";
/// The base AMI the build started from.
pub const BASE_AMI: &str = "base-ami";
/// The Kubernetes version (`major.minor`) the AMI's nodes run: the cluster's when the filters
/// used `${KUBERNETES_VERSION}`, else the one the base AMI's name carries. AMIRefreshers never
/// roll out an AMI newer than the control plane or more than three minors older.
pub const KUBERNETES_VERSION: &str = "kubernetes-version";
/// The architecture the AMI runs on (EC2 `Architecture`: `x86_64`, `arm64`), as the build
/// reported it. AMIRefreshers move a group only to an AMI of its architecture.
pub const ARCHITECTURE: &str = "architecture";
/// The variant of the AMI (`standard`, `nvidia`, `neuron`): its base's, read from the base's
/// name ([`crate::lanes::variant_of_name`]). AMIRefreshers move a group only to an AMI of its
/// variant; an AMI without the tag has the variant its name names.
pub const VARIANT: &str = "variant";
/// The OS family of the AMI (`al2`, `al2023`, `bottlerocket`, …): its base's, from the base's
/// own tag or name ([`crate::lanes::os_family_of_name`]). AMIRefreshers never move a group to
/// an AMI of another OS family: nodes join the cluster the way their OS does.
pub const OS_FAMILY: &str = "os-family";
/// On a copy in another region (`spec.distribution`): the AMI it was copied from.
pub const SOURCE_AMI: &str = "source-ami";
/// On a copy in another region: the region of the AMI it was copied from.
pub const SOURCE_REGION: &str = "source-region";
/// The build id of the PackerBuilder (`status.buildID`).
pub const BUILD_ID: &str = "build-id";
/// The id of the Job that built the AMI (`status.jobID`).
pub const JOB_ID: &str = "job-id";

/// Written by the build (the Packer project's `tags`), not by the operator: the base the
/// build started from. The operator adopts the AMI of a build whose Job is gone by it
/// (`orphans`); the contract's own `base-ami` is the operator's to write, and the build role
/// may not write any contract key (`deploy/iam/packer-job.json`, `NeverTheContractsTags`).
pub const BUILD_BASE_AMI: &str = "opsy-build-base-ami";

/// Every key the PackerBuilder operator writes on AMIs (besides the AMIRefreshers'
/// `healthy-on/<cluster>`), sorted: its IAM policy allows tagging AMIs with these keys only
/// (`deploy/iam/packer-builder-operator.json`, the `…WithTheContractTagsOnly` statements), and
/// only on the build's AMI (tagged `opsy-packer-build=true` by the build), on AMIs already
/// managed, and on copies as they are made.
pub const CONTRACT_KEYS: [&str; 18] = [
    ARCHITECTURE,
    BASE_AMI,
    BROUGHT_TO_YOU_BY,
    BUILD_ID,
    CLUSTER_NAME,
    CREATE_TIMESTAMP,
    CREATED_BY,
    CREATED_BY_NAMESPACE,
    JOB_ID,
    KUBERNETES_VERSION,
    OS_FAMILY,
    PACKER_REPO,
    PACKER_REPO_BRANCH,
    QUARANTINE_REASON,
    SOURCE_AMI,
    SOURCE_REGION,
    STATUS,
    VARIANT,
];

/// Label keys and values on objects the operators create (Jobs, Events' related objects).
pub mod labels {
    /// Standard `app.kubernetes.io/managed-by` label.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`] on every object the operators create.
    pub const MANAGED_BY_VALUE: &str = "opsy-ami-operator";
    /// Standard `app.kubernetes.io/component` label.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// Value of [`COMPONENT`] on Packer build Jobs.
    pub const COMPONENT_PACKER_BUILD: &str = "packer-build";
    /// The PackerBuilder a Job belongs to.
    pub const PACKER_BUILDER: &str = "ami.refresh.ops/packer-builder";
    /// On the PackerBuilder of one architecture: the PackerBuilder whose `spec.architectures`
    /// it builds for.
    pub const PARENT: &str = "ami.refresh.ops/parent";
    /// The build id of the PackerBuilder a Job belongs to.
    pub const BUILD_ID: &str = "ami.refresh.ops/build-id";
    /// The job id (one per build attempt).
    pub const JOB_ID: &str = "ami.refresh.ops/job-id";
}
