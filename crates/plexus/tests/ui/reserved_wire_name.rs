use plexus::{RpcError, contract};

#[contract]
trait Chat {
    #[rename = "$provide"]
    async fn provide(&self) -> Result<u64, RpcError>;
}

fn main() {}
