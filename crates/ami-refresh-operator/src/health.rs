//! The health gate: after AWS reports a group's update done, the group is healthy only when
//! the cluster agrees — enough of its nodes run the target AMI and are Ready, and have stayed
//! Ready for the bake time. A pure judgement over the nodes, unit tested without I/O.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::Time};
use opsy_api::ami_refresher::{FailureEvidence, GroupHealth, NodeGroupKind};

/// Label EKS puts on the nodes of a managed node group: its name.
pub const NODEGROUP_LABEL: &str = "eks.amazonaws.com/nodegroup";
/// Label EKS puts on the nodes of a managed node group: the AMI they run.
pub const NODEGROUP_IMAGE_LABEL: &str = "eks.amazonaws.com/nodegroup-image";
/// Nodes named in a condition message, at most.
const NAMED: usize = 5;

/// A node, as far as the gate cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Managed node group (label).
    pub group: Option<String>,
    /// AMI (label of managed groups' nodes).
    pub image: Option<String>,
    /// EC2 instance id from `spec.providerID` (`aws:///us-west-2a/i-…`).
    pub instance: Option<String>,
    /// The Ready condition is `True`.
    pub ready: bool,
    /// When the Ready condition last changed.
    pub since: Option<Timestamp>,
    /// Why it is not Ready (`KubeletNotReady`, or `NoReadyCondition`).
    pub reason: String,
}

impl NodeView {
    /// The view of `node`.
    pub fn of(node: &Node) -> Self {
        let labels = node.metadata.labels.as_ref();
        let label = |key: &str| labels.and_then(|l| l.get(key)).cloned();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            group: label(NODEGROUP_LABEL),
            image: label(NODEGROUP_IMAGE_LABEL),
            instance: node
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .and_then(|p| p.rsplit('/').next())
                .filter(|i| i.starts_with("i-"))
                .map(str::to_owned),
            ready: ready.is_some_and(|c| c.status == "True"),
            since: ready.and_then(|c| c.last_transition_time.as_ref().map(|t| t.0)),
            reason: ready
                .and_then(|c| c.reason.clone())
                .unwrap_or_else(|| "NoReadyCondition".into()),
        }
    }
}

/// The group being verified.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Its name.
    pub name: &'a str,
    /// Managed or self-managed.
    pub kind: NodeGroupKind,
    /// The AMI its nodes must run.
    pub target: &'a str,
    /// Its desired size.
    pub desired: i32,
    /// Its instances on the target: a self-managed group's (all on the target when AWS
    /// reported done); a managed group's launched from the target, when read from its Auto
    /// Scaling group.
    pub instances: &'a [String],
    /// A managed group's nodes are matched by instance (`instances` read from its Auto Scaling
    /// group), not by the labels EKS may not write for a custom AMI.
    pub by_instance: bool,
    /// When AWS reported its update done.
    pub done_at: Timestamp,
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Enough Ready nodes on the target, baked.
    Healthy(GroupHealth),
    /// Not yet; the message says what is awaited.
    Waiting(GroupHealth, String),
    /// Not healthy within the timeout; the message names the evidence, of this kind.
    Unhealthy(GroupHealth, String, FailureEvidence),
}

/// The nodes of `subject` that run its target, sorted by name: by instance id
/// (`spec.providerID`) — for a managed group whose Auto Scaling group was not read, by the
/// labels EKS writes.
pub fn on_target<'n>(subject: Subject<'_>, nodes: &'n [NodeView]) -> Vec<&'n NodeView> {
    let by_instance = subject.by_instance || subject.kind == NodeGroupKind::SelfManaged;
    let mut on_target: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| {
            if by_instance {
                n.instance
                    .as_ref()
                    .is_some_and(|i| subject.instances.contains(i))
            } else {
                n.group.as_deref() == Some(subject.name)
                    && n.image.as_deref() == Some(subject.target)
            }
        })
        .collect();
    on_target.sort_by(|a, b| a.name.cmp(&b.name));
    on_target
}

