//! Lanes: each group moves only to an AMI of its own architecture, variant and OS family
//! ([`opsy_api::lanes`]). The AMIs the groups run are read (one `DescribeImages` per account
//! asked); each lane the groups run gets its own target — the newest eligible candidate of
//! that lane that passes the promotion gates — and a group whose lane has none is skipped
//! with that reason, never moved.

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use opsy_api::{
    AMIRefresherSpec, AMIRefresherStatus, ImageRef,
    ami_refresher::{HeldBack, LaneTarget},
    lanes::{Lane, os_family_of_name, variant_of_name},
    tags,
};
use opsy_aws::{
    AwsClients, Image,
    managed::{Candidate, Selection},
};

use crate::{
    Error,
    plan::{Group, GroupImage, Targets},
    promotion,
};

/// The lane of `image`: its `architecture` tag, else EC2's architecture (EC2's default,
/// `x86_64`, when neither is known); its `variant` and `os-family` tags, else those of its base
/// (its `base-ami` tag, when the base is in `known`), else what its name names.
pub fn lane_of(image: &Image, known: &BTreeMap<String, Image>) -> Lane {
    let architecture = image
        .tag(tags::ARCHITECTURE)
        .or(image.architecture.as_deref())
        .unwrap_or("x86_64");
    let base = image
        .tag(tags::BASE_AMI)
        .and_then(|b| known.get(b))
        .filter(|base| base.id != image.id)
        .map(|base| lane_of(base, &BTreeMap::new()));
    let variant = match (image.tag(tags::VARIANT), &base) {
        (Some(v), _) => v.to_owned(),
        (None, Some(base)) => base.variant.clone(),
        (None, None) => variant_of_name(&image.name).to_owned(),
    };
    let os_family = image
        .tag(tags::OS_FAMILY)
        .map(str::to_owned)
        .or_else(|| base.as_ref().and_then(|b| b.os_family.clone()))
        .or_else(|| os_family_of_name(&image.name).map(str::to_owned));
    Lane::new(architecture, variant).with_os_family(os_family)
}

/// When `image` was built: its `create-timestamp` tag, else EC2's `CreationDate`.
fn created(image: &Image) -> Option<Timestamp> {
    image
        .tag(tags::CREATE_TIMESTAMP)
        .and_then(|t| t.parse().ok())
        .or(image.creation_date)
}

/// The candidates' images by id (the bases among them too).
pub fn known(selection: &Selection) -> BTreeMap<String, Image> {
    selection
        .candidates
        .iter()
        .map(|c| (c.image.id.clone(), c.image.clone()))
        .collect()
}

/// Reads the AMIs the groups run and sets each group's lane, image creation time and status
/// tag. A group
/// whose AMI cannot be read (not visible to this account, nor to the account that owns the
/// managed AMIs) becomes not manageable: its lane is unknown, so it is never moved. One
/// `DescribeImages` per source asked (an `image-id` filter), for the AMIs `known` lacks, and
/// one more for the bases, not known yet, of those without a `variant` or `os-family` tag.
pub async fn read(
    sources: &[&AwsClients],
    groups: &mut [Group],
    known: &mut BTreeMap<String, Image>,
) -> Result<(), Error> {
    let ids: Vec<String> = groups
        .iter()
        .filter_map(|g| match &g.image {
            GroupImage::Runs { image_id, .. } if !known.contains_key(image_id) => {
                Some(image_id.clone())
            }
            _ => None,
        })
        .collect();
    fetch(sources, ids, known).await?;
    // An AMI without the variant or OS-family tag (a build from before those tags) is of its
    // base's: the bases not known yet are read too (none in the steady state, where the groups
    // run a candidate built from a base the filters match).
    let bases: Vec<String> = groups
        .iter()
        .filter_map(|g| match &g.image {
            GroupImage::Runs { image_id, .. } => known.get(image_id),
            GroupImage::NotManageable { .. } => None,
        })
        .filter(|i| i.tag(tags::VARIANT).is_none() || i.tag(tags::OS_FAMILY).is_none())
        .filter_map(|i| i.tag(tags::BASE_AMI))
        .filter(|b| !known.contains_key(*b))
        .map(str::to_owned)
        .collect();
    fetch(sources, bases, known).await?;
    for group in groups.iter_mut() {
        let GroupImage::Runs { image_id, .. } = &group.image else {
            continue;
        };
        match known.get(image_id) {
            Some(image) => {
                group.lane = Some(lane_of(image, known));
                group.image_created = created(image);
                group.image_status = image.tag(tags::STATUS).map(str::to_owned);
            }
            None => {
                group.image = GroupImage::NotManageable {
                    reason: format!(
                        "cannot tell the architecture of {image_id}, which it runs (not visible \
                         to this account): it is never moved"
                    ),
                };
            }
        }
    }
    Ok(())
}

