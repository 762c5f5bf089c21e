//! The invariants every run must keep, crash or not, written once and checked from the
//! emulator's mutation log and state ([`Moto::mutations`], `GET /opsy-ext/facts`) and the API
//! server:
//!
//! 1. at most one launch-template version per (template, what the operator made it for): one per
//!    target AMI, one per rollback;
//! 2. no node-group version update or instance refresh of a group to the AMI its previous move
//!    (one that did not fail) took it to: a retry after a failure, or a return after someone
//!    moved the group elsewhere, is fine;
//! 3. no AMI goes back to `active` after it was `deprecated` or `quarantined`;
//! 4. every AMI a build produced ends tagged with the contract, or is named in a Warning Event;
//! 5. no `healthy-on/<account>/<cluster>` evidence for an AMI without a group of that cluster having
//!    passed the health gate on it (its `NodeGroupHealthy` Event), nor while a group of the
//!    cluster that AWS moved to the AMI has no such verdict;
//! 6. no snapshot deleted that was not a snapshot of a managed AMI the operator deregistered
//!    (nor, deleted with its image, one not marked as the operator's);
//!    no managed AMI deregistered while a launch template version or an instance uses it;
//! 7. one build at a time per PackerBuilder (never two of its Jobs unfinished at once);
//! 8. at most one copy of an AMI per region (by its `source-ami` tag).
//!
//! Reading the facts is not counted as AWS requests, so any test may check them at any time.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{batch::v1::Job, events::v1::Event};
use kube::api::{Api, ListParams};
use serde::Deserialize;

use crate::{Moto, MotoError};

/// An AMI, as the emulator holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct FactImage {
    /// `ami-…`
    pub id: String,
    /// Its region.
    pub region: String,
    /// Its tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Its snapshots.
    #[serde(default)]
    pub snapshots: Vec<String>,
}

/// A launch template version.
#[derive(Debug, Clone, Deserialize)]
pub struct FactVersion {
    /// `lt-…`
    pub template: String,
    /// Its number.
    pub version: i64,
    /// The AMI it launches.
    #[serde(default)]
    pub image: Option<String>,
    /// Its description.
    #[serde(default)]
    pub description: String,
}

/// An instance.
#[derive(Debug, Clone, Deserialize)]
pub struct FactInstance {
    /// `i-…`
    pub id: String,
    /// The AMI it runs.
    pub image: String,
    /// `running`, `terminated`, …
    pub state: String,
}

/// An EKS update.
#[derive(Debug, Clone, Deserialize)]
pub struct FactUpdate {
    /// Its id.
    pub id: String,
    /// Its cluster.
    pub cluster: String,
    /// Its node group (none for a cluster's own update).
    #[serde(default)]
    pub nodegroup: Option<String>,
    /// `VersionUpdate`, `ConfigUpdate`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `InProgress`, `Successful`, `Failed`, …
    pub status: String,
    /// Its parameters by type.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// An instance refresh.
#[derive(Debug, Clone, Deserialize)]
pub struct FactRefresh {
    /// Its id.
    pub id: String,
    /// Its Auto Scaling group.
    pub group: String,
    /// `Pending`, `InProgress`, `Successful`, …
    pub status: String,
    /// The launch template it moves to.
    #[serde(default)]
    pub template: Option<String>,
    /// The version it moves to.
    #[serde(default)]
    pub version: Option<String>,
}

/// What `GET /opsy-ext/facts` reports.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Facts {
    /// Every image.
    #[serde(default)]
    pub images: Vec<FactImage>,
    /// Every launch template version.
    #[serde(default)]
    pub template_versions: Vec<FactVersion>,
    /// Every instance.
    #[serde(default)]
    pub instances: Vec<FactInstance>,
    /// Every node-group update, oldest first.
    #[serde(default)]
    pub updates: Vec<FactUpdate>,
    /// Every instance refresh, oldest first.
    #[serde(default)]
    pub refreshes: Vec<FactRefresh>,
}

impl Moto {
    /// The AWS state the invariants read.
    pub fn facts(&self) -> Result<Facts, MotoError> {
        self.get_json("/opsy-ext/facts")
    }
}

/// Where to look.
#[derive(Clone)]
pub struct Scope<'a> {
    /// The emulator.
    pub moto: &'a Moto,
    /// An admin client of the API server.
    pub client: kube::Client,
    /// The namespace of the test's objects (Events, Jobs).
    pub namespace: &'a str,
    /// AMIs the scenario's builds produced (the test plays Packer), for invariant 4.
    pub built: Vec<String>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("emulator", &self.moto.endpoint())
            .field("namespace", &self.namespace)
            .field("built", &self.built)
            .finish_non_exhaustive()
    }
}

