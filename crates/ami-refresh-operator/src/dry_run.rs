//! `ami-refresh-operator plan`: the target AMI and what would happen to each node group, and
//! why, from AWS alone and without changing anything (only Describe and List calls). Given an
//! AMIRefresher with its status (`kubectl get amr NAME -o yaml`), it continues that rollout:
//! groups in flight, the gates the next wave waits for, and the circuit breaker's state.

use jiff::Timestamp;
use kube::ResourceExt;
use opsy_api::{
    AMIRefresher,
    ami_refresher::{APPROVE_ANNOTATION, NodeGroupPhase, OnFailure, PdbPolicy},
};
use opsy_aws::ClientSet;
use serde::Serialize;

use crate::{Error, observe::observe_groups, plan::plan, promotion};

/// One group and what would happen to it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupAction {
    /// Group name.
    pub name: String,
    /// `Managed` or `SelfManaged`.
    pub kind: String,
    /// `update`, `none`, `excluded`, `skipped`, or for a rollout in flight `updating`,
    /// `verifying`, `failed`, `rolling-back`, `rolled-back`.
    pub action: String,
    /// Whether its update would start in the first wave.
    pub first_wave: bool,
    /// Details: the launch template change, or why nothing happens.
    pub detail: String,
}

/// The report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// `namespace/name` of the AMIRefresher.
    pub resource: String,
    /// The AMI that would be rolled out.
    pub target: Option<String>,
    /// How the candidates were judged.
    pub selection: String,
    /// Newer candidates held back (a promotion gate, or the rollout under way), each with the
    /// gate and when it opens.
    pub held_back: Vec<String>,
    /// One entry per group.
    pub groups: Vec<GroupAction>,
    /// Names in `exclude` or `rollout.canary` that match no group.
    pub unknown_groups: Vec<String>,
    /// What the next wave waits for, one line per gate (`name: state`).
    pub gates: Vec<String>,
    /// The circuit breaker: `closed`, or what tripped it and what follows.
    pub breaker: String,
    /// Whether the rollout would write soak evidence (`healthy-on/<cluster>`), and why not.
    pub evidence: String,
}

