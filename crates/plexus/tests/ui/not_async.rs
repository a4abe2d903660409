use plexus::{RpcError, contract};

#[contract]
trait Chat {
    fn send(&self, text: String) -> Result<u64, RpcError>;
}

fn main() {}
