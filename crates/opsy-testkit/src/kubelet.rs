//! Playing the kubelet for Packer build Jobs in an in-memory Kubernetes API: the build pod ends
//! with a termination message, and the Job is marked complete or failed.

use k8s_openapi::api::{
    batch::v1::{Job, JobCondition, JobStatus},
    core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

/// Packer's machine-readable `artifact` line for an AMI built in `region`.
pub fn artifact_line(region: &str, ami: &str) -> String {
    format!("1732000000,amazon-ebs.node,artifact,0,id,{region}:{ami}\n")
}

/// Ends Job `job`: its build pod terminates with `exit_code` and `message` (what the build
/// script copies into the termination message), and the Job is `Complete` (exit code 0) or
/// `Failed`.
pub async fn finish_build_job(
    client: &Client,
    namespace: &str,
    job: &str,
    exit_code: i32,
    message: &str,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{job}-x7k2p")),
            namespace: Some(namespace.into()),
            labels: Some([("batch.kubernetes.io/job-name".to_owned(), job.to_owned())].into()),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "packer-build".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code,
                        message: Some(message.into()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    };
    pods.create(&PostParams::default(), &pod).await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let mut finished = jobs.get(job).await?;
    let (type_, reason) = if exit_code == 0 {
        ("Complete", "Completed")
    } else {
        ("Failed", "BackoffLimitExceeded")
    };
    finished.status = Some(JobStatus {
        conditions: Some(vec![JobCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some("done".into()),
            ..JobCondition::default()
        }]),
        succeeded: (exit_code == 0).then_some(1),
        failed: (exit_code != 0).then_some(1),
        ..JobStatus::default()
    });
    jobs.replace_status(job, &PostParams::default(), &finished)
        .await?;
    Ok(())
}
