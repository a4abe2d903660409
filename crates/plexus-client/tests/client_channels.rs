//! Channels: join, publications in order, publish, leave, presence, history, and recovery
//! across reconnects and buffer overflows without loss or duplicates; against the real
//! server (epochs are its own, read from the first position it gives).

mod real;

use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{
    CallErrorKind, ChannelEvent, Client, ClientOptions, ErrorCode, HistoryOptions, JoinOptions,
    Position, ReconnectOptions, Status, Subscription,
};
use plexus_protocol::{Codec, Frame};
use real::{RealServer as TestServer, Script, WAIT, connect_to, json_payload, wait_status};
use serde::Deserialize;
use serde_json::json;
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

/// The client reads everything the server wrote before this returns: the server answers
/// the `echo` after what it queued for the connection earlier.
async fn sync(_server: &TestServer, client: &Client, _conn: u64) {
    let n: u32 = client.request("echo", &7).await.unwrap();
    assert_eq!(n, 7);
}

/// Drops the connection and keeps the client out until [`TestServer::set_accepting`]
/// (the server stays up: publications made meanwhile are kept in its history).
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

#[derive(Debug, Deserialize, PartialEq)]
struct Chat {
    n: u64,
    text: String,
}

#[tokio::test]
async fn join_then_publications_arrive_in_order() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script::default()).await;
        let (client, _) = connect_to(&mut server, options(codec)).await;
        let mut sub = client.join("room:1", JoinOptions::default()).await.unwrap();
        let e1 = sub.position().epoch.clone();
        assert_eq!(sub.channel(), "room:1");
        assert_eq!(sub.position(), &pos(&e1, 0));
        assert!(!sub.recovered());
        let (_, since) = join_frame(&mut server, "room:1").await;
        assert_eq!(since, None);

        for n in 1..=5u64 {
            server
                .publish("room:1", json!({"n": n, "text": format!("hi {n}")}))
                .await;
        }
        for n in 1..=5u64 {
            match next_non_presence(&mut sub).await {
                ChannelEvent::Publication(p) => {
                    assert_eq!(p.offset, n);
                    assert_eq!(p.data.codec(), codec);
                    let chat: Chat = p.decode().unwrap();
                    assert_eq!(
                        chat,
                        Chat {
                            n,
                            text: format!("hi {n}")
                        }
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sub.last_position(), &pos(&e1, 5));
        // A value that does not fit is a decode error naming the field.
        server.publish("room:1", json!({"n": "six"})).await;
        let ChannelEvent::Publication(p) = next_non_presence(&mut sub).await else {
            panic!("expected a publication");
        };
        let error = p.decode::<Chat>().unwrap_err();
        assert_eq!(error.kind(), CallErrorKind::Decode);
        assert!(error.message().contains('n'), "{error}");
    }
}

#[tokio::test]
async fn publish_returns_increasing_offsets() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script::default()).await;
        let (client, _) = connect_to(&mut server, options(codec)).await;
        let mut sub = client.join("news", JoinOptions::default()).await.unwrap();
        let e1 = sub.position().epoch.clone();
        let mut offsets = Vec::new();
        for n in 1..=3u64 {
            let position = client.publish("news", &json!({"n": n})).await.unwrap();
            assert_eq!(position.epoch, e1);
            offsets.push(position.offset);
        }
        assert_eq!(offsets, vec![1, 2, 3]);
        let raw = client
            .publish("news", json_payload(codec, json!({"n": 4})))
            .await
            .unwrap();
        assert_eq!(raw, pos(&e1, 4));
        // The publisher joined: it receives its own publications.
        assert_eq!(
            publications(&mut sub, 4).await,
            vec![(1, 1), (2, 2), (3, 3), (4, 4)]
        );

        let error = client.publish("secret:x", &1).await.unwrap_err();
        assert!(error.is_remote());
        assert_eq!(error.code(), &ErrorCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn dropping_a_subscription_sends_leave() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let sub = client.join("room", JoinOptions::default()).await.unwrap();

    // One subscription per channel and client.
    let error = client
        .join("room", JoinOptions::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::AlreadyJoined);
    assert!(error.is_already_joined());
    assert_eq!(error.code(), &ErrorCode::new("ALREADY_JOINED"));

    drop(sub);
    assert_eq!(client.subscriptions(), 0);
    server
        .frame_where(|f| matches!(f, Frame::Leave { channel, .. } if channel == "room"))
        .await;
    sync(&server, &client, conn).await;
    assert_eq!(server.subscribers("room"), 0);
    // The leave's answer is absorbed; the channel can be joined again.
    let _again = client.join("room", JoinOptions::default()).await.unwrap();
    assert_eq!(server.subscribers("room"), 1);
}

