use plexus::contract;

#[contract]
trait Chat {
    #[notification]
    async fn typing(&self, who: String) -> bool;
}

fn main() {}
