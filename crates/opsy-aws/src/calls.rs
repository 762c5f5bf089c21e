//! Counts every AWS call by service, operation and outcome, for metrics and benchmarks.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use crate::AwsError;

/// `(service, operation, outcome)`; outcome is `ok` or an [`AwsError::category`].
pub type CallKey = (&'static str, &'static str, &'static str);

/// Thread-safe call counters, shared by every client of a process.
#[derive(Debug, Default, Clone)]
pub struct CallCounter {
    counts: Arc<Mutex<BTreeMap<CallKey, u64>>>,
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
    /// Get), any outcome.
    pub fn mutating(&self) -> u64 {
        self.snapshot()
            .iter()
            .filter(|((_, o, _), _)| !is_read_only(o))
            .map(|(_, n)| n)
            .sum()
    }

    /// Runs `call`, counting it by outcome.
    pub async fn track<T>(
        &self,
        service: &'static str,
        operation: &'static str,
        call: impl Future<Output = Result<T, AwsError>>,
    ) -> Result<T, AwsError> {
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
