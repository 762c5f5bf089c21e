//! Starting a group's update: a launch template version for the target, then
//! `UpdateNodegroupVersion` (after `UpdateNodegroupConfig` when `spec.refreshConfig` changes the
//! group's `updateConfig`) or an instance refresh; an update already running is adopted or
//! waited for.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use opsy_api::{
    AMIRefresher,
    ami_refresher::{NodeGroupKind, NodeGroupPhase, NodeGroupStatus, UpdateType},
};
use opsy_aws::{
    AwsClients, AwsError, autoscaling::RefreshSettings, eks::MaxUnavailable,
    launch_templates::TemplateRef,
};

use crate::{
    Error,
    plan::{Group, GroupImage},
    report::{Context, VERSION_DESCRIPTION, event},
};

/// The launch template version this operator made for `target` from `from`, if there is one
/// (the newest version, so a restart reuses it instead of adding another), or `from` itself
/// when it is the newest and already carries `target` (a self-managed group pointed at it
/// whose instances are not all replaced yet).
pub(crate) async fn existing_target_version(
    aws: &AwsClients,
    template_id: &str,
    from: i64,
    target: &str,
) -> Result<Option<i64>, AwsError> {
    let latest = aws
        .launch_template_version(&TemplateRef::Id(template_id.to_owned()), "$Latest")
        .await?;
    Ok(
        (latest.version >= from && latest.image_id.as_deref() == Some(target))
            .then_some(latest.version),
    )
}

/// The launch template version that runs `target`: the one this operator already made, else a
/// new one from `from`.
pub(crate) async fn target_version(
    aws: &AwsClients,
    template_id: &str,
    from: i64,
    target: &str,
) -> Result<i64, Error> {
    if let Some(version) = existing_target_version(aws, template_id, from, target).await? {
        return Ok(version);
    }
    let description = format!("{VERSION_DESCRIPTION}: {target}");
    Ok(aws
        .create_template_version_with_image(template_id, from, target, &description)
        .await?)
}

/// `spec.refreshConfig`'s `updateConfig` for managed groups, if it sets one.
pub(crate) fn wanted_update_config(spec: &opsy_api::AMIRefresherSpec) -> Option<MaxUnavailable> {
    let refresh = spec.refresh_config.clone().unwrap_or_default();
    refresh
        .max_unavailable
        .map(MaxUnavailable::Count)
        .or(refresh
            .max_unavailable_percentage
            .map(MaxUnavailable::Percentage))
}

/// Leaves `entry` waiting for an update that someone else runs on the group.
pub(crate) fn wait_for_theirs(entry: &mut NodeGroupStatus, what: &str) {
    entry.phase = NodeGroupPhase::Pending;
    entry.update_id = None;
    entry.update_type = None;
    entry.started = None;
    entry.message = Some(format!(
        "waiting: {what}, started outside this operator, is still running"
    ));
}

/// Records in `entry` that update `id` of type `kind` runs for it.
pub(crate) fn updating(entry: &mut NodeGroupStatus, id: String, kind: UpdateType, message: String) {
    entry.update_id = Some(id);
    entry.update_type = Some(kind);
    entry.phase = NodeGroupPhase::Updating;
    entry.message = Some(message);
}

