//! A job type's network: none (the default), the host's (explicit, unsafe), or an egress
//! allowlist served by warden's gateway — and the arithmetic of that allowlist.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// `network:` of a job type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkPolicy {
    /// Its own network namespace with loopback only.
    #[default]
    None,
    /// The host's network namespace: every service on the host's loopback is reachable.
    Host,
    /// Its own network namespace whose only way out is warden's egress gateway.
    Egress(EgressPolicy),
}

impl NetworkPolicy {
    pub fn is_host(&self) -> bool {
        matches!(self, NetworkPolicy::Host)
    }

    pub fn egress(&self) -> Option<&EgressPolicy> {
        match self {
            NetworkPolicy::Egress(p) => Some(p),
            _ => None,
        }
    }

    /// `none`, `host` or `egress`.
    pub fn kind(&self) -> &'static str {
        match self {
            NetworkPolicy::None => "none",
            NetworkPolicy::Host => "host",
            NetworkPolicy::Egress(_) => "egress",
        }
    }
}

/// What a job with an egress policy may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    pub rules: Vec<EgressRule>,
    /// Connections (allowed or not) the job may open in all; one more ends it
    /// `failed: network_limit`.
    pub max_connections: Option<u64>,
    /// Bytes both ways over all its connections; past it the job ends `failed: network_limit`.
    pub max_bytes: Option<u64>,
}

/// One allowlist entry: a destination and the one port it may be reached on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    pub dest: Destination,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// `*.example.org`: any name strictly below `example.org` (kept as `.example.org`).
    Below(String),
    /// Addresses; reached by address, with no name checked.
    Net(IpNet),
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dest {
            Destination::Name(n) => write!(f, "{n}:{}", self.port),
            Destination::Below(s) => write!(f, "*{s}:{}", self.port),
            Destination::Net(IpNet::V4(n)) => write!(f, "{n}:{}", self.port),
            Destination::Net(IpNet::V6(n)) => write!(f, "[{n}]:{}", self.port),
        }
    }
}

impl Destination {
    fn matches_name(&self, name: &str) -> bool {
        match self {
            Destination::Name(n) => n == name,
            Destination::Below(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
            Destination::Net(_) => false,
        }
    }
}

/// Why an address is never reached unless a CIDR entry names it.
pub fn always_denied(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some(if o == [169, 254, 169, 254] {
                    "metadata address"
                } else {
                    "link-local"
                })
            } else if v4.is_private() {
                Some("private range (RFC 1918)")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || o[0] == 0 {
                Some("not a unicast address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("shared address space (RFC 6598)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private range (ULA)")
            } else {
                None
            }
        }
    }
}

impl EgressPolicy {
    /// Whether some entry names `name` (any port): the resolver answers only such names.
    pub fn knows_name(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.dest.matches_name(name))
    }

    /// Whether `name:port` is allowed by a name entry.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        self.rules
            .iter()
            .any(|r| r.port == port && r.dest.matches_name(name))
    }

    /// Whether a CIDR entry allows `ip:port` (then no name is checked, and even an address
    /// [`always_denied`] passes: the operator named it).
    pub fn allows_net(&self, ip: IpAddr, port: u16) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.rules
            .iter()
            .any(|r| r.port == port && matches!(&r.dest, Destination::Net(n) if n.contains(&ip)))
    }

    /// The ports any entry names: where the job's network namespace listens for the gateway.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.rules.iter().map(|r| r.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Parses one allowlist entry: `host:port`, `*.domain:port`, `IP:port`, `CIDR:port`, or
/// `[IPv6]:port` / `[IPv6/len]:port`. The message says what to write instead.
pub fn parse_rule(entry: &str) -> Result<EgressRule, String> {
    let bad = |why: &str| format!("egress entry {entry:?}: {why}");
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address in brackets needs its closing ']'"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("a port is required: write [ADDRESS]:PORT"))?;
        (inside, port)
    } else {
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| bad("a port is required: write HOST:PORT (e.g. pypi.org:443)"))?;
        if host.contains(':') {
            return Err(bad("write an IPv6 address in brackets: [2001:db8::1]:443"));
        }
        (host, port)
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    if host.contains('/') {
        let net: IpNet = host
            .parse()
            .map_err(|_| bad("not a CIDR range (write e.g. 192.0.2.0/28)"))?;
        if net.trunc() != net {
            return Err(bad(&format!(
                "{net} has host bits set; the range is {}",
                net.trunc()
            )));
        }
        return Ok(EgressRule {
            dest: Destination::Net(net),
            port,
        });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(EgressRule {
            dest: Destination::Net(IpNet::from(ip)),
            port,
        });
    }
    let lower = host.to_ascii_lowercase();
    let (below, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    check_name(name).map_err(|why| bad(&why))?;
    if below && !name.contains('.') {
        return Err(bad(
            "a wildcard must stay below a domain of two labels at least (*.example.org)",
        ));
    }
    Ok(EgressRule {
        dest: if below {
            Destination::Below(format!(".{name}"))
        } else {
            Destination::Name(name.to_string())
        },
        port,
    })
}

