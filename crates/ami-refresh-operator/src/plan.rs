//! Which node groups are updated now: a pure function of the target AMI, what each group runs,
//! and where the rollout stood.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use opsy_api::{
    AMIRefresherSpec,
    ami_refresher::{
        APPROVE_ANNOTATION, NodeGroupKind, NodeGroupPhase, NodeGroupStatus, OnFailure,
    },
    lanes::Lane,
};

/// What a group runs, as far as this operator can manage it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupImage {
    /// The group's AMI cannot be set by this operator; why, for status.
    NotManageable {
        /// Why.
        reason: String,
    },
    /// The group runs `image_id` from `version` of launch template `template_id`.
    Runs {
        /// The AMI its nodes run (most of them, when `others` is not empty).
        image_id: String,
        /// Other AMIs some of its nodes still run (a self-managed group part-way refreshed).
        others: Vec<String>,
        /// `lt-…`
        template_id: String,
        /// The template version in use.
        version: i64,
    },
}

/// One group of the cluster, observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Managed node group or self-managed Auto Scaling group.
    pub kind: NodeGroupKind,
    /// What it runs.
    pub image: GroupImage,
    /// An update of the group is running on AWS (EKS reports the group `UPDATING`).
    pub busy: bool,
    /// How many nodes it should have.
    pub desired: Option<i32>,
    /// Its instances (`i-…`), for self-managed groups: their nodes are found by
    /// `spec.providerID`.
    pub instances: Vec<String>,
    /// For managed groups: the Auto Scaling groups EKS runs its nodes in
    /// (`resources.autoScalingGroups`), read while the group is verified.
    pub scaling_groups: Vec<String>,
    /// The lane of the AMI it runs, once read ([`crate::lanes`]).
    pub lane: Option<Lane>,
    /// When the AMI it runs was built, once read.
    pub image_created: Option<Timestamp>,
    /// The `status` tag of the AMI it runs, once read.
    pub image_status: Option<String>,
}

/// The AMI each group moves to: its lane's target; `primary` for a group whose lane was not
/// read (a cluster of one lane).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Targets {
    /// The target of the lane with the most groups (`status.targetImage`).
    pub primary: String,
    /// Each lane's target.
    pub by_lane: BTreeMap<Lane, String>,
}

impl Targets {
    /// One target for every group.
    pub fn single(target: &str) -> Self {
        Self {
            primary: target.to_owned(),
            by_lane: BTreeMap::new(),
        }
    }

    /// The target of `group`, or why it has none.
    pub fn of(&self, group: &Group) -> Result<&str, String> {
        match &group.lane {
            Some(lane) if !self.by_lane.is_empty() => {
                self.by_lane.get(lane).map(String::as_str).ok_or_else(|| {
                    format!("no eligible candidate is {lane}, the lane of the AMI it runs")
                })
            }
            _ => Ok(&self.primary),
        }
    }

    /// Every target, primary first, each once.
    pub fn all(&self) -> Vec<&str> {
        let mut all = vec![self.primary.as_str()];
        for target in self.by_lane.values() {
            if !all.contains(&target.as_str()) {
                all.push(target);
            }
        }
        all
    }

