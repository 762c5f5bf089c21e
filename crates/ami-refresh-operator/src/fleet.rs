//! The AMIRefresher's fleet gauges, from its status.

use opsy_api::{AMIRefresher, ami_refresher::NodeGroupPhase, conditions};
use opsy_runtime::fleet::{self, Sample};

fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_second() as f64
}

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
    for group in &status.node_groups {
        let labels = vec![cluster.clone(), ("group", group.name.clone())];
        let phase = format!("{:?}", group.phase);
        let mut with_phase = labels.clone();
        with_phase.push(("phase", phase));
        out.push((fleet::GROUP_PHASE, with_phase, 1.0));
        halted |= group.phase.halts();
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
        if matches!(
            group.phase,
            NodeGroupPhase::UpToDate | NodeGroupPhase::Succeeded
        ) && let Some(created) = status
            .target_image
            .as_ref()
            .and_then(|t| t.created.as_ref())
        {
            out.push((fleet::GROUP_AMI_CREATED, labels, seconds(created)));
        }
    }
    out.push(whole(fleet::AMR_NODES_ON_TARGET, on_target as f64));
    out.push(whole(fleet::AMR_NODES, total as f64));
    out.push(whole(fleet::AMR_HALTED, f64::from(u8::from(halted))));
    out.push(whole(fleet::AMR_HELD_BACK, status.held_back.len() as f64));
    let ready = conditions::find(&status.conditions, conditions::READY)
        .is_some_and(|c| c.status == conditions::TRUE);
    out.push(whole(fleet::AMR_READY, f64::from(u8::from(ready))));
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
                     "started": "2026-11-02T00:00:00Z",
                     "health": {"ready": 2, "desired": 4}},
                    {"name": "gpu", "kind": "Managed", "phase": "Skipped", "desiredSize": 2},
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
        assert_eq!(value("amirefresher_nodes", None), Some(7.0));
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
    }
}
