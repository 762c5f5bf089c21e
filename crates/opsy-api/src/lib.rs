//! Custom resource types of opsy-ami-operator.
//!
//! Two namespaced kinds in group `ami.refresh.ops`, version `v1alpha1`:
//! - [`PackerBuilder`] (`pb`): builds an AMI with Packer whenever no valid derived AMI exists.
//! - [`AMIRefresher`] (`amr`): rolls the newest active, unexpired AMI out to node groups.
//!
//! And two cluster-scoped kinds, owned by the platform team:
//! - [`BuildClass`]: what the builds of some namespaces may clone, run, run as and mount.
//! - [`RefresherClass`]: which clusters and owner-access roles the refreshers of some
//!   namespaces may use.
//!
//! Field names follow the project this one replaces, so its manifests apply unchanged. The CRD
//! YAML under `deploy/crds/` is generated from these types (`cargo xtask crds`).

// Each `printcolumn(name = …, type_ = …)` of kube's derive repeats the same keys, which this lint
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod ami_refresher;
pub mod build_class;
pub mod classes;
pub mod common;
pub mod conditions;
pub mod crd;
pub mod duration;
pub mod kubernetes;
pub mod lanes;
pub mod packer_builder;
pub mod refresher_class;
pub mod tags;
pub mod windows;

pub use ami_refresher::{AMIRefresher, AMIRefresherSpec, AMIRefresherStatus};
pub use build_class::{BuildClass, BuildClassSpec};
pub use common::{
    AmiFilter, ImageRef, Notifier, SlackNotifier, SnsNotifier, WebhookFormat, WebhookNotifier,
};
pub use duration::Duration;
pub use packer_builder::{PackerBuilder, PackerBuilderSpec, PackerBuilderStatus};
pub use refresher_class::{RefresherClass, RefresherClassSpec};

/// API group of both kinds.
pub const GROUP: &str = "ami.refresh.ops";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";
