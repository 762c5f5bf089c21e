//! Prometheus metrics of one controller: reconciles, errors by category, reconcile duration,
//! state transitions (builds and node-group updates by outcome among them) and every AWS call
//! by service, operation and outcome.

use std::time::Duration;

use opsy_aws::CallCounter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The metrics of one controller process, exposed at `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<CategoryLabels, Counter>,
    duration: Histogram,
    transitions: Family<ReasonLabels, Counter>,
    builds: Family<OutcomeLabels, Counter>,
    nodegroup_updates: Family<OutcomeLabels, Counter>,
    reclaimed: Counter,
    build_duration: Family<OutcomeLabels, Histogram>,
    fleet: std::sync::Arc<crate::fleet::Fleet>,
}

/// Event reasons that end a build, and the outcome each stands for.
const BUILD_OUTCOMES: &[(&str, &str)] = &[
    ("BuildSucceeded", "succeeded"),
    ("BuildFailed", "failed"),
    ("BuiltImageMissing", "failed"),
];

/// Event reasons that end a node-group update, and the outcome each stands for.
const NODEGROUP_OUTCOMES: &[(&str, &str)] = &[
    ("NodeGroupUpdated", "succeeded"),
    ("NodeGroupUpdateFailed", "failed"),
];

impl Metrics {
    /// Metrics named `opsy_*`, with the AWS calls read from `calls` at each scrape.
    pub fn new(calls: CallCounter) -> Self {
        let mut registry = Registry::with_prefix("opsy");
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles run, successful or not",
            reconciles.clone(),
        );
        let errors = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error category",
            errors.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let transitions = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "transitions",
            "State transitions, by the reason of the Event that announced them",
            transitions.clone(),
        );
        let builds = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "builds",
            "Packer builds that ended, by outcome",
            builds.clone(),
        );
        let nodegroup_updates = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "nodegroup_updates",
            "Node-group updates that ended, by outcome",
            nodegroup_updates.clone(),
        );
        let reclaimed = Counter::default();
        registry.register(
            "reclaimed_snapshot_bytes",
            "Bytes of EBS snapshots deleted with the AMIs retention deregistered",
            reclaimed.clone(),
        );
        let build_duration = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            // 1 minute to about 4 hours.
            Histogram::new(exponential_buckets(60.0, 2.0, 9))
        });
        registry.register(
            "build_duration_seconds",
            "Time from a build's start to its end, by outcome",
            build_duration.clone(),
        );
        registry.register_collector(Box::new(AwsCalls(calls)));
        let fleet = std::sync::Arc::new(crate::fleet::Fleet::default());
        registry.register_collector(Box::new(crate::fleet::FleetCollector(fleet.clone())));
        Self {
            registry,
            reconciles,
            errors,
            duration,
            transitions,
            builds,
            nodegroup_updates,
            reclaimed,
            build_duration,
            fleet,
        }
    }

    /// The fleet gauges' sources (see [`crate::fleet`]).
    pub fn fleet(&self) -> &crate::fleet::Fleet {
        &self.fleet
    }

    /// Records a build that ended after `took`, `succeeded` or `failed`.
    pub fn build_ended(&self, succeeded: bool, took: Duration) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.build_duration
            .get_or_create(&OutcomeLabels { outcome })
            .observe(took.as_secs_f64());
    }

    /// Records snapshot bytes freed by deregistering an AMI.
    pub fn reclaimed(&self, bytes: u64) {
        self.reclaimed.inc_by(bytes);
    }

    /// Records one reconcile: how long it took and, when it failed, the error's category.
    pub fn reconciled(&self, took: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(category) = error {
            self.errors
                .get_or_create(&CategoryLabels { category })
                .inc();
        }
    }

    /// Records a state transition announced by an Event with `reason`.
    pub fn transition(&self, reason: &str) {
        self.transitions
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        for (table, family) in [
            (BUILD_OUTCOMES, &self.builds),
            (NODEGROUP_OUTCOMES, &self.nodegroup_updates),
        ] {
            if let Some((_, outcome)) = table.iter().find(|(r, _)| *r == reason) {
                family.get_or_create(&OutcomeLabels { outcome }).inc();
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoding error would leave a partial page.
        if let Err(e) = encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        text
    }
}

/// Reads the process's AWS call counters at scrape time.
#[derive(Debug)]
struct AwsCalls(CallCounter);

impl Collector for AwsCalls {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        let mut family = encoder.encode_descriptor(
            "aws_calls",
            "AWS API calls, by service, operation and outcome (ok or an error category)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for ((service, operation, outcome), count) in snapshot {
            let labels = [
                ("service", service),
                ("operation", operation),
                ("outcome", outcome),
            ];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_errors_transitions_and_aws_calls_are_exposed() {
        let calls = CallCounter::default();
        let metrics = Metrics::new(calls.clone());
        metrics.reconciled(Duration::from_millis(20), None);
        metrics.reconciled(Duration::from_millis(30), Some("aws_throttled"));
        metrics.transition("BuildStarted");
        metrics.transition("BuildSucceeded");
        metrics.transition("BuildFailed");
        metrics.transition("NodeGroupUpdated");
        calls.record("ec2", "DescribeImages", "ok");
        calls.record("ec2", "DescribeImages", "ok");
        calls.record("eks", "DescribeUpdate", "throttled");

        let text = metrics.render();
        for line in [
            "opsy_reconciles_total 2",
            "opsy_reconcile_errors_total{category=\"aws_throttled\"} 1",
            "opsy_reconcile_duration_seconds_count 2",
            "opsy_transitions_total{reason=\"BuildStarted\"} 1",
            "opsy_builds_total{outcome=\"succeeded\"} 1",
            "opsy_builds_total{outcome=\"failed\"} 1",
            "opsy_nodegroup_updates_total{outcome=\"succeeded\"} 1",
            "opsy_aws_calls_total{service=\"ec2\",operation=\"DescribeImages\",outcome=\"ok\"} 2",
            "opsy_aws_calls_total{service=\"eks\",operation=\"DescribeUpdate\",outcome=\"throttled\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert!(!text.contains("opsy_nodegroup_updates_total{outcome=\"failed\"}"));
    }

    #[test]
    fn fleet_gauges_are_read_from_their_sources_at_each_scrape() {
        use std::sync::{Arc, Mutex};

        use crate::fleet;

        let metrics = Metrics::new(CallCounter::default());
        metrics.build_ended(true, Duration::from_secs(600));
        let objects = Arc::new(Mutex::new(vec![(
            "images".to_owned(),
            "al2023".to_owned(),
            vec![
                (
                    fleet::PB_ACTIVE_EXPIRY,
                    vec![("cluster", "prod".to_owned())],
                    1_767_225_600.0,
                ),
                (
                    fleet::PB_FAILED_BUILDS,
                    vec![("cluster", "prod".to_owned())],
                    2.0,
                ),
            ],
        )]));
        let source = objects.clone();
        metrics.fleet().add_source(Box::new(move || {
            source.lock().map(|o| o.clone()).unwrap_or_default()
        }));
        let text = metrics.render();
        for line in [
            "# TYPE opsy_packerbuilder_active_ami_expiry_timestamp_seconds gauge",
            "opsy_packerbuilder_active_ami_expiry_timestamp_seconds{namespace=\"images\",name=\"al2023\",cluster=\"prod\"} 1767225600.0",
            "opsy_packerbuilder_failed_builds{namespace=\"images\",name=\"al2023\",cluster=\"prod\"} 2.0",
            "opsy_build_duration_seconds_count{outcome=\"succeeded\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        // The object is gone from its source: so are its series.
        objects.lock().unwrap().clear();
        assert!(!metrics.render().contains("al2023"));
    }
}
