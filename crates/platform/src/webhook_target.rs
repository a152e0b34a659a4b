//! Where a webhook may point: no server-side request forgery.
//!
//! A customer admin chooses a webhook's URL, and the platform POSTs to it
//! from inside the operator's network. A URL naming (or resolving to) a
//! loopback, link-local, private, shared, multicast or unspecified address
//! is refused when the webhook is created, and again at every delivery,
//! where the address checked is the one connected to (a resolver that
//! filters, so a name cannot be re-pointed between check and connect).
//! Redirects are not followed and no proxy is used. The operator's config
//! may allow named private targets (`[webhooks] allowed_private_targets`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("must be an http:// or https:// URL of at most 2000 characters")]
    NotHttp,
    #[error("{0} is not a public address; webhooks reach only the internet")]
    NotPublic(String),
    #[error("{0} does not resolve to a public address")]
    Unresolvable(String),
}

/// Whether an address belongs to the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            // IPv4 carried in IPv6 is judged as the IPv4 it carries:
            // mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64 64:ff9b::/96.
            let segments = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            if segments[0] == 0x2002 {
                // 6to4 carries an IPv4 address in its second and third segments.
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (segments[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (segments[0] == 0x2001 && segments[1] == 0x0db8)) // documentation
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// The rules every webhook URL meets, with the operator's exceptions.
#[derive(Debug, Clone, Default)]
pub struct WebhookPolicy {
    /// Host names or addresses (lower case) allowed although not public.
    allowed_private: Vec<String>,
    /// False: nothing is sent (a test installation, an air-gapped site).
    disabled: bool,
}

impl WebhookPolicy {
    pub fn new(allowed_private: impl IntoIterator<Item = String>) -> Self {
        WebhookPolicy {
            allowed_private: allowed_private
                .into_iter()
                .map(|h| h.trim().trim_matches(['[', ']']).to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            disabled: false,
        }
    }

    /// A policy under which no delivery is made at all.
    pub fn disabled(mut self) -> Self {
        self.disabled = true;
        self
    }

    pub fn delivers(&self) -> bool {
        !self.disabled
    }

    fn allowed_host(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.allowed_private.contains(&host)
    }

    fn allowed_address(&self, host: &str, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed_host(host) || self.allowed_host(&ip.to_string())
    }

    /// Checks a URL's form and, when its host is an address, the address.
    /// URL parsing reads every IPv4 spelling (`127.1`, `2130706433`,
    /// `0x7f.1`) as the address it is.
    pub fn check_url(&self, url: &str) -> Result<Url, TargetError> {
        let url = url.trim();
        if url.len() > 2000 || url.contains(char::is_whitespace) {
            return Err(TargetError::NotHttp);
        }
        let parsed = Url::parse(url).map_err(|_| TargetError::NotHttp)?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
            return Err(TargetError::NotHttp);
        }
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(TargetError::NotHttp),
        };
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        if let Some(ip) = ip {
            return if self.allowed_address(&host, ip) {
                Ok(parsed)
            } else {
                Err(TargetError::NotPublic(ip.to_string()))
            };
        }
        let local_name = host == "localhost"
            || host.ends_with(".localhost")
            || host.ends_with(".local")
            || host.ends_with(".internal")
            || !host.contains('.');
        if local_name && !self.allowed_host(&host) {
            return Err(TargetError::NotPublic(host));
        }
        Ok(parsed)
    }

    /// `check_url`, and for a host name, that it resolves to at least one
    /// address a delivery may connect to.
    pub async fn check_url_resolving(&self, url: &str) -> Result<Url, TargetError> {
        let parsed = self.check_url(url)?;
        // With deliveries off nothing is ever connected to: no name is
        // looked up either (a test run asks nothing of any DNS server).
        if self.disabled {
            return Ok(parsed);
        }
        if let Some(url::Host::Domain(name)) = parsed.host() {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let resolved = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((name, port)),
            )
            .await;
            let usable = match resolved {
                Ok(Ok(addrs)) => addrs
                    .into_iter()
                    .any(|a| self.allowed_address(name, a.ip())),
                _ => false,
            };
            if !usable {
                return Err(TargetError::Unresolvable(name.to_owned()));
            }
        }
        Ok(parsed)
    }

    /// The HTTP client deliveries use: the filtering resolver, no
    /// redirects, no proxy, connect and total timeouts.
    pub fn client(&self) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(FilteringResolver {
                policy: self.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
    }
}

/// Resolves names with the system resolver and keeps only the addresses
/// the policy allows: the check is on the address actually connected to.
struct FilteringResolver {
    policy: WebhookPolicy,
}

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.allowed_address(&host, a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(TargetError::NotPublic(host)) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_inside_address_is_refused() {
        let policy = WebhookPolicy::default();
        for url in [
            "http://127.0.0.1/hook",
            "http://localhost:8080/hook",
            "http://app.localhost/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:c0a8:0101::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.5/",
            "http://172.20.1.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://metadata/",
            "http://db.internal/",
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://user:pw@example.com/",
            "not a url",
        ] {
            assert!(policy.check_url(url).is_err(), "{url} was allowed");
        }
        for url in [
            "https://hooks.example.com/telemark",
            "http://93.184.215.14:8080/x",
            "http://[2606:4700::1111]/",
        ] {
            assert!(policy.check_url(url).is_ok(), "{url} was refused");
        }
    }

    #[test]
    fn the_operator_may_allow_named_private_targets() {
        let policy = WebhookPolicy::new(["10.1.2.3".to_owned(), "Alerts.Corp".to_owned()]);
        assert!(policy.check_url("http://10.1.2.3:9000/hook").is_ok());
        assert!(policy.check_url("http://alerts.corp/hook").is_ok());
        assert!(policy.check_url("http://10.1.2.4/hook").is_err());
        assert!(policy.check_url("http://127.0.0.1/hook").is_err());
    }
}