impl<'a> Scope<'a> {
    /// The scope of a test's namespace.
    pub fn new(moto: &'a Moto, client: kube::Client, namespace: &'a str) -> Self {
        Self {
            moto,
            client,
            namespace,
            built: Vec::new(),
        }
    }
}

/// Prefix of the launch template versions the AMIRefresher makes (their description).
const VERSION_DESCRIPTION: &str = "ami-refresh-operator";

/// Every violation of the invariants, described; empty when they hold.
pub async fn violations(scope: &Scope<'_>) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let facts = scope.moto.facts()?;
    let mutations = scope.moto.operator_mutations()?;
    let events: Api<Event> = Api::namespaced(scope.client.clone(), scope.namespace);
    let events = events.list(&ListParams::default()).await?.items;
    let jobs: Api<Job> = Api::namespaced(scope.client.clone(), scope.namespace);
    let jobs = jobs
        .list(&ListParams::default().labels("app.kubernetes.io/component=packer-build"))
        .await?
        .items;
    let mut out = Vec::new();
    out.extend(template_versions(&facts));
    out.extend(updates(&facts));
    out.extend(reactivations(&mutations));
    out.extend(orphans(scope, &facts, &mutations, &events));
    out.extend(evidence(&facts, &mutations, &events));
    out.extend(deletions(&facts, &mutations));
    out.extend(builds(&jobs));
    out.extend(copies(&facts));
    Ok(out)
}

/// Panics with every violation of the invariants, if any: a test assertion.
#[allow(
    clippy::panic,
    reason = "an assertion for tests, which fail by panicking"
)]
pub async fn check(scope: &Scope<'_>) {
    match violations(scope).await {
        Ok(found) if found.is_empty() => {}
        Ok(found) => panic!("invariants violated:\n- {}", found.join("\n- ")),
        Err(e) => panic!("could not check the invariants: {e}"),
    }
}

/// 1. One launch template version per (template, target or rollback).
fn template_versions(facts: &Facts) -> Vec<String> {
    let mut seen: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for v in &facts.template_versions {
        if v.description.starts_with(VERSION_DESCRIPTION) {
            seen.entry((&v.template, &v.description))
                .or_default()
                .push(v.version);
        }
    }
    seen.into_iter()
        .filter(|(_, versions)| versions.len() > 1)
        .map(|((template, description), versions)| {
            format!(
                "launch template {template}: versions {versions:?} all made for \"{description}\""
            )
        })
        .collect()
}

/// 2. No second update or refresh to an AMI a group already moved (or is moving) to.
fn updates(facts: &Facts) -> Vec<String> {
    let image_of =
        |template: Option<&str>, version: Option<&str>| image_of(facts, template, version);
    let mut out = Vec::new();
    // Per group, its last move that did not fail: (image, what). A move to the image the group
    // was last moved to is a repeat; a move elsewhere in between (someone else's, a rollback)
    // or a failure makes the next move to it a new one.
    let mut last: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut note = |group: String, image: Option<String>, id: &str, status: &str| {
        let failed = matches!(
            status,
            "Failed" | "Cancelled" | "RollbackSuccessful" | "RollbackFailed"
        );
        let Some(image) = image else {
            last.remove(&group);
            return;
        };
        if let Some((earlier_image, earlier)) = last.get(&group)
            && *earlier_image == image
        {
            out.push(format!(
                "{group} moved to {image} twice: {earlier}, then {id} ({status})"
            ));
        }
        if failed {
            last.remove(&group);
        } else {
            last.insert(group, (image, format!("{id} ({status})")));
        }
    };
    for u in facts.updates.iter().filter(|u| u.kind == "VersionUpdate") {
        let Some(nodegroup) = &u.nodegroup else {
            continue;
        };
        let image = image_of(
            u.params.get("LaunchTemplateId").map(String::as_str),
            u.params.get("LaunchTemplateVersion").map(String::as_str),
        );
        note(
            format!("node group {}/{nodegroup}", u.cluster),
            image,
            &u.id,
            &u.status,
        );
    }
    for r in &facts.refreshes {
        let image = image_of(r.template.as_deref(), r.version.as_deref());
        note(
            format!("Auto Scaling group {}", r.group),
            image,
            &r.id,
            &r.status,
        );
    }
    out
}

/// The image ids (`ami-…`) among a mutation's resources.
fn images_of(m: &crate::moto::Mutation) -> Vec<&str> {
    m.resource_ids()
        .into_iter()
        .filter(|id| id.starts_with("ami-"))
        .collect()
}

