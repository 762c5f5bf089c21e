//! Sends what reconciles queued in `status.outbox`, outside the reconcile.
//!
//! A reconcile decides its notifications, queues them in status ([`opsy_notify::outbox`]) and
//! writes that status; then it hands the written object to [`Outbox::dispatch`] and returns. A
//! task of the outbox sends each due entry to the destinations that do not have it yet (45
//! seconds at most per entry), and writes the outcome back to status with a precondition on the
//! object's version: delivered entries leave the outbox, failed ones stay with their error and
//! the time of the next attempt (a reconcile hands them over again then), and an entry that
//! failed [`opsy_notify::outbox::MAX_ATTEMPTS`] times is given up with a Warning event. So a
//! slow or failing destination never holds up a reconcile, several transitions of one reconcile
//! are all sent, and a crash or a lost Lease between deciding and delivering leaves the entry in
//! status for the next leader: at least once, with the same `Idempotency-Key` every time.

use std::{
    collections::HashSet,
    fmt::Debug,
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::NamespaceResourceScope,
    runtime::events::{EventType, Recorder},
};
use opsy_api::common::OutgoingNotification;
use opsy_notify::{
    ResourceRef, Setup,
    outbox::{self, Attempt},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::context::{Clock, Context};

/// The field manager of the outbox's status writes.
pub const MANAGER: &str = "opsy-notifications";

/// Rounds one task makes over an object: entries queued while it was sending are picked up.
const ROUNDS: usize = 5;

/// A custom resource that sends notifications.
pub trait Notifying:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Where its notifications go.
    fn notifier(&self) -> Option<&opsy_api::Notifier>;
    /// Its region (SNS topics without one in their ARN are there).
    fn region(&self) -> &str;
    /// The EKS cluster its notifications name.
    fn cluster(&self) -> &str;
    /// Its queued notifications.
    fn outbox(&self) -> &[OutgoingNotification];
}

/// Both kinds keep their notifier, region and cluster in the same spec fields.
macro_rules! notifying {
    ($($kind:ty),*) => {$(
        impl Notifying for $kind {
            fn notifier(&self) -> Option<&opsy_api::Notifier> {
                self.spec.notifier.as_ref()
            }
            fn region(&self) -> &str {
                &self.spec.region
            }
            fn cluster(&self) -> &str {
                &self.spec.cluster_name
            }
            fn outbox(&self) -> &[OutgoingNotification] {
                self.status.as_ref().map_or(&[], |s| &s.outbox)
            }
        }
    )*};
}

notifying!(opsy_api::PackerBuilder, opsy_api::AMIRefresher);

/// The sending tasks of one operator: at most one per object at a time.
#[derive(Debug, Default)]
pub struct Outbox {
    busy: Mutex<HashSet<String>>,
    idle: tokio::sync::Notify,
}

impl Outbox {
    /// Sends the due entries of `object` (as just written) in a task of its own, unless a task
    /// is already sending for it (that task looks again before it ends). Returns at once.
    pub fn dispatch<K: Notifying>(self: &Arc<Self>, ctx: &Context, object: &K) {
        let now = (ctx.clock)();
        if !object.outbox().iter().any(|o| outbox::is_due(o, now)) {
            return;
        }
        let id = format!(
            "{}/{}/{}",
            K::kind(&()),
            object.namespace().unwrap_or_default(),
            object.name_any()
        );
        if !self.lock().insert(id.clone()) {
            return;
        }
        let sender = Sender {
            setup: ctx.notify_setup(),
            recorder: ctx.recorder.clone(),
            clock: ctx.clock.clone(),
        };
        let this = self.clone();
        let object = object.clone();
        tokio::spawn(async move {
            sender.run(object).await;
            this.lock().remove(&id);
            this.idle.notify_waiters();
        });
    }

    /// Waits until no task is sending.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a sending task needs.
struct Sender {
    setup: Setup,
    recorder: Recorder,
    clock: Clock,
}

impl Sender {
    async fn run<K: Notifying>(&self, mut object: K) {
        let api: Api<K> = Api::namespaced(
            self.setup.client.clone(),
            &object.namespace().unwrap_or_default(),
        );
        let mut tried = HashSet::new();
        for _ in 0..ROUNDS {
            let now = (self.clock)();
            let due: Vec<OutgoingNotification> = object
                .outbox()
                .iter()
                .filter(|o| outbox::is_due(o, now) && !tried.contains(&o.key))
                .cloned()
                .collect();
            if due.is_empty() {
                return;
            }
            tried.extend(due.iter().map(|o| o.key.clone()));
            let Some(results) = self.attempt(&object, due, now).await else {
                return;
            };
            if let Err(e) = record(&api, &object, &results).await {
                tracing::warn!(error = %e, name = %object.name_any(), "could not record notifications as sent; they will be sent again");
                return;
            }
            match api.get_opt(&object.name_any()).await {
                Ok(Some(fresh)) => object = fresh,
                _ => return,
            }
        }
    }

