//! `AMIRefresher`: roll the newest active, unexpired AMI out to an EKS cluster's node groups.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::{
    common::{
        AMI_ID_PATTERN, AmiFilter, CLUSTER_NAME_PATTERN, ImageRef, MaintenanceWindow, Notifier,
        REGION_PATTERN, WindowStatus, conditions_schema,
    },
    conditions::Condition,
    duration::Duration,
    packer_builder::{TimeOuts, default_controller_timer},
};

/// A node group or Auto Scaling group name.
pub const GROUP_NAME_PATTERN: &str = r"^[0-9A-Za-z][A-Za-z0-9_.:/-]*$";

/// Desired state of an AMIRefresher: which AMI to roll out to which cluster, and how. The target
/// is the newest `active`, unexpired AMI, given by id or found through filters (the matches plus
/// the managed AMIs built from them); it reaches the cluster's node groups in controlled waves,
/// skipping excluded groups.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "ami.refresh.ops",
    version = "v1alpha1",
    kind = "AMIRefresher",
    plural = "amirefreshers",
    singular = "amirefresher",
    shortname = "amr",
    category = "opsy",
    namespaced,
    status = "AMIRefresherStatus",
    derive = "PartialEq",
    doc = "AMIRefresher rolls the newest active, unexpired AMI out to an EKS cluster's node groups.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(
        name = "Target AMI",
        type_ = "string",
        json_path = ".status.targetImage.id"
    ),
    printcolumn(
        name = "AMI Age",
        type_ = "date",
        json_path = ".status.targetImage.created"
    ),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.nodesOnTarget"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Progressing\")].reason"
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
#[x_kube(validation = Rule::new("has(self.ami) != (has(self.amiFilters) || has(self.amiParameter))").message("set exactly one of spec.ami (an AMI id) or spec.amiFilters / spec.amiParameter (EC2 filters, an SSM parameter naming the base AMI)").reason(kube::core::Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!(has(self.expiresIn) && has(self.timeOuts) && has(self.timeOuts.expiresIn))").message("spec.expiresIn and spec.timeOuts.expiresIn are the same setting; set only one").reason(kube::core::Reason::FieldValueInvalid))]
#[x_kube(validation = crate::common::owner_rule())]
pub struct AMIRefresherSpec {
    /// AWS region of the cluster, e.g. `us-west-2`.
    #[schemars(length(min = 1, max = 32), regex(pattern = REGION_PATTERN))]
    pub region: String,

    /// Name of the EKS cluster whose node groups are refreshed.
    #[schemars(length(min = 1, max = 100), regex(pattern = CLUSTER_NAME_PATTERN))]
    pub cluster_name: String,

    /// An explicit AMI id to roll out. It must still be `active` and unexpired. Exactly one of
    /// `ami` and `amiFilters` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = AMI_ID_PATTERN))]
    pub ami: Option<String>,

    /// EC2 filters for the base AMI. The candidates are the matches plus the managed AMIs built
    /// from them (tag `base-ami`); the newest eligible one is rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub ami_filters: Option<Vec<AmiFilter>>,

    /// An SSM parameter whose value is the base AMI's id (as AWS publishes EKS-optimised AMIs;
    /// `${KUBERNETES_VERSION}` is the control plane's version; with `${ARCHITECTURE}`, the
    /// parameters of `x86_64` and `arm64` both name a base, one per lane). The candidates are
    /// those images and the managed AMIs built from them; with `amiFilters` too, the images
    /// must also match them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = crate::common::PARAMETER_NAME_PATTERN))]
    pub ami_parameter: Option<String>,

    /// Accept `amiFilters` that name no owner (`owner-id` or `owner-alias`). Without an owner
    /// any account can publish a public AMI whose name matches and become the base.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_any_ami_owner: bool,

    /// How long after its creation an AMI stays eligible, e.g. `48h`, `30d`. Default `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<Duration>,

    /// Alternative to `expiresIn`, shaped like PackerBuilder's; `controllerTimer` sets how
    /// often node groups are re-checked (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_outs: Option<RefresherTimeOuts>,

    /// Node groups (managed or self-managed) that are never touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "group_names")]
    pub exclude: Vec<String>,

    /// How EKS replaces the nodes of managed node groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_config: Option<RefreshConfig>,