    /// The targets for messages: the primary alone, or `ami-1 (x86_64/standard), ami-2
    /// (arm64/standard)`.
    pub fn describe(&self) -> String {
        if self.all().len() <= 1 {
            return self.primary.clone();
        }
        self.by_lane
            .iter()
            .map(|(lane, target)| format!("{target} ({lane})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The rollout's next step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// One entry per group, sorted by name.
    pub groups: Vec<NodeGroupStatus>,
    /// Groups whose update starts now.
    pub start: Vec<String>,
    /// A failed group stopped the rollout (`rollout.haltOnFailure`, or `rollout.onFailure:
    /// rollback`).
    pub halted: bool,
    /// Groups this rollout moved that go back now (`rollout.onFailure: rollback`).
    pub rollback: Vec<String>,
    /// The canary groups are done; the others wait for the approval of the target
    /// (`rollout.approveAfterCanary`).
    pub awaiting_approval: bool,
    /// Names in `exclude` or `rollout.canary` that match no group.
    pub unknown: Vec<String>,
}

fn entry(group: &Group, phase: NodeGroupPhase) -> NodeGroupStatus {
    let (template, version, image) = match &group.image {
        GroupImage::Runs {
            image_id,
            template_id,
            version,
            ..
        } => (
            Some(template_id.clone()),
            Some(version.to_string()),
            Some(image_id.clone()),
        ),
        GroupImage::NotManageable { .. } => (None, None, None),
    };
    NodeGroupStatus {
        name: group.name.clone(),
        kind: group.kind,
        phase,
        launch_template_id: template,
        from_version: version,
        to_version: None,
        from_image: image,
        to_image: None,
        update_id: None,
        update_type: None,
        message: None,
        started: None,
        finished: None,
        health: None,
        rollback_version: None,
        failed_on: None,
        desired_size: group.desired,
        lane: group.lane.as_ref().map(ToString::to_string),
        image_created: group.image_created.map(Time),
        image_status: group.image_status.clone(),
    }
}

/// Whether the approval annotation's value `approved` (AMI ids, comma-separated) names the
/// target of `entry`.
pub fn is_approved(approved: Option<&str>, entry: &NodeGroupStatus) -> bool {
    approves(approved, entry.to_image.as_deref().unwrap_or_default())
}

/// Whether the approval annotation's value `approved` (AMI ids, comma-separated) names
/// `target`.
pub fn approves(approved: Option<&str>, target: &str) -> bool {
    approved.is_some_and(|a| {
        a.split(',')
            .map(str::trim)
            .any(|a| !a.is_empty() && a == target)
    })
}

/// The targets of the pending groups of `groups` that `approved` does not approve yet, as the
/// annotation's value that would approve them (sorted, comma-separated).
pub fn to_approve(groups: &[NodeGroupStatus], approved: Option<&str>) -> String {
    let mut unapproved: Vec<&str> = groups
        .iter()
        .filter(|g| g.phase == NodeGroupPhase::Pending && !is_approved(approved, g))
        .filter_map(|g| g.to_image.as_deref())
        .collect();
    unapproved.sort_unstable();
    unapproved.dedup();
    unapproved.join(",")
}

/// Plans the rollout of `target`. `previous` is the last status, with the groups that were
/// updating already polled; `spec_changed` is true when the spec changed since (failed groups
/// are then tried again); `approved` is the AMI the approval annotation names, if any.
pub fn plan(
    spec: &AMIRefresherSpec,
    targets: &Targets,
    groups: &[Group],
    previous: &[NodeGroupStatus],
    spec_changed: bool,
    approved: Option<&str>,
) -> Plan {
    let mut sorted: Vec<&Group> = groups.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    // Each group's target, by name.
    let mut target_of: BTreeMap<String, String> = BTreeMap::new();
    for group in sorted {
        let prev = previous.iter().find(|p| p.name == group.name);
        let target = targets.of(group);
        let same_target =
            prev.is_some_and(|p| p.to_image.as_deref() == target.as_ref().ok().copied());
        let status = if spec.exclude.contains(&group.name) {
            NodeGroupStatus {
                message: Some("listed in spec.exclude".into()),
                ..entry(group, NodeGroupPhase::Excluded)
            }
        } else {
            match (&group.image, target.as_ref()) {
                (GroupImage::NotManageable { reason }, _) | (_, Err(reason)) => NodeGroupStatus {
                    message: Some(reason.clone()),
                    ..entry(group, NodeGroupPhase::Skipped)
                },
                (GroupImage::Runs { .. }, Ok(&target)) => match prev {
                    // A rollback in flight is followed to its end, whatever the target is now.
                    Some(p) if p.phase == NodeGroupPhase::RollingBack => p.clone(),
                    Some(p)
                        if same_target
                            && p.phase == NodeGroupPhase::RolledBack
                            && !spec_changed =>
                    {
                        p.clone()
                    }
                    Some(p)
                        if same_target
                            && matches!(
                                p.phase,
                                NodeGroupPhase::Updating | NodeGroupPhase::Verifying
                            ) =>
                    {
                        p.clone()
                    }
                    Some(p)
                        if same_target && p.phase == NodeGroupPhase::Failed && !spec_changed =>
                    {
                        p.clone()
                    }
                    Some(p)
                        if same_target
                            && p.phase == NodeGroupPhase::Succeeded
                            && runs(group, target) =>
                    {
                        p.clone()
                    }
                    // Found on the target while this rollout meant to move it but had not
                    // recorded an update (a process that crashed right after starting it, or
                    // someone else): its arrival is no health verdict; the gate decides.
                    Some(p)
                        if same_target
                            && p.phase == NodeGroupPhase::Pending
                            && spec.rollout.health_gate
                            && runs(group, target) =>
                    {
                        let now_runs = entry(group, NodeGroupPhase::Verifying);
                        NodeGroupStatus {
                            to_image: Some(target.to_owned()),
                            to_version: now_runs.from_version.clone(),
                            from_image: p.from_image.clone(),
                            from_version: p.from_version.clone(),
                            started: p.started.clone(),
                            message: Some(format!(
                                "found on {target} without a recorded update; verifying its nodes"
                            )),
                            ..now_runs
                        }
                    }
                    _ if runs(group, target) => NodeGroupStatus {
                        message: Some(format!("runs {target}")),
                        ..entry(group, NodeGroupPhase::UpToDate)
                    },
                    _ => NodeGroupStatus {
                        to_image: Some(target.to_owned()),
                        message: Some(format!("waiting to move to {target}")),
                        ..entry(group, NodeGroupPhase::Pending)
                    },
                },
            }
        };
        if let Ok(target) = targets.of(group) {
            target_of.insert(group.name.clone(), target.to_owned());
        }
        // What the group runs now, whatever the entry kept from before.
        let status = NodeGroupStatus {
            lane: group.lane.as_ref().map(ToString::to_string),
            image_created: group.image_created.map(Time),
            image_status: group.image_status.clone(),
            ..status
        };
        out.push(status);
    }

    let known: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let mut unknown: Vec<String> = spec
        .exclude
        .iter()
        .chain(&spec.rollout.canary)
        .filter(|n| !known.contains(&n.as_str()))
        .cloned()
        .collect();
    unknown.sort();
    unknown.dedup();

    let roll_back = spec.rollout.on_failure == OnFailure::Rollback;
    let halted = (spec.rollout.halt_on_failure || roll_back) && out.iter().any(|g| g.phase.halts());
    // The breaker tripped: every group this rollout moved (or tried to) goes back, once. Groups
    // still updating are followed to their end first.
    let rollback = if halted && roll_back {
        out.iter()
            .filter(|g| {
                matches!(
                    g.phase,
                    NodeGroupPhase::Succeeded | NodeGroupPhase::Verifying | NodeGroupPhase::Failed
                ) && g.rollback_version.is_none()
                    && g.to_image.is_some()
                    && g.to_image.as_ref() == target_of.get(&g.name)
                    && g.from_image.is_some()
                    && g.from_image != g.to_image
                    && g.from_version.is_some()
            })
            .map(|g| g.name.clone())
            .collect()
    } else {
        Vec::new()
    };
    let mut start = Vec::new();
    let mut awaiting_approval = false;
    if !halted && !spec.suspend {
        let wait = spec
            .refresh_config
            .as_ref()
            .is_none_or(|c| c.wait_for_completion);
        // A group whose nodes are still being verified holds its slot: the next wave starts
        // only after the previous one is healthy.
        let in_flight = if wait {
            out.iter().filter(|g| g.phase.in_flight()).count()
        } else {
            0
        };
        let slots = usize::try_from(spec.rollout.max_in_flight)
            .unwrap_or(1)
            .saturating_sub(in_flight);
        let is_canary = |g: &NodeGroupStatus| spec.rollout.canary.contains(&g.name);
        let pending = |g: &&NodeGroupStatus| g.phase == NodeGroupPhase::Pending;
        let canary_pending: Vec<&NodeGroupStatus> = out
            .iter()
            .filter(pending)
            .filter(|g| is_canary(g))
            .collect();
        let canary_busy = out.iter().any(|g| {
            is_canary(g)
                && matches!(
                    g.phase,
                    NodeGroupPhase::Updating | NodeGroupPhase::Verifying | NodeGroupPhase::Failed
                )
        });
        // Each lane's target is approved on its own: the annotation lists the AMIs it approves.
        let needs_approval =
            |g: &NodeGroupStatus| spec.rollout.approve_after_canary && !is_approved(approved, g);
        let wave: Vec<&NodeGroupStatus> = if !canary_pending.is_empty() {
            canary_pending
        } else if canary_busy {
            Vec::new()
        } else {
            awaiting_approval = out.iter().filter(pending).any(&needs_approval);
            out.iter()
                .filter(pending)
                .filter(|g| !needs_approval(g))
                .collect()
        };
        start = wave.iter().take(slots).map(|g| g.name.clone()).collect();
    }
    if awaiting_approval {
        // Every target still to approve, so that one annotation can approve them all.
        let all = to_approve(&out, approved);
        for g in out
            .iter_mut()
            .filter(|g| g.phase == NodeGroupPhase::Pending && !is_approved(approved, g))
        {
            g.message = Some(format!(
                "waiting for approval after the canary: annotate the AMIRefresher {APPROVE_ANNOTATION}={all}"
            ));
        }
    }
    Plan {
        groups: out,
        start,
        halted,
        rollback,
        awaiting_approval,
        unknown,
    }
}

/// Nodes on the target, of the desired sizes of the groups the rollout manages (see
/// `status.nodesOnTarget`): `(on target, total)`.
pub fn nodes_on_target(entries: &[NodeGroupStatus], groups: &[Group]) -> (i64, i64) {
    let mut on_target = 0;
    let mut total = 0;
    for entry in entries {
        let desired = groups
            .iter()
            .find(|g| g.name == entry.name)
            .and_then(|g| g.desired)
            .map_or(0, i64::from);
        if let Some(on) = group_on_target(entry, desired) {
            on_target += on;
            total += desired;
        }
    }
    (on_target, total)
}

/// A group's nodes on the target, of its `desired` size: all once it is done, its Ready ones
/// on the target while it is verified, none before; `None` for groups the rollout does not
/// manage (excluded, skipped).
pub fn group_on_target(entry: &NodeGroupStatus, desired: i64) -> Option<i64> {
    match entry.phase {
        NodeGroupPhase::Excluded | NodeGroupPhase::Skipped => None,
        NodeGroupPhase::UpToDate | NodeGroupPhase::Succeeded => Some(desired),
        NodeGroupPhase::Verifying => Some(
            entry
                .health
                .as_ref()
                .map_or(0, |h| i64::from(h.ready).min(desired)),
        ),
        _ => Some(0),
    }
}

fn runs(group: &Group, target: &str) -> bool {
    matches!(&group.image, GroupImage::Runs { image_id, others, .. }
        if image_id == target && others.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> AMIRefresherSpec {
        let mut base = serde_json::json!({"region": "us-west-2", "clusterName": "c", "ami": "ami-0aaaaaaaaaaaaaaaa"});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn group(name: &str, image: &str) -> Group {
        Group {
            name: name.into(),
            kind: NodeGroupKind::Managed,
            image: GroupImage::Runs {
                image_id: image.into(),
                others: Vec::new(),
                template_id: format!("lt-{name}"),
                version: 1,
            },
            busy: false,
            desired: Some(2),
            instances: Vec::new(),
            scaling_groups: Vec::new(),
            lane: None,
            image_created: None,
            image_status: None,
        }
    }

    const T: &str = "ami-target";

    fn phases(plan: &Plan) -> Vec<(String, NodeGroupPhase)> {
        plan.groups
            .iter()
            .map(|g| (g.name.clone(), g.phase))
            .collect()
    }

    #[test]
    fn classifies_groups_and_starts_one_wave() {
        let groups = vec![
            group("d", "ami-old"),
            group("a", "ami-old"),
            group("b", T),
            group("c", "ami-old"),
            Group {
                name: "e".into(),
                kind: NodeGroupKind::Managed,
                image: GroupImage::NotManageable {
                    reason: "no launch template".into(),
                },
                busy: false,
                desired: None,
                instances: Vec::new(),
                scaling_groups: Vec::new(),
                lane: None,
                image_created: None,
                image_status: None,
            },
        ];
        let s = spec(
            serde_json::json!({"exclude": ["c", "ghost"], "rollout": {"maxInFlight": 1, "canary": ["d"]}}),
        );
        let p = plan(&s, &Targets::single(T), &groups, &[], false, None);
        assert_eq!(
            phases(&p),
            [
                ("a".into(), NodeGroupPhase::Pending),
                ("b".into(), NodeGroupPhase::UpToDate),
                ("c".into(), NodeGroupPhase::Excluded),
                ("d".into(), NodeGroupPhase::Pending),
                ("e".into(), NodeGroupPhase::Skipped),
            ]
        );
        assert_eq!(p.start, ["d"], "the canary goes first, alone");
        assert_eq!(p.unknown, ["ghost"]);

        // While the canary updates, nothing else starts; after it, the rest in waves.
        let mut previous = p.groups.clone();
        previous[3].phase = NodeGroupPhase::Updating;
        assert!(
            plan(&s, &Targets::single(T), &groups, &previous, false, None)
                .start
                .is_empty()
        );
        previous[3].phase = NodeGroupPhase::Succeeded;
        let mut done = groups.clone();
        done[0] = group("d", T);
        assert_eq!(
            plan(&s, &Targets::single(T), &done, &previous, false, None).start,
            ["a"]
        );
    }

    #[test]
    fn a_group_found_on_the_target_it_was_waiting_for_is_verified_not_counted() {
        // A process started the update and crashed before recording it; the update ended while
        // no operator ran. The group's arrival is no health verdict.
        let s = spec(serde_json::json!({}));
        let before = plan(
            &s,
            &Targets::single(T),
            &[group("a", "ami-old")],
            &[],
            false,
            None,
        );
        assert_eq!(phases(&before), [("a".into(), NodeGroupPhase::Pending)]);
        let mut moved = group("a", T);
        if let GroupImage::Runs { version, .. } = &mut moved.image {
            *version = 2;
        }
        let after = plan(
            &s,
            &Targets::single(T),
            &[moved.clone()],
            &before.groups,
            false,
            None,
        );
        let a = &after.groups[0];
        assert_eq!(a.phase, NodeGroupPhase::Verifying);
        assert_eq!(
            (a.from_image.as_deref(), a.from_version.as_deref()),
            (Some("ami-old"), Some("1")),
            "what it ran before, for a rollback"
        );
        assert_eq!(
            (a.to_image.as_deref(), a.to_version.as_deref()),
            (Some(T), Some("2"))
        );
        // Without the health gate, or without a rollout that meant to move it, it is up to date.
        let ungated = spec(serde_json::json!({"rollout": {"healthGate": false}}));
        let after = plan(
            &ungated,
            &Targets::single(T),
            &[moved.clone()],
            &before.groups,
            false,
            None,
        );
        assert_eq!(phases(&after), [("a".into(), NodeGroupPhase::UpToDate)]);
        let after = plan(&s, &Targets::single(T), &[moved], &[], false, None);
        assert_eq!(phases(&after), [("a".into(), NodeGroupPhase::UpToDate)]);
    }

    #[test]
    fn failures_halt_until_the_spec_changes() {
        let groups = vec![
            group("a", "ami-old"),
            group("b", "ami-old"),
            group("c", "ami-old"),
        ];
        let s = spec(serde_json::json!({"rollout": {"maxInFlight": 2}}));
        let p = plan(&s, &Targets::single(T), &groups, &[], false, None);
        assert_eq!(p.start, ["a", "b"]);
        let mut previous = p.groups.clone();
        previous[0].phase = NodeGroupPhase::Failed;
        previous[1].phase = NodeGroupPhase::Updating;
        let p = plan(&s, &Targets::single(T), &groups, &previous, false, None);
        assert!(p.halted && p.start.is_empty());
        let p = plan(&s, &Targets::single(T), &groups, &previous, true, None);
        assert!(!p.halted);
        assert_eq!(p.start, ["a"], "one slot left beside b, still updating");

        let keep_going =
            spec(serde_json::json!({"rollout": {"maxInFlight": 2, "haltOnFailure": false}}));
        assert_eq!(
            plan(
                &keep_going,
                &Targets::single(T),
                &groups,
                &previous,
                false,
                None
            )
            .start,
            ["c"]
        );
        let suspended = spec(serde_json::json!({"suspend": true}));
        assert!(
            plan(&suspended, &Targets::single(T), &groups, &[], false, None)
                .start
                .is_empty()
        );
    }

    #[test]
    fn with_rollback_a_failure_sends_every_moved_group_back_once() {
        let groups = vec![
            group("a", T),
            group("b", T),
            group("c", "ami-old"),
            group("d", "ami-old"),
        ];
        let s = spec(serde_json::json!({"rollout": {"maxInFlight": 2, "onFailure": "rollback"}}));
        let mut previous = plan(&s, &Targets::single(T), &[], &[], false, None).groups;
        for (name, phase) in [
            ("a", NodeGroupPhase::Succeeded),
            ("b", NodeGroupPhase::Failed),
            ("c", NodeGroupPhase::Updating),
            ("d", NodeGroupPhase::Pending),
        ] {
            let mut e = entry(&group(name, "ami-old"), phase);
            e.to_image = Some(T.into());
            previous.push(e);
        }
        let p = plan(&s, &Targets::single(T), &groups, &previous, false, None);
        assert!(p.halted && p.start.is_empty());
        assert_eq!(p.rollback, ["a", "b"], "c is followed to its end first");

        // Started once: a group rolling back or rolled back is not sent back again, and the
        // rollout stays halted while it is.
        previous[0].phase = NodeGroupPhase::RollingBack;
        previous[0].rollback_version = Some("1".into());
        previous[1].phase = NodeGroupPhase::RolledBack;
        previous[1].rollback_version = Some("1".into());
        previous[2].phase = NodeGroupPhase::Verifying;
        let p = plan(&s, &Targets::single(T), &groups, &previous, false, None);
        assert!(p.halted && p.start.is_empty());
        assert_eq!(p.rollback, ["c"]);
        // Even when the target changes, the rollback in flight is kept.
        let p = plan(
            &s,
            &Targets::single("ami-other"),
            &groups,
            &previous,
            false,
            None,
        );
        assert_eq!(p.groups[0].phase, NodeGroupPhase::RollingBack);

        // Without onFailure: rollback, nothing goes back.
        let halt = spec(serde_json::json!({"rollout": {"maxInFlight": 2}}));
        previous[0].phase = NodeGroupPhase::Succeeded;
        previous[0].rollback_version = None;
        let p = plan(&halt, &Targets::single(T), &groups, &previous, false, None);
        assert!(p.halted && p.rollback.is_empty());
    }

    #[test]
    fn after_the_canary_the_other_waves_wait_for_the_approval_of_this_target() {
        let groups = vec![group("a", T), group("b", "ami-old"), group("c", "ami-old")];
        let s = spec(
            serde_json::json!({"rollout": {"maxInFlight": 2, "canary": ["a"], "approveAfterCanary": true}}),
        );
        let p = plan(&s, &Targets::single(T), &groups, &[], false, None);
        assert!(p.awaiting_approval && p.start.is_empty());
        assert!(
            p.groups[1]
                .message
                .as_deref()
                .unwrap()
                .ends_with("ami.refresh.ops/approve=ami-target")
        );
        // An approval of another AMI does not count.
        let p = plan(
            &s,
            &Targets::single(T),
            &groups,
            &[],
            false,
            Some("ami-older"),
        );
        assert!(p.awaiting_approval && p.start.is_empty());
        let p = plan(&s, &Targets::single(T), &groups, &[], false, Some(T));
        assert!(!p.awaiting_approval);
        assert_eq!(p.start, ["b", "c"]);
        // While the canary is pending or in flight, nothing waits for approval yet.
        let fresh = vec![group("a", "ami-old"), group("b", "ami-old")];
        let p = plan(&s, &Targets::single(T), &fresh, &[], false, None);
        assert!(!p.awaiting_approval);
        assert_eq!(p.start, ["a"]);
    }

    #[test]
    fn approving_one_lanes_target_does_not_approve_the_others() {
        use opsy_api::lanes::Lane;
        let x86 = Lane::new("x86_64", "standard");
        let arm = Lane::new("arm64", "standard");
        let laned = |name: &str, image: &str, lane: &Lane| Group {
            lane: Some(lane.clone()),
            ..group(name, image)
        };
        let groups = vec![
            laned("a", "ami-x-new", &x86),
            laned("b", "ami-x-old", &x86),
            laned("c", "ami-a-old", &arm),
        ];
        let targets = Targets {
            primary: "ami-x-new".into(),
            by_lane: BTreeMap::from([
                (x86.clone(), "ami-x-new".to_owned()),
                (arm.clone(), "ami-a-new".to_owned()),
            ]),
        };
        let s = spec(
            serde_json::json!({"rollout": {"maxInFlight": 3, "canary": ["a"], "approveAfterCanary": true}}),
        );
        // The primary lane's target approved: only its groups go on; c waits, and its message
        // names what is left to approve.
        let p = plan(&s, &targets, &groups, &[], false, Some("ami-x-new"));
        assert_eq!(p.start, ["b"]);
        assert!(p.awaiting_approval);
        let c = p.groups.iter().find(|g| g.name == "c").unwrap();
        assert!(
            c.message
                .as_deref()
                .unwrap()
                .ends_with("ami.refresh.ops/approve=ami-a-new"),
            "{c:?}"
        );
        assert_eq!(to_approve(&p.groups, Some("ami-x-new")), "ami-a-new");
        // Nothing approved: one annotation naming both approves both.
        let p = plan(&s, &targets, &groups, &[], false, None);
        assert_eq!(to_approve(&p.groups, None), "ami-a-new,ami-x-new");
        let p = plan(
            &s,
            &targets,
            &groups,
            &[],
            false,
            Some("ami-a-new, ami-x-new"),
        );
        assert_eq!(p.start, ["b", "c"]);
        assert!(!p.awaiting_approval);
    }

    #[test]
    fn nodes_on_target_count_done_groups_whole_and_verified_ones_by_ready_nodes() {
        let groups = vec![
            group("a", T),
            group("b", "ami-old"),
            group("c", "ami-old"),
            group("x", "ami-old"),
        ];
        let s = spec(serde_json::json!({"exclude": ["x"]}));
        let mut entries = plan(&s, &Targets::single(T), &groups, &[], false, None).groups;
        assert_eq!(nodes_on_target(&entries, &groups), (2, 6));
        entries[1].phase = NodeGroupPhase::Verifying;
        entries[1].health = Some(opsy_api::ami_refresher::GroupHealth {
            ready: 1,
            desired: 2,
            ..Default::default()
        });
        assert_eq!(nodes_on_target(&entries, &groups), (3, 6));
    }

    #[test]
    fn without_wait_for_completion_started_groups_do_not_hold_a_slot() {
        let groups = vec![group("a", "ami-old"), group("b", "ami-old")];
        let s = spec(serde_json::json!({"refreshConfig": {"waitForCompletion": false}}));
        let mut previous = plan(&s, &Targets::single(T), &groups, &[], false, None).groups;
        previous[0].phase = NodeGroupPhase::Updating;
        assert_eq!(
            plan(&s, &Targets::single(T), &groups, &previous, false, None).start,
            ["b"]
        );
    }
}
