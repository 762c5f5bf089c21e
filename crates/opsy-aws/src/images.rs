//! Finding images: `DescribeImages` with filters and owners, every page, shared between callers.
//!
//! Identical queries made within the cache TTL are answered by one call; concurrent identical
//! queries wait for the one call in flight (single flight), so the number of `DescribeImages`
//! calls grows with the number of distinct queries, not with the number of custom resources.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use jiff::Timestamp;
use moka::future::Cache;
use opsy_api::AmiFilter;

use crate::{AwsClients, AwsError};

/// Filter names whose values are account ids or aliases, sent as the request's `Owners` too.
const OWNER_FILTERS: [&str; 2] = ["owner-id", "owner-alias"];

/// An AMI as this crate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The AMI id.
    pub id: String,
    /// The AMI name.
    pub name: String,
    /// `available`, `pending`, ...
    pub state: String,
    /// Owning account.
    pub owner_id: String,
    /// EC2 `CreationDate`.
    pub creation_date: Option<Timestamp>,
    /// EC2 `DeprecationTime`, when set.
    pub deprecation_time: Option<Timestamp>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// The EBS snapshots behind the image, with their sizes in GiB (block device mappings).
    pub snapshots: Vec<(String, i32)>,
    /// EC2's deregistration protection (`disabled`, `enabled`, `enabled-with-cooldown`).
    pub deregistration_protection: Option<String>,
    /// `x86_64`, `arm64`, … (EC2 `Architecture`).
    pub architecture: Option<String>,
}

impl Image {
    fn from_sdk(image: aws_sdk_ec2::types::Image) -> Option<Self> {
        Some(Self {
            id: image.image_id?,
            name: image.name.unwrap_or_default(),
            state: image
                .state
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            owner_id: image.owner_id.unwrap_or_default(),
            creation_date: image.creation_date.as_deref().and_then(|d| d.parse().ok()),
            deprecation_time: image
                .deprecation_time
                .as_deref()
                .and_then(|d| d.parse().ok()),
            tags: image
                .tags
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| Some((t.key?, t.value?)))
                .collect(),
            snapshots: image
                .block_device_mappings
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| {
                    let ebs = m.ebs?;
                    Some((ebs.snapshot_id?, ebs.volume_size.unwrap_or_default()))
                })
                .collect(),
            deregistration_protection: image.deregistration_protection,
            architecture: image.architecture.map(|a| a.as_str().to_owned()),
        })
    }

    /// Whether EC2 refuses to deregister the image (its deregistration protection is on).
    pub fn is_protected(&self) -> bool {
        self.deregistration_protection
            .as_deref()
            .is_some_and(|p| p.starts_with("enabled"))
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// Whether the image can be used to launch instances.
    pub fn is_available(&self) -> bool {
        self.state == "available"
    }
}

/// A normalised `DescribeImages` query: the same filters in any order are the same query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageQuery {
    /// `(name, sorted values)`, sorted by name.
    pub filters: Vec<(String, Vec<String>)>,
    /// Account ids or aliases (`self`, `amazon`), sorted.
    pub owners: Vec<String>,
    /// Image ids, sorted.
    pub image_ids: Vec<String>,
    /// Also answer with deprecated images of other accounts (EC2 `IncludeDeprecated`; an
    /// owner always sees its own).
    pub include_deprecated: bool,
}

impl ImageQuery {
    /// A query from a custom resource's `amiFilters`. The values of `owner-id` and
    /// `owner-alias` filters also become the request's owners, so AWS searches only those
    /// accounts (and the filters still apply).
    pub fn from_filters(filters: &[AmiFilter]) -> Self {
        let mut query = Self::default();
        for filter in filters {
            query = query.filter(&filter.name, filter.values.iter().map(String::as_str));
            if OWNER_FILTERS.contains(&filter.name.as_str()) {
                query.owners.extend(filter.values.iter().cloned());
            }
        }
        query.normalise()
    }

