//! Builds AWS state in the emulator: EKS clusters with managed node groups, launch templates,
//! self-managed Auto Scaling groups, registered images.

use std::collections::HashMap;

use aws_config::{BehaviorVersion, Region, retry::RetryConfig};
use aws_sdk_ec2::{
    config::Credentials,
    types::{RequestLaunchTemplateData, Tag},
};
use aws_smithy_http_client::{Builder, tls};

use crate::{ACCESS_KEY_ID, Moto, SECRET_ACCESS_KEY};

/// Errors building fixtures carry the failing call's text.
pub type FixtureError = Box<dyn std::error::Error + Send + Sync>;

/// SDK clients pointed at one emulator and region, for arranging test state.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The region.
    pub region: String,
    /// EC2 client.
    pub ec2: aws_sdk_ec2::Client,
    /// EKS client.
    pub eks: aws_sdk_eks::Client,
    /// Auto Scaling client.
    pub autoscaling: aws_sdk_autoscaling::Client,
    /// CloudWatch client (alarms).
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// Names this emulator on the Nodes [`Fixture::sync_nodes`] registers (its port).
    node_owner: String,
}

/// A managed node group to create.
#[derive(Debug, Clone, Default)]
pub struct NodeGroupSpec {
    /// Its name.
    pub name: String,
    /// The AMI of its launch template; `None` creates the group without a launch template.
    pub image_id: Option<String>,
    /// Create the launch template without an `ImageId` (EKS picks the AMI).
    pub template_without_image: bool,
    /// Tags of the node group (e.g. `opsy.test/outcome: Failed`).
    pub tags: HashMap<String, String>,
}

impl NodeGroupSpec {
    /// A group whose launch template runs `image_id`.
    pub fn with_image(name: &str, image_id: &str) -> Self {
        Self {
            name: name.to_owned(),
            image_id: Some(image_id.to_owned()),
            ..Self::default()
        }
    }

    /// A group created without a launch template.
    pub fn without_template(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// The same group with a tag.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// The launch template created for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTemplate {
    /// `lt-…`
    pub id: String,
    /// Its name.
    pub name: String,
}

impl Fixture {
    /// Clients for `region` of `moto`, retries off.
    pub async fn new(moto: &Moto, region: &str) -> Self {
        let config = Self::config(moto, region).await;
        Self::from_config(moto, region, &config)
    }

