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
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(origin: Option<&str>, host: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        if let Some(host) = host {
            headers.insert(HOST, HeaderValue::from_str(host).unwrap());
        }
        headers
    }

    fn list(origins: &[&str]) -> OriginPolicy {
        OriginPolicy::list(origins).unwrap()
    }

    fn allows(policy: &OriginPolicy, origin: &str) -> bool {
        policy.check(&headers(Some(origin), Some("server.example.org:8787")))
    }

    #[test]
    fn no_origin_header_is_allowed_by_every_policy() {
        let none = headers(None, Some("example.com"));
        assert!(OriginPolicy::Any.check(&none));
        assert!(OriginPolicy::SameOriginOrLocalhost.check(&none));
        assert!(list(&["https://app.example.com"]).check(&none));
        assert!(OriginPolicy::List(Vec::new()).check(&HeaderMap::new()));
    }

    #[test]
    fn any_allows_everything_but_duplicates_and_non_text() {
        assert!(allows(&OriginPolicy::Any, "https://evil.example"));
        assert!(allows(&OriginPolicy::Any, "null"));
        let mut two = headers(Some("https://a.example"), None);
        two.append(ORIGIN, HeaderValue::from_static("https://b.example"));
        assert!(!OriginPolicy::Any.check(&two));
        let mut binary = HeaderMap::new();
        binary.insert(
            ORIGIN,
            HeaderValue::from_bytes(b"https://\xff.example").unwrap(),
        );
        assert!(!OriginPolicy::Any.check(&binary));
    }

    #[test]
    fn exact_entries_match_case_insensitively_with_default_ports() {
        let policy = list(&["https://App.Example.com", "http://localhost:3000"]);
        for ok in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            "  https://app.example.com\t",
            "http://localhost:3000",
        ] {
            assert!(allows(&policy, ok), "{ok}");
        }
        for refused in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.net",
            "https://evilapp.example.com",
            "https://x.app.example.com",
            "https://app.example.co",
            "http://localhost",
            "http://localhost:3001",
            "https://app.example.com/",
            "https://user@app.example.com",
            "app.example.com",
            "",
            "null",
        ] {
            assert!(!allows(&policy, refused), "{refused}");
        }
    }

    #[test]
    fn explicit_default_ports_in_configuration_are_normalised() {
        let policy = list(&["https://app.example.com:443", "http://b.example:80/"]);
        assert!(allows(&policy, "https://app.example.com"));
        assert!(allows(&policy, "http://b.example"));
        assert!(allows(&policy, "http://b.example:80"));
        assert_eq!(
            OriginPolicy::List(vec![
                "https://app.example.com".parse().unwrap(),
                "http://b.example".parse().unwrap()
            ]),
            policy
        );
    }

    #[test]
    fn wildcard_entries_match_subdomains_only() {
        let policy = list(&["https://*.example.com"]);
        for ok in [
            "https://a.example.com",
            "https://a.b.example.com",
            "https://A.EXAMPLE.COM:443",
        ] {
            assert!(allows(&policy, ok), "{ok}");
        }
        for refused in [
            "https://example.com",
            "https://.example.com",
            "https://a.example.com:444",
            "http://a.example.com",
            "https://aexample.com",
            "https://a.example.com.evil.net",
            "https://example.com.a.example.org",
        ] {
            assert!(!allows(&policy, refused), "{refused}");
        }
        let with_port = list(&["http://*.localhost:8080"]);
        assert!(allows(&with_port, "http://app.localhost:8080"));
        assert!(!allows(&with_port, "http://app.localhost"));
    }

    #[test]
    fn null_is_refused_unless_listed() {
        assert!(!allows(&list(&["https://a.example"]), "null"));
        assert!(!allows(&OriginPolicy::SameOriginOrLocalhost, "null"));
        let policy = list(&["null", "https://a.example"]);
        assert!(allows(&policy, "null"));
        assert!(allows(&policy, "https://a.example"));
        assert!(!allows(&list(&["null"]), "https://a.example"));
    }

    #[test]
    fn other_schemes_and_ipv6_hosts() {
        let policy = list(&[
            "chrome-extension://abcdefgh",
            "http://[::1]:8080",
            "https://[2001:DB8::0:1]",
        ]);
        assert!(allows(&policy, "chrome-extension://abcdefgh"));
        assert!(!allows(&policy, "chrome-extension://abcdefgh:80"));
        assert!(allows(&policy, "http://[::1]:8080"));
        assert!(allows(&policy, "http://[0:0::1]:8080"));
        assert!(allows(&policy, "https://[2001:db8::1]"));
        assert!(!allows(&policy, "http://[::1]"));
        assert!(!allows(&policy, "http://[::1"));
        assert!(!allows(&policy, "http://[zz::1]:8080"));
    }

    #[test]
    fn same_origin_compares_with_the_host_header() {
        let policy = OriginPolicy::SameOriginOrLocalhost;
        let check = |origin: &str, host: &str| policy.check(&headers(Some(origin), Some(host)));
        assert!(check("https://app.example.com", "app.example.com"));
        assert!(check("https://APP.example.com", "app.EXAMPLE.com:443"));
        assert!(check("http://app.example.com:8787", "app.example.com:8787"));
        assert!(check(
            "https://app.example.com:8443",
            "app.example.com:8443"
        ));
        assert!(check("http://[2001:db8::1]:8787", "[2001:db8::1]:8787"));
        assert!(!check("https://app.example.com", "app.example.com:8787"));
        assert!(!check("https://app.example.com:8443", "app.example.com"));
        assert!(!check("https://evil.example", "app.example.com"));
        assert!(!check("https://app.example.com", "evil.example"));
        assert!(!check("https://app.example.com", "app.example.com:"));
        assert!(!check("https://app.example.com", "app.example.com:99999"));
        assert!(!check("https://app.example.com", "user@app.example.com"));
        assert!(!check("https://app.example.com", ""));
        // No Host header, or two: only localhost origins pass.
        assert!(!policy.check(&headers(Some("https://app.example.com"), None)));
        let mut two = headers(Some("https://a.example"), Some("a.example"));
        two.append(HOST, HeaderValue::from_static("a.example"));
        assert!(!policy.check(&two));
    }

    #[test]
    fn same_origin_allows_localhost_origins() {
        let policy = OriginPolicy::SameOriginOrLocalhost;
        for ok in [
            "http://localhost:3000",
            "http://LOCALHOST",
            "http://127.0.0.1:5173",
            "http://127.1.2.3",
            "http://[::1]:3000",
            "http://[::ffff:127.0.0.1]",
        ] {
            assert!(allows(&policy, ok), "{ok}");
            assert!(policy.check(&headers(Some(ok), None)), "{ok} without Host");
        }
        for refused in [
            "http://localhost.evil.net",
            "http://evil-localhost",
            "http://128.0.0.1",
            "http://127.0.0.1.evil.net",
            "http://[::2]",
            "http://0.0.0.0",
            "http://localhost:",
        ] {
            assert!(!allows(&policy, refused), "{refused}");
        }
    }

    #[test]
    fn bad_configuration_entries_are_refused_with_a_reason() {
        for (entry, reason) in [
            ("app.example.com", "scheme"),
            ("https://", "host"),
            ("https://app.example.com/path", "host"),
            ("https://app.example.com:0x50", "port"),
            ("https://app.example.com:65536", "port"),
            ("https://a.*.example.com", "first label"),
            ("https://*example.com", "first label"),
            ("https://*", "first label"),
            ("https://*.com", "top-level"),
            ("https://*.127.0.0.1", "address"),
            ("https://*.[::1]", "address"),
            ("https://user@app.example.com", "host"),
            ("1https://a.example", "scheme"),
            ("https://a..example", "host"),
        ] {
            let err = entry.parse::<AllowedOrigin>().unwrap_err();
            assert!(err.to_string().contains(reason), "{entry}: {err}");
            assert!(err.to_string().contains(entry), "{entry}: {err}");
        }
        let long = format!("https://{}.example", "a".repeat(5000));
        let err = long.parse::<AllowedOrigin>().unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn deserializes_from_configuration_forms() {
        #[derive(serde::Deserialize)]
        struct Config {
            origins: OriginPolicy,
        }
        let parse = |json: &str| serde_json::from_str::<Config>(json).map(|c| c.origins);
        assert_eq!(parse(r#"{"origins":"*"}"#).unwrap(), OriginPolicy::Any);
        assert_eq!(parse(r#"{"origins":["*"]}"#).unwrap(), OriginPolicy::Any);
        assert_eq!(
            parse(r#"{"origins":"same-origin"}"#).unwrap(),
            OriginPolicy::SameOriginOrLocalhost
        );
        assert_eq!(
            parse(r#"{"origins":["https://app.example.com","https://*.example.com"]}"#).unwrap(),
            list(&["https://app.example.com", "https://*.example.com"])
        );
        assert_eq!(
            parse(r#"{"origins":"https://app.example.com"}"#).unwrap(),
            list(&["https://app.example.com"])
        );
        assert_eq!(
            parse(r#"{"origins":[]}"#).unwrap(),
            OriginPolicy::List(vec![])
        );
        let err = parse(r#"{"origins":["https://app.example.com/x"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid origin `https://app.example.com/x`"),
            "{err}"
        );
        assert!(parse(r#"{"origins":42}"#).is_err());
        assert!(parse(r#"{"origins":[42]}"#).is_err());
        let origin: AllowedOrigin = serde_json::from_str(r#""HTTPS://*.Example.com:443""#).unwrap();
        assert_eq!(origin.to_string(), "https://*.example.com");
    }

    #[test]
    fn display_is_the_normalised_form() {
        for (entry, shown) in [
            ("HTTPS://App.Example.com:443/", "https://app.example.com"),
            ("http://a.example:8080", "http://a.example:8080"),
            ("https://*.example.com:8443", "https://*.example.com:8443"),
            ("NULL", "null"),
            ("http://[0:0::1]:80", "http://[::1]"),
        ] {
            assert_eq!(entry.parse::<AllowedOrigin>().unwrap().to_string(), shown);
        }
    }

    #[test]
    fn hostile_values_do_not_panic() {
        let policies = [
            OriginPolicy::Any,
            OriginPolicy::SameOriginOrLocalhost,
            list(&[
                "https://*.example.com",
                "https://a.example",
                "null",
                "http://[::1]",
            ]),
        ];
        let long = format!("https://{}", "a.".repeat(100_000));
        let samples = [
            "://",
            "https://",
            "https://:",
            "https://[",
            "https://[]",
            "https://]",
            "https://[::1]]",
            "https://[::1]x",
            "https://a:b:c",
            "https://a:",
            "https://a:-1",
            "https://a:+80",
            "https:///",
            "h://a",
            "*",
            "https://*.example.com",
            "https://é.example.com",
            long.as_str(),
        ];
        for origin in samples {
            for host in ["", "[", "a:b:c", "[::1", long.as_str(), "a.example"] {
                let Ok(origin) = HeaderValue::from_str(origin) else {
                    continue;
                };
                let mut headers = HeaderMap::new();
                headers.insert(ORIGIN, origin);
                if let Ok(host) = HeaderValue::from_str(host) {
                    headers.insert(HOST, host);
                }
                for policy in &policies {
                    let _ = policy.check(&headers);
                }
            }
            let _ = origin.parse::<AllowedOrigin>();
            let _ = origin.parse::<OriginPolicy>();
        }
    }
}