    /// Adds a filter (values of an existing filter with the same name are merged).
    pub fn filter<'a>(mut self, name: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        let values = values.into_iter().map(str::to_owned);
        match self.filters.iter_mut().find(|(n, _)| n == name) {
            Some((_, existing)) => existing.extend(values),
            None => self.filters.push((name.to_owned(), values.collect())),
        }
        self.normalise()
    }

    /// Restricts the search to images owned by `owner`.
    pub fn owner(mut self, owner: &str) -> Self {
        self.owners.push(owner.to_owned());
        self.normalise()
    }

    /// Looks up these image ids.
    pub fn ids<'a>(mut self, ids: impl IntoIterator<Item = &'a str>) -> Self {
        self.image_ids.extend(ids.into_iter().map(str::to_owned));
        self.normalise()
    }

    /// Includes deprecated images of other accounts, which EC2 leaves out by default (what a
    /// group runs is often an old public AMI that AWS deprecated since).
    pub fn including_deprecated(mut self) -> Self {
        self.include_deprecated = true;
        self
    }

    /// Whether a change to `image` can change this query's answer: it filters on a tag the
    /// change wrote (or on tags in a way this crate does not evaluate), or on deprecation.
    fn depends_on(&self, change: &ImageChange<'_>) -> bool {
        self.filters.iter().any(|(name, _)| match change {
            ImageChange::Tags(written) => match name.strip_prefix("tag:") {
                Some(key) => written.contains_key(key),
                None => name.starts_with("tag"),
            },
            ImageChange::Deprecation(_) => name.contains("deprecat"),
        })
    }

    /// Whether `image` passes this query's tag filters; `None` when a filter is not an exact
    /// `tag:<key>` match (wildcards, `tag-key`, `tag-value`).
    fn tags_match(&self, image: &Image) -> Option<bool> {
        let mut matched = true;
        for (name, values) in &self.filters {
            if !name.starts_with("tag") {
                continue;
            }
            let key = name.strip_prefix("tag:")?;
            if values.iter().any(|v| has_wildcard(v)) {
                return None;
            }
            matched &= image
                .tag(key)
                .is_some_and(|t| values.iter().any(|v| v == t));
        }
        Some(matched)
    }

    /// Whether `image` passes everything but the tag filters: ids, owners and the filters this
    /// crate can evaluate exactly. `None` when that cannot be decided here. `account` is this
    /// account's id (what `self` means), when known.
    fn rest_matches(&self, image: &Image, account: Option<&str>) -> Option<bool> {
        if !self.image_ids.is_empty() && !self.image_ids.contains(&image.id) {
            return Some(false);
        }
        if !self.owners.is_empty() {
            let owner_is = |owner: &str| match owner {
                "self" => account.map(|a| a == image.owner_id),
                id if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) => {
                    Some(id == image.owner_id)
                }
                _ => None,
            };
            let verdicts: Vec<Option<bool>> = self.owners.iter().map(|o| owner_is(o)).collect();
            if !verdicts.contains(&Some(true)) {
                return if verdicts.contains(&None) {
                    None
                } else {
                    Some(false)
                };
            }
        }
        let mut matched = true;
        for (name, values) in &self.filters {
            let attribute = match name.as_str() {
                n if n.starts_with("tag") => continue,
                "image-id" => &image.id,
                "name" => &image.name,
                "owner-id" => &image.owner_id,
                "state" => &image.state,
                _ => return None,
            };
            if values.iter().any(|v| has_wildcard(v)) {
                return None;
            }
            matched &= values.iter().any(|v| v == attribute);
        }
        Some(matched)
    }

    /// Whether the answer holds `after` (the image once changed): decided from whether it
    /// held `before`, when the query can be evaluated here; `None` when it cannot.
    fn still_holds(
        &self,
        held: bool,
        before: &Image,
        after: &Image,
        account: Option<&str>,
    ) -> Option<bool> {
        if !self.tags_match(after)? {
            return Some(false);
        }
        // What the change did not touch passed before.
        if held {
            return Some(true);
        }
        // The tags passed before, yet the image was not in the answer: the rest excludes it.
        if self.tags_match(before)? {
            return Some(false);
        }
        self.rest_matches(after, account)
    }

    fn normalise(mut self) -> Self {
        for (_, values) in &mut self.filters {
            values.sort();
            values.dedup();
        }
        self.filters.sort();
        self.owners.sort();
        self.owners.dedup();
        self.image_ids.sort();
        self.image_ids.dedup();
        self
    }
}

