//! The AWS side of opsy-ami-operator.
//!
//! So far: building the SDK configuration every client shares ([`config`]). AMI discovery, the
//! tag contract, launch templates, node groups and instance refresh build on it.

pub mod config;

pub use config::{AwsOptions, load_sdk_config};