/// [`read`] and [`assign`] for the groups of an AMIRefresher whose AWS clients are `aws`; the
/// AMIs the groups run are looked for there, then in the account that owns the managed AMIs
/// (`owner`, when it is another). Returns the assignment and every image known on the way.
pub async fn resolve(
    aws: &Arc<AwsClients>,
    owner: &Arc<AwsClients>,
    spec: &AMIRefresherSpec,
    status: &AMIRefresherStatus,
    selection: &Selection,
    groups: &mut [Group],
    following: &str,
) -> Result<(Assignment, BTreeMap<String, Image>), Error> {
    let sources: Vec<&AwsClients> = if Arc::ptr_eq(aws, owner) {
        vec![aws]
    } else {
        vec![aws, owner]
    };
    let mut known = known(selection);
    read(&sources, groups, &mut known).await?;
    let assignment = assign(spec, status, selection, &known, groups, following);
    Ok((assignment, known))
}

/// Reads the images `ids` that `known` lacks into it: one `DescribeImages` (an `image-id`
/// filter, deprecated images included) per source, until all are found.
async fn fetch(
    sources: &[&AwsClients],
    mut ids: Vec<String>,
    known: &mut BTreeMap<String, Image>,
) -> Result<(), Error> {
    ids.sort_unstable();
    ids.dedup();
    for aws in sources {
        let missing: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !known.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        let query = opsy_aws::ImageQuery::default()
            .filter("image-id", missing)
            .including_deprecated();
        for image in aws.describe_images(&query).await?.iter() {
            known.insert(image.id.clone(), image.clone());
        }
    }
    Ok(())
}

/// What each lane moves to.
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    /// Each group's target.
    pub targets: Targets,
    /// The chosen candidate of each target (absent for a target followed while nothing is
    /// eligible).
    pub chosen: BTreeMap<String, Candidate>,
    /// Candidates newer than a lane's target that a gate holds back (at most 5).
    pub held_back: Vec<HeldBack>,
    /// `status.targets`: each lane's target, when the groups run more than one lane.
    pub lanes: Vec<LaneTarget>,
}

impl Assignment {
    /// The primary target's candidate (`status.targetImage`).
    pub fn primary(&self) -> Option<&Candidate> {
        self.chosen.get(&self.targets.primary)
    }
}

