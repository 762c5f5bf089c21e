//! Notifications about builds: which transition one reconcile notifies, the key that dedupes it
//! and what its message says — decided here, purely (the outbox in status sends them).

use jiff::Timestamp;
use kube::ResourceExt;
use opsy_api::PackerBuilder;
use opsy_notify::{Event, Message, ResourceRef};

/// The start of a message about `pb`.
pub fn message(pb: &PackerBuilder, event: Event, summary: impl Into<String>) -> Message {
    Message::new(
        event,
        ResourceRef {
            kind: "PackerBuilder".into(),
            namespace: pb.namespace().unwrap_or_default(),
            name: pb.name_any(),
        },
        &pb.spec.cluster_name,
        &pb.spec.region,
        summary,
    )
}

/// A build transition one reconcile saw, with what its message tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition<'a> {
    /// A finished build's AMI was judged: tagged active (`failure: None`) or refused.
    Completed {
        /// `status.jobID` of the build.
        job_id: &'a str,
        /// The Job.
        job_name: &'a str,
        /// The base it was built from.
        base_ami: &'a str,
        /// The AMI it reported.
        image: &'a str,
        /// What status says of it.
        summary: &'a str,
        /// Why the AMI was refused, if it was.
        failure: Option<&'a str>,
    },
    /// A build failed (its Job, or its pod could not start).
    Failed {
        /// The Job (its id).
        job: &'a str,
        /// The base it was built from.
        base_ami: &'a str,
        /// Consecutive failed builds, and the limit.
        failed: (i32, i32),
        /// Why.
        reason: &'a str,
    },
    /// A build started.
    Started {
        /// `status.jobID`.
        job_id: &'a str,
        /// The Job.
        job_name: &'a str,
        /// The base it builds from.
        base_ami: &'a str,
        /// Why it started.
        summary: &'a str,
    },
    /// A needed build does not start: `spec.maxFailedBuilds` is reached. Once per generation,
    /// retry annotation and base.
    FailureLimit {
        /// The object's generation.
        generation: i64,
        /// `status.retried`.
        retried: &'a str,
        /// The base of the last build.
        base_ami: &'a str,
        /// What the condition says.
        reason: &'a str,
    },
    /// No base AMI matches. Once per generation.
    NoBaseImage {
        /// The object's generation.
        generation: i64,
        /// What the condition says.
        reason: &'a str,
    },
}

