use plexus::{RpcError, contract};

#[contract]
trait Chat {
    async fn send(&self, text: &str) -> Result<u64, RpcError>;
}

fn main() {}
