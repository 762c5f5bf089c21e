//! One SDK configuration per region: the default credential chain (environment, IRSA, EKS Pod
//! Identity, instance profile), rustls with ring as the only TLS stack, timeouts, retries
//! suited to EC2 throttling, and an endpoint override for emulators.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_ec2::config::{Credentials, SharedHttpClient};
use aws_smithy_http_client::{Builder, tls};

/// How clients reach AWS.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    /// Send every request here instead of AWS (an emulator such as moto).
    pub endpoint_url: Option<String>,
    /// Static credentials instead of the default chain (emulators and tests).
    pub credentials: Option<Credentials>,
    /// Attempts per call including the first; 1 turns retries off.
    pub max_attempts: u32,
    /// Longest a single call may take, retries included.
    pub operation_timeout: Duration,
    /// Longest a connection may take to establish.
    pub connect_timeout: Duration,
    /// First retry delay; later ones grow exponentially up to 20 seconds.
    pub initial_backoff: Duration,
    /// How long identical `DescribeImages` results are shared between callers.
    pub image_cache_ttl: Duration,
    /// Results per page of list calls; `None` uses the largest page each API allows.
    pub page_size: Option<i32>,
}

impl Default for AwsOptions {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            credentials: None,
            // Several attempts with growing backoff ride out EC2's request-rate throttling.
            max_attempts: 5,
            operation_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(500),
            image_cache_ttl: Duration::from_secs(30),
            page_size: None,
        }
    }
}

impl AwsOptions {
    /// Options for an AWS emulator at `endpoint` (moto): static credentials, no retries, and
    /// results shared for a millisecond only, so a test sees every change at once.
    pub fn emulator(endpoint: &str) -> Self {
        Self {
            endpoint_url: Some(endpoint.to_owned()),
            credentials: Some(Credentials::new(
                "AKIAOPSYEMULATOR0000",
                "opsy-emulator",
                None,
                None,
                "emulator",
            )),
            max_attempts: 1,
            initial_backoff: Duration::from_millis(10),
            image_cache_ttl: Duration::from_millis(1),
            ..Self::default()
        }
    }
}

/// The HTTPS client shared by every AWS client: rustls with ring, the same TLS stack kube uses.
pub fn https_client() -> SharedHttpClient {
    Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Loads the SDK configuration for `region`.
pub async fn load_sdk_config(region: &str, options: &AwsOptions) -> SdkConfig {
    let retry = if options.max_attempts <= 1 {
        RetryConfig::disabled()
    } else {
        // Standard mode: exponential backoff with full jitter, which spreads the retries of
        // many reconcilers hitting the same throttled account. (Adaptive mode's client-side
        // rate limiter stalls every later call of the process for seconds after one throttle.)
        RetryConfig::standard()
            .with_max_attempts(options.max_attempts)
            .with_initial_backoff(options.initial_backoff)
            .with_max_backoff(Duration::from_secs(20))
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .http_client(https_client())
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(options.operation_timeout)
                .connect_timeout(options.connect_timeout)
                .build(),
        );
    if let Some(endpoint) = &options.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(credentials) = &options.credentials {
        loader = loader.credentials_provider(credentials.clone());
    }
    loader.load().await
}
