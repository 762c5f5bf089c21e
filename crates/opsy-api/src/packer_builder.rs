//! `PackerBuilder`: build a hardened AMI with Packer whenever no valid derived AMI exists.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{
        AMI_ID_PATTERN, AmiFilter, CLUSTER_NAME_PATTERN, ImageRef, MaintenanceWindow, Notifier,
        PARAMETER_NAME_PATTERN, ParameterRef, REGION_PATTERN, WindowStatus, conditions_schema,
        map_list,
    },
    conditions::Condition,
    duration::Duration,
};

/// Default git-sync image (pinned; never `:latest`).
pub const DEFAULT_GIT_SYNC_IMAGE: &str = "registry.k8s.io/git-sync/git-sync:v4.4.2";
/// Default Packer image (pinned; never `:latest`).
pub const DEFAULT_PACKER_IMAGE: &str = "hashicorp/packer:1.11.2";
/// Default number of consecutive failed builds after which building stops until the spec changes.
pub const DEFAULT_MAX_FAILED_BUILDS: i32 = 3;
/// The annotation that gives a PackerBuilder stopped at `spec.maxFailedBuilds` a fresh set of
/// attempts: any new value (e.g. the time) is honoured once.
pub const RETRY_ANNOTATION: &str = "ami.refresh.ops/retry";

/// Desired state of a PackerBuilder: the base AMI to watch (found with EC2 filters) and the
/// Packer project to run as a Kubernetes Job whenever no valid AMI derived from it exists — none
/// yet, the newest one expired, or the base AMI moved on. The AMI a build produces is tagged
/// `status=active`, older ones are deprecated, and people are notified.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "ami.refresh.ops",
    version = "v1alpha1",
    kind = "PackerBuilder",
    plural = "packerbuilders",
    singular = "packerbuilder",
    shortname = "pb",
    category = "opsy",
    namespaced,
    status = "PackerBuilderStatus",
    derive = "PartialEq",
    doc = "PackerBuilder builds an EKS node AMI with Packer whenever no valid AMI derived from the current base AMI exists.",
    validation = kube::core::Rule::new("size(self.metadata.name) <= 50").message("metadata.name must be at most 50 characters: the build Job's name (<name>-<jobID>) and its pods' names derive from it").reason(kube::core::Reason::FieldValueInvalid),
    validation = kube::core::Rule::new("!has(self.spec.architectures) || size(self.spec.architectures) < 2 || size(self.metadata.name) <= 43").message("with two spec.architectures, metadata.name must be at most 43 characters: each architecture's PackerBuilder is named <name>-x86-64 or <name>-arm64").reason(kube::core::Reason::FieldValueInvalid),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(
        name = "Base AMI",
        type_ = "string",
        json_path = ".status.baseImage.id"
    ),
    printcolumn(
        name = "Active AMI",
        type_ = "string",
        json_path = ".status.activeImage.id"
    ),
    printcolumn(
        name = "AMI Age",
        type_ = "date",
        json_path = ".status.activeImage.created"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Job", type_ = "string", json_path = ".status.jobStatus"),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failedJobCount"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::common::owner_rule())]
#[x_kube(validation = kube::core::Rule::new("!has(self.distribution) || !has(self.distribution.regions) || !self.distribution.regions.exists(r, r.region == self.region)").message("distribution.regions must not name spec.region: the AMI is built there"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.architectures) && size(self.architectures) > 0) || ((!has(self.amiParameter) || !self.amiParameter.contains('${ARCHITECTURE}')) && (!has(self.amiFilters) || !self.amiFilters.exists(f, f.values.exists(v, v.contains('${ARCHITECTURE}')))))").message("${ARCHITECTURE} in amiFilters or amiParameter needs spec.architectures (e.g. [x86_64, arm64]): it is filled with the architecture each build is for").reason(kube::core::Reason::FieldValueInvalid))]
#[x_kube(validation = ttl_after_finished_rule())]
pub struct PackerBuilderSpec {
    /// AWS region where the base AMI is looked up and the AMI is built, e.g. `us-west-2`.
    #[schemars(length(min = 1, max = 32), regex(pattern = REGION_PATTERN))]
    pub region: String,

