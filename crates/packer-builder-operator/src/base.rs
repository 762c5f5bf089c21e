//! The base AMI a PackerBuilder builds from: found with `spec.amiFilters` and/or
//! `spec.amiParameter`, with the cluster's Kubernetes version and the one architecture filled
//! in; and why none was found, in words that name the field.

use opsy_api::PackerBuilder;

/// The base AMI, found with `spec.amiFilters`.
#[derive(Debug)]
pub struct Base {
    /// The newest available match.
    pub image: Option<opsy_aws::Image>,
    /// The cluster's Kubernetes version, read when the filters use the placeholder.
    pub control_plane: Option<String>,
    /// Whether the filters or the parameter use `${KUBERNETES_VERSION}`.
    pub placeholder: bool,
    /// `spec.amiParameter` with the version filled in, and the parameter as read (`None`:
    /// it does not exist).
    pub parameter: Option<(String, Option<opsy_aws::parameters::Parameter>)>,
}

impl Base {
    /// Why no base was found, when a parameter or the cluster explains it.
    pub fn missing(&self, pb: &PackerBuilder) -> Option<String> {
        if self.placeholder && self.control_plane.is_none() {
            return Some(format!(
                "spec.amiFilters or spec.amiParameter use {}, but EKS cluster {} (spec.clusterName) was not found in {}: its Kubernetes version cannot be read",
                opsy_api::kubernetes::VERSION_PLACEHOLDER,
                pb.spec.cluster_name,
                pb.spec.region
            ));
        }
        match &self.parameter {
            Some((name, None)) => Some(format!(
                "SSM parameter {name} (spec.amiParameter) does not exist in {}",
                pb.spec.region
            )),
            Some((name, Some(p))) if self.image.is_none() => Some(format!(
                "SSM parameter {name} (version {}) names {}, which is not an available image{}",
                p.version,
                p.value,
                if pb.spec.ami_filters.is_some() {
                    " matching spec.amiFilters"
                } else {
                    ""
                }
            )),
            _ => None,
        }
    }

    /// `status.baseParameter`.
    pub fn parameter_ref(&self) -> Option<opsy_api::common::ParameterRef> {
        let (_, Some(p)) = self.parameter.as_ref()? else {
            return None;
        };
        Some(opsy_api::common::ParameterRef {
            name: p.name.clone(),
            version: p.version,
            image_id: p.value.clone(),
        })
    }
}

/// Finds the base AMI; when the filters use `${KUBERNETES_VERSION}`, with the cluster's
/// version filled in (none when the cluster is not found).
pub async fn resolve_base(
    aws: &opsy_aws::AwsClients,
    pb: &PackerBuilder,
) -> Result<Base, opsy_aws::AwsError> {
    use opsy_api::kubernetes::{VERSION_PLACEHOLDER, fill_filters, filters_use_placeholder};
    let filters = pb.spec.ami_filters.as_deref().filter(|f| !f.is_empty());
    let parameter = pb.spec.ami_parameter.as_deref();
    let placeholder = filters.is_some_and(filters_use_placeholder)
        || parameter.is_some_and(|p| p.contains(VERSION_PLACEHOLDER));
    let control_plane = if placeholder {
        aws.cluster_version(&pb.spec.cluster_name).await?
    } else {
        None
    };
    if placeholder && control_plane.is_none() {
        return Ok(Base {
            image: None,
            control_plane,
            placeholder,
            parameter: None,
        });
    }
    let filled = match (filters, &control_plane) {
        (Some(filters), Some(version)) => Some(fill_filters(filters, version)),
        (filters, _) => filters.map(<[_]>::to_vec),
    };
    // Built for one architecture: the base must be of it.
    let architecture = single_architecture(pb);
    let filled = match (filled, architecture) {
        (Some(filters), Some(arch)) => Some(opsy_api::lanes::filters_for(&filters, arch)),
        (None, Some(arch)) if parameter.is_some() => Some(opsy_api::lanes::filters_for(&[], arch)),
        (filled, _) => filled,
    };
    let (image, parameter) = match parameter {
        Some(name) => {
            let name = match &control_plane {
                Some(version) => name.replace(VERSION_PLACEHOLDER, version),
                None => name.to_owned(),
            };
            let name = match architecture {
                Some(arch) => {
                    name.replace(opsy_api::lanes::ARCHITECTURE_PLACEHOLDER, arch.as_str())
                }
                None => name,
            };
            let (read, image) = aws.parameter_image(&name, filled.as_deref()).await?;
            (image, Some((name, read)))
        }
        None => match &filled {
            Some(filters) => (aws.resolve_base_image(filters).await?, None),
            None => (None, None),
        },
    };
    Ok(Base {
        image,
        control_plane,
        placeholder,
        parameter,
    })
}

/// The one architecture this PackerBuilder builds for (`spec.architectures` with one entry).
pub fn single_architecture(pb: &PackerBuilder) -> Option<opsy_api::lanes::Architecture> {
    match pb.spec.architectures.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}
