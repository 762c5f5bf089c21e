//! Controller wiring: watch AMIRefreshers, reconcile with bounded concurrency, requeue on
//! errors by kind.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    runtime::{
        Controller,
        controller::{Action, Config},
    },
};
use opsy_api::{AMIRefresher, ami_refresher::APPROVE_ANNOTATION};
use opsy_runtime::{backoff, operator::Operator};

use crate::{
    Error,
    reconcile::{Context, reconcile},
};

/// How long to wait before retrying after an error: growing with consecutive failures of the
/// same object; errors that need a person (IAM, a missing cluster) start at five minutes.
pub fn error_policy(amr: Arc<AMIRefresher>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.failures.record_failure(amr.as_ref());
    tracing::warn!(name = %amr.name_any(), category = error.category(), attempt, %error, "reconcile failed");
    match error {
        Error::Aws(e) if !e.is_transient() => {
            Action::requeue(backoff(attempt).max(Duration::from_secs(300)))
        }
        Error::MissingNamespace => Action::await_change(),
        _ => Action::requeue(backoff(attempt)),
    }
}

/// Runs the controller until a shutdown signal (reconciles in flight finish) or the loss of the
/// leader Lease (they are cancelled); the process is
/// ready once the first cache sync is done.
pub async fn run(ctx: Arc<Context>, concurrency: u16, operator: &Operator, namespaces: &[String]) {
    // A lost Lease drops the controllers, and the reconciles in flight with them.
    operator
        .while_leading(opsy_runtime::cli::in_each_scope(namespaces, |scope| {
            run_in(ctx.clone(), concurrency, operator, scope)
        }))
        .await;
}

async fn run_in(ctx: Arc<Context>, concurrency: u16, operator: &Operator, scope: Option<String>) {
    let refreshers: Api<AMIRefresher> = match &scope {
        Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
        None => Api::all(ctx.client.clone()),
    };
    let (cache, changes) = operator.watch_spec_changes(refreshers, &[APPROVE_ANNOTATION]);
    ctx.metrics
        .fleet()
        .add_source(opsy_runtime::fleet::from_cache(
            cache.clone(),
            crate::fleet::samples,
        ));
    Controller::for_stream(changes, cache)
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