    /// Name of the EKS cluster the AMI is built for; written to the AMI's `cluster-name` tag.
    #[schemars(length(min = 1, max = 100), regex(pattern = CLUSTER_NAME_PATTERN))]
    pub cluster_name: String,

    /// EC2 DescribeImages filters that find the base AMI; the newest available match wins and is
    /// passed to Packer as `-var ami_id=<id>` (with `-var region=<region>`). Without filters the
    /// Packer project is self-contained and only expiry triggers a rebuild.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub ami_filters: Option<Vec<AmiFilter>>,

    /// An SSM parameter whose value is the base AMI's id, the way AWS publishes EKS-optimised
    /// AMIs, e.g.
    /// `/aws/service/eks/optimized-ami/${KUBERNETES_VERSION}/amazon-linux-2023/x86_64/standard/recommended/image_id`.
    /// With `amiFilters` too, the image must also match them. Its name and version are in
    /// `status.baseParameter`. `${ARCHITECTURE}` is filled with the one of
    /// `spec.architectures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = PARAMETER_NAME_PATTERN))]
    pub ami_parameter: Option<String>,

    /// Accept `amiFilters` that name no owner (`owner-id` or `owner-alias`). Without an owner
    /// any account can publish a public AMI whose name matches and become the base.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_any_ami_owner: bool,

    /// How long a built AMI stays valid, and how often the base AMI is re-checked.
    #[serde(default)]
    pub time_outs: TimeOuts,

    /// How the Packer repository is fetched (a git-sync init container).
    #[serde(default)]
    pub git_sync: GitSync,

    /// The cluster-scoped BuildClass that says what this PackerBuilder's builds may clone, run,
    /// run as and mount. Not set: the BuildClass marked `ami.refresh.ops/is-default-class`, or,
    /// when there is none, what the operator's install allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub build_class_name: Option<String>,

    /// The Packer project and how to run it.
    pub builder: Builder,

    /// Where to send notifications about builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifier: Option<Notifier>,

    /// Stop starting new builds (a running build finishes). Status keeps being updated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Failed builds after which no new build starts until the base AMI moves, the spec
    /// changes or the annotation `ami.refresh.ops/retry` gets a new value. Counted: consecutive
    /// failed builds, plus the AMIs built from the current base that an AMIRefresher
    /// quarantined since (so a bad base or Packer project costs at most this many canary
    /// rotations).
    #[serde(default = "default_max_failed_builds")]
    #[schemars(range(min = 1, max = 100))]
    pub max_failed_builds: i32,

    /// When builds may start. Outside every window a needed build waits for the next one
    /// (status says when); a build running when a window closes finishes. Empty: any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub maintenance_windows: Vec<MaintenanceWindow>,

    /// What becomes of the AMIs this PackerBuilder built once they are no longer active. Each
    /// AMI's fate is in status (`retention`) and `plan` before anything is deleted; deletion is
    /// opt-in (`retention.delete`).
    #[serde(default)]
    pub retention: Retention,

    /// Where the active AMI is copied (other regions of this account) and whom it is shared
    /// with (other accounts). Copies carry the tag contract, follow their source (deprecation
    /// and quarantine apply to every copy; a quarantine of any copy quarantines them all) and
    /// fall under the same retention in their region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    /// The architectures to build for, one AMI each (tagged `architecture`). One: this
    /// PackerBuilder builds for it — the base must be of it (an `architecture` filter is added),
    /// `${ARCHITECTURE}` in `amiFilters` and `amiParameter` is filled with it, and Packer gets
    /// `-var architecture=<arch>`. Two: one PackerBuilder per architecture, named
    /// `<name>-x86-64` and `<name>-arm64`, owned by this one and kept to its spec (with that one
    /// architecture); this one builds nothing and sums them up in `status.architectures`.
    /// Empty: one build, of whatever architecture the base is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "architectures_schema")]
    pub architectures: Vec<crate::lanes::Architecture>,
}

