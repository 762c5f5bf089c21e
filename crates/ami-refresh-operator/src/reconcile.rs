//! The reconcile driver: select the target AMI → observe the cluster's groups → follow updates
//! in flight → [`plan`] → start the next wave → status and events. All rollout state lives in
//! status (per group: versions, images, update id, phase), so a restart resumes it.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Resource, ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use opsy_api::{
    AMIRefresher, AMIRefresherStatus, ImageRef,
    ami_refresher::{NodeGroupKind, NodeGroupPhase, NodeGroupStatus},
    conditions,
};
use opsy_aws::{
    AwsClients, AwsError,
    autoscaling::RefreshSettings,
    eks::{MaxUnavailable, NodeGroupImage},
    launch_templates::TemplateRef,
};

use opsy_notify::{Event as NotifyEvent, Message, ResourceRef};

use crate::{
    Error,
    plan::{Group, GroupImage, plan},
};

/// Field manager of every write.
pub const MANAGER: &str = "ami-refresh-operator";
/// Marks launch template versions this operator created.
const VERSION_DESCRIPTION: &str = "ami-refresh-operator";

pub use opsy_runtime::context::{Clock, Context};

/// Reconciles one AMIRefresher. Failures are also reported on the object.
pub async fn reconcile(amr: Arc<AMIRefresher>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let amr = match opsy_runtime::latest(&ctx.client, amr.as_ref()).await {
        Ok(Some(latest)) => Arc::new(latest),
        // Deleted since the event: nothing to do.
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => {
            let error = Error::from(e);
            ctx.metrics
                .reconciled(started.elapsed(), Some(error.category()));
            return Err(error);
        }
    };
    let result = Box::pin(reconcile_inner(amr.clone(), ctx.clone())).await;
    ctx.metrics.reconciled(
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    if let Err(error) = &result {
        let reason = match error {
            Error::Aws(AwsError::NotFound { .. }) => "ClusterNotFound",
            Error::Aws(AwsError::AccessDenied { .. }) => "AwsAccessDenied",
            _ => "ReconcileError",
        };
        let mut status = amr.status.clone().unwrap_or_default();
        let message = error.to_string();
        let unchanged = conditions::find(&status.conditions, conditions::DEGRADED)
            .is_some_and(|c| c.reason == reason && c.message == message);
        if !unchanged {
            let now = (ctx.clock)();
            set(
                &mut status,
                conditions::DEGRADED,
                true,
                reason,
                &message,
                now,
                amr.meta().generation,
            );
            set(
                &mut status,
                conditions::READY,
                false,
                reason,
                &message,
                now,
                amr.meta().generation,
            );
            event(&ctx, &amr, EventType::Warning, reason, &message).await;
            if let Err(e) = write_status(&ctx, &amr, &status).await {
                tracing::warn!(error = %e, "could not report the error in status");
            }
        }
    }
    result
}

async fn reconcile_inner(amr: Arc<AMIRefresher>, ctx: Arc<Context>) -> Result<Action, Error> {
    amr.namespace().ok_or(Error::MissingNamespace)?;
    let spec = &amr.spec;
    let now = (ctx.clock)();
    let generation = amr.meta().generation;
    let aws = ctx.aws.region(&spec.region).await;
    let mut status = amr.status.clone().unwrap_or_default();
    let spec_changed =
        status.observed_generation.is_some() && status.observed_generation != generation;
    let timer = spec.effective_controller_timer().as_std();

    // 1. Target.
    let selection = aws
        .select_target(
            spec.ami.as_deref(),
            spec.ami_filters.as_deref(),
            spec.effective_expires_in().as_std(),
            now,
        )
        .await?;
    let Some(target) = selection.chosen.clone() else {
        let what = match &spec.ami {
            Some(ami) => format!("spec.ami {ami} is not eligible"),
            None => "no AMI matching spec.amiFilters is eligible".to_owned(),
        };
        let message = format!("{what}: {}", selection.explain());
        let was =
            conditions::find(&status.conditions, conditions::DEGRADED).map(|c| c.reason.clone());
        set(
            &mut status,
            conditions::READY,
            false,
            "NoEligibleAmi",
            &message,
            now,
            generation,
        );
        set(
            &mut status,
            conditions::PROGRESSING,
            false,
            "NoEligibleAmi",
            &message,
            now,
            generation,
        );
        set(
            &mut status,
            conditions::DEGRADED,
            true,
            "NoEligibleAmi",
            &message,
            now,
            generation,
        );
        if was.as_deref() != Some("NoEligibleAmi") {
            event(&ctx, &amr, EventType::Warning, "NoEligibleAmi", &message).await;
        }
        status.observed_generation = generation;
        status.last_checked = Some(Time(now));
        write_status(&ctx, &amr, &status).await?;
        return Ok(Action::requeue(timer));
    };
    let target_id = target.image.id.clone();
    let new_target =
        status.target_image.as_ref().map(|t| t.id.as_str()) != Some(target_id.as_str());
    status.target_image = Some(ImageRef {
        id: target_id.clone(),
        name: Some(target.image.name.clone()),
        created: target.created.map(Time),
        expires: target.expires.map(Time),
    });

    // 2. Follow updates in flight (before observing, so a group that just finished is seen
    //    on its new version).
    let mut previous = status.node_groups.clone();
    let mut finished = Vec::new();
    for entry in previous
        .iter_mut()
        .filter(|e| e.phase == NodeGroupPhase::Updating)
    {
        poll(&aws, &amr, &ctx, entry, now).await?;
        if entry.phase == NodeGroupPhase::Succeeded {
            finished.push(entry.name.clone());
        }
    }

    // 3. Groups.
    let groups = observe_groups(&aws, &amr).await?;

    // 4. Plan and start the next wave.
    let mut plan = plan(spec, &target_id, &groups, &previous, spec_changed);
    for name in plan.start.clone() {
        let Some(group) = groups.iter().find(|g| g.name == name) else {
            continue;
        };
        let Some(entry) = plan.groups.iter_mut().find(|e| e.name == name) else {
            continue;
        };
        start(&aws, &amr, &ctx, group, entry, &target_id, now).await?;
    }
    if new_target && !plan.start.is_empty() {
        let message = format!("rolling out {target_id} ({})", target.image.name);
        event(&ctx, &amr, EventType::Normal, "RolloutStarted", &message).await;
    }
    if !plan.unknown.is_empty() && plan.unknown != status.unknown_groups {
        let message = format!(
            "spec.exclude or spec.rollout.canary name groups that the cluster does not have: {}",
            plan.unknown.join(", ")
        );
        event(
            &ctx,
            &amr,
            EventType::Warning,
            "UnknownNodeGroups",
            &message,
        )
        .await;
    }
    status.unknown_groups = std::mem::take(&mut plan.unknown);

    // 5. Status.
    let count = |phase: NodeGroupPhase| plan.groups.iter().filter(|g| g.phase == phase).count();
    let managed = plan
        .groups
        .iter()
        .filter(|g| !matches!(g.phase, NodeGroupPhase::Excluded | NodeGroupPhase::Skipped))
        .count();
    let done = count(NodeGroupPhase::UpToDate) + count(NodeGroupPhase::Succeeded);
    let updating = count(NodeGroupPhase::Updating);
    let failed: Vec<&NodeGroupStatus> = plan
        .groups
        .iter()
        .filter(|g| g.phase == NodeGroupPhase::Failed)
        .collect();
    status.progress = Some(format!("{done}/{managed} on target"));
    if failed.is_empty() {
        set(
            &mut status,
            conditions::DEGRADED,
            false,
            "NoFailures",
            "no node group update failed",
            now,
            generation,
        );
    } else {
        let names: Vec<String> = failed
            .iter()
            .map(|g| format!("{} ({})", g.name, g.message.as_deref().unwrap_or("failed")))
            .collect();
        let message = if plan.halted {
            format!(
                "rollout halted: {}; fix the cause, then change the spec to resume",
                names.join("; ")
            )
        } else {
            format!("failed: {}", names.join("; "))
        };
        let was =
            conditions::find(&status.conditions, conditions::DEGRADED).map(|c| c.reason.clone());
        let reason = if plan.halted {
            "RolloutHalted"
        } else {
            "NodeGroupFailed"
        };
        set(
            &mut status,
            conditions::DEGRADED,
            true,
            reason,
            &message,
            now,
            generation,
        );
        if was.as_deref() != Some(reason) {
            event(&ctx, &amr, EventType::Warning, reason, &message).await;
        }
    }
    let ready = done == managed;
    let was_ready = conditions::find(&status.conditions, conditions::READY)
        .is_some_and(|c| c.status == conditions::TRUE);
    if ready {
        let message = format!("{done} node group(s) run {target_id}");
        set(
            &mut status,
            conditions::READY,
            true,
            "RolledOut",
            &message,
            now,
            generation,
        );
        set(
            &mut status,
            conditions::PROGRESSING,
            false,
            "RolledOut",
            &message,
            now,
            generation,
        );
        if !was_ready {
            event(&ctx, &amr, EventType::Normal, "RolloutSucceeded", &message).await;
        }
    } else {
        let message = format!("{done}/{managed} node groups on {target_id}, {updating} updating");
        set(
            &mut status,
            conditions::READY,
            false,
            "RollingOut",
            &message,
            now,
            generation,
        );
        let progressing = updating > 0 || (!plan.halted && !spec.suspend);
        let reason = if spec.suspend {
            "Suspended"
        } else if plan.halted {
            "RolloutHalted"
        } else {
            "RollingOut"
        };
        set(
            &mut status,
            conditions::PROGRESSING,
            progressing,
            reason,
            &message,
            now,
            generation,
        );
    }
    // One notification per reconcile, the most important transition.
    let notification = if plan.halted {
        Some((
            format!(
                "RolloutHalted:{target_id}:{}",
                generation.unwrap_or_default()
            ),
            NotifyEvent::RolloutHalted,
        ))
    } else if ready && !was_ready {
        Some((
            format!("RolloutSucceeded:{target_id}"),
            NotifyEvent::RolloutSucceeded,
        ))
    } else if new_target && !plan.start.is_empty() {
        Some((
            format!("RolloutStarted:{target_id}"),
            NotifyEvent::RolloutStarted,
        ))
    } else if !finished.is_empty() {
        Some((
            format!("NodeGroupUpdated:{target_id}:{}", finished.join(",")),
            NotifyEvent::NodeGroupUpdated,
        ))
    } else {
        None
    };
    if let Some((key, kind)) = notification {
        let degraded =
            conditions::find(&status.conditions, conditions::DEGRADED).map(|c| c.message.clone());
        let mut message = Message::new(
            kind,
            ResourceRef {
                kind: "AMIRefresher".into(),
                namespace: amr.namespace().unwrap_or_default(),
                name: amr.name_any(),
            },
            &spec.cluster_name,
            &spec.region,
            status.progress.clone().unwrap_or_default(),
        )
        .fact("Target AMI", target_id.clone())
        .fact(
            "Node groups",
            plan.groups
                .iter()
                .map(|g| format!("{} {:?}", g.name, g.phase))
                .collect::<Vec<_>>()
                .join(", "),
        )
        .at(now);
        if kind == NotifyEvent::RolloutHalted
            && let Some(reason) = degraded
        {
            message = message.reason(reason);
        }
        let setup = opsy_notify::Setup {
            client: ctx.client.clone(),
            aws: ctx.aws.clone(),
            slack_api: ctx.slack_api.clone(),
        };
        let namespace = amr.namespace().unwrap_or_default();
        let errors = setup
            .send_once(
                &namespace,
                &spec.region,
                spec.notifier.as_ref(),
                &mut status.last_notified,
                &key,
                message,
            )
            .await;
        let failures: Vec<String> = errors.iter().map(ToString::to_string).collect();
        if let Some(message) =
            conditions::record_delivery(&mut status.conditions, &key, &failures, now, generation)
        {
            event(
                &ctx,
                &amr,
                EventType::Warning,
                "NotificationFailed",
                &message,
            )
            .await;
        }
    }

    status.node_groups = plan.groups;
    status.observed_generation = generation;
    status.last_checked = Some(Time(now));
    write_status(&ctx, &amr, &status).await?;
    ctx.failures.record_success(amr.as_ref());
    Ok(Action::requeue(if updating > 0 {
        ctx.poll_interval
    } else {
        timer
    }))
}

/// The cluster's managed node groups and (when enabled) self-managed Auto Scaling groups.
pub async fn observe_groups(aws: &AwsClients, amr: &AMIRefresher) -> Result<Vec<Group>, Error> {
    let cluster = &amr.spec.cluster_name;
    let mut groups = Vec::new();
    for name in aws.list_nodegroups(cluster).await? {
        let group = aws.describe_nodegroup(cluster, &name).await?;
        let image = match aws.nodegroup_image(&group).await? {
            NodeGroupImage::NoLaunchTemplate { ami_type } => GroupImage::NotManageable {
                reason: format!(
                    "no launch template: EKS chooses its AMI (amiType {})",
                    ami_type.as_deref().unwrap_or("unknown")
                ),
            },
            NodeGroupImage::TemplateWithoutImage { template } => GroupImage::NotManageable {
                reason: format!(
                    "launch template {} version {} sets no ImageId: EKS chooses its AMI",
                    template.template_id, template.version
                ),
            },
            NodeGroupImage::Image { template, image_id } => GroupImage::Runs {
                image_id,
                template_id: template.template_id,
                version: template.version,
            },
        };
        groups.push(Group {
            name,
            kind: NodeGroupKind::Managed,
            image,
        });
    }
    if amr.spec.self_managed.enabled {
        for asg in aws.cluster_auto_scaling_groups(cluster).await? {
            let image = match (&asg.launch_template, asg.mixed_instances) {
                (_, true) => GroupImage::NotManageable {
                    reason: "uses a mixed instances policy, which this operator does not update"
                        .into(),
                },
                (None, false) => GroupImage::NotManageable {
                    reason: "has no launch template (launch configurations are not supported)"
                        .into(),
                },
                (Some(t), false) => {
                    let reference = match (&t.id, &t.name) {
                        (Some(id), _) => TemplateRef::Id(id.clone()),
                        (None, Some(name)) => TemplateRef::Name(name.clone()),
                        (None, None) => TemplateRef::Id(String::new()),
                    };
                    let version = aws.launch_template_version(&reference, &t.version).await?;
                    match version.image_id.clone() {
                        Some(image_id) => GroupImage::Runs {
                            image_id,
                            template_id: version.template_id,
                            version: version.version,
                        },
                        None => GroupImage::NotManageable {
                            reason: format!(
                                "launch template {} sets no ImageId",
                                version.template_id
                            ),
                        },
                    }
                }
            };
            groups.push(Group {
                name: asg.name,
                kind: NodeGroupKind::SelfManaged,
                image,
            });
        }
    }
    Ok(groups)
}

/// Brings an `Updating` entry up to date with AWS.
async fn poll(
    aws: &AwsClients,
    amr: &AMIRefresher,
    ctx: &Context,
    entry: &mut NodeGroupStatus,
    now: Timestamp,
) -> Result<(), Error> {
    let cluster = &amr.spec.cluster_name;
    let (finished, success, detail) = match (entry.kind, entry.update_id.as_deref()) {
        (NodeGroupKind::Managed, Some(id)) => {
            let progress = aws.describe_update(cluster, &entry.name, id).await?;
            (
                progress.is_finished(),
                progress.is_successful(),
                progress.errors.join("; "),
            )
        }
        (NodeGroupKind::Managed, None) => {
            // An update found running after a restart: follow the group itself.
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
            let progress = aws.describe_instance_refresh(&entry.name, id).await?;
            (
                progress.is_finished(),
                progress.is_successful(),
                progress.reason.unwrap_or_default(),
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
    if success {
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

/// The launch template version that runs `target`: the newest version when this operator
/// already made it (a restart must not add another), else a new one from `from`.
async fn target_version(
    aws: &AwsClients,
    template_id: &str,
    from: i64,
    target: &str,
) -> Result<i64, Error> {
    let latest = aws
        .launch_template_version(&TemplateRef::Id(template_id.to_owned()), "$Latest")
        .await?;
    if latest.version > from && latest.image_id.as_deref() == Some(target) {
        return Ok(latest.version);
    }
    let description = format!("{VERSION_DESCRIPTION}: {target}");
    Ok(aws
        .create_template_version_with_image(template_id, from, target, &description)
        .await?)
}

/// Starts the update of one group and records it in `entry`.
async fn start(
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
    let to_version = target_version(aws, template_id, *version, target).await?;
    entry.to_version = Some(to_version.to_string());
    entry.to_image = Some(target.to_owned());
    entry.started = Some(Time(now));
    entry.finished = None;
    let started = match group.kind {
        NodeGroupKind::Managed => {
            let refresh = spec.refresh_config.clone().unwrap_or_default();
            let wanted = refresh
                .max_unavailable
                .map(MaxUnavailable::Count)
                .or(refresh
                    .max_unavailable_percentage
                    .map(MaxUnavailable::Percentage));
            if let Some(wanted) = wanted {
                let current = aws
                    .describe_nodegroup(cluster, &group.name)
                    .await?
                    .max_unavailable;
                if current != Some(wanted) {
                    aws.update_nodegroup_config(cluster, &group.name, wanted)
                        .await?;
                }
            }
            aws.update_nodegroup_version(
                cluster,
                &group.name,
                template_id,
                to_version,
                refresh.force,
            )
            .await
        }
        NodeGroupKind::SelfManaged => {
            aws.set_group_template_version(&group.name, template_id, to_version)
                .await?;
            let settings = RefreshSettings {
                min_healthy_percentage: spec.self_managed.min_healthy_percentage,
                instance_warmup: spec
                    .self_managed
                    .instance_warmup
                    .as_ref()
                    .map(|d| i32::try_from(d.as_std().as_secs()).unwrap_or(i32::MAX)),
                skip_matching: spec.self_managed.skip_matching,
                auto_rollback: spec.self_managed.auto_rollback,
            };
            aws.start_instance_refresh(&group.name, &settings).await
        }
    };
    match started {
        Ok(id) => {
            entry.update_id = Some(id);
            entry.phase = NodeGroupPhase::Updating;
            entry.message = Some(format!(
                "moving to {target} (launch template version {to_version})"
            ));
            let message = format!(
                "{}: moving to {target} with launch template {template_id} version {to_version}",
                group.name
            );
            event(
                ctx,
                amr,
                EventType::Normal,
                "NodeGroupUpdateStarted",
                &message,
            )
            .await;
        }
        // Already updating (e.g. started before a restart): follow it.
        Err(AwsError::Conflict { message, .. }) => {
            entry.update_id = None;
            entry.phase = NodeGroupPhase::Updating;
            entry.message = Some(format!(
                "an update is already running ({message}); following it"
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn set(
    status: &mut AMIRefresherStatus,
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    conditions::upsert(
        &mut status.conditions,
        type_,
        on,
        reason,
        message,
        now,
        generation,
    );
}

async fn event(ctx: &Context, amr: &AMIRefresher, type_: EventType, reason: &str, note: &str) {
    ctx.metrics.transition(reason);
    opsy_runtime::publish_event(&ctx.recorder, amr, type_, reason, note).await;
}

async fn write_status(
    ctx: &Context,
    amr: &AMIRefresher,
    status: &AMIRefresherStatus,
) -> Result<(), Error> {
    Ok(opsy_runtime::patch_status(&ctx.client, amr, MANAGER, status).await?)
}
