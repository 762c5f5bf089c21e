//! Following groups in flight: their AWS update or instance refresh, then the health gate of
//! their nodes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use opsy_api::{
    AMIRefresher,
    ami_refresher::{
        FailureEvidence, NodeGroupKind, NodeGroupPhase, NodeGroupStatus, QuarantineSignal,
        UpdateType,
    },
};
use opsy_aws::AwsClients;

use crate::{
    Error,
    health::{AlarmView, Subject, Verdict, judge, on_target, with_alarms, with_pods},
    observe::{ManagedInstances, nodes_of, pods_on},
    plan::Group,
    report::{Context, event},
    start::start_version_update,
};

/// Evidence against an AMI: a group that failed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Against {
    /// The AMI the group moved to.
    pub image: String,
    /// The group and what failed it.
    pub evidence: String,
    /// Which kind of evidence it is.
    pub kind: FailureEvidence,
}

/// What evidence of `kind` does, for status and Events.
pub(crate) fn verdict_of(kind: FailureEvidence, quarantine_on: &[QuarantineSignal]) -> String {
    let name = kind.as_str();
    if kind.quarantines(quarantine_on) {
        format!("{name} evidence: the AMI is quarantined")
    } else if kind.signal().is_some() {
        format!(
            "{name} evidence: this rollout halts, the AMI is not quarantined (rollout.quarantineOn does not list {name})"
        )
    } else {
        format!("{name} evidence: this rollout halts, the AMI is not quarantined")
    }
}

/// The health gate of every `Verifying` entry of `entries`: the nodes that may belong to those
/// groups are read (one list, only while some group is being verified) and judged.
/// Returns the groups that turned healthy, and for those that did not become healthy in time
/// the AMI they moved to and the evidence against it.
pub(crate) async fn verify(
    aws: &AwsClients,
    ctx: &Context,
    amr: &AMIRefresher,
    groups: &[Group],
    entries: &mut [NodeGroupStatus],
    target: &str,
    now: Timestamp,
) -> Result<(Vec<String>, Vec<Against>), Error> {
    if !entries.iter().any(|e| e.phase == NodeGroupPhase::Verifying) {
        return Ok((Vec::new(), Vec::new()));
    }
    let nodes = nodes_of(&ctx.client).await?;
    // The managed groups' instances: one read of their Auto Scaling groups.
    let verified: Vec<&Group> = entries
        .iter()
        .filter(|e| e.phase == NodeGroupPhase::Verifying && e.kind == NodeGroupKind::Managed)
        .filter_map(|e| groups.iter().find(|g| g.name == e.name))
        .collect();
    let mut instances = ManagedInstances::read(aws, &verified).await?;
    let rollout = &amr.spec.rollout;
    // The watched alarms: one DescribeAlarms while some group is being verified.
    let alarms: Vec<AlarmView> = if rollout.alarms.is_empty() {
        Vec::new()
    } else {
        aws.alarm_states(&rollout.alarms)
            .await?
            .into_iter()
            .map(|a| AlarmView {
                firing: a.is_alarm(),
                name: a.name,
                state: a.state,
                reason: a.reason,
                since: a.since,
            })
            .collect()
    };
    let mut healthy = Vec::new();
    let mut unhealthy = Vec::new();
    for entry in entries
        .iter_mut()
        .filter(|e| e.phase == NodeGroupPhase::Verifying)
    {
        let group = groups.iter().find(|g| g.name == entry.name);
        let to = entry.to_image.as_deref().unwrap_or(target);
        // A managed group's instances on the target, from its Auto Scaling group.
        let managed_instances = match group {
            Some(g) if entry.kind == NodeGroupKind::Managed => instances.on(aws, g, to).await?,
            _ => None,
        };
        let subject = Subject {
            name: &entry.name,
            kind: entry.kind,
            target: to,
            desired: group.and_then(|g| g.desired).unwrap_or(0),
            instances: match &managed_instances {
                Some(instances) => instances.as_slice(),
                None => group.map_or(&[][..], |g| g.instances.as_slice()),
            },
            by_instance: managed_instances.is_some(),
            done_at: entry.finished.as_ref().map_or(now, |t| t.0),
        };
        let verdict = judge(
            subject,
            &nodes,
            rollout.bake_time.as_ref().map(|d| d.as_std()),
            rollout.health_timeout.as_std(),
            now,
        );
        let started = entry.started.as_ref().map_or(subject.done_at, |t| t.0);
        let timed_out = jiff::SignedDuration::try_from(rollout.health_timeout.as_std())
            .ok()
            .and_then(|d| subject.done_at.checked_add(d).ok())
            .is_some_and(|deadline| now >= deadline);
        let verdict = with_alarms(verdict, &rollout.alarms, &alarms, started, timed_out);
        let verdict = match rollout.max_unready_pods_percent {
            Some(max) => {
                let names: Vec<&str> = on_target(subject, &nodes)
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect();
                let pods = pods_on(&ctx.client, &names).await?;
                with_pods(verdict, &pods, max, timed_out)
            }
            None => verdict,
        };
        match verdict {
            Verdict::Healthy(health) => {
                let message = format!(
                    "runs {}: {} of {} nodes Ready{}",
                    subject.target,
                    health.ready,
                    health.desired,
                    if rollout.bake_time.is_some() {
                        ", baked"
                    } else {
                        ""
                    }
                );
                entry.phase = NodeGroupPhase::Succeeded;
                entry.health = Some(health);
                entry.message = Some(message.clone());
                healthy.push(entry.name.clone());
                let note = format!("{} {message}", entry.name);
                event(ctx, amr, EventType::Normal, "NodeGroupHealthy", &note).await;
            }
            Verdict::Waiting(health, message) => {
                entry.health = Some(health);
                entry.message = Some(message);
            }
            Verdict::Unhealthy(health, message, kind) => {
                entry.phase = NodeGroupPhase::Failed;
                entry.health = Some(health);
                entry.message = Some(message.clone());
                entry.failed_on = Some(kind);
                let note = format!(
                    "{}: not healthy on {} ({}): {message}",
                    entry.name,
                    subject.target,
                    verdict_of(kind, &rollout.quarantine_on)
                );
                event(ctx, amr, EventType::Warning, "NodeGroupUnhealthy", &note).await;
                unhealthy.push(Against {
                    image: subject.target.to_owned(),
                    evidence: format!("{}: {message}", entry.name),
                    kind,
                });
            }
        }
    }
    Ok((healthy, unhealthy))
}

