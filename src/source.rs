//! Source addresses in the operator's terms: a list of trusted networks
//! (`listener.proxy_protocol_from`) matched against a peer, and the prefix a peer is grouped
//! under when the admin API limits connections and wrong tokens per source (an IPv4 /24 or
//! /32, an IPv6 /64). Pure: no sockets, no configuration file, no clock.

use std::net::IpAddr;

use ipnet::IpNet;

/// Networks whose members are trusted, e.g. the balancers allowed to send a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceList(Vec<IpNet>);

/// Why an entry of a source list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Neither an address nor an address/prefix.
    #[error("not an IP address or CIDR network (expected e.g. \"10.0.0.0/24\", \"127.0.0.1\" or \"::1/128\")")]
    Unparsable,
    /// A network with bits set after its prefix, e.g. 10.0.0.5/24.
    #[error("has host bits set after the /{prefix} prefix: write {network}")]
    HostBits {
        /// The prefix length written.
        prefix: u8,
        /// The network that was probably meant.
        network: IpNet,
    },
}

/// Parse one entry: an address (a single host) or a CIDR network without host bits.
pub fn parse_network(s: &str) -> Result<IpNet, SourceError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(canonical(ip)));
    }
    let net: IpNet = s.parse().map_err(|_| SourceError::Unparsable)?;
    if net.trunc() != net {
        return Err(SourceError::HostBits {
            prefix: net.prefix_len(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

impl SourceList {
    /// A list of already parsed networks.
    pub fn new(networks: Vec<IpNet>) -> SourceList {
        SourceList(networks)
    }

    /// The networks, in file order.
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether `peer` is in one of the networks. An IPv4-mapped IPv6 peer (a v4 client of a
    /// `[::]` listener) matches as the IPv4 address it carries.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.0.iter().any(|net| net.contains(&peer))
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; any other address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The network `peer` belongs to for per-source limits: its IPv4 /`v4_prefix`, or its IPv6 /64
/// (one host usually holds a whole /64, so any narrower grouping is free to rotate through).
pub fn prefix_of(peer: IpAddr, v4_prefix: u8) -> IpNet {
    let (ip, len) = match canonical(peer) {
        ip @ IpAddr::V4(_) => (ip, v4_prefix.min(32)),
        ip @ IpAddr::V6(_) => (ip, 64),
    };
    IpNet::new(ip, len)
        .expect("the prefix length fits the family")
        .trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_parse_or_name_the_fix() {
        let cases: &[(&str, Result<&str, SourceError>)] = &[
            ("10.0.0.0/24", Ok("10.0.0.0/24")),
            ("127.0.0.1", Ok("127.0.0.1/32")),
            ("::1", Ok("::1/128")),
            ("::1/128", Ok("::1/128")),
            ("2001:db8::/32", Ok("2001:db8::/32")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("::ffff:10.1.2.3", Ok("10.1.2.3/32")),
            (
                "10.0.0.5/24",
                Err(SourceError::HostBits {
                    prefix: 24,
                    network: "10.0.0.0/24".parse().unwrap(),
                }),
            ),
            ("10.0.0.0/33", Err(SourceError::Unparsable)),
            ("10.0.0/24", Err(SourceError::Unparsable)),
            ("lb.example.com", Err(SourceError::Unparsable)),
            ("", Err(SourceError::Unparsable)),
            ("10.0.0.0/", Err(SourceError::Unparsable)),
        ];
        for (input, want) in cases {
            let got = parse_network(input);
            let want = want.clone().map(|s| s.parse::<IpNet>().unwrap());
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn peers_match_their_networks_in_either_family() {
        let list = SourceList::new(
            ["10.0.0.0/24", "127.0.0.1", "::1/128", "2001:db8:1::/48"]
                .iter()
                .map(|s| parse_network(s).unwrap())
                .collect(),
        );
        let cases = [
            ("10.0.0.0", true),
            ("10.0.0.255", true),
            ("10.0.1.0", false),
            ("9.255.255.255", false),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("::1", true),
            ("::2", false),
            ("::ffff:10.0.0.7", true),
            ("::ffff:10.0.1.7", false),
            ("::ffff:127.0.0.1", true),
            ("2001:db8:1:ffff::1", true),
            ("2001:db8:2::1", false),
        ];
        for (peer, trusted) in cases {
            assert_eq!(list.contains(ip(peer)), trusted, "{peer}");
        }
        assert!(!SourceList::new(Vec::new()).contains(ip("127.0.0.1")));
    }

    #[test]
    fn peers_group_by_prefix() {
        let cases = [
            ("192.0.2.77", 24, "192.0.2.0/24"),
            ("192.0.2.77", 32, "192.0.2.77/32"),
            ("::ffff:192.0.2.77", 24, "192.0.2.0/24"),
            ("2001:db8:1:2:3:4:5:6", 24, "2001:db8:1:2::/64"),
            ("2001:db8:1:2:ffff::", 32, "2001:db8:1:2::/64"),
            ("::1", 24, "::/64"),
        ];
        for (peer, v4, want) in cases {
            assert_eq!(
                prefix_of(ip(peer), v4),
                want.parse::<IpNet>().unwrap(),
                "{peer}/{v4}"
            );
        }
    }
}
