//! Which web pages may open a WebSocket to the server: the `Origin` check.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::HeaderMap;
use http::header::{HOST, ORIGIN};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// Longest `Origin` (or `Host`) value looked at; longer ones are refused unparsed. A scheme,
/// a 253-byte DNS name and a port fit many times over.
const MAX_LEN: usize = 1024;
/// Most entries an origin list read from configuration may have.
const MAX_ENTRIES: usize = 10_000;

/// Which origins may open a WebSocket: the defence against cross-site WebSocket hijacking
/// (CSWSH).
///
/// Browsers let any page open a WebSocket to any server, sending the user's cookies (and
/// HTTP authentication) with the upgrade, and unlike `fetch` there is no CORS preflight: the
/// only sign of the page that opened it is the `Origin` header, which the browser sets and
/// page scripts cannot change. A server that authenticates connections by cookie must
/// therefore refuse origins it does not know.
///
/// **A request without an `Origin` header is allowed** by every policy. Browsers always send
/// `Origin` on a WebSocket upgrade, so a request without one comes from a non-browser
/// client (a backend, the CLI, a mobile app), which could put any `Origin` it likes anyway:
/// the header protects the user's browser against other sites, not the server against
/// arbitrary clients. Those are the job of authentication and of the connection limits.
///
/// `Origin: null` (sandboxed iframes, `file://` pages, some redirects) is refused unless a
/// [`List`](OriginPolicy::List) names `"null"` explicitly; so is a request with several
/// `Origin` headers, or one that does not parse.
///
/// From configuration:
///
/// ```
/// # use plexus_server::OriginPolicy;
/// # #[derive(serde::Deserialize)] struct Config { origins: OriginPolicy }
/// let config: Config = serde_json::from_str(
///     r#"{ "origins": ["https://app.example.com", "https://*.example.com"] }"#,
/// ).unwrap();
/// // also `"*"` (any origin) and `"same-origin"` (same origin or localhost)
/// # let _ = config.origins;
/// ```
///
/// In code:
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use plexus_server::OriginPolicy;
///
/// let policy = OriginPolicy::list(["https://app.example.com", "https://*.example.com"]).unwrap();
/// let mut headers = HeaderMap::new();
/// headers.insert("origin", HeaderValue::from_static("https://EU.Example.com:443"));
/// assert!(policy.check(&headers));
/// headers.insert("origin", HeaderValue::from_static("https://example.com.evil.net"));
/// assert!(!policy.check(&headers));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OriginPolicy {
    /// Any origin (`"*"`). Only for servers that do not authenticate by cookie or by
    /// anything else the browser sends on its own.
    Any,
    /// The default (`"same-origin"`): the origin's host and port are those of the request's
    /// `Host` header (the page was served by this server), or the origin's host is
    /// `localhost`, an address in 127.0.0.0/8 or `[::1]` (development). The scheme is not
    /// compared, since behind a TLS-terminating proxy the server cannot know it. Behind a
    /// proxy that rewrites `Host`, list the public origins instead.
    #[default]
    SameOriginOrLocalhost,
    /// Only the listed origins.
    List(Vec<AllowedOrigin>),
}

impl OriginPolicy {
    /// A list policy from origins as written in configuration: exact
    /// `scheme://host[:port]`, `scheme://*.domain[:port]` for every subdomain of
    /// `domain` (at any depth, not `domain` itself), or `null`. An entry `"*"` makes the
    /// policy [`Any`](Self::Any).
    pub fn list<I>(origins: I) -> Result<Self, InvalidOrigin>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut list = Vec::new();
        for origin in origins {
            let origin = origin.as_ref();
            if origin.trim() == "*" {
                return Ok(OriginPolicy::Any);
            }
            list.push(origin.parse()?);
        }
        Ok(OriginPolicy::List(list))
    }

    /// Whether an upgrade request with these headers may proceed.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(value) = values.next() else {
            return true; // not a browser: see the type's documentation
        };
        if values.next().is_some() {
            return false;
        }
        let Some(origin) = value.to_str().ok().map(trim) else {
            return false;
        };
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::SameOriginOrLocalhost => {
                let Some(origin) = Origin::parse(origin) else {
                    return false;
                };
                is_localhost(origin.host) || same_host(&origin, headers)
            }
            OriginPolicy::List(list) => {
                if origin.eq_ignore_ascii_case("null") {
                    return list
                        .iter()
                        .any(|allowed| matches!(allowed.0, Pattern::Null));
                }
                Origin::parse(origin)
                    .is_some_and(|origin| list.iter().any(|allowed| allowed.matches(&origin)))
            }
        }
    }
}