/// EC2 filter values may hold `*` and `?` wildcards (and `\\` escapes).
fn has_wildcard(value: &str) -> bool {
    value.contains(['*', '?', '\\'])
}

/// A change this process made to an image.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ImageChange<'a> {
    /// Tags written (existing keys overwritten).
    Tags(&'a BTreeMap<String, String>),
    /// EC2 deprecation time set.
    Deprecation(Timestamp),
}

impl ImageChange<'_> {
    fn apply(&self, mut image: Image) -> Image {
        match self {
            ImageChange::Tags(written) => image
                .tags
                .extend(written.iter().map(|(k, v)| (k.clone(), v.clone()))),
            ImageChange::Deprecation(at) => image.deprecation_time = Some(*at),
        }
        image
    }
}

type CacheKey = (String, ImageQuery);

/// Shared, single-flight cache of `DescribeImages` results.
#[derive(Debug, Clone)]
pub(crate) struct ImageCache {
    cache: Cache<CacheKey, Arc<Vec<Image>>>,
    /// Serialises updates after writes, so two writes never lose each other's change.
    updates: Arc<tokio::sync::Mutex<()>>,
    /// This account's id, learnt from an image a `self`-owned query returned.
    account: Arc<OnceLock<String>>,
}

impl ImageCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(10_000)
                .build(),
            updates: Arc::default(),
            account: Arc::default(),
        }
    }

    /// After this process changed image `image_id`: answers the change cannot affect keep the
    /// changed image in place; answers it can affect are re-decided where the query can be
    /// evaluated here (exact tag, id, owner, name and state filters) and forgotten otherwise.
    ///
    /// A burst of builds finishing in one cluster thus costs no re-read of the cluster's
    /// managed AMIs per build, while every cached answer shows the changes this process made.
    /// A lookup already in flight during a write can still store the older answer until the
    /// TTL ends; callers that act on an absence check it (see the PackerBuilder's reconcile).
    pub(crate) async fn changed(&self, image_id: &str, change: ImageChange<'_>) {
        let _serialised = self.updates.lock().await;
        let entries: Vec<(Arc<CacheKey>, Arc<Vec<Image>>)> = self.cache.iter().collect();
        let before = entries
            .iter()
            .find_map(|(_, images)| images.iter().find(|i| i.id == image_id))
            .cloned();
        let after = before.clone().map(|image| change.apply(image));
        let account = self.account.get().map(String::as_str);
        for (key, images) in entries {
            let query = &key.1;
            let held = images.iter().any(|i| i.id == image_id);
            let holds = match (&before, &after) {
                _ if !query.depends_on(&change) => Some(held),
                (Some(before), Some(after)) => query.still_holds(held, before, after, account),
                _ => None,
            };
            match (holds, &after) {
                (Some(false), _) if !held => {}
                (Some(holds), Some(after)) => {
                    let mut updated: Vec<Image> = images
                        .iter()
                        .filter(|i| i.id != image_id)
                        .cloned()
                        .collect();
                    if holds {
                        updated.push(after.clone());
                        updated.sort_by(|a, b| a.id.cmp(&b.id));
                    }
                    self.cache.insert((*key).clone(), Arc::new(updated)).await;
                }
                _ => self.cache.invalidate(&*key).await,
            }
        }
    }

    fn learn_account(&self, query: &ImageQuery, images: &[Image]) {
        if query.owners == ["self"]
            && let Some(image) = images.first()
            && !image.owner_id.is_empty()
        {
            let _ = self.account.set(image.owner_id.clone());
        }
    }
}

/// Largest page of `DescribeImages` (AWS allows 5–1000).
const MAX_PAGE: i32 = 1000;

