//! Quarantines of the AMIs this PackerBuilder built count as failed builds: an AMIRefresher
//! whose canary failed on an AMI quarantines it, and without this count the PackerBuilder would
//! build again from the same base at once, the halt would lift, the canary would break again —
//! every hour, forever. Each quarantined build counts once toward `spec.maxFailedBuilds`; a new
//! base, a spec change or the retry annotation give a fresh set of attempts.

use opsy_api::{
    packer_builder::{PackerBuilderStatus, RETRY_ANNOTATION},
    tags,
};
use opsy_aws::managed::Selection;

/// A build of this PackerBuilder whose AMI was found quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The AMI.
    pub image: String,
    /// The build's Job id.
    pub job_id: String,
    /// Its `quarantine-reason`.
    pub reason: String,
    /// Built from the current base: it counts toward `spec.maxFailedBuilds`.
    pub counted: bool,
}

/// The builds in `status.history` whose AMI `managed` shows quarantined since: their record
/// becomes `quarantined` (so each is found once) and, if built from `base` (the current base;
/// any base when unknown), `quarantinedBuilds` counts it.
fn notice(
    status: &mut PackerBuilderStatus,
    managed: &Selection,
    base: Option<&str>,
) -> Vec<Quarantined> {
    let mut found = Vec::new();
    for record in status
        .history
        .iter_mut()
        .filter(|r| r.result == "succeeded")
    {
        let Some(image) = record.built_image_id.as_deref() else {
            continue;
        };
        let Some(candidate) = managed.candidates.iter().find(|c| c.image.id == image) else {
            continue;
        };
        if candidate.image.tag(tags::STATUS) != Some(tags::STATUS_QUARANTINED) {
            continue;
        }
        let reason = candidate
            .image
            .tag(tags::QUARANTINE_REASON)
            .unwrap_or("no reason given")
            .to_owned();
        record.result = "quarantined".into();
        record.message = Some(reason.clone());
        let counted = base.is_none_or(|b| record.base_image_id.as_deref() == Some(b));
        found.push(Quarantined {
            image: image.to_owned(),
            job_id: record.job_id.clone(),
            reason,
            counted,
        });
    }
    let counted = found.iter().filter(|q| q.counted).count();
    status.quarantined_builds = status
        .quarantined_builds
        .saturating_add(i32::try_from(counted).unwrap_or(i32::MAX));
    found
}

/// Why the failed-build count starts again, if it does: the retry annotation has a value not
/// honoured yet, or the base moved on from the one the counted builds used.
fn fresh_start(
    status: &PackerBuilderStatus,
    retry: Option<&str>,
    base: Option<&str>,
) -> Option<String> {
    if status.failed_job_count == 0 && status.quarantined_builds == 0 {
        return None;
    }
    if let Some(token) = retry
        && status.retried.as_deref() != Some(token)
    {
        return Some(format!(
            "the annotation {RETRY_ANNOTATION} asks for a retry"
        ));
    }
    match (base, status.last_run_base_image_id.as_deref()) {
        (Some(base), Some(last)) if base != last => {
            Some(format!("the base AMI moved on from {last} to {base}"))
        }
        _ => None,
    }
}

/// What [`count`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counting {
    /// Why the count started afresh, if it did.
    pub fresh: Option<String>,
    /// The builds found quarantined now.
    pub quarantined: Vec<Quarantined>,
}

/// Brings the failed-build count of `status` up to date: afresh on a new value of the retry
/// annotation (`retry`, then recorded as honoured) or a new `base`, then with the builds whose
/// AMI `managed` shows quarantined since.
pub fn count(
    status: &mut PackerBuilderStatus,
    managed: &Selection,
    retry: Option<&str>,
    base: Option<&str>,
) -> Counting {
    let fresh = fresh_start(status, retry, base);
    if fresh.is_some() {
        reset(status);
    }
    if let Some(token) = retry {
        status.retried = Some(token.to_owned());
    }
    Counting {
        fresh,
        quarantined: notice(status, managed, base),
    }
}