impl FromStr for OriginPolicy {
    type Err = InvalidOrigin;

    /// `"*"`, `"same-origin"`, or one origin (a list of one).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match trim(s) {
            "*" => Ok(OriginPolicy::Any),
            s if s.eq_ignore_ascii_case("same-origin") => Ok(OriginPolicy::SameOriginOrLocalhost),
            s => OriginPolicy::list([s]),
        }
    }
}

impl<'de> Deserialize<'de> for OriginPolicy {
    /// From a string (`"*"`, `"same-origin"`, or one origin) or a list of origins.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PolicyVisitor;

        impl<'de> Visitor<'de> for PolicyVisitor {
            type Value = OriginPolicy;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#""*", "same-origin", or a list of origins like "https://app.example.com""#,
                )
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.parse().map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element::<String>()? {
                    if entries.len() == MAX_ENTRIES {
                        return Err(de::Error::custom(format_args!(
                            "more than {MAX_ENTRIES} origins"
                        )));
                    }
                    entries.push(entry);
                }
                OriginPolicy::list(entries).map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(PolicyVisitor)
    }
}

/// One entry of an [`OriginPolicy::List`]: `scheme://host[:port]`,
/// `scheme://*.domain[:port]` or `null`. Parse one with [`str::parse`]; matching ignores
/// case, and a default port (80 for `http` and `ws`, 443 for `https` and `wss`) may be
/// written or left out.
#[derive(Clone, PartialEq, Eq)]
pub struct AllowedOrigin(Pattern);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Null,
    Exact {
        scheme: Box<str>,
        host: Box<str>,
        port: Option<u16>,
    },
    /// Hosts ending in `suffix` (which starts with a dot) with at least one label before it.
    Subdomains {
        scheme: Box<str>,
        suffix: Box<str>,
        port: Option<u16>,
    },
}

