//! Managed AMIs: the tag contract, eligibility, adoption, deprecation and the AMIRefresher's
//! target selection.

use std::{collections::BTreeMap, fmt, time::Duration};

use aws_sdk_ec2::{primitives::DateTime, types::Tag};
use jiff::{SignedDuration, Timestamp};
use opsy_api::{
    AmiFilter,
    ami_refresher::{AcceptFrom, Promotion, SoakOn},
    kubernetes::{KUBELET_MAX_MINORS_BEHIND, MinorVersion, Skew},
    lanes::Architecture,
    tags,
};

use crate::{
    AwsClients, AwsError,
    images::{Image, ImageChange, ImageQuery},
};

/// Where an AMI's creation time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedFrom {
    /// The `create-timestamp` tag.
    Tag,
    /// EC2's `CreationDate` (the tag is missing or unreadable).
    CreationDate,
}

/// Why an image cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    /// Its state is not `available`.
    NotAvailable {
        /// EC2 state.
        state: String,
    },
    /// No `status` tag.
    NoStatusTag,
    /// `status` is not `active`.
    NotActive {
        /// The `status` tag.
        status: String,
    },
    /// Created more than `expiresIn` ago.
    Expired {
        /// When it expired.
        at: Timestamp,
    },
    /// Neither a readable `create-timestamp` tag nor a creation date.
    NoCreationTime,
    /// A managed AMI built for another cluster (or by a PackerBuilder or repository) that the
    /// AMIRefresher does not accept.
    BuiltElsewhere {
        /// Its `cluster-name` tag.
        cluster: String,
        /// Its `created-by` tag (the PackerBuilder).
        created_by: String,
    },
    /// A gate of `spec.promotion` holds it back.
    Held(Hold),
    /// Built for a Kubernetes version the control plane does not support on its nodes.
    KubernetesSkew {
        /// The AMI's version.
        version: MinorVersion,
        /// The control plane's.
        control_plane: MinorVersion,
        /// Newer, or too old.
        skew: Skew,
    },
}

/// Why a promotion gate holds a candidate back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Listed in `promotion.never`.
    Never,
    /// `promotion.pin` names another AMI.
    NotPinned {
        /// The pinned AMI.
        pin: String,
    },
    /// Younger than `promotion.minAge`.
    TooYoung {
        /// The gate's duration as written.
        min_age: String,
        /// When it is old enough.
        opens: Timestamp,
    },
    /// Not healthy on a `promotion.soakOn` cluster for long enough.
    NotSoaked {
        /// The source cluster.
        cluster: String,
        /// The gate's duration as written.
        duration: String,
        /// Since when it is healthy there (its `healthy-on/<account>/<cluster>` tag), if it is.
        since: Option<Timestamp>,
        /// When every soak gate is passed, if the evidence is there for all of them.
        opens: Option<Timestamp>,
    },
}

impl Hold {
    /// The gate's name in status: `Never`, `Pin`, `MinAge` or `SoakOn`.
    pub fn gate(&self) -> &'static str {
        match self {
            Hold::Never => "Never",
            Hold::NotPinned { .. } => "Pin",
            Hold::TooYoung { .. } => "MinAge",
            Hold::NotSoaked { .. } => "SoakOn",
        }
    }

    /// When the gate opens by itself, if it will.
    pub fn opens(&self) -> Option<Timestamp> {
        match self {
            Hold::TooYoung { opens, .. } => Some(*opens),
            Hold::NotSoaked { opens, .. } => *opens,
            Hold::Never | Hold::NotPinned { .. } => None,
        }
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Never => write!(f, "listed in spec.promotion.never"),
            Hold::NotPinned { pin } => write!(f, "spec.promotion.pin is {pin}"),
            Hold::TooYoung { min_age, opens } => write!(
                f,
                "younger than spec.promotion.minAge {min_age}; promotable {opens}"
            ),
            Hold::NotSoaked {
                cluster,
                duration,
                since: None,
                ..
            } => write!(
                f,
                "not yet healthy on {cluster} (spec.promotion.soakOn asks for {duration} there)"
            ),
            Hold::NotSoaked {
                cluster,
                duration,
                since: Some(since),
                opens,
            } => {
                write!(f, "healthy on {cluster} since {since}, soaking {duration}")?;
                match opens {
                    Some(at) => write!(f, "; promotable {at}"),
                    None => write!(f, "; other soak gates have no evidence yet"),
                }
            }
        }
    }
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::NotAvailable { state } => write!(f, "state is {state}, not available"),
            Ineligible::NoStatusTag => write!(f, "not tagged status=active"),
            Ineligible::NotActive { status } => write!(f, "status is {status}, not active"),
            Ineligible::Expired { at } => write!(f, "expired at {at}"),
            Ineligible::NoCreationTime => {
                write!(f, "has no create-timestamp tag and no creation date")
            }
            Ineligible::BuiltElsewhere {
                cluster,
                created_by,
            } => write!(
                f,
                "built for cluster {cluster} by PackerBuilder {created_by}, not for this \
                 cluster; to roll it out here, add {{clusterName: {cluster}}} to spec.acceptFrom"
            ),
            Ineligible::Held(hold) => write!(f, "held back: {hold}"),
            Ineligible::KubernetesSkew {
                version,
                control_plane,
                skew: Skew::Newer,
            } => write!(
                f,
                "for Kubernetes {version}, newer than the control plane ({control_plane}): a \
                 kubelet must not be newer than its API server; upgrade the cluster first"
            ),
            Ineligible::KubernetesSkew {
                version,
                control_plane,
                skew: Skew::TooOld,
            } => write!(
                f,
                "for Kubernetes {version}, more than {KUBELET_MAX_MINORS_BEHIND} minor versions \
                 older than the control plane ({control_plane})"
            ),
        }
    }
}