/// Judges `subject` from `nodes` (all nodes that may belong to it) at `now`.
pub fn judge(
    subject: Subject<'_>,
    nodes: &[NodeView],
    bake: Option<Duration>,
    timeout: Duration,
    now: Timestamp,
) -> Verdict {
    let on_target = on_target(subject, nodes);
    let ready: Vec<&&NodeView> = on_target.iter().filter(|n| n.ready).collect();
    let not_ready: Vec<String> = on_target
        .iter()
        .filter(|n| !n.ready)
        .map(|n| format!("{} {}", n.name, n.reason))
        .collect();
    let desired = subject.desired.max(0);
    let count = i32::try_from(ready.len()).unwrap_or(i32::MAX);
    let enough = count >= desired && not_ready.is_empty();
    // The last of them to turn Ready starts the bake. A kubelet whose clock runs ahead of this
    // one must not hold the gate: a transition "in the future" counts as now.
    let ready_since = enough
        .then(|| ready.iter().filter_map(|n| n.since).max())
        .flatten()
        .map(|since| since.min(now));
    let bake_until = match (ready_since, bake) {
        (Some(since), Some(bake)) => SignedDuration::try_from(bake)
            .ok()
            .and_then(|b| since.checked_add(b).ok()),
        (Some(since), None) => Some(since),
        _ => None,
    };
    let health = GroupHealth {
        ready: count,
        desired,
        not_ready: not_ready.iter().take(NAMED).cloned().collect(),
        ready_since: ready_since.map(Time),
        bake_until: bake_until.filter(|_| bake.is_some()).map(Time),
        alarms: Vec::new(),
        pods_ready: None,
        pods: None,
        unready_pods: Vec::new(),
    };
    if enough && (desired == 0 || bake_until.is_some_and(|until| until <= now)) {
        return Verdict::Healthy(health);
    }
    let waited = now.duration_since(subject.done_at);
    let timed_out = SignedDuration::try_from(timeout).is_ok_and(|t| waited >= t);
    let evidence = if not_ready.is_empty() {
        format!("{count} of {desired} nodes on {} Ready", subject.target)
    } else {
        let mut named = not_ready
            .iter()
            .take(NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if not_ready.len() > NAMED {
            named.push_str(&format!(" and {} more", not_ready.len() - NAMED));
        }
        format!(
            "{} of {} new nodes NotReady: {named}",
            not_ready.len(),
            on_target.len()
        )
    };
    if timed_out && !enough {
        let secs = timeout.as_secs();
        let waited = if secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        };
        // Nodes on the AMI that are NotReady, or instances of the group that never joined as
        // nodes, implicate the AMI; fewer nodes than desired and nothing else is capacity.
        let joined: Vec<&str> = on_target
            .iter()
            .filter_map(|n| n.instance.as_deref())
            .collect();
        let never_joined: Vec<&String> = subject
            .instances
            .iter()
            .filter(|i| !joined.contains(&i.as_str()))
            .collect();
        let (evidence, kind) = if !not_ready.is_empty() {
            (evidence, FailureEvidence::Nodes)
        } else if !never_joined.is_empty() {
            let mut named = never_joined
                .iter()
                .take(NAMED)
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if never_joined.len() > NAMED {
                named.push_str(&format!(" and {} more", never_joined.len() - NAMED));
            }
            (
                format!(
                    "{} of {} instances never joined the cluster as nodes: {named}",
                    never_joined.len(),
                    subject.instances.len()
                ),
                FailureEvidence::Nodes,
            )
        } else {
            (
                format!("{evidence} (no node NotReady: capacity)"),
                FailureEvidence::Capacity,
            )
        };
        return Verdict::Unhealthy(
            health,
            format!("{evidence} after {waited} (rollout.healthTimeout)"),
            kind,
        );
    }
    let message = match bake_until {
        Some(until) if enough => format!("{evidence}; baking until {until}"),
        _ => format!("AWS finished; waiting for the nodes: {evidence}"),
    };
    Verdict::Waiting(health, message)
}

/// One pod on a group's node, as the gate needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// `namespace/name`.
    pub name: String,
    /// Its Ready condition is `True`.
    pub ready: bool,
    /// It ended (phase `Succeeded` or `Failed`): it does not count.
    pub ended: bool,
    /// Why it is not Ready (the Ready condition's reason, or its phase).
    pub reason: String,
}

