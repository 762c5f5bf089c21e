//! Retention: what becomes of a PackerBuilder's AMIs once they are no longer active. The
//! active AMI, the newest `keepDeprecated` deprecated ones (rollback candidates) and those
//! younger than `minAge` are kept without asking AWS; the others are checked for use (launch
//! templates, launch configurations, instances), for sharing with other accounts and for EC2's
//! deregistration protection, and the rest is deregistered with its snapshots — only with
//! `retention.delete`, and every deregistration is an Event.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;

use opsy_api::{
    AMIRefresher,
    packer_builder::{ImageFate, PackerBuilderStatus, PendingSnapshot, Retention},
    tags,
};
use opsy_aws::{
    AwsClients, AwsError, Image,
    managed::{Candidate, Selection},
};

/// How long a check of the AMIs' use stands while the AMIs past retention stay the same.
pub const RECHECK: SignedDuration = SignedDuration::from_hours(1);

/// The fates recorded in status.
pub const MAX_RECORDED: usize = 20;

/// An AMI's fate before AWS is asked: kept (and why), or past retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstLook {
    /// Kept without asking AWS.
    Keep(String),
    /// Past retention: deregistered unless something uses it.
    Past,
}

/// Judges `managed` (this PackerBuilder's AMIs, newest first) without AWS: the active one, the
/// newest `keepDeprecated` deprecated ones, the young ones and the protected ones are kept.
pub fn first_look<'a>(
    managed: &'a Selection,
    active: Option<&str>,
    retention: &Retention,
    now: Timestamp,
) -> Vec<(&'a Candidate, FirstLook)> {
    let keep = usize::try_from(retention.keep_deprecated).unwrap_or_default();
    let min_age = SignedDuration::try_from(retention.min_age.as_std()).unwrap_or_default();
    let mut rollback = 0;
    managed
        .candidates
        .iter()
        .map(|c| {
            let status = c.image.tag(tags::STATUS).unwrap_or_default();
            let look = if Some(c.image.id.as_str()) == active || status == tags::STATUS_ACTIVE {
                FirstLook::Keep("active".to_owned())
            } else if status == tags::STATUS_DEPRECATED && rollback < keep {
                rollback += 1;
                FirstLook::Keep(format!(
                    "rollback candidate {rollback} of {keep} (retention.keepDeprecated)"
                ))
            } else if c
                .created
                .is_none_or(|t| t.checked_add(min_age).is_ok_and(|t| t > now))
            {
                FirstLook::Keep(format!(
                    "younger than retention.minAge {}",
                    retention.min_age
                ))
            } else if c.image.is_protected() {
                FirstLook::Keep("EC2 deregistration protection is on".to_owned())
            } else {
                FirstLook::Past
            };
            (c, look)
        })
        .collect()
}

/// What deregistering `image` frees, for its fate's reason.
fn frees(image: &Image) -> String {
    let gib: i64 = image.snapshots.iter().map(|(_, g)| i64::from(*g)).sum();
    format!(
        "unused; frees {} snapshot(s), {gib} GiB",
        image.snapshots.len()
    )
}

/// What retention did, for the reconcile to report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `(image, message)` of each AMI deregistered now.
    pub deregistered: Vec<(String, String)>,
    /// Snapshot bytes deleted.
    pub reclaimed: u64,
    /// Snapshots of deregistered AMIs that EC2 did not delete (recorded to delete again).
    pub retry: Vec<PendingSnapshot>,
    /// Snapshots recorded earlier and deleted now.
    pub deleted_again: Vec<String>,
}

impl Outcome {
    /// The Warning for snapshots of deregistered AMIs EC2 did not delete, if any.
    pub fn left_behind(&self) -> Option<String> {
        let failed: Vec<String> = self
            .retry
            .iter()
            .map(|p| format!("{} ({})", p.snapshot, p.reason))
            .collect();
        (!failed.is_empty()).then(|| {
            format!(
                "snapshots of deregistered AMIs not deleted, deleted again at the next reconcile (status.pendingSnapshotDeletions): {}",
                failed.join("; ")
            )
        })
    }

