//! SSM parameters as the source of a base AMI, the way AWS publishes its EKS-optimised AMIs
//! (`/aws/service/eks/optimized-ami/<version>/amazon-linux-2023/x86_64/standard/recommended/image_id`;
//! Systems Manager API Reference, GetParameter).

use opsy_api::AmiFilter;

use crate::{AwsClients, AwsError, Image, ImageQuery};

/// A parameter as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    /// Its name.
    pub name: String,
    /// Its value (for a base AMI: an image id).
    pub value: String,
    /// Its version (each change of the value makes a new one).
    pub version: i64,
}

impl AwsClients {
    /// Reads parameter `name`; `None` when it does not exist.
    pub async fn get_parameter(&self, name: &str) -> Result<Option<Parameter>, AwsError> {
        let request = self.ssm.get_parameter().name(name);
        match self.call("ssm", "GetParameter", request.send()).await {
            Ok(answer) => Ok(answer.parameter.map(|p| Parameter {
                name: p.name.unwrap_or_else(|| name.to_owned()),
                value: p.value.unwrap_or_default(),
                version: p.version,
            })),
            Err(AwsError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The image parameter `name` names, if it exists and is available, and matches `filters`
    /// when they are given (e.g. an `owner-id`). Returns the parameter too (`None`: it does
    /// not exist).
    pub async fn parameter_image(
        &self,
        name: &str,
        filters: Option<&[AmiFilter]>,
    ) -> Result<(Option<Parameter>, Option<Image>), AwsError> {
        let Some(parameter) = self.get_parameter(name).await? else {
            return Ok((None, None));
        };
        if !parameter.value.starts_with("ami-") {
            return Ok((Some(parameter), None));
        }
        let query = filters
            .map(ImageQuery::from_filters)
            .unwrap_or_default()
            .ids([parameter.value.as_str()]);
        let found = self.describe_images(&query).await?;
        let image = found.iter().find(|i| i.is_available()).cloned();
        Ok((Some(parameter), image))
    }
}
