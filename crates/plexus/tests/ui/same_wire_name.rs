use plexus::{RpcError, contract};

#[contract]
trait Chat {
    async fn send(&self, text: String) -> Result<u64, RpcError>;
    #[rename = "send"]
    async fn post(&self, text: String) -> Result<u64, RpcError>;
}

fn main() {}
