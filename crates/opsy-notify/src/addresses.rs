//! Where a webhook may send: a webhook URL comes from whoever may create a PackerBuilder or an
//! AMIRefresher, and the operator POSTs from inside the cluster with its own network position.
//! So a webhook never reaches loopback, link-local addresses (the instance metadata service at
//! 169.254.169.254 and `fd00:ec2::254`), unspecified, multicast or broadcast addresses, nor —
//! unless whoever installs the operator allows it — private ranges. The check is on the
//! addresses the name resolves to (each connection goes only to an address that passed), and on
//! IP literals in the URL; redirects are never followed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which addresses a webhook may reach besides public ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Private ranges: 10/8, 172.16/12, 192.168/16, 100.64/10 (shared), `fc00::/7` (unique
    /// local). The chart value `notifications.allowPrivateWebhooks` (flag
    /// `--allow-private-webhooks`) sets it, for webhooks inside a VPC.
    pub private: bool,
    /// Loopback. Only for tests against a local server; no flag sets it.
    pub loopback: bool,
}

impl AddressPolicy {
    /// Why a webhook may not reach `ip`, if it may not.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => self.refuses_v4(v4),
            IpAddr::V6(v6) => self.refuses_v6(v6),
        }
    }

    fn refuses_v4(&self, ip: Ipv4Addr) -> Option<&'static str> {
        let [a, b, ..] = ip.octets();
        if ip.is_loopback() {
            return (!self.loopback).then_some("loopback");
        }
        if ip.is_link_local() {
            return Some("link-local (instance metadata)");
        }
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || a == 0 {
            return Some("not a unicast address");
        }
        let shared = a == 100 && (64..128).contains(&b);
        if ip.is_private() || shared {
            return (!self.private).then_some("private");
        }
        None
    }

    fn refuses_v6(&self, ip: Ipv6Addr) -> Option<&'static str> {
        // The EC2 instance metadata service over IPv6 sits in the unique-local range: refused
        // even where private addresses are allowed.
        const IMDS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
        if ip.is_loopback() {
            return (!self.loopback).then_some("loopback");
        }
        if ip == IMDS || ip.is_unicast_link_local() {
            return Some("link-local (instance metadata)");
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Some("not a unicast address");
        }
        if (ip.segments()[0] & 0xfe00) == 0xfc00 {
            return (!self.private).then_some("private");
        }
        None
    }
}

/// Resolves names as the system does, keeping only the addresses `policy` allows; a name with
/// none left fails to resolve (without naming it: the URL is a credential).
#[derive(Debug)]
pub(crate) struct GuardedResolver {
    pub policy: AddressPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.refuses(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let why = found
                    .first()
                    .and_then(|a| policy.refuses(a.ip()))
                    .unwrap_or("no address");
                return Err(format!(
                    "the webhook's host resolves only to addresses it may not reach ({why})"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The resolver for webhook clients.
pub(crate) fn resolver(policy: AddressPolicy) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { policy })
}

/// Why `url` may not be reached when its host is an IP literal (names are checked when they
/// resolve), if it may not.
pub(crate) fn refuses_literal(url: &str, policy: AddressPolicy) -> Option<&'static str> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    policy.refuses(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_loopback_and_private_addresses_are_refused_public_ones_allowed() {
        let strict = AddressPolicy::default();
        for (address, why) in [
            ("169.254.169.254", "link-local (instance metadata)"),
            ("fd00:ec2::254", "link-local (instance metadata)"),
            ("fe80::1", "link-local (instance metadata)"),
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (instance metadata)"),
            ("0.0.0.0", "not a unicast address"),
            ("255.255.255.255", "not a unicast address"),
            ("224.0.0.1", "not a unicast address"),
            ("10.1.2.3", "private"),
            ("172.20.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("fd12:3456::1", "private"),
        ] {
            assert_eq!(strict.refuses(ip(address)), Some(why), "{address}");
        }
        for public in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111"] {
            assert_eq!(strict.refuses(ip(public)), None, "{public}");
        }
        // Private ranges when allowed; the metadata service never.
        let vpc = AddressPolicy {
            private: true,
            loopback: false,
        };
        assert_eq!(vpc.refuses(ip("10.1.2.3")), None);
        assert_eq!(vpc.refuses(ip("fd12:3456::1")), None);
        assert!(vpc.refuses(ip("fd00:ec2::254")).is_some());
        assert!(vpc.refuses(ip("169.254.169.254")).is_some());
        assert!(vpc.refuses(ip("127.0.0.1")).is_some());
    }

    #[test]
    fn ip_literals_in_urls_are_checked() {
        let strict = AddressPolicy::default();
        assert_eq!(
            refuses_literal("http://169.254.169.254/latest/meta-data/", strict),
            Some("link-local (instance metadata)")
        );
        assert_eq!(
            refuses_literal("https://[fd00:ec2::254]/", strict),
            Some("link-local (instance metadata)")
        );
        assert_eq!(refuses_literal("https://hooks.example/x", strict), None);
    }
}