/// The notification of `transition` of `pb` at `now`, with the key that dedupes it
/// (`<event>:<subject>`).
pub fn notification(
    pb: &PackerBuilder,
    transition: &Transition,
    now: Timestamp,
) -> (String, Message) {
    match *transition {
        Transition::Completed {
            job_id,
            job_name,
            base_ami,
            image,
            summary,
            failure,
        } => {
            let event = match failure {
                None => Event::BuildSucceeded,
                Some(_) => Event::BuildFailed,
            };
            let mut msg = message(pb, event, summary)
                .fact("Base AMI", base_ami)
                .fact("Built AMI", image)
                .fact("Job", job_name)
                .at(now);
            if let Some(reason) = failure {
                msg = msg.reason(reason);
            }
            (format!("{}:{job_id}", event.as_str()), msg)
        }
        Transition::Failed {
            job,
            base_ami,
            failed: (failed, max),
            reason,
        } => (
            format!("BuildFailed:{job}"),
            message(pb, Event::BuildFailed, format!("Build {job} failed"))
                .fact("Base AMI", base_ami)
                .fact("Job", job)
                .fact("Failed builds", format!("{failed} of {max}"))
                .reason(reason)
                .at(now),
        ),
        Transition::Started {
            job_id,
            job_name,
            base_ami,
            summary,
        } => (
            format!("BuildStarted:{job_id}"),
            message(pb, Event::BuildStarted, summary)
                .fact("Base AMI", base_ami)
                .fact("Job", job_name)
                .at(now),
        ),
        Transition::FailureLimit {
            generation,
            retried,
            base_ami,
            reason,
        } => (
            format!("BuildStalled:FailureLimitReached:{generation}:{retried}:{base_ami}"),
            message(
                pb,
                Event::BuildStalled,
                "Builds stopped after repeated failures",
            )
            .reason(reason)
            .at(now),
        ),
        Transition::NoBaseImage { generation, reason } => (
            format!("BuildStalled:NoBaseImage:{generation}"),
            message(pb, Event::BuildStalled, "No base AMI matches the filters")
                .reason(reason)
                .at(now),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb() -> PackerBuilder {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ami.refresh.ops/v1alpha1",
            "kind": "PackerBuilder",
            "metadata": {"name": "al2023", "namespace": "builds"},
            "spec": {"region": "us-west-2", "clusterName": "prod",
                     "builder": {"repoURL": "https://git.example/x"}},
        }))
        .unwrap()
    }

    /// Each transition: its key, its event, its facts and its reason.
    #[test]
    fn every_transition_has_its_key_event_facts_and_reason() {
        let now: Timestamp = "2026-12-04T00:00:00Z".parse().unwrap();
        type Row<'a> = (
            Transition<'a>,
            &'a str,
            Event,
            Vec<(&'a str, &'a str)>,
            Option<&'a str>,
        );
        let rows: Vec<Row> = vec![
            (
                Transition::Completed {
                    job_id: "j1",
                    job_name: "al2023-j1",
                    base_ami: "ami-base",
                    image: "ami-new",
                    summary: "ami-new is active",
                    failure: None,
                },
                "BuildSucceeded:j1",
                Event::BuildSucceeded,
                vec![
                    ("Base AMI", "ami-base"),
                    ("Built AMI", "ami-new"),
                    ("Job", "al2023-j1"),
                ],
                None,
            ),
            (
                Transition::Completed {
                    job_id: "j1",
                    job_name: "al2023-j1",
                    base_ami: "",
                    image: "ami-new",
                    summary: "refused",
                    failure: Some("owned by another account"),
                },
                "BuildFailed:j1",
                Event::BuildFailed,
                // An empty fact is left out.
                vec![("Built AMI", "ami-new"), ("Job", "al2023-j1")],
                Some("owned by another account"),
            ),
            (
                Transition::Failed {
                    job: "al2023-j2",
                    base_ami: "ami-base",
                    failed: (2, 3),
                    reason: "exit code 1",
                },
                "BuildFailed:al2023-j2",
                Event::BuildFailed,
                vec![
                    ("Base AMI", "ami-base"),
                    ("Job", "al2023-j2"),
                    ("Failed builds", "2 of 3"),
                ],
                Some("exit code 1"),
            ),
            (
                Transition::Started {
                    job_id: "j3",
                    job_name: "al2023-j3",
                    base_ami: "ami-base",
                    summary: "started Job al2023-j3",
                },
                "BuildStarted:j3",
                Event::BuildStarted,
                vec![("Base AMI", "ami-base"), ("Job", "al2023-j3")],
                None,
            ),
            (
                Transition::FailureLimit {
                    generation: 4,
                    retried: "now",
                    base_ami: "ami-base",
                    reason: "3 builds failed",
                },
                "BuildStalled:FailureLimitReached:4:now:ami-base",
                Event::BuildStalled,
                vec![],
                Some("3 builds failed"),
            ),
            (
                Transition::NoBaseImage {
                    generation: 4,
                    reason: "no available image matches",
                },
                "BuildStalled:NoBaseImage:4",
                Event::BuildStalled,
                vec![],
                Some("no available image matches"),
            ),
        ];
        for (transition, key, event, facts, reason) in rows {
            let (got_key, msg) = notification(&pb(), &transition, now);
            assert_eq!(got_key, key, "{transition:?}");
            assert_eq!(msg.event, event, "{transition:?}");
            let got: Vec<(&str, &str)> = msg
                .facts
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(got, facts, "{transition:?}");
            assert_eq!(msg.reason.as_deref(), reason, "{transition:?}");
            assert_eq!(msg.at, now);
            assert_eq!(msg.resource.name, "al2023");
        }
    }
}