/// The PackerBuilder that builds for one architecture (`spec.architectures`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchitectureStatus {
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// The PackerBuilder building for it, in this namespace.
    pub packer_builder: String,
    /// Its active AMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_image: Option<ImageRef>,
    /// Its `Ready` condition's status (`True`, `False`, `Unknown`).
    pub ready: String,
    /// Its `Ready` condition's reason and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Copies of the active AMI in other regions, and the accounts it is shared with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.shareWith) || size(self.shareWith) == 0 || !has(self.regions) || self.regions.all(r, !has(r.encrypted) || !r.encrypted || has(r.kmsKeyId))").message("an encrypted copy shared with other accounts (shareWith) needs kmsKeyId: EC2 cannot share snapshots encrypted with the AWS-managed EBS key"))]
pub struct Distribution {
    /// Regions the active AMI is copied to (`CopyImage`), one entry per region. An
    /// AMIRefresher in such a region finds its region's copy: the copy's `base-ami` tag names
    /// the base AMI of the same name and owner in that region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), schema_with = "distribution_regions_schema")]
    pub regions: Vec<DistributionRegion>,
    /// AWS account ids the active AMI and each copy are shared with: launch permission on
    /// the image, create-volume permission on its snapshots. EC2 does not share tags: an
    /// AMIRefresher in such an account reads the tags through `spec.imageOwnerRoleArn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "share_with_schema")]
    pub share_with: Vec<String>,
}

/// One region the active AMI is copied to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.kmsKeyId) || (has(self.encrypted) && self.encrypted)").message("kmsKeyId needs encrypted: true"))]
pub struct DistributionRegion {
    /// The destination region, e.g. `eu-west-1`.
    #[schemars(length(min = 1, max = 32), regex(pattern = REGION_PATTERN))]
    pub region: String,
    /// Encrypt the copy's snapshots (with `kmsKeyId`, else the account's default EBS key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// KMS key for an encrypted copy: key id, alias or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
}

/// Account ids, each once (`x-kubernetes-list-type: set`: the API server refuses duplicates).
fn share_with_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 50,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "pattern": "^[0-9]{12}$", "maxLength": 12},
    })
}

/// Each architecture once (`x-kubernetes-list-type: set`).
fn architectures_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 2,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "enum": ["x86_64", "arm64"]},
    })
}

fn distribution_regions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = map_list::<DistributionRegion>(generator, "region");
    schema.insert("maxItems".into(), 20.into());
    schema
}

/// Retention of a PackerBuilder's AMIs: keep the active one, the newest deprecated ones and
/// the young ones; deregister the rest (and delete their snapshots) unless something still
/// uses them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Deregister the AMIs past retention and delete their snapshots. Off by default: status
    /// and `plan` show what would go.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
    /// Deprecated AMIs kept as rollback candidates, newest first (quarantined ones do not
    /// count). Default 3.
    #[serde(default = "default_keep_deprecated")]
    #[schemars(range(min = 0, max = 100))]
    pub keep_deprecated: i32,
    /// AMIs younger than this (since creation) are kept. Default `7d`.
    #[serde(default = "default_retention_min_age")]
    pub min_age: Duration,
    /// Also deregister AMIs shared with other accounts, whose use cannot be seen from here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_shared: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            delete: false,
            keep_deprecated: default_keep_deprecated(),
            min_age: default_retention_min_age(),
            allow_shared: false,
        }
    }
}

fn default_keep_deprecated() -> i32 {
    3
}

fn default_retention_min_age() -> Duration {
    Duration::literal("7d", 7 * 86_400)
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn default_max_failed_builds() -> i32 {
    DEFAULT_MAX_FAILED_BUILDS
}

/// Expiry and re-check interval.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeOuts {
    /// How long after its creation a built AMI stays eligible, e.g. `48h`, `30d`, `2w`. `m` is
    /// minutes; months are `M` or `months`.
    #[serde(default = "default_expires_in")]
    pub expires_in: Duration,
    /// How often the base AMI and the managed AMIs are re-checked, e.g. `5m`, `1h`; at least
    /// `30s`.
    #[serde(default = "default_controller_timer")]
    #[x_kube(validation = controller_timer_rule())]
    pub controller_timer: Duration,
}