impl AwsClients {
    /// All images matching `query`, every page, shared with identical concurrent or recent
    /// queries. Images are sorted by id.
    pub async fn describe_images(&self, query: &ImageQuery) -> Result<Arc<Vec<Image>>, AwsError> {
        let key = (self.region.clone(), query.clone());
        self.images
            .cache
            .try_get_with(key, self.describe_images_uncached(query))
            .await
            .map_err(|e| (*e).clone())
    }

    /// Forgets every cached result.
    pub fn invalidate_images(&self) {
        self.images.cache.invalidate_all();
    }

    /// Forgets the cached answer to `query`, so the next lookup asks EC2.
    pub async fn forget_images(&self, query: &ImageQuery) {
        self.images
            .cache
            .invalidate(&(self.region.clone(), query.clone()))
            .await;
    }

    /// Brings cached results up to date after this process changed `image_id`; after a
    /// failed write (whose effect is unknown) everything is forgotten.
    pub(crate) async fn image_changed<T>(
        &self,
        image_id: &str,
        change: ImageChange<'_>,
        result: &Result<T, AwsError>,
    ) {
        match result {
            Ok(_) => self.images.changed(image_id, change).await,
            Err(_) => self.invalidate_images(),
        }
    }

    async fn describe_images_uncached(
        &self,
        query: &ImageQuery,
    ) -> Result<Arc<Vec<Image>>, AwsError> {
        let mut images = Vec::new();
        // EC2 takes at most 200 filter values a request: a long list is several requests.
        for filters in crate::filters::split(&query.filters) {
            self.describe_images_pages(query, &filters, &mut images)
                .await?;
        }
        images.sort_by(|a, b| a.id.cmp(&b.id));
        images.dedup_by(|a, b| a.id == b.id);
        self.images.learn_account(query, &images);
        Ok(Arc::new(images))
    }

