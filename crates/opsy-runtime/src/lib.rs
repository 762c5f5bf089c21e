//! What both controllers share: publishing events, writing status, the retry backoff of
//! objects whose reconcile keeps failing, the command line ([`cli`]), and running as a
//! Deployment ([`operator`]: metrics and health endpoints, leader election, shutdown).

pub mod admin;
pub mod classes;
pub mod cli;
pub mod context;
pub mod fleet;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod outbox;

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
};
use serde::{Serialize, de::DeserializeOwned};

/// Publishes an event about `object`. An event that cannot be written is logged; it never
/// fails a reconcile.
pub async fn publish_event<K>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let note: String = note.chars().take(1024).collect();
    let event = Event {
        type_,
        reason: reason.into(),
        action: event_action(&note),
        note: Some(note),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}

/// The Event's `action`: `Reconcile`, told apart by its note. kube's `Recorder` folds every
/// Event of one object with the same type, reason and action into one series for six minutes,
/// keeping the first note: two groups turning healthy one after the other would show as the
/// first group's Event, counted twice. Identical notes still fold into one series.
fn event_action(note: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    note.hash(&mut hasher);
    format!("Reconcile/{:08x}", hasher.finish() & 0xffff_ffff)
}

#[cfg(test)]
mod event_tests {
    #[test]
    fn events_with_other_notes_have_other_actions() {
        let a = super::event_action("a runs ami-1: 2 of 2 nodes Ready");
        assert_eq!(a, super::event_action("a runs ami-1: 2 of 2 nodes Ready"));
        assert_ne!(a, super::event_action("b runs ami-1: 2 of 2 nodes Ready"));
        assert!(a.starts_with("Reconcile/") && a.len() <= 128);
    }
}

/// The object as the API server holds it now (`None` once it is gone). A reconcile starts
/// from this, not from the controller's cache, which can lag behind the status the previous
/// reconcile wrote: acting on such a copy would repeat a transition, with its notification and
/// Event, and then overwrite the newer status.
pub async fn latest<K>(client: &Client, object: &K) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    api.get_opt(&object.name_any()).await
}

/// Writes `status` on `object` through the status subresource, as field manager `manager`,
/// only if the object is still at the version it was read at: a writer holding an older copy
/// gets `409 Conflict` and changes nothing. Returns the object as written, whose
/// `resourceVersion` a further write in the same reconcile must carry.
///
/// `status` is the whole status: a field that `object`'s status has and `status` leaves out
/// (an optional field now empty) is removed, at any depth of nested objects. A JSON merge
/// patch alone would keep it.
pub async fn patch_status<K, S>(
    client: &Client,
    object: &K,
    manager: &str,
    status: &S,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    K: Serialize,
    S: Serialize,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let mut status = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    if let Some(stored) = serde_json::to_value(object)
        .ok()
        .as_ref()
        .and_then(|o| o.get("status"))
    {
        null_removed(&mut status, stored);
    }
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": object.resource_version() },
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(manager),
        &Patch::Merge(&patch),
    )
    .await
}

/// Sets to `null` (which a JSON merge patch removes) every key of `stored` that `new` lacks,
/// recursing into objects present in both. Arrays are replaced whole by a merge patch.
fn null_removed(new: &mut serde_json::Value, stored: &serde_json::Value) {
    let (Some(new), Some(stored)) = (new.as_object_mut(), stored.as_object()) else {
        return;
    };
    for (key, old) in stored {
        match new.get_mut(key) {
            None => {
                new.insert(key.clone(), serde_json::Value::Null);
            }
            Some(value) => null_removed(value, old),
        }
    }
}

/// Delay before retry `attempt` (1-based) of a failing object: 15s doubling to 10 minutes.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 15u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(600))
}

/// Consecutive reconcile failures per object (namespace/name).
#[derive(Debug, Default, Clone)]
pub struct Failures(Arc<Mutex<HashMap<String, u32>>>);

impl Failures {
    fn key<K: Resource>(object: &K) -> String {
        format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        )
    }

    /// Counts a failure of `object`; returns how many in a row.
    pub fn record_failure<K: Resource>(&self, object: &K) -> u32 {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(Self::key(object)).or_default();
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets the failures of `object` after a successful reconcile.
    pub fn record_success<K: Resource>(&self, object: &K) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&Self::key(object));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_left_out_of_the_status_are_removed_at_any_depth() {
        let stored = serde_json::json!({
            "heldBack": [{"image": "ami-1"}],
            "window": {"open": true, "closes": "2026-11-28T05:00:00Z"},
            "groups": [{"name": "a", "message": "old"}],
            "kept": 1,
        });
        let mut new = serde_json::json!({
            "window": {"open": false},
            "groups": [{"name": "a"}],
            "kept": 2,
        });
        null_removed(&mut new, &stored);
        assert_eq!(
            new,
            serde_json::json!({
                "heldBack": null,
                "window": {"open": false, "closes": null},
                "groups": [{"name": "a"}],
                "kept": 2,
            })
        );
    }

    #[test]
    fn backoff_grows_to_ten_minutes() {
        let delays: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(delays, [15, 30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(backoff(0).as_secs(), 15);
        assert_eq!(backoff(u32::MAX).as_secs(), 600);
    }

    #[test]
    fn failures_count_per_object_and_reset() {
        let failures = Failures::default();
        let mut a = k8s_openapi::api::core::v1::ConfigMap::default();
        a.metadata.name = Some("a".into());
        a.metadata.namespace = Some("ns".into());
        let mut b = a.clone();
        b.metadata.name = Some("b".into());
        assert_eq!(failures.record_failure(&a), 1);
        assert_eq!(failures.record_failure(&a), 2);
        assert_eq!(failures.record_failure(&b), 1);
        failures.record_success(&a);
        assert_eq!(failures.record_failure(&a), 1);
    }
}
