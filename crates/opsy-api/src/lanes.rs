//! Lanes: the architecture and variant an AMI is for. A node group only ever moves to an AMI of
//! its own lane: an arm64 group's nodes cannot boot an x86_64 AMI, and a GPU group needs the
//! NVIDIA drivers of its variant.

use std::fmt;

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
