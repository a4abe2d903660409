//! The permessage-deflate offer the WebSocket layer is given. A client may offer several
//! extensions, and several deflate offers in its order of preference (RFC 7692, 5), in one
//! header or many; yawc reads the header as one offer and agrees to nothing when it is a
//! list. So before the upgrade, a list is narrowed to its first deflate offer that is valid
//! (RFC 7692, 7.1) and that this server can honour, written the way yawc reads it.

use http::{HeaderMap, HeaderValue, header};

const DEFLATE: &str = "permessage-deflate";

/// Leaves in `headers` only the first acceptable permessage-deflate offer, or none. A
/// single offer without quotes is left as it is (the common case: a browser's
/// `permessage-deflate; client_max_window_bits`).
pub(crate) fn narrow_deflate_offers(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter();
    let (Some(first), None) = (values.next(), values.next()) else {
        if headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
            narrow(headers);
        }
        return;
    };
    let simple = first.as_bytes().iter().all(|&b| b != b',' && b != b'"');
    if !simple {
        narrow(headers);
    }
}

fn narrow(headers: &mut HeaderMap) {
    let chosen = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .find_map(acceptable);
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    if let Some(offer) = chosen.and_then(|offer| HeaderValue::from_str(&offer).ok()) {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, offer);
    }
}

/// `offer` written plainly, when it is a valid permessage-deflate offer this server can
/// honour: known parameters, each at most once, window sizes within 9..=15 (deflate cannot
/// promise the 8 RFC 7692 allows).
fn acceptable(offer: &str) -> Option<String> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(DEFLATE) {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut plain = String::from(DEFLATE);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let valid = match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("server_max_window_bits", Some(bits)) => window_bits(bits),
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(bits)) => window_bits(bits),
            _ => false,
        };
        if !valid {
            return None;
        }
        plain.push_str("; ");
        plain.push_str(name);
        if let Some(value) = value {
            plain.push('=');
            plain.push_str(value);
        }
    }
    Some(plain)
}

fn window_bits(value: &str) -> bool {
    value.len() <= 2
        && value.bytes().all(|b| b.is_ascii_digit())
        && value
            .parse::<u8>()
            .is_ok_and(|bits| (9..=15).contains(&bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn narrowed(values: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        narrow_deflate_offers(&mut headers);
        let mut left = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter();
        let offer = left.next().map(|v| v.to_str().unwrap().to_owned());
        assert!(left.next().is_none(), "at most one offer is left");
        offer
    }

    #[test]
    fn a_single_plain_offer_is_left_as_it_is() {
        let browser = "permessage-deflate; client_max_window_bits";
        assert_eq!(narrowed(&[browser]).as_deref(), Some(browser));
    }

    #[test]
    fn the_first_acceptable_offer_of_a_list_is_kept() {
        let list = "permessage-deflate; server_no_context_takeover; server_max_window_bits=8, \
                    permessage-deflate; server_no_context_takeover, permessage-deflate";
        assert_eq!(
            narrowed(&[list]).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        // Other extensions first, offers spread over several headers, quoted values.
        assert_eq!(
            narrowed(&[
                "x-webkit-deflate-frame",
                "permessage-deflate; client_max_window_bits=\"10\""
            ])
            .as_deref(),
            Some("permessage-deflate; client_max_window_bits=10")
        );
    }

    #[test]
    fn invalid_offers_are_declined() {
        for offer in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        ] {
            let list = format!("{offer}, x-other");
            assert_eq!(narrowed(&[&list]), None, "{offer}");
        }
    }
}
