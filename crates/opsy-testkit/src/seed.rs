//! AMIs to seed the emulator with, shaped like the ones EKS publishes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The AWS account that publishes the EKS-optimised AMIs.
pub const EKS_OWNER: &str = "602401143452";
/// An unrelated account that publishes look-alike images (to prove owners are honoured).
pub const OTHER_OWNER: &str = "999988887777";

/// One AMI in the emulator's seed (`MOTO_AMIS_PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedAmi {
    /// `ami-` and 17 hex digits (the ids of [`eks_amis`] spell out series and date).
    pub id: String,
    /// Image name.
    pub name: String,
    /// Owning account.
    pub owner_id: String,
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// `available`, `pending`, `failed`, ...
    pub state: String,
    /// EC2 `CreationDate`, RFC 3339 with milliseconds (`2024-08-07T10:11:12.000Z`).
    pub creation_date: String,
    /// Tags on the image.
    pub tags: BTreeMap<String, String>,
}

impl SeedAmi {
    /// An available, public EKS-style image.
    pub fn new(
        id: &str,
        name: &str,
        owner_id: &str,
        architecture: &str,
        creation_date: &str,
    ) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            owner_id: owner_id.to_owned(),
            architecture: architecture.to_owned(),
            state: "available".to_owned(),
            creation_date: creation_date.to_owned(),
            tags: BTreeMap::new(),
        }
    }

    /// The same image in another state.
    pub fn with_state(mut self, state: &str) -> Self {
        self.state = state.to_owned();
        self
    }

    /// The same image with a tag.
    pub fn with_tag(mut self, key: &str, value: &str) -> Self {
        self.tags.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The entry in moto's `MOTO_AMIS_PATH` format.
    pub fn to_moto(&self) -> Value {
        json!({
            "ami_id": self.id,
            "name": self.name,
            "description": format!("EKS Kubernetes Worker AMI ({})", self.name),
            "owner_id": self.owner_id,
            "public": true,
            "virtualization_type": "hvm",
            "architecture": self.architecture,
            "state": self.state,
            "platform": null,
            "image_type": "machine",
            "hypervisor": "xen",
            "root_device_name": "/dev/xvda",
            "root_device_type": "ebs",
            "sriov": "simple",
            "creation_date": self.creation_date,
            "tags": self.tags,
        })
    }
}

/// Ids of [`eks_amis`], for assertions.
pub mod ids {
    /// AL2023 x86_64 1.30, August 2024.
    pub const AL2023_130_AUG: &str = "ami-0a130202408070000";
    /// AL2023 x86_64 1.30, September 2024.
    pub const AL2023_130_SEP: &str = "ami-0a130202409170000";
    /// AL2023 x86_64 1.30, October 2024: the newest available 1.30 x86_64 image.
    pub const AL2023_130_OCT: &str = "ami-0a130202410240000";
    /// AL2023 x86_64 1.30, November 2024, still `pending`.
    pub const AL2023_130_NOV_PENDING: &str = "ami-0a130202411090000";
    /// AL2023 arm64 1.30, October 2024.
    pub const AL2023_130_ARM_OCT: &str = "ami-0b130202410240000";
    /// AL2023 x86_64 1.31, October 2024.
    pub const AL2023_131_OCT: &str = "ami-0a131202410240000";
    /// AL2023 x86_64 1.31, November 2024.
    pub const AL2023_131_NOV: &str = "ami-0a131202411150000";
    /// AL2 x86_64 1.30, October 2024.
    pub const AL2_130_OCT: &str = "ami-0c130202410240000";
    /// A look-alike named like an AL2023 1.30 image, newer than all, from another account.
    pub const IMPOSTOR_130: &str = "ami-0f130202412010000";
}

/// The default seed: EKS-optimised images of two Kubernetes versions and two architectures,
/// one still pending, and one look-alike from another account that is newer than all.
pub fn eks_amis() -> Vec<SeedAmi> {
    use ids::*;
    const STD_130: &str = "amazon-eks-node-al2023-x86_64-standard-1.30";
    vec![
        SeedAmi::new(
            AL2023_130_AUG,
            &format!("{STD_130}-v20240807"),
            EKS_OWNER,
            "x86_64",
            "2024-08-07T19:41:09.000Z",
        ),
        SeedAmi::new(
            AL2023_130_SEP,
            &format!("{STD_130}-v20240917"),
            EKS_OWNER,
            "x86_64",
            "2024-09-17T21:05:33.000Z",
        ),
        SeedAmi::new(
            AL2023_130_OCT,
            &format!("{STD_130}-v20241024"),
            EKS_OWNER,
            "x86_64",
            "2024-10-24T18:12:47.000Z",
        ),
        SeedAmi::new(
            AL2023_130_NOV_PENDING,
            &format!("{STD_130}-v20241109"),
            EKS_OWNER,
            "x86_64",
            "2024-11-09T07:30:00.000Z",
        )
        .with_state("pending"),
        SeedAmi::new(
            AL2023_130_ARM_OCT,
            "amazon-eks-node-al2023-arm64-standard-1.30-v20241024",
            EKS_OWNER,
            "arm64",
            "2024-10-24T18:15:02.000Z",
        ),
        SeedAmi::new(
            AL2023_131_OCT,
            "amazon-eks-node-al2023-x86_64-standard-1.31-v20241024",
            EKS_OWNER,
            "x86_64",
            "2024-10-24T18:20:11.000Z",
        ),
        SeedAmi::new(
            AL2023_131_NOV,
            "amazon-eks-node-al2023-x86_64-standard-1.31-v20241115",
            EKS_OWNER,
            "x86_64",
            "2024-11-15T22:48:36.000Z",
        ),
        SeedAmi::new(
            AL2_130_OCT,
            "amazon-eks-node-1.30-v20241024",
            EKS_OWNER,
            "x86_64",
            "2024-10-24T17:58:40.000Z",
        ),
        SeedAmi::new(
            IMPOSTOR_130,
            &format!("{STD_130}-v20241201"),
            OTHER_OWNER,
            "x86_64",
            "2024-12-01T00:00:00.000Z",
        ),
    ]
}
