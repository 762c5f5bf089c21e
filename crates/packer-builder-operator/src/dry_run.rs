//! `packer-builder-operator plan`: what the operator would do for a PackerBuilder, and why,
//! from AWS alone and without changing anything (only Describe calls).

use jiff::Timestamp;
use kube::ResourceExt;
use opsy_api::{PackerBuilder, tags};
use opsy_aws::{AwsError, ClientSet, managed::BuildIdentity};
use serde::Serialize;

use crate::{
    commands::{BaseVars, display, plan},
    decide::{Decision, Observed, decide},
};

/// One managed AMI and its verdict.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ManagedAmi {
    /// AMI id.
    pub id: String,
    /// AMI name.
    pub name: String,
    /// Its `base-ami` tag.
    pub base_ami: Option<String>,
    /// `eligible`, or why not.
    pub verdict: String,
    /// Its fate under `spec.retention` (`Keep: why`, `Deregister: what it frees`); none for
    /// the active AMI.
    pub fate: Option<String>,
}

/// The report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// `namespace/name` of the PackerBuilder.
    pub resource: String,
    /// The base AMI found with the filters.
    pub base_ami: Option<String>,
    /// Its name.
    pub base_ami_name: Option<String>,
    /// Managed AMIs of this PackerBuilder, newest first.
    pub managed_amis: Vec<ManagedAmi>,
    /// `build`, `none` or `blocked`.
    pub action: String,
    /// Why.
    pub reason: String,
    /// The Packer commands a build would run.
    pub commands: Option<String>,
    /// Each `spec.distribution` region: its copies and what would be copied there.
    pub copies: Vec<RegionCopies>,
}

/// The copies in one region of `spec.distribution.regions`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegionCopies {
    /// The region.
    pub region: String,
    /// This PackerBuilder's AMIs there, newest first, with their verdicts and fates.
    pub amis: Vec<ManagedAmi>,
    /// The active AMI, when it has no copy there yet (the operator would copy it).
    pub would_copy: Option<String>,
}

fn listed(
    selection: &opsy_aws::managed::Selection,
    fates: &[opsy_api::packer_builder::ImageFate],
    region: Option<&str>,
) -> Vec<ManagedAmi> {
    selection
        .candidates
        .iter()
        .map(|c| ManagedAmi {
            fate: fates
                .iter()
                .find(|f| f.image == c.image.id && f.region.as_deref() == region)
                .map(|f| format!("{}: {}", f.fate, f.reason)),
            id: c.image.id.clone(),
            name: c.image.name.clone(),
            base_ami: c.image.tag(tags::BASE_AMI).map(str::to_owned),
            verdict: c
                .rejected
                .as_ref()
                .map_or_else(|| "eligible".to_owned(), ToString::to_string),
        })
        .collect()
}

