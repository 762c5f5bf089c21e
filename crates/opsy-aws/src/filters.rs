//! EC2's limit on filter values: at most [`MAX_FILTER_VALUES`] in one request, counted over
//! all its filters (EC2 API reference, "Error codes": `FilterLimitExceeded`, "The maximum
//! number of filter values specified on a single call is 200"). A lookup by many ids is split
//! into as few requests as the limit allows.

/// Filter values EC2 accepts in one request, over all its filters.
pub const MAX_FILTER_VALUES: usize = 200;

/// A filter: its name and values.
pub type NamedFilter = (String, Vec<String>);

/// `filters` as requests of at most [`MAX_FILTER_VALUES`] values each: the filter with the
/// most values is cut into chunks, the others repeated in each request. A filter's values are
/// alternatives, so the union of the answers is the answer to `filters`. When the other
/// filters alone reach the limit, nothing can be cut: one request with every value (EC2
/// refuses it, naming the limit).
pub fn split(filters: &[NamedFilter]) -> Vec<Vec<NamedFilter>> {
    let total: usize = filters.iter().map(|(_, v)| v.len()).sum();
    let Some((widest, _)) = filters
        .iter()
        .enumerate()
        .max_by_key(|(i, (_, v))| (v.len(), usize::MAX - i))
    else {
        return vec![Vec::new()];
    };
    let room = MAX_FILTER_VALUES.saturating_sub(total - filters[widest].1.len());
    if total <= MAX_FILTER_VALUES || room == 0 {
        return vec![filters.to_vec()];
    }
    filters[widest]
        .1
        .chunks(room)
        .map(|chunk| {
            let mut request = filters.to_vec();
            request[widest].1 = chunk.to_vec();
            request
        })
        .collect()
}

/// `filters` as the SDK's EC2 filters.
pub fn ec2(filters: &[NamedFilter]) -> Vec<aws_sdk_ec2::types::Filter> {
    filters
        .iter()
        .map(|(name, values)| {
            aws_sdk_ec2::types::Filter::builder()
                .name(name)
                .set_values(Some(values.clone()))
                .build()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(name: &str, n: usize) -> NamedFilter {
        (
            name.to_owned(),
            (0..n).map(|i| format!("{name}-{i}")).collect(),
        )
    }

    #[test]
    fn within_the_limit_is_one_request() {
        let filters = [filter("image-id", 195), filter("instance-state-name", 5)];
        assert_eq!(split(&filters), vec![filters.to_vec()]);
        assert_eq!(split(&[]), vec![Vec::<NamedFilter>::new()]);
    }

    #[test]
    fn the_widest_filter_is_cut_into_as_few_requests_as_the_limit_allows() {
        let filters = [filter("instance-state-name", 5), filter("image-id", 1000)];
        let requests = split(&filters);
        // 195 ids beside the 5 states per request: ceil(1000 / 195) = 6.
        assert_eq!(requests.len(), 6);
        let mut ids = Vec::new();
        for request in &requests {
            assert!(request.iter().map(|(_, v)| v.len()).sum::<usize>() <= MAX_FILTER_VALUES);
            assert_eq!(request[0], filters[0]);
            ids.extend(request[1].1.clone());
        }
        assert_eq!(ids, filters[1].1);
    }

    #[test]
    fn nothing_to_cut_is_left_to_ec2_to_refuse() {
        let filters = [filter("a", 200), filter("b", 200)];
        assert_eq!(split(&filters), vec![filters.to_vec()]);
    }
}