    /// How many groups change at once, which go first, and what happens on failure.
    #[serde(default)]
    pub rollout: Rollout,

    /// Self-managed Auto Scaling groups of the cluster (tag `kubernetes.io/cluster/<name>`).
    #[serde(default)]
    pub self_managed: SelfManaged,

    /// Where to send notifications about rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifier: Option<Notifier>,

    /// Start no new node group updates. Updates already running are followed to the end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Managed AMIs built elsewhere that may be rolled out too, e.g. to promote what the
    /// staging cluster's PackerBuilder built. By default (with `amiFilters`) only the managed
    /// AMIs built for `clusterName` are candidates; an AMI of another cluster, PackerBuilder or
    /// repository is passed over, and status and Events say how to accept it here. An entry
    /// matches an AMI when every field it sets matches the AMI's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub accept_from: Vec<AcceptFrom>,

    /// Gates every candidate must pass before it is rolled out here: soak on other clusters,
    /// a minimum age, a pin, AMIs never to roll out. A candidate held back by a gate is named
    /// with the gate and when it opens in status (`heldBack`), the conditions and `plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,

    /// An IAM role in the account that owns the managed AMIs (where the PackerBuilder runs),
    /// when that is not this AMIRefresher's account. EC2 shares an AMI's launch permission
    /// with other accounts but not its tags, so the candidates, their tags and their soak
    /// evidence are read there through this role, and this cluster's soak evidence is written
    /// there; the AMIs must be shared with this account to launch. Needs `sts:AssumeRole` on
    /// the role, and the role `ec2:DescribeImages` (and `ec2:CreateTags` on `healthy-on/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ROLE_ARN_PATTERN))]
    pub image_owner_role_arn: Option<String>,

    /// The cluster-scoped RefresherClass that says which clusters and owner-access roles this
    /// AMIRefresher may use. Not set: the RefresherClass marked
    /// `ami.refresh.ops/is-default-class`, or, when there is none, what the operator's install
    /// allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub refresher_class_name: Option<String>,

    /// When node groups may start updating. Outside every window no group starts; a group
    /// already updating when a window closes is followed to its end. Empty: any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub maintenance_windows: Vec<MaintenanceWindow>,
}

/// An IAM role ARN.
pub const ROLE_ARN_PATTERN: &str =
    r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$";

/// The gates of a promotion between environments. Every gate set must pass.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// The candidate must have run healthy on each of these clusters for at least the given
    /// time: the AMIRefresher of such a cluster tags the AMI `healthy-on/<cluster>` with the
    /// time its rollout there was complete and healthy. E.g. `{clusterName: staging,
    /// duration: 72h}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub soak_on: Vec<SoakOn>,
    /// The candidate must be at least this old (since its creation), e.g. `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age: Option<Duration>,
    /// Roll out this AMI and no other (while it stays active and unexpired); the soak and
    /// age gates do not apply to it. Remove the pin to follow the newest candidate again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = AMI_ID_PATTERN))]
    pub pin: Option<String>,
    /// AMIs never to roll out here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ami_ids")]
    pub never: Vec<String>,
}

/// Soak on another cluster: healthy there for at least `duration`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SoakOn {
    /// The cluster (its `spec.clusterName`) whose AMIRefresher records the evidence.
    #[schemars(length(min = 1, max = 100), regex(pattern = CLUSTER_NAME_PATTERN))]
    pub cluster_name: String,
    /// The AWS account of that cluster, when it is not this AMIRefresher's cluster's account
    /// (evidence names the account: a cluster of the same name in another account does not
    /// vouch for an AMI here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9]{12}$"))]
    pub account: Option<String>,
    /// How long the AMI must have been healthy there, e.g. `72h`.
    pub duration: Duration,
}

fn ami_ids(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<String>>();
    schema.insert("x-kubernetes-list-type".into(), "set".into());
    schema.insert("maxItems".into(), 100.into());
    schema.insert(
        "items".into(),
        serde_json::json!({"type": "string", "pattern": AMI_ID_PATTERN}),
    );
    schema
}