/// Whose managed AMIs an AMIRefresher rolls out (those built for its own cluster, and those
/// that an `acceptFrom` entry names), and the promotion gates they must pass.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// `spec.clusterName`.
    pub cluster_name: &'a str,
    /// `spec.acceptFrom`.
    pub accept_from: &'a [AcceptFrom],
    /// `spec.promotion`.
    pub promotion: Option<&'a Promotion>,
    /// The control plane's Kubernetes version, when known: candidates outside the node skew
    /// it supports are refused.
    pub kubernetes_version: Option<MinorVersion>,
    /// The cluster's AWS account, when known: the account of `soakOn` clusters that name none.
    pub account: Option<&'a str>,
}

impl<'a> Scope<'a> {
    /// The scope of an AMIRefresher.
    pub fn of(spec: &'a opsy_api::AMIRefresherSpec) -> Self {
        Self {
            cluster_name: &spec.cluster_name,
            accept_from: &spec.accept_from,
            promotion: spec.promotion.as_ref(),
            kubernetes_version: None,
            account: None,
        }
    }

    /// The soak evidence of `candidate` on the cluster of `soak`: its
    /// `healthy-on/<account>/<cluster>` tag (the account `soak` names, else this cluster's),
    /// else the older `healthy-on/<cluster>`.
    fn evidence<'c>(&self, candidate: &'c Candidate, soak: &SoakOn) -> Option<&'c str> {
        soak.account
            .as_deref()
            .or(self.account)
            .and_then(|account| {
                candidate
                    .image
                    .tag(&tags::healthy_on(account, &soak.cluster_name))
            })
            .or_else(|| {
                candidate
                    .image
                    .tag(&tags::healthy_on_any_account(&soak.cluster_name))
            })
    }

    /// Which promotion gate holds `candidate` back at `now`, if one does: `never`, then `pin`
    /// (the pinned AMI skips the age and soak gates: pinning is a person's choice), then
    /// `minAge`, then `soakOn` (the first cluster without enough soak is named; the gate opens
    /// when the last one is passed).
    pub fn holds(&self, candidate: &Candidate, now: Timestamp) -> Option<Hold> {
        let promotion = self.promotion?;
        let id = candidate.image.id.as_str();
        if promotion.never.iter().any(|n| n == id) {
            return Some(Hold::Never);
        }
        if let Some(pin) = &promotion.pin {
            return (pin != id).then(|| Hold::NotPinned { pin: pin.clone() });
        }
        let after = |at: Timestamp, d: &opsy_api::Duration| {
            SignedDuration::try_from(d.as_std())
                .ok()
                .and_then(|d| at.checked_add(d).ok())
        };
        if let Some(min_age) = &promotion.min_age {
            // No creation time: the contract already refuses the candidate.
            let opens = candidate.created.and_then(|c| after(c, min_age))?;
            if opens > now {
                return Some(Hold::TooYoung {
                    min_age: min_age.as_str().to_owned(),
                    opens,
                });
            }
        }
        let soaks: Vec<(
            &str,
            &opsy_api::Duration,
            Option<Timestamp>,
            Option<Timestamp>,
        )> = promotion
            .soak_on
            .iter()
            .map(|soak| {
                let since = self
                    .evidence(candidate, soak)
                    .and_then(|t| t.parse::<Timestamp>().ok());
                let opens = since.and_then(|s| after(s, &soak.duration));
                (soak.cluster_name.as_str(), &soak.duration, since, opens)
            })
            .collect();
        let opens = soaks
            .iter()
            .map(|(_, _, _, opens)| *opens)
            .collect::<Option<Vec<_>>>()
            .and_then(|all| all.into_iter().max());
        let (cluster, duration, since, _) = soaks
            .iter()
            .find(|(_, _, _, o)| o.is_none_or(|o| o > now))?;
        Some(Hold::NotSoaked {
            cluster: (*cluster).to_owned(),
            duration: duration.as_str().to_owned(),
            since: *since,
            opens,
        })
    }

    /// Why `image` is not this refresher's to roll out, if it is not. Images that are not
    /// managed AMIs (the base images the filters match) are not this rule's business.
    pub fn refuses(&self, image: &Image) -> Option<Ineligible> {
        if image.tag(tags::BROUGHT_TO_YOU_BY) != Some(tags::BROUGHT_TO_YOU_BY_VALUE) {
            return None;
        }
        let cluster = image.tag(tags::CLUSTER_NAME);
        let created_by = image.tag(tags::CREATED_BY);
        let repo = image.tag(tags::PACKER_REPO);
        if cluster == Some(self.cluster_name) {
            return None;
        }
        let matches = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        let accepted = self.accept_from.iter().any(|a| {
            matches(&a.cluster_name, cluster)
                && matches(&a.packer_builder, created_by)
                && matches(&a.repository, repo)
        });
        (!accepted).then(|| Ineligible::BuiltElsewhere {
            cluster: cluster.unwrap_or("(none)").to_owned(),
            created_by: created_by.unwrap_or("(unknown)").to_owned(),
        })
    }
}

