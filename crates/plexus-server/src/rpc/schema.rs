//! What `$contracts` answers: the contracts a router serves (and those the server calls on its
//! clients), their methods, kinds and JSON Schemas, for code generators and tools.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One contract, as `$contracts` lists it. `#[plexus::contract]` writes it
/// (`<Trait>Contract::schema()`); a router built by `<Trait>Contract::router` carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContractSchema {
    /// The contract's name: the prefix of its methods' names on the wire.
    pub name: String,
    /// Who serves it: the server (clients call it) or the clients (the server calls them).
    pub served_by: ServedBy,
    /// Its documentation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its methods, in the order the contract declares them.
    pub methods: Vec<MethodSchema>,
    /// The named types the methods' schemas refer to (`{"$ref": "#/$defs/<name>"}`).
    #[serde(default, rename = "$defs", skip_serializing_if = "Map::is_empty")]
    pub definitions: Map<String, Value>,
}

impl ContractSchema {
    /// Keeps the methods `keep` accepts, and only the definitions they still refer to.
    pub fn retain_methods(&mut self, keep: impl FnMut(&MethodSchema) -> bool) {
        self.methods.retain(keep);
        let roots = self
            .methods
            .iter()
            .flat_map(|m| m.params.iter().chain(&m.result));
        let reachable = self.reachable(roots);
        self.definitions.retain(|name, _| reachable.contains(name));
    }

    /// The definitions `roots` refer to, directly or through other definitions.
    pub fn reachable<'a>(&self, roots: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut pending: Vec<String> = Vec::new();
        for root in roots {
            references(root, &mut pending);
        }
        while let Some(name) = pending.pop() {
            if let Some(schema) = self.definitions.get(&name)
                && found.insert(name)
            {
                references(schema, &mut pending);
            }
        }
        found
    }
}

/// The definition a `$ref` names: `#/$defs/<name>`, percent-decoded and with JSON Pointer's
/// escapes undone (as schemars writes it); `None` for a reference elsewhere.
pub fn definition_name(reference: &str) -> Option<String> {
    let name = reference.strip_prefix("#/$defs/")?;
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    Some(name.replace("~1", "/").replace("~0", "~"))
}

/// Adds the definitions `schema` refers to itself.
fn references(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => out.extend(definition_name(reference)),
                    _ => references(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, out)),
        _ => {}
    }
}

/// Who serves a contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServedBy {
    /// The server: clients call its methods.
    Server,
    /// The clients: the server calls them on a connection.
    Client,
}

impl ServedBy {
    /// Its name in `$contracts`: `server` or `client`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// One method of a contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodSchema {
    /// Its name on the wire: `<Contract>.<method>`.
    pub name: String,
    /// What it is.
    pub kind: MethodKind,
    /// Its documentation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its parameter; absent when it takes none (`null` is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// A request's result, or a stream's items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Its own deadline for callers, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Whether it is deprecated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deprecated: bool,
}

/// What a contract method is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum MethodKind {
    /// `req`, answered with `res` or `err`.
    Request,
    /// `ntf`, not answered.
    Notification,
    /// `sub`, answered with `item`s and an `end` (or `err`).
    Stream,
}

impl MethodKind {
    /// Its name in `$contracts`: `request`, `notification` or `stream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Notification => "notification",
            Self::Stream => "stream",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_wires() {
        for kind in [
            MethodKind::Request,
            MethodKind::Notification,
            MethodKind::Stream,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for side in [ServedBy::Server, ServedBy::Client] {
            assert_eq!(serde_json::to_value(side).unwrap(), side.as_str());
        }
    }
}