    /// Sends `due`; `None` when this replica may no longer act (it lost its Lease).
    async fn attempt<K: Notifying>(
        &self,
        object: &K,
        due: Vec<OutgoingNotification>,
        now: Timestamp,
    ) -> Option<Vec<(String, Attempt)>> {
        let namespace = object.namespace().unwrap_or_default();
        let destinations = match object.notifier() {
            Some(spec) => {
                self.setup
                    .destinations(&namespace, object.region(), spec)
                    .await
            }
            None => Vec::new(),
        };
        let resource = ResourceRef {
            kind: K::kind(&()).into_owned(),
            namespace,
            name: object.name_any(),
        };
        let uid = object.uid().unwrap_or_default();
        let mut results = Vec::new();
        for entry in due {
            // A replica that lost its leader Lease sends nothing more and records nothing as
            // sent: the new leader sends it.
            if !self.setup.aws.calls().allows_changes() {
                tracing::warn!(
                    key = entry.key,
                    "notification not sent: this replica is no longer the leader"
                );
                return None;
            }
            let Some(message) = outbox::message(
                &entry,
                resource.clone(),
                &uid,
                object.cluster(),
                object.region(),
            ) else {
                tracing::warn!(
                    key = entry.key,
                    event = entry.event,
                    "dropped a queued notification of an unknown event"
                );
                results.push((entry.key, Attempt::Delivered));
                continue;
            };
            let mut delivered = entry.delivered.clone();
            let failures: Vec<String> = Setup::send_to(&destinations, &mut delivered, &message)
                .await
                .iter()
                .map(ToString::to_string)
                .collect();
            let attempt = outbox::attempted(&entry, delivered, &failures, now);
            self.report(object, &entry.key, &attempt).await;
            results.push((entry.key, attempt));
        }
        Some(results)
    }

    async fn report<K: Notifying>(&self, object: &K, key: &str, attempt: &Attempt) {
        let (reason, note) = match attempt {
            Attempt::Delivered => return,
            Attempt::Retry(entry) => (
                "NotificationFailed",
                format!(
                    "notification {key} not delivered (attempt {} of {}, next at {}): {}",
                    entry.attempts,
                    outbox::MAX_ATTEMPTS,
                    entry
                        .next_attempt
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_default(),
                    entry.last_error.as_deref().unwrap_or_default()
                ),
            ),
            Attempt::GivenUp(entry) => (
                "NotificationDropped",
                format!(
                    "notification {key} given up after {} attempts: {}",
                    entry.attempts,
                    entry.last_error.as_deref().unwrap_or_default()
                ),
            ),
        };
        crate::publish_event(&self.recorder, object, EventType::Warning, reason, &note).await;
    }
}

/// Writes the outcome of `results` to the outbox of `object` (read again and retried when
/// a reconcile wrote in between; the conflict is returned when that happens three times).
async fn record<K: Notifying>(
    api: &Api<K>,
    object: &K,
    results: &[(String, Attempt)],
) -> Result<(), kube::Error> {
    let mut current = object.clone();
    let mut conflict = None;
    for _ in 0..3 {
        let mut queue: Vec<OutgoingNotification> = current.outbox().to_vec();
        for (key, attempt) in results {
            match attempt {
                Attempt::Delivered | Attempt::GivenUp(_) => queue.retain(|o| &o.key != key),
                Attempt::Retry(entry) => {
                    for o in queue.iter_mut().filter(|o| &o.key == key) {
                        *o = entry.clone();
                    }
                }
            }
        }
        if queue.as_slice() == current.outbox() {
            return Ok(());
        }
        let queue = if queue.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::to_value(&queue).map_err(kube::Error::SerdeError)?
        };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "status": {"outbox": queue},
        });
        match api
            .patch_status(
                &current.name_any(),
                &PatchParams::apply(MANAGER),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                match api.get_opt(&current.name_any()).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
                conflict = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    conflict.map_or(Ok(()), |e| Err(kube::Error::Api(e)))
}

/// Queues the notifications a reconcile decided (transition key and message, in the order they
/// happened) in its status, and sets the `NotificationFailed` condition from what the outbox
/// says of earlier deliveries.
pub fn queue(
    status_outbox: &mut Vec<OutgoingNotification>,
    last_notified: &mut Option<String>,
    conditions: &mut Vec<opsy_api::conditions::Condition>,
    notifications: Vec<(String, opsy_notify::Message)>,
    now: Timestamp,
    generation: Option<i64>,
) {
    for (key, message) in notifications {
        outbox::enqueue(status_outbox, last_notified, &key, &message);
    }
    let (key, failures) = match outbox::failing(status_outbox) {
        Some(entry) => (
            entry.key.as_str(),
            vec![entry.last_error.clone().unwrap_or_default()],
        ),
        None => ("", Vec::new()),
    };
    // The Warning event of a failed attempt comes from the sender.
    let _ = opsy_api::conditions::record_delivery(conditions, key, &failures, now, generation);
}

/// `requeue`, or less when a queued notification is due to be sent again sooner.
pub fn sooner(
    requeue: std::time::Duration,
    status_outbox: &[OutgoingNotification],
    now: Timestamp,
) -> std::time::Duration {
    outbox::next_due(status_outbox)
        .and_then(|at| std::time::Duration::try_from(at.duration_since(now)).ok())
        .map_or(requeue, |d| {
            d.clamp(
                std::time::Duration::from_secs(1),
                requeue.max(std::time::Duration::from_secs(1)),
            )
        })
}
