//! The notification outbox, as data: what a reconcile puts in `status.outbox`, what is due, and
//! what an attempt changes. A reconcile only queues; the operator's sender
//! (`opsy_runtime::outbox`) delivers after the status is written, so a notification is
//! recorded before it is sent and goes out at least once, with the same idempotency key each time.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use opsy_api::common::{MAX_OUTBOX, NotificationFact, OutgoingNotification};

use crate::{Event, Message, ResourceRef};

/// Attempts before a notification is given up (with a Warning event): about an hour and a half
/// of retries, 30 seconds apart at first, doubling up to 30 minutes.
pub const MAX_ATTEMPTS: u32 = 8;

/// Queues the notification of the transition `key` unless it was decided already (it is
/// `last_notified`, or still queued). `last_notified` becomes `key` either way: transitions a
/// reconcile decides again while their state lasts (a halted rollout, a stalled builder) come
/// last, so the next reconcile finds them there. Returns whether it was queued. The oldest
/// entry is dropped when the outbox is full.
pub fn enqueue(
    outbox: &mut Vec<OutgoingNotification>,
    last_notified: &mut Option<String>,
    key: &str,
    message: &Message,
) -> bool {
    let known = last_notified.as_deref() == Some(key) || outbox.iter().any(|o| o.key == key);
    *last_notified = Some(key.to_owned());
    if known {
        return false;
    }
    outbox.push(outgoing(key, message));
    while outbox.len() > MAX_OUTBOX {
        let dropped = outbox.remove(0);
        tracing::warn!(
            key = dropped.key,
            "notification outbox full: dropped the oldest"
        );
    }
    true
}

