//! EKS managed node groups: list, describe, update to a launch template version, follow.

use aws_sdk_eks::types::{LaunchTemplateSpecification, NodegroupUpdateConfig, UpdateStatus};

use crate::{
    AwsClients, AwsError,
    launch_templates::{TemplateRef, TemplateVersion},
};

/// A managed node group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroup {
    /// Its name.
    pub name: String,
    /// `ACTIVE`, `UPDATING`, `DEGRADED`, ...
    pub status: String,
    /// `AL2023_x86_64_STANDARD`, `CUSTOM`, ...
    pub ami_type: Option<String>,
    /// Its launch template, if it was created with one.
    pub launch_template: Option<NodeGroupTemplate>,
    /// Its `updateConfig`.
    pub max_unavailable: Option<MaxUnavailable>,
    /// `scalingConfig.desiredSize`: how many nodes it should have.
    pub desired_size: Option<i32>,
    /// `health.issues`: `(code, message)`, e.g. `NodeCreationFailure` when its instances do
    /// not join the cluster.
    pub health_issues: Vec<(String, String)>,
    /// `resources.autoScalingGroups`: the Auto Scaling groups EKS runs its nodes in.
    pub auto_scaling_groups: Vec<String>,
}

/// The launch template a node group uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroupTemplate {
    /// `lt-…`, when EKS reports it.
    pub id: Option<String>,
    /// The template's name, when EKS reports it.
    pub name: Option<String>,
    /// The version in use.
    pub version: String,
}

/// What can be done about a node group's AMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeGroupImage {
    /// The group has no launch template: EKS chooses its AMI (`amiType`); this operator cannot
    /// set one.
    NoLaunchTemplate {
        /// The group's AMI type.
        ami_type: Option<String>,
    },
    /// The group's launch template version sets no `ImageId`.
    TemplateWithoutImage {
        /// The version in use.
        template: TemplateVersion,
    },
    /// The group runs `template.image_id`.
    Image {
        /// The version in use.
        template: TemplateVersion,
        /// Its AMI.
        image_id: String,
    },
}

/// Where an EKS update stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateProgress {
    /// The update id.
    pub id: String,
    /// `VersionUpdate`, `ConfigUpdate`, ...
    pub kind: String,
    /// Its parameters, `(type, value)`: `LaunchTemplateVersion`, `Force`, `MaxUnavailable`, ...
    pub params: Vec<(String, String)>,
    /// `InProgress`, `Successful`, `Failed` or `Cancelled`.
    pub status: String,
    /// `code: message` of each error EKS reports.
    pub errors: Vec<String>,
    /// When EKS created it (seconds since the epoch, as EKS reports `createdAt`).
    pub created: Option<i64>,
}

impl UpdateProgress {
    /// Whether the update has ended, successfully or not.
    pub fn is_finished(&self) -> bool {
        self.status != UpdateStatus::InProgress.as_str()
    }

    /// Whether the update ended successfully.
    pub fn is_successful(&self) -> bool {
        self.status == UpdateStatus::Successful.as_str()
    }

    /// The launch template version a version update moves its group to, when it names one of
    /// `template_id` (an update that names the template by name only is taken as of it: a
    /// group's template cannot change).
    pub fn template_version(&self, template_id: &str) -> Option<i64> {
        if self.kind != "VersionUpdate"
            || self
                .param("LaunchTemplateId")
                .is_some_and(|id| id != template_id)
        {
            return None;
        }
        self.param("LaunchTemplateVersion")?.parse().ok()
    }

    /// The value of parameter `kind` (e.g. `LaunchTemplateVersion`).
    pub fn param(&self, kind: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, v)| v.as_str())
    }
}

/// `updateConfig` of a node group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    /// At most this many nodes.
    Count(i32),
    /// At most this percentage of nodes.
    Percentage(i32),
}

impl MaxUnavailable {
    /// Whether config update `update` sets exactly this.
    pub fn matches(&self, update: &UpdateProgress) -> bool {
        let (kind, value) = match self {
            Self::Count(n) => ("MaxUnavailable", n),
            Self::Percentage(p) => ("MaxUnavailablePercentage", p),
        };
        update.kind == "ConfigUpdate" && update.param(kind) == Some(value.to_string().as_str())
    }
}

impl std::fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "maxUnavailable {n}"),
            Self::Percentage(p) => write!(f, "maxUnavailablePercentage {p}"),
        }
    }
}

