//! Launch templates: read a version, and create a new version from it with another AMI.

use crate::{AwsClients, AwsError};

/// Which launch template (by id or by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateRef {
    /// `lt-…`
    Id(String),
    /// The template's name.
    Name(String),
}

/// One version of a launch template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVersion {
    /// `lt-…`
    pub template_id: String,
    /// The template's name.
    pub template_name: String,
    /// The version number.
    pub version: i64,
    /// The AMI of this version; `None` when the version sets no `ImageId` (EKS then picks
    /// its own AMI, and this operator cannot manage the group's image).
    pub image_id: Option<String>,
}

/// Versions read, by template id and version number. A launch template version never changes
/// once created and its number is never reused, so a node group that stays on its version
/// costs no `DescribeLaunchTemplateVersions` after the first read.
pub(crate) type TemplateVersionCache = moka::future::Cache<(String, i64), TemplateVersion>;

pub(crate) fn template_version_cache() -> TemplateVersionCache {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        // Bounds how long a deleted version is still answered from memory.
        .time_to_live(std::time::Duration::from_secs(3600))
        .build()
}

impl AwsClients {
    /// Reads `version` (a number, `$Latest` or `$Default`) of a launch template. Numbered
    /// versions of a template named by id are read once and remembered.
    pub async fn launch_template_version(
        &self,
        template: &TemplateRef,
        version: &str,
    ) -> Result<TemplateVersion, AwsError> {
        match (template, version.parse::<i64>()) {
            (TemplateRef::Id(id), Ok(number)) => self
                .template_versions
                .try_get_with(
                    (id.clone(), number),
                    self.read_launch_template_version(template, version),
                )
                .await
                .map_err(|e| (*e).clone()),
            _ => self.read_launch_template_version(template, version).await,
        }
    }

    async fn read_launch_template_version(
        &self,
        template: &TemplateRef,
        version: &str,
    ) -> Result<TemplateVersion, AwsError> {
        const OP: &str = "DescribeLaunchTemplateVersions";
        let mut request = self
            .ec2
            .describe_launch_template_versions()
            .versions(version);
        request = match template {
            TemplateRef::Id(id) => request.launch_template_id(id),
            TemplateRef::Name(name) => request.launch_template_name(name),
        };
        let response = self.call("ec2", OP, request.send()).await?;
        let found = response
            .launch_template_versions
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| AwsError::NotFound {
                service: "ec2",
                operation: OP,
                code: "InvalidLaunchTemplateId.VersionNotFound".into(),
                message: format!("launch template {template:?} has no version {version}"),
            })?;
        Ok(TemplateVersion {
            template_id: found.launch_template_id.unwrap_or_default(),
            template_name: found.launch_template_name.unwrap_or_default(),
            version: found.version_number.ok_or(AwsError::MissingField {
                service: "ec2",
                operation: OP,
                field: "VersionNumber",
            })?,
            image_id: found.launch_template_data.and_then(|d| d.image_id),
        })
    }

    /// Creates a new version of `template_id` from `source_version` (AWS copies every setting
    /// of the source version) with only the AMI changed. Returns the new version number.
    pub async fn create_template_version_with_image(
        &self,
        template_id: &str,
        source_version: i64,
        image_id: &str,
        description: &str,
    ) -> Result<i64, AwsError> {
        const OP: &str = "CreateLaunchTemplateVersion";
        let request = self
            .ec2
            .create_launch_template_version()
            .launch_template_id(template_id)
            .source_version(source_version.to_string())
            .version_description(description)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(image_id)
                    .build(),
            );
        let response = self.call("ec2", OP, request.send()).await?;
        response
            .launch_template_version
            .and_then(|v| v.version_number)
            .ok_or(AwsError::MissingField {
                service: "ec2",
                operation: OP,
                field: "LaunchTemplateVersion.VersionNumber",
            })
    }
}