/// Brings an `Updating` entry up to date with AWS.
pub(crate) async fn poll(
    aws: &AwsClients,
    amr: &AMIRefresher,
    ctx: &Context,
    entry: &mut NodeGroupStatus,
    now: Timestamp,
) -> Result<(), Error> {
    let cluster = &amr.spec.cluster_name;
    let (finished, success, detail) = match (entry.kind, entry.update_id.clone()) {
        (NodeGroupKind::Managed, Some(id)) => {
            let progress = aws.describe_update(cluster, &entry.name, &id).await?;
            let errors = progress.errors.join("; ");
            if entry.update_type == Some(UpdateType::ConfigUpdate) {
                if !progress.is_finished() {
                    return Ok(());
                }
                if progress.is_successful() {
                    // The node group takes the new updateConfig; now its version update.
                    return start_version_update(aws, amr, ctx, entry, progress.created).await;
                }
                (
                    true,
                    false,
                    format!(
                        "changing the node group's updateConfig failed ({}): {errors}",
                        progress.status
                    ),
                )
            } else {
                (progress.is_finished(), progress.is_successful(), errors)
            }
        }
        (NodeGroupKind::Managed, None) => {
            // An entry of an older status without an update id: follow the group itself.
            let group = aws.describe_nodegroup(cluster, &entry.name).await?;
            let version = group.launch_template.map(|t| t.version);
            let arrived = version.is_some() && version == entry.to_version;
            (
                group.status != "UPDATING",
                arrived,
                format!(
                    "node group is {} at version {}",
                    group.status,
                    version.unwrap_or_default()
                ),
            )
        }
        (NodeGroupKind::SelfManaged, Some(id)) => {
            let progress = aws.describe_instance_refresh(&entry.name, &id).await?;
            if !progress.is_finished() {
                if let Some(percent) = progress.percentage_complete {
                    let moving = if entry.phase == NodeGroupPhase::RollingBack {
                        "going back"
                    } else {
                        "moving"
                    };
                    entry.message = Some(format!(
                        "{moving} to {} (instance refresh {percent}% done)",
                        heading(entry)
                    ));
                }
                return Ok(());
            }
            let reason = progress.reason.clone().unwrap_or_default();
            (
                true,
                progress.is_successful(),
                format!("instance refresh {}: {reason}", progress.status),
            )
        }
        (NodeGroupKind::SelfManaged, None) => {
            (true, false, "no instance refresh was recorded".into())
        }
    };
    if !finished {
        return Ok(());
    }
    entry.finished = Some(Time(now));
    if entry.phase == NodeGroupPhase::RollingBack {
        crate::breaker::rolled_back(ctx, amr, entry, success, &detail).await;
        return Ok(());
    }
    if success && amr.spec.rollout.health_gate {
        // AWS only knows that instances launched: the cluster has the last word.
        entry.phase = NodeGroupPhase::Verifying;
        entry.message = Some(format!(
            "AWS finished moving to {}; verifying its nodes",
            entry.to_image.as_deref().unwrap_or_default()
        ));
        let message = format!(
            "{}: {}",
            entry.name,
            entry.message.as_deref().unwrap_or_default()
        );
        event(ctx, amr, EventType::Normal, "NodeGroupUpdated", &message).await;
    } else if success {
        entry.phase = NodeGroupPhase::Succeeded;
        entry.message = Some(format!(
            "runs {}",
            entry.to_image.as_deref().unwrap_or_default()
        ));
        let message = format!(
            "{} runs {}",
            entry.name,
            entry.to_image.as_deref().unwrap_or_default()
        );
        event(ctx, amr, EventType::Normal, "NodeGroupUpdated", &message).await;
    } else {
        entry.phase = NodeGroupPhase::Failed;
        entry.failed_on = Some(FailureEvidence::Update);
        entry.message = Some(if detail.is_empty() {
            "update failed".into()
        } else {
            detail
        });
        let message = format!(
            "{}: {}",
            entry.name,
            entry.message.as_deref().unwrap_or_default()
        );
        event(
            ctx,
            amr,
            EventType::Warning,
            "NodeGroupUpdateFailed",
            &message,
        )
        .await;
    }
    Ok(())
}

