//! The memory engine keeps the engine contract, with several nodes sharing one broker.

use std::sync::Arc;

use plexus_engine::{Engine, EngineErrorKind, MemoryEngine, Retention, conformance};
use plexus_protocol::{Codec, Payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_engine_keeps_the_contract() {
    let seed = MemoryEngine::new();
    conformance::run_all(|| {
        let node: Arc<dyn Engine> = Arc::new(seed.peer());
        async move { node }
    })
    .await;
}

#[tokio::test]
async fn channels_that_hold_nothing_are_forgotten_and_start_a_new_epoch() {
    let engine = MemoryEngine::new();
    let options = Retention::default();
    let data = Payload::encode(Codec::Json, &1).unwrap();
    let first = engine.publish("c", data.clone(), &options).await.unwrap();
    assert_eq!(
        engine.channel_count(),
        0,
        "no history, no watcher, no member: forgotten"
    );
    let second = engine.publish("c", data, &options).await.unwrap();
    assert_eq!(second.offset, 1);
    assert_ne!(
        first.epoch, second.epoch,
        "a forgotten channel starts a new epoch"
    );
}

#[tokio::test]
async fn the_number_of_channels_is_bounded() {
    let engine = MemoryEngine::with_max_channels(2);
    let options = Retention {
        history_size: 1,
        history_ttl: None,
    };
    let data = Payload::encode(Codec::Json, &1).unwrap();
    engine.publish("a", data.clone(), &options).await.unwrap();
    engine.publish("b", data.clone(), &options).await.unwrap();
    let refused = engine
        .publish("c", data.clone(), &options)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), EngineErrorKind::Limit);
    engine
        .publish("a", data, &options)
        .await
        .expect("kept channels still work");
}

#[tokio::test]
async fn history_stats_follow_what_the_histories_keep() {
    let engine = MemoryEngine::new();
    let peer = engine.peer();
    let kept_two = Retention {
        history_size: 2,
        history_ttl: None,
    };
    let data = Payload::encode(Codec::Json, &"abc").unwrap(); // `"abc"`: 5 bytes
    for _ in 0..3 {
        engine.publish("a", data.clone(), &kept_two).await.unwrap();
    }
    peer.publish("b", data.clone(), &kept_two).await.unwrap();
    let expected = plexus_engine::HistoryStats::new(3, 15);
    assert_eq!(engine.history_stats(), Some(expected), "2 of a, 1 of b");
    assert_eq!(peer.history_stats(), Some(expected), "peers share them");

    // An expired entry leaves when its channel is next read. The wait is the time to live
    // passing, which is what is tested.
    let short = Retention {
        history_size: 10,
        history_ttl: Some(std::time::Duration::from_millis(5)),
    };
    engine.publish("c", data.clone(), &short).await.unwrap();
    assert_eq!(
        engine.history_stats(),
        Some(plexus_engine::HistoryStats::new(4, 20))
    );
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let page = engine.history("c", None, None).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(engine.history_stats(), Some(expected));
}