/// Managed AMIs of another origin that an AMIRefresher accepts (all set fields must match).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clusterName) || has(self.packerBuilder) || has(self.repository)").message("an acceptFrom entry names at least one of clusterName, packerBuilder or repository").reason(kube::core::Reason::FieldValueInvalid))]
pub struct AcceptFrom {
    /// The cluster the AMI was built for (its `cluster-name` tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100), regex(pattern = CLUSTER_NAME_PATTERN))]
    pub cluster_name: Option<String>,
    /// The PackerBuilder that built it (its `created-by` tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub packer_builder: Option<String>,
    /// The Packer repository it was built from (its `packer-repo` tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub repository: Option<String>,
}

impl AMIRefresherSpec {
    /// The effective expiry: `expiresIn`, else `timeOuts.expiresIn`, else 30 days.
    pub fn effective_expires_in(&self) -> Duration {
        self.expires_in
            .clone()
            .or_else(|| self.time_outs.as_ref().and_then(|t| t.expires_in.clone()))
            .unwrap_or_else(|| TimeOuts::default().expires_in)
    }

    /// The effective re-check interval: `timeOuts.controllerTimer`, else 5 minutes.
    pub fn effective_controller_timer(&self) -> Duration {
        self.time_outs
            .as_ref()
            .and_then(|t| t.controller_timer.clone())
            .unwrap_or_else(default_controller_timer)
    }
}

fn group_names(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<String>>();
    schema.insert("x-kubernetes-list-type".into(), "set".into());
    schema.insert("maxItems".into(), 200.into());
    schema.insert(
        "items".into(),
        serde_json::json!({
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": GROUP_NAME_PATTERN,
        }),
    );
    schema
}

fn alarm_names(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<String>>();
    schema.insert("x-kubernetes-list-type".into(), "set".into());
    schema.insert("maxItems".into(), 100.into());
    schema.insert(
        "items".into(),
        serde_json::json!({"type": "string", "minLength": 1, "maxLength": 255}),
    );
    schema
}

/// Expiry and re-check interval of an AMIRefresher.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefresherTimeOuts {
    /// How long after its creation an AMI stays eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<Duration>,
    /// How often node groups are re-checked (and drift corrected), e.g. `5m`; at least `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::packer_builder::controller_timer_rule())]
    pub controller_timer: Option<Duration>,
}

/// How EKS replaces the nodes of a managed node group (`UpdateNodegroupVersion` and the
/// group's `updateConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.maxUnavailable) && has(self.maxUnavailablePercentage))").message("set at most one of maxUnavailable and maxUnavailablePercentage").reason(kube::core::Reason::FieldValueInvalid))]
pub struct RefreshConfig {
    /// Replace nodes even when pod disruption budgets block draining.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Most nodes unavailable at once during the update (1–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_unavailable: Option<i32>,
    /// Most nodes unavailable at once, as a percentage of the group (1–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_unavailable_percentage: Option<i32>,
    /// Consider a group done only when its update has finished (default). When false, a group
    /// counts as done once its update has started, so the next wave starts sooner.
    #[serde(default = "default_true")]
    pub wait_for_completion: bool,
}

fn default_true() -> bool {
    true
}

