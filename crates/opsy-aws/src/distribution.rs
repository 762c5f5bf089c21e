//! Distribution: copies of a managed AMI in other regions (EC2 API Reference, CopyImage) and
//! sharing with other accounts (ModifyImageAttribute `LaunchPermission`, ModifySnapshotAttribute
//! `createVolumePermission`: EC2 needs both for another account to launch an EBS-backed AMI).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    LaunchPermission, LaunchPermissionModifications, OperationType, ResourceType,
    SnapshotAttributeName, Tag, TagSpecification,
};

use crate::{AwsClients, AwsError, Image, ImageQuery};

/// A copy to make: where from, how, and the tags it starts with.
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    /// The image to copy.
    pub source: &'a Image,
    /// Its region.
    pub source_region: &'a str,
    /// Tags of the new image (its snapshots get `brought-to-you-by` only).
    pub tags: &'a BTreeMap<String, String>,
    /// Encrypt the copy's snapshots.
    pub encrypted: bool,
    /// The KMS key for an encrypted copy.
    pub kms_key_id: Option<&'a str>,
    /// Idempotency token (at most 64 ASCII characters): a retried request returns the copy
    /// the first one started instead of a second copy.
    pub client_token: &'a str,
}

fn tags_of(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<Tag> {
    pairs
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl AwsClients {
    /// Starts a copy of `request.source` into this client's region, tagged at creation (the
    /// image with `request.tags`, its snapshots as the operator's), and returns the new id.
    /// The copy is `pending` until EC2 has copied the snapshots.
    pub async fn copy_image(&self, request: &CopyRequest<'_>) -> Result<String, AwsError> {
        let image_tags = TagSpecification::builder()
            .resource_type(ResourceType::Image)
            .set_tags(Some(tags_of(request.tags.clone())))
            .build();
        let snapshot_tags = TagSpecification::builder()
            .resource_type(ResourceType::Snapshot)
            .set_tags(Some(tags_of([(
                opsy_api::tags::BROUGHT_TO_YOU_BY.to_owned(),
                opsy_api::tags::BROUGHT_TO_YOU_BY_VALUE.to_owned(),
            )])))
            .build();
        let mut call = self
            .ec2
            .copy_image()
            .source_image_id(&request.source.id)
            .source_region(request.source_region)
            .name(&request.source.name)
            .client_token(request.client_token)
            .tag_specifications(image_tags)
            .tag_specifications(snapshot_tags);
        if request.encrypted {
            call = call.encrypted(true);
            if let Some(key) = request.kms_key_id {
                call = call.kms_key_id(key);
            }
        }
        let answer = self.call("ec2", "CopyImage", call.send()).await?;
        answer.image_id.ok_or(AwsError::MissingField {
            service: "ec2",
            operation: "CopyImage",
            field: "ImageId",
        })
    }

    /// Shares `image` with the accounts in `add` and stops sharing it with those in `remove`:
    /// launch permission on the image, create-volume permission on each of its snapshots.
    pub async fn share_image(
        &self,
        image: &Image,
        add: &[String],
        remove: &[String],
    ) -> Result<(), AwsError> {
        let launch = |accounts: &[String]| {
            (!accounts.is_empty()).then(|| {
                accounts
                    .iter()
                    .map(|a| LaunchPermission::builder().user_id(a).build())
                    .collect()
            })
        };
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let request = self
            .ec2
            .modify_image_attribute()
            .image_id(&image.id)
            .launch_permission(
                LaunchPermissionModifications::builder()
                    .set_add(launch(add))
                    .set_remove(launch(remove))
                    .build(),
            );
        self.call("ec2", "ModifyImageAttribute", request.send())
            .await?;
        // Create-volume permission on the snapshots the build made (marked as the operator's);
        // one it wired in from elsewhere is not the operator's to share. (Launching the AMI in
        // the other account needs only the launch permission.)
        let marked = self.marked_snapshots(image).await?;
        for snapshot in &marked {
            for (accounts, operation) in
                [(add, OperationType::Add), (remove, OperationType::Remove)]
            {
                if accounts.is_empty() {
                    continue;
                }
                let request = self
                    .ec2
                    .modify_snapshot_attribute()
                    .snapshot_id(snapshot)
                    .attribute(SnapshotAttributeName::CreateVolumePermission)
                    .operation_type(operation)
                    .set_user_ids(Some(accounts.to_vec()));
                self.call("ec2", "ModifySnapshotAttribute", request.send())
                    .await?;
            }
        }
        Ok(())
    }

    /// The image of this region with `name` owned by `owner` (how a base AMI published in
    /// every region, such as an EKS-optimised AMI, is found in another one).
    pub async fn image_named(&self, name: &str, owner: &str) -> Result<Option<Image>, AwsError> {
        let query = ImageQuery::default().owner(owner).filter("name", [name]);
        let found = self.describe_images(&query).await?;
        Ok(crate::images::newest(found.iter()).cloned())
    }
}