/// An image judged against the tag contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The image.
    pub image: Image,
    /// When it was created, if known.
    pub created: Option<Timestamp>,
    /// Where `created` came from.
    pub created_from: CreatedFrom,
    /// When it stops being eligible (`created + expiresIn`).
    pub expires: Option<Timestamp>,
    /// `None` when eligible.
    pub rejected: Option<Ineligible>,
}

impl Candidate {
    /// Judges `image` at `now`: eligible when available, `status=active`, and created (per its
    /// `create-timestamp` tag, else its EC2 creation date) less than `expires_in` ago.
    pub fn judge(image: Image, expires_in: Duration, now: Timestamp) -> Self {
        let tagged = image
            .tag(tags::CREATE_TIMESTAMP)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let (created, created_from) = match tagged {
            Some(t) => (Some(t), CreatedFrom::Tag),
            None => (image.creation_date, CreatedFrom::CreationDate),
        };
        let expires = created.and_then(|c| {
            SignedDuration::try_from(expires_in)
                .ok()
                .and_then(|d| c.checked_add(d).ok())
        });
        let rejected = if !image.is_available() {
            Some(Ineligible::NotAvailable {
                state: image.state.clone(),
            })
        } else {
            match image.tag(tags::STATUS) {
                None => Some(Ineligible::NoStatusTag),
                Some(s) if s != tags::STATUS_ACTIVE => Some(Ineligible::NotActive {
                    status: s.to_owned(),
                }),
                Some(_) => match expires {
                    None => Some(Ineligible::NoCreationTime),
                    Some(at) if at <= now => Some(Ineligible::Expired { at }),
                    Some(_) => None,
                },
            }
        };
        Self {
            image,
            created,
            created_from,
            expires,
            rejected,
        }
    }

    /// Whether the image may be used.
    pub fn is_eligible(&self) -> bool {
        self.rejected.is_none()
    }

    /// `ami-… (name): reason`, for status messages.
    pub fn describe(&self) -> String {
        match &self.rejected {
            None => format!("{} ({}): eligible", self.image.id, self.image.name),
            Some(reason) => format!("{} ({}): {reason}", self.image.id, self.image.name),
        }
    }
}

/// The newest eligible candidate, and every candidate with its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// The newest eligible candidate (by creation time, then name, then id).
    pub chosen: Option<Candidate>,
    /// All candidates, newest first.
    pub candidates: Vec<Candidate>,
}

impl Selection {
    /// Judges `images` and picks the newest eligible one.
    pub fn from_images(
        images: impl IntoIterator<Item = Image>,
        expires_in: Duration,
        now: Timestamp,
    ) -> Self {
        let mut candidates: Vec<Candidate> = images
            .into_iter()
            .map(|image| Candidate::judge(image, expires_in, now))
            .collect();
        candidates.sort_by(|a, b| {
            (b.created, &b.image.name, &b.image.id).cmp(&(a.created, &a.image.name, &a.image.id))
        });
        let chosen = candidates.iter().find(|c| c.is_eligible()).cloned();
        Self { chosen, candidates }
    }

    /// Why nothing was chosen: `"3 image(s) matched, 0 eligible: ami-1 (n): expired at …; …"`,
    /// naming the newest [`Self::EXPLAINED`] candidates and counting the rest.
    pub fn explain(&self) -> String {
        if self.candidates.is_empty() {
            return "no image matched".to_owned();
        }
        let reasons: Vec<String> = self
            .candidates
            .iter()
            .take(Self::EXPLAINED)
            .map(Candidate::describe)
            .collect();
        let eligible = self.candidates.iter().filter(|c| c.is_eligible()).count();
        let mut text = format!(
            "{} image(s) matched, {eligible} eligible: {}",
            self.candidates.len(),
            reasons.join("; ")
        );
        let more = self.candidates.len().saturating_sub(Self::EXPLAINED);
        if more > 0 {
            text.push_str(&format!("; and {more} older"));
        }
        text
    }

    /// How many candidates [`Self::explain`] names.
    pub const EXPLAINED: usize = 5;

    /// Candidates held back by a promotion gate, newer than the chosen one (all of them when
    /// none was chosen), newest first.
    pub fn held_back(&self) -> impl Iterator<Item = (&Candidate, &Hold)> {
        let chosen = self
            .chosen
            .as_ref()
            .map(|c| (c.created, &c.image.name, &c.image.id));
        self.candidates
            .iter()
            .filter_map(move |c| match &c.rejected {
                Some(Ineligible::Held(hold))
                    if chosen.is_none_or(|k| (c.created, &c.image.name, &c.image.id) > k) =>
                {
                    Some((c, hold))
                }
                _ => None,
            })
    }

