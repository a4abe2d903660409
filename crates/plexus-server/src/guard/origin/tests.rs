//! Tests of the parent module.

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
