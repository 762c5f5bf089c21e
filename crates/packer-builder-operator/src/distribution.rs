//! Distribution: the active AMI copied to `spec.distribution.regions` and shared with
//! `spec.distribution.shareWith`; copies follow their source.
//!
//! - A copy is made once per region (found again by its `source-ami` tag; CopyImage's client
//!   token makes a retried request return the first copy), tagged at creation with the tag
//!   contract, `source-ami`, `source-region` and the `base-ami` of its own region (the image
//!   of the same name and owner as the base), so an AMIRefresher there finds it the way it
//!   finds AMIs built in its region.
//! - Only the copy of the active AMI stays active: the others are deprecated like their
//!   sources. A quarantine anywhere (the source or any copy, by an AMIRefresher of any region)
//!   quarantines the source and every copy.
//! - Sharing is recorded in status per image; an image is touched again only when
//!   `shareWith` changes (accounts removed from it lose their permission).

use std::{collections::BTreeMap, sync::Arc};

use jiff::{SignedDuration, Timestamp};
use opsy_api::{
    PackerBuilder,
    packer_builder::{ImageCopy, PackerBuilderStatus},
    tags,
};
use opsy_aws::{
    AwsClients, AwsError, ClientSet, Image,
    distribution::CopyRequest,
    managed::{BuildIdentity, Selection},
};

/// One region's managed AMIs (copies), for retention to judge.
#[derive(Debug)]
pub struct Regional {
    /// The region.
    pub region: String,
    /// Its clients.
    pub aws: Arc<AwsClients>,
    /// This PackerBuilder's AMIs there, newest first.
    pub managed: Selection,
    /// The copy of the active AMI there, if there is one.
    pub active: Option<String>,
}

/// What distribution did, for the reconcile to report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The regions' managed AMIs.
    pub regions: Vec<Regional>,
    /// What was done, for one Normal Event (`Distributed`).
    pub done: Vec<String>,
    /// Quarantines spread from one image to the others, for one Warning Event.
    pub quarantined: Vec<String>,
    /// The source AMI in `spec.region` was quarantined because a copy was.
    pub source_quarantined: bool,
}

fn source_of(image: &Image) -> Option<&str> {
    image.tag(tags::SOURCE_AMI)
}

fn status_of(image: &Image) -> &str {
    image.tag(tags::STATUS).unwrap_or_default()
}

