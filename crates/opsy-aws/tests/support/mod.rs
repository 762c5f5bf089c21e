//! Clients pointed at a test's own emulator.

#![allow(dead_code)] // each test binary uses a part of this module

use std::time::Duration;

use aws_sdk_ec2::config::Credentials;
use opsy_aws::{AwsClients, AwsOptions, CallCounter};
use opsy_testkit::{ACCESS_KEY_ID, Moto, SECRET_ACCESS_KEY};

pub const REGION: &str = "us-west-2";

/// Options for `moto`: static credentials, retries off.
pub fn options(moto: &Moto) -> AwsOptions {
    AwsOptions {
        endpoint_url: Some(moto.endpoint().to_owned()),
        credentials: Some(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        )),
        max_attempts: 1,
        initial_backoff: Duration::from_millis(10),
        ..AwsOptions::default()
    }
}

pub async fn clients(moto: &Moto) -> AwsClients {
    clients_with(&options(moto)).await
}

pub async fn clients_with(options: &AwsOptions) -> AwsClients {
    AwsClients::new(REGION, options, CallCounter::default()).await
}