/// Rollout controls.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.onFailure) && self.onFailure == 'rollback' && has(self.haltOnFailure) && !self.haltOnFailure)").message("rollout.onFailure: rollback stops the rollout and cannot be combined with haltOnFailure: false; remove haltOnFailure or use onFailure: halt").reason(kube::core::Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.approveAfterCanary) || !self.approveAfterCanary || (has(self.canary) && size(self.canary) > 0)").message("rollout.approveAfterCanary needs rollout.canary: name the groups to approve after").reason(kube::core::Reason::FieldValueInvalid))]
pub struct Rollout {
    /// Most node groups updating at the same time.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 50))]
    pub max_in_flight: i32,
    /// Groups updated first, one wave on their own; the others start only after they succeed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "group_names")]
    pub canary: Vec<String>,
    /// Start no further group after one fails (default). The failure is reported in status,
    /// Events and notifications; fix it, then change the spec or the target AMI to resume.
    #[serde(default = "default_true")]
    pub halt_on_failure: bool,
    /// A group whose update AWS reports done is `Verifying` until the cluster agrees: its nodes
    /// on the target AMI (the instances of its Auto Scaling group launched from the target,
    /// matched by `spec.providerID`; EKS's node labels only when no Auto Scaling group is
    /// known) number at least its desired size, are Ready,
    /// and have stayed Ready for `bakeTime`. Only then is it `Succeeded` and the next wave may
    /// start. On by default; `false` trusts AWS's word alone.
    #[serde(default = "default_true")]
    pub health_gate: bool,
    /// How long the nodes must stay Ready before the group counts as healthy, e.g. `10m`.
    /// Default: healthy as soon as enough nodes are Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::at_most_rule(86_400, "bakeTime must be at most 1d"))]
    pub bake_time: Option<Duration>,
    /// How long after AWS reports a group's update done its nodes may take to become healthy;
    /// then the group fails (and, with `haltOnFailure`, the rollout stops). Default `30m`.
    #[serde(default = "default_health_timeout")]
    #[x_kube(validation = crate::duration::at_most_rule(86_400, "healthTimeout must be at most 1d"))]
    pub health_timeout: Duration,
    /// CloudWatch alarms (names, in this AMIRefresher's region) that watch the workloads: a
    /// group being verified is not healthy while one of them is in `ALARM`, and fails at once
    /// (tripping the circuit breaker) when one enters `ALARM` after its update started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "alarm_names")]
    pub alarms: Vec<String>,
    /// With this set, a group being verified is healthy only when at most this percentage of
    /// the pods on its nodes on the target AMI are not Ready (pods that ended, Succeeded or
    /// Failed, do not count); past `healthTimeout` it fails with the pods named. E.g. `10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_unready_pods_percent: Option<i32>,
    /// What a failed group (AWS failure or failed health gate) does: `halt` (default) starts no
    /// further group; `rollback` also moves every group this rollout moved back to the launch
    /// template version and AMI it ran before (`fromVersion` and `fromImage` in status), followed
    /// per group like an update (`RollingBack`, then `RolledBack`).
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Which evidence besides the AMI's own nodes quarantines the AMI fleet-wide. Nodes
    /// launched from it that turn (or stay) NotReady, instances that never join, and EKS's
    /// `NodeCreationFailure` always do. A capacity shortfall (fewer Ready nodes than desired,
    /// none NotReady), an alarm of `alarms` or unready pods (`maxUnreadyPodsPercent`) fail the
    /// group and halt (or roll back) this rollout, but quarantine the AMI only when listed here:
    /// `capacity`, `alarms`, `pods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub quarantine_on: Vec<QuarantineSignal>,
    /// A group is not moved (`Skipped`, naming them) while an Auto Scaling group of the
    /// cluster follows its launch template at `$Latest`: the new version this operator adds
    /// would go live at once for every scale-out of those groups — later waves, excluded
    /// groups — before any health gate, and a rollback would not pin them. Give them a
    /// numbered version; or set this to move such groups anyway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_latest_followers: bool,
    /// PodDisruptionBudgets that allow no disruption of pods on a group's nodes are reported
    /// before the group starts. `wait` (default): the group starts only once they allow it;
    /// `proceed`: it starts anyway (EKS then fails the update with `PodEvictionFailure` if it
    /// cannot drain); `force`: it starts with EKS's `force`, which evicts pods whatever their
    /// budgets say.
    #[serde(default)]
    pub pdb_policy: PdbPolicy,
    /// After the canary groups are healthy, wait for an approval before the other waves: the
    /// annotation `ami.refresh.ops/approve` on this AMIRefresher set to the target AMI id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approve_after_canary: bool,
    /// What a newer eligible AMI does while a rollout is under way: `finish` (default) rolls
    /// the current target out to every group first and takes the newer AMI in the next
    /// rollout, so no wave mixes AMIs; `switch` moves the groups not yet started (and, after
    /// it, those done) to the newer AMI at once. A halted rollout always takes the newer AMI.
    #[serde(default)]
    pub on_newer_ami: OnNewerAmi,
}

/// What a newer eligible AMI does to a rollout under way.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnNewerAmi {
    /// Finish the rollout on its target first.
    #[default]
    Finish,
    /// Retarget at once.
    Switch,
}

/// The annotation that approves the waves after the canary (`rollout.approveAfterCanary`); its
/// value is the AMI id it approves.
pub const APPROVE_ANNOTATION: &str = "ami.refresh.ops/approve";

/// What a failed group does to the rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Start no further group.
    #[default]
    Halt,
    /// Start no further group, and move the groups already moved back to what they ran.
    Rollback,
}

