//! Test support for opsy-ami-operator.
//!
//! [`Moto`] runs the AWS emulator (moto, installed by `cargo xtask setup` into `.venv/`) for one
//! test, on its own loopback port, seeded with EKS-style AMIs from [`seed::eks_amis`].

pub mod control_plane;
pub mod crash;
pub mod fixtures;
pub mod iam;
pub mod invariants;
pub mod kube;
pub mod kubelet;
pub mod moto;
pub mod partition;
pub mod process;
pub mod seed;

pub use control_plane::{ControlPlane, ControlPlaneError, TestNamespace};
pub use fixtures::{Fixture, GroupNodes, NodeGroupSpec, UpdateRecord};
pub use moto::{
    ACCESS_KEY_ID, ACCOUNT_ID, CrashReport, Moto, MotoError, MotoOptions, Mutation,
    SECRET_ACCESS_KEY,
};
pub use seed::SeedAmi;