    /// Managed AMIs passed over because they were built elsewhere, newer than the chosen one
    /// (all of them when none was chosen), newest first.
    pub fn passed_over(&self) -> impl Iterator<Item = &Candidate> {
        let chosen = self
            .chosen
            .as_ref()
            .map(|c| (c.created, &c.image.name, &c.image.id));
        self.candidates.iter().filter(move |c| {
            matches!(c.rejected, Some(Ineligible::BuiltElsewhere { .. }))
                && chosen.is_none_or(|k| (c.created, &c.image.name, &c.image.id) > k)
        })
    }
}

/// Identity of a PackerBuilder's builds, for finding and tagging its AMIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildIdentity {
    /// `spec.clusterName`.
    pub cluster_name: String,
    /// The PackerBuilder's name.
    pub created_by: String,
    /// The PackerBuilder's namespace.
    pub namespace: String,
    /// `spec.builder.repoURL`.
    pub packer_repo: String,
    /// `spec.builder.branch`.
    pub packer_repo_branch: String,
}

impl BuildIdentity {
    /// The identity of `pb`'s builds.
    pub fn of(pb: &opsy_api::PackerBuilder) -> Self {
        Self {
            cluster_name: pb.spec.cluster_name.clone(),
            created_by: pb.metadata.name.clone().unwrap_or_default(),
            namespace: pb.metadata.namespace.clone().unwrap_or_default(),
            packer_repo: pb.spec.builder.repo_url.clone(),
            packer_repo_branch: pb.spec.builder.branch.clone(),
        }
    }

    /// The query for the managed AMIs of this identity's cluster (owned by this account).
    ///
    /// It names the cluster, not the PackerBuilder: every PackerBuilder of a cluster asks the
    /// same question, so the `DescribeImages` cache answers all of them with one call per
    /// cycle; [`BuildIdentity::owns`] then keeps this identity's AMIs.
    pub fn query(&self) -> ImageQuery {
        ImageQuery::default()
            .owner("self")
            .filter(
                &format!("tag:{}", tags::BROUGHT_TO_YOU_BY),
                [tags::BROUGHT_TO_YOU_BY_VALUE],
            )
            .filter(
                &format!("tag:{}", tags::CLUSTER_NAME),
                [self.cluster_name.as_str()],
            )
    }

    /// Whether this identity built `image`: same cluster, PackerBuilder (namespace and name),
    /// repository and branch. An AMI without the namespace tag (the replaced project's, or
    /// older) belongs to the PackerBuilder of that name in any namespace until one adopts it.
    pub fn owns(&self, image: &Image) -> bool {
        let tag = |key: &str| image.tags.get(key).map(String::as_str);
        tag(tags::BROUGHT_TO_YOU_BY) == Some(tags::BROUGHT_TO_YOU_BY_VALUE)
            && tag(tags::CLUSTER_NAME) == Some(self.cluster_name.as_str())
            && tag(tags::CREATED_BY) == Some(self.created_by.as_str())
            && tag(tags::CREATED_BY_NAMESPACE).is_none_or(|ns| ns == self.namespace)
            && tag(tags::PACKER_REPO) == Some(self.packer_repo.as_str())
            && tag(tags::PACKER_REPO_BRANCH) == Some(self.packer_repo_branch.as_str())
    }

    /// The tags to write when adopting `image` (found by the tag contract but not recorded in
    /// status): the namespace tag when it is missing, and `create-timestamp` only when missing,
    /// from the image's creation date — adopting never extends an AMI's life.
    pub fn adoption_tags(&self, image: &Image) -> BTreeMap<String, String> {
        let mut tags = adoption_tags(image);
        if image.tag(tags::CREATED_BY_NAMESPACE).is_none() {
            tags.insert(
                tags::CREATED_BY_NAMESPACE.to_owned(),
                self.namespace.clone(),
            );
        }
        tags
    }

    /// The full tag set of an AMI this identity built.
    pub fn tags(&self, build: &BuildFacts) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            tags.insert(k.to_owned(), v.to_owned());
        };
        put(tags::BROUGHT_TO_YOU_BY, tags::BROUGHT_TO_YOU_BY_VALUE);
        put(tags::CLUSTER_NAME, &self.cluster_name);
        put(tags::CREATED_BY, &self.created_by);
        put(tags::CREATED_BY_NAMESPACE, &self.namespace);
        put(tags::PACKER_REPO, &self.packer_repo);
        put(tags::PACKER_REPO_BRANCH, &self.packer_repo_branch);
        put(tags::STATUS, tags::STATUS_ACTIVE);
        put(tags::CREATE_TIMESTAMP, &build.created.to_string());
        if let Some(base) = &build.base_ami {
            put(tags::BASE_AMI, base);
        }
        put(tags::BUILD_ID, &build.build_id);
        put(tags::JOB_ID, &build.job_id);
        if let Some(version) = &build.kubernetes_version {
            put(tags::KUBERNETES_VERSION, version);
        }
        if let Some(architecture) = &build.architecture {
            put(tags::ARCHITECTURE, architecture);
        }
        if let Some(variant) = &build.variant {
            put(tags::VARIANT, variant);
        }
        if let Some(os_family) = &build.os_family {
            put(tags::OS_FAMILY, os_family);
        }
        tags
    }
}