/// Evidence against an AMI that quarantines it only when `rollout.quarantineOn` lists it.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum QuarantineSignal {
    /// Fewer Ready nodes than desired, none NotReady (capacity, Spot, quotas).
    Capacity,
    /// An alarm of `rollout.alarms`.
    Alarms,
    /// Unready pods on the new nodes (`rollout.maxUnreadyPodsPercent`).
    Pods,
}

impl QuarantineSignal {
    /// Its name in `rollout.quarantineOn`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineSignal::Capacity => "capacity",
            QuarantineSignal::Alarms => "alarms",
            QuarantineSignal::Pods => "pods",
        }
    }
}

/// What decided that a group failed (`status.nodeGroups[].failedOn`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureEvidence {
    /// Its nodes on the AMI: NotReady, never joined, or EKS's `NodeCreationFailure`.
    Nodes,
    /// Fewer Ready nodes than desired, none NotReady.
    Capacity,
    /// An alarm of `rollout.alarms`.
    Alarms,
    /// Unready pods on the new nodes.
    Pods,
    /// AWS failed the update for a reason that does not implicate the AMI (an eviction, a
    /// launch failure, a permission).
    Update,
}

impl FailureEvidence {
    /// The signal of `rollout.quarantineOn` this evidence is, if it is one.
    pub fn signal(self) -> Option<QuarantineSignal> {
        match self {
            FailureEvidence::Capacity => Some(QuarantineSignal::Capacity),
            FailureEvidence::Alarms => Some(QuarantineSignal::Alarms),
            FailureEvidence::Pods => Some(QuarantineSignal::Pods),
            FailureEvidence::Nodes | FailureEvidence::Update => None,
        }
    }

    /// Whether this evidence quarantines the AMI, given `rollout.quarantineOn`.
    pub fn quarantines(self, quarantine_on: &[QuarantineSignal]) -> bool {
        match self {
            FailureEvidence::Nodes => true,
            FailureEvidence::Update => false,
            other => other.signal().is_some_and(|s| quarantine_on.contains(&s)),
        }
    }

    /// Its name in status (and, for a signal, in `rollout.quarantineOn`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureEvidence::Nodes => "nodes",
            FailureEvidence::Update => "update",
            other => other.signal().map_or("", QuarantineSignal::as_str),
        }
    }
}

/// What to do when PodDisruptionBudgets allow no disruption of pods on a group's nodes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PdbPolicy {
    /// Report them and start the group once they allow a disruption.
    #[default]
    Wait,
    /// Report them and start the group anyway.
    Proceed,
    /// Report them and start the group with EKS's `force` (pods are evicted regardless).
    Force,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            max_in_flight: default_max_in_flight(),
            canary: Vec::new(),
            halt_on_failure: true,
            health_gate: true,
            bake_time: None,
            health_timeout: default_health_timeout(),
            alarms: Vec::new(),
            max_unready_pods_percent: None,
            on_failure: OnFailure::Halt,
            quarantine_on: Vec::new(),
            allow_latest_followers: false,
            pdb_policy: PdbPolicy::Wait,
            approve_after_canary: false,
            on_newer_ami: OnNewerAmi::Finish,
        }
    }
}

fn default_health_timeout() -> Duration {
    Duration::literal("30m", 1_800)
}

fn default_max_in_flight() -> i32 {
    1
}

/// Self-managed Auto Scaling groups: a new launch-template version and an instance refresh.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfManaged {
    /// Refresh the cluster's self-managed Auto Scaling groups too.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Percentage of the group that stays in service during the refresh.
    #[serde(default = "default_min_healthy")]
    #[schemars(range(min = 0, max = 100))]
    pub min_healthy_percentage: i32,
    /// Time a new instance needs before it counts as healthy, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_warmup: Option<Duration>,
    /// Leave instances that already run the target launch template version alone.
    #[serde(default = "default_true")]
    pub skip_matching: bool,
    /// Roll back automatically when the refresh fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_rollback: bool,
}

impl Default for SelfManaged {
    fn default() -> Self {
        Self {
            enabled: true,
            min_healthy_percentage: default_min_healthy(),
            instance_warmup: None,
            skip_matching: true,
            auto_rollback: false,
        }
    }
}

fn default_min_healthy() -> i32 {
    90
}