/// Builds the report for `amr` at `now`.
pub async fn report(aws: &ClientSet, amr: &AMIRefresher, now: Timestamp) -> Result<Report, Error> {
    let spec = &amr.spec;
    let own = aws.region(&spec.region).await;
    let cluster = own.cluster(&spec.cluster_name).await?;
    let account = cluster.as_ref().and_then(|c| c.account.clone());
    let owner = aws
        .region_as(
            &spec.region,
            crate::owner_role(amr, account.as_deref()).as_ref(),
        )
        .await;
    let aws = &own;
    let selection = owner
        .select_target_for_cluster(spec, cluster.as_ref(), now)
        .await?
        .selection;
    let status = amr.status.clone().unwrap_or_default();
    let choice = promotion::choose(spec, &status, &selection);
    let held_back: Vec<String> = choice
        .held_back
        .iter()
        .map(|h| format!("{} ({}): {}", h.image, h.gate, h.message))
        .collect();
    let window = match promotion::window(spec, now) {
        Ok(w) if spec.maintenance_windows.is_empty() => {
            debug_assert!(w.open);
            None
        }
        Ok(w) if w.open => Some(format!(
            "maintenance window: open until {}",
            w.closes.map(|t| t.to_string()).unwrap_or_default()
        )),
        Ok(w) => Some(format!(
            "maintenance window: {}; no group starts",
            w.closed_message("spec.maintenanceWindows")
        )),
        Err(message) => Some(format!("maintenance window: invalid: {message}")),
    };
    let resource = format!(
        "{}/{}",
        amr.namespace().unwrap_or_else(|| "default".into()),
        amr.name_any()
    );
    let Some(target) = choice.chosen.as_ref().map(|c| c.image.id.clone()) else {
        return Ok(Report {
            resource,
            target: None,
            selection: selection.explain(),
            held_back,
            groups: Vec::new(),
            unknown_groups: Vec::new(),
            gates: window.into_iter().collect(),
            breaker: "closed".into(),
            evidence: "none: nothing would be rolled out".into(),
        });
    };
    let mut groups = observe_groups(aws, amr).await?;
    let (assignment, _) =
        crate::lanes::resolve(aws, &owner, spec, &status, &selection, &mut groups, &target).await?;
    let held_back: Vec<String> = assignment
        .held_back
        .iter()
        .map(|h| format!("{} ({}): {}", h.image, h.gate, h.message))
        .collect();
    let targets = &assignment.targets;
    let target = targets.primary.clone();
    let previous = amr
        .status
        .as_ref()
        .map(|s| s.node_groups.as_slice())
        .unwrap_or_default();
    let approved = amr
        .annotations()
        .get(APPROVE_ANNOTATION)
        .map(String::as_str);
    let mut plan = plan(spec, targets, &groups, previous, false, approved);
    if window
        .as_ref()
        .is_some_and(|w| w.ends_with("no group starts"))
    {
        plan.start.clear();
    }
    let actions = plan
        .groups
        .iter()
        .map(|g| {
            let (action, detail) = match g.phase {
                NodeGroupPhase::Excluded => ("excluded", g.message.clone().unwrap_or_default()),
                NodeGroupPhase::Skipped => ("skipped", g.message.clone().unwrap_or_default()),
                NodeGroupPhase::Pending => (
                    "update",
                    format!(
                        "{} → {}{}: new version of launch template {} from v{}",
                        g.from_image.as_deref().unwrap_or("?"),
                        g.to_image.as_deref().unwrap_or(&target),
                        g.lane
                            .as_ref()
                            .filter(|_| targets.all().len() > 1)
                            .map(|l| format!(" ({l})"))
                            .unwrap_or_default(),
                        g.launch_template_id.as_deref().unwrap_or("?"),
                        g.from_version.as_deref().unwrap_or("?")
                    ),
                ),
                NodeGroupPhase::Updating => ("updating", g.message.clone().unwrap_or_default()),
                NodeGroupPhase::Verifying => ("verifying", g.message.clone().unwrap_or_default()),
                NodeGroupPhase::Failed => ("failed", g.message.clone().unwrap_or_default()),
                NodeGroupPhase::RollingBack => {
                    ("rolling-back", g.message.clone().unwrap_or_default())
                }
                NodeGroupPhase::RolledBack => {
                    ("rolled-back", g.message.clone().unwrap_or_default())
                }
                NodeGroupPhase::UpToDate | NodeGroupPhase::Succeeded => (
                    "none",
                    format!(
                        "runs {}",
                        g.to_image
                            .as_deref()
                            .or(g.from_image.as_deref())
                            .unwrap_or(&target)
                    ),
                ),
            };
            GroupAction {
                name: g.name.clone(),
                kind: format!("{:?}", g.kind),
                action: action.to_owned(),
                first_wave: plan.start.contains(&g.name),
                detail,
            }
        })
        .collect();
    let rollout = &spec.rollout;
    let mut gates: Vec<String> = window.into_iter().collect();
    gates.push(if rollout.health_gate {
        format!(
            "health: each group's nodes Ready on the target{}, within {}",
            rollout
                .bake_time
                .as_ref()
                .map(|b| format!(" for {b}"))
                .unwrap_or_default(),
            rollout.health_timeout
        )
    } else {
        "health: off (AWS's word alone)".to_owned()
    });
    if rollout.approve_after_canary {
        let all = targets.all().join(",");
        gates.push(if plan.awaiting_approval {
            format!(
                "approval: the canary is done; waiting for {APPROVE_ANNOTATION}={}",
                crate::plan::to_approve(&plan.groups, approved)
            )
        } else if targets
            .all()
            .iter()
            .all(|t| crate::plan::approves(approved, t))
        {
            format!("approval: {all} approved")
        } else {
            format!(
                "approval: after the canary ({}), {APPROVE_ANNOTATION}={all}",
                rollout.canary.join(", ")
            )
        });
    }
    gates.push(format!(
        "disruption budgets: checked before each group starts; pdbPolicy {}",
        match rollout.pdb_policy {
            PdbPolicy::Wait => "wait",
            PdbPolicy::Proceed => "proceed",
            PdbPolicy::Force => "force",
        }
    ));
    let tripped: Vec<String> = plan
        .groups
        .iter()
        .filter(|g| g.phase.halts())
        .map(|g| g.name.clone())
        .collect();
    let breaker = if plan.halted {
        let then = match rollout.on_failure {
            OnFailure::Halt => "no group starts (onFailure: halt)".to_owned(),
            OnFailure::Rollback if plan.rollback.is_empty() => {
                "no group starts; the moved groups are back or going back (onFailure: rollback)"
                    .to_owned()
            }
            OnFailure::Rollback => format!(
                "no group starts; {} go back (onFailure: rollback)",
                plan.rollback.join(", ")
            ),
        };
        format!("tripped by {}: {then}", tripped.join(", "))
    } else if tripped.is_empty() {
        "closed".to_owned()
    } else {
        format!(
            "closed (haltOnFailure: false): {} failed, the others go on",
            tripped.join(", ")
        )
    };
    // Soak evidence comes only from groups that move to a target through the health gate.
    let key = crate::evidence_key(&spec.cluster_name, account.as_deref());
    let unproven: Vec<&str> = targets
        .all()
        .into_iter()
        .filter(|t| {
            !plan.groups.iter().any(|g| {
                g.to_image.as_deref() == Some(*t)
                    && matches!(
                        g.phase,
                        NodeGroupPhase::Pending
                            | NodeGroupPhase::Updating
                            | NodeGroupPhase::Verifying
                            | NodeGroupPhase::Succeeded
                    )
            })
        })
        .collect();
    let evidence = if unproven.is_empty() {
        format!("{key} once the rollout is complete and healthy")
    } else {
        format!(
            "none for {}: no node group of cluster {} would move to it through the health gate",
            unproven.join(", "),
            spec.cluster_name
        )
    };
    let quarantine = std::iter::once("nodes")
        .chain(rollout.quarantine_on.iter().map(|s| s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    gates.push(format!(
        "quarantine: on evidence from {quarantine} (rollout.quarantineOn); other failures halt only"
    ));
    Ok(Report {
        resource,
        target: Some(targets.describe()),
        evidence,
        selection: selection.explain(),
        held_back,
        groups: actions,
        unknown_groups: plan.unknown,
        gates,
        breaker,
    })
}

impl Report {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = format!("AMIRefresher {}\n", self.resource);
        match &self.target {
            Some(target) => out.push_str(&format!("  target AMI: {target}\n")),
            None => out.push_str("  target AMI: none — nothing would be rolled out\n"),
        }
        out.push_str(&format!("  candidates: {}\n", self.selection));
        for held in &self.held_back {
            out.push_str(&format!("  held back: {held}\n"));
        }
        for g in &self.groups {
            let wave = if g.first_wave { " (first wave)" } else { "" };
            out.push_str(&format!(
                "  {:<20} {:<11} {:<8}{wave} {}\n",
                g.name, g.kind, g.action, g.detail
            ));
        }
        for gate in &self.gates {
            out.push_str(&format!("  gate {gate}\n"));
        }
        if self.target.is_some() {
            out.push_str(&format!("  breaker: {}\n", self.breaker));
            out.push_str(&format!("  soak evidence: {}\n", self.evidence));
        }
        if !self.unknown_groups.is_empty() {
            out.push_str(&format!(
                "  warning: no such groups: {}\n",
                self.unknown_groups.join(", ")
            ));
        }
        out
    }
}
