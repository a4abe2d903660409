//! Finding the credential in an upgrade request.

use std::fmt;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

/// The longest credential taken from a request, in bytes (16 KiB). Longer ones are ignored,
/// as if absent: nothing larger is copied out of a request.
pub const MAX_CREDENTIAL_LEN: usize = 16 * 1024;

/// A credential presented by a connecting client: a token and where it was found.
///
/// `Debug` shows the token's length only, never the token.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credential {
    /// The token, as presented (for example a JWT).
    pub token: String,
    /// Where the token was found.
    pub source: CredentialSource,
}

impl Credential {
    /// A credential with `token`, found in `source`.
    pub fn new(token: impl Into<String>, source: CredentialSource) -> Self {
        Self {
            token: token.into(),
            source,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("source", &self.source)
            .finish()
    }
}

/// Where a [`Credential`] was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialSource {
    /// The upgrade request's `Authorization: Bearer <token>` header.
    Header,
    /// A cookie of the upgrade request.
    Cookie,
    /// The `token` query parameter of the upgrade request.
    Query,
    /// The `token` of an in-band `hello` frame.
    Hello,
}

/// The credential of an upgrade request, looked for in this order:
///
/// 1. an `Authorization: Bearer <token>` header (the scheme in any case);
/// 2. the cookie named `cookie_name` (in any `Cookie` header; surrounding double quotes are
///    removed; not percent-decoded);
/// 3. the `token` parameter of the query string `query` (percent-decoded, `+` is a space).
///
/// Empty values count as absent, and so do values longer than [`MAX_CREDENTIAL_LEN`] or not
/// valid UTF-8; the next place is looked at then. The first match wins; the only allocation is
/// the returned token.
pub fn credential_from_request(
    headers: &HeaderMap,
    query: Option<&str>,
    cookie_name: &str,
) -> Option<Credential> {
    credential_from_sources(headers, query, cookie_name, &REQUEST_SOURCES)
}

/// The places of a credential an HTTP request can carry, in the order they are looked at
/// (the `hello` is looked at later, in band).
pub(crate) const REQUEST_SOURCES: [CredentialSource; 3] = [
    CredentialSource::Header,
    CredentialSource::Cookie,
    CredentialSource::Query,
];

/// [`credential_from_request`] looking only at `sources` (in its order, whatever theirs).
pub(crate) fn credential_from_sources(
    headers: &HeaderMap,
    query: Option<&str>,
    cookie_name: &str,
    sources: &[CredentialSource],
) -> Option<Credential> {
    let reads = |source| sources.contains(&source);
    if reads(CredentialSource::Header)
        && let Some(token) = bearer(headers)
    {
        return Some(Credential::new(token, CredentialSource::Header));
    }
    if reads(CredentialSource::Cookie)
        && let Some(token) = cookie(headers, cookie_name)
    {
        return Some(Credential::new(token, CredentialSource::Cookie));
    }
    if !reads(CredentialSource::Query) {
        return None;
    }
    query
        .and_then(query_token)
        .map(|token| Credential::new(token, CredentialSource::Query))
}

/// The token of the first `Authorization: Bearer` header that has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let value = value.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        usable(token.trim())
    })
}

/// The value of the first cookie named `name` that has one, in all `Cookie` headers
/// (RFC 6265: `name=value` pairs separated by `;`).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    if name.is_empty() {
        return None;
    }
    headers.get_all(COOKIE).iter().find_map(|header| {
        header.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|&b| b == b'=')?;
            let (key, value) = (&pair[..at], &pair[at + 1..]);
            if key.trim_ascii() != name.as_bytes() {
                return None;
            }
            let value = value.trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            usable(std::str::from_utf8(value).ok()?)
        })
    })
}

/// The first non-empty `token` parameter of a query string, percent-decoded.
fn query_token(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        // Decoding never makes a pair longer, and an escape takes three bytes: a pair longer
        // than this cannot decode to a usable token, so it is skipped before any decoding.
        if pair.len() > "token=".len() + 3 * MAX_CREDENTIAL_LEN {
            return None;
        }
        let raw_key = pair.split_once('=').map_or(pair, |(key, _)| key);
        if raw_key != "token" && !raw_key.contains(['%', '+']) {
            return None;
        }
        let (key, value) = form_urlencoded::parse(pair.as_bytes()).next()?;
        if key != "token" {
            return None;
        }
        usable(&value).map(str::to_owned)
    })
}

