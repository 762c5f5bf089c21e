//! Lease-based leader election, so that of several replicas exactly one reconciles.
//!
//! The leader holds a `coordination.k8s.io/v1` Lease and renews it; a standby replica takes it
//! over once the leader stops renewing. A replica that loses its Lease stops reconciling and
//! exits, so the Deployment restarts it as a standby (the usual controller-runtime behaviour).

use std::time::Duration;

use kube::Client;
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
        let manager = LeaseManagerBuilder::new(client, name)
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
        Ok(Self { state, task })
    }

    /// Whether this replica still holds the Lease.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves when this replica loses the Lease (or the election task stops).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut state = self.state.clone();
        async move {
            while *state.borrow_and_update() {
                if state.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once instead of after it expires.
    pub async fn release(self) {
        let Self { state, task } = self;
        drop(state);
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader lease timed out; it will expire"),
        }
    }
}
