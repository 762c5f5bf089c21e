//! The circuit breaker's actions: quarantine of an AMI whose nodes failed the health gate, and
//! (with `rollout.onFailure: rollback`) the return of the groups it moved; and its counterpart,
//! the soak evidence of an AMI that rolled out healthy.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::events::EventType};
use opsy_api::{
    AMIRefresher,
    ami_refresher::{
        EvidenceKind, NodeGroupKind, NodeGroupPhase, NodeGroupStatus, PendingEvidence, UpdateType,
    },
    tags,
};
use opsy_aws::{AwsClients, AwsError, autoscaling::RefreshSettings};

use crate::{
    Error,
    plan::{Group, GroupImage},
    report::{Context, VERSION_DESCRIPTION, event},
    start::{force, refresh_settings},
};

/// The circuit breaker: the target's nodes failed the health gate, so the AMI (if it is a
/// managed one) is quarantined — tagged and EC2-deprecated — so that no AMIRefresher selects it
/// again and its PackerBuilder builds anew. A write that fails is returned as evidence still to
/// be written (status `pendingEvidence`, written again at each reconcile); the rollout is
/// halted either way.
pub(crate) async fn quarantine(
    ctx: &Context,
    amr: &AMIRefresher,
    aws: &AwsClients,
    chosen: Option<&opsy_aws::managed::Candidate>,
    image_id: &str,
    evidence: &[String],
    now: Timestamp,
) -> Option<PendingEvidence> {
    let reason = format!(
        "{}/{}: {}",
        amr.spec.cluster_name,
        amr.name_any(),
        evidence.join("; ")
    );
    let chosen = chosen
        .filter(|c| c.image.id == image_id)
        .map(|c| c.image.clone());
    let written = write_quarantine(aws, chosen, image_id, &reason, now).await;
    match written {
        Ok(Some(name)) => {
            let note = format!(
                "quarantined {image_id} ({name}): {}; no AMIRefresher will select it again and its PackerBuilder builds anew",
                evidence.join("; ")
            );
            event(ctx, amr, EventType::Warning, "AmiQuarantined", &note).await;
            None
        }
        // Not a managed AMI, already quarantined, or gone: nothing (more) to write.
        Ok(None) | Err(AwsError::NotFound { .. }) => None,
        Err(e) => {
            let note =
                format!("could not quarantine {image_id} (tried again at each reconcile): {e}");
            event(ctx, amr, EventType::Warning, "QuarantineFailed", &note).await;
            Some(PendingEvidence {
                image: image_id.to_owned(),
                kind: EvidenceKind::Quarantine,
                value: reason,
                error: e.to_string(),
                since: Time(now),
            })
        }
    }
}

/// Quarantines `image_id` (described as `image`, else read now) with `reason`, if it is a
/// managed AMI not quarantined already. Returns its name when it was quarantined now; an AMI
/// that is gone is `NotFound`.
async fn write_quarantine(
    aws: &AwsClients,
    image: Option<opsy_aws::Image>,
    image_id: &str,
    reason: &str,
    now: Timestamp,
) -> Result<Option<String>, AwsError> {
    let image = match image {
        Some(image) => image,
        None => match aws
            .describe_images(&opsy_aws::ImageQuery::default().ids([image_id]))
            .await?
            .first()
        {
            Some(image) => image.clone(),
            // Gone: nothing launches it any more.
            None => {
                return Err(AwsError::NotFound {
                    service: "ec2",
                    operation: "DescribeImages",
                    code: "InvalidAMIID.NotFound".into(),
                    message: format!("{image_id} no longer exists"),
                });
            }
        },
    };
    // A quarantine a crash cut short (tagged, not yet EC2-deprecated) is finished.
    if image.tag(tags::BROUGHT_TO_YOU_BY) != Some(tags::BROUGHT_TO_YOU_BY_VALUE)
        || (image.tag(tags::STATUS) == Some(tags::STATUS_QUARANTINED)
            && image.deprecation_time.is_some())
    {
        return Ok(None);
    }
    let at = now
        .checked_add(jiff::SignedDuration::from_secs(60))
        .unwrap_or(now);
    aws.quarantine_image(&image.id, reason, at).await?;
    Ok(Some(image.name))
}