impl PodView {
    /// The view of `pod`.
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> Self {
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        Self {
            name: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            ready: ready.is_some_and(|c| c.status == "True"),
            ended: phase == "Succeeded" || phase == "Failed",
            reason: ready.and_then(|c| c.reason.clone()).unwrap_or_else(|| {
                if phase.is_empty() {
                    "Pending".into()
                } else {
                    phase
                }
            }),
        }
    }
}

/// The verdict of the nodes, amended by the pods on them (`rollout.maxUnreadyPodsPercent`):
/// more not Ready than `max_percent` of those that count holds the group, and fails it once
/// `timed_out`.
pub fn with_pods(verdict: Verdict, pods: &[PodView], max_percent: i32, timed_out: bool) -> Verdict {
    let counted: Vec<&PodView> = pods.iter().filter(|p| !p.ended).collect();
    let mut unready: Vec<&PodView> = counted.iter().copied().filter(|p| !p.ready).collect();
    unready.sort_by(|a, b| a.name.cmp(&b.name));
    let total = i32::try_from(counted.len()).unwrap_or(i32::MAX);
    let bad = i32::try_from(unready.len()).unwrap_or(i32::MAX);
    let (mut health, message, unhealthy) = match verdict {
        Verdict::Healthy(h) => (h, None, None),
        Verdict::Waiting(h, m) => (h, Some(m), None),
        Verdict::Unhealthy(h, m, kind) => (h, Some(m), Some(kind)),
    };
    health.pods = Some(total);
    health.pods_ready = Some(total - bad);
    health.unready_pods = unready
        .iter()
        .take(NAMED)
        .map(|p| format!("{} {}", p.name, p.reason))
        .collect();
    if let Some(kind) = unhealthy {
        return Verdict::Unhealthy(health, message.unwrap_or_default(), kind);
    }
    // bad / total > max / 100, in integers.
    let too_many = i64::from(bad) * 100 > i64::from(max_percent.max(0)) * i64::from(total);
    if too_many {
        let evidence = format!(
            "{bad} of {total} pods on the new nodes not Ready (rollout.maxUnreadyPodsPercent {max_percent}): {}",
            health.unready_pods.join(", ")
        );
        return if timed_out {
            Verdict::Unhealthy(
                health,
                format!("{evidence}; still after rollout.healthTimeout"),
                FailureEvidence::Pods,
            )
        } else {
            Verdict::Waiting(health, evidence)
        };
    }
    match message {
        Some(m) => Verdict::Waiting(health, m),
        None => Verdict::Healthy(health),
    }
}

/// One watched alarm, as the gate needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmView {
    /// Its name.
    pub name: String,
    /// In `ALARM`.
    pub firing: bool,
    /// `OK`, `ALARM`, `INSUFFICIENT_DATA`.
    pub state: String,
    /// CloudWatch's reason.
    pub reason: String,
    /// Since when it is in this state.
    pub since: Option<Timestamp>,
}

