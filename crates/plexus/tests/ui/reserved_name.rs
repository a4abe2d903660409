use plexus::{RpcError, contract};

#[contract]
trait Shop {
    async fn new(&self, item: String) -> Result<u64, RpcError>;
}

fn main() {}