/// The soak evidence: the rollout of `image` (a managed AMI) to this cluster is complete and
/// healthy, recorded on it as `key` (`healthy-on/<account>/<cluster>`) = `now`, once (an AMI that carries the tag
/// keeps its first time). A write that fails is returned as evidence still to be written.
pub(crate) async fn record_healthy(
    ctx: &Context,
    amr: &AMIRefresher,
    aws: &AwsClients,
    key: &str,
    image: &opsy_aws::Image,
    now: Timestamp,
) -> Option<PendingEvidence> {
    if image.tag(tags::BROUGHT_TO_YOU_BY) != Some(tags::BROUGHT_TO_YOU_BY_VALUE)
        || image.tag(key).is_some()
    {
        return None;
    }
    let since = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let tags = std::collections::BTreeMap::from([(key.to_owned(), since.clone())]);
    match aws.tag_image(&image.id, &tags).await {
        Ok(()) => None,
        Err(e) => {
            let note = format!(
                "could not record {key} on {} (tried again at each reconcile): {e}",
                image.id
            );
            event(ctx, amr, EventType::Warning, "SoakEvidenceFailed", &note).await;
            Some(PendingEvidence {
                image: image.id.clone(),
                kind: EvidenceKind::HealthyOn,
                value: since,
                error: e.to_string(),
                since: Time(now),
            })
        }
    }
}

/// Writes each evidence of `pending` again; returns what still did not land. Evidence on an
/// AMI that is gone is dropped.
pub(crate) async fn write_pending(
    ctx: &Context,
    amr: &AMIRefresher,
    aws: &AwsClients,
    key: &str,
    pending: Vec<PendingEvidence>,
    now: Timestamp,
) -> Vec<PendingEvidence> {
    let mut left = Vec::new();
    for mut item in pending {
        let written = match item.kind {
            EvidenceKind::Quarantine => write_quarantine(aws, None, &item.image, &item.value, now)
                .await
                .map(|_| ()),
            EvidenceKind::HealthyOn => {
                let tags = std::collections::BTreeMap::from([(key.to_owned(), item.value.clone())]);
                aws.tag_image(&item.image, &tags).await
            }
        };
        match written {
            Ok(()) => {
                let what = match item.kind {
                    EvidenceKind::Quarantine => {
                        format!("quarantined {}: {}", item.image, item.value)
                    }
                    EvidenceKind::HealthyOn => format!("recorded {key} on {}", item.image),
                };
                let note = format!("{what} (after an earlier attempt failed: {})", item.error);
                event(ctx, amr, EventType::Normal, "EvidenceRecorded", &note).await;
            }
            Err(AwsError::NotFound { .. }) => {
                tracing::info!(image = %item.image, "the AMI of pending evidence is gone");
            }
            Err(e) => {
                item.error = e.to_string();
                left.push(item);
            }
        }
    }
    left
}

/// Adds `item` to `pending`, replacing an older one of the same AMI and kind.
pub(crate) fn remember(pending: &mut Vec<PendingEvidence>, item: PendingEvidence) {
    pending.retain(|p| !(p.image == item.image && p.kind == item.kind));
    pending.insert(0, item);
    pending.truncate(20);
}

/// The running version update of managed group `group` that moves it to a version of
/// `template_id` carrying `image`: `(version, update id)`.
async fn running_rollback(
    aws: &AwsClients,
    cluster: &str,
    group: &str,
    template_id: &str,
    image: &str,
) -> Result<Option<(i64, String)>, Error> {
    for update in aws.running_updates(cluster, group).await? {
        let Some(version) = update.template_version(template_id) else {
            continue;
        };
        let carries = aws
            .launch_template_version(
                &opsy_aws::launch_templates::TemplateRef::Id(template_id.to_owned()),
                &version.to_string(),
            )
            .await?
            .image_id;
        if carries.as_deref() == Some(image) {
            return Ok(Some((version, update.id)));
        }
    }
    Ok(None)
}

/// Joins a rolled-back group's progress and the failure that sent it back.
const CAUSE: &str = "; it failed: ";