/// The AMI the group's running update moves it to: back to `fromImage` during a rollback.
fn heading(entry: &NodeGroupStatus) -> &str {
    if entry.phase == NodeGroupPhase::RollingBack {
        entry.from_image.as_deref().unwrap_or_default()
    } else {
        entry.to_image.as_deref().unwrap_or_default()
    }
}

/// Whether the failed version update of managed group `entry` implicates its new AMI: EKS
/// reports the health issue `NodeCreationFailure` ("your launched instances are unable to
/// register with your Amazon EKS cluster", EKS API reference, Issue), not a launch failure for
/// capacity (`AsgInstanceLaunchFailures`), an eviction failure or a permission. Returns the
/// evidence for the quarantine.
pub(crate) async fn implicates_image(
    aws: &AwsClients,
    amr: &AMIRefresher,
    entry: &NodeGroupStatus,
) -> Result<Option<String>, Error> {
    if entry.kind != NodeGroupKind::Managed
        || entry.phase != NodeGroupPhase::Failed
        || entry.update_type != Some(UpdateType::VersionUpdate)
    {
        return Ok(None);
    }
    let group = aws
        .describe_nodegroup(&amr.spec.cluster_name, &entry.name)
        .await?;
    Ok(group
        .health_issues
        .iter()
        .find(|(code, _)| code == "NodeCreationFailure")
        .map(|(code, message)| format!("{}: {code}: {message}", entry.name)))
}

/// Whether the group of `entry` no longer exists (a managed node group EKS does not know, an
/// Auto Scaling group Auto Scaling does not list).
pub(crate) async fn is_gone(
    aws: &AwsClients,
    cluster: &str,
    entry: &NodeGroupStatus,
) -> Result<bool, Error> {
    match entry.kind {
        NodeGroupKind::Managed => match aws.describe_nodegroup(cluster, &entry.name).await {
            Ok(_) => Ok(false),
            Err(opsy_aws::AwsError::NotFound { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        },
        NodeGroupKind::SelfManaged => Ok(aws
            .auto_scaling_groups(std::slice::from_ref(&entry.name))
            .await?
            .is_empty()),
    }
}
