//! Where a build Job stands, read from the Job and its pod.

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ContainerStatus, Pod},
};

/// How long an image pull may keep failing before the build counts as failed: registries
/// throttle and recover.
pub const IMAGE_PULL_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// Image pull failures, which get [`IMAGE_PULL_GRACE`].
const PULL_REASONS: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];

/// Waiting reasons that never resolve without a person: the pod will not start.
const STUCK_REASONS: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImageNeverPull",
];

/// The state of a build Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Pending or running.
    Running,
    /// Finished successfully; the build container's termination message.
    Succeeded {
        /// Termination message of the `packer-build` container (artifact lines).
        output: String,
    },
    /// Finished unsuccessfully.
    Failed {
        /// Why, for status and events.
        reason: String,
    },
    /// The pod cannot start (image pull error, missing Secret or key).
    Stuck {
        /// Why, for status and events.
        reason: String,
    },
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    let init = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or_default();
    let main = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    init.iter().chain(main.iter())
}

/// Reads the state of `job` from its status and its pods.
pub fn observe(job: &Job, pods: &[Pod], now: jiff::Timestamp) -> JobState {
    if condition(job, "Complete").is_some() || condition(job, "SuccessCriteriaMet").is_some() {
        let output = pods
            .iter()
            .flat_map(statuses)
            .filter(|c| c.name == "packer-build")
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .next()
            .unwrap_or_default();
        return JobState::Succeeded { output };
    }
    if let Some((reason, message)) =
        condition(job, "Failed").or_else(|| condition(job, "FailureTarget"))
    {
        // The container that failed says more than the Job.
        let container = pods.iter().flat_map(statuses).find_map(|c| {
            let terminated = c.state.as_ref()?.terminated.as_ref()?;
            (terminated.exit_code != 0).then(|| {
                let detail = terminated
                    .message
                    .as_deref()
                    .or(terminated.reason.as_deref())
                    .unwrap_or("")
                    .trim();
                let detail = detail.lines().last().unwrap_or("");
                format!(
                    "container {} exited with code {}{}",
                    c.name,
                    terminated.exit_code,
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    }
                )
            })
        });
        let reason = match (container, reason.as_str()) {
            (_, "DeadlineExceeded") => {
                format!("the build ran longer than spec.builder.job.deadline ({message})")
            }
            (Some(container), _) => container,
            (None, _) => format!("{reason}: {message}"),
        };
        return JobState::Failed { reason };
    }
    for pod in pods {
        // A pod whose image pull fails is given time; it is judged from its creation.
        let young = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| {
                let grace = jiff::SignedDuration::try_from(IMAGE_PULL_GRACE).ok()?;
                t.0.checked_add(grace).ok()
            })
            .is_some_and(|until| now < until);
        for status in statuses(pod) {
            let Some(waiting) = status.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let reason = waiting.reason.as_deref().unwrap_or_default();
            if PULL_REASONS.contains(&reason) && young {
                continue;
            }
            if STUCK_REASONS.contains(&reason) {
                return JobState::Stuck {
                    reason: format!(
                        "container {} cannot start: {reason}: {}",
                        status.name,
                        waiting.message.as_deref().unwrap_or("no details")
                    ),
                };
            }
        }
    }
    JobState::Running
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        batch::v1::{JobCondition, JobStatus},
        core::v1::{ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodStatus},
    };

    use super::*;

    fn job(condition: Option<(&str, &str)>) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: condition.map(|(t, r)| {
                    vec![JobCondition {
                        type_: t.into(),
                        status: "True".into(),
                        reason: Some(r.into()),
                        message: Some("Job was active longer than specified deadline".into()),
                        ..JobCondition::default()
                    }]
                }),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    fn pod(name: &str, state: ContainerState, init: bool) -> Pod {
        let status = ContainerStatus {
            name: name.into(),
            state: Some(state),
            ..ContainerStatus::default()
        };
        Pod {
            status: Some(PodStatus {
                init_container_statuses: init.then(|| vec![status.clone()]),
                container_statuses: (!init).then(|| vec![status]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn terminated(code: i32, message: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                message: Some(message.into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    #[test]
    fn states() {
        assert_eq!(observe(&job(None), &[], t(0)), JobState::Running);
        assert_eq!(
            observe(
                &job(Some(("Complete", ""))),
                &[pod(
                    "packer-build",
                    terminated(0, "1,a,artifact,0,id,us-west-2:ami-01234567"),
                    false
                )],
                t(0)
            ),
            JobState::Succeeded {
                output: "1,a,artifact,0,id,us-west-2:ami-01234567".into()
            }
        );
        assert_eq!(
            observe(
                &job(Some(("Failed", "BackoffLimitExceeded"))),
                &[pod(
                    "packer-validate",
                    terminated(1, "Error: missing variable\nvar ami_id"),
                    true
                )],
                t(0)
            ),
            JobState::Failed {
                reason: "container packer-validate exited with code 1: var ami_id".into()
            }
        );
        assert!(matches!(
            observe(&job(Some(("Failed", "DeadlineExceeded"))), &[], t(0)),
            JobState::Failed { reason } if reason.contains("spec.builder.job.deadline")
        ));
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CreateContainerConfigError".into()),
                message: Some("secret \"git-sync\" not found".into()),
            }),
            ..ContainerState::default()
        };
        assert_eq!(
            observe(&job(None), &[pod("git-sync", waiting, true)], t(0)),
            JobState::Stuck {
                reason: "container git-sync cannot start: CreateContainerConfigError: secret \"git-sync\" not found".into()
            }
        );
    }

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn an_image_pull_error_gets_a_grace_period() {
        let backoff = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ImagePullBackOff".into()),
                message: Some("Back-off pulling image".into()),
            }),
            ..ContainerState::default()
        };
        let mut stuck = pod("packer-build", backoff, false);
        stuck.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(0)));
        let grace = i64::try_from(IMAGE_PULL_GRACE.as_secs()).unwrap();
        assert_eq!(
            observe(&job(None), std::slice::from_ref(&stuck), t(grace - 1)),
            JobState::Running
        );
        assert!(matches!(
            observe(&job(None), &[stuck], t(grace)),
            JobState::Stuck { reason } if reason.contains("ImagePullBackOff")
        ));
    }
}