/// Starts the return of `group`, which this rollout moved (or tried to), to the launch template
/// version and AMI it ran before (`fromVersion`, `fromImage`), and records it in `entry`.
///
/// Managed groups go back with `UpdateNodegroupVersion` to `fromVersion`. EKS's API reference
/// (UpdateNodegroupVersion) says a node group cannot be rolled back "to an earlier Kubernetes
/// version or AMI version" — the EKS-chosen release versions; for a launch template it takes "a
/// different version" (User Guide, "Customize managed nodes with launch templates"). Should EKS
/// refuse the older number anyway, the group goes to a new version made from `fromVersion` that
/// carries `fromImage`: the same configuration under a higher number. Self-managed groups get an
/// instance refresh to `fromVersion` that replaces only the instances not already on it.
/// A rollback is started once: whatever happens, `rollbackVersion` is set.
pub(crate) async fn roll_back(
    aws: &AwsClients,
    amr: &AMIRefresher,
    ctx: &Context,
    group: &Group,
    entry: &mut NodeGroupStatus,
    now: Timestamp,
) -> Result<(), Error> {
    let (Some(from_image), Some(from_version)) = (
        entry.from_image.clone(),
        entry
            .from_version
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok()),
    ) else {
        return Ok(());
    };
    let GroupImage::Runs {
        image_id,
        others,
        template_id,
        version,
    } = &group.image
    else {
        let why = match &group.image {
            GroupImage::NotManageable { reason } => reason.as_str(),
            GroupImage::Runs { .. } => "",
        };
        return failed(
            ctx,
            amr,
            entry,
            from_version,
            &format!("cannot roll back: {why}"),
        )
        .await;
    };
    // The failure that tripped the breaker stays in the message of the group that failed.
    let cause = (entry.phase == NodeGroupPhase::Failed)
        .then(|| entry.message.clone())
        .flatten()
        .map(|m| format!("{CAUSE}{m}"))
        .unwrap_or_default();
    entry.rollback_version = Some(from_version.to_string());
    // A rollback is recognised by the image the group runs, not by the version number: it may
    // have gone through a new version (below) that a crashed process never recorded.
    if *image_id == from_image && others.is_empty() {
        entry.phase = NodeGroupPhase::RolledBack;
        entry.rollback_version = Some(version.to_string());
        entry.message = Some(if *version == from_version {
            // The failed update never moved it: nothing to undo.
            format!(
                "rolled back: still runs {from_image} (launch template version {from_version}), the failed update did not move it{cause}"
            )
        } else {
            format!(
                "rolled back: runs {from_image} again (launch template version {version}){cause}"
            )
        });
        return Ok(());
    }
    let cluster = &amr.spec.cluster_name;
    let started = match entry.kind {
        NodeGroupKind::Managed if group.busy => {
            // Ours, started by a process that crashed before recording it (an update to a
            // version that carries `fromImage`), is followed; anyone else's waited for.
            if let Some((version, id)) =
                running_rollback(aws, cluster, &group.name, template_id, &from_image).await?
            {
                Ok((version, id, UpdateType::VersionUpdate))
            } else {
                entry.rollback_version = None;
                entry.message = Some(format!(
                    "the rollback to {from_image} waits for the update running on the group"
                ));
                return Ok(());
            }
        }
        NodeGroupKind::Managed => {
            let force = force(&amr.spec);
            match aws
                .update_nodegroup_version(cluster, &group.name, template_id, from_version, force)
                .await
            {
                Ok(id) => Ok((from_version, id, UpdateType::VersionUpdate)),
                Err(AwsError::InvalidRequest { message, .. }) => {
                    tracing::info!(group = %group.name, %message, "EKS refused the earlier launch template version; rolling back with a new one");
                    let description = format!("{VERSION_DESCRIPTION}: rollback to {from_image}");
                    let again = async {
                        // The version a crashed process made for this rollback, else a new one.
                        let existing = crate::start::existing_target_version(
                            aws,
                            template_id,
                            *version,
                            &from_image,
                        )
                        .await?;
                        let version = match existing {
                            Some(version) => version,
                            None => {
                                aws.create_template_version_with_image(
                                    template_id,
                                    from_version,
                                    &from_image,
                                    &description,
                                )
                                .await?
                            }
                        };
                        let id = aws
                            .update_nodegroup_version(
                                cluster,
                                &group.name,
                                template_id,
                                version,
                                force,
                            )
                            .await?;
                        Ok::<_, AwsError>((version, id, UpdateType::VersionUpdate))
                    };
                    again.await
                }
                Err(e) => Err(e),
            }
        }
        NodeGroupKind::SelfManaged => {
            // Only the instances not on the previous configuration are replaced, and a
            // rollback is not rolled back.
            let settings = RefreshSettings {
                skip_matching: true,
                auto_rollback: false,
                ..refresh_settings(&amr.spec)
            };
            aws.start_instance_refresh(&group.name, template_id, from_version, &settings)
                .await
                .map(|id| (from_version, id, UpdateType::InstanceRefresh))
        }
    };
    match started {
        Ok((version, id, kind)) => {
            entry.phase = NodeGroupPhase::RollingBack;
            entry.rollback_version = Some(version.to_string());
            entry.update_id = Some(id);
            entry.update_type = Some(kind);
            entry.started = Some(Time(now));
            entry.finished = None;
            entry.message = Some(format!(
                "going back to {from_image} (launch template version {version}){cause}"
            ));
            let note = format!(
                "{}: rollout of {} failed; going back to {from_image} with launch template {template_id} version {version}",
                group.name,
                entry.to_image.as_deref().unwrap_or_default()
            );
            event(ctx, amr, EventType::Warning, "NodeGroupRollingBack", &note).await;
            Ok(())
        }
        // Someone else's update runs on the group: try again on the next poll.
        Err(AwsError::Conflict { message, .. }) => {
            entry.rollback_version = None;
            entry.message = Some(format!(
                "the rollback to {from_image} waits for the group: {message}"
            ));
            Ok(())
        }
        Err(e @ (AwsError::InvalidRequest { .. } | AwsError::NotFound { .. })) => {
            failed(
                ctx,
                amr,
                entry,
                from_version,
                &format!("rollback refused: {e}"),
            )
            .await
        }
        Err(e) => {
            entry.rollback_version = None;
            Err(e.into())
        }
    }
}