    /// Clients acting in another account of the emulator: as `role_arn`, assumed with STS
    /// (the emulator puts the calls of assumed-role credentials in the role's account).
    pub async fn assuming(moto: &Moto, region: &str, role_arn: &str) -> Self {
        let base = Self::config(moto, region).await;
        let provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name("opsy-testkit")
            .configure(&base)
            .build()
            .await;
        let config = base
            .into_builder()
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                provider,
            ))
            .build();
        Self::from_config(moto, region, &config)
    }

    /// Lets `account` launch image `id` (EC2 `ModifyImageAttribute`, launch permission): what
    /// sharing an AMI with another account does. Tags are not shared.
    pub async fn share_image(&self, id: &str, account: &str) -> Result<(), FixtureError> {
        self.ec2
            .modify_image_attribute()
            .image_id(id)
            .launch_permission(
                aws_sdk_ec2::types::LaunchPermissionModifications::builder()
                    .add(
                        aws_sdk_ec2::types::LaunchPermission::builder()
                            .user_id(account)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await?;
        Ok(())
    }

    async fn config(moto: &Moto, region: &str) -> aws_config::SdkConfig {
        let http = Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(moto.endpoint())
            .credentials_provider(Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "opsy-testkit",
            ))
            .retry_config(RetryConfig::disabled())
            .http_client(http)
            .load()
            .await
    }

    fn from_config(moto: &Moto, region: &str, config: &aws_config::SdkConfig) -> Self {
        Self {
            region: region.to_owned(),
            ec2: aws_sdk_ec2::Client::new(config),
            eks: aws_sdk_eks::Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            node_owner: moto
                .endpoint()
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// The Kubernetes version of clusters [`Fixture::create_cluster`] creates: the version of
    /// the EKS AMIs the seed publishes.
    pub const CLUSTER_VERSION: &'static str = "1.30";

    /// Creates an EKS cluster on Kubernetes [`Fixture::CLUSTER_VERSION`].
    pub async fn create_cluster(&self, name: &str) -> Result<(), FixtureError> {
        self.create_cluster_at(name, Self::CLUSTER_VERSION).await
    }

    /// Upgrades the control plane of cluster `name` to `version` (EKS UpdateClusterVersion)
    /// and waits until the update is done.
    pub async fn upgrade_cluster(&self, name: &str, version: &str) -> Result<(), FixtureError> {
        let update = self
            .eks
            .update_cluster_version()
            .name(name)
            .version(version)
            .send()
            .await?
            .update
            .and_then(|u| u.id)
            .unwrap_or_default();
        for _ in 0..20 {
            let status = self
                .eks
                .describe_update()
                .name(name)
                .update_id(&update)
                .send()
                .await?
                .update
                .and_then(|u| u.status);
            if status != Some(aws_sdk_eks::types::UpdateStatus::InProgress) {
                break;
            }
        }
        Ok(())
    }

    /// Creates an EKS cluster on Kubernetes `version`.
    pub async fn create_cluster_at(&self, name: &str, version: &str) -> Result<(), FixtureError> {
        self.eks
            .create_cluster()
            .name(name)
            .version(version)
            .role_arn("arn:aws:iam::123456789012:role/eks-cluster")
            .resources_vpc_config(
                aws_sdk_eks::types::VpcConfigRequest::builder()
                    .subnet_ids("subnet-0a1b2c3d")
                    .build(),
            )
            .send()
            .await?;
        Ok(())
    }

    /// Creates a launch template whose version 1 runs `image_id` (or sets no image).
    pub async fn create_launch_template(
        &self,
        name: &str,
        image_id: Option<&str>,
    ) -> Result<CreatedTemplate, FixtureError> {
        let data = RequestLaunchTemplateData::builder()
            .set_image_id(image_id.map(str::to_owned))
            .instance_type(aws_sdk_ec2::types::InstanceType::M6iLarge)
            .user_data("IyEvYmluL2Jhc2gKZWNobyBub2RlYWRt")
            .build();
        let created = self
            .ec2
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(data)
            .send()
            .await?;
        let template = created
            .launch_template
            .ok_or("no launch template in response")?;
        Ok(CreatedTemplate {
            id: template.launch_template_id.ok_or("no template id")?,
            name: template.launch_template_name.ok_or("no template name")?,
        })
    }

    /// Creates a managed node group (and its launch template, named `<group>-lt`).
    pub async fn create_node_group(
        &self,
        cluster: &str,
        spec: &NodeGroupSpec,
    ) -> Result<Option<CreatedTemplate>, FixtureError> {
        let template = if spec.image_id.is_some() || spec.template_without_image {
            Some(
                self.create_launch_template(&format!("{}-lt", spec.name), spec.image_id.as_deref())
                    .await?,
            )
        } else {
            None
        };
        let mut request = self
            .eks
            .create_nodegroup()
            .cluster_name(cluster)
            .nodegroup_name(&spec.name)
            .node_role("arn:aws:iam::123456789012:role/eks-node")
            .subnets("subnet-0a1b2c3d")
            .set_tags(Some(spec.tags.clone()));
        if let Some(t) = &template {
            request = request.launch_template(
                aws_sdk_eks::types::LaunchTemplateSpecification::builder()
                    .id(&t.id)
                    .version("1")
                    .build(),
            );
        } else {
            request = request.ami_type(aws_sdk_eks::types::AmiTypes::Al2023X8664Standard);
        }
        request.send().await?;
        Ok(template)
    }

    /// Creates a self-managed Auto Scaling group of `cluster` running a new launch template
    /// (named `<group>-lt`) with `image_id`.
    pub async fn create_self_managed_group(
        &self,
        cluster: &str,
        name: &str,
        image_id: &str,
        extra_tags: &[(&str, &str)],
    ) -> Result<CreatedTemplate, FixtureError> {
        let template = self
            .create_launch_template(&format!("{name}-lt"), Some(image_id))
            .await?;
        let mut tags = vec![
            aws_sdk_autoscaling::types::Tag::builder()
                .key(format!("kubernetes.io/cluster/{cluster}"))
                .value("owned")
                .propagate_at_launch(true)
                .build(),
        ];
        for (k, v) in extra_tags {
            tags.push(
                aws_sdk_autoscaling::types::Tag::builder()
                    .key(*k)
                    .value(*v)
                    .propagate_at_launch(false)
                    .build(),
            );
        }
        self.autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_id(&template.id)
                    .version("1")
                    .build(),
            )
            .min_size(0)
            .max_size(3)
            .desired_capacity(2)
            .availability_zones(format!("{}a", self.region))
            .set_tags(Some(tags))
            .send()
            .await?;
        Ok(template)
    }

    /// Registers an x86_64 image owned by this account (as a Packer build would) with `tags`.
    pub async fn register_image(
        &self,
        name: &str,
        tags: &[(&str, &str)],
    ) -> Result<String, FixtureError> {
        self.register_image_for("x86_64", name, tags).await
    }

    /// Registers an image of `architecture` (`x86_64`, `arm64`) owned by this account.
    pub async fn register_image_for(
        &self,
        architecture: &str,
        name: &str,
        tags: &[(&str, &str)],
    ) -> Result<String, FixtureError> {
        let id = self
            .ec2
            .register_image()
            .name(name)
            .architecture(aws_sdk_ec2::types::ArchitectureValues::from(architecture))
            .root_device_name("/dev/xvda")
            .send()
            .await?
            .image_id
            .ok_or("no image id")?;
        if !tags.is_empty() {
            self.ec2
                .create_tags()
                .resources(&id)
                .set_tags(Some(
                    tags.iter()
                        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                        .collect(),
                ))
                .send()
                .await?;
        }
        Ok(id)
    }

    /// Every EKS update of managed node group `group` of `cluster`, as EKS lists them.
    pub async fn nodegroup_updates(
        &self,
        cluster: &str,
        group: &str,
    ) -> Result<Vec<UpdateRecord>, FixtureError> {
        let ids = self
            .eks
            .list_updates()
            .name(cluster)
            .nodegroup_name(group)
            .send()
            .await?
            .update_ids
            .unwrap_or_default();
        let mut out = Vec::new();
        for id in ids {
            let update = self
                .eks
                .describe_update()
                .name(cluster)
                .nodegroup_name(group)
                .update_id(&id)
                .send()
                .await?
                .update
                .ok_or("DescribeUpdate without an update")?;
            out.push(UpdateRecord {
                id,
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
            });
        }
        Ok(out)
    }

    /// Auto Scaling group `name`: its launch template version and, per instance (sorted), the
    /// version it was launched from and the image it runs.
    pub async fn auto_scaling_group(&self, name: &str) -> Result<GroupNodes, FixtureError> {
        let group = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await?
            .auto_scaling_groups
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| format!("no Auto Scaling group {name}"))?;
        let version = group
            .launch_template
            .and_then(|t| t.version)
            .unwrap_or_default();
        let mut instances = Vec::new();
        for instance in group.instances.unwrap_or_default() {
            let id = instance.instance_id.unwrap_or_default();
            let image = self
                .ec2
                .describe_instances()
                .instance_ids(&id)
                .send()
                .await?
                .reservations
                .unwrap_or_default()
                .into_iter()
                .flat_map(|r| r.instances.unwrap_or_default())
                .find_map(|i| i.image_id)
                .unwrap_or_default();
            let from = instance
                .launch_template
                .and_then(|t| t.version)
                .unwrap_or_default();
            instances.push((from, image));
        }
        instances.sort();
        Ok(GroupNodes { version, instances })
    }
}