/// Starts the count afresh.
pub fn reset(status: &mut PackerBuilderStatus) {
    status.failed_job_count = 0;
    status.quarantined_builds = 0;
}

/// Failed builds as `spec.maxFailedBuilds` counts them.
pub fn counted(status: &PackerBuilderStatus) -> i32 {
    status
        .failed_job_count
        .saturating_add(status.quarantined_builds)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use opsy_api::packer_builder::BuildRecord;
    use opsy_aws::Image;

    use super::*;

    fn image(id: &str, status: &str) -> Image {
        Image {
            id: id.into(),
            name: id.into(),
            state: "available".into(),
            owner_id: "1".into(),
            creation_date: "2024-11-19T00:00:00Z".parse().ok(),
            deprecation_time: None,
            tags: BTreeMap::from([
                (tags::STATUS.to_owned(), status.to_owned()),
                (
                    tags::QUARANTINE_REASON.to_owned(),
                    "staging/amr: canary: 2 of 2 new nodes NotReady".to_owned(),
                ),
            ]),
            snapshots: Vec::new(),
            deregistration_protection: None,
            architecture: None,
        }
    }

    fn built(job: &str, base: &str, image: &str) -> BuildRecord {
        BuildRecord {
            job_id: job.into(),
            base_image_id: Some(base.into()),
            built_image_id: Some(image.into()),
            result: "succeeded".into(),
            ..BuildRecord::default()
        }
    }

    fn selection(images: Vec<Image>) -> Selection {
        Selection::from_images(
            images,
            Duration::from_secs(30 * 86_400),
            "2024-11-20T00:00:00Z".parse().unwrap(),
        )
    }

    #[test]
    fn each_quarantined_build_of_the_current_base_counts_once() {
        let mut status = PackerBuilderStatus {
            history: vec![
                built("j3", "ami-base2", "ami-3"),
                built("j2", "ami-base1", "ami-2"),
                built("j1", "ami-base2", "ami-1"),
            ],
            ..PackerBuilderStatus::default()
        };
        let managed = selection(vec![
            image("ami-3", "quarantined"),
            image("ami-2", "quarantined"),
            image("ami-1", "deprecated"),
        ]);
        let found = notice(&mut status, &managed, Some("ami-base2"));
        assert_eq!(
            found
                .iter()
                .map(|q| (q.image.as_str(), q.counted))
                .collect::<Vec<_>>(),
            [("ami-3", true), ("ami-2", false)]
        );
        assert_eq!(status.quarantined_builds, 1);
        assert_eq!(status.history[0].result, "quarantined");
        assert_eq!(
            status.history[0].message.as_deref(),
            Some("staging/amr: canary: 2 of 2 new nodes NotReady")
        );
        assert_eq!(status.history[2].result, "succeeded");
        // Found once.
        assert!(notice(&mut status, &managed, Some("ami-base2")).is_empty());
        assert_eq!(status.quarantined_builds, 1);
        assert_eq!(counted(&status), 1);
    }

    #[test]
    fn a_retry_or_a_new_base_starts_the_count_afresh_once() {
        let mut status = PackerBuilderStatus {
            quarantined_builds: 3,
            last_run_base_image_id: Some("ami-base1".into()),
            ..PackerBuilderStatus::default()
        };
        assert_eq!(fresh_start(&status, None, Some("ami-base1")), None);
        assert!(
            fresh_start(&status, None, Some("ami-base2"))
                .unwrap()
                .contains("moved on from ami-base1 to ami-base2")
        );
        assert!(
            fresh_start(&status, Some("2026-12-03"), Some("ami-base1"))
                .unwrap()
                .contains(RETRY_ANNOTATION)
        );
        status.retried = Some("2026-12-03".into());
        assert_eq!(fresh_start(&status, Some("2026-12-03"), None), None);
        reset(&mut status);
        assert_eq!(counted(&status), 0);
        // Nothing to start afresh: nothing happens.
        assert_eq!(fresh_start(&status, Some("again"), Some("ami-base9")), None);
    }
}