impl Default for TimeOuts {
    fn default() -> Self {
        Self {
            expires_in: default_expires_in(),
            controller_timer: default_controller_timer(),
        }
    }
}

pub(crate) fn default_expires_in() -> Duration {
    Duration::literal("30d", 30 * 86_400)
}

pub(crate) fn default_controller_timer() -> Duration {
    Duration::literal("5m", 5 * 60)
}

/// The git-sync init container that clones the Packer repository.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSync {
    /// git-sync image. Pin a version; `:latest` is accepted but makes builds unrepeatable.
    #[serde(default = "default_git_sync_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Name of the init container.
    #[serde(default = "default_git_sync_name")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Name of a Secret with git credentials, for private repositories: keys `username` and
    /// `token` (or `password`) for an `https://` repoURL; `ssh` (the private key) and
    /// `known_hosts` (the host is always verified) for an SSH repoURL. Checked before a build
    /// starts (a missing Secret or key is a `SecretMissing` condition and Event). Values reach
    /// git-sync as environment variables or files, never as arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret: Option<String>,
}

impl Default for GitSync {
    fn default() -> Self {
        Self {
            image: default_git_sync_image(),
            name: default_git_sync_name(),
            secret: None,
        }
    }
}

fn default_git_sync_image() -> String {
    DEFAULT_GIT_SYNC_IMAGE.to_owned()
}

fn default_git_sync_name() -> String {
    "git-sync".to_owned()
}