    /// The note for snapshots recorded earlier and deleted now, if any.
    pub fn deleted_again(&self) -> Option<String> {
        (!self.deleted_again.is_empty()).then(|| {
            format!(
                "deleted {}, left behind by an earlier deregistration",
                self.deleted_again.join(", ")
            )
        })
    }
}

/// The AMIs AMIRefreshers name (`spec.ami`, `spec.promotion.pin`, the targets in status and
/// each group's images before and after its update — its rollback image), each with who names
/// it: `AMIRefresher ns/name (target)`.
pub async fn refresher_uses(
    client: &kube::Client,
    namespaces: &[Option<String>],
) -> Result<BTreeMap<String, String>, String> {
    let mut uses = BTreeMap::new();
    for namespace in namespaces {
        let api: kube::Api<AMIRefresher> = match namespace {
            Some(ns) => kube::Api::namespaced(client.clone(), ns),
            None => kube::Api::all(client.clone()),
        };
        let list = match api.list(&kube::api::ListParams::default()).await {
            Ok(list) => list,
            // The AMIRefresher CRD is not installed (the PackerBuilder operator alone).
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.to_string()),
        };
        for amr in list.items {
            let who = format!(
                "AMIRefresher {}/{}",
                amr.metadata.namespace.as_deref().unwrap_or_default(),
                amr.metadata.name.as_deref().unwrap_or_default()
            );
            let mut name = |image: Option<&String>, role: String| {
                if let Some(image) = image {
                    uses.entry(image.clone())
                        .or_insert_with(|| format!("{who} ({role})"));
                }
            };
            name(amr.spec.ami.as_ref(), "spec.ami".to_owned());
            name(
                amr.spec.promotion.as_ref().and_then(|p| p.pin.as_ref()),
                "spec.promotion.pin".to_owned(),
            );
            if let Some(status) = &amr.status {
                name(
                    status.target_image.as_ref().map(|i| &i.id),
                    "target".to_owned(),
                );
                for lane in &status.targets {
                    name(
                        Some(&lane.image.id),
                        format!("target of {}/{}", lane.architecture, lane.variant),
                    );
                }
                for group in &status.node_groups {
                    name(
                        group.from_image.as_ref(),
                        format!("rollback image of group {}", group.name),
                    );
                    name(
                        group.to_image.as_ref(),
                        format!("image of group {}", group.name),
                    );
                }
            }
        }
    }
    Ok(uses)
}

/// Where retention looks for AMIRefreshers that name an AMI.
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)]
pub enum Refreshers<'a> {
    /// List them with this client in these namespaces (`None`: all).
    Listed(&'a kube::Client, &'a [Option<String>]),
    /// Do not look (`plan`, which reads AWS only).
    NotLooked,
}

/// A region's AMIs for retention to judge: `spec.region`'s (`region: None`) or a copy
/// region's.
#[derive(Debug)]
pub struct Place<'a> {
    /// `None` for `spec.region`, else the copy region.
    pub region: Option<&'a str>,
    /// The region's clients.
    pub aws: &'a AwsClients,
    /// This PackerBuilder's AMIs there, newest first.
    pub managed: &'a Selection,
    /// The active AMI there (or its copy).
    pub active: Option<&'a str>,
}