#[tokio::test]
async fn join_refused_keeps_the_server_error() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, options(Codec::Json)).await;
    for _ in 0..2 {
        let error = client
            .join("secret:plans", JoinOptions::default())
            .await
            .unwrap_err();
        assert!(error.is_remote());
        assert_eq!(error.code(), &ErrorCode::FORBIDDEN);
        assert_eq!(client.subscriptions(), 0);
    }
}

/// Presence across two clients: each sees the other arrive and leave (never its own
/// arrival, as PROTOCOL.md says), and `$presence` lists both.
#[tokio::test]
async fn presence_and_member_events() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script::default()).await;
        let (alice, _) = connect_to(&mut server, options(codec)).await;
        let (bob, _) = connect_to(&mut server, options(codec)).await;
        let (alice_id, bob_id) = (alice.conn_id().unwrap(), bob.conn_id().unwrap());
        let mut alice_sub = alice.join("room", JoinOptions::default()).await.unwrap();
        let bob_sub = bob.join("room", JoinOptions::default()).await.unwrap();
        // Alice sees Bob arrive (her own arrival is not sent to her).
        let ChannelEvent::MemberJoined(member) = next_event(&mut alice_sub).await else {
            panic!("expected pjoin");
        };
        assert_eq!(member.conn, bob_id);
        assert_eq!(member.user, None);
        assert_eq!(member.info, None);

        let members = alice.presence("room").await.unwrap();
        let mut conns: Vec<&str> = members.iter().map(|m| m.conn.as_str()).collect();
        conns.sort_unstable();
        let mut expected = vec![alice_id.as_str(), bob_id.as_str()];
        expected.sort_unstable();
        assert_eq!(conns, expected);

        drop(bob_sub);
        let ChannelEvent::MemberLeft(left) = next_event(&mut alice_sub).await else {
            panic!("expected pleave");
        };
        assert_eq!(left.conn, bob_id);
        assert_eq!(alice.presence("room").await.unwrap().len(), 1);

        let error = alice.presence("secret:x").await.unwrap_err();
        assert_eq!(error.code(), &ErrorCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn history_returns_kept_publications() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script::default()).await;
        let (client, _) = connect_to(&mut server, options(codec)).await;
        let mut e1 = String::new();
        for n in 1..=5u64 {
            e1 = server.publish("log", json!({"n": n})).await.epoch;
        }
        let all = client
            .history("log", HistoryOptions::default())
            .await
            .unwrap();
        assert_eq!(all.position, pos(&e1, 5));
        let offsets: Vec<u64> = all.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5]);

        let some = client
            .history("log", HistoryOptions::default().since(pos(&e1, 2)).limit(2))
            .await
            .unwrap();
        let values: Vec<(u64, u64)> = some
            .publications
            .iter()
            .map(|p| {
                let v: serde_json::Value = p.decode().unwrap();
                (p.offset, v["n"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(values, vec![(3, 3), (4, 4)]);
        let (_, frame) = server
            .frame_where(|f| matches!(f, Frame::Req { method, .. } if method == "$history"))
            .await;
        let Frame::Req { data, .. } = frame else {
            unreachable!()
        };
        let params: serde_json::Value = data.decode().unwrap();
        assert_eq!(params, json!({"ch": "log"}));

        let error = client
            .history("secret:x", HistoryOptions::default())
            .await
            .unwrap_err();
        assert_eq!(error.code(), &ErrorCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn join_since_recovers_on_the_first_join() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, options(Codec::Json)).await;
    let mut e1 = String::new();
    for n in 1..=5u64 {
        e1 = server.publish("feed", json!({"n": n})).await.epoch;
    }
    let mut sub = client
        .join("feed", JoinOptions::default().since(pos(&e1, 2)))
        .await
        .unwrap();
    assert!(sub.recovered());
    assert_eq!(sub.position(), &pos(&e1, 5));
    assert_eq!(sub.last_position(), &pos(&e1, 2));
    assert_eq!(
        publications(&mut sub, 3).await,
        vec![(3, 3), (4, 4), (5, 5)]
    );
    assert_eq!(sub.last_position(), &pos(&e1, 5));
    drop(sub);

    // Another epoch: not recovered, the application starts from the current position.
    let mut sub = client
        .join("feed", JoinOptions::default().since(pos("old", 2)))
        .await
        .unwrap();
    assert!(!sub.recovered());
    assert_eq!(sub.last_position(), &pos(&e1, 5));
    server.publish("feed", json!({"n": 6})).await;
    assert_eq!(publications(&mut sub, 1).await, vec![(6, 6)]);
}

/// The server drops the connection, 5 publications are made while the client is away; the
/// client re-joins with `since` and the application sees exactly those 5, then live ones.
/// (A replay of one the client already had is dropped: `client_misbehaving_server.rs`.)
#[tokio::test]
async fn reconnect_recovers_missed_publications_exactly_once() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script::default()).await;
        let (client, conn) = connect_to(&mut server, options(codec)).await;
        let mut sub = client.join("live", JoinOptions::default()).await.unwrap();
        let e1 = sub.position().epoch.clone();
        for n in 1..=3u64 {
            server.publish("live", json!({"n": n})).await;
        }
        assert_eq!(
            publications(&mut sub, 3).await,
            vec![(1, 1), (2, 2), (3, 3)]
        );

        disconnect(&mut server, &client, conn).await;
        for n in 4..=8u64 {
            server.publish("live", json!({"n": n})).await;
        }
        server.set_accepting(true);
        let (conn, since) = join_frame(&mut server, "live").await;
        assert_eq!(since, Some(pos(&e1, 3)));

        match next_non_presence(&mut sub).await {
            ChannelEvent::Resubscribed {
                recovered,
                position,
            } => {
                assert!(recovered);
                assert_eq!(position, pos(&e1, 8));
            }
            other => panic!("expected Resubscribed, got {other:?}"),
        }
        for n in 9..=10u64 {
            server.publish("live", json!({"n": n})).await;
        }
        let seen = publications(&mut sub, 7).await;
        let expected: Vec<(u64, u64)> = (4..=10).map(|n| (n, n)).collect();
        assert_eq!(seen, expected);
        assert_eq!(sub.last_position(), &pos(&e1, 10));

        // Nothing else: no duplicate.
        sync(&server, &client, conn).await;
        server.publish("live", json!({"n": 11})).await;
        assert_eq!(publications(&mut sub, 1).await, vec![(11, 11)]);
    }
}

