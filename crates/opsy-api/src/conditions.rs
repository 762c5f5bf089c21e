//! Condition types shared by both custom resources.
//!
//! Conditions follow the Kubernetes convention (`metav1.Condition`): `type`, `status`
//! (`True`/`False`/`Unknown`), a CamelCase `reason`, a human `message`, `lastTransitionTime`
//! and the `observedGeneration` they were computed for.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The resource reached its goal: an eligible AMI exists (PackerBuilder) or every managed
/// node group runs the target AMI (AMIRefresher).
pub const READY: &str = "Ready";
/// Work is under way: a build Job runs, or node groups are being updated.
pub const PROGRESSING: &str = "Progressing";
/// Something needs a person: failed builds, a halted rollout, invalid input, AWS errors.
pub const DEGRADED: &str = "Degraded";
/// The last notification could not be delivered (never blocks builds or rollouts).
pub const NOTIFICATION_FAILED: &str = "NotificationFailed";

/// The spec is valid but a setting is probably not what was meant (e.g. `expiresIn: 5m`).
pub const CONFIG_WARNING: &str = "ConfigWarning";

/// Condition status `True`.
pub const TRUE: &str = "True";
/// Condition status `False`.
pub const FALSE: &str = "False";
/// Condition status `Unknown`.
pub const UNKNOWN: &str = "Unknown";

/// Returns the condition of type `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Inserts or replaces `new` in `conditions`, keeping `lastTransitionTime` when the status did
/// not change (as `meta.SetStatusCondition` does). Returns whether anything changed.
pub fn set(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        None => {
            conditions.push(new);
            true
        }
        Some(old) => {
            let keep_time = old.status == new.status;
            let changed = old.status != new.status
                || old.reason != new.reason
                || old.message != new.message
                || old.observed_generation != new.observed_generation;
            if changed {
                let time = if keep_time {
                    old.last_transition_time.clone()
                } else {
                    new.last_transition_time.clone()
                };
                *old = Condition {
                    last_transition_time: time,
                    ..new
                };
            }
            changed
        }
    }
}

/// Sets condition `type_` to `on` with `reason` and `message`, computed for `generation` at
/// `now` (see [`set`]). Returns whether anything changed.
pub fn upsert(
    conditions: &mut Vec<Condition>,
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
    generation: Option<i64>,
) -> bool {
    set(
        conditions,
        Condition {
            type_: type_.into(),
            status: if on { TRUE } else { FALSE }.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
        },
    )
}

/// Sets [`CONFIG_WARNING`] from `warnings` (the reason and message of each), or clears it if
/// it was ever set. Returns the message when the warning is new or changed, for a Warning
/// event (so a steady warning gives one Event, not one per reconcile).
pub fn record_config_warnings(
    conditions: &mut Vec<Condition>,
    warnings: &[(&str, String)],
    now: jiff::Timestamp,
    generation: Option<i64>,
) -> Option<String> {
    let Some((reason, _)) = warnings.first() else {
        if find(conditions, CONFIG_WARNING).is_some() {
            upsert(
                conditions,
                CONFIG_WARNING,
                false,
                "AsIntended",
                "no setting looks mistaken",
                now,
                generation,
            );
        }
        return None;
    };
    let message = warnings
        .iter()
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let before = find(conditions, CONFIG_WARNING)
        .filter(|c| c.status == TRUE)
        .map(|c| c.message.clone());
    upsert(
        conditions,
        CONFIG_WARNING,
        true,
        reason,
        &message,
        now,
        generation,
    );
    (before.as_deref() != Some(message.as_str())).then_some(message)
}

/// Records the outcome of a notification in [`NOTIFICATION_FAILED`]: cleared after a delivery
/// (if it was ever set), set with every failure otherwise. Returns the message of a failure,
/// for a Warning event.
pub fn record_delivery(
    conditions: &mut Vec<Condition>,
    key: &str,
    failures: &[String],
    now: jiff::Timestamp,
    generation: Option<i64>,
) -> Option<String> {
    if failures.is_empty() {
        if find(conditions, NOTIFICATION_FAILED).is_some() {
            upsert(
                conditions,
                NOTIFICATION_FAILED,
                false,
                "Delivered",
                "the last notification was delivered",
                now,
                generation,
            );
        }
        return None;
    }
    let message = format!("notification {key} not delivered: {}", failures.join("; "));
    upsert(
        conditions,
        NOTIFICATION_FAILED,
        true,
        "DeliveryFailed",
        &message,
        now,
        generation,
    );
    Some(message)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::*;

    fn cond(status: &str, reason: &str, secs: i64) -> Condition {
        Condition {
            type_: READY.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(secs).unwrap()),
        }
    }

    #[test]
    fn set_keeps_transition_time_unless_status_changes() {
        let mut conditions = vec![];
        assert!(set(&mut conditions, cond(FALSE, "Building", 10)));
        assert!(!set(&mut conditions, cond(FALSE, "Building", 20)));
        assert_eq!(conditions[0].last_transition_time.0.as_second(), 10);

        assert!(set(&mut conditions, cond(FALSE, "BuildFailed", 30)));
        assert_eq!(conditions[0].reason, "BuildFailed");
        assert_eq!(conditions[0].last_transition_time.0.as_second(), 10);

        assert!(set(&mut conditions, cond(TRUE, "AmiActive", 40)));
        assert_eq!(conditions[0].last_transition_time.0.as_second(), 40);
        assert_eq!(conditions.len(), 1);
        assert_eq!(
            find(&conditions, READY).map(|c| c.status.as_str()),
            Some(TRUE)
        );
        assert!(find(&conditions, DEGRADED).is_none());
    }
}