/// A DNS name of letters, digits and hyphens (and `_`), 1–63 bytes per label, ≤ 253 in all.
fn check_name(name: &str) -> Result<(), String> {
    if name.contains('*') {
        return Err("'*' is allowed only as the whole leftmost label (*.example.org)".into());
    }
    if name.len() > 253 {
        return Err("the name is longer than 253 bytes".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "{label:?} is not a DNS label (letters, digits, '-', 1 to 63 bytes)"
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    egress: Vec<String>,
    #[serde(default)]
    max_connections: Option<crate::config::Positive>,
    #[serde(default)]
    max_bytes_mb: Option<crate::config::Positive>,
}

impl<'de> Deserialize<'de> for NetworkPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NetworkPolicy, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NetworkPolicy;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("none, host, or {egress: [\"HOST:PORT\", ...]}")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<NetworkPolicy, E> {
                // `network: true` was the host's namespace before policies existed.
                Ok(if v {
                    NetworkPolicy::Host
                } else {
                    NetworkPolicy::None
                })
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NetworkPolicy, E> {
                match v {
                    "none" => Ok(NetworkPolicy::None),
                    "host" => Ok(NetworkPolicy::Host),
                    other => Err(E::custom(format!(
                        "network {other:?}: write none, host, or {{egress: [\"HOST:PORT\", ...]}}"
                    ))),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<NetworkPolicy, A::Error> {
                use serde::de::Error;
                let raw =
                    RawEgress::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                if raw.egress.is_empty() {
                    return Err(A::Error::custom(
                        "network.egress is empty: write network: none for no network",
                    ));
                }
                let rules = raw
                    .egress
                    .iter()
                    .map(|e| parse_rule(e))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(A::Error::custom)?;
                Ok(NetworkPolicy::Egress(EgressPolicy {
                    rules,
                    max_connections: raw.max_connections.map(|p| p.get()),
                    max_bytes: raw.max_bytes_mb.map(|p| p.get().saturating_mul(1 << 20)),
                }))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_or_say_what_to_write() {
        let ok = [
            ("pypi.org:443", "pypi.org:443"),
            ("PyPI.org:443", "pypi.org:443"),
            ("*.pythonhosted.org:443", "*.pythonhosted.org:443"),
            ("10.20.0.7:5432", "10.20.0.7/32:5432"),
            ("192.0.2.0/28:80", "192.0.2.0/28:80"),
            ("[2001:db8::1]:443", "[2001:db8::1/128]:443"),
            ("[fd00::/8]:443", "[fd00::/8]:443"),
        ];
        for (entry, shown) in ok {
            assert_eq!(parse_rule(entry).unwrap().to_string(), shown, "{entry}");
        }
        let bad = [
            ("pypi.org", "a port is required"),
            ("pypi.org:0", "from 1 to 65535"),
            ("pypi.org:70000", "from 1 to 65535"),
            ("pypi.org:https", "from 1 to 65535"),
            (":443", "the host is empty"),
            ("a.*.org:443", "'*' is allowed only"),
            ("*.org:443", "two labels"),
            ("**.x.org:443", "'*' is allowed only"),
            ("exa mple.org:443", "not a DNS label"),
            ("-x.org:443", "not a DNS label"),
            (
                "192.0.2.1/28:80",
                "host bits set; the range is 192.0.2.0/28",
            ),
            ("192.0.2.0/33:80", "not a CIDR range"),
            ("2001:db8::1:443", "in brackets"),
            ("[2001:db8::1]", "a port is required"),
            ("[2001:db8::1:443", "closing ']'"),
        ];
        for (entry, expected) in bad {
            let err = parse_rule(entry).unwrap_err();
            assert!(err.contains(expected), "{entry}: {err}");
        }
    }

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy {
            rules: entries.iter().map(|e| parse_rule(e).unwrap()).collect(),
            max_connections: None,
            max_bytes: None,
        }
    }

    #[test]
    fn names_ports_and_ranges_match_exactly() {
        let p = policy(&[
            "pypi.org:443",
            "*.pythonhosted.org:443",
            "10.20.0.7:5432",
            "192.0.2.0/28:80",
        ]);
        assert!(p.allows_name("pypi.org", 443));
        assert!(!p.allows_name("pypi.org", 80));
        assert!(!p.allows_name("evilpypi.org", 443));
        assert!(!p.allows_name("pypi.org.evil.com", 443));
        assert!(p.allows_name("files.pythonhosted.org", 443));
        assert!(p.allows_name("a.b.pythonhosted.org", 443));
        assert!(!p.allows_name("pythonhosted.org", 443), "strictly below");
        assert!(!p.allows_name("xpythonhosted.org", 443));
        assert!(p.knows_name("pypi.org") && !p.knows_name("example.com"));
        assert!(p.allows_net("10.20.0.7".parse().unwrap(), 5432));
        assert!(p.allows_net("::ffff:10.20.0.7".parse().unwrap(), 5432));
        assert!(!p.allows_net("10.20.0.8".parse().unwrap(), 5432));
        assert!(p.allows_net("192.0.2.15".parse().unwrap(), 80));
        assert!(!p.allows_net("192.0.2.16".parse().unwrap(), 80));
        assert_eq!(p.ports(), [80, 443, 5432]);
    }

    #[test]
    fn the_always_denied_ranges() {
        for (ip, why) in [
            ("127.0.0.1", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("169.254.169.254", Some("metadata address")),
            ("169.254.1.1", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("10.1.2.3", Some("private range (RFC 1918)")),
            ("172.16.0.1", Some("private range (RFC 1918)")),
            ("192.168.1.1", Some("private range (RFC 1918)")),
            ("fd00::1", Some("private range (ULA)")),
            ("100.64.0.1", Some("shared address space (RFC 6598)")),
            ("0.0.0.0", Some("not a unicast address")),
            ("224.0.0.1", Some("not a unicast address")),
            ("198.51.100.10", None),
            ("2001:db8::1", None),
            ("172.32.0.1", None),
        ] {
            assert_eq!(always_denied(ip.parse().unwrap()), why, "{ip}");
        }
    }
}
