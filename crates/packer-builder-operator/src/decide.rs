//! What a PackerBuilder needs next: a pure function of what was observed.

use opsy_api::tags;
use opsy_aws::{Image, managed::Selection};

use crate::state::JobState;

/// A build Job of this PackerBuilder that status has not recorded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenJob {
    /// Job name.
    pub name: String,
    /// Job id (label).
    pub job_id: String,
    /// Base AMI the Job was started for.
    pub base_ami: Option<String>,
    /// When the Job was created.
    pub started: Option<jiff::Timestamp>,
    /// Where it stands.
    pub state: JobState,
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// `spec.region`: the region whose AMI the build must report.
    pub region: &'a str,
    /// `spec.amiFilters` is set.
    pub has_filters: bool,
    /// The newest base AMI (`None` with filters: nothing matched).
    pub base: Option<&'a Image>,
    /// The managed AMIs, judged.
    pub managed: &'a Selection,
    /// The unrecorded Job, if any.
    pub job: Option<&'a OpenJob>,
    /// Status says a Job runs, by this name (to notice Jobs deleted from outside).
    pub recorded_running_job: Option<&'a str>,
    /// The AMI status records as active.
    pub recorded_active: Option<&'a str>,
    /// `spec.suspend`.
    pub suspended: bool,
    /// Why no build may start now (outside every maintenance window, or the windows cannot be
    /// read), if so.
    pub window_closed: Option<String>,
    /// Consecutive failed builds.
    pub failures: i32,
    /// `spec.maxFailedBuilds`.
    pub max_failures: i32,
}

/// Why a build is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildReason {
    /// No managed AMI exists.
    NoManagedImage,
    /// Every managed AMI is expired, deprecated or unavailable.
    NoneEligible {
        /// The verdicts, for status.
        detail: String,
    },
    /// The newest eligible AMI was built from an older base AMI.
    BaseMoved {
        /// The AMI built from the old base.
        image: String,
        /// Its base.
        from: String,
        /// The current base.
        to: String,
    },
}