/// `message` as an outbox entry.
pub fn outgoing(key: &str, message: &Message) -> OutgoingNotification {
    OutgoingNotification {
        key: key.to_owned(),
        event: message.event.as_str().to_owned(),
        summary: message.summary.clone(),
        facts: message
            .facts
            .iter()
            .map(|(name, value)| NotificationFact {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        reason: message.reason.clone(),
        at: Time(message.at),
        delivered: Vec::new(),
        attempts: 0,
        last_error: None,
        next_attempt: None,
    }
}

/// The message of an outbox entry about `resource`, with its idempotency key
/// (`<uid>/<key>`); `None` for an event this version does not know.
pub fn message(
    entry: &OutgoingNotification,
    resource: ResourceRef,
    uid: &str,
    cluster: &str,
    region: &str,
) -> Option<Message> {
    let event = Event::parse(&entry.event)?;
    let mut message = Message::new(event, resource, cluster, region, entry.summary.clone())
        .at(entry.at.0)
        .idempotency_key(format!("{uid}/{}", entry.key));
    for fact in &entry.facts {
        message = message.fact(&fact.name, fact.value.clone());
    }
    if let Some(reason) = &entry.reason {
        message = message.reason(reason.clone());
    }
    Some(message)
}

/// Whether `entry` may be sent at `now`.
pub fn is_due(entry: &OutgoingNotification, now: Timestamp) -> bool {
    entry.next_attempt.as_ref().is_none_or(|t| t.0 <= now)
}

/// What one attempt made of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Every destination has it: removed.
    Delivered,
    /// Some destination failed: kept, tried again at `next_attempt`.
    Retry(OutgoingNotification),
    /// It failed for the last time: removed.
    GivenUp(OutgoingNotification),
}

/// Records an attempt on `entry`: the destinations that took it, and the failures.
pub fn attempted(
    entry: &OutgoingNotification,
    delivered: Vec<String>,
    failures: &[String],
    now: Timestamp,
) -> Attempt {
    if failures.is_empty() {
        return Attempt::Delivered;
    }
    let attempts = entry.attempts.saturating_add(1);
    let wait = SignedDuration::from_secs(30 * 2_i64.pow(attempts.saturating_sub(1).min(6)))
        .min(SignedDuration::from_mins(30));
    let next = OutgoingNotification {
        delivered,
        attempts,
        last_error: Some(failures.join("; ")),
        next_attempt: Some(Time(now.saturating_add(wait).unwrap_or(now))),
        ..entry.clone()
    };
    if attempts >= MAX_ATTEMPTS {
        Attempt::GivenUp(next)
    } else {
        Attempt::Retry(next)
    }
}

/// The first entry whose last attempt failed, for the `NotificationFailed` condition.
pub fn failing(outbox: &[OutgoingNotification]) -> Option<&OutgoingNotification> {
    outbox.iter().find(|o| o.last_error.is_some())
}

/// When the next entry becomes due, if one waits.
pub fn next_due(outbox: &[OutgoingNotification]) -> Option<Timestamp> {
    outbox
        .iter()
        .filter_map(|o| o.next_attempt.as_ref().map(|t| t.0))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message::new(
            Event::BuildFailed,
            ResourceRef {
                kind: "PackerBuilder".into(),
                namespace: "opsy".into(),
                name: "al2023".into(),
            },
            "prod",
            "us-west-2",
            "Build failed",
        )
        .fact("Job", "al2023-1")
        .reason("packer exited with status 1")
        .at("2026-01-01T00:00:00Z".parse().unwrap())
    }

    #[test]
    fn a_transition_is_queued_once_and_the_outbox_is_bounded() {
        let (mut outbox, mut last) = (Vec::new(), None);
        assert!(enqueue(&mut outbox, &mut last, "BuildFailed:1", &msg()));
        assert!(!enqueue(&mut outbox, &mut last, "BuildFailed:1", &msg()));
        // Decided again later while its state lasts: still not queued twice.
        outbox.clear();
        assert!(!enqueue(&mut outbox, &mut last, "BuildFailed:1", &msg()));
        // Two transitions of one reconcile: both queued, the last one remembered.
        assert!(enqueue(&mut outbox, &mut last, "BuildFailed:2", &msg()));
        assert!(enqueue(&mut outbox, &mut last, "BuildStalled:x", &msg()));
        assert_eq!(outbox.len(), 2);
        assert_eq!(last.as_deref(), Some("BuildStalled:x"));
        for i in 0..MAX_OUTBOX + 5 {
            enqueue(&mut outbox, &mut last, &format!("k{i}"), &msg());
        }
        assert_eq!(outbox.len(), MAX_OUTBOX);
        assert_eq!(outbox[MAX_OUTBOX - 1].key, format!("k{}", MAX_OUTBOX + 4));
    }

    #[test]
    fn an_entry_reads_back_as_the_message_it_was_with_its_idempotency_key() {
        let entry = outgoing("BuildFailed:1", &msg());
        let back = message(&entry, msg().resource, "uid-1", "prod", "us-west-2").unwrap();
        assert_eq!(back.idempotency_key.as_deref(), Some("uid-1/BuildFailed:1"));
        assert_eq!(
            Message {
                idempotency_key: None,
                ..back
            },
            msg()
        );
        let unknown = OutgoingNotification {
            event: "SomethingNew".into(),
            ..entry
        };
        assert!(message(&unknown, msg().resource, "uid-1", "prod", "us-west-2").is_none());
    }

    #[test]
    fn failures_back_off_and_run_out() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut entry = outgoing("k", &msg());
        assert!(is_due(&entry, now));
        assert_eq!(attempted(&entry, vec![], &[], now), Attempt::Delivered);
        let mut waits = Vec::new();
        loop {
            match attempted(&entry, vec!["slack".into()], &["sns: down".into()], now) {
                Attempt::Retry(next) => {
                    let at = next.next_attempt.as_ref().unwrap().0;
                    assert!(!is_due(&next, now) && is_due(&next, at));
                    assert_eq!(next.delivered, ["slack"]);
                    assert_eq!(next.last_error.as_deref(), Some("sns: down"));
                    waits.push(at.duration_since(now).as_secs());
                    entry = next;
                }
                Attempt::GivenUp(last) => {
                    assert_eq!(last.attempts, MAX_ATTEMPTS);
                    break;
                }
                Attempt::Delivered => unreachable!(),
            }
        }
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1800]);
        assert_eq!(failing(std::slice::from_ref(&entry)), Some(&entry));
        assert_eq!(
            next_due(std::slice::from_ref(&entry))
                .unwrap()
                .duration_since(now)
                .as_secs(),
            1800
        );
    }
}
