//! The reconcile driver: select the target AMI → observe the cluster's groups → follow updates
//! in flight → [`plan`] → start the next wave → status and events. All rollout state lives in
//! status (per group: versions, images, update id, phase), so a restart resumes it.

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Resource, ResourceExt,
    api::ListParams,
    runtime::{controller::Action, events::EventType},
};
use opsy_api::{
    AMIRefresher, AMIRefresherStatus, ImageRef,
    ami_refresher::{NodeGroupKind, NodeGroupPhase, NodeGroupStatus, UpdateType},
    conditions, tags,
};
use opsy_aws::{
    AwsClients, AwsError,
    autoscaling::{GroupInstance, GroupTemplate, RefreshSettings},
    eks::{MaxUnavailable, NodeGroupImage},
    launch_templates::TemplateRef,
};

use opsy_notify::{Event as NotifyEvent, Message, ResourceRef};

use crate::{
    Error,
    health::{NodeView, Subject, Verdict, judge},
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
        // The reconcile may have written status already (an update it started): report on
        // top of what is stored now, never over it.
        let amr = match opsy_runtime::latest(&ctx.client, amr.as_ref()).await {
            Ok(Some(latest)) => Arc::new(latest),
            Ok(None) => return result,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the object to report the error");
                return result;
            }
        };
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

