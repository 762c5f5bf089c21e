//! Self-managed node groups: the cluster's Auto Scaling groups and their instance refreshes.

use aws_sdk_autoscaling::types::{
    DesiredConfiguration, Filter, LaunchTemplateSpecification, RefreshPreferences,
};

use crate::{AwsClients, AwsError};

/// The tag EKS puts on the Auto Scaling groups behind managed node groups; those are updated
/// through EKS, never directly.
pub const EKS_NODEGROUP_TAG: &str = "eks:nodegroup-name";

/// A self-managed Auto Scaling group of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoScalingGroup {
    /// Its name.
    pub name: String,
    /// Its launch template, when it uses one directly (not a mixed instances policy).
    pub launch_template: Option<GroupTemplate>,
    /// Whether it uses a mixed instances policy (not supported: reported as skipped).
    pub mixed_instances: bool,
    /// Its instances, each with the launch template version it was launched from.
    pub instances: Vec<GroupInstance>,
    /// How many instances it should have.
    pub desired_capacity: Option<i32>,
}

impl AutoScalingGroup {
    fn of(group: aws_sdk_autoscaling::types::AutoScalingGroup) -> Self {
        let template = |t: LaunchTemplateSpecification| GroupTemplate {
            id: t.launch_template_id,
            name: t.launch_template_name,
            version: t.version.unwrap_or_else(|| "$Default".to_owned()),
        };
        AutoScalingGroup {
            name: group.auto_scaling_group_name.unwrap_or_default(),
            instances: group
                .instances
                .unwrap_or_default()
                .into_iter()
                .map(|i| GroupInstance {
                    id: i.instance_id.unwrap_or_default(),
                    launch_template: i.launch_template.map(template),
                })
                .collect(),
            desired_capacity: group.desired_capacity,
            mixed_instances: group.mixed_instances_policy.is_some(),
            launch_template: group.launch_template.map(template),
        }
    }
}

/// An instance of an Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInstance {
    /// `i-…`
    pub id: String,
    /// The launch template it was launched from, when it was launched from one.
    pub launch_template: Option<GroupTemplate>,
}

/// The launch template an Auto Scaling group uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTemplate {
    /// `lt-…`
    pub id: Option<String>,
    /// The template's name.
    pub name: Option<String>,
    /// The version in use (`$Latest`, `$Default` or a number).
    pub version: String,
}

/// Instance refresh preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Percentage of the group kept in service.
    pub min_healthy_percentage: i32,
    /// Seconds a new instance needs before it counts as healthy.
    pub instance_warmup: Option<i32>,
    /// Leave instances already on the desired configuration alone.
    pub skip_matching: bool,
    /// Roll back when the refresh fails.
    pub auto_rollback: bool,
}

/// Where an instance refresh stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshProgress {
    /// The refresh id.
    pub id: String,
    /// The launch template version of its `DesiredConfiguration`, if it has one.
    pub desired: Option<GroupTemplate>,
    /// `Pending`, `InProgress`, `Successful`, `Failed`, `Cancelling`, `Cancelled`,
    /// `RollbackInProgress`, `RollbackFailed`, `RollbackSuccessful`, `Baking`.
    pub status: String,
    /// 0–100.
    pub percentage_complete: Option<i32>,
    /// AWS's explanation.
    pub reason: Option<String>,
}

impl RefreshProgress {
    /// Whether the refresh has ended, successfully or not.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Successful" | "Failed" | "Cancelled" | "RollbackFailed" | "RollbackSuccessful"
        )
    }

    /// Whether the refresh ended successfully.
    pub fn is_successful(&self) -> bool {
        self.status == "Successful"
    }
}

impl AwsClients {
    /// The cluster's self-managed Auto Scaling groups (tag `kubernetes.io/cluster/<cluster>`),
    /// without the groups behind EKS managed node groups. Every page.
    pub async fn cluster_auto_scaling_groups(
        &self,
        cluster: &str,
    ) -> Result<Vec<AutoScalingGroup>, AwsError> {
        const OP: &str = "DescribeAutoScalingGroups";
        let mut groups = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = self
                .autoscaling
                .describe_auto_scaling_groups()
                .filters(
                    Filter::builder()
                        .name("tag-key")
                        .values(format!("kubernetes.io/cluster/{cluster}"))
                        .build(),
                )
                .set_max_records(self.page_size)
                .set_next_token(token.take());
            let page = self.call("autoscaling", OP, request.send()).await?;
            for group in page.auto_scaling_groups.unwrap_or_default() {
                let managed_by_eks = group
                    .tags()
                    .iter()
                    .any(|t| t.key.as_deref() == Some(EKS_NODEGROUP_TAG));
                if managed_by_eks {
                    continue;
                }
                groups.push(AutoScalingGroup::of(group));
            }
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(groups)
    }

