//! Finding images: `DescribeImages` with filters and owners, every page, shared between callers.
//!
//! Identical queries made within the cache TTL are answered by one call; concurrent identical
//! queries wait for the one call in flight (single flight), so the number of `DescribeImages`
//! calls grows with the number of distinct queries, not with the number of custom resources.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aws_sdk_ec2::types::Filter;
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
        })
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

type CacheKey = (String, ImageQuery);

/// Shared, single-flight cache of `DescribeImages` results.
#[derive(Debug, Clone)]
pub(crate) struct ImageCache {
    cache: Cache<CacheKey, Arc<Vec<Image>>>,
}

impl ImageCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(10_000)
                .build(),
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

    /// Forgets cached results, after this process changed images (tags, deprecation).
    pub fn invalidate_images(&self) {
        self.images.cache.invalidate_all();
    }

    async fn describe_images_uncached(
        &self,
        query: &ImageQuery,
    ) -> Result<Arc<Vec<Image>>, AwsError> {
        const OP: &str = "DescribeImages";
        let mut images = Vec::new();
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
            for (name, values) in &query.filters {
                request = request.filters(
                    Filter::builder()
                        .name(name)
                        .set_values(Some(values.clone()))
                        .build(),
                );
            }
            if !query.owners.is_empty() {
                request = request.set_owners(Some(query.owners.clone()));
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
        images.sort_by(|a, b| a.id.cmp(&b.id));
        images.dedup_by(|a, b| a.id == b.id);
        Ok(Arc::new(images))
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
        }
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
