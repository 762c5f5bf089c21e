//! The reconcile driver: select the target AMI → follow updates in flight ([`crate::follow`]) →
//! observe the cluster's groups ([`crate::observe`]) and verify their health → the pure
//! [`crate::plan`] → its actions (start, roll back, quarantine) → status, events and
//! notifications. All rollout state lives in status (per group: versions, images, update id,
//! phase), so a restart resumes it.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Resource, ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use opsy_api::{
    AMIRefresher, AMIRefresherStatus,
    ami_refresher::{
        APPROVE_ANNOTATION, FailureEvidence, NodeGroupPhase, NodeGroupStatus, PdbPolicy,
    },
    conditions,
};
use opsy_aws::AwsError;
use opsy_notify::{Event as NotifyEvent, Message, ResourceRef};

pub use crate::report::MANAGER;
use crate::{
    Error, breaker,
    follow::{self, Against, implicates_image, poll, verify},
    lanes,
    observe::{Blocker, disruption_blockers, observe_groups, refuse_latest_followers},
    plan::{Group, nodes_on_target, plan},
    promotion,
    report::{event, set, write_status},
    start::start,
};

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
            Error::NotAllowed(_) => "RolloutNotAllowed",
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
    // Its RefresherClass allows its cluster and owner role, before any AWS call.
    crate::tenancy::check(&ctx.client, &amr, ctx.require_class)
        .await?
        .map_err(Error::NotAllowed)?;
    // `amr` is replaced by what each status write returns; the spec is the one read.
    let spec = &amr.spec.clone();
    let now = (ctx.clock)();
    let generation = amr.meta().generation;
    let Acting {
        aws,
        cluster,
        evidence,
        owner,
    } = acting(&ctx, &amr).await?;
    let mut status = amr.status.clone().unwrap_or_default();
    // Evidence decided earlier whose write failed is written again first.
    if !status.pending_evidence.is_empty() {
        let pending = std::mem::take(&mut status.pending_evidence);
        status.pending_evidence =
            breaker::write_pending(&ctx, &amr, &owner, &evidence, pending, now).await;
    }
    let spec_changed =
        status.observed_generation.is_some() && status.observed_generation != generation;
    let timer = spec
        .effective_controller_timer()
        .as_std()
        .max(opsy_api::packer_builder::MIN_CONTROLLER_TIMER);
    warn_of_short_expiry(&ctx, &amr, &mut status, now).await;

    // 1. Target.
    let found = owner
        .select_target_for_cluster(spec, cluster.as_ref(), now)
        .await?;
    status.kubernetes_version = found.control_plane.clone();
    status.base_parameter = found
        .parameter
        .as_ref()
        .map(|p| opsy_api::common::ParameterRef {
            name: p.name.clone(),
            version: p.version,
            image_id: p.value.clone(),
        });
    let missing_parameter = match (&found.parameter_name, &found.parameter) {
        (Some(name), None) => Some(format!(
            "SSM parameter {name} (spec.amiParameter) does not exist in {}",
            spec.region
        )),
        _ => None,
    };
    let selection = found.selection;
    // The newest eligible candidate of any lane: without one, nothing starts.
    let choice = promotion::choose(spec, &status, &selection);
    let window = promotion::window(spec, now);
    status.maintenance_window = match &window {
        Ok(w) if !spec.maintenance_windows.is_empty() => Some(w.status()),
        _ => None,
    };
    let no_eligible = choice.chosen.is_none().then(|| {
        let what = match (&spec.ami, &missing_parameter) {
            (Some(ami), _) => format!("spec.ami {ami} is not eligible"),
            (None, Some(missing)) => missing.clone(),
            (None, None) if spec.ami_parameter.is_some() => {
                "no AMI named by spec.amiParameter (or built from it) is eligible".to_owned()
            }
            (None, None) => "no AMI matching spec.amiFilters is eligible".to_owned(),
        };
        format!("{what}: {}", selection.explain())
    });
    // Without an eligible AMI, groups in flight are still followed to their end (verified,
    // rolled back) toward the target they were moving to; no group starts.
    let in_flight = status.node_groups.iter().any(|g| g.phase.in_flight());
    let following = match (&choice.chosen, &status.target_image) {
        (Some(t), _) => Some(t.image.id.clone()),
        (None, Some(last)) if in_flight => Some(last.id.clone()),
        (None, _) => None,
    };
    let Some(following) = following else {
        report_held_back(&ctx, &amr, &mut status, choice.held_back).await;
        let wake = promotion::next_wake(&status.held_back, window.as_ref().ok(), now);
        let timer = until(timer, wake, now);
        let message = no_eligible.clone().unwrap_or_default();
        set(
            &mut status,
            conditions::PROGRESSING,
            false,
            "NoEligibleAmi",
            &message,
            now,
            generation,
        );
        report_no_eligible(&ctx, &amr, &mut status, &message, true, now).await;
        status.observed_generation = generation;
        status.last_checked = Some(Time(now));
        write_status(&ctx, &amr, &status).await?;
        return Ok(Action::requeue(timer));
    };

    // 2. Follow updates in flight (before observing, so a group that just finished is seen
    //    on its new version).
    let mut previous = status.node_groups.clone();
    let mut finished = Vec::new();
    let mut gone: Vec<String> = Vec::new();
    // The AMIs whose nodes failed (here: never joined the cluster), with the evidence.
    let mut failed_on: Vec<Against> = Vec::new();
    for entry in previous.iter_mut().filter(|e| {
        matches!(
            e.phase,
            NodeGroupPhase::Updating | NodeGroupPhase::RollingBack
        )
    }) {
        let before = entry.update_id.clone();
        let was = entry.phase;
        match poll(&aws, &amr, &ctx, entry, now).await {
            Ok(()) => {}
            // The group (or its Auto Scaling group) was deleted mid-update: it leaves the
            // rollout; the others go on.
            // (Auto Scaling answers a deleted group's refreshes with a ValidationError.)
            Err(Error::Aws(AwsError::NotFound { .. } | AwsError::InvalidRequest { .. }))
                if follow::is_gone(&aws, &amr.spec.cluster_name, entry).await? =>
            {
                let note = format!(
                    "{} was deleted while {} (update {}); it leaves this rollout",
                    entry.name,
                    match was {
                        NodeGroupPhase::RollingBack => "rolling back",
                        _ => "updating",
                    },
                    entry.update_id.as_deref().unwrap_or("unknown")
                );
                event(&ctx, &amr, EventType::Warning, "NodeGroupGone", &note).await;
                gone.push(entry.name.clone());
                continue;
            }
            Err(e) => return Err(e),
        }
        if was == NodeGroupPhase::Updating
            && let Some(evidence) = implicates_image(&aws, &amr, entry).await?
        {
            entry.failed_on = Some(FailureEvidence::Nodes);
            failed_on.push(Against {
                image: entry.to_image.clone().unwrap_or_default(),
                evidence,
                kind: FailureEvidence::Nodes,
            });
        }
        if entry.update_id != before {
            // A new update started (the version update after the config update).
            amr = record_started(&ctx, &amr, &mut status, entry).await?;
        }
        if entry.phase == NodeGroupPhase::Succeeded {
            finished.push(entry.name.clone());
        }
    }

    if !gone.is_empty() {
        previous.retain(|e| !gone.contains(&e.name));
        status.node_groups.retain(|e| !gone.contains(&e.name));
    }

    // 3. Groups, and the health gate of those AWS reports done.
    let mut groups = observe_groups(&aws, &amr).await?;
    let (assignment, known) = lanes::resolve(
        &aws,
        &owner,
        spec,
        &status,
        &selection,
        &mut groups,
        &following,
    )
    .await?;
    report_held_back(&ctx, &amr, &mut status, assignment.held_back.clone()).await;
    // Something held back may move by itself at this time (a gate or a window opening).
    let wake = promotion::next_wake(&status.held_back, window.as_ref().ok(), now);
    let timer = until(timer, wake, now);
    let targets = &assignment.targets;
    let target_id = targets.primary.clone();
    let chosen = assignment.primary().cloned();
    let before: Vec<String> = if status.targets.is_empty() {
        status.target_image.iter().map(|t| t.id.clone()).collect()
    } else {
        status.targets.iter().map(|t| t.image.id.clone()).collect()
    };
    let new_target = targets.all().iter().any(|t| !before.iter().any(|b| b == t));
    if chosen.is_some()
        || status.target_image.as_ref().map(|t| t.id.as_str()) != Some(target_id.as_str())
    {
        status.target_image = Some(lanes::image_ref(&target_id, chosen.as_ref(), &known));
    }
    status.targets = assignment.lanes.clone();
    let (healthy, unhealthy) =
        verify(&aws, &ctx, &amr, &groups, &mut previous, &target_id, now).await?;
    finished.extend(healthy);
    // Only the AMIs the failed groups moved to, which are targets unless they changed
    // meanwhile; each with its own evidence.
    let mut against: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for against_image in failed_on.into_iter().chain(unhealthy) {
        let Against {
            image,
            evidence,
            kind,
        } = against_image;
        // Evidence that does not implicate the AMI halts this rollout only.
        if kind.quarantines(&spec.rollout.quarantine_on) && targets.all().contains(&image.as_str())
        {
            against.entry(image).or_default().push(evidence);
        }
    }
    for (image, evidence) in &against {
        if let Some(pending) = breaker::quarantine(
            &ctx,
            &amr,
            &owner,
            assignment.chosen.get(image),
            image,
            evidence,
            now,
        )
        .await
        {
            breaker::remember(&mut status.pending_evidence, pending);
        }
    }

    // 4. Plan and start the next wave, without the groups whose template follows at $Latest.
    let refused = refuse_latest_followers(&aws, &amr, targets, &previous, &mut groups).await?;
    for (name, reason) in &refused {
        let was = previous
            .iter()
            .find(|p| p.name == *name)
            .and_then(|p| p.message.as_deref());
        if was != Some(reason.as_str()) {
            let note = format!("{name} is not moved: {reason}");
            event(&ctx, &amr, EventType::Warning, "LatestFollowers", &note).await;
        }
    }
    let approval = amr.annotations().get(APPROVE_ANNOTATION).cloned();
    let approved = approval.as_deref();
    let mut plan = plan(spec, targets, &groups, &previous, spec_changed, approved);
    // A group the plan found on its target without a recorded update: verified from now.
    for entry in plan
        .groups
        .iter_mut()
        .filter(|e| e.phase == NodeGroupPhase::Verifying && e.finished.is_none())
    {
        entry.finished = Some(Time(now));
    }
    if no_eligible.is_some() {
        plan.start.clear();
    }
    // Groups start only inside a maintenance window (and never when the windows are invalid).
    let closed = match &window {
        Ok(w) if w.open => None,
        Ok(w) => Some((
            "OutsideMaintenanceWindow",
            w.closed_message("spec.maintenanceWindows"),
        )),
        Err(message) => Some(("InvalidMaintenanceWindow", message.clone())),
    };
    if closed.is_some() {
        plan.start.clear();
    }
    // Groups left waiting for someone else's update are checked again at the poll interval.
    let mut waiting = false;
    let starting: Vec<&Group> = groups
        .iter()
        .filter(|g| plan.start.contains(&g.name))
        .collect();
    let blockers = disruption_blockers(&ctx.client, &starting).await?;
    // The intent first: a process that crashes right after starting an update finds the group
    // Pending toward its target, so a move AWS finished meanwhile is verified by the health gate
    // (see `plan`) instead of counted as already done. Written only when it is news (a group
    // held by its pre-flight check is started again at every poll).
    let news: Vec<NodeGroupStatus> = plan
        .groups
        .iter()
        .filter(|e| plan.start.contains(&e.name))
        .filter(|e| {
            !status
                .node_groups
                .iter()
                .any(|s| s.name == e.name && s.phase == e.phase && s.to_image == e.to_image)
        })
        .cloned()
        .collect();
    if !news.is_empty() {
        for entry in &news {
            upsert_entry(&mut status, entry);
        }
        amr = Arc::new(write_status(&ctx, &amr, &status).await?);
    }
    for name in plan.start.clone() {
        let Some(group) = groups.iter().find(|g| g.name == name) else {
            continue;
        };
        let Some(entry) = plan.groups.iter_mut().find(|e| e.name == name) else {
            continue;
        };
        if let Some(blockers) = blockers.get(&name) {
            let was = previous
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.message.clone());
            if !pre_flight(&ctx, &amr, entry, blockers, was.as_deref()).await {
                waiting = true;
                continue;
            }
        }
        let Ok(target) = targets.of(group) else {
            continue;
        };
        start(&aws, &amr, &ctx, group, entry, target, now).await?;
        waiting |= entry.phase == NodeGroupPhase::Pending;
        if entry.update_id.is_some() {
            amr = record_started(&ctx, &amr, &mut status, entry).await?;
        }
    }
    // The breaker tripped with `rollout.onFailure: rollback`: the moved groups go back.
    for name in plan.rollback.clone() {
        let Some(group) = groups.iter().find(|g| g.name == name) else {
            continue;
        };
        let Some(entry) = plan.groups.iter_mut().find(|e| e.name == name) else {
            continue;
        };
        breaker::roll_back(&aws, &amr, &ctx, group, entry, now).await?;
        if entry.phase == NodeGroupPhase::RollingBack {
            amr = record_started(&ctx, &amr, &mut status, entry).await?;
        }
    }
    if new_target && !plan.start.is_empty() {
        let mut message = match &chosen {
            Some(t) if targets.all().len() == 1 => {
                format!("rolling out {target_id} ({})", t.image.name)
            }
            _ => format!("rolling out {}", targets.describe()),
        };
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
    let updating = plan.groups.iter().filter(|g| g.phase.in_flight()).count();
    let failed: Vec<&NodeGroupStatus> = plan.groups.iter().filter(|g| g.phase.halts()).collect();
    // Whether this reconcile is the one that halts the rollout.
    let mut newly_halted = false;
    status.progress = Some(format!("{done}/{managed} on target"));
    let (nodes, total) = nodes_on_target(&plan.groups, &groups);
    status.nodes_on_target =
        (total > 0).then(|| format!("{nodes}/{total} ({}%)", nodes * 100 / total));
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
            newly_halted = plan.halted;
            event(&ctx, &amr, EventType::Warning, reason, &message).await;
        }
    }
    let ready = done == managed;
    // A newer candidate held back by a gate (or by the rollout under way) is named in Ready.
    let held = status
        .held_back
        .first()
        .map(|h| {
            let more = status.held_back.len() - 1;
            let more = if more > 0 {
                format!(" (and {more} more in status.heldBack)")
            } else {
                String::new()
            };
            format!(
                "; newer held back: {} ({}): {}{more}",
                h.image, h.gate, h.message
            )
        })
        .unwrap_or_default();
    let was_ready = conditions::find(&status.conditions, conditions::READY)
        .is_some_and(|c| c.status == conditions::TRUE);
    if ready {
        // Soak evidence only from nodes: a group of this cluster moved to the AMI through the
        // health gate. Zero groups on target is no evidence (0 of 0).
        let proven = |image: &str| {
            plan.groups.iter().any(|g| {
                g.phase == NodeGroupPhase::Succeeded && g.to_image.as_deref() == Some(image)
            })
        };
        let unproven: Vec<&str> = targets
            .all()
            .into_iter()
            .filter(|t| assignment.chosen.contains_key(*t) && !proven(t))
            .collect();
        let no_evidence = if unproven.is_empty() {
            String::new()
        } else {
            format!(
                "; no soak evidence ({}) for {}: no node group of the cluster moved to it through the health gate",
                evidence,
                unproven.join(", ")
            )
        };
        let message = format!(
            "{done} node group(s) run {}{held}{no_evidence}",
            targets.describe()
        );
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
            for target in targets.all() {
                let Some(chosen) = assignment.chosen.get(target) else {
                    continue;
                };
                if proven(&chosen.image.id) {
                    if let Some(pending) =
                        breaker::record_healthy(&ctx, &amr, &owner, &evidence, &chosen.image, now)
                            .await
                    {
                        breaker::remember(&mut status.pending_evidence, pending);
                    }
                } else {
                    let note = format!(
                        "no soak evidence recorded for {} ({}): no node group of cluster {} moved to it through the health gate (excluded, skipped or already on it)",
                        chosen.image.id, evidence, amr.spec.cluster_name
                    );
                    event(&ctx, &amr, EventType::Normal, "NoSoakEvidence", &note).await;
                }
            }
        }
    } else {
        let message = format!(
            "{done}/{managed} node groups on {}, {updating} updating{held}",
            targets.describe()
        );
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
        } else if plan.awaiting_approval && updating == 0 {
            "AwaitingApproval"
        } else if let Some((reason, _)) = &closed
            && updating == 0
        {
            reason
        } else {
            "RollingOut"
        };
        let message = if let Some((why, text)) = &closed
            && *why == reason
        {
            let was = conditions::find(&status.conditions, conditions::PROGRESSING)
                .map(|c| c.reason.clone());
            if reason == "InvalidMaintenanceWindow" && was.as_deref() != Some(reason) {
                event(&ctx, &amr, EventType::Warning, reason, text).await;
            }
            format!("{message}; {text}")
        } else if reason == "AwaitingApproval" {
            let was = conditions::find(&status.conditions, conditions::PROGRESSING)
                .map(|c| c.reason.clone());
            let message = format!(
                "{message}; the canary groups are healthy: annotate this AMIRefresher {APPROVE_ANNOTATION}={} to roll out the rest",
                crate::plan::to_approve(&plan.groups, approved)
            );
            if was.as_deref() != Some(reason) {
                event(&ctx, &amr, EventType::Normal, "ApprovalRequired", &message).await;
            }
            message
        } else {
            message
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
    if let Some(message) = &no_eligible {
        let message = format!("{message}; following the {updating} group(s) still in flight");
        // A halted rollout's Degraded condition says more than this.
        report_no_eligible(&ctx, &amr, &mut status, &message, !plan.halted, now).await;
    }
    let target_id = targets.all().join(",");
    let transitions = crate::transitions::decide(&crate::transitions::Seen {
        target: &target_id,
        new_target,
        starting: !plan.start.is_empty(),
        finished: &finished,
        halted: plan.halted,
        newly_halted,
        generation: generation.unwrap_or_default(),
        became_ready: ready && !was_ready,
        awaiting_approval: plan.awaiting_approval && updating == 0,
    });
    let degraded =
        conditions::find(&status.conditions, conditions::DEGRADED).map(|c| c.message.clone());
    let notifications = transitions
        .into_iter()
        .map(|(key, kind)| {
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
            .fact("Target AMI", targets.describe())
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
                && let Some(reason) = &degraded
            {
                message = message.reason(reason.clone());
            }
            (key, message)
        })
        .collect();
    opsy_runtime::outbox::queue(
        &mut status.outbox,
        &mut status.last_notified,
        &mut status.conditions,
        notifications,
        now,
        generation,
    );

    status.node_groups = plan.groups;
    for entry in &mut status.node_groups {
        entry.desired_size = groups
            .iter()
            .find(|g| g.name == entry.name)
            .and_then(|g| g.desired);
    }
    status.observed_generation = generation;
    status.last_checked = Some(Time(now));
    let requeue = opsy_runtime::outbox::sooner(
        if updating > 0 || waiting {
            ctx.poll_interval
        } else {
            timer
        },
        &status.outbox,
        now,
    );
    let written = write_status(&ctx, &amr, &status).await?;
    ctx.send_notifications(&written);
    ctx.failures.record_success(amr.as_ref());
    Ok(Action::requeue(requeue))
}