/// The Kubernetes version an AMI's nodes run: its `kubernetes-version` tag, else the version
/// its name carries, else (for an AMI built from a base) its base's among `bases`.
pub fn kubernetes_version(image: &Image, bases: &[Image]) -> Option<MinorVersion> {
    image
        .tag(tags::KUBERNETES_VERSION)
        .and_then(MinorVersion::parse)
        .or_else(|| MinorVersion::in_name(&image.name))
        .or_else(|| {
            let base = image.tag(tags::BASE_AMI)?;
            let base = bases.iter().find(|b| b.id == base)?;
            base.tag(tags::KUBERNETES_VERSION)
                .and_then(MinorVersion::parse)
                .or_else(|| MinorVersion::in_name(&base.name))
        })
}

/// An AMIRefresher's candidates for its cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterTarget {
    /// The candidates and the chosen one.
    pub selection: Selection,
    /// The control plane's Kubernetes version, if the cluster was found.
    pub control_plane: Option<String>,
    /// The cluster's AWS account, if the cluster was found.
    pub account: Option<String>,
    /// `spec.amiParameter` with the version filled in.
    pub parameter_name: Option<String>,
    /// The parameter as read; `None` when it does not exist (or none is set).
    pub parameter: Option<crate::parameters::Parameter>,
}

/// What a build contributes to its AMI's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFacts {
    /// When the AMI was built.
    pub created: Timestamp,
    /// The base AMI, when filters were used.
    pub base_ami: Option<String>,
    /// `status.buildID`.
    pub build_id: String,
    /// `status.jobID`.
    pub job_id: String,
    /// The Kubernetes version the AMI's nodes run, when known.
    pub kubernetes_version: Option<String>,
    /// The AMI's architecture, as EC2 reports it.
    pub architecture: Option<String>,
    /// The variant of its base (`standard`, `nvidia`, `neuron`), when the base is known.
    pub variant: Option<String>,
    /// The OS family of its base (`al2`, `al2023`, `bottlerocket`, …), when known.
    pub os_family: Option<String>,
}

/// The tags to write when adopting `image` (found by the tag contract but not recorded in
/// status): `status=active` is kept, and `create-timestamp` is written only when missing, from
/// the image's creation date — adopting never extends an AMI's life.
pub fn adoption_tags(image: &Image) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    if image
        .tag(tags::CREATE_TIMESTAMP)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_none()
        && let Some(created) = image.creation_date
    {
        tags.insert(tags::CREATE_TIMESTAMP.to_owned(), created.to_string());
    }
    tags
}

