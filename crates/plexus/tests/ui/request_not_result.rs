use plexus::contract;

#[contract]
trait Chat {
    async fn count(&self) -> u64;
}

fn main() {}