/// Chooses each lane's target for `groups` (their lanes read by [`read`]), and skips the groups
/// of a lane without one. `following` is the target to follow when nothing is eligible (the
/// last one, while groups are in flight).
pub fn assign(
    spec: &AMIRefresherSpec,
    status: &AMIRefresherStatus,
    selection: &Selection,
    known: &BTreeMap<String, Image>,
    groups: &mut [Group],
    following: &str,
) -> Assignment {
    infer_os_families(groups);
    let mut by_lane: BTreeMap<Lane, Vec<String>> = BTreeMap::new();
    for group in groups.iter() {
        if let (GroupImage::Runs { .. }, Some(lane)) = (&group.image, &group.lane) {
            by_lane
                .entry(lane.clone())
                .or_default()
                .push(group.name.clone());
        }
    }
    if by_lane.is_empty() {
        // No group to move: the target is the newest eligible candidate of any lane.
        let choice = promotion::choose(spec, status, selection);
        let target = choice
            .chosen
            .as_ref()
            .map_or_else(|| following.to_owned(), |c| c.image.id.clone());
        return Assignment {
            targets: Targets::single(&target),
            chosen: choice.chosen.map(|c| (target, c)).into_iter().collect(),
            held_back: choice.held_back,
            lanes: Vec::new(),
        };
    }
    let mut out = Assignment::default();
    let mut reasons: BTreeMap<Lane, String> = BTreeMap::new();
    for (lane, names) in &by_lane {
        let candidates: Vec<Candidate> = selection
            .candidates
            .iter()
            .filter(|c| lane.admits(&lane_of(&c.image, known)))
            .cloned()
            .collect();
        let sub = Selection {
            chosen: candidates.iter().find(|c| c.is_eligible()).cloned(),
            candidates,
        };
        // The lane's own view of the last status: its target and its groups.
        let previous = status
            .targets
            .iter()
            .find(|t| {
                t.architecture == lane.architecture
                    && t.variant == lane.variant
                    && t.os_family == lane.os_family
            })
            .map(|t| t.image.clone())
            .or_else(|| {
                status.target_image.clone().filter(|t| {
                    status.targets.is_empty()
                        && known
                            .get(&t.id)
                            .is_none_or(|i| lane.admits(&lane_of(i, known)))
                })
            });
        let lane_status = AMIRefresherStatus {
            target_image: previous.clone(),
            node_groups: status
                .node_groups
                .iter()
                .filter(|g| names.contains(&g.name))
                .cloned()
                .collect(),
            ..AMIRefresherStatus::default()
        };
        let choice = promotion::choose(spec, &lane_status, &sub);
        out.held_back.extend(choice.held_back);
        // Nothing eligible in the lane: groups still in flight are followed to the end of the
        // move they started.
        let in_flight = lane_status
            .node_groups
            .iter()
            .find(|g| g.phase.in_flight())
            .and_then(|g| g.to_image.clone());
        let target = match (&choice.chosen, in_flight) {
            (Some(c), _) => {
                out.chosen.insert(c.image.id.clone(), c.clone());
                c.image.id.clone()
            }
            (None, Some(image)) => image,
            (None, None) => {
                let others: Vec<String> = by_lane
                    .keys()
                    .filter(|l| *l != lane)
                    .map(ToString::to_string)
                    .collect();
                let eligible = selection
                    .candidates
                    .iter()
                    .filter(|c| c.is_eligible())
                    .count();
                reasons.insert(
                    lane.clone(),
                    format!(
                        "no eligible candidate is {lane}, the lane of the AMI it runs ({eligible} \
                         eligible of other lanes{}): a group is never moved to another \
                         architecture, variant or OS family; build or name a {lane} AMI, or \
                         list the group in spec.exclude",
                        if others.is_empty() {
                            String::new()
                        } else {
                            format!("; this cluster also runs {}", others.join(", "))
                        }
                    ),
                );
                continue;
            }
        };
        out.targets.by_lane.insert(lane.clone(), target);
    }
    for group in groups.iter_mut() {
        if let Some(reason) = group.lane.as_ref().and_then(|l| reasons.get(l)) {
            let runs = match &group.image {
                GroupImage::Runs { image_id, .. } => image_id.clone(),
                GroupImage::NotManageable { .. } => continue,
            };
            group.image = GroupImage::NotManageable {
                reason: format!("runs {runs}: {reason}"),
            };
        }
    }
    // The primary lane: the most groups, then the newest target, then by name.
    let primary = out
        .targets
        .by_lane
        .iter()
        .max_by_key(|(lane, target)| {
            (
                by_lane.get(*lane).map_or(0, Vec::len),
                out.chosen.get(*target).and_then(|c| c.created),
                std::cmp::Reverse((*lane).clone()),
            )
        })
        .map(|(lane, _)| lane.clone());
    match primary.and_then(|l| out.targets.by_lane.get(&l).cloned()) {
        Some(target) => out.targets.primary = target,
        None => {
            // No lane of the groups has a target: the newest eligible of any lane is the one
            // shown; no group moves to it.
            let choice = promotion::choose(spec, status, selection);
            let target = choice
                .chosen
                .as_ref()
                .map_or_else(|| following.to_owned(), |c| c.image.id.clone());
            if let Some(c) = choice.chosen {
                out.chosen.insert(target.clone(), c);
            }
            out.targets.primary = target;
        }
    }
    if out.targets.by_lane.len() > 1 {
        out.lanes = out
            .targets
            .by_lane
            .iter()
            .map(|(lane, target)| LaneTarget {
                architecture: lane.architecture.clone(),
                variant: lane.variant.clone(),
                os_family: lane.os_family.clone(),
                image: image_ref(target, out.chosen.get(target), known),
                groups: by_lane
                    .get(lane)
                    .map_or(0, |g| i32::try_from(g.len()).unwrap_or(i32::MAX)),
            })
            .collect();
        out.lanes = for_status(std::mem::take(&mut out.lanes));
    }
    let mut seen = std::collections::BTreeSet::new();
    out.held_back.retain(|h| seen.insert(h.image.clone()));
    out.held_back.truncate(5);
    out
}

