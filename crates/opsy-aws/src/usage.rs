//! What still uses an AMI before retention deregisters it, and the deregistration itself.
//!
//! An AMI is in use when a launch-template version (any template, any version; one naming its
//! AMI by a Systems Manager parameter, `resolve:ssm:…`, through the AMI the parameter names
//! now), a launch configuration, or an instance in any state but `terminated` references it. Managed node
//! groups and Auto Scaling groups reach their AMI through a launch template or a launch
//! configuration, so those cover them (EC2 API Reference: DescribeLaunchTemplates,
//! DescribeLaunchTemplateVersions, DescribeInstances; Auto Scaling API Reference:
//! DescribeLaunchConfigurations).

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{LaunchPermission, Tag};

use crate::{AwsClients, AwsError, Image};

/// Instance states in which an instance still holds on to its AMI.
const LIVE_STATES: [&str; 5] = ["pending", "running", "shutting-down", "stopping", "stopped"];

impl AwsClients {
    /// Which of `images` something still uses, each with the first user found
    /// (`launch template lt-… (name) version 3`, `launch configuration web-v2`,
    /// `instance i-… (stopped)`).
    pub async fn images_in_use(
        &self,
        images: &[String],
    ) -> Result<BTreeMap<String, String>, AwsError> {
        let wanted: BTreeSet<&str> = images.iter().map(String::as_str).collect();
        let mut used: BTreeMap<String, String> = BTreeMap::new();
        if wanted.is_empty() {
            return Ok(used);
        }
        let mut note = |image: Option<&str>, by: String| {
            if let Some(image) = image.filter(|i| wanted.contains(i)) {
                used.entry(image.to_owned()).or_insert(by);
            }
        };
        for (id, name) in self.launch_templates().await? {
            let mut token: Option<String> = None;
            loop {
                let request = self
                    .ec2
                    .describe_launch_template_versions()
                    .launch_template_id(&id)
                    // A version naming its AMI by parameter (`resolve:ssm:…`) is read as the
                    // AMI the parameter names now.
                    .resolve_alias(true)
                    .set_max_results(self.page_size.or(Some(200)))
                    .set_next_token(token.take());
                let page = self
                    .call("ec2", "DescribeLaunchTemplateVersions", request.send())
                    .await?;
                for version in page.launch_template_versions.unwrap_or_default() {
                    note(
                        version
                            .launch_template_data
                            .as_ref()
                            .and_then(|d| d.image_id.as_deref()),
                        format!(
                            "launch template {id} ({name}) version {}",
                            version.version_number.unwrap_or_default()
                        ),
                    );
                }
                match page.next_token {
                    Some(next) if !next.is_empty() => token = Some(next),
                    _ => break,
                }
            }
        }
        let mut token: Option<String> = None;
        loop {
            let request = self
                .autoscaling
                .describe_launch_configurations()
                .set_max_records(self.page_size)
                .set_next_token(token.take());
            let page = self
                .call(
                    "autoscaling",
                    "DescribeLaunchConfigurations",
                    request.send(),
                )
                .await?;
            for config in page.launch_configurations.unwrap_or_default() {
                note(
                    config.image_id.as_deref(),
                    format!(
                        "launch configuration {}",
                        config.launch_configuration_name.unwrap_or_default()
                    ),
                );
            }
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        // Instances by image: EC2 takes at most 200 filter values a request.
        let filters = [
            ("image-id".to_owned(), images.to_vec()),
            (
                "instance-state-name".to_owned(),
                LIVE_STATES.map(str::to_owned).to_vec(),
            ),
        ];
        for filters in crate::filters::split(&filters) {
            let mut token: Option<String> = None;
            loop {
                let request = self
                    .ec2
                    .describe_instances()
                    .set_filters(Some(crate::filters::ec2(&filters)))
                    .set_max_results(self.page_size)
                    .set_next_token(token.take());
                let page = self
                    .call("ec2", "DescribeInstances", request.send())
                    .await?;
                for reservation in page.reservations.unwrap_or_default() {
                    for instance in reservation.instances.unwrap_or_default() {
                        let state = instance
                            .state
                            .as_ref()
                            .and_then(|s| s.name.as_ref())
                            .map(|n| n.as_str().to_owned())
                            .unwrap_or_default();
                        note(
                            instance.image_id.as_deref(),
                            format!(
                                "instance {} ({state})",
                                instance.instance_id.unwrap_or_default()
                            ),
                        );
                    }
                }
                match page.next_token {
                    Some(next) if !next.is_empty() => token = Some(next),
                    _ => break,
                }
            }
        }
        Ok(used)
    }

    /// Every launch template of the region: `(id, name)`.
    async fn launch_templates(&self) -> Result<Vec<(String, String)>, AwsError> {
        let mut templates = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = self
                .ec2
                .describe_launch_templates()
                .set_max_results(self.page_size.or(Some(200)))
                .set_next_token(token.take());
            let page = self
                .call("ec2", "DescribeLaunchTemplates", request.send())
                .await?;
            for template in page.launch_templates.unwrap_or_default() {
                if let Some(id) = template.launch_template_id {
                    templates.push((id, template.launch_template_name.unwrap_or_default()));
                }
            }
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        Ok(templates)
    }

    /// The accounts (and groups, e.g. `all`) `image` is shared with (its launch permission).
    pub async fn image_shared_with(&self, image: &str) -> Result<Vec<String>, AwsError> {
        let request = self
            .ec2
            .describe_image_attribute()
            .image_id(image)
            .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission);
        let answer = self
            .call("ec2", "DescribeImageAttribute", request.send())
            .await?;
        Ok(answer
            .launch_permissions
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p: LaunchPermission| {
                p.user_id
                    .or_else(|| p.group.map(|g| g.as_str().to_owned()))
                    .or(p.organization_arn)
                    .or(p.organizational_unit_arn)
            })
            .collect())
    }

    /// The snapshots of `image` as EC2 describes them (one `DescribeSnapshots`; none without
    /// snapshots).
    pub async fn image_snapshots(&self, image: &Image) -> Result<Vec<SnapshotFacts>, AwsError> {
        if image.snapshots.is_empty() {
            return Ok(Vec::new());
        }
        let request = self.ec2.describe_snapshots().set_snapshot_ids(Some(
            image.snapshots.iter().map(|(id, _)| id.clone()).collect(),
        ));
        Ok(self
            .call("ec2", "DescribeSnapshots", request.send())
            .await?
            .snapshots
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| {
                Some(SnapshotFacts {
                    marked: s.tags().iter().any(|t| {
                        t.key() == Some(opsy_api::tags::BROUGHT_TO_YOU_BY)
                            && t.value() == Some(opsy_api::tags::BROUGHT_TO_YOU_BY_VALUE)
                    }),
                    started: s
                        .start_time
                        .and_then(|t| jiff::Timestamp::from_second(t.secs()).ok()),
                    description: s.description.unwrap_or_default(),
                    id: s.snapshot_id?,
                })
            })
            .collect())
    }

    /// The snapshots of `image` marked as the operator's.
    pub async fn marked_snapshots(&self, image: &Image) -> Result<BTreeSet<String>, AwsError> {
        Ok(self
            .image_snapshots(image)
            .await?
            .into_iter()
            .filter(|s| s.marked)
            .map(|s| s.id)
            .collect())
    }

    /// Marks the snapshots the build of `image` made as the operator's (`brought-to-you-by`),
    /// so that only those are shared with it and deleted with it (IAM conditions on the tag).
    /// A snapshot is the build's when EC2 made it for this image (`CreateImage` describes it
    /// as "Created by CreateImage(…) for ami-…") or when it started at or after `built_since`
    /// (the build Job's start: a build registering its AMI from snapshots it made); a snapshot
    /// that existed before — a data set the Packer project wires in with
    /// `ami_block_device_mappings { snapshot_id }` — is someone else's and stays untouched.
    pub async fn mark_snapshots(
        &self,
        image: &Image,
        built_since: jiff::Timestamp,
    ) -> Result<(), AwsError> {
        let own: Vec<String> = self
            .image_snapshots(image)
            .await?
            .into_iter()
            .filter(|s| !s.marked && s.made_for(&image.id, built_since))
            .map(|s| s.id)
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        let request = self.ec2.create_tags().set_resources(Some(own)).tags(
            Tag::builder()
                .key(opsy_api::tags::BROUGHT_TO_YOU_BY)
                .value(opsy_api::tags::BROUGHT_TO_YOU_BY_VALUE)
                .build(),
        );
        self.call("ec2", "CreateTags", request.send())
            .await
            .map(drop)
    }

    /// Deregisters `image` and deletes those of its snapshots marked as the operator's; unmarked
    /// ones (an AMI built before snapshots were marked) stay, and are returned with the ones EC2
    /// did not delete. Returns the bytes deleted and the snapshots kept, each with why.
    ///
    /// When every snapshot is marked, one `DeregisterImage` with `DeleteAssociatedSnapshots`
    /// does both (EC2 API reference, DeregisterImage): a crash cannot fall between the two and
    /// leave snapshots that no AMI names any more (nothing would ever find them again). Only an
    /// AMI with unmarked snapshots is deregistered first and its marked snapshots deleted after.
    pub async fn deregister_image(&self, image: &Image) -> Result<Deregistered, AwsError> {
        let marked = self.marked_snapshots(image).await?;
        let size = |snapshot: &str| {
            image
                .snapshots
                .iter()
                .find(|(id, _)| id == snapshot)
                .map(|(_, gib)| u64::try_from(*gib).unwrap_or_default() << 30)
                .unwrap_or_default()
        };
        let together = !image.snapshots.is_empty()
            && image.snapshots.iter().all(|(id, _)| marked.contains(id));
        let request = self
            .ec2
            .deregister_image()
            .image_id(&image.id)
            .delete_associated_snapshots(together);
        let answer = self.call("ec2", "DeregisterImage", request.send()).await?;
        self.invalidate_images();
        let mut bytes = 0u64;
        let mut kept = Vec::new();
        let mut retry = Vec::new();
        if together {
            // Each snapshot's fate: `success`, or kept (`skipped`: another AMI uses it; or a
            // permission or EC2 error).
            for result in answer.delete_snapshot_results() {
                let Some(snapshot) = result.snapshot_id() else {
                    continue;
                };
                match result.return_code().map(|c| c.as_str()) {
                    Some("success") => bytes += size(snapshot),
                    Some("skipped") => {
                        kept.push((snapshot.to_owned(), "another AMI uses it".to_owned()));
                    }
                    code => {
                        let why = format!(
                            "EC2 did not delete it: {}",
                            code.unwrap_or("no reason given")
                        );
                        retry.push((snapshot.to_owned(), why.clone()));
                        kept.push((snapshot.to_owned(), format!("{why}; deleted again later")));
                    }
                }
            }
            return Ok(Deregistered { bytes, kept, retry });
        }
        for (snapshot, _) in &image.snapshots {
            if !marked.contains(snapshot) {
                kept.push((
                    snapshot.clone(),
                    format!(
                        "not marked {}: not this operator's to delete",
                        opsy_api::tags::BROUGHT_TO_YOU_BY
                    ),
                ));
                continue;
            }
            // The AMI is gone: a snapshot that fails now is recorded and deleted again later,
            // never lost track of.
            match self.delete_snapshot(snapshot).await {
                Ok(()) => bytes += size(snapshot),
                Err(e) => {
                    let why = format!("DeleteSnapshot failed: {e}");
                    retry.push((snapshot.clone(), why.clone()));
                    kept.push((snapshot.clone(), format!("{why}; deleted again later")));
                }
            }
        }
        Ok(Deregistered { bytes, kept, retry })
    }

    /// Deletes `snapshot`; one already gone counts as deleted.
    pub async fn delete_snapshot(&self, snapshot: &str) -> Result<(), AwsError> {
        let request = self.ec2.delete_snapshot().snapshot_id(snapshot);
        match self.call("ec2", "DeleteSnapshot", request.send()).await {
            Ok(_) | Err(AwsError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A snapshot of an AMI, as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// `snap-…`
    pub id: String,
    /// Marked as the operator's (`brought-to-you-by`).
    pub marked: bool,
    /// When it started.
    pub started: Option<jiff::Timestamp>,
    /// Its description.
    pub description: String,
}

impl SnapshotFacts {
    /// Whether it was made for `image` by the build that made `image`: EC2 made it for the
    /// image, or it started at or after `built_since`.
    pub fn made_for(&self, image: &str, built_since: jiff::Timestamp) -> bool {
        self.description.contains(image) || self.started.is_some_and(|t| t >= built_since)
    }
}

/// What a deregistration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deregistered {
    /// Snapshot bytes deleted.
    pub bytes: u64,
    /// Snapshots kept, each with why.
    pub kept: Vec<(String, String)>,
    /// Snapshots of the operator's that EC2 did not delete, each with why: to delete again.
    pub retry: Vec<(String, String)>,
}
