use plexus::{RpcError, contract};

#[contract]
trait Chat {
    #[stream]
    async fn lines(&self) -> Result<Vec<String>, RpcError>;
}

fn main() {}
