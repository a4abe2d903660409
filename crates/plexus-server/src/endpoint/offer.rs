//! The permessage-deflate offer the WebSocket layer is given. A client may offer several
//! extensions, and several deflate offers in its order of preference (RFC 7692, 5), in one
//! header or many; yawc reads the header as one offer, agrees to nothing when it is a list,
//! and agrees to some offers it should decline. So before the upgrade, the offers are
//! narrowed to the first valid one (RFC 7692, 7.1) this server can honour, written the way
//! yawc reads it.

use http::{HeaderMap, HeaderValue, header};

const DEFLATE: &str = "permessage-deflate";

/// Leaves in `headers` only the first acceptable permessage-deflate offer, or none.
pub(crate) fn narrow_deflate_offers(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter();
    let Some(first) = values.next() else {
        return;
    };
    let single = values.next().is_none();
    let chosen = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| split_unquoted(list, ','))
        .find_map(acceptable);
    // The common case (a browser's `permessage-deflate; client_max_window_bits`) is already
    // written plainly: nothing to change.
    if single && chosen.as_deref().is_some_and(|offer| first == offer) {
        return;
    }
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    if let Some(offer) = chosen.and_then(|offer| HeaderValue::from_str(&offer).ok()) {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, offer);
    }
}

/// `list` split at each `separator` outside a quoted string (RFC 7230, 3.2.6), trimmed.
fn split_unquoted(list: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    list.split(move |c: char| {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else {
            return !quoted && c == separator;
        }
        false
    })
    .map(str::trim)
}

/// `offer` written plainly, when it is a valid permessage-deflate offer this server can
/// honour: known parameters, each at most once, window sizes within 9..=15 (deflate cannot
/// promise the 8 RFC 7692 allows). Names are compared without regard to case.
fn acceptable(offer: &str) -> Option<String> {
    let mut parts = split_unquoted(offer, ';');
    if !parts.next()?.eq_ignore_ascii_case(DEFLATE) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut plain = String::from(DEFLATE);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        let valid = match (name.as_str(), value) {
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
        plain.push_str(&name);
        if let Some(value) = value {
            plain.push('=');
            plain.push_str(value);
        }
        seen.push(name);
    }
    Some(plain)
}

/// A parameter's value without its one pair of quotes; `None` when a quote is unpaired.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => (!value.ends_with('"')).then_some(value),
    }
}

/// A window size RFC 7692 allows (1*DIGIT without a leading zero) and deflate can honour.
fn window_bits(value: &str) -> bool {
    matches!(value.as_bytes(), [b'1'..=b'9'] | [b'1', b'0'..=b'9'])
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
        assert_eq!(narrowed(&[DEFLATE]).as_deref(), Some(DEFLATE));
    }

    #[test]
    fn the_first_acceptable_offer_of_a_list_is_kept() {
        let list = "permessage-deflate; server_no_context_takeover; server_max_window_bits=8, \
                    permessage-deflate; server_no_context_takeover, permessage-deflate";
        assert_eq!(
            narrowed(&[list]).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        // Other extensions first, offers spread over several headers, empty elements, quoted
        // values, spaces around `=`, any case.
        assert_eq!(
            narrowed(&[
                "x-webkit-deflate-frame, ",
                "Permessage-Deflate; Client_Max_Window_Bits = \"10\""
            ])
            .as_deref(),
            Some("permessage-deflate; client_max_window_bits=10")
        );
    }

    #[test]
    fn invalid_offers_are_declined_alone_or_in_a_list() {
        for offer in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover; Server_No_Context_Takeover",
        ] {
            assert_eq!(narrowed(&[offer]), None, "{offer}");
            assert_eq!(narrowed(&[&format!("{offer}, x-other")]), None, "{offer}");
        }
    }

    #[test]
    fn a_separator_inside_a_quoted_string_separates_nothing() {
        let sneaky = "x-foo; a=\"b, permessage-deflate; client_max_window_bits=10\"";
        assert_eq!(narrowed(&[sneaky]), None);
        let escaped = "x-foo; a=\"b\\\", permessage-deflate\", permessage-deflate";
        assert_eq!(narrowed(&[escaped]).as_deref(), Some(DEFLATE));
    }
}