impl AllowedOrigin {
    fn matches(&self, origin: &Origin<'_>) -> bool {
        match &self.0 {
            Pattern::Null => false,
            Pattern::Exact { scheme, host, port } => {
                origin.port == *port
                    && origin.scheme.eq_ignore_ascii_case(scheme)
                    && (origin.host.eq_ignore_ascii_case(host)
                        || host.starts_with('[') && ipv6(origin.host) == ipv6(host))
            }
            Pattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                origin.port == *port
                    && origin.scheme.eq_ignore_ascii_case(scheme)
                    && origin.host.len() > suffix.len()
                    && origin.host.as_bytes()[origin.host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

impl FromStr for AllowedOrigin {
    type Err = InvalidOrigin;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidOrigin::new(text, reason);
        let s = trim(text);
        if s.eq_ignore_ascii_case("null") {
            return Ok(AllowedOrigin(Pattern::Null));
        }
        if s.len() > MAX_LEN {
            return Err(invalid("too long"));
        }
        // A trailing slash is tolerated in configuration (browsers never send one).
        let s = s.strip_suffix('/').unwrap_or(s);
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| invalid("expected `scheme://host[:port]`"))?;
        if !is_scheme(scheme) {
            return Err(invalid("bad scheme"));
        }
        let scheme: Box<str> = scheme.to_ascii_lowercase().into();
        match rest.strip_prefix("*.") {
            Some(domain) => {
                let (host, port) = authority(domain).map_err(invalid)?;
                if host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok() {
                    return Err(invalid("a wildcard needs a domain name, not an address"));
                }
                if !host.contains('.') && !host.eq_ignore_ascii_case("localhost") {
                    return Err(invalid(
                        "a wildcard needs a domain with a dot (`*.example.com`), not a top-level domain",
                    ));
                }
                Ok(AllowedOrigin(Pattern::Subdomains {
                    port: port.or_else(|| default_port(&scheme)),
                    suffix: format!(".{}", host.to_ascii_lowercase()).into(),
                    scheme,
                }))
            }
            None => {
                if rest.contains('*') {
                    return Err(invalid(
                        "a wildcard is only allowed as the first label (`https://*.example.com`)",
                    ));
                }
                let (host, port) = authority(rest).map_err(invalid)?;
                let host = match ipv6(host) {
                    Some(ip) => format!("[{ip}]"),
                    None => host.to_ascii_lowercase(),
                };
                Ok(AllowedOrigin(Pattern::Exact {
                    port: port.or_else(|| default_port(&scheme)),
                    host: host.into(),
                    scheme,
                }))
            }
        }
    }
}

impl fmt::Display for AllowedOrigin {
    /// The normalised form: lowercase, without a default port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, star, host, port) = match &self.0 {
            Pattern::Null => return f.write_str("null"),
            Pattern::Exact { scheme, host, port } => (scheme, "", &host[..], port),
            Pattern::Subdomains {
                scheme,
                suffix,
                port,
            } => (scheme, "*", &suffix[..], port),
        };
        write!(f, "{scheme}://{star}{host}")?;
        match port {
            Some(port) if Some(*port) != default_port(scheme) => write!(f, ":{port}"),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AllowedOrigin({self})")
    }
}

impl<'de> Deserialize<'de> for AllowedOrigin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

/// An origin in configuration that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid origin `{origin}`: {reason}")]
pub struct InvalidOrigin {
    origin: String,
    reason: &'static str,
}

impl InvalidOrigin {
    fn new(origin: &str, reason: &'static str) -> Self {
        // Enough to recognise the entry, not a copy of a huge one.
        let origin = match origin.char_indices().nth(100) {
            Some((end, _)) => format!("{}…", &origin[..end]),
            None => origin.to_owned(),
        };
        Self { origin, reason }
    }
}

/// An `Origin` header's value, parsed without allocating.
#[derive(Debug)]
struct Origin<'a> {
    scheme: &'a str,
    /// A DNS name or IPv4 address, or an IPv6 address in brackets.
    host: &'a str,
    /// The explicit port, else the scheme's default (none for unknown schemes).
    port: Option<u16>,
}

impl<'a> Origin<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        if s.len() > MAX_LEN {
            return None;
        }
        let (scheme, rest) = s.split_once("://")?;
        if !is_scheme(scheme) {
            return None;
        }
        let (host, port) = authority(rest).ok()?;
        Some(Origin {
            scheme,
            host,
            port: port.or_else(|| default_port(scheme)),
        })
    }
}

/// Whether the origin names this server: its host and port are those of the `Host` header.
fn same_host(origin: &Origin<'_>, headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    let Some(host) = host.to_str().ok().map(trim) else {
        return false;
    };
    if host.len() > MAX_LEN {
        return false;
    }
    let Ok((host, port)) = authority(host) else {
        return false;
    };
    // Without a port, `Host` means the default port of the scheme the page was loaded with.
    origin.host.eq_ignore_ascii_case(host)
        && origin.port == port.or_else(|| default_port(origin.scheme))
}

fn is_localhost(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(ip) = ipv6(host) {
        return ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// The address of a bracketed IPv6 host (`[::1]`).
fn ipv6(host: &str) -> Option<Ipv6Addr> {
    host.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// Splits `host[:port]` (no userinfo, path, query or fragment), checking each part.
fn authority(s: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or("unclosed `[` in the host")?;
        let (host, rest) = s.split_at(end + 1);
        if host[1..end].parse::<Ipv6Addr>().is_err() {
            return Err("bad IPv6 address");
        }
        match rest {
            "" => (host, None),
            rest => (
                host,
                Some(rest.strip_prefix(':').ok_or("junk after the host")?),
            ),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if !host.starts_with('[') && !is_dns_name(host) {
        return Err("bad host (expected `scheme://host[:port]`)");
    }
    let port = match port {
        None => None,
        Some(port) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err("bad port");
            }
            Some(port.parse::<u16>().map_err(|_| "bad port")?)
        }
    };
    Ok((host, port))
}

/// A host name (or IPv4 address): dot-separated non-empty labels of letters, digits, `-`
/// and `_`.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.len() <= 32
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else {
        None
    }
}

fn trim(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

#[cfg(test)]
mod tests;