fn usable(token: &str) -> Option<&str> {
    (!token.is_empty() && token.len() <= MAX_CREDENTIAL_LEN).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn found(headers: &HeaderMap, query: Option<&str>) -> Option<(String, CredentialSource)> {
        credential_from_request(headers, query, "plexus_token").map(|c| (c.token, c.source))
    }

    fn some(token: &str, source: CredentialSource) -> Option<(String, CredentialSource)> {
        Some((token.to_owned(), source))
    }

    #[test]
    fn header_then_cookie_then_query() {
        let all = headers(&[
            ("authorization", "Bearer from-header"),
            ("cookie", "plexus_token=from-cookie"),
        ]);
        assert_eq!(
            found(&all, Some("token=from-query")),
            some("from-header", CredentialSource::Header)
        );
        let cookie_only = headers(&[("cookie", "plexus_token=from-cookie")]);
        assert_eq!(
            found(&cookie_only, Some("token=from-query")),
            some("from-cookie", CredentialSource::Cookie)
        );
        assert_eq!(
            found(&HeaderMap::new(), Some("token=from-query")),
            some("from-query", CredentialSource::Query)
        );
        assert_eq!(found(&HeaderMap::new(), None), None);
        assert_eq!(found(&HeaderMap::new(), Some("")), None);
    }

    #[test]
    fn bearer_scheme_in_any_case_other_schemes_ignored() {
        for value in ["bearer abc", "BEARER abc", "Bearer   abc  ", "bEaReR abc"] {
            assert_eq!(
                found(&headers(&[("authorization", value)]), None),
                some("abc", CredentialSource::Header),
                "{value}"
            );
        }
        // Another scheme falls through to the next place.
        let basic = headers(&[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("cookie", "plexus_token=c"),
        ]);
        assert_eq!(found(&basic, None), some("c", CredentialSource::Cookie));
        // A second Authorization header with a bearer token is found.
        let two = headers(&[
            ("authorization", "apikey s3cret"),
            ("authorization", "Bearer t"),
        ]);
        assert_eq!(found(&two, None), some("t", CredentialSource::Header));
        for value in ["Bearer", "Bearer ", "Bearertoken", "Bearer\tx"] {
            assert_eq!(
                found(&headers(&[("authorization", value)]), None),
                None,
                "{value}"
            );
        }
    }

    #[test]
    fn cookies_among_several_and_in_several_headers() {
        let map = headers(&[(
            "cookie",
            "theme=dark; other_plexus_token=no;plexus_token=yes; plexus_token=second",
        )]);
        assert_eq!(found(&map, None), some("yes", CredentialSource::Cookie));

        let map = headers(&[
            ("cookie", "a=1; b=2"),
            ("cookie", "plexus_token=\"quoted.jwt\"; c=3"),
        ]);
        assert_eq!(
            found(&map, None),
            some("quoted.jwt", CredentialSource::Cookie)
        );

        // A value containing `=` keeps it (base64 padding).
        let map = headers(&[("cookie", "plexus_token=ab==")]);
        assert_eq!(found(&map, None), some("ab==", CredentialSource::Cookie));

        // Malformed pairs are skipped, prefixes of the name do not match.
        let map = headers(&[("cookie", ";;garbage; plexus_tok=x; =y; plexus_token")]);
        assert_eq!(found(&map, None), None);

        // An empty cookie counts as absent: the query is used.
        let map = headers(&[("cookie", "plexus_token=; plexus_token=\"\"")]);
        assert_eq!(
            found(&map, Some("token=q")),
            some("q", CredentialSource::Query)
        );

        // No cookie name configured: cookies are not looked at.
        let map = headers(&[("cookie", "=x")]);
        assert_eq!(credential_from_request(&map, None, ""), None);
    }

    #[test]
    fn non_utf8_cookie_values_are_skipped() {
        let mut map = HeaderMap::new();
        map.append(
            COOKIE,
            HeaderValue::from_bytes(b"plexus_token=\xff\xfe; x=1").unwrap(),
        );
        map.append(COOKIE, HeaderValue::from_static("plexus_token=ok"));
        assert_eq!(found(&map, None), some("ok", CredentialSource::Cookie));
    }

    #[test]
    fn query_token_is_percent_decoded() {
        let empty = HeaderMap::new();
        assert_eq!(
            found(&empty, Some("a=1&token=ab%2Ecd%3D&b=2")),
            some("ab.cd=", CredentialSource::Query)
        );
        assert_eq!(
            found(&empty, Some("token=&token=second")),
            some("second", CredentialSource::Query)
        );
        assert_eq!(found(&empty, Some("tokens=x&xtoken=y&token")), None);
        assert_eq!(
            found(&empty, Some("%74oken=encoded-key")),
            some("encoded-key", CredentialSource::Query)
        );
        // Invalid percent sequences are kept as they are, like browsers do.
        assert_eq!(
            found(&empty, Some("token=%zz")),
            some("%zz", CredentialSource::Query)
        );
    }

    #[test]
    fn empty_and_oversized_values_count_as_absent() {
        let huge = "a".repeat(MAX_CREDENTIAL_LEN + 1);
        let at_limit = "b".repeat(MAX_CREDENTIAL_LEN);
        let map = headers(&[
            ("authorization", &format!("Bearer {huge}")),
            ("cookie", &format!("plexus_token={huge}")),
        ]);
        assert_eq!(found(&map, Some(&format!("token={huge}"))), None);
        assert_eq!(
            found(&map, Some(&format!("token={at_limit}"))),
            Some((at_limit, CredentialSource::Query))
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_requests_never_panic(
            authorization in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            cookie in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            query in ".{0,64}",
        ) {
            let mut map = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&authorization) {
                map.append(AUTHORIZATION, value);
            }
            if let Ok(value) = HeaderValue::from_bytes(&cookie) {
                map.append(COOKIE, value);
            }
            if let Some(credential) = credential_from_request(&map, Some(&query), "t") {
                proptest::prop_assert!(!credential.token.is_empty());
                proptest::prop_assert!(credential.token.len() <= MAX_CREDENTIAL_LEN);
            }
        }
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let credential = Credential::new("secret-token", CredentialSource::Header);
        let shown = format!("{credential:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("12 bytes"), "{shown}");
    }
}
