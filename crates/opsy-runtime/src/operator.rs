//! Starting and stopping an operator process: the Kubernetes client, the admin endpoints,
//! waiting for the CRD, leader election, readiness and graceful shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::{Stream, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Resource,
    runtime::{
        PredicateConfig, WatchStreamExt,
        reflector::{self, Store, reflector},
        watcher::{self, watcher},
    },
};
use opsy_aws::ClientSet;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::{
    admin::{self, Health},
    cli::{self, RunArgs},
    context::{Clock, Context},
    leader::{Leadership, LeaseTiming},
    metrics::Metrics,
};

/// A running operator process, between start and shutdown.
pub struct Operator {
    /// The Kubernetes client.
    pub client: Client,
    /// The AWS clients (per region, built on first use); their calls are counted in the
    /// metrics.
    pub aws: ClientSet,
    /// The process's metrics, served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Readiness, served at `/readyz`.
    pub health: Health,
    leadership: Option<Leadership>,
    poll_interval: Duration,
    webhook_addresses: opsy_notify::AddressPolicy,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("health", &self.health)
            .field("leadership", &self.leadership)
            .finish_non_exhaustive()
    }
}

impl Operator {
    /// An operator on an already connected `client`, without admin endpoints or leader
    /// election (for tests, or a host process that provides both).
    pub fn new(client: Client, aws: ClientSet) -> Self {
        Self {
            client,
            metrics: Arc::new(Metrics::new(aws.calls().clone())),
            aws,
            health: Health::default(),
            leadership: None,
            poll_interval: Duration::from_secs(30),
            webhook_addresses: opsy_notify::AddressPolicy::default(),
        }
    }

    /// Starts logging, connects to Kubernetes, serves the admin endpoints, waits until the CRD
    /// `crd` is established and, unless leader election is off, until this replica holds the
    /// Lease `name`.
    pub async fn start(args: &RunArgs, name: &str, crd: &str) -> anyhow::Result<Self> {
        cli::init_logging(args.log_format);
        // Both of rustls' providers are linked (the AWS SDK brings aws-lc); the Kubernetes client
        // uses the process default, so it is chosen here, as the AWS clients' ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_default()
            .await
            .context("connecting to Kubernetes")?;
        let aws = cli::aws(args.aws_endpoint_url.clone());
        let metrics = Arc::new(Metrics::new(aws.calls().clone()));
        let health = Health::default();
        let listener = admin::bind(args.metrics_addr)
            .await
            .with_context(|| format!("listening on {} (--metrics-addr)", args.metrics_addr))?;
        tracing::info!(addr = %args.metrics_addr, "serving /metrics, /livez and /readyz");
        tokio::spawn({
            let (metrics, health) = (metrics.clone(), health.clone());
            async move {
                if let Err(e) =
                    admin::serve(listener, metrics, health, std::future::pending()).await
                {
                    tracing::error!(error = %e, "the admin endpoints stopped");
                }
            }
        });
        wait_for_crd(&client, crd, Duration::from_secs(5)).await?;
        let leadership = if args.leader_elect {
            let namespace = args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            // A standby replica is ready: it serves metrics and takes over when the leader goes.
            health.set_ready(true);
            let leadership = Leadership::acquire(
                client.clone(),
                &namespace,
                name,
                &identity(),
                LeaseTiming::default(),
            )
            .await?;
            health.set_ready(false);
            // Every mutating AWS call checks the Lease first: a reconcile in flight when the
            // Lease is lost changes nothing more.
            aws.calls().set_fence(leadership.fence());
            Some(leadership)
        } else {
            None
        };
        Ok(Self {
            client,
            aws,
            metrics,
            health,
            leadership,
            poll_interval: args.poll_interval,
            webhook_addresses: opsy_notify::AddressPolicy {
                private: args.allow_private_webhooks,
                loopback: false,
            },
        })
    }

    /// The reconcile context of controller `manager` on this operator's clients and metrics.
    pub fn context(&self, manager: &str, clock: Clock) -> Arc<Context> {
        let mut context = Context::new(
            manager,
            self.client.clone(),
            self.aws.clone(),
            clock,
            self.metrics.clone(),
        );
        if let Some(context) = Arc::get_mut(&mut context) {
            context.poll_interval = self.poll_interval;
            context.webhook_addresses = self.webhook_addresses;
        }
        context
    }

