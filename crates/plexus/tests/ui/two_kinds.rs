use plexus::contract;
use plexus::contract::ItemStream;

#[contract]
trait Chat {
    #[stream]
    #[notification]
    async fn lines(&self) -> Result<ItemStream<String>, plexus::RpcError>;
}

fn main() {}