/// Builds the report for `pb` at `now`.
pub async fn report(
    clients: &ClientSet,
    pb: &PackerBuilder,
    now: Timestamp,
) -> Result<Report, AwsError> {
    let aws = &*clients.region(&pb.spec.region).await;
    let filters = pb.spec.ami_filters.as_deref().filter(|f| !f.is_empty());
    let base = crate::base::resolve_base(aws, pb).await?.image;
    let identity = BuildIdentity::of(pb);
    let managed = aws
        .managed_images(&identity, pb.spec.time_outs.expires_in.as_std(), now)
        .await?;
    // The failed builds as the operator counts them, from the status given.
    let mut counting = pb.status.clone().unwrap_or_default();
    let base_id = base.as_ref().map(|b| b.id.as_str());
    let retry = pb
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(opsy_api::packer_builder::RETRY_ANNOTATION));
    crate::quarantines::count(&mut counting, &managed, retry.map(String::as_str), base_id);
    let decision = decide(&Observed {
        region: &pb.spec.region,
        has_filters: filters.is_some() || pb.spec.ami_parameter.is_some(),
        base: base.as_ref(),
        managed: &managed,
        job: None,
        recorded_running_job: None,
        recorded_active: None,
        suspended: pb.spec.suspend,
        window_closed: match opsy_api::windows::Windows::parse(
            &pb.spec.maintenance_windows,
            "spec.maintenanceWindows",
        ) {
            Ok(w) => {
                let state = w.at(now);
                (!state.open).then(|| state.closed_message("spec.maintenanceWindows"))
            }
            Err(message) => Some(format!("invalid maintenance window: {message}")),
        },
        failures: crate::quarantines::counted(&counting),
        max_failures: pb.spec.max_failed_builds,
    });
    let base_vars = base.as_ref().map(|b| BaseVars {
        ami_id: b.id.clone(),
        region: pb.spec.region.clone(),
    });
    let (action, reason, commands) = match decision {
        Decision::Build { reason } => (
            "build",
            reason.describe(),
            Some(display(&plan(
                &pb.spec.builder,
                base_vars.as_ref(),
                crate::base::single_architecture(pb),
            ))),
        ),
        Decision::Adopt { image } => (
            "none",
            format!(
                "{image} is eligible and built from the current base (adopted if status does not record it yet)"
            ),
            None,
        ),
        Decision::UpToDate { image } => ("none", format!("{image} is eligible"), None),
        Decision::Suspended { reason } => (
            "blocked",
            format!(
                "spec.suspend is set; a build is needed: {}",
                reason.describe()
            ),
            None,
        ),
        Decision::OutsideWindow { reason, window } => (
            "blocked",
            format!("a build is needed ({}) but {window}", reason.describe()),
            None,
        ),
        Decision::NoBaseImage => (
            "blocked",
            "no available image matches spec.amiFilters".to_owned(),
            None,
        ),
        Decision::FailureLimit { reason } => (
            "blocked",
            format!(
                "a build is needed ({}) but {} builds failed ({} quarantined; spec.maxFailedBuilds {}): waits for a new base AMI, a spec change or {}",
                reason.describe(),
                crate::quarantines::counted(&counting),
                counting.quarantined_builds,
                pb.spec.max_failed_builds,
                opsy_api::packer_builder::RETRY_ANNOTATION
            ),
            None,
        ),
        // Only reachable with Kubernetes state, which plan does not read.
        other => ("none", format!("{other:?}"), None),
    };
    // Each AMI's fate, with deletion off whatever the spec says: plan changes nothing.
    let mut scratch = pb.status.clone().unwrap_or_default();
    if scratch.active_image.is_none() {
        scratch.active_image = managed.chosen.as_ref().map(|c| opsy_api::ImageRef {
            id: c.image.id.clone(),
            ..opsy_api::ImageRef::default()
        });
    }
    scratch.retention_checked = None;
    let read_only = opsy_api::packer_builder::Retention {
        delete: false,
        ..pb.spec.retention.clone()
    };
    let active = scratch.active_image.as_ref().map(|i| i.id.clone());
    let expires_in = pb.spec.time_outs.expires_in.as_std();
    let mut regional = Vec::new();
    for entry in pb
        .spec
        .distribution
        .as_ref()
        .map(|d| d.regions.as_slice())
        .unwrap_or_default()
    {
        let there = clients.region(&entry.region).await;
        let copies = there.managed_images(&identity, expires_in, now).await?;
        let copy = copies
            .candidates
            .iter()
            .find(|c| active.is_some() && c.image.tag(tags::SOURCE_AMI) == active.as_deref())
            .map(|c| c.image.id.clone());
        regional.push((entry.region.clone(), there, copies, copy));
    }
    let mut places = vec![crate::retention::Place {
        region: None,
        aws,
        managed: &managed,
        active: active.as_deref(),
    }];
    places.extend(
        regional
            .iter()
            .map(|(region, there, copies, copy)| crate::retention::Place {
                region: Some(region),
                aws: there,
                managed: copies,
                active: copy.as_deref(),
            }),
    );
    crate::retention::apply(
        &places,
        crate::retention::Refreshers::NotLooked,
        &read_only,
        &mut scratch,
        now,
    )
    .await?;
    let fates = scratch.retention;
    let copies = regional
        .iter()
        .map(|(region, _, selection, copy)| RegionCopies {
            region: region.clone(),
            amis: listed(selection, &fates, Some(region)),
            would_copy: match copy {
                None => active.clone(),
                Some(_) => None,
            },
        })
        .collect();
    Ok(Report {
        resource: format!(
            "{}/{}",
            pb.namespace().unwrap_or_else(|| "default".into()),
            pb.name_any()
        ),
        base_ami: base.as_ref().map(|b| b.id.clone()),
        base_ami_name: base.as_ref().map(|b| b.name.clone()),
        managed_amis: listed(&managed, &fates, None),
        action: action.to_owned(),
        reason,
        commands,
        copies,
    })
}

impl Report {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = format!("PackerBuilder {}\n", self.resource);
        match (&self.base_ami, &self.base_ami_name) {
            (Some(id), Some(name)) => out.push_str(&format!("  base AMI:     {id} ({name})\n")),
            _ => out.push_str("  base AMI:     none\n"),
        }
        if self.managed_amis.is_empty() {
            out.push_str("  managed AMIs: none\n");
        } else {
            out.push_str("  managed AMIs:\n");
            for ami in &self.managed_amis {
                out.push_str(&format!(
                    "    {} ({}) from {}: {}\n",
                    ami.id,
                    ami.name,
                    ami.base_ami.as_deref().unwrap_or("?"),
                    ami.verdict
                ));
                if let Some(fate) = &ami.fate {
                    out.push_str(&format!("      retention: {fate}\n"));
                }
            }
        }
        out.push_str(&format!(
            "  action:       {} — {}\n",
            self.action, self.reason
        ));
        if let Some(commands) = &self.commands {
            out.push_str(&format!("  would run:    {commands}\n"));
        }
        for region in &self.copies {
            out.push_str(&format!("  copies in {}:\n", region.region));
            if let Some(id) = &region.would_copy {
                out.push_str(&format!("    would copy {id} there\n"));
            }
            for ami in &region.amis {
                out.push_str(&format!("    {} ({}): {}\n", ami.id, ami.name, ami.verdict));
                if let Some(fate) = &ami.fate {
                    out.push_str(&format!("      retention: {fate}\n"));
                }
            }
        }
        let deregisters = self
            .managed_amis
            .iter()
            .chain(self.copies.iter().flat_map(|r| r.amis.iter()))
            .any(|a| {
                a.fate
                    .as_deref()
                    .is_some_and(|f| f.starts_with("Deregister"))
            });
        if deregisters {
            // The operator also keeps what an AMIRefresher names (its target, a group's
            // rollback image, a pin); plan reads AWS only, not the cluster.
            out.push_str(
                "  note:         plan reads AWS only: an AMI an AMIRefresher names (target, \
                 rollback image, pin) is kept by the operator even where plan says Deregister\n",
            );
        }
        out
    }
}