    /// Watches every object of `api` into a store, and yields an object when it is first seen
    /// and whenever its `metadata.generation` changes (its spec, or its deletion) — not when
    /// only its status or metadata changes, so that an operator's own status write does not
    /// come back as another reconcile. The process turns ready once the first complete list
    /// is in. Timers (requeues) and owned objects trigger reconciles besides these. A change
    /// of one of the `annotations` (e.g. an approval) counts too.
    pub fn watch_spec_changes<K>(
        &self,
        api: Api<K>,
        annotations: &'static [&'static str],
    ) -> (
        Store<K>,
        impl Stream<Item = watcher::Result<K>> + Send + use<K>,
    )
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (store, writer) = reflector::store();
        let events =
            self.ready_after_first_list(watcher(api, watcher::Config::default().any_semantic()));
        let changes = reflector(writer, events)
            .applied_objects()
            .predicate_filter(
                move |object: &K| spec_or_annotations(object, annotations),
                PredicateConfig::default(),
            );
        (store, changes)
    }

    /// Passes a watcher's events through, marking the process ready once the first complete
    /// list is in (the controller's cache has synced).
    fn ready_after_first_list<K, S>(&self, events: S) -> impl Stream<Item = S::Item> + use<K, S>
    where
        S: Stream<Item = watcher::Result<watcher::Event<K>>>,
    {
        let health = self.health.clone();
        events.inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) && !health.is_ready() {
                tracing::info!("first cache sync done; ready");
                health.set_ready(true);
            }
        })
    }

    /// Resolves on SIGTERM or Ctrl-C: the controller then finishes the reconciles in flight
    /// and stops.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let (done, stopped) = oneshot::channel();
        tokio::spawn(async move {
            signal().await;
            let _ = done.send(());
        });
        async move {
            let _ = stopped.await;
        }
    }

    /// Runs the controller `work` until it ends (after [`Self::shutdown`]) or, with leader
    /// election, until this replica loses the Lease: then `work` is dropped at once, and the
    /// reconciles in flight with it (see [`Leadership::while_leading`]).
    pub async fn while_leading(&self, work: impl Future<Output = ()>) {
        match &self.leadership {
            Some(leadership) => {
                let _ = leadership.while_leading(work).await;
            }
            None => work.await,
        }
    }

    /// After the controller stopped: gives the Lease up, or fails when it was lost (so the
    /// process exits non-zero and is restarted as a standby).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.health.set_ready(false);
        if let Some(leadership) = self.leadership {
            if !leadership.is_leader() {
                anyhow::bail!(
                    "lost the leader lease; exiting so that this replica restarts as a standby"
                );
            }
            leadership.release().await;
        }
        Ok(())
    }
}

/// This replica's name in the Lease: the pod name, else the host name, with the process id.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "opsy".to_owned());
    format!("{host}_{}", std::process::id())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("interrupted: shutting down");
}

/// Waits until the CustomResourceDefinition `name` exists and is established, checking every
/// `interval`. Fails at once when the operator may not read it (RBAC).
pub async fn wait_for_crd(client: &Client, name: &str, interval: Duration) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut told = false;
    loop {
        match api.get_opt(name).await {
            Ok(Some(crd)) if established(&crd) => {
                tracing::info!(crd = name, "CRD is established");
                return Ok(());
            }
            Ok(found) => {
                if !told {
                    let state = if found.is_some() {
                        "not yet established"
                    } else {
                        "not installed"
                    };
                    tracing::info!(
                        crd = name,
                        "waiting: the CRD is {state} (install it with the Helm chart or `kubectl apply -f deploy/crds/`)"
                    );
                    told = true;
                }
            }
            Err(kube::Error::Api(e)) if e.code == 403 => anyhow::bail!(
                "not allowed to read CustomResourceDefinition {name}: grant `get` on \
                 customresourcedefinitions (the Helm chart's ClusterRole does)"
            ),
            Err(e) => tracing::warn!(crd = name, error = %e, "could not read the CRD; retrying"),
        }
        tokio::time::sleep(interval).await;
    }
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// What is worth a reconcile: a new generation (a spec change) or a new value of one of
/// `annotations`; status writes and other metadata are not.
fn spec_or_annotations<K: Resource>(object: &K, annotations: &[&str]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    object.meta().generation.hash(&mut hasher);
    let values = object.meta().annotations.as_ref();
    for key in annotations {
        values.and_then(|a| a.get(*key)).hash(&mut hasher);
    }
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::spec_or_annotations;

    fn object(generation: i64, annotations: &[(&str, &str)]) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.generation = Some(generation);
        object.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        object
    }

    #[test]
    fn a_reconcile_follows_the_generation_and_the_named_annotations_only() {
        const KEY: &[&str] = &["example.com/approve"];
        let base = spec_or_annotations(&object(1, &[]), KEY);
        assert_eq!(
            base,
            spec_or_annotations(&object(1, &[("other", "x")]), KEY),
            "other metadata is not worth a reconcile"
        );
        assert_ne!(base, spec_or_annotations(&object(2, &[]), KEY));
        assert_ne!(
            base,
            spec_or_annotations(&object(1, &[("example.com/approve", "ami-1")]), KEY)
        );
        assert_eq!(
            spec_or_annotations(&object(1, &[]), &[]),
            spec_or_annotations(&object(1, &[("example.com/approve", "ami-1")]), &[]),
            "not when the annotation is not named"
        );
    }
}
