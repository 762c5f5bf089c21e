//! A PackerBuilder with two `spec.architectures` builds nothing itself: it keeps one
//! PackerBuilder per architecture (`<name>-x86-64`, `<name>-arm64`), owned by it (the garbage
//! collector deletes them with it) and kept to its spec with that one architecture, and sums
//! them up in its status. Each of those builds like any PackerBuilder of one architecture: an
//! `architecture` base filter, `${ARCHITECTURE}` filled, `-var architecture=<arch>` for Packer.
//!
//! Quiet when nothing changed: a child is created when missing, re-applied only when its spec,
//! labels or owner differ from what the parent wants, and deleted when its architecture is
//! no longer listed; the parent's status is written only when it changed.

use std::collections::BTreeMap;

use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType},
};
use opsy_api::{
    PackerBuilder, conditions, lanes::Architecture, packer_builder::ArchitectureStatus,
    tags::labels,
};

use crate::{
    Error,
    report::{Context, MANAGER, event, set, write_status},
};

/// The name of the PackerBuilder that builds `parent`'s AMI for `architecture`.
pub fn child_name(parent: &str, architecture: Architecture) -> String {
    format!("{parent}-{}", architecture.name_suffix())
}

/// The PackerBuilder of `parent` for `architecture`: `parent`'s spec with that one
/// architecture, labelled with its parent and owned by it.
pub fn child(parent: &PackerBuilder, architecture: Architecture) -> PackerBuilder {
    let mut spec = parent.spec.clone();
    spec.architectures = vec![architecture];
    let mut pb = PackerBuilder::new(&child_name(&parent.name_any(), architecture), spec);
    pb.metadata.namespace = parent.namespace();
    pb.metadata.labels = Some(BTreeMap::from([
        (labels::PARENT.to_owned(), parent.name_any()),
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
    ]));
    pb.metadata.owner_references = parent.controller_owner_ref(&()).map(|r| vec![r]);
    pb
}