/// The tags a copy of `source` starts with: the source's contract tags — not its soak
/// evidence, which belongs to the image that ran, nor tags of the build's own (the sample
/// project's `opsy-packer-build`, a `Name`), which the operator's policy does not let it write
/// — `status=active`, where it came from, and the `base-ami` of the destination region.
pub fn copy_tags(
    source: &Image,
    source_region: &str,
    base_here: Option<&str>,
) -> BTreeMap<String, String> {
    let mut copied: BTreeMap<String, String> = source
        .tags
        .iter()
        .filter(|(k, _)| {
            tags::CONTRACT_KEYS.contains(&k.as_str()) && k.as_str() != tags::QUARANTINE_REASON
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    copied.insert(tags::STATUS.to_owned(), tags::STATUS_ACTIVE.to_owned());
    copied.insert(tags::SOURCE_AMI.to_owned(), source.id.clone());
    copied.insert(tags::SOURCE_REGION.to_owned(), source_region.to_owned());
    if let Some(base) = base_here {
        copied.insert(tags::BASE_AMI.to_owned(), base.to_owned());
    }
    copied
}

/// Takes every account not in `wanted` off the sharing of every available AMI of `places`
/// (`(region, clients, AMIs)`). Accounts only: groups (`all`) and organisations are not this
/// operator's. Returns what was done.
async fn revoke_all_but(
    places: &[(&str, &AwsClients, &Selection)],
    wanted: &[String],
) -> Result<Vec<String>, AwsError> {
    let mut done = Vec::new();
    for (region, aws, selection) in places {
        for image in selection.candidates.iter().map(|c| &c.image) {
            if !image.is_available() {
                continue;
            }
            let extra: Vec<String> = aws
                .image_shared_with(&image.id)
                .await?
                .into_iter()
                .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
                .filter(|a| !wanted.contains(a))
                .collect();
            if !extra.is_empty() {
                aws.share_image(image, &[], &extra).await?;
                done.push(format!(
                    "stopped sharing {} in {region} with {}",
                    image.id,
                    extra.join(", ")
                ));
            }
        }
    }
    Ok(done)
}

/// CopyImage's idempotency token for the copy of `source` into `region` (≤ 64 characters);
/// after a failed copy, `source` is that copy.
pub fn client_token(source: &str, region: &str) -> String {
    format!("opsy-{source}-{region}").chars().take(64).collect()
}

/// Copies, syncs and shares; returns each region's managed AMIs for retention.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    clients: &ClientSet,
    home: &AwsClients,
    pb: &PackerBuilder,
    builds: &BuildIdentity,
    managed: &Selection,
    base: Option<&Image>,
    status: &mut PackerBuilderStatus,
    now: Timestamp,
) -> Result<Outcome, AwsError> {
    let mut outcome = Outcome::default();
    let spec = pb.spec.distribution.clone().unwrap_or_default();
    let home_region = pb.spec.region.as_str();
    let expires_in = pb.spec.time_outs.expires_in.as_std();
    let active_id = status.active_image.as_ref().map(|i| i.id.clone());
    let active = managed
        .candidates
        .iter()
        .find(|c| Some(&c.image.id) == active_id.as_ref() && c.is_eligible())
        .map(|c| &c.image);
    for entry in &spec.regions {
        let aws = clients.region(&entry.region).await;
        let selection = aws.managed_images(builds, expires_in, now).await?;
        outcome.regions.push(Regional {
            region: entry.region.clone(),
            aws,
            managed: selection,
            active: None,
        });
    }

    // A quarantine anywhere quarantines the source and every copy.
    let mut bad: BTreeMap<String, String> = BTreeMap::new();
    for c in &managed.candidates {
        if status_of(&c.image) == tags::STATUS_QUARANTINED {
            let why = c
                .image
                .tag(tags::QUARANTINE_REASON)
                .unwrap_or("quarantined");
            bad.insert(
                c.image.id.clone(),
                format!("{} in {home_region}: {why}", c.image.id),
            );
        }
    }
    for regional in &outcome.regions {
        for c in &regional.managed.candidates {
            if status_of(&c.image) == tags::STATUS_QUARANTINED
                && let Some(source) = source_of(&c.image)
            {
                let why = c
                    .image
                    .tag(tags::QUARANTINE_REASON)
                    .unwrap_or("quarantined");
                bad.entry(source.to_owned()).or_insert_with(|| {
                    format!("copy {} in {}: {why}", c.image.id, regional.region)
                });
            }
        }
    }
    let at = now
        .checked_add(SignedDuration::from_secs(60))
        .unwrap_or(now);
    for c in &managed.candidates {
        if let Some(why) = bad.get(&c.image.id)
            && status_of(&c.image) != tags::STATUS_QUARANTINED
        {
            let reason = format!("quarantined with its {why}");
            home.quarantine_image(&c.image.id, &reason, at).await?;
            outcome
                .quarantined
                .push(format!("{} in {home_region} ({why})", c.image.id));
            outcome.source_quarantined = true;
        }
    }

    for regional in &mut outcome.regions {
        let region = regional.region.clone();
        let mut copies_of_active: Vec<&Image> = Vec::new();
        for c in &regional.managed.candidates {
            let Some(source) = source_of(&c.image) else {
                continue;
            };
            let copy_status = status_of(&c.image);
            if let Some(why) = bad.get(source) {
                if copy_status != tags::STATUS_QUARANTINED {
                    let reason = format!("quarantined with its source's {why}");
                    regional
                        .aws
                        .quarantine_image(&c.image.id, &reason, at)
                        .await?;
                    outcome
                        .quarantined
                        .push(format!("{} in {region} ({why})", c.image.id));
                }
            } else if Some(source) == active.map(|a| a.id.as_str()) {
                copies_of_active.push(&c.image);
            } else if copy_status == tags::STATUS_ACTIVE && active.is_some() {
                // Its source is no longer the active AMI.
                regional.aws.deprecate_image(&c.image.id, at).await?;
                outcome.done.push(format!(
                    "deprecated {} in {region} with its source {source}",
                    c.image.id
                ));
            }
        }
        // A copy EC2 could not make (`failed`) is made again, then deregistered.
        let failed: Vec<&Image> = copies_of_active
            .iter()
            .filter(|i| i.state == "failed")
            .copied()
            .collect();
        let copy_of_active = copies_of_active.iter().find(|i| i.state != "failed");
        regional.active = copy_of_active.map(|i| i.id.clone());
        let Some(active) = active.filter(|a| !bad.contains_key(&a.id)) else {
            continue;
        };
        if copy_of_active.is_none() {
            let entry = spec.regions.iter().find(|r| r.region == region);
            // The base of the destination region: the same name and owner.
            let base_here = match base {
                Some(b) => regional
                    .aws
                    .image_named(&b.name, &b.owner_id)
                    .await?
                    .map(|i| i.id),
                None => None,
            };
            let tags = copy_tags(active, home_region, base_here.as_deref());
            let id = regional
                .aws
                .copy_image(&CopyRequest {
                    source: active,
                    source_region: home_region,
                    tags: &tags,
                    encrypted: entry.is_some_and(|e| e.encrypted),
                    kms_key_id: entry.and_then(|e| e.kms_key_id.as_deref()),
                    // A copy made again after a failed one gets a token of its own (the
                    // first one's would answer with the failed copy).
                    client_token: &client_token(
                        failed.first().map_or(&active.id, |f| &f.id),
                        &region,
                    ),
                })
                .await?;
            regional.aws.forget_images(&builds.query()).await;
            outcome
                .done
                .push(format!("copying {} to {region} as {id}", active.id));
            regional.active = Some(id);
        }
        for copy in failed {
            regional.aws.deregister_image(copy).await?;
            outcome.done.push(format!(
                "deregistered {} in {region}: EC2 could not copy {} ({}); copied again",
                copy.id, active.id, copy.state
            ));
        }
    }

    // Where the active AMI is, and whom it is shared with.
    let mut places: Vec<ImageCopy> = Vec::new();
    if let Some(active) = active.filter(|a| !bad.contains_key(&a.id)) {
        let recorded = |region: &str, image: &str| -> Vec<String> {
            status
                .distribution
                .iter()
                .find(|d| d.region == region && d.image_id == image)
                .map(|d| d.shared_with.clone())
                .unwrap_or_default()
        };
        let mut here: Vec<(&str, &AwsClients, Option<&Image>, String)> =
            vec![(home_region, home, Some(active), active.id.clone())];
        for regional in &outcome.regions {
            if let Some(id) = &regional.active {
                let image = regional
                    .managed
                    .candidates
                    .iter()
                    .find(|c| &c.image.id == id)
                    .map(|c| &c.image);
                here.push((&regional.region, &regional.aws, image, id.clone()));
            }
        }
        for (region, aws, image, id) in here {
            let state = image.map_or("pending", |i| i.state.as_str()).to_owned();
            let mut shared = recorded(region, &id);
            if let Some(image) = image.filter(|i| i.is_available()) {
                let add: Vec<String> = spec
                    .share_with
                    .iter()
                    .filter(|a| !shared.contains(a))
                    .cloned()
                    .collect();
                let remove: Vec<String> = shared
                    .iter()
                    .filter(|a| !spec.share_with.contains(a))
                    .cloned()
                    .collect();
                if !add.is_empty() || !remove.is_empty() {
                    aws.share_image(image, &add, &remove).await?;
                    if !add.is_empty() {
                        outcome
                            .done
                            .push(format!("shared {id} in {region} with {}", add.join(", ")));
                    }
                    if !remove.is_empty() {
                        outcome.done.push(format!(
                            "stopped sharing {id} in {region} with {}",
                            remove.join(", ")
                        ));
                    }
                    shared = spec.share_with.clone();
                }
            }
            places.push(ImageCopy {
                region: region.to_owned(),
                image_id: id,
                state,
                shared_with: shared,
            });
        }
    }
    // Accounts taken out of shareWith lose their permissions on every managed AMI, in every
    // region — checked whenever shareWith changes, and once after status was lost (when what
    // was shared is unknown).
    let mut wanted = spec.share_with.clone();
    wanted.sort();
    let distributes = pb.spec.distribution.is_some() || !status.distribution.is_empty();
    if distributes && status.sharing_checked_for.as_ref() != Some(&wanted) {
        let mut everywhere: Vec<(&str, &AwsClients, &Selection)> =
            vec![(home_region, home, managed)];
        everywhere.extend(
            outcome
                .regions
                .iter()
                .map(|r| (r.region.as_str(), r.aws.as_ref(), &r.managed)),
        );
        outcome
            .done
            .extend(revoke_all_but(&everywhere, &wanted).await?);
        status.sharing_checked_for = Some(wanted);
    }
    status.distribution = if spec.regions.is_empty() && spec.share_with.is_empty() {
        Vec::new()
    } else {
        places
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_the_contract_but_not_the_evidence_and_names_its_region_s_base() {
        let source = Image {
            id: "ami-src".into(),
            name: "eks-hardened-1".into(),
            state: "available".into(),
            owner_id: "111122223333".into(),
            creation_date: None,
            deprecation_time: None,
            tags: [
                ("brought-to-you-by", "opsy-the-ami-operator"),
                ("cluster-name", "prod"),
                ("status", "active"),
                ("base-ami", "ami-base-west"),
                ("healthy-on/staging", "2026-11-01T00:00:00Z"),
                ("healthy-on/111122223333/staging", "2026-11-01T00:00:00Z"),
                ("opsy-packer-build", "true"),
                ("Name", "packer-al2023"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            snapshots: Vec::new(),
            deregistration_protection: None,
            architecture: None,
        };
        let tags = copy_tags(&source, "us-west-2", Some("ami-base-east"));
        assert_eq!(
            tags.get("base-ami").map(String::as_str),
            Some("ami-base-east")
        );
        assert_eq!(tags.get("source-ami").map(String::as_str), Some("ami-src"));
        assert_eq!(
            tags.get("source-region").map(String::as_str),
            Some("us-west-2")
        );
        assert_eq!(tags.get("cluster-name").map(String::as_str), Some("prod"));
        assert!(!tags.keys().any(|k| k.starts_with("healthy-on/")));
        assert!(!tags.contains_key("opsy-packer-build") && !tags.contains_key("Name"));
        assert!(client_token("ami-0123456789abcdef0", "ap-southeast-4").len() <= 64);
    }

    #[test]
    fn the_contract_keys_are_the_keys_the_policy_lets_the_operator_write() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/iam/packer-builder-operator.json"
        );
        let policy: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        // The build's AMI, managed AMIs, copies as they are made: each with the same keys.
        let statements: Vec<&serde_json::Value> = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["Sid"]
                    .as_str()
                    .is_some_and(|sid| sid.ends_with("WithTheContractTagsOnly"))
            })
            .collect();
        assert_eq!(statements.len(), 3);
        for statement in statements {
            let keys: Vec<&str> =
                statement["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
            assert_eq!(keys, tags::CONTRACT_KEYS, "{}", statement["Sid"]);
        }
    }
}
