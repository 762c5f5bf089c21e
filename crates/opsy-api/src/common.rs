//! Types and schema helpers shared by both custom resources.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;

/// An AMI id: `ami-` and 8 or 17 lowercase hex digits.
pub const AMI_ID_PATTERN: &str = "^ami-([0-9a-f]{8}|[0-9a-f]{17})$";
/// An AWS region such as `us-west-2`, `eu-central-1` or `us-gov-west-1`.
pub const REGION_PATTERN: &str = "^[a-z]{2}(-[a-z]+)+-[0-9]+$";
/// An EKS cluster name (1–100 characters, as EKS allows).
pub const CLUSTER_NAME_PATTERN: &str = "^[0-9A-Za-z][A-Za-z0-9_-]*$";

/// One EC2 `DescribeImages` filter, e.g. `{name: "name", values: ["amazon-eks-node-al2023-*"]}`.
/// Filters are combined with AND; the values of one filter with OR. The `owner-id` and
/// `owner-alias` filters are also sent as the request's owners, so AWS searches only those
/// accounts' images.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AmiFilter {
    /// EC2 filter name, e.g. `name`, `owner-id`, `architecture`, `tag:Team`. See the EC2
    /// DescribeImages API reference for the list.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// Values to match; `*` and `?` are wildcards.
    #[schemars(length(min = 1, max = 200), inner(length(min = 1, max = 255)))]
    pub values: Vec<String>,
}

/// CEL rule on a spec with `amiFilters` and `allowAnyAmiOwner`: the filters name the owner
/// of the base AMI. Without one, any public AMI with a matching name becomes the base (AMI
/// name squatting).
pub(crate) fn owner_rule() -> kube::core::Rule {
    kube::core::Rule::new(
        "!has(self.amiFilters) || has(self.amiParameter) || (has(self.allowAnyAmiOwner) && self.allowAnyAmiOwner) || self.amiFilters.exists(f, f.name == 'owner-id' || f.name == 'owner-alias')",
    )
    .message("amiFilters must name the AMI owner with an owner-id (e.g. 602401143452 for Amazon EKS) or owner-alias (e.g. amazon) filter, or else anyone can publish a matching AMI; set allowAnyAmiOwner: true to accept that")
    .reason(kube::core::Reason::FieldValueInvalid)
}

/// An SSM parameter name (Systems Manager: letters, digits, `.-_/`, at most 2048 characters),
/// possibly with `${KUBERNETES_VERSION}` and `${ARCHITECTURE}`.
pub const PARAMETER_NAME_PATTERN: &str =
    r"^[a-zA-Z0-9_.\-/]*((\$\{KUBERNETES_VERSION\}|\$\{ARCHITECTURE\})[a-zA-Z0-9_.\-/]*)*$";

/// The SSM parameter a base AMI came from, as recorded in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParameterRef {
    /// The parameter's name (with `${KUBERNETES_VERSION}` filled in).
    pub name: String,
    /// Its version when read.
    pub version: i64,
    /// The AMI id it holds.
    #[serde(rename = "imageID")]
    pub image_id: String,
}

/// An AMI as recorded in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageRef {
    /// The AMI id.
    pub id: String,
    /// The AMI name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the AMI was created (its `create-timestamp` tag, else EC2's `CreationDate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Time>,
    /// When the AMI stops being eligible (created + `expiresIn`). Absent for base AMIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}

/// Where to send notifications about state transitions (one message per transition). A
/// notifier that fails is reported in a Warning event and the `NotificationFailed` condition;
/// it never blocks a build or a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notifier {
    /// Slack: one `chat.postMessage` per channel with a bot token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackNotifier>,
    /// Amazon SNS: one `Publish` per transition to a topic (subject and a JSON body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sns: Option<SnsNotifier>,
    /// Webhooks: one POST per transition to each URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub webhooks: Vec<WebhookNotifier>,
}

/// Amazon SNS notifications, sent with the operator's own AWS credentials (IAM: `sns:Publish`
/// on the topic).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnsNotifier {
    /// The topic, e.g. `arn:aws:sns:us-west-2:123456789012:ami-updates`. Its region is taken
    /// from the ARN.
    #[serde(rename = "topicARN")]
    #[schemars(
        length(min = 1, max = 256),
        regex(
            pattern = r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$"
        )
    )]
    pub topic_arn: String,
}

/// A webhook notification. The URL is a credential (it often embeds a token), so it lives in a
/// Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookNotifier {
    /// Name of a Secret in the resource's namespace holding the URL.
    #[schemars(length(min = 1, max = 253))]
    pub secret: String,
    /// Key of the Secret that holds the URL.
    #[serde(default = "default_webhook_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Payload shape: `generic` (JSON with every fact), `slack` (Slack incoming webhook) or
    /// `discord` (Discord webhook).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Allow an `http://` URL (e.g. a receiver inside the cluster). By default only `https://`
    /// URLs are used: the payload names clusters, AMIs and accounts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_http: bool,
}

fn default_webhook_key() -> String {
    "url".to_owned()
}

/// Payload shape of a webhook.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WebhookFormat {
    /// JSON with the event, outcome, resource, cluster, facts and reason.
    #[default]
    Generic,
    /// A Slack incoming webhook (`text` and colored `attachments`).
    Slack,
    /// A Discord webhook (`embeds`).
    Discord,
}

