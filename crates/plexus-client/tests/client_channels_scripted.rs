//! Channels, where the client must cope with what a real server cannot be made to do on
//! demand: a channel's epoch changing under a subscriber (a cluster engine that lost the
//! history), a replay of a publication the client already had, a publication still on its
//! way after a leave, presence events of members of another node, a join never answered.
//! Against the scripted server; everything else about channels runs on the real server
//! (`client_channels.rs`).

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{
    CallErrorKind, ChannelEvent, Client, ClientOptions, ErrorCode, JoinOptions, Position,
    ReconnectOptions, ServerSubscriptions, Status, Subscription,
};
use plexus_protocol::{Codec, ErrorBody, Frame, PresenceEvent};
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

fn pos(epoch: &str, offset: u64) -> Position {
    Position {
        epoch: epoch.into(),
        offset,
    }
}

/// The next event, within [`WAIT`].
async fn next_event(sub: &mut Subscription) -> ChannelEvent {
    timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for a channel event")
        .expect("the subscription ended")
}

/// The next event that is not a presence event.
async fn next_non_presence(sub: &mut Subscription) -> ChannelEvent {
    for _ in 0..1000 {
        match next_event(sub).await {
            ChannelEvent::MemberJoined(_) | ChannelEvent::MemberLeft(_) => {}
            event => return event,
        }
    }
    panic!("only presence events among 1000");
}

/// The next `n` publications (skipping presence events): their offsets and `n` fields.
async fn publications(sub: &mut Subscription, n: usize) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        match next_non_presence(sub).await {
            ChannelEvent::Publication(p) => {
                let value: serde_json::Value = p.decode().unwrap();
                seen.push((p.offset, value["n"].as_u64().unwrap()));
            }
            other => panic!("expected a publication, got {other:?}"),
        }
    }
    seen
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

/// The `join` frame the server receives next: its `since`.
async fn join_frame(server: &mut TestServer, channel: &str) -> (u64, Option<Position>) {
    let (conn, frame) = server
        .frame_where(|f| matches!(f, Frame::Join { channel: c, .. } if c == channel))
        .await;
    let Frame::Join { since, .. } = frame else {
        unreachable!()
    };
    (conn, since)
}

#[tokio::test]
async fn presence_events_from_the_wire_are_routed() {
    let mut server = TestServer::start(Script {
        presence_events: false,
        ..Script::default()
    })
    .await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client.join("room", JoinOptions::default()).await.unwrap();
    for (event, user) in [(PresenceEvent::Join, "ada"), (PresenceEvent::Leave, "ada")] {
        server.send(
            conn,
            Frame::Presence {
                event,
                channel: "room".into(),
                data: json_payload(
                    Codec::Json,
                    json!({"user": user, "conn": "c9", "info": {"name": "Ada"}}),
                ),
            },
        );
    }
    let ChannelEvent::MemberJoined(joined) = next_event(&mut sub).await else {
        panic!("expected pjoin");
    };
    assert_eq!(joined.user.as_deref(), Some("ada"));
    assert_eq!(joined.conn, "c9");
    let ChannelEvent::MemberLeft(left) = next_event(&mut sub).await else {
        panic!("expected pleave");
    };
    assert_eq!(left, joined);
}

#[tokio::test]
async fn epoch_change_resets_the_tracking() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client.join("live", JoinOptions::default()).await.unwrap();
    for n in 1..=5u64 {
        server.publish("live", json!({"n": n}));
    }
    assert_eq!(publications(&mut sub, 5).await.len(), 5);

    disconnect(&mut server, &client, conn).await;
    server.reset_channel("live", "e2");
    for n in 100..=101u64 {
        server.publish("live", json!({"n": n}));
    }
    server.set_accepting(true);
    let (_, since) = join_frame(&mut server, "live").await;
    assert_eq!(since, Some(pos("e1", 5)));
    match next_non_presence(&mut sub).await {
        ChannelEvent::Resubscribed {
            recovered,
            position,
        } => {
            assert!(!recovered);
            assert_eq!(position, pos("e2", 2));
        }
        other => panic!("expected Resubscribed, got {other:?}"),
    }
    assert_eq!(sub.last_position(), &pos("e2", 2));
    // Offsets 3 and 4 of the new epoch are at or below the old epoch's 5: still delivered.
    for n in 102..=103u64 {
        server.publish("live", json!({"n": n}));
    }
    assert_eq!(publications(&mut sub, 2).await, vec![(3, 102), (4, 103)]);
    assert_eq!(sub.last_position(), &pos("e2", 4));
}