    /// Every page of `query` with `filters` (its own, or a part of them) into `images`.
    async fn describe_images_pages(
        &self,
        query: &ImageQuery,
        filters: &[crate::filters::NamedFilter],
        images: &mut Vec<Image>,
    ) -> Result<(), AwsError> {
        const OP: &str = "DescribeImages";
        let mut token: Option<String> = None;
        loop {
            let mut request = self.ec2.describe_images().set_next_token(token.take());
            // AWS rejects MaxResults together with ImageIds.
            if query.image_ids.is_empty() {
                request =
                    request.max_results(self.page_size.unwrap_or(MAX_PAGE).clamp(5, MAX_PAGE));
            } else {
                request = request.set_image_ids(Some(query.image_ids.clone()));
            }
            if !filters.is_empty() {
                request = request.set_filters(Some(crate::filters::ec2(filters)));
            }
            if !query.owners.is_empty() {
                request = request.set_owners(Some(query.owners.clone()));
            }
            if query.include_deprecated {
                request = request.include_deprecated(true);
            }
            let page = self.call("ec2", OP, request.send()).await;
            let page = match page {
                Ok(page) => page,
                // Looking up ids that do not exist is an empty answer, not an error.
                Err(AwsError::NotFound { .. }) if !query.image_ids.is_empty() => break,
                Err(e) => return Err(e),
            };
            images.extend(
                page.images
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(Image::from_sdk),
            );
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        Ok(())
    }

    /// The base AMI: the newest `available` image matching `filters` (ties broken by name, then
    /// id, so every replica picks the same one). `None` when nothing matches.
    pub async fn resolve_base_image(
        &self,
        filters: &[AmiFilter],
    ) -> Result<Option<Image>, AwsError> {
        let query = ImageQuery::from_filters(filters);
        let images = self.describe_images(&query).await?;
        Ok(newest(images.iter().filter(|i| i.is_available())).cloned())
    }
}

/// The newest image by creation date; ties broken by name, then id. Images without a creation
/// date sort oldest.
pub fn newest<'a>(images: impl IntoIterator<Item = &'a Image>) -> Option<&'a Image> {
    images
        .into_iter()
        .max_by(|a, b| (a.creation_date, &a.name, &a.id).cmp(&(b.creation_date, &b.name, &b.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(name: &str, values: &[&str]) -> AmiFilter {
        AmiFilter {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn queries_are_normalised_and_owner_filters_become_owners() {
        let a = ImageQuery::from_filters(&[
            filter("name", &["b*", "a*"]),
            filter("owner-id", &["602401143452"]),
        ]);
        let b = ImageQuery::from_filters(&[
            filter("owner-id", &["602401143452"]),
            filter("name", &["a*", "b*"]),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.owners, ["602401143452"]);
        assert_eq!(
            a.filters[0],
            ("name".to_owned(), vec!["a*".to_owned(), "b*".to_owned()])
        );
    }

    fn image(id: &str, name: &str, created: &str) -> Image {
        Image {
            id: id.into(),
            name: name.into(),
            state: "available".into(),
            owner_id: "1".into(),
            creation_date: created.parse().ok(),
            deprecation_time: None,
            tags: BTreeMap::new(),
            snapshots: Vec::new(),
            deregistration_protection: None,
            architecture: None,
        }
    }

    #[test]
    fn a_change_is_re_decided_only_where_the_query_can_be_evaluated() {
        let written: BTreeMap<String, String> = [("status".to_owned(), "active".to_owned())].into();
        let change = ImageChange::Tags(&written);
        let before = image("ami-1", "built-1", "2024-10-01T00:00:00Z");
        let after = change.apply(before.clone());
        let managed = ImageQuery::default()
            .owner("self")
            .filter("tag:status", ["active"]);
        let by_name = ImageQuery::default().filter("name", ["built-*"]);
        let wildcard_tag = ImageQuery::default().filter("tag:status", ["act*"]);

        // A query that does not look at the written tags keeps its answer.
        assert!(!by_name.depends_on(&change));
        assert!(managed.depends_on(&change));
        assert!(
            ImageQuery::default()
                .filter("tag-key", ["x"])
                .depends_on(&change)
        );
        // `self` is decided once this account's id is known.
        assert_eq!(managed.still_holds(false, &before, &after, None), None);
        assert_eq!(
            managed.still_holds(false, &before, &after, Some("1")),
            Some(true)
        );
        assert_eq!(
            managed.still_holds(false, &before, &after, Some("2")),
            Some(false)
        );
        // It was in the answer: only the tags can take it out.
        assert_eq!(managed.still_holds(true, &before, &after, None), Some(true));
        let retired = ImageChange::Tags(&[("status".to_owned(), "deprecated".to_owned())].into())
            .apply(after.clone());
        assert_eq!(
            managed.still_holds(true, &after, &retired, None),
            Some(false)
        );
        // Matching tags before yet absent: something else keeps it out.
        assert_eq!(
            managed.still_holds(false, &after, &after, Some("1")),
            Some(false)
        );
        // Wildcards are EC2's to evaluate.
        assert_eq!(
            wildcard_tag.still_holds(false, &before, &after, Some("1")),
            None
        );
        assert_eq!(
            ImageQuery::default()
                .filter("tag:status", ["active"])
                .filter("architecture", ["x86_64"])
                .still_holds(false, &before, &after, Some("1")),
            None
        );
        assert_eq!(
            ImageQuery::default()
                .ids(["ami-2"])
                .filter("tag:status", ["active"])
                .still_holds(false, &before, &after, None),
            Some(false)
        );
    }

    #[test]
    fn newest_breaks_ties_deterministically() {
        let images = [
            image("ami-2", "x-2", "2024-10-01T00:00:00Z"),
            image("ami-1", "x-1", "2024-10-01T00:00:00Z"),
            image("ami-0", "x-0", "2024-09-01T00:00:00Z"),
            image("ami-9", "x-9", "not a date"),
        ];
        assert_eq!(newest(&images).map(|i| i.id.as_str()), Some("ami-2"));
        let reversed: Vec<_> = images.iter().rev().cloned().collect();
        assert_eq!(newest(&reversed).map(|i| i.id.as_str()), Some("ami-2"));
        assert!(newest(&[]).is_none());
    }
}