/// Slack notifications through the Web API with a bot token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackNotifier {
    /// Slack channel ids (e.g. `C0123456789`); one message is posted to each.
    #[serde(rename = "channelIDs")]
    #[schemars(length(min = 1, max = 20), inner(length(min = 1, max = 80)))]
    pub channel_ids: Vec<String>,
    /// Name of a Secret in the resource's namespace whose key `token` holds the bot token
    /// (`xoxb-…`).
    #[schemars(length(min = 1, max = 253))]
    pub secret: String,
}

/// A time in which changes may start: it opens at each time its cron `schedule` names (in
/// `timeZone`) and stays open for `duration`. Work that started inside a window is followed to
/// its end after the window closes; nothing new starts until the next one opens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When the window opens: a five-field cron schedule, `minute hour day-of-month month
    /// day-of-week`, e.g. `0 2 * * SAT,SUN` (02:00 on weekends). Days of the week are given by
    /// name (`MON`–`SUN`, ranges such as `MON-FRI`): cron dialects number them differently.
    #[schemars(length(min = 9, max = 200))]
    #[x_kube(validation = schedule_rule())]
    #[x_kube(validation = one_day_field_rule())]
    pub schedule: String,
    /// How long the window stays open, e.g. `4h`; at most `7d`.
    #[x_kube(validation = crate::duration::at_most_rule(604_800, "a maintenance window's duration must be at most 7d"))]
    pub duration: crate::duration::Duration,
    /// The IANA time zone of `schedule`, e.g. `Europe/Berlin`. Default `UTC`.
    #[serde(default = "default_time_zone")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_+/-]*$")
    )]
    pub time_zone: String,
}

/// CEL rule on a window's schedule: five cron fields, the last (day of week) by name, never by
/// number.
fn schedule_rule() -> kube::core::Rule {
    kube::core::Rule::new(
        r"self.matches('^\\s*\\S+\\s+\\S+\\s+\\S+\\s+\\S+\\s+[*?A-Za-z,-]+\\s*$')",
    )
    .message("must be five cron fields, minute hour day-of-month month day-of-week, with the days of the week by name (MON-FRI, SAT,SUN), e.g. \"0 2 * * SAT\"")
}

/// CEL rule on a window's schedule: the day of the month or the day of the week is `*` (or
/// `?`). With both restricted, Vixie cron and Kubernetes CronJobs open on a day matching either;
/// the evaluator here would require both — so such a schedule is refused, not misread.
fn one_day_field_rule() -> kube::core::Rule {
    kube::core::Rule::new(
        r"self.matches('^\\s*\\S+\\s+\\S+\\s+([*?]\\s+\\S+\\s+\\S+|\\S+\\s+\\S+\\s+[*?])\\s*$')",
    )
    .message("must not restrict both the day of the month and the day of the week (cron dialects disagree on whether a day must match either or both): restrict one of them, or give two windows")
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// Where the maintenance windows stand, in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowStatus {
    /// A window is open now.
    pub open: bool,
    /// When the open window closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes: Option<Time>,
    /// When the next window opens (after the open one, if one is open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_opens: Option<Time>,
}

/// Marks a `Vec<Condition>` as a map-list keyed by `type`, as Kubernetes conventions ask, so
/// server-side apply merges conditions by type.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Marks a list of structs as a map-list keyed by `key`.
pub(crate) fn map_list<T: JsonSchema>(generator: &mut SchemaGenerator, key: &str) -> Schema {
    let mut schema = generator.subschema_for::<Vec<T>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!([key]),
    );
    schema
}

/// Most notifications an outbox holds; when a new one would exceed it, the oldest is dropped
/// (with a Warning event). Notifications are rare — a handful per build or rollout — so this is
/// reached only when every destination has been failing for hours.
pub const MAX_OUTBOX: usize = 20;

/// A notification decided by a reconcile and not yet delivered to every destination
/// (`status.outbox`). It is written to status before it is sent, so it goes out at least once:
/// a crash, a lost Lease or a failing destination leaves it here, and it is sent again (to the
/// destinations that did not take it) until it lands or its attempts run out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingNotification {
    /// The transition, unique for this object, e.g. `BuildSucceeded:<job id>`; with the
    /// object's uid it is the `Idempotency-Key` receivers may deduplicate on.
    pub key: String,
    /// `BuildStarted`, `BuildSucceeded`, `BuildFailed`, `BuildStalled`, `RolloutStarted`,
    /// `NodeGroupUpdated`, `RolloutSucceeded`, `RolloutHalted`, `RolloutAwaitingApproval`.
    pub event: String,
    /// One line for people.
    pub summary: String,
    /// Facts in display order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<NotificationFact>,
    /// Why it failed, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the transition happened.
    pub at: Time,
    /// Destinations that took it (`slack`, `sns`, `webhook #2`): not sent to again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<String>,
    /// Delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Why the last attempt failed (never a token or a webhook URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Not sent again before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<Time>,
}

/// One fact of a notification, e.g. `Base AMI: ami-…`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NotificationFact {
    /// What it is.
    pub name: String,
    /// Its value.
    pub value: String,
}
