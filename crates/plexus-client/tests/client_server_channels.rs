//! Channels the server acts on: `left` interrupting the application's subscriptions, and
//! server-side subscriptions (`joined`) on `Client::server_subscriptions`; against the real
//! server (an interruption is its engine's, as when a cluster engine loses its backend).

mod real;

use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{
    CallErrorKind, ChannelEvent, Client, ClientOptions, JoinOptions, Position, ReconnectOptions,
    ServerSubscriptions, Status, Subscription,
};
use plexus_protocol::{Codec, Frame};
use real::{RealServer as TestServer, Script, WAIT, connect_to, wait_status};
use serde_json::json;
use tokio::time::timeout;

fn options(codec: Codec) -> ClientOptions {
    ClientOptions::default().codec(codec).reconnect(
        ReconnectOptions::default()
            .initial_delay(Duration::from_millis(20))
            .max_delay(Duration::from_millis(100)),
    )
}

fn quiet() -> Script {
    Script {
        presence_events: false,
        ..Script::default()
    }
}

fn pos(epoch: &str, offset: u64) -> Position {
    Position {
        epoch: epoch.into(),
        offset,
    }
}

/// The next event of a subscription, within [`WAIT`].
async fn next_event(sub: &mut Subscription) -> ChannelEvent {
    timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for a channel event")
        .expect("the subscription ended")
}

/// The next `n` publications of a subscription: their offsets and `n` fields.
async fn publications(sub: &mut Subscription, n: usize) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        match next_event(sub).await {
            ChannelEvent::Publication(p) => {
                let value: serde_json::Value = p.decode().unwrap();
                seen.push((p.offset, value["n"].as_u64().unwrap()));
            }
            other => panic!("expected a publication, got {other:?}"),
        }
    }
    seen
}

/// The next event of the server-side subscriptions, within [`WAIT`].
async fn next_server(stream: &mut ServerSubscriptions) -> (String, ChannelEvent) {
    timeout(WAIT, stream.next())
        .await
        .expect("timed out waiting for a server-side subscription event")
        .expect("the server-side subscriptions ended")
}

/// The next server-side event must be a publication of `channel`: its offset and `n`.
async fn server_publication(stream: &mut ServerSubscriptions, channel: &str) -> (u64, u64) {
    match next_server(stream).await {
        (ch, ChannelEvent::Publication(p)) if ch == channel => {
            let value: serde_json::Value = p.decode().unwrap();
            (p.offset, value["n"].as_u64().unwrap())
        }
        other => panic!("expected a publication of {channel}, got {other:?}"),
    }
}

/// Waits for the `join` of `channel` (skipping other frames).
async fn joined(server: &mut TestServer, channel: &str) {
    server
        .frame_where(|f| matches!(f, Frame::Join { channel: c, .. } if c == channel))
        .await;
}

/// The client reads everything the server wrote before this returns: the server answers
/// the `echo` after what it queued for the connection earlier.
async fn sync(_server: &TestServer, client: &Client, _conn: u64) {
    let n: u32 = client.request("echo", &7).await.unwrap();
    assert_eq!(n, 7);
}

/// Drops the connection and keeps the client out until [`TestServer::set_accepting`].
async fn disconnect(server: &mut TestServer, client: &Client, conn: u64) {
    let mut status = client.status();
    server.set_accepting(false);
    server.drop_all();
    server.gone(conn).await;
    wait_status(&mut status, Status::Reconnecting).await;
}

/// Sends an `echo` of `marker` and asserts that the server receives no `join` (and no
/// `leave`) before it: the client did not join anything since the frames seen so far.
async fn assert_no_join_before(server: &mut TestServer, client: &Client, marker: u32) {
    let n: u32 = client.request("echo", &marker).await.unwrap();
    assert_eq!(n, marker);
    let (_, frame) = server
        .frame_where(|f| match f {
            Frame::Join { .. } | Frame::Leave { .. } => true,
            Frame::Req { method, data, .. } => {
                method == "echo" && data.decode::<u32>().ok() == Some(marker)
            }
            _ => false,
        })
        .await;
    assert!(
        matches!(frame, Frame::Req { .. }),
        "the client sent {frame:?}"
    );
}

