use plexus::contract;

struct Oops;

#[contract]
trait Chat {
    #[public]
    async fn send(&self, text: String) -> Result<u64, Oops>;
}

fn main() {}
