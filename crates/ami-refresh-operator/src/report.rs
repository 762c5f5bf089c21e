//! How the AMIRefresher controller reports: its conditions in status, Events (counted as
//! transitions), and the status write; and the marks its writes carry.

use kube::runtime::events::EventType;
use opsy_api::{AMIRefresher, AMIRefresherStatus};

use crate::Error;

pub use opsy_api::conditions::set_on as set;
pub use opsy_runtime::context::Context;

/// Field manager of every write.
pub const MANAGER: &str = "ami-refresh-operator";
/// Marks launch template versions this operator created.
pub(crate) const VERSION_DESCRIPTION: &str = "ami-refresh-operator";

pub(crate) async fn event(
    ctx: &Context,
    amr: &AMIRefresher,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    ctx.event(amr, type_, reason, note).await;
}

pub(crate) async fn write_status(
    ctx: &Context,
    amr: &AMIRefresher,
    status: &AMIRefresherStatus,
) -> Result<AMIRefresher, Error> {
    Ok(opsy_runtime::patch_status(&ctx.client, amr, MANAGER, status).await?)
}
