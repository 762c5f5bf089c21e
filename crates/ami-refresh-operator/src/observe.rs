//! Observation: what the cluster's groups run, read from AWS (EKS node groups, Auto Scaling
//! groups and their instances, launch template versions) and from the cluster (Nodes).

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    policy::v1::PodDisruptionBudget,
};
use kube::{Api, ResourceExt, api::ListParams, core::Selector};
use opsy_api::{AMIRefresher, ami_refresher::NodeGroupKind};
use opsy_aws::{
    AwsClients,
    autoscaling::{GroupInstance, GroupTemplate},
    eks::NodeGroupImage,
    launch_templates::TemplateRef,
};

use crate::{
    Error,
    health::{NodeView, PodView},
    plan::{Group, GroupImage},
};

/// The cluster's managed node groups and (when enabled) self-managed Auto Scaling groups.
pub async fn observe_groups(aws: &AwsClients, amr: &AMIRefresher) -> Result<Vec<Group>, Error> {
    let cluster = &amr.spec.cluster_name;
    let mut groups = Vec::new();
    for name in aws.list_nodegroups(cluster).await? {
        let group = match aws.describe_nodegroup(cluster, &name).await {
            Ok(group) => group,
            // Deleted since it was listed.
            Err(opsy_aws::AwsError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let busy = group.status == "UPDATING";
        let image = match aws.nodegroup_image(&group).await? {
            NodeGroupImage::NoLaunchTemplate { ami_type } => GroupImage::NotManageable {
                reason: format!(
                    "no launch template: EKS chooses its AMI (amiType {})",
                    ami_type.as_deref().unwrap_or("unknown")
                ),
            },
            NodeGroupImage::TemplateWithoutImage { template } => GroupImage::NotManageable {
                reason: format!(
                    "launch template {} version {} sets no ImageId: EKS chooses its AMI",
                    template.template_id, template.version
                ),
            },
            // EKS moves a group to a new launch template version only when its nodes have been
            // replaced: the group's version is what its nodes run.
            NodeGroupImage::Image { template, image_id } => GroupImage::Runs {
                image_id,
                others: Vec::new(),
                template_id: template.template_id,
                version: template.version,
            },
        };
        groups.push(Group {
            name,
            kind: NodeGroupKind::Managed,
            image,
            busy,
            desired: group.desired_size,
            instances: Vec::new(),
            scaling_groups: group.auto_scaling_groups.clone(),
            lane: None,
            image_created: None,
            image_status: None,
        });
    }
    if amr.spec.self_managed.enabled {
        for asg in aws.cluster_auto_scaling_groups(cluster).await? {
            let image = match (&asg.launch_template, asg.mixed_instances) {
                (_, true) => GroupImage::NotManageable {
                    reason: "uses a mixed instances policy, which this operator does not update"
                        .into(),
                },
                (None, false) => GroupImage::NotManageable {
                    reason: "has no launch template (launch configurations are not supported)"
                        .into(),
                },
                (Some(t), false) => self_managed_image(aws, t, &asg.instances).await?,
            };
            groups.push(Group {
                name: asg.name,
                kind: NodeGroupKind::SelfManaged,
                image,
                busy: false,
                desired: asg.desired_capacity,
                instances: asg.instances.iter().map(|i| i.id.clone()).collect(),
                scaling_groups: Vec::new(),
                lane: None,
                image_created: None,
                image_status: None,
            });
        }
    }
    Ok(groups)
}

pub(crate) fn template_ref(id: Option<&String>, name: Option<&String>) -> TemplateRef {
    match (id, name) {
        (Some(id), _) => TemplateRef::Id(id.clone()),
        (None, Some(name)) => TemplateRef::Name(name.clone()),
        (None, None) => TemplateRef::Id(String::new()),
    }
}

/// What a self-managed group runs, judged from its instances (each launched from some version
/// of a launch template), not from the group's own template: a refresh that failed or never
/// ran leaves old instances behind however the group is configured.
async fn self_managed_image(
    aws: &AwsClients,
    template: &GroupTemplate,
    instances: &[GroupInstance],
) -> Result<GroupImage, Error> {
    let own = aws
        .launch_template_version(
            &template_ref(template.id.as_ref(), template.name.as_ref()),
            &template.version,
        )
        .await?;
    let Some(own_image) = own.image_id.clone() else {
        return Ok(GroupImage::NotManageable {
            reason: format!("launch template {} sets no ImageId", own.template_id),
        });
    };
    // Image per (template, version), looked up once each.
    let mut known: Known = BTreeMap::new();
    known.insert(
        (Some(own.template_id.clone()), own.version.to_string()),
        own_image.clone(),
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, image) in instance_images(aws, instances, &mut known).await? {
        *counts.entry(image).or_default() += 1;
    }
    // The image most instances run; the others are listed. No instances: what the group
    // would launch.
    let mut by_count: Vec<(String, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut images = by_count.into_iter().map(|(image, _)| image);
    let image_id = images.next().unwrap_or(own_image);
    Ok(GroupImage::Runs {
        image_id,
        others: images.collect(),
        template_id: own.template_id,
        version: own.version,
    })
}

/// The image of each `(template, version)`, as far as looked up.
type Known = BTreeMap<(Option<String>, String), String>;

/// The AMI each of `instances` was launched from, read from the launch template version it was
/// launched from (each version looked up once; `known` keeps them).
async fn instance_images(
    aws: &AwsClients,
    instances: &[GroupInstance],
    known: &mut Known,
) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for instance in instances {
        let image = match &instance.launch_template {
            None => "unknown (not launched from a launch template)".to_owned(),
            Some(t) => {
                let key = (t.id.clone(), t.version.clone());
                match known.get(&key) {
                    Some(image) => image.clone(),
                    None => {
                        let version = aws
                            .launch_template_version(
                                &template_ref(t.id.as_ref(), t.name.as_ref()),
                                &t.version,
                            )
                            .await?;
                        let image = version
                            .image_id
                            .unwrap_or_else(|| "unknown (template sets no ImageId)".to_owned());
                        known.insert(key, image.clone());
                        image
                    }
                }
            }
        };
        out.push((instance.id.clone(), image));
    }
    Ok(out)
}

/// The instances of managed groups, read from the Auto Scaling groups EKS runs their nodes in
/// (one `DescribeAutoScalingGroups` for all of them), and the AMI each was launched from. With a
/// custom AMI in the launch template EKS generates no bootstrap user data, so the label
/// `eks.amazonaws.com/nodegroup-image` may be missing or stale: nodes are matched by instance.
#[derive(Debug)]
pub struct ManagedInstances {
    scaling: Vec<opsy_aws::autoscaling::AutoScalingGroup>,
    known: Known,
}

impl ManagedInstances {
    /// Reads the Auto Scaling groups of `groups` (none when they name none).
    pub async fn read(aws: &AwsClients, groups: &[&Group]) -> Result<Self, Error> {
        let names: Vec<String> = groups
            .iter()
            .flat_map(|g| g.scaling_groups.iter().cloned())
            .collect();
        Ok(Self {
            scaling: aws.auto_scaling_groups(&names).await?,
            known: Known::new(),
        })
    }

    /// The instances of managed group `group` launched from `target`; `None` when EKS names no
    /// Auto Scaling group for it.
    pub async fn on(
        &mut self,
        aws: &AwsClients,
        group: &Group,
        target: &str,
    ) -> Result<Option<Vec<String>>, Error> {
        if group.scaling_groups.is_empty() {
            return Ok(None);
        }
        let mut on = Vec::new();
        for asg in self
            .scaling
            .iter()
            .filter(|a| group.scaling_groups.contains(&a.name))
        {
            for (id, image) in instance_images(aws, &asg.instances, &mut self.known).await? {
                if image == target {
                    on.push(id);
                }
            }
        }
        Ok(Some(on))
    }
}

/// Refuses to move the groups of `groups` that would move now while an Auto Scaling group of
/// the cluster follows their launch template at `$Latest` (see `rollout.allowLatestFollowers`):
/// such a group becomes not manageable, with the followers and the fix. The cluster's Auto
/// Scaling groups are read (one `DescribeAutoScalingGroups`, every page) only when some group
/// would move. Groups behind managed node groups run EKS's own copy of the template and never
/// follow ours. (`$Default` followers are not affected: this operator never changes a
/// template's default version.) Returns the groups refused, with why.
pub async fn refuse_latest_followers(
    aws: &AwsClients,
    amr: &AMIRefresher,
    targets: &crate::plan::Targets,
    previous: &[opsy_api::ami_refresher::NodeGroupStatus],
    groups: &mut [Group],
) -> Result<Vec<(String, String)>, Error> {
    let spec = &amr.spec;
    if spec.rollout.allow_latest_followers {
        return Ok(Vec::new());
    }
    let would_move = |g: &Group| match &g.image {
        GroupImage::Runs { image_id, .. } => {
            !spec.exclude.contains(&g.name)
                && targets.of(g).is_ok_and(|t| t != image_id)
                && !previous
                    .iter()
                    .any(|p| p.name == g.name && p.phase.in_flight())
        }
        GroupImage::NotManageable { .. } => false,
    };
    if !groups.iter().any(would_move) {
        return Ok(Vec::new());
    }
    let scaling = aws.cluster_auto_scaling_groups(&spec.cluster_name).await?;
    let mut refused = Vec::new();
    for group in groups.iter_mut() {
        if !would_move(group) {
            continue;
        }
        let GroupImage::Runs { template_id, .. } = &group.image else {
            continue;
        };
        let followers: Vec<&str> = scaling
            .iter()
            .filter(|a| {
                a.launch_template.as_ref().is_some_and(|t| {
                    t.id.as_deref() == Some(template_id.as_str()) && t.version == "$Latest"
                })
            })
            .map(|a| a.name.as_str())
            .collect();
        if followers.is_empty() {
            continue;
        }
        let reason = format!(
            "launch template {template_id} is followed at $Latest by Auto Scaling group(s) {}: the new version would go live at once for their scale-outs, before any health gate; give them a numbered version, or set rollout.allowLatestFollowers",
            followers.join(", ")
        );
        group.image = GroupImage::NotManageable {
            reason: reason.clone(),
        };
        refused.push((group.name.clone(), reason));
    }
    Ok(refused)
}

/// Every Node of the cluster, from the API server's cache: nodes are matched to groups by
/// instance (`spec.providerID`), their labels serving only as a fallback.
pub async fn nodes_of(client: &kube::Client) -> Result<Vec<NodeView>, Error> {
    Ok(Api::<Node>::all(client.clone())
        .list(&ListParams::default().match_any())
        .await?
        .items
        .iter()
        .map(NodeView::of)
        .collect())
}

/// The pods on `nodes`: one list per node by `spec.nodeName`, served from the API server's
/// cache (`resourceVersion=0`), where pods are indexed by node.
pub async fn pods_on(client: &kube::Client, nodes: &[&str]) -> Result<Vec<PodView>, Error> {
    let api = Api::<Pod>::all(client.clone());
    let mut pods = Vec::new();
    for node in nodes {
        let params = ListParams::default()
            .fields(&format!("spec.nodeName={node}"))
            .match_any();
        pods.extend(api.list(&params).await?.items.iter().map(PodView::of));
    }
    Ok(pods)
}

/// The drain pre-flight of `groups`, about to start: per group, the PodDisruptionBudgets that
/// allow no disruption of pods on its nodes, with those pods. One list of budgets; nodes and
/// pods are read only when some budget allows no disruption (pods by that budget's selector).
pub async fn disruption_blockers(
    client: &kube::Client,
    groups: &[&Group],
) -> Result<BTreeMap<String, Vec<Blocker>>, Error> {
    let mut out = BTreeMap::new();
    if groups.is_empty() {
        return Ok(out);
    }
    let budgets = Api::<PodDisruptionBudget>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let blocking: Vec<&PodDisruptionBudget> = budgets.iter().filter(|b| allows_none(b)).collect();
    if blocking.is_empty() {
        return Ok(out);
    }
    // Node name → the group it belongs to.
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    for node in nodes_of(client).await? {
        let group = groups.iter().find(|g| match g.kind {
            NodeGroupKind::Managed => node.group.as_deref() == Some(g.name.as_str()),
            NodeGroupKind::SelfManaged => node
                .instance
                .as_ref()
                .is_some_and(|i| g.instances.contains(i)),
        });
        if let Some(group) = group {
            owner.insert(node.name.clone(), group.name.as_str());
        }
    }
    for budget in blocking {
        let namespace = budget.namespace().unwrap_or_default();
        let selector = budget
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .map(Selector::try_from);
        let params = match selector {
            // No selector: policy/v1 selects no pods.
            None => continue,
            Some(Ok(selector)) => ListParams::default().labels(&selector.to_string()),
            Some(Err(e)) => {
                tracing::warn!(budget = %budget.name_any(), %namespace, error = %e, "cannot read the selector of a PodDisruptionBudget");
                continue;
            }
        };
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
            .list(&params)
            .await?
            .items;
        let mut by_group: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for pod in &pods {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if let Some(group) = node.and_then(|n| owner.get(n)) {
                by_group
                    .entry(group)
                    .or_default()
                    .push(format!("{namespace}/{}", pod.name_any()));
            }
        }
        for (group, pods) in by_group {
            out.entry(group.to_owned())
                .or_insert_with(Vec::new)
                .push(Blocker {
                    budget: format!("{namespace}/{}", budget.name_any()),
                    pods,
                });
        }
    }
    Ok(out)
}

/// A PodDisruptionBudget that allows no disruption, and the pods it protects on a group's
/// nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// `namespace/name` of the budget.
    pub budget: String,
    /// `namespace/name` of its pods on the group's nodes.
    pub pods: Vec<String>,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 5;
        let mut pods = self
            .pods
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.pods.len() > SHOWN {
            pods.push_str(&format!(" and {} more", self.pods.len() - SHOWN));
        }
        write!(
            f,
            "PodDisruptionBudget {} allows no disruption of {pods}",
            self.budget
        )
    }
}

/// The budget allows no disruption now, or the disruption controller has not evaluated its
/// current spec yet (the API server then refuses evictions too).
fn allows_none(budget: &PodDisruptionBudget) -> bool {
    let generation = budget.metadata.generation;
    match &budget.status {
        None => true,
        Some(status) => {
            status.disruptions_allowed <= 0
                || (generation.is_some() && status.observed_generation < generation)
        }
    }
}
