//! End-to-end: 1,000 requests in flight on one connection, all answered once with the right
//! data; for both codecs.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use plexus_server::{Codec, Router, RpcError};
use serde_json::{Value, json};
use support::{RawClient, start, sys};
use tokio::sync::Barrier;

codec_tests!(
    thousand_echoes,
    thousand_sleeping_requests_run_concurrently,
    thousand_requests_wait_for_each_other,
);

const N: u64 = 1_000;

/// The peak number of handlers running at once.
#[derive(Clone, Default)]
struct Peak {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

fn router(peak: Peak, barrier: Arc<Barrier>) -> Router {
    sys()
        .request("slow.echo", move |p: Value| {
            let peak = peak.clone();
            async move {
                let now = peak.now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                peak.now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, RpcError>(p)
            }
        })
        .request("barrier.echo", move |p: Value| {
            let barrier = barrier.clone();
            async move {
                // Returns only once all N handlers are waiting here together.
                barrier.wait().await;
                Ok::<_, RpcError>(p)
            }
        })
}

/// Sends N requests to `method` with ids 1..=N (each carrying its id), then checks every id
/// is answered exactly once with its own params.
async fn burst(client: &mut RawClient, method: &str) {
    for id in 1..=N {
        client
            .feed_json(json!({"t": "req", "id": id, "m": method, "d": {"id": id, "pad": "ü".repeat((id % 7) as usize)}}))
            .await;
        if id % 100 == 0 {
            client.flush().await;
        }
    }
    client.flush().await;
    let mut answered: HashMap<u64, u32> = HashMap::new();
    for _ in 0..N {
        let frame = client.recv_json().await;
        assert_eq!(frame["t"], "res", "{frame}");
        let id = frame["id"].as_u64().expect("id");
        assert_eq!(
            frame["d"],
            json!({"id": id, "pad": "ü".repeat((id % 7) as usize)}),
            "answer of {id}"
        );
        *answered.entry(id).or_default() += 1;
    }
    assert_eq!(answered.len() as u64, N, "every id answered");
    assert!(answered.values().all(|n| *n == 1), "each id answered once");
    assert!(answered.keys().all(|id| (1..=N).contains(id)));
}

async fn setup(codec: Codec) -> (support::TestServer, RawClient, Peak) {
    let peak = Peak::default();
    let barrier = Arc::new(Barrier::new(N as usize));
    let server = start(router(peak.clone(), barrier), support::config()).await;
    let client = server.client(codec).await;
    (server, client, peak)
}

async fn thousand_echoes(codec: Codec) {
    let (_server, mut client, _) = setup(codec).await;
    burst(&mut client, "sys.echo").await;
    client.assert_echo(N + 1).await;
}

async fn thousand_sleeping_requests_run_concurrently(codec: Codec) {
    let (_server, mut client, peak) = setup(codec).await;
    burst(&mut client, "slow.echo").await;
    // Run one after the other they would need 20 s; many overlapped.
    let max = peak.max.load(Ordering::SeqCst);
    assert!(max > 1, "handlers never overlapped (peak {max})");
    client.assert_echo(N + 1).await;
}

async fn thousand_requests_wait_for_each_other(codec: Codec) {
    // A barrier of N: no handler can answer before all N are in flight at once, so the
    // answers prove the connection runs them concurrently.
    let (_server, mut client, _) = setup(codec).await;
    burst(&mut client, "barrier.echo").await;
    client.assert_echo(N + 1).await;
}
