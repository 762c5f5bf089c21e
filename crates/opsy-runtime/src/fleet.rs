//! Fleet gauges: what the custom resources' statuses say about the AMIs and node groups they
//! manage, as Prometheus gauges labelled by namespace and name (and cluster, node group where
//! they apply; never by AMI id alone, so the series stay bounded by the objects). Each
//! reconcile replaces its object's samples; a deleted object's are dropped. Points in time are
//! exported as Unix timestamps (`…_timestamp_seconds`), so ages and time left are computed at
//! query time (`time() - …`) and never go stale between reconciles.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

/// A fleet gauge: its name (without the `opsy_` prefix) and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gauge {
    /// Name, e.g. `packerbuilder_active_ami_expiry_timestamp_seconds`.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
}

macro_rules! gauges {
    ($($id:ident = $name:literal, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $id: Gauge = Gauge { name: $name, help: $help };
        )*
        /// Every fleet gauge.
        pub const ALL: &[Gauge] = &[$($id),*];
    };
}

gauges! {
    PB_ACTIVE_CREATED = "packerbuilder_active_ami_created_timestamp_seconds",
        "When the PackerBuilder's active AMI was built (Unix time)";
    PB_ACTIVE_EXPIRY = "packerbuilder_active_ami_expiry_timestamp_seconds",
        "When the PackerBuilder's active AMI expires (Unix time)";
    PB_BUILD_RUNNING = "packerbuilder_build_running",
        "1 while a build Job of the PackerBuilder runs";
    PB_FAILED_BUILDS = "packerbuilder_failed_builds",
        "Consecutive failed builds of the PackerBuilder (status.failedJobCount)";
    PB_LAST_BUILD_SUCCEEDED = "packerbuilder_last_build_succeeded",
        "1 when the PackerBuilder's last build succeeded, 0 when it failed";
    PB_READY = "packerbuilder_ready",
        "1 when the PackerBuilder's Ready condition is True";
    AMR_TARGET_CREATED = "amirefresher_target_ami_created_timestamp_seconds",
        "When the AMIRefresher's target AMI was built (Unix time)";
    AMR_TARGET_EXPIRY = "amirefresher_target_ami_expiry_timestamp_seconds",
        "When the AMIRefresher's target AMI expires (Unix time)";
    AMR_NODES_ON_TARGET = "amirefresher_nodes_on_target",
        "Nodes of the AMIRefresher's managed groups on the target AMI";
    AMR_NODES = "amirefresher_nodes",
        "Nodes the AMIRefresher's managed groups should have (desired sizes)";
    AMR_READY = "amirefresher_ready",
        "1 when the AMIRefresher's Ready condition is True";
    AMR_HALTED = "amirefresher_rollout_halted",
        "1 when the AMIRefresher's rollout is halted (a group failed)";
    AMR_HELD_BACK = "amirefresher_held_back_amis",
        "Newer AMIs a promotion gate holds back";
    GROUP_PHASE = "nodegroup_phase",
        "1 for the phase a node group is in (label phase)";
    GROUP_NODES_ON_TARGET = "nodegroup_nodes_on_target",
        "Nodes of the group on the target AMI (all when it is done, Ready ones while verified)";
    GROUP_NODES = "nodegroup_nodes",
        "Nodes the group should have (its desired size)";
    GROUP_UPDATE_STARTED = "nodegroup_update_started_timestamp_seconds",
        "When the group's current or last update started (Unix time)";
    GROUP_AMI_CREATED = "nodegroup_ami_created_timestamp_seconds",
        "When the AMI the group runs was built (Unix time)";
    GROUP_AMI_QUARANTINED = "nodegroup_ami_quarantined",
        "1 when the AMI the group runs is tagged status=quarantined";
    GROUP_GATE_WAIT_STARTED = "nodegroup_gate_wait_started_timestamp_seconds",
        "When the group began waiting on a gate (label gate: health, approval, maintenance-window; Unix time)";
}

/// A point in time as a gauge value: Unix seconds.
pub fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_second() as f64
}

/// 1 when `conditions` hold a `Ready` condition that is `True`, else 0.
pub fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> f64 {
    let ready = conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    f64::from(u8::from(ready))
}

/// One sample: a gauge, its labels beyond namespace and name, and its value.
pub type Sample = (Gauge, Vec<(&'static str, String)>, f64);

/// One object's samples: its namespace, name and samples.
pub type Object = (String, String, Vec<Sample>);

/// A source of objects, read at each scrape (a controller's cache of its custom resources).
pub type Source = Box<dyn Fn() -> Vec<Object> + Send + Sync>;

/// The sources of the fleet gauges. Reading the controllers' caches at scrape time keeps the
/// gauges what the API server holds, and a deleted object's series go with it.
#[derive(Default)]
pub struct Fleet {
    sources: Mutex<Vec<Source>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

impl Fleet {
    /// Adds a source (one per watched namespace, or one for all).
    pub fn add_source(&self, source: Source) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(source);
        }
    }

    /// Every object's samples now.
    pub fn objects(&self) -> Vec<Object> {
        self.sources
            .lock()
            .map(|sources| sources.iter().flat_map(|s| s()).collect())
            .unwrap_or_default()
    }
}

/// The source of a controller's cache of custom resources: each object's namespace, name and
/// `samples`.
pub fn from_cache<K>(
    cache: kube::runtime::reflector::Store<K>,
    samples: fn(&K) -> Vec<Sample>,
) -> Source
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    use kube::ResourceExt;
    Box::new(move || {
        cache
            .state()
            .iter()
            .map(|object| {
                (
                    object.namespace().unwrap_or_default(),
                    object.name_any(),
                    samples(object),
                )
            })
            .collect()
    })
}

/// One series: its labels and value.
type Series<'a> = (Vec<(&'a str, &'a str)>, f64);

/// Encodes the fleet at scrape time.
#[derive(Debug)]
pub(crate) struct FleetCollector(pub(crate) std::sync::Arc<Fleet>);

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let objects = self.0.objects();
        let mut by_gauge: BTreeMap<Gauge, Vec<Series<'_>>> = BTreeMap::new();
        for (namespace, name, samples) in &objects {
            for (gauge, labels, value) in samples {
                let mut all = vec![("namespace", namespace.as_str()), ("name", name.as_str())];
                all.extend(labels.iter().map(|(k, v)| (*k, v.as_str())));
                by_gauge.entry(*gauge).or_default().push((all, *value));
            }
        }
        for (gauge, series) in by_gauge {
            let mut family =
                encoder.encode_descriptor(gauge.name, gauge.help, None, MetricType::Gauge)?;
            for (labels, value) in series {
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