fn owned_by(child: &PackerBuilder, parent: &PackerBuilder) -> bool {
    let uid = parent.meta().uid.as_deref();
    child
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

/// Whether `have` is what `want` asks for (spec, the parent label, the owner).
fn in_line(have: &PackerBuilder, want: &PackerBuilder, parent: &PackerBuilder) -> bool {
    have.spec == want.spec
        && have.labels().get(labels::PARENT) == Some(&parent.name_any())
        && owned_by(have, parent)
}

/// Reconciles a PackerBuilder with two architectures.
pub async fn reconcile(pb: &PackerBuilder, ctx: &Context) -> Result<Action, Error> {
    let namespace = pb.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<PackerBuilder> = Api::namespaced(ctx.client.clone(), &namespace);
    let timer = pb.spec.requeue_after();
    if pb.meta().deletion_timestamp.is_some() {
        // Its PackerBuilders go with it (owner references): each tags what its last build made.
        return Ok(Action::await_change());
    }
    let now = (ctx.clock)();
    let generation = pb.meta().generation;
    let mut status = pb.status.clone().unwrap_or_default();
    let existing = api
        .list(&ListParams::default().labels(&format!("{}={}", labels::PARENT, pb.name_any())))
        .await?
        .items;
    let mut children: Vec<(Architecture, Option<PackerBuilder>)> = Vec::new();
    let mut conflicts = Vec::new();
    for &architecture in &pb.spec.architectures {
        let want = child(pb, architecture);
        let name = want.name_any();
        let have = match existing.iter().find(|c| c.name_any() == name) {
            Some(have) => Some(have.clone()),
            None => api.get_opt(&name).await?,
        };
        let current = match have {
            Some(have) if in_line(&have, &want, pb) => Some(have),
            // Someone else's PackerBuilder of that name: never taken over.
            Some(have) if !owned_by(&have, pb) => {
                conflicts.push(format!(
                    "PackerBuilder {name} exists and is not this one's: rename it, or this one \
                     (the {architecture} build is <name>-{})",
                    architecture.name_suffix()
                ));
                children.push((architecture, None));
                continue;
            }
            Some(_) => Some(
                api.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&want),
                )
                .await?,
            ),
            None => {
                let created = api
                    .create(
                        &PostParams {
                            field_manager: Some(MANAGER.to_owned()),
                            ..PostParams::default()
                        },
                        &want,
                    )
                    .await?;
                let note = format!("PackerBuilder {name} builds the {architecture} AMI");
                event(
                    ctx,
                    pb,
                    EventType::Normal,
                    "ArchitectureBuilderCreated",
                    &note,
                )
                .await;
                Some(created)
            }
        };
        children.push((architecture, current));
    }
    // Architectures no longer listed: their PackerBuilders go (and their AMIs stay, under
    // their retention until then).
    for stale in existing.iter().filter(|c| {
        owned_by(c, pb)
            && !pb
                .spec
                .architectures
                .iter()
                .any(|a| child_name(&pb.name_any(), *a) == c.name_any())
    }) {
        delete(
            &api,
            ctx,
            pb,
            &stale.name_any(),
            "its architecture is no longer in spec.architectures",
        )
        .await?;
    }

    status.architectures = children
        .iter()
        .map(|(architecture, child)| {
            let ready = child
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .and_then(|s| conditions::find(&s.conditions, conditions::READY));
            ArchitectureStatus {
                architecture: architecture.to_string(),
                packer_builder: child_name(&pb.name_any(), *architecture),
                active_image: child
                    .as_ref()
                    .and_then(|c| c.status.as_ref())
                    .and_then(|s| s.active_image.clone()),
                ready: ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
                message: ready.map(|c| format!("{}: {}", c.reason, c.message)),
            }
        })
        .collect();
    let not_ready: Vec<String> = status
        .architectures
        .iter()
        .filter(|a| a.ready != conditions::TRUE)
        .map(|a| {
            format!(
                "{} ({}): {}",
                a.architecture,
                a.packer_builder,
                a.message.as_deref().unwrap_or("not reconciled yet")
            )
        })
        .collect();
    if !conflicts.is_empty() {
        let message = conflicts.join("; ");
        let was = conditions::find(&status.conditions, conditions::DEGRADED)
            .map(|c| (c.reason.clone(), c.message.clone()));
        set(
            &mut status,
            conditions::DEGRADED,
            true,
            "ArchitectureBuilderConflict",
            &message,
            now,
            generation,
        );
        if was != Some(("ArchitectureBuilderConflict".to_owned(), message.clone())) {
            event(
                ctx,
                pb,
                EventType::Warning,
                "ArchitectureBuilderConflict",
                &message,
            )
            .await;
        }
    } else {
        set(
            &mut status,
            conditions::DEGRADED,
            false,
            "NoConflict",
            "each architecture's PackerBuilder is this one's",
            now,
            generation,
        );
    }
    if not_ready.is_empty() {
        let built: Vec<String> = status
            .architectures
            .iter()
            .map(|a| {
                format!(
                    "{}: {}",
                    a.architecture,
                    a.active_image.as_ref().map_or("?", |i| i.id.as_str())
                )
            })
            .collect();
        set(
            &mut status,
            conditions::READY,
            true,
            "ArchitecturesBuilt",
            &format!("an active AMI for each architecture: {}", built.join(", ")),
            now,
            generation,
        );
    } else {
        set(
            &mut status,
            conditions::READY,
            false,
            "ArchitecturesNotReady",
            &format!("not ready: {}", not_ready.join("; ")),
            now,
            generation,
        );
    }
    status.observed_generation = generation;
    if pb.status.as_ref() != Some(&status) {
        write_status(ctx, pb, &status).await?;
    }
    Ok(Action::requeue(timer))
}

/// A PackerBuilder that no longer has two architectures deletes the PackerBuilders it had for
/// them: those labelled with its name and owned by it. Found by label, not by
/// `status.architectures`: the object a reconcile gets may predate the status write that listed
/// them (its spec shrank right after they were created), and they would stay forever.
pub async fn remove_children(pb: &PackerBuilder, ctx: &Context) -> Result<(), Error> {
    let Some(namespace) = pb.namespace() else {
        return Ok(());
    };
    let api: Api<PackerBuilder> = Api::namespaced(ctx.client.clone(), &namespace);
    let children = api
        .list(&ListParams::default().labels(&format!("{}={}", labels::PARENT, pb.name_any())))
        .await?
        .items;
    for child in children
        .iter()
        .filter(|c| owned_by(c, pb) && c.metadata.deletion_timestamp.is_none())
    {
        delete(
            &api,
            ctx,
            pb,
            &child.name_any(),
            "spec.architectures no longer lists two",
        )
        .await?;
    }
    Ok(())
}

/// Deletes `pb`'s PackerBuilder `name` (its AMIs stay, and so does the Event saying `why`).
async fn delete(
    api: &Api<PackerBuilder>,
    ctx: &Context,
    pb: &PackerBuilder,
    name: &str,
    why: &str,
) -> Result<(), Error> {
    api.delete(name, &DeleteParams::background()).await?;
    let note = format!("PackerBuilder {name} deleted: {why}");
    event(
        ctx,
        pb,
        EventType::Normal,
        "ArchitectureBuilderDeleted",
        &note,
    )
    .await;
    Ok(())
}
