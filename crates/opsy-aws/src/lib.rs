//! The AWS side of opsy-ami-operator.
//!
//! - [`config`]: one SDK configuration per region (credentials chain, TLS, retries, endpoint).
//! - [`clients`]: the EC2, EKS and Auto Scaling clients of a region, built once and shared.
//! - [`images`]: `DescribeImages` with filters and owners, every page, cached single-flight.
//! - [`managed`]: the managed-AMI tag contract, eligibility, adoption, deprecation, targets.
//! - [`launch_templates`], [`eks`], [`autoscaling`]: what node-group rollouts need.
//! - [`calls`]: every call counted by service, operation and outcome.

pub mod alarms;
pub mod autoscaling;
pub mod calls;
pub mod clients;
pub mod config;
pub mod distribution;
pub mod eks;
pub mod error;
pub mod filters;
pub mod images;
pub mod launch_templates;
pub mod managed;
pub mod parameters;
mod usage;

pub use calls::CallCounter;
pub use clients::{Assume, AwsClients, ClientSet};
pub use config::{AwsOptions, load_sdk_config};
pub use error::AwsError;
pub use images::{Image, ImageQuery};
pub use usage::{Deregistered, SnapshotFacts};
