use plexus::{RpcError, contract};
use serde::{Deserialize, Serialize};

/// Serializable, but its schema is not declared (no `#[derive(JsonSchema)]`).
#[derive(Serialize, Deserialize)]
pub struct Line {
    pub text: String,
}

#[contract]
trait Chat {
    async fn send(&self, line: Line) -> Result<u64, RpcError>;
}

fn main() {}