/// The tags an image had when `m` arrived.
fn tags_then<'m>(
    m: &'m crate::moto::Mutation,
    image: &str,
) -> Option<&'m BTreeMap<String, String>> {
    m.resource_tags
        .iter()
        .find(|(arn, _)| arn.ends_with(&format!("/{image}")))
        .map(|(_, tags)| tags)
}

/// 3. No AMI back to `active` after `deprecated` or `quarantined` (its tags as the emulator
///    saw them when the request arrived).
fn reactivations(mutations: &[crate::moto::Mutation]) -> Vec<String> {
    let mut out = Vec::new();
    for m in mutations
        .iter()
        .filter(|m| m.action == "ec2:CreateTags" && m.done())
        .filter(|m| m.request_tags.get("status").map(String::as_str) == Some("active"))
    {
        for image in images_of(m) {
            if let Some(before) = tags_then(m, image)
                .and_then(|t| t.get("status"))
                .filter(|b| *b == "deprecated" || *b == "quarantined")
            {
                out.push(format!(
                    "{image} went back to active after it was {before} (mutation {})",
                    m.seq
                ));
            }
        }
    }
    out
}

/// Whether some Event of `events` with `reason` (any when `None`) and `kind` names `text`.
fn named_in(events: &[Event], kind: &str, reason: Option<&str>, text: &str) -> bool {
    events.iter().any(|e| {
        e.type_.as_deref() == Some(kind)
            && reason.is_none_or(|r| e.reason.as_deref() == Some(r))
            && e.note.as_deref().is_some_and(|n| n.contains(text))
    })
}

/// 4. Every AMI a build produced is tagged with the contract or named in a Warning Event.
fn orphans(
    scope: &Scope<'_>,
    facts: &Facts,
    mutations: &[crate::moto::Mutation],
    events: &[Event],
) -> Vec<String> {
    scope
        .built
        .iter()
        .filter(|id| {
            let tagged_now = facts.images.iter().any(|i| {
                &i.id == *id
                    && i.tags.get("brought-to-you-by").map(String::as_str)
                        == Some("opsy-the-ami-operator")
            });
            let tagged_once = mutations.iter().any(|m| {
                m.action == "ec2:CreateTags"
                    && m.done()
                    && m.request_tags.contains_key("brought-to-you-by")
                    && images_of(m).contains(&id.as_str())
            });
            !tagged_now && !tagged_once && !named_in(events, "Warning", None, id)
        })
        .map(|id| format!("{id}, built, is neither tagged nor named in a Warning Event"))
        .collect()
}