/// The verdict of the nodes, amended by the alarms of `rollout.alarms` (`wanted`; `alarms` as
/// CloudWatch reports them): an alarm that entered `ALARM` after the group's update `started`
/// fails the group at once; one already firing before holds it (the gate cannot tell whose
/// fault it is); alarms that do not exist are shown, not waited for.
pub fn with_alarms(
    verdict: Verdict,
    wanted: &[String],
    alarms: &[AlarmView],
    started: Timestamp,
    timed_out: bool,
) -> Verdict {
    if wanted.is_empty() {
        return verdict;
    }
    let evidence: Vec<String> = wanted
        .iter()
        .take(20)
        .map(|name| match alarms.iter().find(|a| &a.name == name) {
            Some(a) => format!("{name}: {}", a.state),
            None => format!("{name}: not found"),
        })
        .collect();
    let (mut health, message, unhealthy) = match verdict {
        Verdict::Healthy(h) => (h, None, None),
        Verdict::Waiting(h, m) => (h, Some(m), None),
        Verdict::Unhealthy(h, m, kind) => (h, Some(m), Some(kind)),
    };
    health.alarms = evidence;
    let firing: Vec<&AlarmView> = alarms
        .iter()
        .filter(|a| a.firing && wanted.contains(&a.name))
        .collect();
    let since = |a: &AlarmView| {
        a.since
            .map(|t| format!(" at {}", t.strftime("%Y-%m-%d %H:%M:%S UTC")))
            .unwrap_or_default()
    };
    if let Some(a) = firing.iter().find(|a| a.since.is_none_or(|t| t >= started)) {
        let message = format!(
            "alarm {} entered ALARM{} while the group was being verified: {}",
            a.name,
            since(a),
            a.reason
        );
        return Verdict::Unhealthy(health, message, FailureEvidence::Alarms);
    }
    if let Some(kind) = unhealthy {
        return Verdict::Unhealthy(health, message.unwrap_or_default(), kind);
    }
    if let Some(a) = firing.first() {
        let message = format!(
            "alarm {} has been in ALARM{} (before this group started): {}",
            a.name,
            since(a),
            a.reason
        );
        if timed_out {
            return Verdict::Unhealthy(
                health,
                format!("{message}; still after rollout.healthTimeout"),
                FailureEvidence::Alarms,
            );
        }
        return Verdict::Waiting(health, message);
    }
    match message {
        Some(m) => Verdict::Waiting(health, m),
        None => Verdict::Healthy(health),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "ami-target";

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn node(name: &str, image: &str, ready: bool, since: &str) -> NodeView {
        NodeView {
            name: name.into(),
            group: Some("a".into()),
            image: Some(image.into()),
            instance: None,
            ready,
            since: Some(at(since)),
            reason: if ready {
                "KubeletReady"
            } else {
                "KubeletNotReady"
            }
            .into(),
        }
    }

    fn subject(desired: i32) -> Subject<'static> {
        Subject {
            name: "a",
            kind: NodeGroupKind::Managed,
            target: T,
            desired,
            instances: &[],
            by_instance: false,
            done_at: at("2024-11-20T10:00:00Z"),
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn healthy_after_enough_ready_nodes_have_baked() {
        let nodes = [
            node("n1", T, true, "2024-11-20T10:01:00Z"),
            node("n2", T, true, "2024-11-20T10:03:00Z"),
            node("old", "ami-old", true, "2024-11-01T00:00:00Z"),
        ];
        let bake = Some(10 * MIN);
        match judge(
            subject(2),
            &nodes,
            bake,
            30 * MIN,
            at("2024-11-20T10:05:00Z"),
        ) {
            Verdict::Waiting(h, m) => {
                assert_eq!((h.ready, h.desired), (2, 2));
                assert_eq!(h.bake_until.unwrap().0, at("2024-11-20T10:13:00Z"));
                assert!(m.contains("baking until 2024-11-20T10:13:00Z"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(
                subject(2),
                &nodes,
                bake,
                30 * MIN,
                at("2024-11-20T10:13:00Z")
            ),
            Verdict::Healthy(_)
        ));
        // Without a bake time: healthy as soon as enough are Ready.
        assert!(matches!(
            judge(
                subject(2),
                &nodes,
                None,
                30 * MIN,
                at("2024-11-20T10:03:00Z")
            ),
            Verdict::Healthy(_)
        ));
        // A node clock ahead of ours (Ready "at 10:30" seen at 10:05) does not hold the gate;
        // a bake counts from now.
        let ahead = [
            node("n1", T, true, "2024-11-20T10:30:00Z"),
            node("n2", T, true, "2024-11-20T10:01:00Z"),
        ];
        assert!(matches!(
            judge(
                subject(2),
                &ahead,
                None,
                30 * MIN,
                at("2024-11-20T10:05:00Z")
            ),
            Verdict::Healthy(_)
        ));
        match judge(
            subject(2),
            &ahead,
            bake,
            30 * MIN,
            at("2024-11-20T10:05:00Z"),
        ) {
            Verdict::Waiting(h, _) => {
                assert_eq!(h.bake_until.unwrap().0, at("2024-11-20T10:15:00Z"));
            }
            other => panic!("{other:?}"),
        }
        // Too few nodes on the target (the old one does not count).
        assert!(matches!(
            judge(
                subject(3),
                &nodes,
                None,
                30 * MIN,
                at("2024-11-20T10:05:00Z")
            ),
            Verdict::Waiting(..)
        ));
    }

    #[test]
    fn nodes_that_never_become_ready_fail_the_group_after_the_timeout_with_evidence() {
        let nodes = [
            node("ip-10-0-1-23", T, false, "2024-11-20T10:02:00Z"),
            node("ip-10-0-1-24", T, false, "2024-11-20T10:02:00Z"),
            node("ip-10-0-1-25", T, true, "2024-11-20T10:02:00Z"),
        ];
        assert!(matches!(
            judge(
                subject(3),
                &nodes,
                None,
                10 * MIN,
                at("2024-11-20T10:09:00Z")
            ),
            Verdict::Waiting(..)
        ));
        match judge(
            subject(3),
            &nodes,
            None,
            10 * MIN,
            at("2024-11-20T10:10:00Z"),
        ) {
            Verdict::Unhealthy(h, m, kind) => {
                assert_eq!(kind, FailureEvidence::Nodes);
                assert_eq!(
                    m,
                    "2 of 3 new nodes NotReady: ip-10-0-1-23 KubeletNotReady, ip-10-0-1-24 KubeletNotReady after 10m (rollout.healthTimeout)"
                );
                assert_eq!(h.not_ready.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_shortfall_without_a_node_notready_is_capacity_and_instances_that_never_joined_are_the_amis()
     {
        let mut ready = node("ip-1", T, true, "2024-11-20T10:01:00Z");
        ready.instance = Some("i-1".into());
        let late = at("2024-11-20T10:10:00Z");
        // 1 of 3 nodes, no instance without a node: the capacity fell short.
        match judge(subject(3), &[ready.clone()], None, 10 * MIN, late) {
            Verdict::Unhealthy(_, m, kind) => {
                assert_eq!(kind, FailureEvidence::Capacity);
                assert!(
                    m.starts_with("1 of 3 nodes on ami-target Ready (no node NotReady: capacity)"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Instances i-2 and i-3 launched and never joined: the AMI's fault.
        let instances = ["i-1".to_owned(), "i-2".to_owned(), "i-3".to_owned()];
        let s = Subject {
            instances: &instances,
            by_instance: true,
            ..subject(3)
        };
        match judge(s, &[ready], None, 10 * MIN, late) {
            Verdict::Unhealthy(_, m, kind) => {
                assert_eq!(kind, FailureEvidence::Nodes);
                assert!(
                    m.starts_with("2 of 3 instances never joined the cluster as nodes: i-2, i-3"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_managed_groups_nodes_are_found_by_instance_without_labels_or_despite_stale_ones() {
        let mut unlabelled = node("ip-1", "", true, "2024-11-20T10:01:00Z");
        unlabelled.group = None;
        unlabelled.image = None;
        unlabelled.instance = Some("i-1".into());
        // A stale label names the target on a node whose instance runs something else.
        let mut stale = node("ip-2", T, true, "2024-11-20T10:01:00Z");
        stale.instance = Some("i-old".into());
        let instances = ["i-1".to_owned()];
        let s = Subject {
            instances: &instances,
            by_instance: true,
            ..subject(1)
        };
        let nodes = [unlabelled, stale];
        let found: Vec<&str> = on_target(s, &nodes)
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(found, ["ip-1"]);
        assert!(matches!(
            judge(s, &nodes, None, 30 * MIN, at("2024-11-20T10:02:00Z")),
            Verdict::Healthy(_)
        ));
    }

    #[test]
    fn self_managed_nodes_are_found_by_provider_id() {
        let mut n = node("ip-1", "", true, "2024-11-20T10:01:00Z");
        n.group = None;
        n.image = None;
        n.instance = Some("i-1".into());
        let instances = ["i-1".to_owned()];
        let s = Subject {
            kind: NodeGroupKind::SelfManaged,
            instances: &instances,
            desired: 1,
            ..subject(1)
        };
        assert!(matches!(
            judge(s, &[n.clone()], None, 30 * MIN, at("2024-11-20T10:02:00Z")),
            Verdict::Healthy(_)
        ));
        n.instance = Some("i-other".into());
        assert!(matches!(
            judge(s, &[n], None, 30 * MIN, at("2024-11-20T10:02:00Z")),
            Verdict::Waiting(..)
        ));
    }

    #[test]
    fn a_node_is_read_from_its_labels_provider_id_and_ready_condition() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ip-10-0-1-23", "labels": {
                NODEGROUP_LABEL: "a", NODEGROUP_IMAGE_LABEL: T}},
            "spec": {"providerID": "aws:///us-west-2a/i-0123456789abcdef0"},
            "status": {"conditions": [{"type": "Ready", "status": "False",
                "reason": "KubeletNotReady", "lastTransitionTime": "2024-11-20T10:02:00Z"}]},
        }))
        .unwrap();
        let view = NodeView::of(&node);
        assert_eq!(view.instance.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(
            (view.group.as_deref(), view.image.as_deref()),
            (Some("a"), Some(T))
        );
        assert!(!view.ready);
        assert_eq!(view.reason, "KubeletNotReady");
    }

    fn alarm(name: &str, firing: bool, since: i64) -> AlarmView {
        AlarmView {
            name: name.into(),
            firing,
            state: if firing { "ALARM" } else { "OK" }.into(),
            reason: "threshold crossed".into(),
            since: Some(Timestamp::from_second(since).unwrap()),
        }
    }

    #[test]
    fn an_alarm_entering_alarm_after_the_start_fails_the_group_and_an_older_one_holds_it() {
        let wanted = vec!["web-5xx".to_owned(), "typo".to_owned()];
        let started = Timestamp::from_second(1_000).unwrap();
        let healthy = || Verdict::Healthy(GroupHealth::default());
        let quiet = [alarm("web-5xx", false, 500)];
        let Verdict::Healthy(health) = with_alarms(healthy(), &wanted, &quiet, started, false)
        else {
            panic!("quiet alarms keep a healthy group healthy")
        };
        assert_eq!(health.alarms, ["web-5xx: OK", "typo: not found"]);
        let Verdict::Unhealthy(_, message, FailureEvidence::Alarms) = with_alarms(
            healthy(),
            &wanted,
            &[alarm("web-5xx", true, 1_200)],
            started,
            false,
        ) else {
            panic!("a new alarm fails the group")
        };
        assert_eq!(
            message,
            "alarm web-5xx entered ALARM at 1970-01-01 00:20:00 UTC while the group was being verified: threshold crossed"
        );
        let older = [alarm("web-5xx", true, 900)];
        assert!(matches!(
            with_alarms(healthy(), &wanted, &older, started, false),
            Verdict::Waiting(..)
        ));
        assert!(matches!(
            with_alarms(healthy(), &wanted, &older, started, true),
            Verdict::Unhealthy(..)
        ));
        // Alarms not named in the spec do not count.
        assert!(matches!(
            with_alarms(
                healthy(),
                &wanted,
                &[alarm("other", true, 1_200)],
                started,
                false
            ),
            Verdict::Healthy(..)
        ));
    }

    fn pod(name: &str, ready: bool, ended: bool) -> PodView {
        PodView {
            name: format!("ns/{name}"),
            ready,
            ended,
            reason: "ContainersNotReady".into(),
        }
    }

    #[test]
    fn too_many_unready_pods_hold_the_group_and_fail_it_after_the_timeout() {
        let healthy = || Verdict::Healthy(GroupHealth::default());
        let pods = [
            pod("a", true, false),
            pod("b", false, false),
            pod("c", false, true),
        ];
        // 1 of 2 counted pods not Ready: 50 %.
        let Verdict::Healthy(health) = with_pods(healthy(), &pods, 50, false) else {
            panic!("50 % is within 50 %")
        };
        assert_eq!((health.pods_ready, health.pods), (Some(1), Some(2)));
        assert_eq!(health.unready_pods, ["ns/b ContainersNotReady"]);
        let Verdict::Waiting(_, message) = with_pods(healthy(), &pods, 49, false) else {
            panic!("50 % is over 49 %")
        };
        assert_eq!(
            message,
            "1 of 2 pods on the new nodes not Ready (rollout.maxUnreadyPodsPercent 49): ns/b ContainersNotReady"
        );
        assert!(matches!(
            with_pods(healthy(), &pods, 49, true),
            Verdict::Unhealthy(..)
        ));
        assert!(matches!(
            with_pods(healthy(), &[], 0, false),
            Verdict::Healthy(..)
        ));
    }
}
