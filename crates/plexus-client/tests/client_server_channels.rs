//! Channels the server acts on: `left` ending or interrupting the application's
//! subscriptions, and server-side subscriptions (`joined`) on `Client::server_subscriptions`.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{
    CallErrorKind, ChannelEvent, Client, ClientOptions, ErrorCode, JoinOptions, Position,
    ReconnectOptions, ServerSubscriptions, Status, Subscription,
};
use plexus_protocol::{Codec, ErrorBody, Frame};
use serde_json::json;
use support::{Script, TestServer, WAIT, connect_to, json_payload, wait_status};
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

fn unavailable() -> Option<ErrorBody> {
    Some(ErrorBody::new(
        ErrorCode::UNAVAILABLE,
        "the channel's stream was interrupted",
    ))
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

/// The client reads everything the server wrote on `conn` before this returns.
async fn sync(server: &TestServer, client: &Client, conn: u64) {
    server.barrier(conn).await;
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
/// delivered, says `Resubscribed { recovered: true }`, then yields exactly the missed ones
/// (the server's replay of one it had already is dropped), then live ones.
#[tokio::test]
async fn left_unavailable_rejoins_with_since_and_recovers() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script {
            replay_overlap: 1,
            ..quiet()
        })
        .await;
        let (client, conn) = connect_to(&mut server, options(codec)).await;
        let mut sub = client.join("live", JoinOptions::default()).await.unwrap();
        joined(&mut server, "live").await;
        for n in 1..=3u64 {
            server.publish("live", json!({"n": n}));
        }
        assert_eq!(
            publications(&mut sub, 3).await,
            vec![(1, 1), (2, 2), (3, 3)]
        );

        server.unsubscribe(conn, "live", unavailable());
        // Made before the client can have joined again: missed, kept in the history.
        for n in 4..=6u64 {
            server.publish("live", json!({"n": n}));
        }
        let (_, frame) = server
            .frame_where(|f| matches!(f, Frame::Join { .. } | Frame::Leave { .. }))
            .await;
        let Frame::Join { channel, since, .. } = frame else {
            panic!("expected a join, got {frame:?}");
        };
        assert_eq!(channel, "live");
        assert_eq!(since, Some(pos("e1", 3)));

        match next_event(&mut sub).await {
            ChannelEvent::Resubscribed {
                recovered,
                position,
            } => {
                assert!(recovered);
                assert_eq!(position, pos("e1", 6));
            }
            other => panic!("expected Resubscribed, got {other:?}"),
        }
        server.publish("live", json!({"n": 7}));
        assert_eq!(
            publications(&mut sub, 4).await,
            vec![(4, 4), (5, 5), (6, 6), (7, 7)]
        );
        assert_eq!(sub.last_position(), &pos("e1", 7));
        assert_eq!(client.subscriptions(), 1);

        // Nothing else was buffered: no duplicate.
        sync(&server, &client, conn).await;
        server.publish("live", json!({"n": 8}));
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
    joined(&mut server, "fast").await;
    for n in 1..=5u64 {
        server.publish("fast", json!({"n": n}));
    }
    server.unsubscribe(conn, "fast", unavailable());
    for n in 6..=7u64 {
        server.publish("fast", json!({"n": n}));
    }
    sync(&server, &client, conn).await;

    assert_eq!(publications(&mut sub, 2).await, vec![(1, 1), (2, 2)]);
    match next_event(&mut sub).await {
        ChannelEvent::Lagged { position } => assert_eq!(position, pos("e1", 2)),
        other => panic!("expected Lagged, got {other:?}"),
    }
    let (_, frame) = server
        .frame_where(|f| matches!(f, Frame::Join { .. } | Frame::Leave { .. }))
        .await;
    assert!(
        matches!(&frame, Frame::Join { since: Some(since), .. } if *since == pos("e1", 2)),
        "{frame:?}"
    );
    match next_event(&mut sub).await {
        ChannelEvent::Resubscribed {
            recovered: true,
            position,
        } => assert_eq!(position, pos("e1", 7)),
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

/// `left` without error ends the subscription with `Closed` (code UNSUBSCRIBED); with an
/// error other than UNAVAILABLE, `Closed` carries it. Neither is joined again, not even
/// after a reconnect, and the channel can be joined anew.
#[tokio::test]
async fn left_without_error_closes_and_is_not_rejoined() {
    let mut server = TestServer::start(quiet()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut room = client.join("room", JoinOptions::default()).await.unwrap();
    let mut news = client.join("news", JoinOptions::default()).await.unwrap();
    joined(&mut server, "room").await;
    joined(&mut server, "news").await;
    server.publish("room", json!({"n": 1}));
    assert_eq!(publications(&mut room, 1).await, vec![(1, 1)]);

    server.unsubscribe(conn, "room", None);
    match next_event(&mut room).await {
        ChannelEvent::Closed(error) => {
            assert_eq!(error.kind(), CallErrorKind::Remote);
            assert!(error.is_remote());
            assert_eq!(error.code(), &ErrorCode::new("UNSUBSCRIBED"));
            assert_eq!(error.message(), "unsubscribed by the server");
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(timeout(WAIT, room.next()).await.unwrap().is_none());

    server.unsubscribe(
        conn,
        "news",
        Some(ErrorBody::new(ErrorCode::FORBIDDEN, "permission revoked")),
    );
    match next_event(&mut news).await {
        ChannelEvent::Closed(error) => {
            assert!(error.is_remote());
            assert_eq!(error.code(), &ErrorCode::FORBIDDEN);
            assert_eq!(error.message(), "permission revoked");
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(timeout(WAIT, news.next()).await.unwrap().is_none());
    assert_eq!(client.subscriptions(), 0);
    // A publication still on its way is ignored.
    server.send(
        conn,
        Frame::Msg {
            channel: "room".into(),
            offset: 2,
            data: json_payload(Codec::Json, json!({"n": 2})),
        },
    );
    sync(&server, &client, conn).await;
    assert_no_join_before(&mut server, &client, 41).await;

    // After a reconnect the client writes its re-joins first: there are none.
    disconnect(&mut server, &client, conn).await;
    server.set_accepting(true);
    wait_status(&mut client.status(), Status::Connected).await;
    assert_no_join_before(&mut server, &client, 42).await;
    assert_eq!(server.subscribers("room"), 0);

    // Ended, the channel can be joined again (the old handles still exist).
    let mut again = client.join("room", JoinOptions::default()).await.unwrap();
    assert_eq!(again.position(), &pos("e1", 1));
    server.publish("room", json!({"n": 3}));
    assert_eq!(publications(&mut again, 1).await, vec![(2, 3)]);
    drop((room, news));
}

/// `joined` starts a server-side subscription: `Subscribed`, then its presence events and
/// publications in order, duplicates dropped; channels are told apart; `left` ends one.
#[tokio::test]
async fn server_side_subscription_delivers_publications_in_order() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script::default()).await;
        let (client, conn) = connect_to(&mut server, options(codec)).await;
        let mut stream = client.server_subscriptions().expect("first take");
        assert!(client.server_subscriptions().is_none(), "one consumer");
        assert!(client.clone().server_subscriptions().is_none());

        for n in 1..=2u64 {
            server.publish("news", json!({"n": n}));
        }
        assert_eq!(server.subscribe(conn, "news"), pos("e1", 2));
        match next_server(&mut stream).await {
            (channel, ChannelEvent::Subscribed { position }) => {
                assert_eq!(channel, "news");
                assert_eq!(position, pos("e1", 2));
            }
            other => panic!("expected Subscribed, got {other:?}"),
        }
        match next_server(&mut stream).await {
            (channel, ChannelEvent::MemberJoined(member)) => {
                assert_eq!(channel, "news");
                assert_eq!(member.conn, format!("c{conn}"));
            }
            other => panic!("expected MemberJoined, got {other:?}"),
        }
        for n in 3..=5u64 {
            server.publish("news", json!({"n": n}));
        }
        for n in 3..=5u64 {
            assert_eq!(server_publication(&mut stream, "news").await, (n, n));
        }
        // Duplicates from the wire are dropped.
        for offset in [4, 5] {
            server.send(
                conn,
                Frame::Msg {
                    channel: "news".into(),
                    offset,
                    data: json_payload(codec, json!({"n": offset})),
                },
            );
        }
        sync(&server, &client, conn).await;

        // A second channel, interleaved as the frames arrive.
        server.subscribe(conn, "alerts");
        server.publish("alerts", json!({"n": 1}));
        server.publish("news", json!({"n": 6}));
        assert!(matches!(
            next_server(&mut stream).await,
            (ch, ChannelEvent::Subscribed { position }) if ch == "alerts" && position == pos("e1", 0)
        ));
        assert!(matches!(
            next_server(&mut stream).await,
            (ch, ChannelEvent::MemberJoined(_)) if ch == "alerts"
        ));
        assert_eq!(server_publication(&mut stream, "alerts").await, (1, 1));
        assert_eq!(server_publication(&mut stream, "news").await, (6, 6));

        // One subscription per channel: the application cannot join it as well.
        let error = client
            .join("news", JoinOptions::default())
            .await
            .unwrap_err();
        assert!(error.is_already_joined(), "{error:?}");
        assert_eq!(client.subscriptions(), 0);

        // `left` ends it; what comes after for the channel is ignored.
        server.unsubscribe(conn, "news", None);
        match next_server(&mut stream).await {
            (channel, ChannelEvent::Closed(error)) => {
                assert_eq!(channel, "news");
                assert!(error.is_remote());
                assert_eq!(error.code(), &ErrorCode::new("UNSUBSCRIBED"));
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        server.send(
            conn,
            Frame::Msg {
                channel: "news".into(),
                offset: 7,
                data: json_payload(codec, json!({"n": 7})),
            },
        );
        server.publish("alerts", json!({"n": 2}));
        assert_eq!(server_publication(&mut stream, "alerts").await, (2, 2));

        // UNAVAILABLE ends a server-side subscription too: the client does not join it.
        server.unsubscribe(conn, "alerts", unavailable());
        match next_server(&mut stream).await {
            (channel, ChannelEvent::Closed(error)) => {
                assert_eq!(channel, "alerts");
                assert!(error.is_unavailable());
                assert!(error.is_remote());
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert_no_join_before(&mut server, &client, 43).await;

        // Ended, the channel may be joined by the application: publications go to its
        // subscription, not to the server-side stream.
        let mut news = client.join("news", JoinOptions::default()).await.unwrap();
        server.publish("news", json!({"n": 8}));
        let event = loop {
            match next_event(&mut news).await {
                ChannelEvent::MemberJoined(_) => {}
                event => break event,
            }
        };
        // Offset 7: the `msg` above was only sent, not published.
        assert!(matches!(event, ChannelEvent::Publication(p) if p.offset == 7));
        // A `joined` for it now is ignored: the subscription keeps the publications.
        server.subscribe(conn, "news");
        server.publish("news", json!({"n": 9}));
        sync(&server, &client, conn).await;
        assert!(matches!(
            next_event(&mut news).await,
            ChannelEvent::Publication(p) if p.offset == 8
        ));

        // Another consumer may take over once this one is dropped.
        drop(stream);
        let mut stream = client.server_subscriptions().expect("taken again");
        server.subscribe(conn, "later");
        assert!(matches!(
            next_server(&mut stream).await,
            (ch, ChannelEvent::Subscribed { .. }) if ch == "later"
        ));
    }
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
        server.subscribe(conn, channel);
        assert!(matches!(
            next_server(&mut stream).await,
            (ch, ChannelEvent::Subscribed { .. }) if ch == channel
        ));
    }
    server.publish("a", json!({"n": 1}));
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
    server.publish("a", json!({"n": 2}));
    server.set_accepting(true);
    let (conn, _) = server.upgrade().await;
    wait_status(&mut client.status(), Status::Connected).await;
    assert_no_join_before(&mut server, &client, 44).await;
    // The application may join "a" itself now that no server-side subscription holds it.
    assert_eq!(server.subscribers("a"), 0);

    // Subscribed anew by the server: a new lifecycle from the current position.
    assert_eq!(server.subscribe(conn, "a"), pos("e1", 2));
    assert!(matches!(
        next_server(&mut stream).await,
        (ch, ChannelEvent::Subscribed { position }) if ch == "a" && position == pos("e1", 2)
    ));
    server.publish("a", json!({"n": 3}));
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
    server.subscribe(conn, "fast");
    for n in 1..=10u64 {
        server.publish("fast", json!({"n": n}));
    }
    // Started and ended while full: never told.
    server.subscribe(conn, "blip");
    server.unsubscribe(conn, "blip", None);
    // Started while full, then a publication: told late, with the gap.
    server.subscribe(conn, "late");
    server.publish("late", json!({"n": 1}));
    // Ended while full.
    server.unsubscribe(conn, "fast", None);
    sync(&server, &client, conn).await;

    let mut stream = client.server_subscriptions().unwrap();
    assert!(format!("{stream:?}").contains("buffered: 4"), "{stream:?}");
    assert!(matches!(
        next_server(&mut stream).await,
        (ch, ChannelEvent::Subscribed { position }) if ch == "fast" && position == pos("e1", 0)
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
    server.publish("late", json!({"n": 2}));
    assert_eq!(server_publication(&mut stream, "late").await, (2, 2));
    server.subscribe(conn, "blip");
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
    server.subscribe(conn, "a");
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
    server.subscribe(conn, "again");
    server.publish("again", json!({"n": 1}));
    // The buffer is full: dropped.
    server.publish("again", json!({"n": 2}));
    server.unsubscribe(conn, "again", None);
    server.subscribe(conn, "again");
    server.publish("again", json!({"n": 3}));
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