impl AwsClients {
    /// Writes `tags` on `image_id` (existing keys are overwritten).
    pub async fn tag_image(
        &self,
        image_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        const OP: &str = "CreateTags";
        if tags.is_empty() {
            return Ok(());
        }
        let request = self.ec2.create_tags().resources(image_id).set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ));
        let result = self.call("ec2", OP, request.send()).await;
        self.image_changed(image_id, ImageChange::Tags(tags), &result)
            .await;
        result.map(drop)
    }

    /// Marks `image_id` deprecated: tag `status=deprecated` and EC2's own deprecation time
    /// (`at`, rounded by EC2 to the minute), so EC2 also hides it from default listings.
    pub async fn deprecate_image(&self, image_id: &str, at: Timestamp) -> Result<(), AwsError> {
        let mut status = BTreeMap::new();
        status.insert(tags::STATUS.to_owned(), tags::STATUS_DEPRECATED.to_owned());
        self.retire_image(image_id, &status, at).await
    }

    /// Quarantines `image_id` after a rollout proved it bad: tag `status=quarantined` with the
    /// reason (no AMIRefresher selects it again, no PackerBuilder counts it as eligible), and
    /// EC2's deprecation time `at`, which accounts it is shared with see (they see image
    /// attributes, not this account's tags).
    pub async fn quarantine_image(
        &self,
        image_id: &str,
        reason: &str,
        at: Timestamp,
    ) -> Result<(), AwsError> {
        let mut tags = BTreeMap::new();
        tags.insert(tags::STATUS.to_owned(), tags::STATUS_QUARANTINED.to_owned());
        // EC2 tag values hold at most 256 characters.
        let reason: String = reason.chars().take(256).collect();
        tags.insert(tags::QUARANTINE_REASON.to_owned(), reason);
        self.retire_image(image_id, &tags, at).await
    }

    /// Writes `tags` on `image_id`, then sets EC2's deprecation time `at`.
    async fn retire_image(
        &self,
        image_id: &str,
        tags: &BTreeMap<String, String>,
        at: Timestamp,
    ) -> Result<(), AwsError> {
        const OP: &str = "EnableImageDeprecation";
        self.tag_image(image_id, tags).await?;
        let request = self
            .ec2
            .enable_image_deprecation()
            .image_id(image_id)
            .deprecate_at(DateTime::from_secs(at.as_second()));
        let result = self.call("ec2", OP, request.send()).await;
        // Cached answers hold the time asked for; EC2's own is rounded to the minute.
        self.image_changed(image_id, ImageChange::Deprecation(at), &result)
            .await;
        result.map(drop)
    }

    /// The managed AMIs of a PackerBuilder, judged at `now`.
    pub async fn managed_images(
        &self,
        identity: &BuildIdentity,
        expires_in: Duration,
        now: Timestamp,
    ) -> Result<Selection, AwsError> {
        let images = self.describe_images(&identity.query()).await?;
        Ok(Selection::from_images(
            images.iter().filter(|i| identity.owns(i)).cloned(),
            expires_in,
            now,
        ))
    }

    /// The AMIRefresher's target for its cluster, given what EKS DescribeCluster said of it
    /// (`info`, read with the cluster's account's clients; `None`: it does not exist): the
    /// control plane's version fills `${KUBERNETES_VERSION}` in the filters and refuses
    /// candidates outside the node skew it supports, and the cluster's account is the one
    /// soak evidence is looked up for; then [`AwsClients::select_target`] (with these, the
    /// owner account's clients). Returns the selection, the control plane's version and the
    /// account, if the cluster was found.
    pub async fn select_target_for_cluster(
        &self,
        spec: &opsy_api::AMIRefresherSpec,
        info: Option<&crate::eks::ClusterInfo>,
        now: Timestamp,
    ) -> Result<ClusterTarget, AwsError> {
        let version = info.and_then(|i| i.version.clone());
        let account = info.and_then(|i| i.account.as_deref());
        let filled = match (&spec.ami_filters, &version) {
            (Some(filters), Some(v)) => Some(opsy_api::kubernetes::fill_filters(filters, v)),
            (filters, _) => filters.clone(),
        };
        let mut scope = Scope::of(spec);
        scope.kubernetes_version = version.as_deref().and_then(MinorVersion::parse);
        scope.account = account;
        let expires_in = spec.effective_expires_in().as_std();
        let mut target = ClusterTarget {
            control_plane: version.clone(),
            account: account.map(str::to_owned),
            ..ClusterTarget::default()
        };
        target.selection = match (&spec.ami, &spec.ami_parameter) {
            (None, Some(name)) => {
                let name = match &version {
                    Some(v) => name.replace(opsy_api::kubernetes::VERSION_PLACEHOLDER, v),
                    None => name.clone(),
                };
                // `${ARCHITECTURE}`: the parameter of each architecture (a cluster mixes them;
                // each group then takes its own lane's AMI).
                let names: Vec<String> = if name.contains(opsy_api::lanes::ARCHITECTURE_PLACEHOLDER)
                {
                    [Architecture::X86_64, Architecture::Arm64]
                        .iter()
                        .map(|a| {
                            name.replace(opsy_api::lanes::ARCHITECTURE_PLACEHOLDER, a.as_str())
                        })
                        .collect()
                } else {
                    vec![name]
                };
                let mut images = Vec::new();
                for name in names {
                    let (parameter, image) = self.parameter_image(&name, filled.as_deref()).await?;
                    images.extend(image);
                    if target.parameter.is_none() {
                        target.parameter_name = Some(name);
                        target.parameter = parameter;
                    }
                }
                self.select_among(None, Some(images), scope, expires_in, now)
                    .await?
            }
            _ => {
                self.select_target(
                    spec.ami.as_deref(),
                    filled.as_deref(),
                    scope,
                    expires_in,
                    now,
                )
                .await?
            }
        };
        Ok(target)
    }

    /// The AMIRefresher's target: the explicit `ami`, or the images matching `filters` plus
    /// the managed AMIs (of this account) built from them that `scope` accepts; the newest
    /// eligible one that passes the promotion gates wins. An explicit `ami` is the user's
    /// choice and is not scoped, but gated.
    pub async fn select_target(
        &self,
        ami: Option<&str>,
        filters: Option<&[AmiFilter]>,
        scope: Scope<'_>,
        expires_in: Duration,
        now: Timestamp,
    ) -> Result<Selection, AwsError> {
        let matches: Option<Vec<Image>> = match (ami, filters) {
            (Some(_), _) => None,
            (None, Some(filters)) => Some(
                self.describe_images(&ImageQuery::from_filters(filters))
                    .await?
                    .to_vec(),
            ),
            (None, None) => Some(Vec::new()),
        };
        self.select_among(ami, matches, scope, expires_in, now)
            .await
    }

    /// [`AwsClients::select_target`] once the base images are known (`matches`; `None` with
    /// an explicit `ami`).
    async fn select_among(
        &self,
        ami: Option<&str>,
        matches: Option<Vec<Image>>,
        scope: Scope<'_>,
        expires_in: Duration,
        now: Timestamp,
    ) -> Result<Selection, AwsError> {
        let images: Vec<Image> = match (ami, matches) {
            (Some(id), _) => self
                .describe_images(&ImageQuery::default().ids([id]))
                .await?
                .to_vec(),
            (None, Some(matches)) => {
                let mut images = matches.clone();
                if !matches.is_empty() {
                    let derived = ImageQuery::default()
                        .owner("self")
                        .filter(
                            &format!("tag:{}", tags::BROUGHT_TO_YOU_BY),
                            [tags::BROUGHT_TO_YOU_BY_VALUE],
                        )
                        .filter(
                            &format!("tag:{}", tags::BASE_AMI),
                            matches.iter().map(|i| i.id.as_str()),
                        );
                    let derived = self.describe_images(&derived).await?;
                    images.extend(
                        derived
                            .iter()
                            .filter(|d| !matches.iter().any(|m| m.id == d.id))
                            .cloned(),
                    );
                }
                images
            }
            (None, None) => Vec::new(),
        };
        let mut selection = Selection::from_images(images, expires_in, now);
        let bases: Vec<Image> = selection
            .candidates
            .iter()
            .map(|c| c.image.clone())
            .collect();
        for candidate in &mut selection.candidates {
            if ami.is_none()
                && let Some(refused) = scope.refuses(&candidate.image)
            {
                candidate.rejected = Some(refused);
            }
            if candidate.is_eligible()
                && let Some(control_plane) = scope.kubernetes_version
                && let Some(version) = kubernetes_version(&candidate.image, &bases)
                && let Some(skew) = version.skew(control_plane)
            {
                candidate.rejected = Some(Ineligible::KubernetesSkew {
                    version,
                    control_plane,
                    skew,
                });
            }
            if candidate.is_eligible()
                && let Some(hold) = scope.holds(candidate, now)
            {
                candidate.rejected = Some(Ineligible::Held(hold));
            }
        }
        selection.chosen = selection
            .candidates
            .iter()
            .find(|c| c.is_eligible())
            .cloned();
        Ok(selection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn image(id: &str, created: &str, tags: &[(&str, &str)]) -> Image {
        Image {
            id: id.into(),
            name: format!("name-{id}"),
            state: "available".into(),
            owner_id: "123456789012".into(),
            creation_date: created.parse().ok(),
            deprecation_time: None,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            snapshots: Vec::new(),
            deregistration_protection: None,
            architecture: None,
        }
    }

    fn now() -> Timestamp {
        "2024-11-20T00:00:00Z".parse().unwrap()
    }

    /// A soak gate is passed only by evidence from the cluster of its account: this cluster's
    /// unless the gate names another; a cluster of the same name in another account does not
    /// vouch. The older key without an account is still read.
    #[test]
    fn soak_evidence_counts_only_from_the_account_of_the_gate() {
        let promotion: Promotion = serde_json::from_value(serde_json::json!({
            "soakOn": [{"clusterName": "staging", "duration": "72h"}]
        }))
        .unwrap();
        let elsewhere: Promotion = serde_json::from_value(serde_json::json!({
            "soakOn": [{"clusterName": "staging", "duration": "72h", "account": "210987654321"}]
        }))
        .unwrap();
        let scope = |promotion| Scope {
            cluster_name: "prod",
            accept_from: &[],
            promotion: Some(promotion),
            kubernetes_version: None,
            account: Some("123456789012"),
        };
        let soaked = "2024-11-10T00:00:00Z";
        let held = |promotion, key: &str| {
            let candidate = Candidate::judge(
                image(
                    "a",
                    "2024-11-09T00:00:00Z",
                    &[("status", "active"), (key, soaked)],
                ),
                30 * DAY,
                now(),
            );
            scope(promotion).holds(&candidate, now()).is_some()
        };
        assert!(!held(&promotion, "healthy-on/123456789012/staging"));
        assert!(held(&promotion, "healthy-on/999988887777/staging"));
        assert!(held(&promotion, "healthy-on/123456789012/staging-2"));
        assert!(!held(&promotion, "healthy-on/staging"), "the older form");
        assert!(!held(&elsewhere, "healthy-on/210987654321/staging"));
        assert!(held(&elsewhere, "healthy-on/123456789012/staging"));
    }

    #[test]
    fn eligibility_rules_and_reasons() {
        let cases = [
            (
                image("a", "2024-11-19T00:00:00Z", &[("status", "active")]),
                None,
            ),
            (
                image("b", "2024-11-01T00:00:00Z", &[("status", "active")]),
                Some("expired at 2024-11-03T00:00:00Z"),
            ),
            (
                // The tag wins over EC2's creation date.
                image(
                    "c",
                    "2024-11-01T00:00:00Z",
                    &[
                        ("status", "active"),
                        ("create-timestamp", "2024-11-19T12:00:00Z"),
                    ],
                ),
                None,
            ),
            (
                // An unreadable tag falls back to the creation date.
                image(
                    "d",
                    "2024-11-19T00:00:00Z",
                    &[("status", "active"), ("create-timestamp", "yesterday")],
                ),
                None,
            ),
            (
                image("e", "2024-11-19T00:00:00Z", &[("status", "deprecated")]),
                Some("status is deprecated, not active"),
            ),
            (
                image("f", "2024-11-19T00:00:00Z", &[]),
                Some("not tagged status=active"),
            ),
            (
                image("g", "garbage", &[("status", "active")]),
                Some("has no create-timestamp tag and no creation date"),
            ),
        ];
        for (img, expected) in cases {
            let id = img.id.clone();
            let c = Candidate::judge(img, 2 * DAY, now());
            assert_eq!(
                c.rejected.as_ref().map(|r| r.to_string()).as_deref(),
                expected,
                "{id}"
            );
        }
        let mut pending = image("h", "2024-11-19T00:00:00Z", &[("status", "active")]);
        pending.state = "pending".into();
        let c = Candidate::judge(pending, 2 * DAY, now());
        assert_eq!(
            c.rejected.map(|r| r.to_string()).as_deref(),
            Some("state is pending, not available")
        );
    }

    #[test]
    fn selection_picks_the_newest_eligible_and_explains_the_rest() {
        let selection = Selection::from_images(
            [
                image("ami-old", "2024-11-18T00:00:00Z", &[("status", "active")]),
                image("ami-new", "2024-11-19T00:00:00Z", &[("status", "active")]),
                image(
                    "ami-newest-deprecated",
                    "2024-11-19T06:00:00Z",
                    &[("status", "deprecated")],
                ),
            ],
            7 * DAY,
            now(),
        );
        assert_eq!(
            selection.chosen.as_ref().map(|c| c.image.id.as_str()),
            Some("ami-new")
        );
        assert_eq!(selection.candidates[0].image.id, "ami-newest-deprecated");
        let none = Selection::from_images(
            [image(
                "ami-x",
                "2024-10-01T00:00:00Z",
                &[("status", "active")],
            )],
            DAY,
            now(),
        );
        assert!(none.chosen.is_none());
        assert_eq!(
            none.explain(),
            "1 image(s) matched, 0 eligible: ami-x (name-ami-x): expired at 2024-10-02T00:00:00Z"
        );
        assert_eq!(Selection::default().explain(), "no image matched");
    }

    #[test]
    fn adoption_never_resets_the_creation_time() {
        let tagged = image(
            "a",
            "2024-11-01T00:00:00Z",
            &[("create-timestamp", "2024-11-02T00:00:00Z")],
        );
        assert!(adoption_tags(&tagged).is_empty());
        let untagged = image("b", "2024-11-01T00:00:00Z", &[("status", "active")]);
        assert_eq!(
            adoption_tags(&untagged)
                .get("create-timestamp")
                .map(String::as_str),
            Some("2024-11-01T00:00:00Z")
        );
    }

    #[test]
    fn a_builder_owns_by_namespace_and_adopts_what_has_no_namespace() {
        let identity = |namespace: &str| BuildIdentity {
            cluster_name: "prod".into(),
            created_by: "pb".into(),
            namespace: namespace.into(),
            packer_repo: "https://example.com/r".into(),
            packer_repo_branch: "main".into(),
        };
        let contract = [
            ("brought-to-you-by", "opsy-the-ami-operator"),
            ("cluster-name", "prod"),
            ("created-by", "pb"),
            ("packer-repo", "https://example.com/r"),
            ("packer-repo-branch", "main"),
            ("create-timestamp", "2024-11-02T00:00:00Z"),
        ];
        let mut tagged = contract.to_vec();
        tagged.push(("created-by-namespace", "team-a"));
        let team_a = image("a", "2024-11-01T00:00:00Z", &tagged);
        assert!(identity("team-a").owns(&team_a));
        assert!(
            !identity("team-b").owns(&team_a),
            "same name, other namespace"
        );
        assert!(identity("team-a").adoption_tags(&team_a).is_empty());

        // The replaced project's AMI: no namespace tag; adopting it writes one.
        let legacy = image("b", "2024-11-01T00:00:00Z", &contract);
        assert!(identity("team-b").owns(&legacy));
        assert_eq!(
            identity("team-b")
                .adoption_tags(&legacy)
                .get("created-by-namespace")
                .map(String::as_str),
            Some("team-b")
        );
    }

    #[test]
    fn build_tags_are_the_full_contract() {
        let identity = BuildIdentity {
            cluster_name: "prod".into(),
            created_by: "pb".into(),
            namespace: "images".into(),
            packer_repo: "https://example.com/r".into(),
            packer_repo_branch: "main".into(),
        };
        let tags = identity.tags(&BuildFacts {
            created: "2024-11-19T00:00:00Z".parse().unwrap(),
            base_ami: Some("ami-base".into()),
            build_id: "b-1".into(),
            job_id: "j1".into(),
            kubernetes_version: Some("1.31".into()),
            architecture: None,
            variant: None,
            os_family: None,
        });
        let keys: Vec<&str> = tags.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "base-ami",
                "brought-to-you-by",
                "build-id",
                "cluster-name",
                "create-timestamp",
                "created-by",
                "created-by-namespace",
                "job-id",
                "kubernetes-version",
                "packer-repo",
                "packer-repo-branch",
                "status"
            ]
        );
        assert_eq!(tags["brought-to-you-by"], "opsy-the-ami-operator");
        assert_eq!(tags["status"], "active");
    }
}
