//! How the PackerBuilder controller reports: its conditions in status (a stalled build, an
//! active AMI), Events (counted as transitions), and the status write.

use jiff::Timestamp;
use kube::{Resource, runtime::events::EventType};
use opsy_api::{PackerBuilder, PackerBuilderStatus, conditions};

use crate::Error;

pub use opsy_runtime::context::Context;

/// Field manager of every write.
pub const MANAGER: &str = "packer-builder-operator";

pub(crate) async fn stalled(
    ctx: &Context,
    pb: &PackerBuilder,
    status: &mut PackerBuilderStatus,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let generation = pb.meta().generation;
    let was = conditions::find(&status.conditions, conditions::DEGRADED).map(|c| c.reason.clone());
    set(
        status,
        conditions::READY,
        false,
        reason,
        message,
        now,
        generation,
    );
    set(
        status,
        conditions::PROGRESSING,
        false,
        reason,
        message,
        now,
        generation,
    );
    set(
        status,
        conditions::DEGRADED,
        true,
        reason,
        message,
        now,
        generation,
    );
    status.last_run_message = Some(message.to_owned());
    // One Warning per transition, not one per reconcile.
    if was.as_deref() != Some(reason) {
        event(ctx, pb, EventType::Warning, reason, message).await;
    }
}

pub(crate) fn set_ready(
    status: &mut PackerBuilderStatus,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    set(
        status,
        conditions::READY,
        true,
        "AmiActive",
        message,
        now,
        generation,
    );
    set(
        status,
        conditions::PROGRESSING,
        false,
        "Idle",
        message,
        now,
        generation,
    );
    set(
        status,
        conditions::DEGRADED,
        false,
        "AmiActive",
        message,
        now,
        generation,
    );
}

pub(crate) fn set(
    status: &mut PackerBuilderStatus,
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
    pb: &PackerBuilder,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    ctx.metrics.transition(reason);
    opsy_runtime::publish_event(&ctx.recorder, pb, type_, reason, note).await;
}

pub(crate) async fn write_status(
    ctx: &Context,
    pb: &PackerBuilder,
    status: &PackerBuilderStatus,
) -> Result<PackerBuilder, Error> {
    Ok(opsy_runtime::patch_status(&ctx.client, pb, MANAGER, status).await?)
}
