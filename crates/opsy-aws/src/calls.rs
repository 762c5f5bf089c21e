//! Counts every AWS call by service, operation and outcome, for metrics and benchmarks.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use crate::AwsError;

/// `(service, operation, outcome)`; outcome is `ok` or an [`AwsError::category`].
pub type CallKey = (&'static str, &'static str, &'static str);

/// Whether this process may change anything in AWS now: with leader election, whether it
/// still holds its Lease with time to spare.
pub type Fence = Arc<dyn Fn() -> bool + Send + Sync>;

/// Thread-safe call counters, shared by every client of a process; and the fence every
/// mutating call passes first.
#[derive(Default, Clone)]
pub struct CallCounter {
    counts: Arc<Mutex<BTreeMap<CallKey, u64>>>,
    fence: Arc<Mutex<Option<Fence>>>,
}

impl std::fmt::Debug for CallCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCounter")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl CallCounter {
    /// Records one call.
    pub fn record(&self, service: &'static str, operation: &'static str, outcome: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry((service, operation, outcome)).or_default() += 1;
    }

    /// A copy of all counters.
    pub fn snapshot(&self) -> BTreeMap<CallKey, u64> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Calls of one operation, any outcome.
    pub fn count(&self, service: &str, operation: &str) -> u64 {
        self.snapshot()
            .iter()
            .filter(|((s, o, _), _)| *s == service && *o == operation)
            .map(|(_, n)| n)
            .sum()
    }

    /// Calls that changed something in AWS (any operation not starting with Describe, List or
    /// Get), any outcome but `fenced` (not sent).
    pub fn mutating(&self) -> u64 {
        self.snapshot()
            .iter()
            .filter(|((_, o, outcome), _)| !is_read_only(o) && *outcome != "fenced")
            .map(|(_, n)| n)
            .sum()
    }

    /// From now on, every mutating call (see [`is_read_only`]) of every client sharing these
    /// counters is made only while `fence` says so; otherwise it fails with
    /// [`AwsError::Fenced`] without being sent. A replica that lost its Lease thus changes
    /// nothing in AWS after the standby could have taken over, even in reconciles in flight.
    pub fn set_fence(&self, fence: Fence) {
        *self.fence.lock().unwrap_or_else(PoisonError::into_inner) = Some(fence);
    }

    /// Whether this process may change anything outside Kubernetes now (its fence, if any,
    /// allows it): also asked before notifications go out.
    pub fn allows_changes(&self) -> bool {
        !self.fenced()
    }

    /// Whether a mutating call may not be made now.
    fn fenced(&self) -> bool {
        let fence = self
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        fence.is_some_and(|allowed| !allowed())
    }

    /// Runs `call`, counting it by outcome; a mutating call only if the fence allows it (the
    /// future is dropped unpolled otherwise, so nothing is sent).
    pub async fn track<T>(
        &self,
        service: &'static str,
        operation: &'static str,
        call: impl Future<Output = Result<T, AwsError>>,
    ) -> Result<T, AwsError> {
        if !is_read_only(operation) && self.fenced() {
            self.record(service, operation, "fenced");
            return Err(AwsError::Fenced { service, operation });
        }
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.category(),
        };
        self.record(service, operation, outcome);
        result
    }
}

/// Whether an operation only reads.
pub fn is_read_only(operation: &str) -> bool {
    ["Describe", "List", "Get"]
        .iter()
        .any(|p| operation.starts_with(p))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_fenced_process_makes_no_mutating_call_but_still_reads() {
        let calls = CallCounter::default();
        let leader = Arc::new(AtomicBool::new(true));
        let held = leader.clone();
        calls.set_fence(Arc::new(move || held.load(Ordering::SeqCst)));
        let sent = Arc::new(AtomicBool::new(false));
        let send = |sent: Arc<AtomicBool>| async move {
            sent.store(true, Ordering::SeqCst);
            Ok::<_, AwsError>(())
        };
        calls
            .track("ec2", "CreateTags", send(sent.clone()))
            .await
            .unwrap();
        assert!(sent.swap(false, Ordering::SeqCst));
        leader.store(false, Ordering::SeqCst);
        let err = calls
            .track("ec2", "DeregisterImage", send(sent.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.category(), "fenced");
        assert!(!sent.load(Ordering::SeqCst), "nothing was sent");
        calls
            .track("ec2", "DescribeImages", send(sent.clone()))
            .await
            .unwrap();
        assert!(sent.load(Ordering::SeqCst), "reads go on");
        assert_eq!(calls.snapshot()[&("ec2", "DeregisterImage", "fenced")], 1);
        assert_eq!(
            calls.mutating(),
            1,
            "only the call that was sent changed something"
        );
    }
}
