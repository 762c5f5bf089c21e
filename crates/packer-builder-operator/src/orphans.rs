//! The AMI of a build whose Job is gone before its result was read: the operator was down
//! longer than `ttlAfterFinished` after the build ended, or someone deleted the Job. Without
//! the Job there is no artifact line, so the AMI is looked for instead — one this account
//! created since the Job started that no build claims (no contract tags) — and:
//!
//! - adopted (verified, tagged and recorded as the build's) when exactly one such AMI carries
//!   `opsy-build-base-ami` = the base the build started from, as the Packer projects this
//!   operator runs write it (`packer/`'s sample: `tags = { opsy-build-base-ami = var.ami_id }`;
//!   `base-ami`, which projects wrote before the build role lost the contract's keys, too);
//! - otherwise named, with every such AMI, in the failure the build is recorded as (its Warning
//!   Event and `status.lastRunMessage`): never left unknown.

use jiff::{SignedDuration, Timestamp};
use opsy_api::{packer_builder::PackerBuilderStatus, tags};
use opsy_aws::{AwsClients, AwsError, ImageQuery};

use crate::{
    decide::{Decision, OpenJob},
    state::JobState,
};

/// How far the AMI's creation may precede the Job's recorded start (clocks differ).
const SKEW: SignedDuration = SignedDuration::from_mins(5);

/// The most days of `creation-date` values asked for (EC2 takes 200 filter values).
const MAX_DAYS: i64 = 200;

/// What was found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    /// The AMI to adopt as the build's.
    pub adopt: Option<String>,
    /// Every unclaimed AMI created since the Job started.
    pub unclaimed: Vec<String>,
}

impl Found {
    /// The sentence the failure carries, when something was found but not adopted.
    pub fn named(&self, base: Option<&str>) -> Option<String> {
        (!self.unclaimed.is_empty()).then(|| {
            format!(
                "AMIs this account created since the build started that no build claims: {} (none adopted: it takes exactly one tagged base-ami={}); deregister the build's, or tag it with the contract",
                self.unclaimed.join(", "),
                base.unwrap_or("<the base>")
            )
        })
    }
}

/// Looks for the AMI of a build started at `started` from `base`.
pub async fn look(
    aws: &AwsClients,
    started: Timestamp,
    base: Option<&str>,
    now: Timestamp,
) -> Result<Found, AwsError> {
    let since = started.checked_sub(SKEW).unwrap_or(started);
    // Only the days since the build started (EC2's creation-date filter takes wildcards).
    let days = (now.duration_since(since).as_hours() / 24 + 1).clamp(1, MAX_DAYS);
    let values: Vec<String> = (0..days)
        .filter_map(|d| now.checked_sub(SignedDuration::from_hours(24 * d)).ok())
        .map(|t| format!("{}*", t.strftime("%Y-%m-%d")))
        .collect();
    let query = ImageQuery::default()
        .owner("self")
        .filter("creation-date", values.iter().map(String::as_str));
    let found = aws.describe_images(&query).await?;
    let unclaimed: Vec<&opsy_aws::Image> = found
        .iter()
        .filter(|i| i.creation_date.is_some_and(|c| c >= since))
        .filter(|i| i.tag(tags::BROUGHT_TO_YOU_BY).is_none())
        // The base itself, when it is this account's own image.
        .filter(|i| Some(i.id.as_str()) != base)
        .collect();
    let from_base: Vec<&&opsy_aws::Image> = unclaimed
        .iter()
        .filter(|i| base.is_some() && built_from(i) == base)
        .collect();
    Ok(Found {
        adopt: match from_base[..] {
            [only] => Some(only.id.clone()),
            _ => None,
        },
        unclaimed: unclaimed.iter().map(|i| i.id.clone()).collect(),
    })
}

/// The base a build says its AMI was built from: `opsy-build-base-ami`, else the `base-ami`
/// projects wrote before.
fn built_from(image: &opsy_aws::Image) -> Option<&str> {
    image
        .tag(tags::BUILD_BASE_AMI)
        .or_else(|| image.tag(tags::BASE_AMI))
}

/// `decision` again when it records the Job status says runs as gone (a failure without a
/// Job id): the build's AMI, when found, completes it instead; else the failure names every
/// unclaimed candidate. Returns the decision and, for an adoption, the Warning to emit.
pub async fn reconsider(
    aws: &AwsClients,
    status: &PackerBuilderStatus,
    decision: Decision,
    now: Timestamp,
) -> Result<(Decision, Option<String>), AwsError> {
    let Decision::Fail {
        job,
        job_id,
        reason,
        abandon,
    } = decision
    else {
        return Ok((decision, None));
    };
    if !job_id.is_empty() {
        return Ok((
            Decision::Fail {
                job,
                job_id,
                reason,
                abandon,
            },
            None,
        ));
    }
    let started = status.last_run.as_ref().map_or(now, |t| t.0);
    let base_ami = status.last_run_base_image_id.clone();
    let found = look(aws, started, base_ami.as_deref(), now).await?;
    Ok(match found.adopt {
        Some(image) => {
            let message = format!(
                "Job {job} is gone before its result was read; {image}, created since it started and tagged base-ami={}, is adopted as its build",
                base_ami.as_deref().unwrap_or_default()
            );
            let job = OpenJob {
                name: job,
                job_id: status.job_id.clone().unwrap_or_default(),
                base_ami,
                started: Some(started),
                state: JobState::Succeeded {
                    output: String::new(),
                },
            };
            (Decision::Complete { job, image }, Some(message))
        }
        None => {
            let reason = match found.named(base_ami.as_deref()) {
                Some(named) => format!("{reason}; {named}"),
                None => reason,
            };
            let decision = Decision::Fail {
                job,
                job_id,
                reason,
                abandon,
            };
            (decision, None)
        }
    })
}