impl BuildReason {
    /// For status messages and events.
    pub fn describe(&self) -> String {
        match self {
            BuildReason::NoManagedImage => "no managed AMI exists yet".to_owned(),
            BuildReason::NoneEligible { detail } => {
                format!("no managed AMI is eligible ({detail})")
            }
            BuildReason::BaseMoved { image, from, to } => {
                format!("the base AMI moved on from {from} to {to} since {image} was built")
            }
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A build runs; check again soon.
    Wait {
        /// The Job.
        job: String,
    },
    /// A build finished: verify, tag and record its AMI.
    Complete {
        /// The Job.
        job: OpenJob,
        /// The AMI it reported.
        image: String,
    },
    /// A build failed (or cannot start, or reported no AMI): record it.
    Fail {
        /// The Job.
        job: String,
        /// Its id.
        job_id: String,
        /// Why.
        reason: String,
        /// The Job has not ended (its pod cannot start): it is deleted, so that it cannot run
        /// beside the next build once the cause clears.
        abandon: bool,
    },
    /// Start a build.
    Build {
        /// Why.
        reason: BuildReason,
    },
    /// Take over an eligible managed AMI that status does not record.
    Adopt {
        /// The AMI.
        image: String,
    },
    /// An eligible AMI built from the current base exists and is recorded.
    UpToDate {
        /// The AMI.
        image: String,
    },
    /// A build is needed but `spec.suspend` is set.
    Suspended {
        /// Why a build would run.
        reason: BuildReason,
    },
    /// A build is needed but no maintenance window is open.
    OutsideWindow {
        /// Why a build would run.
        reason: BuildReason,
        /// When the next window opens, or why the windows cannot be read.
        window: String,
    },
    /// A build is needed but the failed-build limit is reached.
    FailureLimit {
        /// Why a build would run.
        reason: BuildReason,
    },
    /// The filters match no available image.
    NoBaseImage,
}

/// The next step for a PackerBuilder.
pub fn decide(observed: &Observed<'_>) -> Decision {
    if let Some(job) = observed.job {
        return match &job.state {
            JobState::Running => Decision::Wait {
                job: job.name.clone(),
            },
            JobState::Succeeded { output } => {
                match crate::artifact::built_ami(output, observed.region) {
                    Some(image) => Decision::Complete {
                        job: job.clone(),
                        image,
                    },
                    None => Decision::Fail {
                        job: job.name.clone(),
                        job_id: job.job_id.clone(),
                        reason: format!(
                            "the build succeeded but reported no AMI in {} (no `artifact,0,id` line in its output)",
                            observed.region
                        ),
                        abandon: false,
                    },
                }
            }
            JobState::Failed { reason } => Decision::Fail {
                job: job.name.clone(),
                job_id: job.job_id.clone(),
                reason: reason.clone(),
                abandon: false,
            },
            JobState::Stuck { reason } => Decision::Fail {
                job: job.name.clone(),
                job_id: job.job_id.clone(),
                reason: reason.clone(),
                abandon: true,
            },
        };
    }
    if let Some(name) = observed.recorded_running_job {
        return Decision::Fail {
            job: name.to_owned(),
            job_id: String::new(),
            reason: format!(
                "Job {name} is gone before its result was read (deleted, or removed ttlAfterFinished after it ended)"
            ),
            abandon: false,
        };
    }
    if observed.has_filters && observed.base.is_none() {
        return Decision::NoBaseImage;
    }
    let reason = match &observed.managed.chosen {
        Some(chosen) => {
            let built_from = chosen.image.tag(tags::BASE_AMI);
            match (observed.base, built_from) {
                (Some(base), Some(from)) if from != base.id => BuildReason::BaseMoved {
                    image: chosen.image.id.clone(),
                    from: from.to_owned(),
                    to: base.id.clone(),
                },
                (Some(base), None) => BuildReason::BaseMoved {
                    image: chosen.image.id.clone(),
                    from: "an unknown base".to_owned(),
                    to: base.id.clone(),
                },
                _ if observed.recorded_active == Some(chosen.image.id.as_str()) => {
                    return Decision::UpToDate {
                        image: chosen.image.id.clone(),
                    };
                }
                _ => {
                    return Decision::Adopt {
                        image: chosen.image.id.clone(),
                    };
                }
            }
        }
        None if observed.managed.candidates.is_empty() => BuildReason::NoManagedImage,
        None => BuildReason::NoneEligible {
            detail: observed.managed.explain(),
        },
    };
    if observed.suspended {
        Decision::Suspended { reason }
    } else if let Some(window) = &observed.window_closed {
        Decision::OutsideWindow {
            reason,
            window: window.clone(),
        }
    } else if observed.failures >= observed.max_failures {
        Decision::FailureLimit { reason }
    } else {
        Decision::Build { reason }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use jiff::Timestamp;
    use opsy_aws::managed::Selection;

    use super::*;

    fn image(id: &str, created: &str, tags: &[(&str, &str)]) -> Image {
        Image {
            id: id.into(),
            name: id.into(),
            state: "available".into(),
            owner_id: "1".into(),
            creation_date: created.parse().ok(),
            deprecation_time: None,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            snapshots: Vec::new(),
            deregistration_protection: None,
            architecture: None,
        }
    }

    fn now() -> Timestamp {
        "2024-11-20T00:00:00Z".parse().unwrap()
    }

    fn selection(images: Vec<Image>) -> Selection {
        Selection::from_images(images, Duration::from_secs(7 * 86_400), now())
    }

    fn observed<'a>(base: Option<&'a Image>, managed: &'a Selection) -> Observed<'a> {
        Observed {
            region: "us-west-2",
            has_filters: true,
            base,
            managed,
            job: None,
            recorded_running_job: None,
            recorded_active: None,
            suspended: false,
            window_closed: None,
            failures: 0,
            max_failures: 3,
        }
    }

    #[test]
    fn a_needed_build_waits_for_a_maintenance_window_but_a_running_one_is_followed() {
        let base = image("ami-base2", "2024-11-01T00:00:00Z", &[]);
        let empty = selection(vec![]);
        let closed = Observed {
            window_closed: Some("the next opens at 2024-11-23T02:00:00Z".into()),
            ..observed(Some(&base), &empty)
        };
        assert_eq!(
            decide(&closed),
            Decision::OutsideWindow {
                reason: BuildReason::NoManagedImage,
                window: "the next opens at 2024-11-23T02:00:00Z".into(),
            }
        );
        let job = OpenJob {
            name: "build-1".into(),
            job_id: "1".into(),
            base_ami: Some("ami-base2".into()),
            started: None,
            state: JobState::Running,
        };
        let running = Observed {
            job: Some(&job),
            ..closed
        };
        assert_eq!(
            decide(&running),
            Decision::Wait {
                job: "build-1".into()
            }
        );
    }

    #[test]
    fn builds_when_nothing_exists_and_respects_suspend_and_the_failure_limit() {
        let base = image("ami-base2", "2024-11-01T00:00:00Z", &[]);
        let empty = selection(vec![]);
        let o = observed(Some(&base), &empty);
        assert_eq!(
            decide(&o),
            Decision::Build {
                reason: BuildReason::NoManagedImage
            }
        );
        assert!(matches!(
            decide(&Observed {
                suspended: true,
                ..o.clone()
            }),
            Decision::Suspended { .. }
        ));
        assert!(matches!(
            decide(&Observed {
                failures: 3,
                ..o.clone()
            }),
            Decision::FailureLimit { .. }
        ));
        assert!(matches!(
            decide(&Observed { failures: 2, ..o }),
            Decision::Build { .. }
        ));
    }

    #[test]
    fn base_moves_expiry_adoption_and_up_to_date() {
        let base = image("ami-base2", "2024-11-01T00:00:00Z", &[]);
        let current = [
            ("status", "active"),
            ("base-ami", "ami-base2"),
            ("create-timestamp", "2024-11-19T00:00:00Z"),
        ];
        let managed = selection(vec![image("ami-built", "2024-11-19T00:00:00Z", &current)]);
        let o = observed(Some(&base), &managed);
        assert_eq!(
            decide(&o),
            Decision::Adopt {
                image: "ami-built".into()
            }
        );
        assert_eq!(
            decide(&Observed {
                recorded_active: Some("ami-built"),
                ..o
            }),
            Decision::UpToDate {
                image: "ami-built".into()
            }
        );

        let old = [
            ("status", "active"),
            ("base-ami", "ami-base1"),
            ("create-timestamp", "2024-11-19T00:00:00Z"),
        ];
        let managed = selection(vec![image("ami-old", "2024-11-19T00:00:00Z", &old)]);
        let decision = decide(&observed(Some(&base), &managed));
        let Decision::Build { reason } = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(
            reason.describe(),
            "the base AMI moved on from ami-base1 to ami-base2 since ami-old was built"
        );

        let expired = [
            ("status", "active"),
            ("base-ami", "ami-base2"),
            ("create-timestamp", "2024-11-01T00:00:00Z"),
        ];
        let managed = selection(vec![image("ami-exp", "2024-11-01T00:00:00Z", &expired)]);
        let decision = decide(&observed(Some(&base), &managed));
        let Decision::Build { reason } = decision else {
            panic!("{decision:?}")
        };
        assert!(
            reason
                .describe()
                .contains("expired at 2024-11-08T00:00:00Z"),
            "{}",
            reason.describe()
        );
    }

    #[test]
    fn jobs_come_first() {
        let base = image("ami-base2", "2024-11-01T00:00:00Z", &[]);
        let empty = selection(vec![]);
        let mut job = OpenJob {
            name: "pb-abcde".into(),
            job_id: "abcde".into(),
            base_ami: Some("ami-base2".into()),
            started: None,
            state: JobState::Running,
        };
        let o = observed(Some(&base), &empty);
        // Even when suspended, a running build is followed.
        assert_eq!(
            decide(&Observed {
                job: Some(&job),
                suspended: true,
                ..o.clone()
            }),
            Decision::Wait {
                job: "pb-abcde".into()
            }
        );
        job.state = JobState::Succeeded {
            output: "1,a,artifact,0,id,us-west-2:ami-0123456789abcdef0".into(),
        };
        assert!(
            matches!(decide(&Observed { job: Some(&job), ..o.clone() }), Decision::Complete { image, .. } if image == "ami-0123456789abcdef0")
        );
        job.state = JobState::Succeeded {
            output: String::new(),
        };
        assert!(
            matches!(decide(&Observed { job: Some(&job), ..o.clone() }), Decision::Fail { reason, .. } if reason.contains("reported no AMI"))
        );
        assert!(matches!(
            decide(&Observed { recorded_running_job: Some("pb-gone1"), ..o.clone() }),
            Decision::Fail { reason, .. } if reason.starts_with("Job pb-gone1 is gone before its result was read")
        ));
        assert_eq!(decide(&observed(None, &empty)), Decision::NoBaseImage);
    }
}