/// The server's stream of the channel is interrupted (`left` with UNAVAILABLE) and three
/// publications are made meanwhile: the client joins again with `since` = the last one it
/// delivered, says `Resubscribed { recovered: true }`, then yields exactly the missed ones,
/// then live ones.
#[tokio::test]
async fn left_unavailable_rejoins_with_since_and_recovers() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(quiet()).await;
        let (client, conn) = connect_to(&mut server, options(codec)).await;
        let mut sub = client.join("live", JoinOptions::default()).await.unwrap();
        let e1 = sub.position().epoch.clone();
        joined(&mut server, "live").await;
        for n in 1..=3u64 {
            server.publish("live", json!({"n": n})).await;
        }
        assert_eq!(
            publications(&mut sub, 3).await,
            vec![(1, 1), (2, 2), (3, 3)]
        );

        // The connection is paused, so that the `left` reaches the client only after
        // three publications, made once the server ended the subscription: missed, kept in
        // the history.
        server.pause(true);
        server.unsubscribe(conn, "live", true).await;
        for n in 4..=6u64 {
            server.publish("live", json!({"n": n})).await;
        }
        server.pause(false);
        let (_, frame) = server
            .frame_where(|f| matches!(f, Frame::Join { .. } | Frame::Leave { .. }))
            .await;
        let Frame::Join { channel, since, .. } = frame else {
            panic!("expected a join, got {frame:?}");
        };
        assert_eq!(channel, "live");
        assert_eq!(since, Some(pos(&e1, 3)));

        match next_event(&mut sub).await {
            ChannelEvent::Resubscribed {
                recovered,
                position,
            } => {
                assert!(recovered);
                assert_eq!(position, pos(&e1, 6));
            }
            other => panic!("expected Resubscribed, got {other:?}"),
        }
        server.publish("live", json!({"n": 7})).await;
        assert_eq!(
            publications(&mut sub, 4).await,
            vec![(4, 4), (5, 5), (6, 6), (7, 7)]
        );
        assert_eq!(sub.last_position(), &pos(&e1, 7));
        assert_eq!(client.subscriptions(), 1);

        // Nothing else was buffered: no duplicate.
        sync(&server, &client, conn).await;
        server.publish("live", json!({"n": 8})).await;
        assert_eq!(publications(&mut sub, 1).await, vec![(8, 8)]);
    }
}

