use plexus::{RpcError, contract};

#[contract]
trait Chat {
    async fn send(&self, room: String, text: String) -> Result<u64, RpcError>;
}

fn main() {}