/// 5. No `healthy-on/<account>/<cluster>` (or `healthy-on/<cluster>`) without a group of the cluster healthy on the AMI, nor while a
///    group of the cluster that AWS moved to the AMI has no health verdict on it.
fn evidence(facts: &Facts, mutations: &[crate::moto::Mutation], events: &[Event]) -> Vec<String> {
    let mut out = Vec::new();
    let healthy = |group: &str, image: &str| {
        events.iter().any(|e| {
            e.reason.as_deref() == Some("NodeGroupHealthy")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("{group} ")) && n.contains(image))
        })
    };
    for m in mutations
        .iter()
        .filter(|m| m.action == "ec2:CreateTags" && m.done())
    {
        for (key, cluster) in m
            .request_tags
            .keys()
            .filter_map(|k| Some((k, opsy_api::tags::parse_healthy_on(k)?.1)))
        {
            for image in images_of(m) {
                if !named_in(events, "Normal", Some("NodeGroupHealthy"), image) {
                    out.push(format!(
                        "{key} written on {image} (mutation {}) without a node group that passed the health gate on it",
                        m.seq
                    ));
                }
                for group in moved_to(facts, cluster, image) {
                    if !healthy(&group, image) {
                        out.push(format!(
                            "{key} written on {image} (mutation {}) though {group}, moved to it, has no health verdict",
                            m.seq
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The image launch template version `version` of `template` launches.
fn image_of(facts: &Facts, template: Option<&str>, version: Option<&str>) -> Option<String> {
    let version: i64 = version?.parse().ok()?;
    facts
        .template_versions
        .iter()
        .find(|v| Some(v.template.as_str()) == template && v.version == version)
        .and_then(|v| v.image.clone())
}

/// The groups of `cluster` whose update or instance refresh to `image` succeeded: managed node
/// groups by name, self-managed Auto Scaling groups (whose refreshes name no cluster) by name.
fn moved_to(facts: &Facts, cluster: &str, image: &str) -> BTreeSet<String> {
    let managed = facts
        .updates
        .iter()
        .filter(|u| u.cluster == cluster && u.kind == "VersionUpdate" && u.status == "Successful");
    let managed = managed
        .filter(|u| {
            image_of(
                facts,
                u.params.get("LaunchTemplateId").map(String::as_str),
                u.params.get("LaunchTemplateVersion").map(String::as_str),
            )
            .as_deref()
                == Some(image)
        })
        .filter_map(|u| u.nodegroup.clone());
    let refreshed = facts
        .refreshes
        .iter()
        .filter(|r| r.status == "Successful")
        .filter(|r| {
            image_of(facts, r.template.as_deref(), r.version.as_deref()).as_deref() == Some(image)
        })
        .map(|r| r.group.clone());
    managed.chain(refreshed).collect()
}

/// 6. Only snapshots of deregistered managed AMIs deleted; no AMI in use deregistered.
fn deletions(facts: &Facts, mutations: &[crate::moto::Mutation]) -> Vec<String> {
    let mut out = Vec::new();
    let mut freed: BTreeSet<&str> = BTreeSet::new();
    let mut deregistered: BTreeSet<&str> = BTreeSet::new();
    for m in mutations.iter().filter(|m| m.done()) {
        match m.action.as_str() {
            "ec2:DeregisterImage" => {
                for image in images_of(m) {
                    let managed = tags_then(m, image)
                        .and_then(|t| t.get("brought-to-you-by"))
                        .is_some_and(|v| v == "opsy-the-ami-operator");
                    if !managed {
                        out.push(format!("{image}, not a managed AMI, was deregistered"));
                    }
                    deregistered.insert(image);
                }
                freed.extend(m.snapshots.iter().map(String::as_str));
                // Snapshots deleted with the image: only marked ones.
                for snapshot in m.snapshots.iter().filter(|_| m.deletes_snapshots) {
                    let marked = m
                        .resource_tags
                        .iter()
                        .find(|(arn, _)| arn.ends_with(&format!("/{snapshot}")))
                        .and_then(|(_, t)| t.get("brought-to-you-by"))
                        .is_some_and(|v| v == "opsy-the-ami-operator");
                    if !marked {
                        out.push(format!(
                            "snapshot {snapshot}, not marked as the operator's, deleted with its image (mutation {})",
                            m.seq
                        ));
                    }
                }
            }
            "ec2:DeleteSnapshot" => {
                for snapshot in m.resource_ids() {
                    if !freed.contains(snapshot) {
                        out.push(format!(
                            "snapshot {snapshot} deleted (mutation {}) though no deregistered managed AMI owned it",
                            m.seq
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    for image in deregistered {
        let in_template = facts
            .template_versions
            .iter()
            .filter(|v| v.image.as_deref() == Some(image))
            .map(|v| format!("{} version {}", v.template, v.version));
        let on_instance = facts
            .instances
            .iter()
            .filter(|i| i.image == image && i.state != "terminated")
            .map(|i| format!("instance {}", i.id));
        let users: Vec<String> = in_template.chain(on_instance).collect();
        if !users.is_empty() {
            out.push(format!(
                "{image} was deregistered while in use by {}",
                users.join(", ")
            ));
        }
    }
    out
}

/// 7. One build at a time per PackerBuilder: never two of its Jobs unfinished at once.
fn builds(jobs: &[Job]) -> Vec<String> {
    let finished = |job: &Job| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True"
                })
            })
    };
    let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for job in jobs
        .iter()
        .filter(|j| !finished(j) && j.metadata.deletion_timestamp.is_none())
    {
        let builder = job
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("ami.refresh.ops/packer-builder"))
            .cloned()
            .unwrap_or_default();
        running
            .entry(builder)
            .or_default()
            .push(job.metadata.name.clone().unwrap_or_default());
    }
    running
        .into_iter()
        .filter(|(_, jobs)| jobs.len() > 1)
        .map(|(builder, jobs)| {
            format!(
                "PackerBuilder {builder} runs {} builds at once: {}",
                jobs.len(),
                jobs.join(", ")
            )
        })
        .collect()
}

/// 8. At most one copy of an AMI per region.
fn copies(facts: &Facts) -> Vec<String> {
    let mut seen: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for image in &facts.images {
        if let Some(source) = image.tags.get("source-ami") {
            seen.entry((source, &image.region))
                .or_default()
                .push(&image.id);
        }
    }
    seen.into_iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|((source, region), copies)| {
            format!(
                "{source} copied to {region} {} times: {copies:?}",
                copies.len()
            )
        })
        .collect()
}