/// The lanes `status.targets` shows: at most [`MAX_TARGETS`](opsy_api::ami_refresher::MAX_TARGETS)
/// (a status beyond its schema would fail every write), those with the most groups first.
/// Every lane keeps its target whether shown or not.
pub fn for_status(mut lanes: Vec<LaneTarget>) -> Vec<LaneTarget> {
    lanes.sort_by_key(|l| std::cmp::Reverse(l.groups));
    lanes.truncate(opsy_api::ami_refresher::MAX_TARGETS);
    lanes
}

/// A group whose AMI tells no OS family (a build named by the team, without the `os-family`
/// tag, whose base is not known here) is taken to be of the family the cluster's other groups of
/// its architecture and variant run, when they all run one: otherwise its lane would split from
/// theirs each time it moves between a base (whose name tells) and such a build. With several
/// families, or none, it keeps a lane of its own, which admits candidates of any family.
fn infer_os_families(groups: &mut [Group]) {
    let mut families: BTreeMap<(String, String), std::collections::BTreeSet<String>> =
        BTreeMap::new();
    for lane in groups.iter().filter_map(|g| g.lane.as_ref()) {
        if let Some(family) = &lane.os_family {
            families
                .entry((lane.architecture.clone(), lane.variant.clone()))
                .or_default()
                .insert(family.clone());
        }
    }
    for lane in groups.iter_mut().filter_map(|g| g.lane.as_mut()) {
        if lane.os_family.is_none()
            && let Some(known) = families.get(&(lane.architecture.clone(), lane.variant.clone()))
            && known.len() == 1
        {
            lane.os_family = known.first().cloned();
        }
    }
}

/// `status.targetImage` (or a lane's) for `target`.
pub fn image_ref(
    target: &str,
    chosen: Option<&Candidate>,
    known: &BTreeMap<String, Image>,
) -> ImageRef {
    match chosen {
        Some(c) => ImageRef {
            id: target.to_owned(),
            name: Some(c.image.name.clone()),
            created: c.created.map(Time),
            expires: c.expires.map(Time),
        },
        None => ImageRef {
            id: target.to_owned(),
            name: known.get(target).map(|i| i.name.clone()),
            created: known.get(target).and_then(created).map(Time),
            expires: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_at_most_its_schema_limit_of_lanes_the_largest_first() {
        let lanes: Vec<LaneTarget> = (0..20)
            .map(|i| LaneTarget {
                architecture: "x86_64".into(),
                variant: format!("v{i}"),
                groups: i,
                ..LaneTarget::default()
            })
            .collect();
        let shown = for_status(lanes);
        assert_eq!(shown.len(), opsy_api::ami_refresher::MAX_TARGETS);
        assert_eq!(shown[0].groups, 19);
        assert_eq!(shown[15].groups, 4);
        // The limit is the schema's.
        let crd = serde_json::to_value(<opsy_api::AMIRefresher as kube::CustomResourceExt>::crd())
            .unwrap();
        let max = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["targets"]["maxItems"];
        assert_eq!(
            max,
            &serde_json::json!(opsy_api::ami_refresher::MAX_TARGETS)
        );
    }
}
