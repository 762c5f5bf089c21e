//! What every reconcile of a controller shares, built once per process.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};
use opsy_aws::ClientSet;

use crate::{Failures, metrics::Metrics};

pub use opsy_notify::AddressPolicy;

/// Source of the current time (tests move it).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// AWS clients per region.
    pub aws: ClientSet,
    /// Event recorder.
    pub recorder: Recorder,
    /// The current time.
    pub clock: Clock,
    /// How often work in flight (a running build, node-group updates) is checked besides
    /// watch events.
    pub poll_interval: Duration,
    /// Slack Web API base URL.
    pub slack_api: String,
    /// The addresses webhooks may reach besides public ones (`--allow-private-webhooks`).
    pub webhook_addresses: AddressPolicy,
    /// Consecutive reconcile failures per object, for the retry backoff.
    pub failures: Failures,
    /// Reconciles, errors, durations and transitions, served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What build Jobs may run (PackerBuilder operator).
    pub build_policy: BuildPolicy,
    /// Refuse an object that names no class (BuildClass, RefresherClass) when none is marked
    /// default (`--require-class`); else the install's own limits are the default class.
    pub require_class: bool,
    /// The namespaces the operator watches (`[None]`: every namespace), for what it reads
    /// besides its own objects (the PackerBuilder operator: AMIRefreshers using its AMIs).
    pub namespaces: Vec<Option<String>>,
    /// Sends the notifications reconciles queue in status.
    pub outbox: Arc<crate::outbox::Outbox>,
}

/// The images a build Job may run, set by whoever installs the operator: whoever can create a
/// PackerBuilder must not be able to run any image with the Job's service account and Secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPolicy {
    /// Image repositories (`hashicorp/packer`: any tag or digest of it) or prefixes ending in
    /// `*` (`123456789012.dkr.ecr.us-west-2.amazonaws.com/packer/*`).
    pub allowed_images: Vec<String>,
    /// Repositories builds may clone (`spec.builder.repoURL`): URLs or prefixes that end at a
    /// path boundary (`https://github.com/example-org/` or `https://github.com/example-org`,
    /// which `https://github.com/example-org-evil/…` does not match); empty: any.
    pub allowed_repositories: Vec<String>,
}

impl Default for BuildPolicy {
    /// The repositories of the default Packer and git-sync images.
    fn default() -> Self {
        Self {
            allowed_images: DEFAULT_ALLOWED_IMAGES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            allowed_repositories: Vec::new(),
        }
    }
}

/// The repositories of [`opsy_api::packer_builder::DEFAULT_PACKER_IMAGE`] and
/// [`opsy_api::packer_builder::DEFAULT_GIT_SYNC_IMAGE`].
pub const DEFAULT_ALLOWED_IMAGES: &[&str] =
    &["hashicorp/packer", "registry.k8s.io/git-sync/git-sync"];

/// The repository of an image reference, without tag or digest, Docker Hub written short:
/// `docker.io/hashicorp/packer:1.11@sha256:…` → `hashicorp/packer`; `busybox` →
/// `library/busybox`.
pub fn image_repository(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let (path, last) = match without_digest.rsplit_once('/') {
        Some((path, last)) => (Some(path), last),
        None => (None, without_digest),
    };
    let last = last.split(':').next().unwrap_or(last);
    let full = match path {
        Some(path) => format!("{path}/{last}"),
        None => format!("library/{last}"),
    };
    let short = full
        .strip_prefix("docker.io/")
        .or_else(|| full.strip_prefix("index.docker.io/"))
        .unwrap_or(&full);
    short.to_owned()
}

/// Whether the allowed repository `allowed` (a URL, or a prefix that ends at a path boundary;
/// `*`: any) admits `url`.
pub fn repository_matches(allowed: &str, url: &str) -> bool {
    let allowed = allowed.trim();
    allowed == "*"
        || url.strip_prefix(allowed).is_some_and(|rest| {
            rest.is_empty()
                || allowed.ends_with('/')
                || allowed.ends_with(':')
                || rest.starts_with('/')
                || rest == ".git"
        })
}

/// Whether the allowed image `allowed` (a repository: any tag or digest of it; a prefix ending
/// in `*`) admits `image`.
pub fn image_matches(allowed: &str, image: &str) -> bool {
    let allowed = allowed.trim();
    match allowed.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix) || image_repository(image).starts_with(prefix),
        None => image_repository(allowed) == image_repository(image),
    }
}