/// Records each AMI's fate in `status.retention`, region by region, and, with
/// `retention.delete`, deregisters the AMIs past retention that nothing uses. AWS is asked
/// about a region's use only when some AMI there is past retention, and again only when that
/// set changes or after [`RECHECK`].
pub async fn apply(
    places: &[Place<'_>],
    refreshers: Refreshers<'_>,
    retention: &Retention,
    status: &mut PackerBuilderStatus,
    now: Timestamp,
) -> Result<Outcome, AwsError> {
    // AMIRefreshers are listed once, and only when some AMI is past retention.
    let mut named: Option<Result<BTreeMap<String, String>, String>> = None;
    let mut outcome = Outcome::default();
    // Snapshots a deregistration left behind: deleted again until they are gone.
    let mut still = Vec::new();
    for pending in std::mem::take(&mut status.pending_snapshot_deletions) {
        let place = places
            .iter()
            .find(|p| p.region.map(str::to_owned) == pending.region);
        let Some(place) = place else {
            still.push(pending);
            continue;
        };
        match place.aws.delete_snapshot(&pending.snapshot).await {
            Ok(()) => outcome.deleted_again.push(pending.snapshot),
            Err(e) => still.push(PendingSnapshot {
                reason: format!("DeleteSnapshot failed: {e}"),
                ..pending
            }),
        }
    }
    let fresh = status
        .retention_checked
        .as_ref()
        .is_some_and(|t| t.0.checked_add(RECHECK).is_ok_and(|until| until > now));
    let mut fates = Vec::new();
    let mut checked = false;
    let mut kept_check = false;
    for place in places {
        let region = place.region.map(str::to_owned);
        let recorded: Vec<ImageFate> = status
            .retention
            .iter()
            .filter(|f| f.region == region)
            .cloned()
            .collect();
        let looks = first_look(place.managed, place.active, retention, now);
        let past: Vec<String> = looks
            .iter()
            .filter(|(_, l)| *l == FirstLook::Past)
            .map(|(c, _)| c.image.id.clone())
            .collect();
        // The AMIs that were past retention at the last check (kept since for use or sharing).
        let recorded_past: Vec<String> = recorded
            .iter()
            .filter(|f| {
                f.fate == "Deregister"
                    || f.reason.starts_with("in use by")
                    || f.reason.starts_with("shared with")
            })
            .map(|f| f.image.clone())
            .collect();
        if !past.is_empty() && fresh && recorded_past == past {
            // Nothing changed here since the last check: the recorded fates stand.
            fates.extend(recorded);
            kept_check = true;
            continue;
        }
        checked |= !past.is_empty();
        if !past.is_empty() && named.is_none() {
            named = Some(match refreshers {
                Refreshers::Listed(client, namespaces) => refresher_uses(client, namespaces).await,
                Refreshers::NotLooked => Ok(BTreeMap::new()),
            });
        }
        let empty = Ok(BTreeMap::new());
        let named = named.as_ref().unwrap_or(&empty);
        judge(
            place,
            looks,
            &past,
            named,
            retention,
            &mut outcome,
            &mut fates,
        )
        .await?;
    }
    fates.truncate(MAX_RECORDED);
    status.retention = fates;
    still.extend(outcome.retry.iter().cloned());
    still.truncate(100);
    status.pending_snapshot_deletions = still;
    status.retention_checked = if checked {
        Some(Time(now))
    } else if kept_check {
        status.retention_checked.take()
    } else {
        None
    };
    Ok(outcome)
}

/// Asks AWS about the use of `past` in `place` and records every AMI's fate there.
async fn judge(
    place: &Place<'_>,
    looks: Vec<(&Candidate, FirstLook)>,
    past: &[String],
    named: &Result<BTreeMap<String, String>, String>,
    retention: &Retention,
    outcome: &mut Outcome,
    fates: &mut Vec<ImageFate>,
) -> Result<(), AwsError> {
    let aws = place.aws;
    let used = aws.images_in_use(past).await?;
    let within = place.region.map(|r| format!(" in {r}")).unwrap_or_default();
    for (candidate, look) in looks {
        let image = &candidate.image;
        let (fate, reason) = match look {
            FirstLook::Keep(why) => ("Keep", why),
            FirstLook::Past => {
                if let Some(by) = used.get(&image.id) {
                    ("Keep", format!("in use by {by}"))
                } else if let Some(by) = named.as_ref().ok().and_then(|n| n.get(&image.id)) {
                    ("Keep", format!("in use by {by}"))
                } else if let Err(e) = named {
                    (
                        "Keep",
                        format!(
                            "in use unless AMIRefreshers say otherwise; they could not be read: {e}"
                        ),
                    )
                } else {
                    let shared = if retention.allow_shared {
                        Vec::new()
                    } else {
                        aws.image_shared_with(&image.id).await?
                    };
                    if !shared.is_empty() {
                        (
                            "Keep",
                            format!(
                                "shared with {} (their use cannot be seen; retention.allowShared is off)",
                                shared.join(", ")
                            ),
                        )
                    } else if retention.delete {
                        let opsy_aws::Deregistered { bytes, kept, retry } =
                            aws.deregister_image(image).await?;
                        outcome.reclaimed += bytes;
                        outcome
                            .retry
                            .extend(retry.into_iter().map(|(snapshot, reason)| PendingSnapshot {
                                snapshot,
                                region: place.region.map(str::to_owned),
                                reason,
                            }));
                        let mut message = format!(
                            "deregistered {} ({}){within}: past retention and unused; {} snapshot(s) deleted, {} GiB",
                            image.id,
                            image.name,
                            image.snapshots.len() - kept.len(),
                            bytes >> 30
                        );
                        for (snapshot, why) in &kept {
                            message.push_str(&format!("; kept {snapshot} ({why})"));
                        }
                        outcome
                            .deregistered
                            .push((image.id.clone(), message.clone()));
                        ("Deregistered", message)
                    } else {
                        (
                            "Deregister",
                            format!("{} (retention.delete is off)", frees(image)),
                        )
                    }
                }
            }
        };
        if fate == "Keep" && reason == "active" {
            continue;
        }
        fates.push(ImageFate {
            image: image.id.clone(),
            region: place.region.map(str::to_owned),
            fate: fate.to_owned(),
            reason,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn image(id: &str, created: &str, status: &str) -> Image {
        Image {
            id: id.into(),
            name: id.into(),
            state: "available".into(),
            owner_id: "123456789012".into(),
            creation_date: created.parse().ok(),
            deprecation_time: None,
            tags: [
                ("status".to_owned(), status.to_owned()),
                ("create-timestamp".to_owned(), created.to_owned()),
            ]
            .into(),
            snapshots: vec![("snap-1".into(), 8)],
            deregistration_protection: None,
            architecture: None,
        }
    }

    #[test]
    fn the_active_the_newest_deprecated_and_the_young_are_kept() {
        let now: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let mut protected = image("ami-6", "2026-10-01T00:00:00Z", "deprecated");
        protected.deregistration_protection = Some("enabled".into());
        let images = vec![
            image("ami-1", "2026-11-28T00:00:00Z", "active"),
            image("ami-2", "2026-11-27T00:00:00Z", "deprecated"),
            image("ami-3", "2026-11-26T00:00:00Z", "quarantined"),
            image("ami-4", "2026-11-01T00:00:00Z", "deprecated"),
            image("ami-5", "2026-10-15T00:00:00Z", "deprecated"),
            protected,
            image("ami-7", "2026-09-01T00:00:00Z", "quarantined"),
        ];
        let selection = Selection::from_images(images, Duration::from_secs(30 * 86_400), now);
        let retention = Retention {
            keep_deprecated: 2,
            ..Retention::default()
        };
        let looks: Vec<(String, FirstLook)> =
            first_look(&selection, Some("ami-1"), &retention, now)
                .into_iter()
                .map(|(c, l)| (c.image.id.clone(), l))
                .collect();
        let keep = |s: &str| FirstLook::Keep(s.to_owned());
        assert_eq!(
            looks,
            [
                ("ami-1".to_owned(), keep("active")),
                (
                    "ami-2".to_owned(),
                    keep("rollback candidate 1 of 2 (retention.keepDeprecated)")
                ),
                // Quarantined: no rollback candidate, but younger than 7d.
                ("ami-3".to_owned(), keep("younger than retention.minAge 7d")),
                (
                    "ami-4".to_owned(),
                    keep("rollback candidate 2 of 2 (retention.keepDeprecated)")
                ),
                ("ami-5".to_owned(), FirstLook::Past),
                (
                    "ami-6".to_owned(),
                    keep("EC2 deregistration protection is on")
                ),
                ("ami-7".to_owned(), FirstLook::Past),
            ]
        );
    }
}
