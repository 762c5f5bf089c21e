//! Clients pointed at a test's own emulator.

#![allow(dead_code)] // each test binary uses a part of this module

use opsy_aws::{AwsClients, AwsOptions, CallCounter};
use opsy_testkit::Moto;

pub const REGION: &str = "us-west-2";

/// Options for `moto`: static credentials, retries off, a cache as long as the test's own
/// calls need (30s, so repeated identical lookups are shared as in production).
pub fn options(moto: &Moto) -> AwsOptions {
    AwsOptions {
        image_cache_ttl: std::time::Duration::from_secs(30),
        ..AwsOptions::emulator(moto.endpoint())
    }
}

pub async fn clients(moto: &Moto) -> AwsClients {
    clients_with(&options(moto)).await
}

pub async fn clients_with(options: &AwsOptions) -> AwsClients {
    AwsClients::new(REGION, options, CallCounter::default()).await
}