/// Starts the version update of a managed group whose entry names the template version, once
/// its config update (created at `after`, seconds since the epoch, as EKS reports it) has
/// succeeded. A version update to that template version created since then is this operator's
/// own, started by a process that crashed before recording it: it is adopted, running or ended,
/// never issued a second time (which would replace every node of the group again).
pub(crate) async fn start_version_update(
    aws: &AwsClients,
    amr: &AMIRefresher,
    ctx: &Context,
    entry: &mut NodeGroupStatus,
    after: Option<i64>,
) -> Result<(), Error> {
    let cluster = &amr.spec.cluster_name;
    let force = force(&amr.spec);
    let (Some(template_id), Some(version)) = (
        entry.launch_template_id.clone(),
        entry
            .to_version
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok()),
    ) else {
        entry.phase = NodeGroupPhase::Failed;
        entry.message = Some("status lost the launch template version to move to".into());
        return Ok(());
    };
    let target = entry.to_image.clone().unwrap_or_default();
    let issued = aws
        .updates(cluster, &entry.name)
        .await?
        .into_iter()
        .rev()
        .find(|u| {
            u.template_version(&template_id) == Some(version)
                && after.is_some_and(|after| u.created.is_some_and(|c| c >= after))
        });
    if let Some(update) = issued {
        updating(
            entry,
            update.id.clone(),
            UpdateType::VersionUpdate,
            format!(
                "moving to {target} (launch template version {version}): following update {} found {}",
                update.id,
                if update.is_finished() {
                    "ended"
                } else {
                    "running"
                }
            ),
        );
        return Ok(());
    }
    match aws
        .update_nodegroup_version(cluster, &entry.name, &template_id, version, force)
        .await
    {
        Ok(id) => {
            updating(
                entry,
                id,
                UpdateType::VersionUpdate,
                format!("moving to {target} (launch template version {version})"),
            );
            let version = version.to_string();
            update_started(ctx, amr, &entry.name, &target, &template_id, &version).await;
            Ok(())
        }
        // Someone else's update got in first: try again on the next poll.
        Err(AwsError::Conflict { message, .. }) => {
            entry.message = Some(format!(
                "updateConfig changed; the version update waits for the node group: {message}"
            ));
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts the update of one group and records it in `entry`. An update that runs already is
/// adopted when it is this operator's (its start was not recorded: a crash) and waited for when
/// it is someone else's.
pub(crate) async fn start(
    aws: &AwsClients,
    amr: &AMIRefresher,
    ctx: &Context,
    group: &Group,
    entry: &mut NodeGroupStatus,
    target: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let GroupImage::Runs {
        template_id,
        version,
        ..
    } = &group.image
    else {
        return Ok(());
    };
    let spec = &amr.spec;
    let cluster = &spec.cluster_name;
    entry.to_image = Some(target.to_owned());
    entry.finished = None;
    match group.kind {
        NodeGroupKind::Managed => {
            if group.busy {
                let ours = existing_target_version(aws, template_id, *version, target).await?;
                let running = aws.running_updates(cluster, &group.name).await?;
                let wanted = wanted_update_config(spec);
                let mine = running.iter().find(|u| {
                    (ours.is_some() && u.template_version(template_id) == ours)
                        || (u.kind == "ConfigUpdate" && wanted.is_some_and(|w| w.matches(u)))
                });
                if let Some(update) = mine {
                    let kind = if update.kind == "ConfigUpdate" {
                        UpdateType::ConfigUpdate
                    } else {
                        UpdateType::VersionUpdate
                    };
                    // The version update follows the config update: it needs its version.
                    let to_version = match ours {
                        Some(v) => v,
                        None => target_version(aws, template_id, *version, target).await?,
                    };
                    entry.to_version = Some(to_version.to_string());
                    entry.started = Some(Time(now));
                    updating(
                        entry,
                        update.id.clone(),
                        kind,
                        format!(
                            "moving to {target}: following update {} found running",
                            update.id
                        ),
                    );
                    return Ok(());
                }
                let what = running
                    .first()
                    .map(|u| format!("update {} ({})", u.id, u.kind))
                    .unwrap_or_else(|| "an update of the node group".to_owned());
                wait_for_theirs(entry, &what);
                return Ok(());
            }
            let to_version = target_version(aws, template_id, *version, target).await?;
            entry.to_version = Some(to_version.to_string());
            entry.started = Some(Time(now));
            if let Some(wanted) = wanted_update_config(spec) {
                let current = aws
                    .describe_nodegroup(cluster, &group.name)
                    .await?
                    .max_unavailable;
                if current != Some(wanted) {
                    // EKS runs one update of a group at a time: the version update starts when
                    // this one has ended (see `poll`).
                    match aws
                        .update_nodegroup_config(cluster, &group.name, wanted)
                        .await
                    {
                        Ok(id) => {
                            updating(
                                entry,
                                id,
                                UpdateType::ConfigUpdate,
                                format!(
                                    "setting updateConfig to {wanted} before moving to {target}"
                                ),
                            );
                            return Ok(());
                        }
                        Err(AwsError::Conflict { message, .. }) => {
                            wait_for_theirs(entry, &format!("another update ({message})"));
                            return Ok(());
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            match aws
                .update_nodegroup_version(
                    cluster,
                    &group.name,
                    template_id,
                    to_version,
                    force(spec),
                )
                .await
            {
                Ok(id) => updating(
                    entry,
                    id,
                    UpdateType::VersionUpdate,
                    format!("moving to {target} (launch template version {to_version})"),
                ),
                Err(AwsError::Conflict { message, .. }) => {
                    wait_for_theirs(entry, &format!("another update ({message})"));
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        NodeGroupKind::SelfManaged => {
            let to_version = target_version(aws, template_id, *version, target).await?;
            entry.to_version = Some(to_version.to_string());
            entry.started = Some(Time(now));
            let settings = refresh_settings(spec);
            match aws
                .start_instance_refresh(&group.name, template_id, to_version, &settings)
                .await
            {
                Ok(id) => updating(
                    entry,
                    id,
                    UpdateType::InstanceRefresh,
                    format!("moving to {target} (launch template version {to_version})"),
                ),
                Err(AwsError::Conflict { .. }) => {
                    let running = aws.running_instance_refreshes(&group.name).await?;
                    let version = to_version.to_string();
                    let mine = running.iter().find(|r| {
                        r.desired.as_ref().is_some_and(|d| {
                            d.id.as_deref() == Some(template_id.as_str()) && d.version == version
                        })
                    });
                    match mine {
                        Some(refresh) => updating(
                            entry,
                            refresh.id.clone(),
                            UpdateType::InstanceRefresh,
                            format!(
                                "moving to {target}: following instance refresh {} found running",
                                refresh.id
                            ),
                        ),
                        None => {
                            let what = running
                                .first()
                                .map(|r| format!("instance refresh {}", r.id))
                                .unwrap_or_else(|| "an instance refresh".to_owned());
                            wait_for_theirs(entry, &what);
                        }
                    }
                    return Ok(());
                }
                // AWS refused these settings for this group (e.g. autoRollback on a group that
                // uses $Latest): the group fails with AWS's reason; the others go on.
                Err(AwsError::InvalidRequest { message, .. }) => {
                    entry.phase = NodeGroupPhase::Failed;
                    entry.finished = Some(Time(now));
                    entry.message = Some(format!("StartInstanceRefresh refused: {message}"));
                    let note = format!(
                        "{}: {}",
                        group.name,
                        entry.message.as_deref().unwrap_or_default()
                    );
                    event(ctx, amr, EventType::Warning, "NodeGroupUpdateFailed", &note).await;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let version = entry.to_version.as_deref().unwrap_or_default();
    update_started(ctx, amr, &group.name, target, template_id, version).await;
    Ok(())
}

/// The Normal Event of a started update.
pub(crate) async fn update_started(
    ctx: &Context,
    amr: &AMIRefresher,
    group: &str,
    target: &str,
    template_id: &str,
    version: &str,
) {
    let message =
        format!("{group}: moving to {target} with launch template {template_id} version {version}");
    event(
        ctx,
        amr,
        EventType::Normal,
        "NodeGroupUpdateStarted",
        &message,
    )
    .await;
}

/// `spec.selfManaged`'s instance refresh preferences.
pub(crate) fn refresh_settings(spec: &opsy_api::AMIRefresherSpec) -> RefreshSettings {
    RefreshSettings {
        min_healthy_percentage: spec.self_managed.min_healthy_percentage,
        instance_warmup: spec
            .self_managed
            .instance_warmup
            .as_ref()
            .map(|d| i32::try_from(d.as_std().as_secs()).unwrap_or(i32::MAX)),
        skip_matching: spec.self_managed.skip_matching,
        auto_rollback: spec.self_managed.auto_rollback,
    }
}

/// Whether EKS may evict pods whatever their disruption budgets say: `refreshConfig.force`, or
/// `rollout.pdbPolicy: force`.
pub(crate) fn force(spec: &opsy_api::AMIRefresherSpec) -> bool {
    spec.refresh_config.as_ref().is_some_and(|c| c.force)
        || spec.rollout.pdb_policy == opsy_api::ami_refresher::PdbPolicy::Force
}