async fn reconcile_inner(mut amr: Arc<AMIRefresher>, ctx: Arc<Context>) -> Result<Action, Error> {
    amr.namespace().ok_or(Error::MissingNamespace)?;
    // `amr` is replaced by what each status write returns; the spec is the one read.
    let spec = &amr.spec.clone();
    let now = (ctx.clock)();
    let generation = amr.meta().generation;
    let aws = ctx.aws.region(&spec.region).await;
    let mut status = amr.status.clone().unwrap_or_default();
    let spec_changed =
        status.observed_generation.is_some() && status.observed_generation != generation;
    let timer = spec
        .effective_controller_timer()
        .as_std()
        .max(opsy_api::packer_builder::MIN_CONTROLLER_TIMER);
    let field = if spec.expires_in.is_some() {
        "spec.expiresIn"
    } else {
        "spec.timeOuts.expiresIn"
    };
    let warnings: Vec<(&str, String)> = spec
        .effective_expires_in()
        .short_expiry_warning(field)
        .map(|m| ("ShortExpiresIn", m))
        .into_iter()
        .collect();
    if let Some(message) =
        conditions::record_config_warnings(&mut status.conditions, &warnings, now, generation)
    {
        event(&ctx, &amr, EventType::Warning, "ShortExpiresIn", &message).await;
    }

    // 1. Target.
    let selection = aws
        .select_target(
            spec.ami.as_deref(),
            spec.ami_filters.as_deref(),
            opsy_aws::managed::Scope {
                cluster_name: &spec.cluster_name,
                accept_from: &spec.accept_from,
            },
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
        let before = entry.update_id.clone();
        poll(&aws, &amr, &ctx, entry, now).await?;
        if entry.update_id != before {
            // A new update started (the version update after the config update).
            amr = record_started(&ctx, &amr, &mut status, entry).await?;
        }
        if entry.phase == NodeGroupPhase::Succeeded {
            finished.push(entry.name.clone());
        }
    }

    // 3. Groups, and the health gate of those AWS reports done.
    let groups = observe_groups(&aws, &amr).await?;
    let (healthy, unhealthy) = verify(&ctx, &amr, &groups, &mut previous, &target_id, now).await?;
    finished.extend(healthy);
    // Only the AMI the failed groups moved to, which is the target unless it changed meanwhile.
    let against: Vec<String> = unhealthy
        .into_iter()
        .filter(|(image, _)| *image == target_id)
        .map(|(_, evidence)| evidence)
        .collect();
    if !against.is_empty() {
        quarantine(&ctx, &amr, &aws, &target, &against, now).await;
    }

    // 4. Plan and start the next wave.
    let mut plan = plan(spec, &target_id, &groups, &previous, spec_changed);
    // Groups left waiting for someone else's update are checked again at the poll interval.
    let mut waiting = false;
    for name in plan.start.clone() {
        let Some(group) = groups.iter().find(|g| g.name == name) else {
            continue;
        };
        let Some(entry) = plan.groups.iter_mut().find(|e| e.name == name) else {
            continue;
        };
        start(&aws, &amr, &ctx, group, entry, &target_id, now).await?;
        waiting |= entry.phase == NodeGroupPhase::Pending;
        if entry.update_id.is_some() {
            amr = record_started(&ctx, &amr, &mut status, entry).await?;
        }
    }
    if new_target && !plan.start.is_empty() {
        let mut message = format!("rolling out {target_id} ({})", target.image.name);
        let passed: Vec<String> = selection
            .passed_over()
            .take(opsy_aws::managed::Selection::EXPLAINED)
            .map(opsy_aws::managed::Candidate::describe)
            .collect();
        if !passed.is_empty() {
            message.push_str(&format!(
                "; passed over {} newer: {}",
                selection.passed_over().count(),
                passed.join("; ")
            ));
        }
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
    let updating = count(NodeGroupPhase::Updating) + count(NodeGroupPhase::Verifying);
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
    Ok(Action::requeue(if updating > 0 || waiting {
        ctx.poll_interval
    } else {
        timer
    }))
}

/// Writes `entry`, whose update has just started, into the stored status at once: an error or
/// a crash later in the reconcile must not lose an update that runs on AWS, or the next wave
/// would overlap it. Returns the object as written (its new `resourceVersion`).
async fn record_started(
    ctx: &Context,
    amr: &AMIRefresher,
    status: &mut AMIRefresherStatus,
    entry: &NodeGroupStatus,
) -> Result<Arc<AMIRefresher>, Error> {
    let groups = &mut status.node_groups;
    match groups.iter_mut().find(|g| g.name == entry.name) {
        Some(existing) => *existing = entry.clone(),
        None => {
            groups.push(entry.clone());
            groups.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
    Ok(Arc::new(write_status(ctx, amr, status).await?))
}

/// The cluster's managed node groups and (when enabled) self-managed Auto Scaling groups.
pub async fn observe_groups(aws: &AwsClients, amr: &AMIRefresher) -> Result<Vec<Group>, Error> {
    let cluster = &amr.spec.cluster_name;
    let mut groups = Vec::new();
    for name in aws.list_nodegroups(cluster).await? {
        let group = aws.describe_nodegroup(cluster, &name).await?;
        let busy = group.status == "UPDATING";
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
            // EKS moves a group to a new launch template version only when its nodes have been
            // replaced: the group's version is what its nodes run.
            NodeGroupImage::Image { template, image_id } => GroupImage::Runs {
                image_id,
                others: Vec::new(),
                template_id: template.template_id,
                version: template.version,
            },
        };
        groups.push(Group {
            name,
            kind: NodeGroupKind::Managed,
            image,
            busy,
            desired: group.desired_size,
            instances: Vec::new(),
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
                (Some(t), false) => self_managed_image(aws, t, &asg.instances).await?,
            };
            groups.push(Group {
                name: asg.name,
                kind: NodeGroupKind::SelfManaged,
                image,
                busy: false,
                desired: asg.desired_capacity,
                instances: asg.instances.iter().map(|i| i.id.clone()).collect(),
            });
        }
    }
    Ok(groups)
}

fn template_ref(id: Option<&String>, name: Option<&String>) -> TemplateRef {
    match (id, name) {
        (Some(id), _) => TemplateRef::Id(id.clone()),
        (None, Some(name)) => TemplateRef::Name(name.clone()),
        (None, None) => TemplateRef::Id(String::new()),
    }
}

/// What a self-managed group runs, judged from its instances (each launched from some version
/// of a launch template), not from the group's own template: a refresh that failed or never
/// ran leaves old instances behind however the group is configured.
async fn self_managed_image(
    aws: &AwsClients,
    template: &GroupTemplate,
    instances: &[GroupInstance],
) -> Result<GroupImage, Error> {
    let own = aws
        .launch_template_version(
            &template_ref(template.id.as_ref(), template.name.as_ref()),
            &template.version,
        )
        .await?;
    let Some(own_image) = own.image_id.clone() else {
        return Ok(GroupImage::NotManageable {
            reason: format!("launch template {} sets no ImageId", own.template_id),
        });
    };
    // Image per (template, version), looked up once each.
    let mut known: BTreeMap<(Option<String>, String), String> = BTreeMap::new();
    known.insert(
        (Some(own.template_id.clone()), own.version.to_string()),
        own_image.clone(),
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for instance in instances {
        let image = match &instance.launch_template {
            None => "unknown (not launched from a launch template)".to_owned(),
            Some(t) => {
                let key = (t.id.clone(), t.version.clone());
                match known.get(&key) {
                    Some(image) => image.clone(),
                    None => {
                        let version = aws
                            .launch_template_version(
                                &template_ref(t.id.as_ref(), t.name.as_ref()),
                                &t.version,
                            )
                            .await?;
                        let image = version
                            .image_id
                            .unwrap_or_else(|| "unknown (template sets no ImageId)".to_owned());
                        known.insert(key, image.clone());
                        image
                    }
                }
            }
        };
        *counts.entry(image).or_default() += 1;
    }
    // The image most instances run; the others are listed. No instances: what the group
    // would launch.
    let mut by_count: Vec<(String, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut images = by_count.into_iter().map(|(image, _)| image);
    let image_id = images.next().unwrap_or(own_image);
    Ok(GroupImage::Runs {
        image_id,
        others: images.collect(),
        template_id: own.template_id,
        version: own.version,
    })
}

/// The health gate of every `Verifying` entry of `entries`: the nodes that may belong to those
/// groups are read (one list, only while some group is being verified) and judged.
/// Returns the groups that turned healthy, and for those that did not become healthy in time
/// the AMI they moved to and the evidence against it.
async fn verify(
    ctx: &Context,
    amr: &AMIRefresher,
    groups: &[Group],
    entries: &mut [NodeGroupStatus],
    target: &str,
    now: Timestamp,
) -> Result<(Vec<String>, Vec<(String, String)>), Error> {
    if !entries.iter().any(|e| e.phase == NodeGroupPhase::Verifying) {
        return Ok((Vec::new(), Vec::new()));
    }
    // Managed groups' nodes carry their group's label: list only those. Self-managed groups'
    // nodes are known by their instance ids alone, so then every node is read.
    let verifying = entries
        .iter()
        .filter(|e| e.phase == NodeGroupPhase::Verifying);
    let params = if verifying.clone().all(|e| e.kind == NodeGroupKind::Managed) {
        let names: Vec<&str> = verifying.map(|e| e.name.as_str()).collect();
        ListParams::default().labels(&format!(
            "{} in ({})",
            crate::health::NODEGROUP_LABEL,
            names.join(",")
        ))
    } else {
        ListParams::default()
    };
    let nodes: Vec<NodeView> = Api::<Node>::all(ctx.client.clone())
        .list(&params)
        .await?
        .items
        .iter()
        .map(NodeView::of)
        .collect();
    let rollout = &amr.spec.rollout;
    let mut healthy = Vec::new();
    let mut unhealthy = Vec::new();
    for entry in entries
        .iter_mut()
        .filter(|e| e.phase == NodeGroupPhase::Verifying)
    {
        let group = groups.iter().find(|g| g.name == entry.name);
        let subject = Subject {
            name: &entry.name,
            kind: entry.kind,
            target: entry.to_image.as_deref().unwrap_or(target),
            desired: group.and_then(|g| g.desired).unwrap_or(0),
            instances: group.map_or(&[][..], |g| g.instances.as_slice()),
            done_at: entry.finished.as_ref().map_or(now, |t| t.0),
        };
        let verdict = judge(
            subject,
            &nodes,
            rollout.bake_time.as_ref().map(|d| d.as_std()),
            rollout.health_timeout.as_std(),
            now,
        );
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
            Verdict::Unhealthy(health, message) => {
                entry.phase = NodeGroupPhase::Failed;
                entry.health = Some(health);
                entry.message = Some(message.clone());
                let note = format!(
                    "{}: not healthy on {}: {message}",
                    entry.name, subject.target
                );
                event(ctx, amr, EventType::Warning, "NodeGroupUnhealthy", &note).await;
                unhealthy.push((
                    subject.target.to_owned(),
                    format!("{}: {message}", entry.name),
                ));
            }
        }
    }
    Ok((healthy, unhealthy))
}

/// The circuit breaker: the target's nodes failed the health gate, so the AMI (if it is a
/// managed one) is quarantined — tagged and EC2-deprecated — so that no AMIRefresher selects it
/// again and its PackerBuilder builds anew. A failure to quarantine is reported, not fatal:
/// the rollout is halted either way.
async fn quarantine(
    ctx: &Context,
    amr: &AMIRefresher,
    aws: &AwsClients,
    target: &opsy_aws::managed::Candidate,
    evidence: &[String],
    now: Timestamp,
) {
    let image = &target.image;
    if image.tag(tags::BROUGHT_TO_YOU_BY) != Some(tags::BROUGHT_TO_YOU_BY_VALUE)
        || image.tag(tags::STATUS) == Some(tags::STATUS_QUARANTINED)
    {
        return;
    }
    let reason = format!(
        "{}/{}: {}",
        amr.spec.cluster_name,
        amr.name_any(),
        evidence.join("; ")
    );
    let at = now
        .checked_add(jiff::SignedDuration::from_secs(60))
        .unwrap_or(now);
    match aws.quarantine_image(&image.id, &reason, at).await {
        Ok(()) => {
            let note = format!(
                "quarantined {} ({}): {}; no AMIRefresher will select it again and its PackerBuilder builds anew",
                image.id,
                image.name,
                evidence.join("; ")
            );
            event(ctx, amr, EventType::Warning, "AmiQuarantined", &note).await;
        }
        Err(e) => {
            let note = format!("could not quarantine {}: {e}", image.id);
            event(ctx, amr, EventType::Warning, "QuarantineFailed", &note).await;
        }
    }
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
                    return start_version_update(aws, amr, ctx, entry).await;
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
                    entry.message = Some(format!(
                        "moving to {} (instance refresh {percent}% done)",
                        entry.to_image.as_deref().unwrap_or_default()
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

/// The launch template version this operator made for `target` from `from`, if there is one
/// (the newest version, so a restart reuses it instead of adding another).
async fn existing_target_version(
    aws: &AwsClients,
    template_id: &str,
    from: i64,
    target: &str,
) -> Result<Option<i64>, Error> {
    let latest = aws
        .launch_template_version(&TemplateRef::Id(template_id.to_owned()), "$Latest")
        .await?;
    Ok(
        (latest.version > from && latest.image_id.as_deref() == Some(target))
            .then_some(latest.version),
    )
}

/// The launch template version that runs `target`: the one this operator already made, else a
/// new one from `from`.
async fn target_version(
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
fn wanted_update_config(spec: &opsy_api::AMIRefresherSpec) -> Option<MaxUnavailable> {
    let refresh = spec.refresh_config.clone().unwrap_or_default();
    refresh
        .max_unavailable
        .map(MaxUnavailable::Count)
        .or(refresh
            .max_unavailable_percentage
            .map(MaxUnavailable::Percentage))
}

/// Leaves `entry` waiting for an update that someone else runs on the group.
fn wait_for_theirs(entry: &mut NodeGroupStatus, what: &str) {
    entry.phase = NodeGroupPhase::Pending;
    entry.update_id = None;
    entry.update_type = None;
    entry.started = None;
    entry.message = Some(format!(
        "waiting: {what}, started outside this operator, is still running"
    ));
}

/// Records in `entry` that update `id` of type `kind` runs for it.
fn updating(entry: &mut NodeGroupStatus, id: String, kind: UpdateType, message: String) {
    entry.update_id = Some(id);
    entry.update_type = Some(kind);
    entry.phase = NodeGroupPhase::Updating;
    entry.message = Some(message);
}

/// Starts the version update of a managed group whose entry names the template version.
async fn start_version_update(
    aws: &AwsClients,
    amr: &AMIRefresher,
    ctx: &Context,
    entry: &mut NodeGroupStatus,
) -> Result<(), Error> {
    let cluster = &amr.spec.cluster_name;
    let force = amr.spec.refresh_config.as_ref().is_some_and(|c| c.force);
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
    entry.to_image = Some(target.to_owned());
    entry.finished = None;
    match group.kind {
        NodeGroupKind::Managed => {
            if group.busy {
                let ours = existing_target_version(aws, template_id, *version, target).await?;
                let running = aws.running_updates(cluster, &group.name).await?;
                let wanted = wanted_update_config(spec);
                let mine = running.iter().find(|u| {
                    let version = u.param("LaunchTemplateVersion");
                    (u.kind == "VersionUpdate"
                        && ours.is_some_and(|v| version == Some(v.to_string().as_str())))
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
                    spec.refresh_config.as_ref().is_some_and(|c| c.force),
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
async fn update_started(
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
) -> Result<AMIRefresher, Error> {
    Ok(opsy_runtime::patch_status(&ctx.client, amr, MANAGER, status).await?)
}
