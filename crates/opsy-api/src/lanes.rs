//! Lanes: the architecture, variant and OS family an AMI is for. A node group only ever moves to
//! an AMI of its own lane: an arm64 group's nodes cannot boot an x86_64 AMI, a GPU group needs
//! the NVIDIA drivers of its variant, and nodes join the cluster the way their OS family does it
//! (AL2's `bootstrap.sh`, AL2023's `nodeadm`, Bottlerocket's TOML settings), so a launch
//! template's user data written for one fails on another.

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

/// Amazon Linux 2 (EKS: `amazon-eks-node-1.30-v…`, `amazon-eks-gpu-node-…`, `amazon-eks-arm64-node-…`).
pub const AL2: &str = "al2";
/// Amazon Linux 2023 (EKS: `amazon-eks-node-al2023-…`).
pub const AL2023: &str = "al2023";
/// Bottlerocket (`bottlerocket-aws-k8s-…`).
pub const BOTTLEROCKET: &str = "bottlerocket";
/// Windows Server (`Windows_Server-2022-English-Core-EKS_Optimized-…`).
pub const WINDOWS: &str = "windows";
/// Ubuntu (Canonical's EKS images, `ubuntu-eks/k8s_1.31/images/…`).
pub const UBUNTU: &str = "ubuntu";

/// The OS family an AMI's name names, the way AWS, Bottlerocket and Canonical name their EKS
/// AMIs (and the base AMIs of Amazon Linux: `al2023-ami-…`, `amzn2-ami-…`); `None` when the name
/// does not tell.
pub fn os_family_of_name(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    let words: Vec<&str> = name.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let has = |w: &str| words.contains(&w);
    if has("bottlerocket") {
        Some(BOTTLEROCKET)
    } else if has("windows") {
        Some(WINDOWS)
    } else if has("ubuntu") {
        Some(UBUNTU)
    } else if has("al2023") || name.contains("amazon-linux-2023") {
        Some(AL2023)
    } else if has("al2") || has("amzn2") || name.starts_with("amazon-eks-") {
        // EKS's AL2 AMIs name no OS: `amazon-eks-node-1.30-v…`; AL2023's say `al2023`.
        Some(AL2)
    } else {
        None
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

/// An architecture (`x86_64`, `arm64`, as EC2 names them), a variant and, when known, an OS
/// family.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lane {
    /// EC2 `Architecture`.
    pub architecture: String,
    /// [`STANDARD`], [`NVIDIA`], [`NEURON`], or what the `variant` tag says.
    pub variant: String,
    /// [`AL2`], [`AL2023`], [`BOTTLEROCKET`], …, or what the `os-family` tag says; `None` when
    /// neither the AMI nor its base tells.
    pub os_family: Option<String>,
}

impl Lane {
    /// A lane of no known OS family.
    pub fn new(architecture: impl Into<String>, variant: impl Into<String>) -> Self {
        Self {
            architecture: architecture.into(),
            variant: variant.into(),
            os_family: None,
        }
    }

    /// This lane, of OS family `os_family`.
    pub fn with_os_family(mut self, os_family: Option<impl Into<String>>) -> Self {
        self.os_family = os_family.map(Into::into);
        self
    }

    /// Whether a group of this lane may move to an AMI of lane `image`: the same architecture and
    /// variant, and the same OS family unless one of them is not known.
    pub fn admits(&self, image: &Lane) -> bool {
        self.architecture == image.architecture
            && self.variant == image.variant
            && match (&self.os_family, &image.os_family) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.architecture, self.variant)?;
        if let Some(os) = &self.os_family {
            write!(f, "/{os}")?;
        }
        Ok(())
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

    #[test]
    fn os_families_are_read_from_the_names_of_eks_and_base_amis() {
        for (name, family) in [
            (
                "amazon-eks-node-al2023-x86_64-standard-1.31-v20241109",
                Some(AL2023),
            ),
            (
                "amazon-eks-node-al2023-arm64-nvidia-1.31-v20241109",
                Some(AL2023),
            ),
            ("amazon-eks-node-1.30-v20241109", Some(AL2)),
            ("amazon-eks-gpu-node-1.30-v20241109", Some(AL2)),
            ("amazon-eks-arm64-node-1.30-v20241109", Some(AL2)),
            (
                "bottlerocket-aws-k8s-1.31-aarch64-v1.26.2-360b7a38",
                Some(BOTTLEROCKET),
            ),
            (
                "Windows_Server-2022-English-Core-EKS_Optimized-1.31-2024.11.13",
                Some(WINDOWS),
            ),
            (
                "ubuntu-eks/k8s_1.31/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20241112",
                Some(UBUNTU),
            ),
            (
                "al2023-ami-2023.6.20241111.0-kernel-6.1-x86_64",
                Some(AL2023),
            ),
            (
                "amzn2-ami-kernel-5.10-hvm-2.0.20241113.1-x86_64-gp2",
                Some(AL2),
            ),
            ("base-al2023-v1", Some(AL2023)),
            // A name of the team's own choosing tells nothing.
            ("hardened-node-42", None),
            ("al20230-lookalike", None),
        ] {
            assert_eq!(os_family_of_name(name), family, "{name}");
        }
    }

    #[test]
    fn a_lane_admits_its_own_os_family_or_an_unknown_one() {
        let al2 = Lane::new("x86_64", STANDARD).with_os_family(Some(AL2));
        let al2023 = Lane::new("x86_64", STANDARD).with_os_family(Some(AL2023));
        let unknown = Lane::new("x86_64", STANDARD);
        assert!(
            !al2.admits(&al2023),
            "AL2 user data cannot join AL2023 nodes"
        );
        assert!(al2.admits(&al2.clone()));
        assert!(al2.admits(&unknown));
        assert!(unknown.admits(&al2023));
        assert!(!unknown.admits(&Lane::new("arm64", STANDARD)));
        assert!(!al2023.admits(&Lane::new("x86_64", NVIDIA).with_os_family(Some(AL2023))));
        assert_eq!(al2023.to_string(), "x86_64/standard/al2023");
    }
}