/// What EKS DescribeCluster says of a cluster that the operators use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The Kubernetes version (`major.minor`) of its control plane.
    pub version: Option<String>,
    /// The AWS account it is in (from its ARN): the account its soak evidence names.
    pub account: Option<String>,
}

impl AwsClients {
    /// The Kubernetes version (`major.minor`) of the cluster's control plane (EKS
    /// DescribeCluster); `None` when the cluster does not exist.
    pub async fn cluster_version(&self, cluster: &str) -> Result<Option<String>, AwsError> {
        Ok(self.cluster(cluster).await?.and_then(|c| c.version))
    }

    /// The cluster's version and account (EKS DescribeCluster); `None` when it does not exist.
    pub async fn cluster(&self, cluster: &str) -> Result<Option<ClusterInfo>, AwsError> {
        let request = self.eks.describe_cluster().name(cluster);
        match self.call("eks", "DescribeCluster", request.send()).await {
            Ok(answer) => Ok(answer.cluster.map(|c| ClusterInfo {
                account: c
                    .arn
                    .as_deref()
                    .and_then(opsy_api::tags::account_of_arn)
                    .map(str::to_owned),
                version: c.version,
            })),
            Err(AwsError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The names of the cluster's managed node groups (every page).
    pub async fn list_nodegroups(&self, cluster: &str) -> Result<Vec<String>, AwsError> {
        const OP: &str = "ListNodegroups";
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = self
                .eks
                .list_nodegroups()
                .cluster_name(cluster)
                .set_max_results(self.page_size)
                .set_next_token(token.take());
            let page = self.call("eks", OP, request.send()).await?;
            names.extend(page.nodegroups.unwrap_or_default());
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        Ok(names)
    }

    /// One node group.
    pub async fn describe_nodegroup(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<NodeGroup, AwsError> {
        const OP: &str = "DescribeNodegroup";
        let request = self
            .eks
            .describe_nodegroup()
            .cluster_name(cluster)
            .nodegroup_name(name);
        let response = self.call("eks", OP, request.send()).await?;
        let group = response.nodegroup.ok_or(AwsError::MissingField {
            service: "eks",
            operation: OP,
            field: "nodegroup",
        })?;
        Ok(NodeGroup {
            name: group.nodegroup_name.unwrap_or_else(|| name.to_owned()),
            status: group
                .status
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            ami_type: group.ami_type.map(|t| t.as_str().to_owned()),
            auto_scaling_groups: group
                .resources
                .as_ref()
                .map(|r| {
                    r.auto_scaling_groups()
                        .iter()
                        .filter_map(|g| g.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
            desired_size: group.scaling_config.as_ref().and_then(|c| c.desired_size),
            health_issues: group
                .health
                .and_then(|h| h.issues)
                .unwrap_or_default()
                .into_iter()
                .map(|i| {
                    (
                        i.code.map(|c| c.as_str().to_owned()).unwrap_or_default(),
                        i.message.unwrap_or_default(),
                    )
                })
                .collect(),
            max_unavailable: group.update_config.and_then(|c| {
                match (c.max_unavailable, c.max_unavailable_percentage) {
                    (Some(n), _) => Some(MaxUnavailable::Count(n)),
                    (None, Some(p)) => Some(MaxUnavailable::Percentage(p)),
                    (None, None) => None,
                }
            }),
            launch_template: group.launch_template.map(|t| NodeGroupTemplate {
                id: t.id,
                name: t.name,
                version: t.version.unwrap_or_else(|| "$Default".to_owned()),
            }),
        })
    }

    /// The AMI a node group runs, read from its launch template version.
    pub async fn nodegroup_image(&self, group: &NodeGroup) -> Result<NodeGroupImage, AwsError> {
        let Some(lt) = &group.launch_template else {
            return Ok(NodeGroupImage::NoLaunchTemplate {
                ami_type: group.ami_type.clone(),
            });
        };
        let template = match (&lt.id, &lt.name) {
            (Some(id), _) => TemplateRef::Id(id.clone()),
            (None, Some(name)) => TemplateRef::Name(name.clone()),
            (None, None) => {
                return Err(AwsError::MissingField {
                    service: "eks",
                    operation: "DescribeNodegroup",
                    field: "launchTemplate.id",
                });
            }
        };
        let template = self.launch_template_version(&template, &lt.version).await?;
        Ok(match template.image_id.clone() {
            Some(image_id) => NodeGroupImage::Image { template, image_id },
            None => NodeGroupImage::TemplateWithoutImage { template },
        })
    }

    /// Starts moving `group` to `version` of its launch template; returns the update id.
    pub async fn update_nodegroup_version(
        &self,
        cluster: &str,
        group: &str,
        template_id: &str,
        version: i64,
        force: bool,
    ) -> Result<String, AwsError> {
        const OP: &str = "UpdateNodegroupVersion";
        let request = self
            .eks
            .update_nodegroup_version()
            .cluster_name(cluster)
            .nodegroup_name(group)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .id(template_id)
                    .version(version.to_string())
                    .build(),
            )
            .force(force);
        let response = self.call("eks", OP, request.send()).await?;
        update_id(response.update, OP)
    }

    /// Sets how many nodes of `group` may be replaced at once; returns the update id.
    pub async fn update_nodegroup_config(
        &self,
        cluster: &str,
        group: &str,
        max_unavailable: MaxUnavailable,
    ) -> Result<String, AwsError> {
        const OP: &str = "UpdateNodegroupConfig";
        let config = match max_unavailable {
            MaxUnavailable::Count(n) => NodegroupUpdateConfig::builder().max_unavailable(n),
            MaxUnavailable::Percentage(p) => {
                NodegroupUpdateConfig::builder().max_unavailable_percentage(p)
            }
        }
        .build();
        let request = self
            .eks
            .update_nodegroup_config()
            .cluster_name(cluster)
            .nodegroup_name(group)
            .update_config(config);
        let response = self.call("eks", OP, request.send()).await?;
        update_id(response.update, OP)
    }

    /// Where update `id` of `group` stands.
    pub async fn describe_update(
        &self,
        cluster: &str,
        group: &str,
        id: &str,
    ) -> Result<UpdateProgress, AwsError> {
        const OP: &str = "DescribeUpdate";
        let request = self
            .eks
            .describe_update()
            .name(cluster)
            .nodegroup_name(group)
            .update_id(id);
        let response = self.call("eks", OP, request.send()).await?;
        let update = response.update.ok_or(AwsError::MissingField {
            service: "eks",
            operation: OP,
            field: "update",
        })?;
        Ok(UpdateProgress {
            id: update.id.unwrap_or_else(|| id.to_owned()),
            kind: update
                .r#type
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            params: update
                .params
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    (
                        p.r#type.map(|t| t.as_str().to_owned()).unwrap_or_default(),
                        p.value.unwrap_or_default(),
                    )
                })
                .collect(),
            status: update
                .status
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            errors: update
                .errors
                .unwrap_or_default()
                .into_iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.error_code
                            .map(|c| c.as_str().to_owned())
                            .unwrap_or_default(),
                        e.error_message.unwrap_or_default()
                    )
                })
                .collect(),
            created: update.created_at.map(|t| t.secs()),
        })
    }
}

impl AwsClients {
    /// The updates of `group` that are still in progress, whoever started them
    /// (`ListUpdates`, every page, then `DescribeUpdate` of each).
    pub async fn running_updates(
        &self,
        cluster: &str,
        group: &str,
    ) -> Result<Vec<UpdateProgress>, AwsError> {
        // Callers ask only when the group is UPDATING.
        let mut running = self.updates(cluster, group).await?;
        running.retain(|u| !u.is_finished());
        Ok(running)
    }

    /// Every update of `group`, ended or not (`ListUpdates`, every page, then `DescribeUpdate`
    /// of each: ListUpdates says nothing of their state).
    pub async fn updates(
        &self,
        cluster: &str,
        group: &str,
    ) -> Result<Vec<UpdateProgress>, AwsError> {
        const OP: &str = "ListUpdates";
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = self
                .eks
                .list_updates()
                .name(cluster)
                .nodegroup_name(group)
                .set_max_results(self.page_size)
                .set_next_token(token.take());
            let page = self.call("eks", OP, request.send()).await?;
            ids.extend(page.update_ids.unwrap_or_default());
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        let mut updates = Vec::with_capacity(ids.len());
        for id in &ids {
            updates.push(self.describe_update(cluster, group, id).await?);
        }
        Ok(updates)
    }
}

fn update_id(
    update: Option<aws_sdk_eks::types::Update>,
    operation: &'static str,
) -> Result<String, AwsError> {
    update.and_then(|u| u.id).ok_or(AwsError::MissingField {
        service: "eks",
        operation,
        field: "update.id",
    })
}
