//! The AMIRefresher's fleet gauges, from its status.

use opsy_api::{AMIRefresher, ami_refresher::NodeGroupPhase, conditions};
use opsy_runtime::fleet::{self, Sample, seconds};

/// The gauges the AMIRefresher's status stands for.
pub fn samples(amr: &AMIRefresher) -> Vec<Sample> {
    let status = amr.status.clone().unwrap_or_default();
    let cluster = ("cluster", amr.spec.cluster_name.clone());
    let mut out: Vec<Sample> = Vec::new();
    let whole = |gauge, value: f64| (gauge, vec![cluster.clone()], value);
    if let Some(target) = &status.target_image {
        if let Some(created) = &target.created {
            out.push(whole(fleet::AMR_TARGET_CREATED, seconds(created)));
        }
        if let Some(expires) = &target.expires {
            out.push(whole(fleet::AMR_TARGET_EXPIRY, seconds(expires)));
        }
    }
    let (mut on_target, mut total) = (0_i64, 0_i64);
    let mut halted = false;
    // The gate the rollout's pending groups wait on, and since when (the Progressing
    // condition's reason and transition).
    let waiting = conditions::find(&status.conditions, conditions::PROGRESSING).and_then(|c| {
        let gate = match c.reason.as_str() {
            "AwaitingApproval" => "approval",
            "OutsideMaintenanceWindow" => "maintenance-window",
            _ => return None,
        };
        Some((gate, seconds(&c.last_transition_time)))
    });
    for group in &status.node_groups {
        let labels = vec![cluster.clone(), ("group", group.name.clone())];
        let phase = format!("{:?}", group.phase);
        let mut with_phase = labels.clone();
        with_phase.push(("phase", phase));
        out.push((fleet::GROUP_PHASE, with_phase, 1.0));
        halted |= group.phase.halts();
        let gate = match (group.phase, &waiting) {
            // AWS reported the update done at `finished`; the health gate judges since.
            (NodeGroupPhase::Verifying, _) => {
                group.finished.as_ref().map(|t| ("health", seconds(t)))
            }
            (NodeGroupPhase::Pending, Some((gate, since))) => Some((*gate, *since)),
            _ => None,
        };
        if let Some((gate, since)) = gate {
            let mut with_gate = labels.clone();
            with_gate.push(("gate", gate.to_owned()));
            out.push((fleet::GROUP_GATE_WAIT_STARTED, with_gate, since));
        }
        if let Some(image_status) = &group.image_status {
            let quarantined = image_status == opsy_api::tags::STATUS_QUARANTINED;
            out.push((
                fleet::GROUP_AMI_QUARANTINED,
                labels.clone(),
                f64::from(u8::from(quarantined)),
            ));
        }
        // The AMI the group runs; for a status written before that was recorded, the
        // target's for a group on it.
        let target_created = status
            .target_image
            .as_ref()
            .and_then(|t| t.created.as_ref())
            .filter(|_| {
                matches!(
                    group.phase,
                    NodeGroupPhase::UpToDate | NodeGroupPhase::Succeeded
                )
            });
        if let Some(created) = group.image_created.as_ref().or(target_created) {
            out.push((fleet::GROUP_AMI_CREATED, labels.clone(), seconds(created)));
        }
        let size = group.desired_size.map_or(0, i64::from);
        let Some(on) = crate::plan::group_on_target(group, size) else {
            continue;
        };
        on_target += on;
        total += size;
        out.push((fleet::GROUP_NODES, labels.clone(), size as f64));
        out.push((fleet::GROUP_NODES_ON_TARGET, labels.clone(), on as f64));
        if let Some(started) = &group.started {
            out.push((
                fleet::GROUP_UPDATE_STARTED,
                labels.clone(),
                seconds(started),
            ));
        }
    }
    out.push(whole(fleet::AMR_NODES_ON_TARGET, on_target as f64));
    out.push(whole(fleet::AMR_NODES, total as f64));
    out.push(whole(fleet::AMR_HALTED, f64::from(u8::from(halted))));
    out.push(whole(fleet::AMR_HELD_BACK, status.held_back.len() as f64));
    out.push(whole(fleet::AMR_READY, fleet::ready(&status.conditions)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_on_target_count_done_groups_whole_and_verified_ones_by_ready_nodes() {
        let amr: AMIRefresher = serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "AMIRefresher",
            "metadata": {"name": "prod", "namespace": "fleet"},
            "spec": {"region": "us-west-2", "clusterName": "prod", "ami": "ami-0123456789abcdef0"},
            "status": {
                "targetImage": {"id": "ami-0123456789abcdef0", "created": "2026-11-01T00:00:00Z"},
                "nodeGroups": [
                    {"name": "web", "kind": "Managed", "phase": "UpToDate", "desiredSize": 3},
                    {"name": "jobs", "kind": "Managed", "phase": "Verifying", "desiredSize": 4,
                     "started": "2026-11-02T00:00:00Z", "finished": "2026-11-02T00:20:00Z",
                     "health": {"ready": 2, "desired": 4}},
                    {"name": "gpu", "kind": "Managed", "phase": "Skipped", "desiredSize": 2,
                     "imageCreated": "2026-10-01T00:00:00Z", "imageStatus": "quarantined"},
                    {"name": "batch", "kind": "Managed", "phase": "Pending", "desiredSize": 1,
                     "imageStatus": "deprecated"},
                ],
                "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "AwaitingApproval",
                     "message": "", "lastTransitionTime": "2026-11-03T00:00:00Z"},
                ],
            },
        }))
        .unwrap();
        let got = samples(&amr);
        let value = |name: &str, group: Option<&str>| {
            got.iter()
                .find(|(g, labels, _)| {
                    g.name == name
                        && group.is_none_or(|w| labels.iter().any(|(k, v)| *k == "group" && v == w))
                })
                .map(|(_, _, v)| *v)
        };
        assert_eq!(value("amirefresher_nodes_on_target", None), Some(5.0));
        assert_eq!(value("amirefresher_nodes", None), Some(8.0));
        assert_eq!(value("nodegroup_nodes_on_target", Some("jobs")), Some(2.0));
        assert_eq!(
            value("nodegroup_update_started_timestamp_seconds", Some("jobs")),
            Some(1_793_577_600.0)
        );
        assert_eq!(
            value("nodegroup_ami_created_timestamp_seconds", Some("web")),
            Some(1_793_491_200.0)
        );
        assert_eq!(
            value("nodegroup_nodes", Some("gpu")),
            None,
            "skipped groups count no nodes"
        );
        assert!(got.iter().any(|(g, labels, v)| g.name == "nodegroup_phase"
            && labels.contains(&("phase", "Skipped".to_owned()))
            && *v == 1.0));
        assert_eq!(value("amirefresher_rollout_halted", None), Some(0.0));
        // Every group's AMI age, on the target or not.
        assert_eq!(
            value("nodegroup_ami_created_timestamp_seconds", Some("gpu")),
            Some(1_790_812_800.0)
        );
        assert_eq!(value("nodegroup_ami_quarantined", Some("gpu")), Some(1.0));
        assert_eq!(value("nodegroup_ami_quarantined", Some("batch")), Some(0.0));
        assert_eq!(value("nodegroup_ami_quarantined", Some("web")), None);
        // Gates: health since AWS finished; approval since the condition changed.
        let gate = |group: &str| {
            got.iter()
                .find(|(g, labels, _)| {
                    g.name == "nodegroup_gate_wait_started_timestamp_seconds"
                        && labels.iter().any(|(k, v)| *k == "group" && v == group)
                })
                .map(|(_, labels, v)| {
                    let gate = labels.iter().find(|(k, _)| *k == "gate").unwrap();
                    (gate.1.clone(), *v)
                })
        };
        assert_eq!(gate("jobs"), Some(("health".into(), 1_793_578_800.0)));
        assert_eq!(gate("batch"), Some(("approval".into(), 1_793_664_000.0)));
        assert_eq!(gate("web"), None);
    }
}