#[tokio::test]
async fn recovery_past_the_history_window_is_not_recovered() {
    let mut server = TestServer::start(Script {
        history_size: 3,
        ..Script::default()
    })
    .await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client.join("live", JoinOptions::default()).await.unwrap();
    let e1 = sub.position().epoch.clone();
    server.publish("live", json!({"n": 1})).await;
    assert_eq!(publications(&mut sub, 1).await, vec![(1, 1)]);

    disconnect(&mut server, &client, conn).await;
    for n in 2..=6u64 {
        server.publish("live", json!({"n": n})).await;
    }
    server.set_accepting(true);
    let (_, since) = join_frame(&mut server, "live").await;
    assert_eq!(since, Some(pos(&e1, 1)));
    match next_non_presence(&mut sub).await {
        ChannelEvent::Resubscribed {
            recovered,
            position,
        } => {
            assert!(!recovered, "the history no longer holds 2");
            assert_eq!(position, pos(&e1, 6));
        }
        other => panic!("expected Resubscribed, got {other:?}"),
    }
    assert_eq!(sub.last_position(), &pos(&e1, 6));
    server.publish("live", json!({"n": 7})).await;
    assert_eq!(publications(&mut sub, 1).await, vec![(7, 7)]);
}

/// The application does not read; the buffer (4 events) overflows; once it reads, every
/// publication arrives exactly once, in order, through Lagged / Resubscribed cycles.
#[tokio::test]
async fn overflow_is_recovered_without_loss_once_the_application_reads() {
    let mut server = TestServer::start(Script {
        presence_events: false,
        ..Script::default()
    })
    .await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client
        .join("fast", JoinOptions::default().buffer(4))
        .await
        .unwrap();
    let e1 = sub.position().epoch.clone();
    for n in 1..=20u64 {
        server.publish("fast", json!({"n": n})).await;
    }
    // Every publication reached the client while the application was not reading.
    sync(&server, &client, conn).await;

    let mut offsets = Vec::new();
    let mut lagged = Vec::new();
    let mut waiting_resubscribe = false;
    for _ in 0..200 {
        if offsets.len() == 20 {
            break;
        }
        match next_event(&mut sub).await {
            ChannelEvent::Publication(p) => {
                assert!(
                    !waiting_resubscribe,
                    "publication between Lagged and Resubscribed"
                );
                let v: serde_json::Value = p.decode().unwrap();
                assert_eq!(v["n"].as_u64(), Some(p.offset));
                offsets.push(p.offset);
            }
            ChannelEvent::Lagged { position } => {
                assert_eq!(position.offset, *offsets.last().unwrap());
                lagged.push(position);
                waiting_resubscribe = true;
            }
            ChannelEvent::Resubscribed { recovered, .. } => {
                assert!(recovered);
                waiting_resubscribe = false;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
    assert_eq!(lagged.first(), Some(&pos(&e1, 4)));
    // The first re-join: leave, then join from the last buffered publication.
    server
        .frame_where(|f| matches!(f, Frame::Leave { channel, .. } if channel == "fast"))
        .await;
    let (_, since) = join_frame(&mut server, "fast").await;
    assert_eq!(since, Some(pos(&e1, 4)));

    // Live publications flow normally afterwards.
    server.publish("fast", json!({"n": 21})).await;
    for _ in 0..10 {
        match next_event(&mut sub).await {
            ChannelEvent::Publication(p) => {
                assert_eq!(p.offset, 21);
                break;
            }
            ChannelEvent::Resubscribed {
                recovered: true, ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
}

/// An overflow whose missed publications left the history meanwhile ends in
/// `Resubscribed { recovered: false }`.
#[tokio::test]
async fn overflow_past_the_history_window_says_not_recovered() {
    let mut server = TestServer::start(Script {
        presence_events: false,
        history_size: 5,
        ..Script::default()
    })
    .await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client
        .join("fast", JoinOptions::default().buffer(2))
        .await
        .unwrap();
    let e1 = sub.position().epoch.clone();
    for n in 1..=20u64 {
        server.publish("fast", json!({"n": n})).await;
    }
    sync(&server, &client, conn).await;
    assert_eq!(publications(&mut sub, 2).await, vec![(1, 1), (2, 2)]);
    match next_event(&mut sub).await {
        ChannelEvent::Lagged { position } => assert_eq!(position, pos(&e1, 2)),
        other => panic!("{other:?}"),
    }
    match next_event(&mut sub).await {
        ChannelEvent::Resubscribed {
            recovered,
            position,
        } => {
            assert!(!recovered);
            assert_eq!(position, pos(&e1, 20));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.last_position(), &pos(&e1, 20));
    server.publish("fast", json!({"n": 21})).await;
    assert_eq!(publications(&mut sub, 1).await, vec![(21, 21)]);
}

#[tokio::test]
async fn join_while_disconnected_waits_for_the_connection() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    disconnect(&mut server, &client, conn).await;

    // Bounded by its deadline while the server stays away.
    let error = client
        .join(
            "later",
            JoinOptions::default().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(client.subscriptions(), 0);

    let joining = {
        let client = client.clone();
        tokio::spawn(async move { client.join("later", JoinOptions::default()).await })
    };
    for _ in 0..10_000 {
        if client.subscriptions() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(client.subscriptions(), 1);
    server.set_accepting(true);
    let mut sub = timeout(WAIT, joining).await.unwrap().unwrap().unwrap();
    let (_, since) = join_frame(&mut server, "later").await;
    assert_eq!(since, None);
    server.publish("later", json!({"n": 1})).await;
    assert_eq!(publications(&mut sub, 1).await, vec![(1, 1)]);
}

#[tokio::test]
async fn refused_rejoin_closes_the_subscription() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client.join("room", JoinOptions::default()).await.unwrap();
    disconnect(&mut server, &client, conn).await;
    server.forbid("room");
    server.set_accepting(true);
    match next_non_presence(&mut sub).await {
        ChannelEvent::Closed(error) => {
            assert!(error.is_remote());
            assert_eq!(error.code(), &ErrorCode::FORBIDDEN);
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(timeout(WAIT, sub.next()).await.unwrap().is_none());
    assert_eq!(client.subscriptions(), 0);
}

#[tokio::test]
async fn closing_the_client_ends_subscriptions() {
    let mut server = TestServer::start(Script {
        presence_events: false,
        ..Script::default()
    })
    .await;
    let (client, _) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client.join("room", JoinOptions::default()).await.unwrap();
    client.close().await;
    match next_event(&mut sub).await {
        ChannelEvent::Closed(error) => assert_eq!(error.kind(), CallErrorKind::Closed),
        other => panic!("{other:?}"),
    }
    assert!(timeout(WAIT, sub.next()).await.unwrap().is_none());
    let error = client
        .join("other", JoinOptions::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Closed);
    // Leaving a closed subscription succeeds: nothing is joined.
    sub.leave().await.unwrap();
}

/// A lagged subscription is not re-joined after a reconnect until the application drained
/// it; then it recovers everything, including what was published while disconnected.
#[tokio::test]
async fn lagged_subscription_waits_for_the_application_across_a_reconnect() {
    let mut server = TestServer::start(Script {
        presence_events: false,
        ..Script::default()
    })
    .await;
    let (client, conn) = connect_to(&mut server, options(Codec::Json)).await;
    let mut sub = client
        .join("fast", JoinOptions::default().buffer(4))
        .await
        .unwrap();
    let e1 = sub.position().epoch.clone();
    for n in 1..=10u64 {
        server.publish("fast", json!({"n": n})).await;
    }
    sync(&server, &client, conn).await;

    disconnect(&mut server, &client, conn).await;
    for n in 11..=12u64 {
        server.publish("fast", json!({"n": n})).await;
    }
    server.set_accepting(true);
    wait_status(&mut client.status(), Status::Connected).await;
    // The client writes its re-joins first on a new connection: none came before this call.
    let _: u32 = client.request("echo", &1).await.unwrap();
    let (_, first) = server.frame().await;
    assert!(
        matches!(&first, Frame::Req { method, .. } if method == "echo"),
        "the lagged subscription was re-joined before it was drained: {first:?}"
    );

    assert_eq!(
        publications(&mut sub, 4).await,
        vec![(1, 1), (2, 2), (3, 3), (4, 4)]
    );
    assert!(matches!(
        next_event(&mut sub).await,
        ChannelEvent::Lagged { position } if position == pos(&e1, 4)
    ));
    let (_, since) = join_frame(&mut server, "fast").await;
    assert_eq!(since, Some(pos(&e1, 4)));
    let mut offsets = Vec::new();
    for _ in 0..100 {
        if offsets.len() == 8 {
            break;
        }
        match next_event(&mut sub).await {
            ChannelEvent::Publication(p) => offsets.push(p.offset),
            ChannelEvent::Resubscribed { recovered, .. } => assert!(recovered),
            ChannelEvent::Lagged { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(offsets, (5..=12).collect::<Vec<_>>());
}

/// The filter goes with the first join and with every re-join, in the client's codec.
#[tokio::test]
async fn filter_is_sent_again_on_rejoin() {
    async fn joined_filter(server: &mut TestServer, codec: Codec) {
        let (_, frame) = server
            .frame_where(|f| matches!(f, Frame::Join { .. }))
            .await;
        let Frame::Join { filter, .. } = frame else {
            unreachable!()
        };
        let filter = filter.expect("a filter");
        assert_eq!(filter.codec(), codec);
        assert_eq!(
            filter.decode::<serde_json::Value>().unwrap(),
            json!({"kind": "chat"})
        );
    }
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script::default()).await;
        let (client, conn) = connect_to(&mut server, options(codec)).await;
        let _sub = client
            .join(
                "room",
                JoinOptions::default().filter(&json!({"kind": "chat"})),
            )
            .await
            .unwrap();
        joined_filter(&mut server, codec).await;
        disconnect(&mut server, &client, conn).await;
        server.set_accepting(true);
        joined_filter(&mut server, codec).await;
    }
}
