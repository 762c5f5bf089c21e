//! The AWS clients of one region, built once and shared.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::Mutex;

use crate::{AwsOptions, CallCounter, images::ImageCache, load_sdk_config};

/// EC2, EKS, Auto Scaling, SNS and CloudWatch clients for one region, with the shared call counter and the
/// `DescribeImages` cache.
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// The region.
    pub region: String,
    /// EC2: images, tags, launch templates.
    pub ec2: aws_sdk_ec2::Client,
    /// EKS: node groups and their updates.
    pub eks: aws_sdk_eks::Client,
    /// Auto Scaling: self-managed groups and instance refresh.
    pub autoscaling: aws_sdk_autoscaling::Client,
    /// SNS: notifications.
    pub sns: aws_sdk_sns::Client,
    /// CloudWatch: the alarms a rollout's health gate watches.
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// Systems Manager: parameters that name a base AMI.
    pub ssm: aws_sdk_ssm::Client,
    /// Every call made through these clients.
    pub calls: CallCounter,
    pub(crate) images: ImageCache,
    pub(crate) template_versions: crate::launch_templates::TemplateVersionCache,
    pub(crate) page_size: Option<i32>,
}

impl AwsClients {
    /// Builds the clients for `region`.
    pub async fn new(region: &str, options: &AwsOptions, calls: CallCounter) -> Self {
        let config = load_sdk_config(region, options).await;
        Self::from_config(region, &config, options, calls)
    }

    /// Builds the clients for `region` acting as `role.role_arn`: credentials from STS
    /// `AssumeRole` with the operator's own credentials, refreshed before they expire, in a
    /// session named after the namespace and tagged with it and the cluster ([`Assume`]).
    pub async fn assuming(
        region: &str,
        role: &Assume,
        options: &AwsOptions,
        calls: CallCounter,
    ) -> Self {
        let base = load_sdk_config(region, options).await;
        let provider = aws_config::sts::AssumeRoleProvider::builder(&role.role_arn)
            .session_name(role.session_name())
            .tags(role.session_tags())
            .configure(&base)
            .build()
            .await;
        let config = base
            .into_builder()
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                provider,
            ))
            .build();
        Self::from_config(region, &config, options, calls)
    }

    fn from_config(
        region: &str,
        config: &aws_config::SdkConfig,
        options: &AwsOptions,
        calls: CallCounter,
    ) -> Self {
        Self {
            region: region.to_owned(),
            ec2: aws_sdk_ec2::Client::new(config),
            eks: aws_sdk_eks::Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            calls,
            images: ImageCache::new(options.image_cache_ttl),
            template_versions: crate::launch_templates::template_version_cache(),
            page_size: options.page_size,
        }
    }
}

impl AwsClients {
    /// Sends one SDK request, counting it and classifying its error.
    ///
    /// SDK request futures are large; the request is moved to the heap before anything awaits
    /// it, so a reconcile that makes many calls keeps a small stack.
    pub(crate) fn call<'a, T, E, R>(
        &'a self,
        service: &'static str,
        operation: &'static str,
        request: impl Future<Output = Result<T, aws_sdk_ec2::error::SdkError<E, R>>> + Send + 'a,
    ) -> impl Future<Output = Result<T, crate::AwsError>> + Send + 'a
    where
        T: Send + 'a,
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let request = Box::pin(request);
        self.calls.track(service, operation, async move {
            request
                .await
                .map_err(|e| crate::AwsError::from_sdk(service, operation, e))
        })
    }
}

/// Clients for every region (and role) the custom resources name, built on first use.
#[derive(Debug, Clone)]
pub struct ClientSet {
    options: AwsOptions,
    calls: CallCounter,
    clients: Arc<Mutex<HashMap<Acting, Arc<AwsClients>>>>,
}

/// A region, and the role assumed there (`None`: the operator's own credentials).
type Acting = (String, Option<Assume>);

/// A role of another account (`spec.imageOwnerRoleArn`), assumed for one custom resource. The
/// session is named `opsy-<namespace>` (in CloudTrail) and carries session tags, the first two
/// named as EKS Pod Identity names its own: `kubernetes-namespace`, `eks-cluster-name` and
/// `eks-cluster-account`. So the role's trust policy can say which namespaces and clusters may
/// assume it (`aws:RequestTag/kubernetes-namespace`) and that the account is the caller's
/// (`aws:RequestTag/eks-cluster-account` = `${aws:PrincipalAccount}`), and its permissions can
/// name them (`${aws:PrincipalTag/eks-cluster-name}`). Assuming with tags needs
/// `sts:TagSession` too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Assume {
    /// The role.
    pub role_arn: String,
    /// The namespace of the resource it is assumed for.
    pub namespace: String,
    /// The EKS cluster that resource manages.
    pub cluster: String,
    /// That cluster's AWS account, when known (the account its soak evidence names).
    pub account: Option<String>,
}

impl Assume {
    /// STS session tag: the namespace.
    pub const NAMESPACE_TAG: &str = "kubernetes-namespace";
    /// STS session tag: the cluster.
    pub const CLUSTER_TAG: &str = "eks-cluster-name";
    /// STS session tag: the cluster's account.
    pub const ACCOUNT_TAG: &str = "eks-cluster-account";

    /// `opsy-<namespace>`, within STS's 64 characters of `[\w+=,.@-]` (a namespace is a DNS
    /// label, so only its length can be too much).
    pub fn session_name(&self) -> String {
        let mut name = format!("opsy-{}", self.namespace);
        name.truncate(64);
        name
    }

    /// The session tags (the account's when it is known).
    pub fn session_tags(&self) -> Vec<(&'static str, String)> {
        let mut tags = vec![
            (Self::NAMESPACE_TAG, self.namespace.clone()),
            (Self::CLUSTER_TAG, self.cluster.clone()),
        ];
        if let Some(account) = &self.account {
            tags.push((Self::ACCOUNT_TAG, account.clone()));
        }
        tags
    }
}

impl ClientSet {
    /// An empty set; clients are built per region on first use.
    pub fn new(options: AwsOptions) -> Self {
        Self::with_counter(options, CallCounter::default())
    }

    /// An empty set whose calls are counted in `calls` (shared with whoever else holds it).
    pub fn with_counter(options: AwsOptions, calls: CallCounter) -> Self {
        Self {
            options,
            calls,
            clients: Arc::default(),
        }
    }

    /// The clients of `region`.
    pub async fn region(&self, region: &str) -> Arc<AwsClients> {
        self.region_as(region, None).await
    }

    /// The clients of `region` acting as `role` (another account's role), or the operator's
    /// own when `role` is `None`.
    pub async fn region_as(&self, region: &str, role: Option<&Assume>) -> Arc<AwsClients> {
        let mut clients = self.clients.lock().await;
        let key = (region.to_owned(), role.cloned());
        if let Some(existing) = clients.get(&key) {
            return existing.clone();
        }
        let built = Arc::new(match role {
            None => AwsClients::new(region, &self.options, self.calls.clone()).await,
            Some(role) => {
                AwsClients::assuming(region, role, &self.options, self.calls.clone()).await
            }
        });
        clients.insert(key, built.clone());
        built
    }

    /// Every call made through any region's clients.
    pub fn calls(&self) -> &CallCounter {
        &self.calls
    }

    /// How long identical `DescribeImages` results are shared.
    pub fn image_cache_ttl(&self) -> Duration {
        self.options.image_cache_ttl
    }
}