/// The Packer project and how to run it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Builder {
    /// Git URL of the repository holding the Packer project: `https://…`, `ssh://…` or
    /// `git@…`, never with credentials in it (they go in the Secret `secret` names).
    #[serde(rename = "repoURL")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^(https://|ssh://|git@)\S+$")
    )]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^https://[^/]*@')").message("repoURL must not carry credentials (user:token@host): they would show in Job arguments, AMI tags and Events; put them in the Secret named by builder.secret"))]
    #[x_kube(validation = kube::core::Rule::new("size(self) <= 256").message("repoURL must be at most 256 characters: it is the AMIs' packer-repo tag, and EC2 tag values are at most 256"))]
    pub repo_url: String,
    /// Branch (or tag) to build from.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s~^:?*\[\\]+$"))]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('-')").message("must not start with '-': git would read it as an option"))]
    pub branch: String,
    /// Directory of the Packer project inside the repository (relative, no `..`).
    #[serde(default = "default_dir")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = relative_path_rule())]
    pub dir: String,
    /// Packer image. Pin a version; `:latest` is accepted but makes builds unrepeatable.
    #[serde(default = "default_packer_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Name of a Secret whose keys become environment variables of the Packer container (e.g.
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`). Not needed when `jobServiceAccountName`
    /// grants AWS access through IRSA or EKS Pod Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret: Option<String>,
    /// Service account of the build Job's pod, usually bound to an IAM role for Packer. It must
    /// allow builds with the annotation `ami.refresh.ops/packer-builders` (`*`, or this
    /// PackerBuilder's name in a comma-separated list): whoever may create a PackerBuilder may
    /// not borrow any service account of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub job_service_account_name: Option<String>,
    /// Packer variables whose values are secret (tokens, passwords): each is read from a
    /// Secret's key and reaches Packer as the environment variable `PKR_VAR_<name>`, never in
    /// its arguments, the Job's spec or status. Checked before a build starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub secret_variables: Vec<SecretVariable>,
    /// Packer commands. Always run in the order `init`, `validate`, `build`; each at most once.
    /// Empty: all three with defaults. Only `build`: `init` and `validate` are added in the
    /// build's working directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3), schema_with = "commands_schema")]
    pub commands: Vec<Command>,
    /// Settings of the build Job.
    #[serde(default)]
    pub job: JobSettings,
}

/// A Packer variable whose value comes from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVariable {
    /// The Packer variable, e.g. `vault_token`.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = "^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// The Secret in the PackerBuilder's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret: String,
    /// The key of the Secret holding the value.
    #[schemars(length(min = 1, max = 253), regex(pattern = "^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn commands_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = map_list::<Command>(generator, "subCommand");
    schema.insert("maxItems".into(), 3.into());
    schema
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_dir() -> String {
    ".".to_owned()
}

fn default_packer_image() -> String {
    DEFAULT_PACKER_IMAGE.to_owned()
}

/// The shortest re-check interval the operators use, whatever `controllerTimer` says.
pub const MIN_CONTROLLER_TIMER: std::time::Duration = std::time::Duration::from_secs(30);

impl PackerBuilderSpec {
    /// How soon a reconcile with nothing under way looks again: `timeOuts.controllerTimer`,
    /// never under [`MIN_CONTROLLER_TIMER`].
    pub fn requeue_after(&self) -> std::time::Duration {
        self.time_outs
            .controller_timer
            .as_std()
            .max(MIN_CONTROLLER_TIMER)
    }
}

/// `controllerTimer` is at least 30 seconds: a shorter timer re-reads AWS in a hot loop. The
/// rule refuses sub-second terms and a single seconds term under 30 (what people write); the
/// operator also never waits less than 30 seconds.
pub(crate) fn controller_timer_rule() -> kube::core::Rule {
    kube::core::Rule::new(
        r#"!self.matches('^\\s*([0-9]{1,10}\\s*(nanoseconds|nanosecond|nsec|ns|microseconds|microsecond|usec|us|milliseconds|millisecond|msec|ms)\\s*)+$') && (!self.matches('^\\s*[0-9]{1,10}\\s*(seconds|second|secs|sec|s)\\s*$') || int(self.find('[0-9]+')) >= 30)"#,
    )
    .message("controllerTimer must be at least 30s: a shorter timer re-reads AWS in a hot loop")
}

/// A finished build Job must outlive two re-checks (`timeOuts.controllerTimer`): the operator
/// reads the AMI a build made from its Job, and a Job deleted before it was read leaves that AMI
/// unknown to the operator.
fn ttl_after_finished_rule() -> kube::core::Rule {
    let ttl = crate::duration::seconds_of("self.builder.job.ttlAfterFinished");
    let timer = crate::duration::seconds_of("self.timeOuts.controllerTimer");
    kube::core::Rule::new(format!(
        "(has(self.builder.job) && has(self.builder.job.ttlAfterFinished) ? {ttl} : 86400) >= 2 * (has(self.timeOuts) && has(self.timeOuts.controllerTimer) ? {timer} : 300)"
    ))
    .message("builder.job.ttlAfterFinished must be at least twice timeOuts.controllerTimer: a finished build Job is read for its AMI at the next re-check")
    .field_path(".builder.job.ttlAfterFinished")
}

/// CEL rule: a relative path inside the repository, not starting with `-` (which a tool
/// would read as an option).
fn relative_path_rule() -> kube::core::Rule {
    kube::core::Rule::new(
        "!self.startsWith('/') && !self.startsWith('-') && !self.split('/').exists(s, s == '..')",
    )
    .message(
        "must be a relative path inside the repository, without '..' and not starting with '-'",
    )
}

/// A Packer sub-command.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum SubCommand {
    /// `packer init`: install the plugins the project requires.
    Init,
    /// `packer validate`: check the template.
    Validate,
    /// `packer build`: build the AMI.
    Build,
}

/// What Packer does when the build fails (`-on-error`). Packer's interactive `ask` is not
/// offered: a Job has no terminal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Clean up the instance and other resources (Packer's default).
    Cleanup,
    /// Leave everything in place for debugging.
    Abort,
    /// Run the cleanup provisioner, then clean up.
    RunCleanupProvisioner,
}

/// One Packer command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.onError) || self.subCommand == 'build'").message("onError applies only to subCommand build"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.args) || !self.args.exists(a, a == '-debug' || a == '--debug' || a.startsWith('-on-error') || a.startsWith('--on-error'))").message("args must not carry -debug or -on-error: in a Job nobody answers Packer's prompts; use the debug and onError fields"))]
pub struct Command {
    /// `init`, `validate` or `build`.
    pub sub_command: SubCommand,
    /// Extra arguments, passed to Packer as separate arguments (never through a shell), e.g.
    /// `-force`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 1024)))]
    pub args: Vec<String>,
    /// Colored output. Off by default (`-color=false`), which keeps logs readable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub color: bool,
    /// Verbose Packer logs (`PACKER_LOG=1`). Packer's interactive `-debug` is never used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub debug: bool,
    /// What `packer build` does on failure: `cleanup`, `abort` or `run-cleanup-provisioner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
    /// Variables passed as `-var name=value`, in name order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 100))]
    pub variables: BTreeMap<String, String>,
    /// A variables file passed as `-var-file=<path>`, relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = relative_path_rule())]
    pub variables_file: Option<String>,
    /// Working directory relative to `builder.dir`; defaults to `builder.dir` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = relative_path_rule())]
    pub working_dir: Option<String>,
}