    /// The Auto Scaling groups named `names` (those behind a managed node group, from its
    /// `resources.autoScalingGroups`) with their instances. Every page.
    pub async fn auto_scaling_groups(
        &self,
        names: &[String],
    ) -> Result<Vec<AutoScalingGroup>, AwsError> {
        const OP: &str = "DescribeAutoScalingGroups";
        let mut groups = Vec::new();
        if names.is_empty() {
            return Ok(groups);
        }
        let mut token: Option<String> = None;
        loop {
            let request = self
                .autoscaling
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(Some(names.to_vec()))
                .set_max_records(self.page_size)
                .set_next_token(token.take());
            let page = self.call("autoscaling", OP, request.send()).await?;
            groups.extend(
                page.auto_scaling_groups
                    .unwrap_or_default()
                    .into_iter()
                    .map(AutoScalingGroup::of),
            );
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        Ok(groups)
    }

    /// Starts replacing the instances of `group` with instances of `version` of launch template
    /// `template_id`, given as the refresh's `DesiredConfiguration`: the group itself moves to
    /// that version only when the refresh succeeds, and `AutoRollback` can undo it. Returns the
    /// refresh id.
    pub async fn start_instance_refresh(
        &self,
        group: &str,
        template_id: &str,
        version: i64,
        settings: &RefreshSettings,
    ) -> Result<String, AwsError> {
        const OP: &str = "StartInstanceRefresh";
        let preferences = RefreshPreferences::builder()
            .min_healthy_percentage(settings.min_healthy_percentage)
            .set_instance_warmup(settings.instance_warmup)
            .skip_matching(settings.skip_matching)
            .auto_rollback(settings.auto_rollback)
            .build();
        let desired = DesiredConfiguration::builder()
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(template_id)
                    .version(version.to_string())
                    .build(),
            )
            .build();
        let request = self
            .autoscaling
            .start_instance_refresh()
            .auto_scaling_group_name(group)
            .preferences(preferences)
            .desired_configuration(desired);
        let response = self.call("autoscaling", OP, request.send()).await?;
        response.instance_refresh_id.ok_or(AwsError::MissingField {
            service: "autoscaling",
            operation: OP,
            field: "InstanceRefreshId",
        })
    }

    /// The refreshes of `group` that have not ended (normally at most one).
    pub async fn running_instance_refreshes(
        &self,
        group: &str,
    ) -> Result<Vec<RefreshProgress>, AwsError> {
        const OP: &str = "DescribeInstanceRefreshes";
        let request = self
            .autoscaling
            .describe_instance_refreshes()
            .auto_scaling_group_name(group);
        let response = self.call("autoscaling", OP, request.send()).await?;
        Ok(response
            .instance_refreshes
            .unwrap_or_default()
            .into_iter()
            .map(progress)
            .filter(|p| !p.is_finished())
            .collect())
    }

    /// Where refresh `id` of `group` stands.
    pub async fn describe_instance_refresh(
        &self,
        group: &str,
        id: &str,
    ) -> Result<RefreshProgress, AwsError> {
        const OP: &str = "DescribeInstanceRefreshes";
        let request = self
            .autoscaling
            .describe_instance_refreshes()
            .auto_scaling_group_name(group)
            .instance_refresh_ids(id);
        let response = self.call("autoscaling", OP, request.send()).await?;
        response
            .instance_refreshes
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.instance_refresh_id.as_deref() == Some(id))
            .map(progress)
            .ok_or_else(|| AwsError::NotFound {
                service: "autoscaling",
                operation: OP,
                code: "InstanceRefreshNotFound".into(),
                message: format!("no instance refresh {id} on {group}"),
            })
    }

    /// Cancels the running refresh of `group`; returns its id.
    pub async fn cancel_instance_refresh(&self, group: &str) -> Result<String, AwsError> {
        const OP: &str = "CancelInstanceRefresh";
        let request = self
            .autoscaling
            .cancel_instance_refresh()
            .auto_scaling_group_name(group);
        let response = self.call("autoscaling", OP, request.send()).await?;
        response.instance_refresh_id.ok_or(AwsError::MissingField {
            service: "autoscaling",
            operation: OP,
            field: "InstanceRefreshId",
        })
    }
}

fn progress(refresh: aws_sdk_autoscaling::types::InstanceRefresh) -> RefreshProgress {
    RefreshProgress {
        id: refresh.instance_refresh_id.unwrap_or_default(),
        desired: refresh
            .desired_configuration
            .and_then(|d| d.launch_template)
            .map(|t| GroupTemplate {
                id: t.launch_template_id,
                name: t.launch_template_name,
                version: t.version.unwrap_or_else(|| "$Default".to_owned()),
            }),
        status: refresh
            .status
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        percentage_complete: refresh.percentage_complete,
        reason: refresh.status_reason,
    }
}