/// `timer`, or less when `wake` comes sooner.
/// Where an AMIRefresher acts.
struct Acting {
    /// The clients of the cluster's account (the operator's own).
    aws: Arc<opsy_aws::AwsClients>,
    /// What EKS says of the cluster (`None`: it does not exist).
    cluster: Option<opsy_aws::eks::ClusterInfo>,
    /// The key of its soak evidence: `healthy-on/<the cluster's account>/<cluster>`.
    evidence: String,
    /// The clients of the account that owns the managed AMIs, their tags and their evidence.
    owner: Arc<opsy_aws::AwsClients>,
}

/// Reads where `amr` acts: its cluster (EKS DescribeCluster, for its version and account), and
/// the owner account's role, assumed for that cluster and account.
async fn acting(ctx: &Context, amr: &AMIRefresher) -> Result<Acting, Error> {
    let spec = &amr.spec;
    let aws = ctx.aws.region(&spec.region).await;
    let cluster = aws.cluster(&spec.cluster_name).await?;
    let account = cluster.as_ref().and_then(|c| c.account.clone());
    let owner_role = crate::owner_role(amr, account.as_deref());
    Ok(Acting {
        evidence: crate::evidence_key(&spec.cluster_name, account.as_deref()),
        owner: ctx.aws.region_as(&spec.region, owner_role.as_ref()).await,
        aws,
        cluster,
    })
}