/// Settings of the build Job and its pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSettings {
    /// Longest a build may run before it is stopped and counted as failed, e.g. `2h`; at most
    /// `7d`.
    #[serde(default = "default_build_deadline")]
    #[x_kube(validation = crate::duration::at_most_rule(7 * 86_400, "deadline must be at most 7d"))]
    #[x_kube(validation = crate::duration::at_least_rule(1, "deadline must be at least 1s: Kubernetes takes it in whole seconds"))]
    pub deadline: Duration,
    /// How long a finished Job (and its logs) is kept, e.g. `1d`; at most `30d`.
    #[serde(default = "default_ttl_after_finished")]
    #[x_kube(validation = crate::duration::at_most_rule(30 * 86_400, "ttlAfterFinished must be at most 30d"))]
    #[x_kube(validation = crate::duration::at_least_rule(1, "ttlAfterFinished must be at least 1s: Kubernetes takes it in whole seconds"))]
    pub ttl_after_finished: Duration,
    /// How long a stopped build (deadline, eviction, deletion) has to let Packer remove the
    /// instance, key pair and security group it created, e.g. `10m`; at most `1h`.
    #[serde(default = "default_termination_grace_period")]
    #[x_kube(validation = crate::duration::at_most_rule(3_600, "terminationGracePeriod must be at most 1h"))]
    #[x_kube(validation = crate::duration::at_least_rule(1, "terminationGracePeriod must be at least 1s: Kubernetes takes it in whole seconds"))]
    pub termination_grace_period: Duration,
    /// Resources of the Packer container. Defaults: requests 250m CPU / 256Mi, limit 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of the build pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the build pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            deadline: default_build_deadline(),
            ttl_after_finished: default_ttl_after_finished(),
            termination_grace_period: default_termination_grace_period(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }
}

fn default_build_deadline() -> Duration {
    Duration::literal("2h", 2 * 3600)
}

fn default_termination_grace_period() -> Duration {
    Duration::literal("10m", 600)
}

fn default_ttl_after_finished() -> Duration {
    Duration::literal("1d", 86_400)
}