#[tokio::test]
async fn join_timeout_leaves_the_channel() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, options(Codec::Json)).await;
    let error = client
        .join(
            "hole:1",
            JoinOptions::default().timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(client.subscriptions(), 0);
    server
        .frame_where(|f| matches!(f, Frame::Leave { channel, .. } if channel == "hole:1"))
        .await;
    // The channel can be joined again (and times out again: nothing left behind).
    let error = client
        .join(
            "hole:1",
            JoinOptions::default().timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert!(error.is_timeout());
}

#[tokio::test]
async fn leave_stops_delivery() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client.join("room", JoinOptions::default()).await.unwrap();
    assert_eq!(client.subscriptions(), 1);
    server.publish("room", json!({"n": 1}));
    assert_eq!(publications(&mut sub, 1).await, vec![(1, 1)]);

    timeout(WAIT, sub.leave()).await.unwrap().unwrap();
    assert_eq!(client.subscriptions(), 0);
    server
        .frame_where(|f| matches!(f, Frame::Leave { channel, .. } if channel == "room"))
        .await;
    assert_eq!(server.subscribers("room"), 0);

    // A publication still on its way, and one for a channel never joined: ignored.
    for channel in ["room", "elsewhere"] {
        server.send(
            conn,
            Frame::Msg {
                channel: channel.into(),
                offset: 2,
                data: json_payload(Codec::Json, json!({"n": 2})),
            },
        );
    }
    sync(&server, &client, conn).await;

    // Joining again starts afresh: the stale publication is not delivered.
    let mut again = client.join("room", JoinOptions::default()).await.unwrap();
    assert_eq!(again.position(), &pos("e1", 1));
    server.publish("room", json!({"n": 3}));
    assert_eq!(publications(&mut again, 1).await, vec![(2, 3)]);
}

/// The server drops the connection, 5 publications are made while the client is away; the
/// client re-joins with `since` and the application sees exactly those 5, then live ones.
/// The server replays one publication the client already had: it is dropped.
#[tokio::test]
async fn a_replayed_publication_is_dropped_after_a_reconnect() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script {
            replay_overlap: 1,
            ..Script::default()
        })
        .await;
        let (client, conn) = connect_to(&mut server, options(codec)).await;
        let mut sub = client.join("live", JoinOptions::default()).await.unwrap();
        for n in 1..=3u64 {
            server.publish("live", json!({"n": n}));
        }
        assert_eq!(
            publications(&mut sub, 3).await,
            vec![(1, 1), (2, 2), (3, 3)]
        );

        disconnect(&mut server, &client, conn).await;
        for n in 4..=8u64 {
            server.publish("live", json!({"n": n}));
        }
        server.set_accepting(true);
        let (conn, since) = join_frame(&mut server, "live").await;
        assert_eq!(since, Some(pos("e1", 3)));

        match next_non_presence(&mut sub).await {
            ChannelEvent::Resubscribed {
                recovered,
                position,
            } => {
                assert!(recovered);
                assert_eq!(position, pos("e1", 8));
            }
            other => panic!("expected Resubscribed, got {other:?}"),
        }
        for n in 9..=10u64 {
            server.publish("live", json!({"n": n}));
        }
        let seen = publications(&mut sub, 7).await;
        let expected: Vec<(u64, u64)> = (4..=10).map(|n| (n, n)).collect();
        assert_eq!(seen, expected);
        assert_eq!(sub.last_position(), &pos("e1", 10));

        // Nothing else: no duplicate of 3 (replayed by the server) or of anything else.
        sync(&server, &client, conn).await;
        server.publish("live", json!({"n": 11}));
        assert_eq!(publications(&mut sub, 1).await, vec![(11, 11)]);
    }
}

// ---- server-side subscriptions and `left` --------------------------------------------

fn quiet() -> Script {
    Script {
        presence_events: false,
        ..Script::default()
    }
}

fn unavailable() -> Option<ErrorBody> {
    Some(ErrorBody::new(
        ErrorCode::UNAVAILABLE,
        "the channel's stream was interrupted",
    ))
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