/// A `ShortExpiresIn` warning in status (and an Event when it appears or changes).
async fn warn_of_short_expiry(
    ctx: &Context,
    amr: &AMIRefresher,
    status: &mut AMIRefresherStatus,
    now: Timestamp,
) {
    let spec = &amr.spec;
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
    let generation = amr.meta().generation;
    if let Some(message) =
        conditions::record_config_warnings(&mut status.conditions, &warnings, now, generation)
    {
        event(ctx, amr, EventType::Warning, "ShortExpiresIn", &message).await;
    }
}

fn until(
    timer: std::time::Duration,
    wake: Option<Timestamp>,
    now: Timestamp,
) -> std::time::Duration {
    wake.and_then(|at| std::time::Duration::try_from(at.duration_since(now)).ok())
        .map_or(timer, |d| d.clamp(std::time::Duration::from_secs(1), timer))
}

/// Records the candidates a promotion gate (or the rollout under way) holds back, with a
/// Normal Event when the set of them or their gates changed.
async fn report_held_back(
    ctx: &Context,
    amr: &AMIRefresher,
    status: &mut AMIRefresherStatus,
    held_back: Vec<opsy_api::ami_refresher::HeldBack>,
) {
    let key = |list: &[opsy_api::ami_refresher::HeldBack]| -> Vec<(String, String)> {
        list.iter()
            .map(|h| (h.image.clone(), h.gate.clone()))
            .collect()
    };
    if !held_back.is_empty() && key(&held_back) != key(&status.held_back) {
        let message: Vec<String> = held_back
            .iter()
            .map(|h| format!("{} ({}): {}", h.image, h.gate, h.message))
            .collect();
        event(
            ctx,
            amr,
            EventType::Normal,
            "CandidateHeldBack",
            &message.join("; "),
        )
        .await;
    }
    status.held_back = held_back;
}

