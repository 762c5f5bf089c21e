//! Playing the kubelet for Packer build Jobs, as Kubernetes' own Job integration tests do: the
//! Job controller creates the build Pod; this sets its status (phase, and the build container's
//! termination with Packer's artifact lines as its message), and the Job controller then marks
//! the Job complete or failed.

use std::time::Duration;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};

/// How long the Job controller may take to create the Pod or to finish the Job.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(60);

/// Packer's machine-readable `artifact` line for an AMI built in `region`.
pub fn artifact_line(region: &str, ami: &str) -> String {
    format!("1732000000,amazon-ebs.node,artifact,0,id,{region}:{ami}\n")
}

/// Why the kubelet's part could not be played.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A request failed.
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// The Job controller did not do its part in time.
    #[error("{0}")]
    Timeout(String),
}

/// The Pods of Job `job`, once the Job controller has created at least one.
pub async fn build_pods(
    client: &Client,
    namespace: &str,
    job: &str,
) -> Result<Vec<Pod>, KubeletError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    let started = tokio::time::Instant::now();
    loop {
        let found = pods.list(&selector).await?.items;
        if !found.is_empty() {
            return Ok(found);
        }
        if started.elapsed() > CONTROLLER_TIMEOUT {
            return Err(KubeletError::Timeout(format!(
                "the Job controller created no Pod for Job {namespace}/{job}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Leaves container `container` of Pod `pod` waiting with `reason` and `message`, as the kubelet
/// reports a pod that cannot start (`ImagePullBackOff`, `CreateContainerConfigError`, ...).
pub async fn container_waiting(
    client: &Client,
    namespace: &str,
    pod: &str,
    container: &str,
    init: bool,
    reason: &str,
    message: &str,
) -> Result<(), KubeletError> {
    let field = if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    let status = serde_json::json!({"status": {field: [{
        "name": container, "image": "placeholder", "imageID": "", "ready": false,
        "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}},
    }]}});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

/// Ends Job `job`: its build Pod terminates with `exit_code` and `message` (what the build
/// script copies into the termination message), and the Job controller marks the Job
/// `Complete` (exit code 0) or `Failed`; this returns once it has.
pub async fn finish_build_job(
    client: &Client,
    namespace: &str,
    job: &str,
    exit_code: i32,
    message: &str,
) -> Result<(), KubeletError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for pod in build_pods(client, namespace, job).await? {
        let status = terminated_status(&pod, exit_code, message);
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await?;
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let wanted = if exit_code == 0 { "Complete" } else { "Failed" };
    let started = tokio::time::Instant::now();
    loop {
        let conditions = jobs
            .get(job)
            .await?
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == wanted && c.status == "True")
        {
            return Ok(());
        }
        if started.elapsed() > CONTROLLER_TIMEOUT {
            return Err(KubeletError::Timeout(format!(
                "the Job controller did not mark Job {namespace}/{job} {wanted}: {conditions:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status a kubelet reports for `pod` once its containers have run: init containers
/// succeeded, the main containers terminated with `exit_code` and `message`.
fn terminated_status(pod: &Pod, exit_code: i32, message: &str) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let terminated = |name: &str, image: &str, code: i32, message: Option<&str>| ContainerStatus {
        name: name.to_owned(),
        image: image.to_owned(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(if code == 0 { "Completed" } else { "Error" }.to_owned()),
                message: message.map(str::to_owned),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    };
    PodStatus {
        phase: Some(
            if exit_code == 0 {
                "Succeeded"
            } else {
                "Failed"
            }
            .to_owned(),
        ),
        init_container_statuses: Some(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| terminated(&c.name, c.image.as_deref().unwrap_or_default(), 0, None))
                .collect(),
        ),
        container_statuses: Some(
            spec.containers
                .iter()
                .map(|c| {
                    terminated(
                        &c.name,
                        c.image.as_deref().unwrap_or_default(),
                        exit_code,
                        Some(message),
                    )
                })
                .collect(),
        ),
        ..PodStatus::default()
    }
}
