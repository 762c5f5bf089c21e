//! How the AMIRefresher controller reports: its conditions in status, Events (counted as
//! transitions), and the status write; and the marks its writes carry.

use jiff::Timestamp;
use kube::runtime::events::EventType;
use opsy_api::{AMIRefresher, AMIRefresherStatus, conditions};

use crate::Error;

pub use opsy_runtime::context::Context;

/// Field manager of every write.
pub const MANAGER: &str = "ami-refresh-operator";
/// Marks launch template versions this operator created.
pub(crate) const VERSION_DESCRIPTION: &str = "ami-refresh-operator";

pub(crate) fn set(
    status: &mut AMIRefresherStatus,
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    conditions::upsert(
        &mut status.conditions,
        type_,
        on,
        reason,
        message,
        now,
        generation,
    );
}

pub(crate) async fn event(
    ctx: &Context,
    amr: &AMIRefresher,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    ctx.metrics.transition(reason);
    opsy_runtime::publish_event(&ctx.recorder, amr, type_, reason, note).await;
}

pub(crate) async fn write_status(
    ctx: &Context,
    amr: &AMIRefresher,
    status: &AMIRefresherStatus,
) -> Result<AMIRefresher, Error> {
    Ok(opsy_runtime::patch_status(&ctx.client, amr, MANAGER, status).await?)
}