/// Observed state of an AMIRefresher.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AMIRefresherStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `NotificationFailed`, `ConfigWarning`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The AMI being rolled out, with its creation and expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_image: Option<ImageRef>,
    /// The target of each lane (architecture/variant) the cluster's groups run, when they run
    /// more than one: each group moves only to its lane's target. `targetImage` is the target
    /// of the lane with the most groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_TARGETS))]
    pub targets: Vec<LaneTarget>,
    /// The SSM parameter the base AMI came from (`spec.amiParameter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_parameter: Option<crate::common::ParameterRef>,
    /// The Kubernetes version of the cluster's control plane (EKS DescribeCluster). No AMI
    /// built for a newer one, or for one more than three minors older, is rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// Summary for `kubectl get`, e.g. `3/5 updated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The rollout's nodes on the target, of the desired sizes of the groups it manages, e.g.
    /// `14/20 (70%)`: a group on the target counts all its nodes, a group being verified its
    /// Ready nodes on the target, any other none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_on_target: Option<String>,
    /// One entry per node group of the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "node_groups_schema")]
    pub node_groups: Vec<NodeGroupStatus>,
    /// Candidates newer than the target that a gate of `spec.promotion` holds back, newest
    /// first (at most 5), with the gate and when it opens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub held_back: Vec<HeldBack>,
    /// Where `spec.maintenanceWindows` stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<WindowStatus>,
    /// Names in `spec.exclude` or `spec.rollout.canary` that match no group of the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_groups: Vec<String>,
    /// When node groups were last compared with the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<Time>,
    /// The last transition a notification was decided for, so a later reconcile does not
    /// decide it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_notified: Option<String>,
    /// Notifications decided and not yet delivered everywhere; sent outside the reconcile,
    /// again after failures, until each lands or its attempts run out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub outbox: Vec<crate::common::OutgoingNotification>,
    /// Evidence (a quarantine, `healthy-on/<cluster>`) decided but not yet written on its AMI
    /// because the write failed (throttled, denied): written again at each reconcile until it
    /// lands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub pending_evidence: Vec<PendingEvidence>,
}

/// `status.targets` holds at most this many lanes (those with the most groups).
pub const MAX_TARGETS: usize = 16;

/// Evidence still to be written on an AMI.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingEvidence {
    /// The AMI id.
    pub image: String,
    /// `Quarantine` or `HealthyOn`.
    pub kind: EvidenceKind,
    /// The quarantine's reason (its `quarantine-reason` tag), or the time `healthy-on/<cluster>`
    /// records.
    pub value: String,
    /// Why the last write failed.
    pub error: String,
    /// When the evidence was decided.
    pub since: Time,
}

/// Which evidence a [`PendingEvidence`] writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EvidenceKind {
    /// The AMI is quarantined (tag `status=quarantined`, `quarantine-reason`, EC2 deprecation).
    Quarantine,
    /// The AMI rolled out healthy on this cluster (tag `healthy-on/<cluster>`).
    HealthyOn,
}

/// The target of one lane: the newest eligible candidate of the groups' architecture and
/// variant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaneTarget {
    /// EC2 architecture (`x86_64`, `arm64`).
    pub architecture: String,
    /// `standard`, `nvidia`, `neuron`.
    pub variant: String,
    /// `al2`, `al2023`, `bottlerocket`, …, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_family: Option<String>,
    /// The AMI the lane's groups move to.
    pub image: ImageRef,
    /// How many of the cluster's groups run this lane.
    pub groups: i32,
}

/// A candidate a promotion gate holds back.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldBack {
    /// The AMI id.
    pub image: String,
    /// The gate: `SoakOn`, `MinAge`, `Pin` or `Never`.
    pub gate: String,
    /// Why, e.g. `healthy on staging since 2026-11-28T09:00:00Z; promotable 2026-12-01T09:00:00Z`.
    pub message: String,
    /// When the gate opens, if it will by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens: Option<Time>,
}

fn node_groups_schema(generator: &mut SchemaGenerator) -> Schema {
    crate::common::map_list::<NodeGroupStatus>(generator, "name")
}

/// How a node group is updated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodeGroupKind {
    /// An EKS managed node group (`UpdateNodegroupVersion`).
    Managed,
    /// A self-managed Auto Scaling group (instance refresh).
    SelfManaged,
}

