//! Kubernetes versions of control planes and node AMIs, and the skew between them.

use std::fmt;

/// The placeholder in `amiFilters` values replaced by the cluster's Kubernetes version
/// (`major.minor`, read with EKS `DescribeCluster`), e.g.
/// `amazon-eks-node-al2023-x86_64-standard-${KUBERNETES_VERSION}-*`.
pub const VERSION_PLACEHOLDER: &str = "${KUBERNETES_VERSION}";

/// How many minor versions a kubelet may be older than its API server (Kubernetes version
/// skew policy, since 1.28).
pub const KUBELET_MAX_MINORS_BEHIND: u32 = 3;

/// A Kubernetes `major.minor` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MinorVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl MinorVersion {
    /// Reads `1.31` (or `1.31.2`, `v1.31`; the patch is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let mut parts = text.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    /// The Kubernetes version an AMI name carries, as AWS and common builders name node AMIs:
    /// `amazon-eks-node-al2023-x86_64-standard-1.31-v20241024`, `amazon-eks-node-1.30-v2024…`,
    /// `bottlerocket-aws-k8s-1.31-x86_64-v1.26.0-…`: the first `1.NN` that stands alone
    /// (not inside a longer dotted number such as `v1.26.0`).
    pub fn in_name(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        let standalone = |c: Option<&u8>| c.is_none_or(|c| !c.is_ascii_digit() && *c != b'.');
        let mut i = 0;
        while let Some(at) = name[i..].find("1.") {
            let start = i + at;
            i = start + 2;
            if start > 0 && !standalone(bytes.get(start - 1)) {
                continue;
            }
            let digits = bytes[start + 2..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if !(1..=2).contains(&digits) || !standalone(bytes.get(start + 2 + digits)) {
                continue;
            }
            return Self::parse(&name[start..start + 2 + digits]);
        }
        None
    }

    /// Why a node on `self` may not join a control plane on `control_plane`, if it may not:
    /// newer than the API server, or more than three minors older.
    pub fn skew(self, control_plane: Self) -> Option<Skew> {
        if self.major != control_plane.major || self.minor > control_plane.minor {
            return (self > control_plane).then_some(Skew::Newer);
        }
        (control_plane.minor - self.minor > KUBELET_MAX_MINORS_BEHIND).then_some(Skew::TooOld)
    }
}

impl fmt::Display for MinorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How a node version falls outside the supported skew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    /// Newer than the control plane: a kubelet must not be newer than its API server.
    Newer,
    /// More than three minor versions older than the control plane.
    TooOld,
}

/// `values` with the placeholder replaced by `version`.
pub fn fill(values: &[String], version: &str) -> Vec<String> {
    values
        .iter()
        .map(|v| v.replace(VERSION_PLACEHOLDER, version))
        .collect()
}

/// `filters` with the placeholder replaced by `version` in every value.
pub fn fill_filters(filters: &[crate::AmiFilter], version: &str) -> Vec<crate::AmiFilter> {
    filters
        .iter()
        .map(|f| crate::AmiFilter {
            name: f.name.clone(),
            values: fill(&f.values, version),
        })
        .collect()
}

/// Whether any filter value uses the placeholder.
pub fn filters_use_placeholder(filters: &[crate::AmiFilter]) -> bool {
    filters.iter().any(|f| uses_placeholder(&f.values))
}

/// Whether any value uses the placeholder.
pub fn uses_placeholder<'a>(values: impl IntoIterator<Item = &'a String>) -> bool {
    values.into_iter().any(|v| v.contains(VERSION_PLACEHOLDER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_common_ami_names() {
        let v = |s: &str| MinorVersion::in_name(s).map(|v| v.to_string());
        assert_eq!(
            v("amazon-eks-node-al2023-x86_64-standard-1.31-v20241024").as_deref(),
            Some("1.31")
        );
        assert_eq!(v("amazon-eks-node-1.30-v20240928").as_deref(), Some("1.30"));
        assert_eq!(
            v("bottlerocket-aws-k8s-1.29-x86_64-v1.26.0-d0c9bb1e").as_deref(),
            Some("1.29")
        );
        assert_eq!(v("al2023-hardened-v1.26.0"), None);
        assert_eq!(v("al2023-hardened-2026-11-29"), None);
        assert_eq!(v("my-1.310-thing"), None);
    }

    #[test]
    fn a_node_may_be_up_to_three_minors_older_and_never_newer() {
        let cp = MinorVersion::parse("1.31").unwrap();
        let at = |s: &str| MinorVersion::parse(s).unwrap().skew(cp);
        assert_eq!(at("1.31"), None);
        assert_eq!(at("1.28"), None);
        assert_eq!(at("1.27"), Some(Skew::TooOld));
        assert_eq!(at("1.32"), Some(Skew::Newer));
        assert_eq!(at("2.0"), Some(Skew::Newer));
    }

    #[test]
    fn the_placeholder_is_filled() {
        let values =
            vec!["amazon-eks-node-al2023-x86_64-standard-${KUBERNETES_VERSION}-*".to_owned()];
        assert!(uses_placeholder(&values));
        assert_eq!(
            fill(&values, "1.31"),
            ["amazon-eks-node-al2023-x86_64-standard-1.31-*"]
        );
    }
}
