//! Where a broker is: `mqtt://host:port` or `mqtts://host:port`, as a
//! device's provisioning names it and as the platform names an external
//! broker (several, comma-separated, for failover).

/// One broker address of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddress {
    /// `mqtt://host[:1883]`, `mqtts://host[:8883]`, `[v6]:port` for IPv6.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest, default_port) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest, 8883)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest, 1883)
        } else {
            return Err(format!("broker {url:?} is not mqtt://… or mqtts://…"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse()
                    .map_err(|_| format!("broker port {port:?} is not a number"))?,
            ),
            _ => (
                rest.trim_start_matches('[').trim_end_matches(']'),
                default_port,
            ),
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(format!("broker {url:?} names no host"));
        }
        Ok(BrokerAddress {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// A comma-separated list, tried in order: every address speaks TLS
    /// or none does, so a failover never drops to plain text.
    pub fn parse_list(urls: &str) -> Result<Vec<Self>, String> {
        let list = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        match list.first() {
            None => Err("no broker address given".into()),
            Some(first) if list.iter().any(|a| a.tls != first.tls) => Err(format!(
                "brokers {urls:?} mix mqtt:// and mqtts://: a failover would change the transport's security"
            )),
            Some(_) => Ok(list),
        }
    }
}

/// Where in a list of `count` brokers a device starts: a fixed pick by its
/// id, so a fleet spreads over a cluster's nodes and each device comes
/// back to the same one after a restart.
pub fn first_for(device_id: &str, count: usize) -> usize {
    let hash = device_id.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    hash % count.max(1)
}

impl std::fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_transport() -> Result<(), String> {
        let a = BrokerAddress::parse("mqtt://broker.example.net")?;
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("broker.example.net", 1883, false)
        );
        let a = BrokerAddress::parse("mqtts://10.0.0.7:18883/")?;
        assert_eq!((a.host.as_str(), a.port, a.tls), ("10.0.0.7", 18883, true));
        let a = BrokerAddress::parse("mqtt://[::1]:1884")?;
        assert_eq!((a.host.as_str(), a.port), ("::1", 1884));
        assert_eq!(a.to_string(), "mqtt://[::1]:1884");
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:port",
            "mqtt://user@h:1",
            "h:1883",
        ] {
            assert!(BrokerAddress::parse(bad).is_err(), "{bad} accepted");
        }
        Ok(())
    }

    #[test]
    fn a_list_is_in_order_and_of_one_transport() -> Result<(), String> {
        let list = BrokerAddress::parse_list("mqtt://a:1, mqtt://b:2")?;
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].host, "b");
        assert!(BrokerAddress::parse_list("mqtt://a:1,mqtts://b:2").is_err());
        assert!(BrokerAddress::parse_list(" , ").is_err());
        Ok(())
    }
}