/// Which AWS operation a node group's update is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UpdateType {
    /// `UpdateNodegroupConfig` (the group's `updateConfig` from `spec.refreshConfig`), which
    /// must end before the version update can start.
    ConfigUpdate,
    /// `UpdateNodegroupVersion` to the new launch template version.
    VersionUpdate,
    /// An Auto Scaling instance refresh to the new launch template version.
    InstanceRefresh,
}

/// Where a node group stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodeGroupPhase {
    /// Listed in `spec.exclude`.
    Excluded,
    /// Cannot be updated by this operator (e.g. no launch template); see `message`.
    Skipped,
    /// Already runs the target AMI.
    UpToDate,
    /// Waiting for its wave.
    Pending,
    /// Update started and being followed.
    Updating,
    /// AWS reports the update done; waiting for the group's nodes to be Ready on the target
    /// AMI (and the bake time). See `health`.
    Verifying,
    /// Update finished successfully.
    Succeeded,
    /// Update failed; see `message`.
    Failed,
    /// The rollout failed (`rollout.onFailure: rollback`): the group is going back to
    /// `fromVersion` / `fromImage` (`rollbackVersion`).
    RollingBack,
    /// Back on what it ran before the rollout.
    RolledBack,
}

impl NodeGroupPhase {
    /// The group failed, or is going (or went) back after a failure: with `haltOnFailure` or
    /// `onFailure: rollback`, no further group starts.
    pub fn halts(self) -> bool {
        matches!(self, Self::Failed | Self::RollingBack | Self::RolledBack)
    }

    /// An operation of this operator runs on the group (or its nodes are being verified).
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Updating | Self::Verifying | Self::RollingBack)
    }
}

/// One node group in `status.nodeGroups`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroupStatus {
    /// Node group (or Auto Scaling group) name.
    pub name: String,
    /// `Managed` or `SelfManaged`.
    pub kind: NodeGroupKind,
    /// Where the group stands.
    pub phase: NodeGroupPhase,
    /// Launch template id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template_id: Option<String>,
    /// Launch template version before the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// Launch template version created for the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// AMI before the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    /// AMI after the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_image: Option<String>,
    /// The lane (`architecture/variant`) of the AMI the group runs: it moves only to that
    /// lane's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// When the AMI the group runs was built (its `create-timestamp` tag, else EC2's
    /// `CreationDate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_created: Option<Time>,
    /// The `status` tag of the AMI the group runs (`active`, `deprecated`, `quarantined`);
    /// absent for an AMI outside the tag contract (a public EKS AMI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_status: Option<String>,
    /// EKS update id or instance refresh id.
    #[serde(default, rename = "updateID", skip_serializing_if = "Option::is_none")]
    pub update_id: Option<String>,
    /// Which operation `updateID` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_type: Option<UpdateType>,
    /// Details for humans (why skipped, why failed, progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the update started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When the update finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
    /// What the cluster says about the group's nodes on the target AMI (`rollout.healthGate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<GroupHealth>,
    /// The group's desired size when last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_size: Option<i32>,
    /// The launch template version a rollback moves the group to: `fromVersion`, or a new
    /// version carrying `fromImage` when AWS refused the older one. Set once a rollback
    /// started; a rollback is tried once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_version: Option<String>,
    /// What decided that the group failed: `nodes` (its nodes on the AMI; quarantines the
    /// AMI), `capacity`, `alarms`, `pods` (quarantine only when `rollout.quarantineOn` lists
    /// them) or `update` (AWS failed the update for another reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_on: Option<FailureEvidence>,
}

/// The evidence of a group's health gate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupHealth {
    /// Nodes on the target AMI that are Ready.
    pub ready: i32,
    /// Nodes the group should have (its desired size).
    pub desired: i32,
    /// Nodes on the target AMI that are not Ready, with the reason (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub not_ready: Vec<String>,
    /// Since when all of them are Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Time>,
    /// When the bake time ends (`readySince` + `rollout.bakeTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_until: Option<Time>,
    /// Pods on the group's nodes on the target AMI that are Ready, of `pods`
    /// (`rollout.maxUnreadyPodsPercent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_ready: Option<i32>,
    /// Pods on those nodes that count (not Succeeded or Failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<i32>,
    /// Pods on those nodes that are not Ready, with the reason (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub unready_pods: Vec<String>,
    /// The alarms of `rollout.alarms` and their states (`name: STATE`), at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub alarms: Vec<String>,
}
