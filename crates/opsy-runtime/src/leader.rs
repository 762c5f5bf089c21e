//! Lease-based leader election, so that of several replicas exactly one reconciles.
//!
//! The leader holds a `coordination.k8s.io/v1` Lease and renews it; a standby replica takes it
//! over once the leader stops renewing. A replica that loses its Lease stops reconciling and
//! exits, so the Deployment restarts it as a standby (the usual controller-runtime behaviour).
//!
//! A leader that cannot reach the API server cannot renew, and may not even learn that it
//! failed (a request into a partition hangs): a watchdog reads the Lease (at most every
//! second, never waiting past its deadline) and gives leadership up when it has not seen its
//! own renewal valid for at least another `renew_before / 2` — before a standby can take the
//! Lease over.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio::{sync::watch, task::JoinHandle};

/// How long a Lease stays valid, and when its holder renews it.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// How long the Lease stays valid after its last renewal, in seconds.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews it, in seconds (less than the duration).
    pub renew_before_seconds: u64,
}

impl Default for LeaseTiming {
    /// 15 seconds, renewed 5 seconds before expiry (client-go's defaults are 15 and 10).
    fn default() -> Self {
        Self {
            duration_seconds: 15,
            renew_before_seconds: 5,
        }
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or created.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// The election task ended before this replica became the leader.
    #[error("leader election stopped before this replica became the leader")]
    Stopped,
}

/// This replica's leadership of one Lease.
#[derive(Debug)]
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, kube_lease_manager::LeaseManagerError>>,
    /// `true` once the watchdog could not confirm the Lease in time.
    unconfirmed: watch::Receiver<bool>,
    watchdog: JoinHandle<()>,
}

impl Leadership {
    /// Waits until this replica holds the Lease `name` in `namespace` as `identity`.
    pub async fn acquire(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Result<Self, LeaderError> {
        let manager = LeaseManagerBuilder::new(client.clone(), name)
            .with_namespace(namespace)
            .with_parameters(LeaseParams::new(
                identity,
                timing.duration_seconds.max(2),
                timing
                    .renew_before_seconds
                    .clamp(1, timing.duration_seconds.max(2) - 1),
            ))
            .build()
            .await?;
        let (mut state, task) = manager.watch().await;
        tracing::info!(
            lease = name,
            namespace,
            identity,
            "waiting to become the leader"
        );
        while !*state.borrow_and_update() {
            if state.changed().await.is_err() {
                return Err(LeaderError::Stopped);
            }
        }
        tracing::info!(lease = name, namespace, identity, "became the leader");
        let (unconfirmed_tx, unconfirmed) = watch::channel(false);
        let watchdog = tokio::spawn(watchdog(
            Api::namespaced(client, namespace),
            name.to_owned(),
            identity.to_owned(),
            timing,
            unconfirmed_tx,
        ));
        Ok(Self {
            state,
            task,
            unconfirmed,
            watchdog,
        })
    }

    /// Whether this replica still holds the Lease.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow() && !*self.unconfirmed.borrow()
    }

    /// The fence of this leadership, for [`opsy_aws::CallCounter::set_fence`]: true while
    /// [`Self::is_leader`] is — the Lease held, and its last renewal seen valid for at least
    /// another `renew_before / 2`, so that a call it lets through starts before a standby can
    /// take over.
    pub fn fence(&self) -> opsy_aws::calls::Fence {
        let state = self.state.clone();
        let unconfirmed = self.unconfirmed.clone();
        std::sync::Arc::new(move || *state.borrow() && !*unconfirmed.borrow())
    }

    /// Resolves when this replica loses the Lease, cannot confirm it in time, or the election
    /// task stops.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut state = self.state.clone();
        let mut unconfirmed = self.unconfirmed.clone();
        async move {
            let held = async {
                while *state.borrow_and_update() {
                    if state.changed().await.is_err() {
                        return;
                    }
                }
            };
            let confirmed = async {
                while !*unconfirmed.borrow_and_update() {
                    if unconfirmed.changed().await.is_err() {
                        // The watchdog ended without a verdict (released): nothing to add.
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = held => {}
                () = confirmed => {}
            }
        }
    }

    /// Runs `work` while this replica leads: once the Lease is lost (or cannot be confirmed in
    /// time), `work` is dropped where it stands — a reconcile waiting on a slow or unreachable
    /// server goes no further — and `None` is returned. The fence already refuses its mutating
    /// AWS calls; this ends the rest (API writes, notifications) too.
    pub async fn while_leading<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            () = self.lost() => {
                tracing::error!("lost the leader lease; cancelling the reconciles in flight");
                None
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once instead of after it expires.
    pub async fn release(self) {
        let Self {
            state,
            task,
            watchdog,
            ..
        } = self;
        watchdog.abort();
        drop(state);
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader lease timed out; it will expire"),
        }
    }
}

/// Reads the Lease every `renew_before / 4` (at most every second) and reports `true` on
/// `unconfirmed` when another replica holds it, or at `renew_before / 2` before the last
/// renewal it saw expires. Its sleeps and reads never run past that deadline, so a read that
/// hangs (the API server unreachable) cannot make it late.
async fn watchdog(
    leases: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    unconfirmed: watch::Sender<bool>,
) {
    let duration = SignedDuration::from_secs(i64::try_from(timing.duration_seconds).unwrap_or(15));
    let renew_before_ms = timing.renew_before_seconds.saturating_mul(1000).max(400);
    let margin = SignedDuration::from_millis(i64::try_from(renew_before_ms / 2).unwrap_or(500));
    let period = Duration::from_millis((renew_before_ms / 4).min(1000));
    // Just acquired: valid for a whole duration from about now.
    let mut valid_until = Timestamp::now()
        .checked_add(duration)
        .unwrap_or_else(|_| Timestamp::now());
    // Ends once nobody listens (the Leadership and its `lost` futures are gone).
    while !unconfirmed.is_closed() {
        let deadline = valid_until.checked_sub(margin).unwrap_or(valid_until);
        let left = |deadline: Timestamp| {
            Duration::try_from(deadline.duration_since(Timestamp::now())).unwrap_or_default()
        };
        if left(deadline).is_zero() {
            tracing::error!(
                lease = %name,
                valid_until = %valid_until,
                "cannot confirm the lease before it may expire (the API server is unreachable?); giving leadership up"
            );
            let _ = unconfirmed.send(true);
            return;
        }
        tokio::time::sleep(left(deadline).min(period)).await;
        let wait = left(deadline).min(period);
        if wait.is_zero() {
            continue;
        }
        if let Ok(Ok(lease)) = tokio::time::timeout(wait, leases.get(&name)).await {
            let spec = lease.spec.unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                tracing::error!(lease = %name, holder = ?spec.holder_identity, "another replica holds the lease");
                let _ = unconfirmed.send(true);
                return;
            }
            if let Some(renewed) = spec.renew_time {
                valid_until = renewed.0.checked_add(duration).unwrap_or(valid_until);
            }
        }
    }
}
