//! Lanes: the architecture and variant an AMI is for. A node group only ever moves to an AMI of
//! its own lane: an arm64 group's nodes cannot boot an x86_64 AMI, and a GPU group needs the
//! NVIDIA drivers of its variant.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The variant of most AMIs: no accelerator drivers.
pub const STANDARD: &str = "standard";
/// AMIs with NVIDIA drivers (EKS `…-nvidia-…`, `amazon-eks-gpu-node-…`, Bottlerocket `…-nvidia-…`).
pub const NVIDIA: &str = "nvidia";
/// AMIs with the AWS Neuron drivers (Inferentia, Trainium).
pub const NEURON: &str = "neuron";

/// The variant an AMI's name names, the way AWS names the EKS-optimized AMIs
/// (`amazon-eks-node-al2023-x86_64-nvidia-1.31-v…`, `amazon-eks-gpu-node-1.30-v…`,
/// `bottlerocket-aws-k8s-1.31-nvidia-x86_64-v…`, `…-neuron-…`); [`STANDARD`] otherwise.
pub fn variant_of_name(name: &str) -> &'static str {
    let name = name.to_ascii_lowercase();
    let words: Vec<&str> = name.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    if words.iter().any(|w| *w == "nvidia" || *w == "gpu") {
        NVIDIA
    } else if words.contains(&"neuron") {
        NEURON
    } else {
        STANDARD
    }
}

/// What `${ARCHITECTURE}` in filters and SSM parameter names is replaced with.
pub const ARCHITECTURE_PLACEHOLDER: &str = "${ARCHITECTURE}";

/// An architecture a PackerBuilder builds for, as EC2 names it.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Architecture {
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM (Graviton).
    #[serde(rename = "arm64")]
    Arm64,
}

impl Architecture {
    /// EC2's name: `x86_64`, `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        }
    }

    /// The suffix of a name derived for it (a DNS label): `x86-64`, `arm64`.
    pub fn name_suffix(self) -> &'static str {
        match self {
            Self::X86_64 => "x86-64",
            Self::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `filters` for one architecture: `${ARCHITECTURE}` in their values is filled, and an
/// `architecture` filter is added (replacing one the filters had).
pub fn filters_for(
    filters: &[crate::AmiFilter],
    architecture: Architecture,
) -> Vec<crate::AmiFilter> {
    let mut out: Vec<crate::AmiFilter> = filters
        .iter()
        .filter(|f| f.name != "architecture")
        .map(|f| crate::AmiFilter {
            name: f.name.clone(),
            values: f
                .values
                .iter()
                .map(|v| v.replace(ARCHITECTURE_PLACEHOLDER, architecture.as_str()))
                .collect(),
        })
        .collect();
    out.push(crate::AmiFilter {
        name: "architecture".into(),
        values: vec![architecture.as_str().into()],
    });
    out
}

/// An architecture (`x86_64`, `arm64`, as EC2 names them) and a variant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lane {
    /// EC2 `Architecture`.
    pub architecture: String,
    /// [`STANDARD`], [`NVIDIA`], [`NEURON`], or what the `variant` tag says.
    pub variant: String,
}

impl Lane {
    /// A lane.
    pub fn new(architecture: impl Into<String>, variant: impl Into<String>) -> Self {
        Self {
            architecture: architecture.into(),
            variant: variant.into(),
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.architecture, self.variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_read_from_the_names_aws_gives_its_eks_amis() {
        for (name, variant) in [
            (
                "amazon-eks-node-al2023-x86_64-standard-1.31-v20241109",
                STANDARD,
            ),
            (
                "amazon-eks-node-al2023-arm64-standard-1.31-v20241109",
                STANDARD,
            ),
            (
                "amazon-eks-node-al2023-x86_64-nvidia-1.31-v20241109",
                NVIDIA,
            ),
            (
                "amazon-eks-node-al2023-x86_64-neuron-1.31-v20241109",
                NEURON,
            ),
            ("amazon-eks-gpu-node-1.30-v20241109", NVIDIA),
            ("amazon-eks-node-1.30-v20241109", STANDARD),
            (
                "bottlerocket-aws-k8s-1.31-nvidia-x86_64-v1.26.2-360b7a38",
                NVIDIA,
            ),
            (
                "bottlerocket-aws-k8s-1.31-aarch64-v1.26.2-360b7a38",
                STANDARD,
            ),
            // Words, not substrings: a name that merely contains the letters is standard.
            ("gpus-are-elsewhere-neurons-too", STANDARD),
        ] {
            assert_eq!(variant_of_name(name), variant, "{name}");
        }
        assert_eq!(Lane::new("arm64", NVIDIA).to_string(), "arm64/nvidia");
    }
}
