//! Message templates: `{seq}`, `{ts}`, `{conn}`, `{channel}` and `{pad}` filled in per
//! message, so one generator speaks any server's protocol.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the generator's own clock; what `{ts}` carries to subscribers.
pub(crate) fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A message with placeholders, filled in per message.
#[derive(Clone, Debug)]
pub struct Template {
    text: String,
}

/// The values of one message.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fill<'a> {
    pub(crate) seq: u64,
    pub(crate) conn: usize,
    pub(crate) channel: &'a str,
    pub(crate) pad: &'a str,
}

impl Template {
    /// `text`, whose `{seq}` (the message's number on its connection, from 1), `{ts}` (the
    /// generator's clock in ns, when sent), `{conn}` (the connection's number), `{channel}`
    /// and `{pad}` (the padding) are filled in per message; other braces stay.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    /// The message, with `{ts}` taken now.
    pub(crate) fn render(&self, fill: Fill<'_>) -> String {
        let mut out = String::with_capacity(self.text.len() + fill.pad.len() + 16);
        let mut rest = self.text.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            let (value, used) = match tail {
                t if t.starts_with("{seq}") => (Some(fill.seq.to_string()), 5),
                t if t.starts_with("{ts}") => (Some(now_ns().to_string()), 4),
                t if t.starts_with("{conn}") => (Some(fill.conn.to_string()), 6),
                t if t.starts_with("{channel}") => (Some(fill.channel.to_owned()), 9),
                t if t.starts_with("{pad}") => (Some(fill.pad.to_owned()), 5),
                _ => (None, 1),
            };
            match value {
                Some(value) => out.push_str(&value),
                None => out.push('{'),
            }
            rest = &tail[used..];
        }
        out.push_str(rest);
        out
    }
}

/// The number after the JSON key `key` (`"ts":123` or `"ts":"123"`) in `text`, wherever the
/// server's envelope puts it.
pub(crate) fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..]
        .trim_start_matches([' ', ':', '"'])
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder_and_leaves_other_braces() {
        let t = Template::new(r#"{"id":{seq},"c":{conn},"ch":"{channel}","p":"{pad}","x":{}}"#);
        let fill = Fill {
            seq: 7,
            conn: 3,
            channel: "bench",
            pad: "xx",
        };
        assert_eq!(
            t.render(fill),
            r#"{"id":7,"c":3,"ch":"bench","p":"xx","x":{}}"#
        );
        assert!(Template::new("{ts}").render(fill).parse::<u64>().is_ok());
    }

    #[test]
    fn finds_a_number_in_any_envelope() {
        assert_eq!(number_after(r#"{"d":{"ts":42,"a":1}}"#, "\"ts\""), Some(42));
        assert_eq!(number_after(r#"["m",{"ts": "43"}]"#, "\"ts\""), Some(43));
        assert_eq!(number_after(r#"{"x":1}"#, "\"ts\""), None);
    }
}