/// Observed state of a PackerBuilder. Field names up to `lastRunStatus` follow the project this
/// one replaces.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackerBuilderStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// With two `spec.architectures`: the PackerBuilder of each and where it stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub architectures: Vec<ArchitectureStatus>,
    /// Identity of this PackerBuilder's builds; written to the AMI's `build-id` tag.
    #[serde(default, rename = "buildID", skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The Packer commands of the last build, for humans (they are run without a shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `Ready`, `Progressing`, `Degraded`, `NotificationFailed`, `ConfigWarning`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Consecutive failed builds since the last success, spec change, new base or retry.
    #[serde(default)]
    pub failed_job_count: i32,
    /// AMIs built from the current base that were quarantined since the last spec change, new
    /// base or retry; counted with `failedJobCount` against `spec.maxFailedBuilds`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quarantined_builds: i32,
    /// The last value of the annotation `ami.refresh.ops/retry` that was honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub retried: Option<String>,
    /// Id of the current or last build Job; part of its name.
    #[serde(default, rename = "jobID", skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Name of the current or last build Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// `running`, `completed` or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_status: Option<String>,
    /// When the last build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// Base AMI of the last build.
    #[serde(
        default,
        rename = "lastRunBaseImageID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = AMI_ID_PATTERN))]
    pub last_run_base_image_id: Option<String>,
    /// AMI produced by the last build.
    #[serde(
        default,
        rename = "lastRunBuiltImageID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = AMI_ID_PATTERN))]
    pub last_run_built_image_id: Option<String>,
    /// What happened in the last reconcile, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_message: Option<String>,
    /// Outcome of the last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_status: Option<String>,
    /// The current base AMI (newest match of `amiFilters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<ImageRef>,
    /// The SSM parameter the base AMI came from (`spec.amiParameter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_parameter: Option<ParameterRef>,
    /// The Kubernetes version of the cluster's control plane, when `amiFilters` use
    /// `${KUBERNETES_VERSION}` (read with EKS DescribeCluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// The managed AMI currently tagged `active`, with its expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_image: Option<ImageRef>,
    /// Recent builds, newest first (at most 10): base → built lineage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<BuildRecord>,
    /// The last transition a notification was decided for, so a later reconcile does not
    /// decide it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_notified: Option<String>,
    /// Notifications decided and not yet delivered everywhere; sent outside the reconcile,
    /// again after failures, until each lands or its attempts run out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub outbox: Vec<crate::common::OutgoingNotification>,
    /// Where `spec.maintenanceWindows` stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<WindowStatus>,
    /// Each AMI this PackerBuilder built that is no longer active, and its fate under
    /// `spec.retention` (at most 20, newest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub retention: Vec<ImageFate>,
    /// Where the active AMI is, region by region (`spec.region` first, then each copy), and
    /// whom each image is shared with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 21))]
    pub distribution: Vec<ImageCopy>,
    /// When the AMIs' use was last checked for retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_checked: Option<Time>,
    /// `spec.distribution.shareWith` as of the last check of every managed AMI's sharing
    /// (accounts no longer in it lose their permissions on all of them, not only the active
    /// one); absent until the first check, and after status was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50))]
    pub sharing_checked_for: Option<Vec<String>>,
    /// Snapshots of AMIs retention deregistered that EC2 did not delete (a failed
    /// `DeleteSnapshot`): deleted again at each reconcile until they are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub pending_snapshot_deletions: Vec<PendingSnapshot>,
}

/// A snapshot retention still has to delete.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingSnapshot {
    /// `snap-…`
    pub snapshot: String,
    /// Its region, when not `spec.region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Why the last attempt failed.
    pub reason: String,
}

/// The active AMI (or its copy) in one region.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCopy {
    /// The region.
    pub region: String,
    /// The AMI in that region: the active AMI itself in `spec.region`, else its copy.
    #[serde(rename = "imageID")]
    pub image_id: String,
    /// EC2 state of the image: `pending` while a copy is made, then `available`.
    pub state: String,
    /// The accounts it is shared with (launch and create-volume permission).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
}

/// An AMI's fate under `spec.retention`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageFate {
    /// The AMI id.
    pub image: String,
    /// Its region, when it is a copy in another region than `spec.region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `Keep`, `Deregister` (past retention; with `retention.delete` off it stays), or
    /// `Deregistered`.
    pub fate: String,
    /// Why: the rule that keeps it, or what deregistering it frees.
    pub reason: String,
}

/// One build in `status.history`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    /// The build Job's id.
    #[serde(rename = "jobID")]
    pub job_id: String,
    /// Base AMI the build started from.
    #[serde(
        default,
        rename = "baseImageID",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_image_id: Option<String>,
    /// AMI the build produced.
    #[serde(
        default,
        rename = "builtImageID",
        skip_serializing_if = "Option::is_none"
    )]
    pub built_image_id: Option<String>,
    /// `succeeded`, `failed`, or `quarantined` (it succeeded; an AMIRefresher quarantined
    /// its AMI since).
    pub result: String,
    /// Why the build failed, or why its AMI was quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When the build finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
}
