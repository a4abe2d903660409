//! What the NATS engine promises beyond the shared contract: epochs that outlive a node and
//! change only when NATS lost the history, a broken link reported and healed, republished
//! publications put back in order and a lost one reported, presence that
//! outlives no node, node ids held by one live process, and clear errors at start.

use std::sync::Arc;
use std::time::Duration;

use plexus_engine::conformance::{RecordingSink, Seen};
use plexus_engine::{Engine, EngineErrorKind, Member, Retention};
use plexus_nats::testing::NatsServer;
use plexus_nats::{NatsEngine, NatsOptions};
use plexus_protocol::{Codec, Payload, Position, PresenceEvent};

fn data(n: u64) -> Payload {
    Payload::encode(Codec::Json, &n).expect("a number encodes")
}

fn keep(history_size: usize) -> Retention {
    Retention {
        history_size,
        history_ttl: None,
    }
}

async fn started(options: NatsOptions, node: &str) -> (Arc<NatsEngine>, Arc<RecordingSink>) {
    let engine = Arc::new(NatsEngine::connect_with(options).await.expect("nats is up"));
    let sink = Arc::new(RecordingSink::default());
    engine.start(node, sink.clone()).await.expect("starts");
    (engine, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_outlives_the_nodes_and_changes_when_nats_loses_the_history() {
    let mut nats = NatsServer::start().await;
    let options = NatsOptions::new(nats.url());
    let (first, _) = started(options.clone(), "a").await;
    let before = first
        .publish("room", data(1), &keep(10))
        .await
        .expect("publish");
    drop(first);

    let (second, _) = started(options.clone(), "a").await;
    let page = second
        .history(
            "room",
            Some(&Position {
                epoch: before.epoch.clone(),
                offset: 0,
            }),
            None,
        )
        .await
        .expect("history");
    assert_eq!(
        page.position, before,
        "a new node process sees the same epoch"
    );
    assert!(page.recoverable);
    assert_eq!(page.publications.len(), 1);

    nats.restart().await;
    // The client reconnects by itself (with backoff); the streams are made again.
    let mut after = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match second.publish("room", data(2), &keep(10)).await {
            Ok(position) => {
                after = Some(position);
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), EngineErrorKind::Unavailable, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let after = after.expect("publishing works again once NATS is back");
    assert_ne!(
        after.epoch, before.epoch,
        "the history was lost: a new epoch"
    );
    assert_eq!(after.offset, 1);
    let page = second
        .history("room", Some(&before), None)
        .await
        .expect("history");
    assert!(
        !page.recoverable,
        "a position from the lost epoch cannot be recovered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_link_is_reported_and_healed() {
    let mut nats = NatsServer::start().await;
    let options = NatsOptions::new(nats.url());
    let (watcher, sink) = started(options.clone(), "a").await;
    watcher.watch("live").await.expect("watch");
    nats.restart().await;
    sink.wait_for("the interruption", |seen| {
        seen.contains(&Seen::Interrupted("live".into()))
    })
    .await;
    // The hub answers an interruption by making its subscribers join again: unwatch, watch.
    watcher.unwatch("live").await.expect("unwatch");
    let mut watching = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match watcher.watch("live").await {
            Ok(()) => {
                watching = true;
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), EngineErrorKind::Unavailable, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(watching, "watching works again once NATS is back");
    let (publisher, _) = started(options, "b").await;
    publisher
        .publish("live", data(7), &keep(0))
        .await
        .expect("publish");
    sink.wait_for("the publication after the restart", |seen| {
        seen.iter()
            .any(|s| matches!(s, Seen::Publication(ch, _, 1, d) if ch == "live" && d == "7"))
    })
    .await;
}

/// Sends what the stream would republish for `(epoch, offset)` of channel `room`, straight to
/// its live subject: how a server that swaps or loses republished copies looks to a node.
async fn republish(client: &async_nats::Client, epoch: &str, offset: u64) {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("room");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Plexus-Epoch", epoch);
    headers.insert("Plexus-Offset", offset.to_string().as_str());
    headers.insert("Plexus-Codec", "j");
    client
        .publish_with_headers(
            format!("plexus.ch.{token}"),
            headers,
            offset.to_string().into(),
        )
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_republishes_reach_the_sink_in_order_and_a_lost_one_is_reported() {
    let nats = NatsServer::start().await;
    let (engine, sink) = started(NatsOptions::new(nats.url()), "a").await;
    let first = engine
        .publish("room", data(1), &keep(10))
        .await
        .expect("publish");
    engine.watch("room").await.expect("watch");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let epoch = first.epoch.as_str();
    // Offset 1 was kept before the watch: history, not live.
    for offset in [3, 1, 2, 4] {
        republish(&client, epoch, offset).await;
    }
    client.flush().await.expect("flush");
    sink.wait_for("three publications", |_| sink.offsets("room").len() >= 3)
        .await;
    assert_eq!(
        sink.offsets("room"),
        [2, 3, 4],
        "in offset order, once each"
    );

    // Offset 5 never comes: 6 waits for it, then the channel is reported interrupted.
    republish(&client, epoch, 6).await;
    client.flush().await.expect("flush");
    let seen = sink
        .wait_for("the interruption", |seen| {
            seen.contains(&Seen::Interrupted("room".into()))
        })
        .await;
    assert_eq!(
        sink.offsets("room"),
        [2, 3, 4],
        "nothing past the gap: {seen:?}"
    );
    // After the gap the next publication is taken as it comes.
    republish(&client, epoch, 7).await;
    sink.wait_for("the publication after the gap", |_| {
        sink.offsets("room").len() >= 4
    })
    .await;
    assert_eq!(sink.offsets("room"), [2, 3, 4, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_within_the_presence_ttl() {
    let nats = NatsServer::start().await;
    let options = NatsOptions::new(nats.url()).presence_ttl(Duration::from_millis(800));
    let (watcher, sink) = started(options.clone(), "a").await;
    watcher.watch("lobby").await.expect("watch");
    let (dying, _) = started(options.clone(), "b").await;
    let member = Member {
        user: Some("alice".into()),
        conn: "c1".into(),
        info: None,
    };
    dying.add_member("lobby", &member).await.expect("add");
    let stay = Member {
        user: Some("bob".into()),
        conn: "c2".into(),
        info: None,
    };
    watcher.add_member("lobby", &stay).await.expect("add");
    // Several TTLs pass while both nodes live: renewals keep both members.
    let renewed = tokio::time::Instant::now() + Duration::from_millis(2000);
    tokio::time::sleep_until(renewed).await;
    assert_eq!(watcher.members("lobby").await.expect("members").len(), 2);
    drop(dying);
    let dropped = tokio::time::Instant::now();
    sink.wait_for("alice's leave", |seen| {
        seen.contains(&Seen::Presence(
            "lobby".into(),
            PresenceEvent::Leave,
            "c1".into(),
        ))
    })
    .await;
    assert!(
        dropped.elapsed() < Duration::from_millis(800 + 400 + 300),
        "gone within the TTL and a sweep: {:?}",
        dropped.elapsed()
    );
    let members = watcher.members("lobby").await.expect("members");
    assert_eq!(members, [stay], "the live node's member stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_is_held_by_one_live_process() {
    let nats = NatsServer::start().await;
    let first = NatsEngine::connect(&nats.url()).await.expect("nats is up");
    first.claim_node("n1").await.expect("free");
    first
        .claim_node("n1")
        .await
        .expect("claiming again is fine");
    let second = NatsEngine::connect(&nats.url()).await.expect("nats is up");
    let refused = second.claim_node("n1").await.expect_err("held");
    assert_eq!(refused.kind(), EngineErrorKind::Conflict);
    assert!(refused.message().contains("`n1`"), "{refused}");
    second.claim_node("n2").await.expect("another id is free");
    drop(first);
    // Dropping the engine gives the id back (in a task): wait for it to be free.
    let mut claimed = false;
    for _ in 0..50 {
        if second.claim_node("n1").await.is_ok() {
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(claimed, "the id is free once its holder is gone");
}

#[tokio::test]
async fn a_wrong_url_or_an_unreachable_nats_is_a_clear_error() {
    let Err(wrong) = NatsEngine::connect("http://example").await else {
        panic!("not a NATS url");
    };
    assert_eq!(wrong.kind(), EngineErrorKind::Invalid, "{wrong}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let Err(down) = NatsEngine::connect(&url).await else {
        panic!("nothing listens there");
    };
    assert_eq!(down.kind(), EngineErrorKind::Unavailable, "{down}");
    assert!(down.message().contains(&url), "{down}");
}
