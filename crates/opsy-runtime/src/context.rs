//! What every reconcile of a controller shares, built once per process.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};
use opsy_aws::ClientSet;

use crate::{Failures, metrics::Metrics};

/// Source of the current time (tests move it).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// AWS clients per region.
    pub aws: ClientSet,
    /// Event recorder.
    pub recorder: Recorder,
    /// The current time.
    pub clock: Clock,
    /// How often work in flight (a running build, node-group updates) is checked besides
    /// watch events.
    pub poll_interval: Duration,
    /// Slack Web API base URL.
    pub slack_api: String,
    /// Consecutive reconcile failures per object, for the retry backoff.
    pub failures: Failures,
    /// Reconciles, errors, durations and transitions, served at `/metrics`.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The context of the controller `manager` (the name its Events are reported under; the
    /// pod name, when set, tells replicas apart).
    pub fn new(
        manager: &str,
        client: Client,
        aws: ClientSet,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: manager.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            aws,
            clock,
            poll_interval: Duration::from_secs(30),
            slack_api: opsy_notify::slack::SLACK_API.to_owned(),
            failures: Failures::default(),
            metrics,
        })
    }
}