/// One EKS update, as `DescribeUpdate` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRecord {
    /// Its id.
    pub id: String,
    /// `ConfigUpdate`, `VersionUpdate`, ...
    pub kind: String,
    /// `(type, value)` of each parameter, as EKS records them.
    pub params: std::collections::BTreeMap<String, String>,
    /// `InProgress`, `Successful`, `Failed`, ...
    pub status: String,
}

/// An Auto Scaling group's launch template version and its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNodes {
    /// The group's launch template version.
    pub version: String,
    /// `(launch template version it was launched from, image)` per instance, sorted.
    pub instances: Vec<(String, String)>,
}

/// Label on the Nodes [`Fixture::sync_nodes`] registers (its value: the emulator's port), so
/// that each test deletes only its own.
pub const TEST_NODE_LABEL: &str = "opsy.test/node";

impl Fixture {
    /// A CloudWatch alarm named `name` on a load balancer's 5xx count, then set to `state`
    /// (`OK`, `ALARM`) with `reason`, as CloudWatch does when the metric crosses it.
    pub async fn alarm(&self, name: &str, state: &str, reason: &str) -> Result<(), FixtureError> {
        use aws_sdk_cloudwatch::types::{ComparisonOperator, StateValue, Statistic};
        let exists = self
            .cloudwatch
            .describe_alarms()
            .alarm_names(name)
            .send()
            .await
            .map_err(|e| format!("DescribeAlarms: {e:?}"))?
            .metric_alarms
            .is_some_and(|a| !a.is_empty());
        if !exists {
            self.cloudwatch
                .put_metric_alarm()
                .alarm_name(name)
                .namespace("AWS/ApplicationELB")
                .metric_name("HTTPCode_Target_5XX_Count")
                .statistic(Statistic::Sum)
                .period(60)
                .evaluation_periods(1)
                .threshold(10.0)
                .comparison_operator(ComparisonOperator::GreaterThanThreshold)
                .send()
                .await
                .map_err(|e| format!("PutMetricAlarm: {e:?}"))?;
        }
        self.cloudwatch
            .set_alarm_state()
            .alarm_name(name)
            .state_value(StateValue::from(state))
            .state_reason(reason)
            .send()
            .await
            .map_err(|e| format!("SetAlarmState: {e:?}"))?;
        Ok(())
    }

    /// The label selector of the Nodes this fixture plays (other fixtures' Nodes share the
    /// cluster-scoped API).
    pub fn node_selector(&self) -> String {
        format!("{TEST_NODE_LABEL}={}", self.node_owner)
    }