/// The rollback of `entry` could not start: it stays failed, with why.
async fn failed(
    ctx: &Context,
    amr: &AMIRefresher,
    entry: &mut NodeGroupStatus,
    from_version: i64,
    why: &str,
) -> Result<(), Error> {
    entry.phase = NodeGroupPhase::Failed;
    entry.rollback_version = Some(from_version.to_string());
    entry.message = Some(why.to_owned());
    let note = format!("{}: {why}", entry.name);
    event(ctx, amr, EventType::Warning, "RollbackFailed", &note).await;
    Ok(())
}

/// Records the end of `entry`'s rollback.
pub(crate) async fn rolled_back(
    ctx: &Context,
    amr: &AMIRefresher,
    entry: &mut NodeGroupStatus,
    success: bool,
    detail: &str,
) {
    let from = entry.from_image.clone().unwrap_or_default();
    let cause = entry
        .message
        .as_deref()
        .and_then(|m| m.find(CAUSE).map(|at| m[at..].to_owned()))
        .unwrap_or_default();
    if success {
        entry.phase = NodeGroupPhase::RolledBack;
        entry.message = Some(format!(
            "rolled back: runs {from} again (launch template version {}){cause}",
            entry.rollback_version.as_deref().unwrap_or_default()
        ));
        let note = format!(
            "{}: {}",
            entry.name,
            entry.message.as_deref().unwrap_or_default()
        );
        event(ctx, amr, EventType::Normal, "NodeGroupRolledBack", &note).await;
    } else {
        entry.phase = NodeGroupPhase::Failed;
        entry.message = Some(format!("rollback to {from} failed: {detail}{cause}"));
        let note = format!(
            "{}: {}",
            entry.name,
            entry.message.as_deref().unwrap_or_default()
        );
        event(ctx, amr, EventType::Warning, "RollbackFailed", &note).await;
    }
}
