//! What reaches this cluster, and when: the promotion gates' verdicts (soak, age, pin, never)
//! for status, a rollout under way finishing on its target before a newer AMI
//! (`rollout.onNewerAmi`), and the maintenance windows in which groups may start.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use opsy_api::{
    AMIRefresherSpec, AMIRefresherStatus,
    ami_refresher::{HeldBack, NodeGroupPhase, OnNewerAmi},
    windows::{WindowState, Windows},
};
use opsy_aws::managed::{Candidate, Selection};

/// The gate name in `status.heldBack` of a newer AMI waiting for the rollout under way.
pub const ROLLOUT_UNDER_WAY: &str = "RolloutUnderWay";

/// The target to roll out and what is held back.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// The candidate to roll out.
    pub chosen: Option<Candidate>,
    /// Newer candidates held back, newest first (at most five).
    pub held_back: Vec<HeldBack>,
}

/// Chooses the target: the selection's choice, unless a rollout is under way on an older target
/// that is still eligible and `rollout.onNewerAmi` is `finish` — then that target, and the newer
/// one waits (named in `heldBack`).
pub fn choose(
    spec: &AMIRefresherSpec,
    status: &AMIRefresherStatus,
    selection: &Selection,
) -> Choice {
    let mut chosen = selection.chosen.clone();
    let mut held_back = Vec::new();
    if let (Some(newer), Some(current)) = (&chosen, &status.target_image)
        && newer.image.id != current.id
        && spec.rollout.on_newer_ami == OnNewerAmi::Finish
        && under_way(status, &current.id)
        && let Some(current) = selection
            .candidates
            .iter()
            .find(|c| c.image.id == current.id && c.is_eligible())
    {
        held_back.push(HeldBack {
            image: newer.image.id.clone(),
            gate: ROLLOUT_UNDER_WAY.to_owned(),
            message: format!(
                "the rollout of {} finishes first (rollout.onNewerAmi: finish); {} follows",
                current.image.id, newer.image.id
            ),
            opens: None,
        });
        chosen = Some(current.clone());
    }
    held_back.extend(selection.held_back().map(|(candidate, hold)| HeldBack {
        image: candidate.image.id.clone(),
        gate: hold.gate().to_owned(),
        message: hold.to_string(),
        opens: hold.opens().map(Time),
    }));
    held_back.truncate(5);
    Choice { chosen, held_back }
}

/// A rollout toward `target` is under way: it moved a group (updating, verifying or done on
/// it), another still waits or moves, and nothing halted it.
fn under_way(status: &AMIRefresherStatus, target: &str) -> bool {
    let groups = &status.node_groups;
    let moved = groups.iter().any(|g| {
        g.to_image.as_deref() == Some(target)
            && matches!(
                g.phase,
                NodeGroupPhase::Updating | NodeGroupPhase::Verifying | NodeGroupPhase::Succeeded
            )
    });
    let open = groups.iter().any(|g| {
        matches!(
            g.phase,
            NodeGroupPhase::Pending | NodeGroupPhase::Updating | NodeGroupPhase::Verifying
        )
    });
    moved && open && !groups.iter().any(|g| g.phase.halts())
}

/// Where `spec.maintenanceWindows` stand at `now`, or why they cannot be read.
pub fn window(spec: &AMIRefresherSpec, now: Timestamp) -> Result<WindowState, String> {
    Windows::parse(&spec.maintenance_windows, "spec.maintenanceWindows").map(|w| w.at(now))
}

/// The earliest future moment something held back may move by itself: a gate opening, or a
/// maintenance window opening while one is needed.
pub fn next_wake(
    held_back: &[HeldBack],
    window: Option<&WindowState>,
    now: Timestamp,
) -> Option<Timestamp> {
    held_back
        .iter()
        .filter_map(|h| h.opens.as_ref().map(|t| t.0))
        .chain(window.filter(|w| !w.open).and_then(|w| w.next_opens))
        .filter(|t| *t > now)
        .min()
}
