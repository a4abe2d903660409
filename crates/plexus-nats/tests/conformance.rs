//! The NATS engine keeps the engine contract: the shared conformance suite, unchanged,
//! against a real `nats-server -js`.

use std::sync::Arc;

use plexus_engine::{Engine, conformance};
use plexus_nats::testing::NatsServer;
use plexus_nats::{NatsEngine, NatsOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_engine_keeps_the_engine_contract() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    conformance::run_all(move || {
        let options = NatsOptions::new(url.clone());
        async move {
            let engine = NatsEngine::connect_with(options).await.expect("nats is up");
            Arc::new(engine) as Arc<dyn Engine>
        }
    })
    .await;
}