impl BuildPolicy {
    /// Whether a build may clone `url`.
    pub fn allows_repository(&self, url: &str) -> bool {
        self.allowed_repositories.is_empty()
            || self
                .allowed_repositories
                .iter()
                .any(|allowed| repository_matches(allowed, url))
    }

    /// Whether a build Job may run `image`.
    pub fn allows_image(&self, image: &str) -> bool {
        self.allowed_images
            .iter()
            .any(|allowed| image_matches(allowed, image))
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The context of the controller `manager` (the name its Events are reported under; the
    /// pod name, when set, tells replicas apart).
    pub fn new(
        manager: &str,
        client: Client,
        aws: ClientSet,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: manager.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            aws,
            clock,
            poll_interval: Duration::from_secs(30),
            slack_api: opsy_notify::slack::SLACK_API.to_owned(),
            webhook_addresses: AddressPolicy::default(),
            failures: Failures::default(),
            metrics,
            build_policy: BuildPolicy::default(),
            require_class: false,
            namespaces: vec![None],
            outbox: Arc::default(),
        })
    }

    /// What building the notifiers of a resource needs.
    pub fn notify_setup(&self) -> opsy_notify::Setup {
        opsy_notify::Setup {
            client: self.client.clone(),
            aws: self.aws.clone(),
            slack_api: self.slack_api.clone(),
            webhook_addresses: self.webhook_addresses,
        }
    }

    /// Sends the due notifications queued in `object`'s status (as just written), outside the
    /// reconcile.
    pub fn send_notifications<K: crate::outbox::Notifying>(&self, object: &K) {
        self.outbox.dispatch(self, object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_allowed_by_repository_or_prefix() {
        let policy = BuildPolicy::default();
        for image in [
            opsy_api::packer_builder::DEFAULT_PACKER_IMAGE,
            opsy_api::packer_builder::DEFAULT_GIT_SYNC_IMAGE,
            "hashicorp/packer:latest",
            "docker.io/hashicorp/packer:1.11.2",
            "hashicorp/packer@sha256:0123",
            "registry.k8s.io/git-sync/git-sync:v4.2.3",
        ] {
            assert!(policy.allows_image(image), "{image}");
        }
        for image in [
            "evil/packer:1",
            "hashicorp/packer-evil:1",
            "registry.k8s.io/git-sync/git-sync-fork:v1",
            "busybox",
            "attacker.example/hashicorp/packer:1",
        ] {
            assert!(!policy.allows_image(image), "{image}");
        }
        let ecr = BuildPolicy {
            allowed_images: vec!["123456789012.dkr.ecr.us-west-2.amazonaws.com/packer/*".into()],
            ..BuildPolicy::default()
        };
        assert!(ecr.allows_image("123456789012.dkr.ecr.us-west-2.amazonaws.com/packer/al2023:7"));
        assert!(!ecr.allows_image("123456789012.dkr.ecr.us-west-2.amazonaws.com/other:7"));
        assert_eq!(
            image_repository("localhost:5000/packer:1"),
            "localhost:5000/packer"
        );
    }

    #[test]
    fn repositories_are_allowed_by_url_or_prefix_at_a_path_boundary() {
        assert!(BuildPolicy::default().allows_repository("https://anything.example/r"));
        let policy = BuildPolicy {
            allowed_repositories: vec![
                "https://github.com/example-org".into(),
                "https://git.example.com/platform/".into(),
                "git@github.com:example-org/eks-node-images".into(),
            ],
            ..BuildPolicy::default()
        };
        for url in [
            "https://github.com/example-org",
            "https://github.com/example-org/eks-node-images",
            "https://github.com/example-org/eks-node-images.git",
            "https://git.example.com/platform/images",
            "git@github.com:example-org/eks-node-images",
            "git@github.com:example-org/eks-node-images.git",
        ] {
            assert!(policy.allows_repository(url), "{url}");
        }
        for url in [
            "https://github.com/example-org-evil/eks-node-images",
            "https://github.com/attacker/example-org",
            "https://git.example.com/platformer/images",
            "git@github.com:example-org/eks-node-images-fork",
            "git@github.com:example-org/eks-node-images.github.io",
            "http://github.com/example-org/eks-node-images",
        ] {
            assert!(!policy.allows_repository(url), "{url}");
        }
    }
}