    /// Plays the kubelets of `cluster`: one Node per running instance of each of its Auto
    /// Scaling groups (those EKS keeps for managed node groups too), named after the instance,
    /// with `spec.providerID`, the labels EKS puts on managed groups' nodes
    /// (`eks.amazonaws.com/nodegroup`, `eks.amazonaws.com/nodegroup-image`) and a Ready
    /// condition that is `True` when `ready(image)` says so (else `KubeletNotReady`). Nodes of
    /// instances that are gone are deleted. Returns how many Nodes there are.
    pub async fn sync_nodes(
        &self,
        client: &kube::Client,
        cluster: &str,
        ready: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> Result<usize, FixtureError> {
        self.sync_nodes_labelled(client, cluster, ready, true).await
    }

    /// [`Self::sync_nodes`], with the EKS node labels only when `labels`: with a custom AMI in
    /// the launch template EKS generates no bootstrap user data, so real nodes may carry none.
    pub async fn sync_nodes_labelled(
        &self,
        client: &kube::Client,
        cluster: &str,
        ready: &(dyn Fn(&str) -> bool + Send + Sync),
        eks_labels: bool,
    ) -> Result<usize, FixtureError> {
        use k8s_openapi::api::core::v1::Node;
        use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

        let nodes: Api<Node> = Api::all(client.clone());
        let mut wanted = std::collections::BTreeMap::new();
        let groups = self
            .autoscaling
            .describe_auto_scaling_groups()
            .send()
            .await?
            .auto_scaling_groups
            .unwrap_or_default();
        for group in groups {
            let tags: HashMap<String, String> = group
                .tags
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
                .collect();
            let ours = tags.get("eks:cluster-name").map(String::as_str) == Some(cluster)
                || tags.contains_key(&format!("kubernetes.io/cluster/{cluster}"));
            if !ours {
                continue;
            }
            let managed = tags.get("eks:nodegroup-name").cloned();
            let ids: Vec<String> = group
                .instances
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.instance_id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let reservations = self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(ids))
                .send()
                .await?
                .reservations
                .unwrap_or_default();
            for instance in reservations
                .into_iter()
                .flat_map(|r| r.instances.unwrap_or_default())
            {
                let (Some(id), Some(image)) = (instance.instance_id, instance.image_id) else {
                    continue;
                };
                let zone = instance
                    .placement
                    .and_then(|p| p.availability_zone)
                    .unwrap_or_else(|| format!("{}a", self.region));
                wanted.insert(format!("node-{id}"), (id, zone, image, managed.clone()));
            }
        }
        let selector = self.node_selector();
        for node in nodes
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
        {
            let name = node.metadata.name.clone().unwrap_or_default();
            if !wanted.contains_key(&name) {
                nodes.delete(&name, &DeleteParams::default()).await?;
            }
        }
        for (name, (id, zone, image, managed)) in &wanted {
            let mut labels = serde_json::json!({ TEST_NODE_LABEL: self.node_owner });
            if let Some(group) = managed.as_ref().filter(|_| eks_labels) {
                labels["eks.amazonaws.com/nodegroup"] = group.clone().into();
                labels["eks.amazonaws.com/nodegroup-image"] = image.clone().into();
            }
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"providerID": format!("aws:///{zone}/{id}")},
            }))?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            let is_ready = ready(image);
            let existing = nodes.get_status(name).await?;
            let current = existing
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status == "True");
            if current == Some(is_ready) {
                continue;
            }
            let (status, reason) = if is_ready {
                ("True", "KubeletReady")
            } else {
                ("False", "KubeletNotReady")
            };
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": "Ready", "status": status, "reason": reason,
                "message": format!("kubelet is {}", if is_ready { "posting ready status" } else { "not ready: container runtime network not ready" }),
                "lastHeartbeatTime": jiff_now(), "lastTransitionTime": jiff_now(),
            }]}});
            nodes
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(wanted.len())
    }
}

/// Kubelets played in the background ([`Fixture::play_kubelets`]) until dropped.
#[derive(Debug)]
pub struct Kubelets(tokio::task::JoinHandle<()>);

impl Drop for Kubelets {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Fixture {
    /// Runs [`Fixture::sync_nodes`] for `cluster` every 300 ms (every node Ready) until the
    /// returned handle is dropped, as kubelets joining the cluster would.
    pub fn play_kubelets(&self, admin: kube::Client, cluster: &str) -> Kubelets {
        let fixture = self.clone();
        let cluster = cluster.to_owned();
        Kubelets(tokio::spawn(async move {
            loop {
                if let Err(e) = fixture.sync_nodes(&admin, &cluster, &|_| true).await {
                    eprintln!("kubelets: {e}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        }))
    }
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
