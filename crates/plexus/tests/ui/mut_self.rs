use plexus::{RpcError, contract};

#[contract]
trait Chat {
    async fn send(&mut self, text: String) -> Result<u64, RpcError>;
}

fn main() {}