/// Interrupted while lagged: the client does not send `leave` (the server ended the
/// subscription already) and joins again once the application has drained its buffer.
#[tokio::test]
async fn left_unavailable_while_lagged_rejoins_once_drained() {
    let mut server = TestServer::start(quiet()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client
        .join("fast", JoinOptions::default().buffer(2))
        .await
        .unwrap();
    let e1 = sub.position().epoch.clone();
    joined(&mut server, "fast").await;
    for n in 1..=5u64 {
        server.publish("fast", json!({"n": n})).await;
    }
    server.unsubscribe(conn, "fast", true).await;
    for n in 6..=7u64 {
        server.publish("fast", json!({"n": n})).await;
    }
    sync(&server, &client, conn).await;

    assert_eq!(publications(&mut sub, 2).await, vec![(1, 1), (2, 2)]);
    match next_event(&mut sub).await {
        ChannelEvent::Lagged { position } => assert_eq!(position, pos(&e1, 2)),
        other => panic!("expected Lagged, got {other:?}"),
    }
    let (_, frame) = server
        .frame_where(|f| matches!(f, Frame::Join { .. } | Frame::Leave { .. }))
        .await;
    assert!(
        matches!(&frame, Frame::Join { since: Some(since), .. } if *since == pos(&e1, 2)),
        "{frame:?}"
    );
    match next_event(&mut sub).await {
        ChannelEvent::Resubscribed {
            recovered: true,
            position,
        } => assert_eq!(position, pos(&e1, 7)),
        other => panic!("expected Resubscribed, got {other:?}"),
    }
    // The replay overflows the small buffer again: more Lagged / Resubscribed cycles, and
    // every publication once, in order.
    let mut offsets = Vec::new();
    for _ in 0..100 {
        if offsets.len() == 5 {
            break;
        }
        match next_event(&mut sub).await {
            ChannelEvent::Publication(p) => offsets.push(p.offset),
            ChannelEvent::Lagged { .. }
            | ChannelEvent::Resubscribed {
                recovered: true, ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(offsets, (3..=7).collect::<Vec<_>>());
}

/// Server-side subscriptions end with the connection (`Closed`, kind Unavailable) and the
/// client does not join them after reconnecting: the server subscribes the new connection
/// again if it wants to.
#[tokio::test]
async fn server_side_subscriptions_end_with_the_connection() {
    let mut server = TestServer::start(quiet()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut stream = client.server_subscriptions().unwrap();
    for channel in ["a", "b"] {
        server.subscribe(conn, channel).await;
        assert!(matches!(
            next_server(&mut stream).await,
            (ch, ChannelEvent::Subscribed { .. }) if ch == channel
        ));
    }
    let e1 = server.publish("a", json!({"n": 1})).await.epoch;
    assert_eq!(server_publication(&mut stream, "a").await, (1, 1));

    disconnect(&mut server, &client, conn).await;
    for channel in ["a", "b"] {
        match next_server(&mut stream).await {
            (ch, ChannelEvent::Closed(error)) => {
                assert_eq!(ch, channel);
                assert_eq!(error.kind(), CallErrorKind::Unavailable);
            }
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    server.publish("a", json!({"n": 2})).await;
    server.set_accepting(true);
    let (conn, _) = server.upgrade().await;
    wait_status(&mut client.status(), Status::Connected).await;
    assert_no_join_before(&mut server, &client, 44).await;
    // The application may join "a" itself now that no server-side subscription holds it.
    assert_eq!(server.subscribers("a"), 0);

    // Subscribed anew by the server: a new lifecycle from the current position.
    server.subscribe(conn, "a").await;
    assert!(matches!(
        next_server(&mut stream).await,
        (ch, ChannelEvent::Subscribed { position }) if ch == "a" && position == pos(&e1, 2)
    ));
    server.publish("a", json!({"n": 3})).await;
    assert_eq!(server_publication(&mut stream, "a").await, (3, 3));
}

/// The buffer holds 4 events and nobody reads (nor took the stream yet): the client keeps
/// the first 4, drops the rest and says so with `Lagged` once there is room; a subscription
/// that started, or ended, while it was full is told late, in order per channel.
#[tokio::test]
async fn server_side_buffer_is_bounded_and_overflow_is_reported() {
    let mut server = TestServer::start(quiet()).await;
    let (client, conn) = connect_to(
        &mut server,
        options(Codec::Json).server_subscription_buffer(4),
    )
    .await;
    server.subscribe(conn, "fast").await;
    for n in 1..=10u64 {
        server.publish("fast", json!({"n": n})).await;
    }
    // Started and ended while full: never told.
    server.subscribe(conn, "blip").await;
    server.unsubscribe(conn, "blip", false).await;
    // Started while full, then a publication: told late, with the gap.
    server.subscribe(conn, "late").await;
    server.publish("late", json!({"n": 1})).await;
    // Ended while full.
    server.unsubscribe(conn, "fast", false).await;
    sync(&server, &client, conn).await;

    let mut stream = client.server_subscriptions().unwrap();
    assert!(format!("{stream:?}").contains("buffered: 4"), "{stream:?}");
    assert!(matches!(
        next_server(&mut stream).await,
        (ch, ChannelEvent::Subscribed { position }) if ch == "fast" && position.offset == 0
    ));
    for n in 1..=3u64 {
        assert_eq!(server_publication(&mut stream, "fast").await, (n, n));
    }
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.push(next_server(&mut stream).await);
    }
    let shape: Vec<(String, String)> = rest
        .iter()
        .map(|(ch, event)| {
            let kind = match event {
                ChannelEvent::Lagged { position } => format!("lagged {}", position.offset),
                ChannelEvent::Closed(error) => format!("closed {}", error.code()),
                ChannelEvent::Subscribed { position } => format!("subscribed {}", position.offset),
                other => format!("{other:?}"),
            };
            (ch.clone(), kind)
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("fast", "lagged 3"),
        ("fast", "closed UNSUBSCRIBED"),
        ("late", "subscribed 0"),
        ("late", "lagged 0"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(shape, expected);

    // Delivery resumes after the gap.
    server.publish("late", json!({"n": 2})).await;
    assert_eq!(server_publication(&mut stream, "late").await, (2, 2));
    server.subscribe(conn, "blip").await;
    assert!(matches!(
        next_server(&mut stream).await,
        (ch, ChannelEvent::Subscribed { .. }) if ch == "blip"
    ));
}

/// Closing the client ends every server-side subscription (`Closed`, kind Closed), then
/// the stream.
#[tokio::test]
async fn closing_the_client_ends_the_server_side_stream() {
    let mut server = TestServer::start(quiet()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut stream = client.server_subscriptions().unwrap();
    server.subscribe(conn, "a").await;
    assert!(matches!(
        next_server(&mut stream).await,
        (ch, ChannelEvent::Subscribed { .. }) if ch == "a"
    ));
    client.close().await;
    match next_server(&mut stream).await {
        (ch, ChannelEvent::Closed(error)) => {
            assert_eq!(ch, "a");
            assert_eq!(error.kind(), CallErrorKind::Closed);
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(timeout(WAIT, stream.next()).await.unwrap().is_none());
}

/// A channel the server ends and subscribes again while the buffer is full: the first
/// subscription is told to its end (`Lagged` for what it dropped, then `Closed`), and the
/// second starts with a `Subscribed` of its own.
#[tokio::test]
async fn a_subscription_renewed_while_full_is_told_as_two() {
    let mut server = TestServer::start(quiet()).await;
    let (client, conn) = connect_to(
        &mut server,
        options(Codec::Json).server_subscription_buffer(2),
    )
    .await;
    server.subscribe(conn, "again").await;
    server.publish("again", json!({"n": 1})).await;
    // The buffer is full: dropped.
    server.publish("again", json!({"n": 2})).await;
    server.unsubscribe(conn, "again", false).await;
    server.subscribe(conn, "again").await;
    server.publish("again", json!({"n": 3})).await;
    sync(&server, &client, conn).await;

    let mut stream = client.server_subscriptions().unwrap();
    let mut kinds = Vec::new();
    for _ in 0..6 {
        let (channel, event) = next_server(&mut stream).await;
        assert_eq!(channel, "again");
        kinds.push(match event {
            ChannelEvent::Subscribed { .. } => "subscribed".to_owned(),
            ChannelEvent::Publication(p) => format!("publication {}", p.offset),
            ChannelEvent::Lagged { position } => format!("lagged {}", position.offset),
            ChannelEvent::Closed(error) => format!("closed {}", error.code()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        kinds,
        [
            "subscribed",
            "publication 1",
            "lagged 1",
            "closed UNSUBSCRIBED",
            "subscribed",
            "lagged 2",
        ]
    );
}