/// No AMI is eligible: `Ready` says why, and with `degrade` so do `Degraded` and — when that is
/// new — a Warning Event.
async fn report_no_eligible(
    ctx: &Context,
    amr: &AMIRefresher,
    status: &mut AMIRefresherStatus,
    message: &str,
    degrade: bool,
    now: Timestamp,
) {
    let generation = amr.meta().generation;
    set(
        status,
        conditions::READY,
        false,
        "NoEligibleAmi",
        message,
        now,
        generation,
    );
    if !degrade {
        return;
    }
    let was = conditions::find(&status.conditions, conditions::DEGRADED).map(|c| c.reason.clone());
    set(
        status,
        conditions::DEGRADED,
        true,
        "NoEligibleAmi",
        message,
        now,
        generation,
    );
    if was.as_deref() != Some("NoEligibleAmi") {
        event(ctx, amr, EventType::Warning, "NoEligibleAmi", message).await;
    }
}

/// The drain pre-flight's verdict on a group about to start whose nodes run pods that
/// `blockers` allow no disruption of: with `rollout.pdbPolicy: wait` the group waits (false),
/// otherwise it starts (true). Either way the budgets and pods are reported, once per change.
async fn pre_flight(
    ctx: &Context,
    amr: &AMIRefresher,
    entry: &mut NodeGroupStatus,
    blockers: &[Blocker],
    was: Option<&str>,
) -> bool {
    let list: Vec<String> = blockers.iter().map(ToString::to_string).collect();
    let list = list.join("; ");
    let policy = amr.spec.rollout.pdb_policy;
    let (starts, message) = match policy {
        PdbPolicy::Wait => (
            false,
            format!(
                "waiting: {list} on its nodes (rollout.pdbPolicy: wait; the group starts once they allow it)"
            ),
        ),
        PdbPolicy::Proceed => (
            true,
            format!(
                "{list} on its nodes; starting anyway (rollout.pdbPolicy: proceed; EKS fails the update if it cannot drain them)"
            ),
        ),
        PdbPolicy::Force => (
            true,
            format!(
                "{list} on its nodes; starting with force (rollout.pdbPolicy: force: its pods are evicted regardless)"
            ),
        ),
    };
    if was != Some(message.as_str()) {
        let note = format!("{}: {message}", entry.name);
        event(ctx, amr, EventType::Warning, "DisruptionBlocked", &note).await;
    }
    if !starts {
        entry.message = Some(message);
    }
    starts
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
    upsert_entry(status, entry);
    Ok(Arc::new(write_status(ctx, amr, status).await?))
}

/// Puts `entry` in `status` in place of the group's entry there, if any.
fn upsert_entry(status: &mut AMIRefresherStatus, entry: &NodeGroupStatus) {
    let groups = &mut status.node_groups;
    match groups.iter_mut().find(|g| g.name == entry.name) {
        Some(existing) => *existing = entry.clone(),
        None => {
            groups.push(entry.clone());
            groups.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}
