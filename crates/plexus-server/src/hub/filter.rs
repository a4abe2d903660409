//! Subscription filters: equality on top-level fields of a publication.

use plexus_protocol::Payload;
use serde_json::{Map, Value};

/// Matches publications whose data is an object holding every field of the filter with an
/// equal value, e.g. `{"agent_id":"a1"}`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Filter {
    fields: Map<String, Value>,
}

/// Most fields a filter may name.
const MAX_FIELDS: usize = 16;

impl Filter {
    /// Parses a filter; `Err` says what is wrong with it.
    pub(crate) fn parse(payload: &Payload) -> Result<Option<Self>, String> {
        match payload.to_json_value() {
            Ok(Value::Null) => Ok(None),
            Ok(Value::Object(fields)) if fields.len() <= MAX_FIELDS => Ok(Some(Self { fields })),
            Ok(Value::Object(_)) => Err(format!("a filter names at most {MAX_FIELDS} fields")),
            Ok(_) => Err("a filter is an object of field values, e.g. {\"kind\":\"chat\"}".into()),
            Err(e) => Err(format!("invalid filter: {e}")),
        }
    }

    /// Whether the publication (parsed once per publication) matches.
    pub(crate) fn matches(&self, data: Option<&Value>) -> bool {
        let Some(Value::Object(object)) = data else {
            return false;
        };
        self.fields
            .iter()
            .all(|(key, want)| object.get(key) == Some(want))
    }
}

#[cfg(test)]
mod tests {
    use plexus_protocol::Codec;
    use serde_json::json;

    use super::*;

    fn filter(value: Value) -> Filter {
        Filter::parse(&Payload::encode(Codec::Json, &value).unwrap())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn equality_on_top_level_fields() {
        let f = filter(json!({"agent_id": "a1", "level": 2}));
        assert!(f.matches(Some(&json!({"agent_id": "a1", "level": 2, "x": 1}))));
        assert!(!f.matches(Some(&json!({"agent_id": "a2", "level": 2}))));
        assert!(!f.matches(Some(&json!({"agent_id": "a1"}))));
        assert!(!f.matches(Some(&json!([1, 2]))));
        assert!(!f.matches(None));
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        let parse = |v: Value| Filter::parse(&Payload::encode(Codec::Json, &v).unwrap());
        assert!(parse(json!(null)).unwrap().is_none());
        assert!(parse(json!([1])).is_err());
        assert!(parse(json!("x")).is_err());
    }
}
