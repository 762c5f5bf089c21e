//! The PackerBuilder's fleet gauges, from its status.

use opsy_api::PackerBuilder;
use opsy_runtime::fleet::{self, Sample, seconds};

/// The gauges `status` stands for.
pub fn samples(pb: &PackerBuilder) -> Vec<Sample> {
    let status = pb.status.clone().unwrap_or_default();
    let cluster = vec![("cluster", pb.spec.cluster_name.clone())];
    let mut out = Vec::new();
    let mut put = |gauge, value: f64| out.push((gauge, cluster.clone(), value));
    if let Some(active) = &status.active_image {
        if let Some(created) = &active.created {
            put(fleet::PB_ACTIVE_CREATED, seconds(created));
        }
        if let Some(expires) = &active.expires {
            put(fleet::PB_ACTIVE_EXPIRY, seconds(expires));
        }
    }
    put(
        fleet::PB_BUILD_RUNNING,
        f64::from(u8::from(status.job_status.as_deref() == Some("running"))),
    );
    put(fleet::PB_FAILED_BUILDS, f64::from(status.failed_job_count));
    if let Some(last) = status.history.first() {
        put(
            fleet::PB_LAST_BUILD_SUCCEEDED,
            f64::from(u8::from(last.result == "succeeded")),
        );
    }
    put(fleet::PB_READY, fleet::ready(&status.conditions));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauges_say_what_the_status_says() {
        let pb: PackerBuilder = serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "PackerBuilder",
            "metadata": {"name": "al2023", "namespace": "images"},
            "spec": {"region": "us-west-2", "clusterName": "prod",
                     "builder": {"repoURL": "https://github.com/example-org/eks-node-images"}},
            "status": {
                "activeImage": {"id": "ami-0123456789abcdef0",
                                "created": "2026-11-01T00:00:00Z", "expires": "2026-12-01T00:00:00Z"},
                "jobStatus": "running",
                "failedJobCount": 1,
                "history": [{"jobID": "j2", "result": "failed"}, {"jobID": "j1", "result": "succeeded"}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "AmiActive",
                                "message": "", "lastTransitionTime": "2026-11-01T00:00:00Z"}],
            },
        }))
        .unwrap();
        let got: Vec<(&str, f64)> = samples(&pb)
            .iter()
            .map(|(g, labels, v)| {
                assert_eq!(labels, &[("cluster", "prod".to_owned())]);
                (g.name, *v)
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "packerbuilder_active_ami_created_timestamp_seconds",
                    1_793_491_200.0
                ),
                (
                    "packerbuilder_active_ami_expiry_timestamp_seconds",
                    1_796_083_200.0
                ),
                ("packerbuilder_build_running", 1.0),
                ("packerbuilder_failed_builds", 1.0),
                ("packerbuilder_last_build_succeeded", 0.0),
                ("packerbuilder_ready", 1.0),
            ]
        );
    }
}
