//! Notifications about builds (built and sent by [`opsy_notify::Setup`]).

use kube::ResourceExt;
use opsy_api::PackerBuilder;
use opsy_notify::{Event, Message, ResourceRef};

/// The start of a message about `pb`.
pub fn message(pb: &PackerBuilder, event: Event, summary: impl Into<String>) -> Message {
    Message::new(
        event,
        ResourceRef {
            kind: "PackerBuilder".into(),
            namespace: pb.namespace().unwrap_or_default(),
            name: pb.name_any(),
        },
        &pb.spec.cluster_name,
        &pb.spec.region,
        summary,
    )
}
