//! The Redis engine keeps the engine contract: the shared conformance suite, unchanged,
//! against a real redis-server.

use std::sync::Arc;

use plexus_engine::{Engine, conformance};
use plexus_redis::RedisEngine;
use plexus_redis::testing::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_engine_keeps_the_engine_contract() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    conformance::run_all(move || {
        let url = url.clone();
        async move {
            let engine = RedisEngine::connect(&url).await.expect("redis is up");
            Arc::new(engine) as Arc<dyn Engine>
        }
    })
    .await;
}
