//! `ami-refresh-operator plan`: the target AMI and what would happen to each node group, and
//! why, from AWS alone and without changing anything (only Describe and List calls).

use jiff::Timestamp;
use kube::ResourceExt;
use opsy_api::{AMIRefresher, ami_refresher::NodeGroupPhase};
use opsy_aws::AwsClients;
use serde::Serialize;

use crate::{Error, observe::observe_groups, plan::plan};

/// One group and what would happen to it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupAction {
    /// Group name.
    pub name: String,
    /// `Managed` or `SelfManaged`.
    pub kind: String,
    /// `update`, `none`, `excluded` or `skipped`.
    pub action: String,
    /// Whether its update would start in the first wave.
    pub first_wave: bool,
    /// Details: the launch template change, or why nothing happens.
    pub detail: String,
}

/// The report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// `namespace/name` of the AMIRefresher.
    pub resource: String,
    /// The AMI that would be rolled out.
    pub target: Option<String>,
    /// How the candidates were judged.
    pub selection: String,
    /// One entry per group.
    pub groups: Vec<GroupAction>,
    /// Names in `exclude` or `rollout.canary` that match no group.
    pub unknown_groups: Vec<String>,
}

/// Builds the report for `amr` at `now`.
pub async fn report(aws: &AwsClients, amr: &AMIRefresher, now: Timestamp) -> Result<Report, Error> {
    let spec = &amr.spec;
    let selection = aws
        .select_target(
            spec.ami.as_deref(),
            spec.ami_filters.as_deref(),
            opsy_aws::managed::Scope {
                cluster_name: &spec.cluster_name,
                accept_from: &spec.accept_from,
            },
            spec.effective_expires_in().as_std(),
            now,
        )
        .await?;
    let resource = format!(
        "{}/{}",
        amr.namespace().unwrap_or_else(|| "default".into()),
        amr.name_any()
    );
    let Some(target) = selection.chosen.as_ref().map(|c| c.image.id.clone()) else {
        return Ok(Report {
            resource,
            target: None,
            selection: selection.explain(),
            groups: Vec::new(),
            unknown_groups: Vec::new(),
        });
    };
    let groups = observe_groups(aws, amr).await?;
    let plan = plan(spec, &target, &groups, &[], false);
    let actions = plan
        .groups
        .iter()
        .map(|g| {
            let (action, detail) = match g.phase {
                NodeGroupPhase::Excluded => ("excluded", g.message.clone().unwrap_or_default()),
                NodeGroupPhase::Skipped => ("skipped", g.message.clone().unwrap_or_default()),
                NodeGroupPhase::Pending => (
                    "update",
                    format!(
                        "{} → {target}: new version of launch template {} from v{}",
                        g.from_image.as_deref().unwrap_or("?"),
                        g.launch_template_id.as_deref().unwrap_or("?"),
                        g.from_version.as_deref().unwrap_or("?")
                    ),
                ),
                _ => ("none", format!("runs {target}")),
            };
            GroupAction {
                name: g.name.clone(),
                kind: format!("{:?}", g.kind),
                action: action.to_owned(),
                first_wave: plan.start.contains(&g.name),
                detail,
            }
        })
        .collect();
    Ok(Report {
        resource,
        target: Some(target),
        selection: selection.explain(),
        groups: actions,
        unknown_groups: plan.unknown,
    })
}

impl Report {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = format!("AMIRefresher {}\n", self.resource);
        match &self.target {
            Some(target) => out.push_str(&format!("  target AMI: {target}\n")),
            None => out.push_str("  target AMI: none — nothing would be rolled out\n"),
        }
        out.push_str(&format!("  candidates: {}\n", self.selection));
        for g in &self.groups {
            let wave = if g.first_wave { " (first wave)" } else { "" };
            out.push_str(&format!(
                "  {:<20} {:<11} {:<8}{wave} {}\n",
                g.name, g.kind, g.action, g.detail
            ));
        }
        if !self.unknown_groups.is_empty() {
            out.push_str(&format!(
                "  warning: no such groups: {}\n",
                self.unknown_groups.join(", ")
            ));
        }
        out
    }
}
