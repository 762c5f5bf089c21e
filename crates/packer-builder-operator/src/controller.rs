//! Controller wiring: watch PackerBuilders and the Jobs they own, reconcile with bounded
//! concurrency, requeue on errors by kind.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, ResourceExt,
    runtime::{
        Controller,
        controller::{Action, Config},
        reflector::ObjectRef,
        watcher,
    },
};
use opsy_api::{PackerBuilder, tags::labels};
use opsy_runtime::{backoff, operator::Operator};

use crate::{
    Error,
    reconcile::{Context, reconcile},
};

/// How long to wait before retrying after an error: growing with consecutive failures of the
/// same object; errors that need a person (IAM, a broken object) start at five minutes.
pub fn error_policy(pb: Arc<PackerBuilder>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.failures.record_failure(pb.as_ref());
    tracing::warn!(name = %pb.name_any(), category = error.category(), attempt, %error, "reconcile failed");
    match error {
        Error::Aws(e) if !e.is_transient() => {
            Action::requeue(backoff(attempt).max(Duration::from_secs(300)))
        }
        Error::MissingNamespace | Error::Finalizer(_) => Action::await_change(),
        _ => Action::requeue(backoff(attempt)),
    }
}

/// Runs the controller until a shutdown signal (reconciles in flight finish) or the loss of the
/// leader Lease (they are cancelled), over every
/// namespace or only the listed ones (one watch each); the process is ready once the first
/// cache sync is done.
pub async fn run(ctx: Arc<Context>, concurrency: u16, operator: &Operator, namespaces: &[String]) {
    // A lost Lease drops the controllers, and the reconciles in flight with them.
    operator
        .while_leading(opsy_runtime::cli::in_each_scope(namespaces, |scope| {
            run_in(ctx.clone(), concurrency, operator, scope)
        }))
        .await;
}

async fn run_in(ctx: Arc<Context>, concurrency: u16, operator: &Operator, scope: Option<String>) {
    let client = ctx.client.clone();
    let (builders, jobs): (Api<PackerBuilder>, Api<Job>) = match &scope {
        Some(namespace) => (
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client, namespace),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let job_watch = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::COMPONENT,
        labels::COMPONENT_PACKER_BUILD
    ));
    // The PackerBuilders of one architecture wake their parent (its status sums them up).
    let children = watcher::Config::default().labels(labels::PARENT);
    let (cache, changes) = operator.watch_spec_changes(builders.clone(), &[]);
    ctx.metrics
        .fleet()
        .add_source(opsy_runtime::fleet::from_cache(
            cache.clone(),
            crate::fleet::samples,
        ));
    Controller::for_stream(changes, cache)
        .owns(jobs, job_watch)
        .watches(builders, children, |child: PackerBuilder| {
            let parent = child.labels().get(labels::PARENT).cloned();
            let namespace = child.namespace();
            parent.map(|name| {
                let parent = ObjectRef::new(&name);
                match namespace {
                    Some(ns) => parent.within(&ns),
                    None => parent,
                }
            })
        })
        .with_config(Config::default().concurrency(concurrency))
        .graceful_shutdown_on(operator.shutdown())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}
