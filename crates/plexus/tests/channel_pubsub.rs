//! Channels over real sockets: join, publish, ordering, recovery after a reconnect, epochs,
//! presence, filters, history, client publish permissions, fan-out and slow consumers.

mod support;

use std::time::Duration;

use plexus_server::{ChannelOptions, Codec, EndpointConfig, Namespaces, Server};
use serde_json::{Value, json};
use support::{RawClient, TestServer, config, start_with, sys};

fn namespaces() -> Namespaces {
    Namespaces::new()
        .namespace(
            "room:*",
            ChannelOptions::default()
                .history_size(100)
                .presence(true)
                .join_leave_events(true)
                .client_publish(true),
        )
        .namespace("feed:*", ChannelOptions::default().history_size(10))
        .namespace("bare:*", ChannelOptions::default())
}

async fn start_channels(config: EndpointConfig) -> TestServer {
    start_with(
        Server::builder()
            .router(sys())
            .config(config)
            .channels(namespaces()),
    )
    .await
}

async fn join(client: &mut RawClient, id: u64, ch: &str, since: Option<Value>) -> Value {
    let mut frame = json!({"t": "join", "id": id, "ch": ch});
    if let Some(since) = since {
        frame["since"] = since;
    }
    client.send_json(frame).await;
    let res = client.recv_json().await;
    assert_eq!(res["t"], "res", "join answered: {res}");
    assert_eq!(res["id"], id);
    res["d"].clone()
}

/// Receives `n` `msg` frames of `ch` and returns their (offset, data).
async fn msgs(client: &mut RawClient, ch: &str, n: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let frame = client.recv_json().await;
        if frame["t"] == "msg" && frame["ch"] == ch {
            got.push((frame["o"].as_u64().unwrap(), frame["d"].clone()));
        }
    }
    got
}

#[tokio::test]
async fn subscribers_of_both_codecs_get_every_publication_in_order() {
    let server = start_channels(config()).await;
    let mut json_sub = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let mut pack_sub = RawClient::connect(server.addr, Some(Codec::MsgPack)).await;
    let joined = join(&mut json_sub, 1, "feed:a", None).await;
    assert_eq!(joined["offset"], 0);
    assert_eq!(joined["recovered"], false);
    join(&mut pack_sub, 1, "feed:a", None).await;
    for n in 0..20 {
        let position = server
            .server
            .hub()
            .publish("feed:a", &json!({"n": n}))
            .await
            .unwrap();
        assert_eq!(position.offset, n + 1);
    }
    for sub in [&mut json_sub, &mut pack_sub] {
        let got = msgs(sub, "feed:a", 20).await;
        let expected: Vec<(u64, Value)> = (0..20).map(|n| (n + 1, json!({"n": n}))).collect();
        assert_eq!(got, expected);
    }
}

#[tokio::test]
async fn concurrent_publishers_still_give_one_gapless_order() {
    let server = start_channels(config()).await;
    let mut sub = RawClient::connect(server.addr, Some(Codec::Json)).await;
    join(&mut sub, 1, "feed:c", None).await;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let hub = server.server.hub().clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    hub.publish("feed:c", &json!({"p": p, "n": n}))
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let got = msgs(&mut sub, "feed:c", 200).await;
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=200).collect::<Vec<_>>());
    // Each publisher's own publications keep their order.
    for p in 0..4 {
        let ns: Vec<u64> = got
            .iter()
            .filter(|(_, d)| d["p"] == p)
            .map(|(_, d)| d["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..50).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_client_cut_off_during_50_publications_recovers_exactly_those() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let server = start_channels(config()).await;
        let hub = server.server.hub().clone();
        // Another subscriber keeps the channel (and its epoch) alive throughout.
        let mut keeper = RawClient::connect(server.addr, Some(Codec::Json)).await;
        join(&mut keeper, 1, "room:r", None).await;
        let mut client = RawClient::connect(server.addr, Some(codec)).await;
        let joined = join(&mut client, 1, "room:r", None).await;
        hub.publish("room:r", &json!({"before": 1})).await.unwrap();
        let seen = msgs(&mut client, "room:r", 1).await;
        let last = seen[0].0;
        client.close().await;

        for n in 0..50 {
            hub.publish("room:r", &json!({"missed": n})).await.unwrap();
        }
        let mut client = RawClient::connect(server.addr, Some(codec)).await;
        let since = json!({"epoch": joined["epoch"], "offset": last});
        let rejoined = join(&mut client, 1, "room:r", Some(since)).await;
        assert_eq!(rejoined["recovered"], true, "{rejoined}");
        assert_eq!(rejoined["epoch"], joined["epoch"]);
        assert_eq!(rejoined["offset"], last + 50);
        hub.publish("room:r", &json!({"live": 1})).await.unwrap();
        let got = msgs(&mut client, "room:r", 51).await;
        let expected: Vec<(u64, Value)> = (0..50)
            .map(|n| (last + 1 + n, json!({"missed": n})))
            .chain([(last + 51, json!({"live": 1}))])
            .collect();
        assert_eq!(
            got, expected,
            "exactly the missed ones, in order, then live"
        );
    }
}

#[tokio::test]
async fn recovery_past_the_history_window_says_so() {
    let server = start_channels(config()).await;
    let hub = server.server.hub().clone();
    let mut keeper = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let joined = join(&mut keeper, 1, "feed:w", None).await;
    // feed:* keeps 10; 15 go by.
    for n in 0..15 {
        hub.publish("feed:w", &n).await.unwrap();
    }
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let since = json!({"epoch": joined["epoch"], "offset": 2});
    let rejoined = join(&mut client, 1, "feed:w", Some(since)).await;
    assert_eq!(rejoined["recovered"], false);
    assert_eq!(rejoined["offset"], 15);
    // Nothing missed is replayed; live publications follow.
    hub.publish("feed:w", &"live").await.unwrap();
    assert_eq!(
        msgs(&mut client, "feed:w", 1).await,
        vec![(16, json!("live"))]
    );

    // Within the window, recovery works.
    let since = json!({"epoch": joined["epoch"], "offset": 10});
    let mut late = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let rejoined = join(&mut late, 1, "feed:w", Some(since)).await;
    assert_eq!(rejoined["recovered"], true);
    let got = msgs(&mut late, "feed:w", 6).await;
    assert_eq!(
        got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15, 16]
    );
}

#[tokio::test]
async fn a_new_epoch_after_the_history_is_lost() {
    let server = start_channels(config()).await;
    let hub = server.server.hub().clone();
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    // bare:* keeps no history: once nobody is subscribed the channel is forgotten.
    let first = join(&mut client, 1, "bare:e", None).await;
    hub.publish("bare:e", &1).await.unwrap();
    msgs(&mut client, "bare:e", 1).await;
    client
        .send_json(json!({"t": "leave", "id": 2, "ch": "bare:e"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 2, "d": null})
    );
    let since = json!({"epoch": first["epoch"], "offset": 1});
    let second = join(&mut client, 3, "bare:e", Some(since)).await;
    assert_ne!(second["epoch"], first["epoch"]);
    assert_eq!(second["recovered"], false);
    assert_eq!(second["offset"], 0);
}

#[tokio::test]
async fn leave_stops_delivery() {
    let server = start_channels(config()).await;
    let hub = server.server.hub().clone();
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    join(&mut client, 1, "feed:l", None).await;
    client
        .send_json(json!({"t": "leave", "id": 2, "ch": "feed:l"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 2, "d": null})
    );
    hub.publish("feed:l", &1).await.unwrap();
    client.assert_echo(3).await;
}

#[tokio::test]
async fn client_publish_only_where_the_namespace_allows_it() {
    let server = start_channels(config()).await;
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    // Publishing without having joined is allowed where client publish is.
    client
        .send_json(json!({"t": "pub", "id": 1, "ch": "room:p", "d": {"text": "hi"}}))
        .await;
    let res = client.recv_json().await;
    assert_eq!(res["t"], "res", "{res}");
    assert_eq!(res["d"]["offset"], 1);
    client
        .send_json(json!({"t": "pub", "id": 2, "ch": "feed:p", "d": 1}))
        .await;
    let err = client.recv_json().await;
    assert_eq!(err["t"], "err");
    assert_eq!(err["id"], 2);
    assert_eq!(err["e"]["code"], "FORBIDDEN");
    client
        .send_json(json!({"t": "join", "id": 3, "ch": "nowhere"}))
        .await;
    let err = client.recv_json().await;
    assert_eq!(err["e"]["code"], "NOT_FOUND", "{err}");
}

#[tokio::test]
async fn presence_lists_members_and_announces_joins_and_leaves() {
    let server = start_channels(config()).await;
    let mut alice = RawClient::connect(server.addr, Some(Codec::Json)).await;
    join(&mut alice, 1, "room:x", None).await;
    let mut bob = RawClient::connect(server.addr, Some(Codec::MsgPack)).await;
    join(&mut bob, 1, "room:x", None).await;
    let bob_conn = bob.welcome["conn"].clone();
    let event = alice.recv_json().await;
    assert_eq!(event["t"], "pjoin");
    assert_eq!(event["ch"], "room:x");
    assert_eq!(event["d"]["conn"], bob_conn);

    let res = alice.call(2, "$presence", json!({"ch": "room:x"})).await;
    let mut conns: Vec<String> = res["d"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["conn"].as_str().unwrap().to_owned())
        .collect();
    conns.sort();
    let mut expected = vec![
        alice.welcome["conn"].as_str().unwrap().to_owned(),
        bob_conn.as_str().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(conns, expected);

    bob.close().await;
    let event = alice.recv_json().await;
    assert_eq!(event["t"], "pleave");
    assert_eq!(event["d"]["conn"], bob_conn);
}

#[tokio::test]
async fn filters_deliver_only_matching_publications() {
    let server = start_channels(config()).await;
    let hub = server.server.hub().clone();
    let mut a1 = RawClient::connect(server.addr, Some(Codec::Json)).await;
    a1.send_json(json!({"t": "join", "id": 1, "ch": "feed:f", "filter": {"agent_id": "a1"}}))
        .await;
    assert_eq!(a1.recv_json().await["t"], "res");
    let mut everyone = RawClient::connect(server.addr, Some(Codec::MsgPack)).await;
    join(&mut everyone, 1, "feed:f", None).await;
    for (n, agent) in ["a1", "a2", "a1", "a3"].iter().enumerate() {
        hub.publish("feed:f", &json!({"agent_id": agent, "n": n}))
            .await
            .unwrap();
    }
    let got = msgs(&mut a1, "feed:f", 2).await;
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(msgs(&mut everyone, "feed:f", 4).await.len(), 4);
    a1.assert_echo(9).await;

    a1.send_json(json!({"t": "join", "id": 2, "ch": "feed:g", "filter": [1]}))
        .await;
    let err = a1.recv_json().await;
    assert_eq!(err["e"]["code"], "VALIDATION_ERROR", "{err}");
}

#[tokio::test]
async fn history_returns_what_the_channel_keeps() {
    let server = start_channels(config()).await;
    let hub = server.server.hub().clone();
    for n in 0..5 {
        hub.publish("room:h", &json!({"n": n})).await.unwrap();
    }
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let res = client.call(1, "$history", json!({"ch": "room:h"})).await;
    assert_eq!(res["d"]["offset"], 5);
    assert_eq!(res["d"]["pubs"].as_array().unwrap().len(), 5);
    let epoch = res["d"]["epoch"].clone();
    let res = client
        .call(
            2,
            "$history",
            json!({"ch": "room:h", "since": {"epoch": epoch, "offset": 3}, "limit": 1}),
        )
        .await;
    assert_eq!(res["d"]["pubs"], json!([{"o": 4, "d": {"n": 3}}]));
}

/// On one worker, an idle subscriber's publications are written straight to its socket.
#[tokio::test]
async fn one_publisher_to_2000_subscribers_loses_nothing() {
    one_publisher_to_2000_subscribers().await;
}

/// On several workers, a fan-out this large goes through each subscriber's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_to_2000_subscribers_on_two_workers_loses_nothing() {
    one_publisher_to_2000_subscribers().await;
}

async fn one_publisher_to_2000_subscribers() {
    const SUBSCRIBERS: usize = 2000;
    const PUBLICATIONS: u64 = 20;
    let server = start_channels(config()).await;
    let hub = server.server.hub().clone();
    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let codec = if i % 2 == 0 {
            Codec::Json
        } else {
            Codec::MsgPack
        };
        let mut client = RawClient::connect(server.addr, Some(codec)).await;
        join(&mut client, 1, "feed:big", None).await;
        clients.push(client);
    }
    for n in 0..PUBLICATIONS {
        hub.publish("feed:big", &json!({"n": n})).await.unwrap();
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let got = msgs(&mut client, "feed:big", PUBLICATIONS as usize).await;
                got.iter().map(|(o, _)| *o).collect::<Vec<_>>()
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            (1..=PUBLICATIONS).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn large_publications_to_a_client_that_reads_late_arrive_whole_and_in_order() {
    // 12 MiB: more than the sockets hold, so some writes are cut short and finished later,
    // and later publications wait in the queue behind them. The pause between publications
    // is what lets them be written directly (a channel quiet for 50 ms).
    const PUBLICATIONS: u64 = 24;
    let server = start_channels(config()).await;
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    join(&mut client, 1, "feed:large", None).await;
    let pad = "x".repeat(512 * 1024);
    for n in 1..=PUBLICATIONS {
        server
            .server
            .hub()
            .publish("feed:large", &json!({"n": n, "pad": pad}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for (n, (offset, data)) in
        (1..).zip(msgs(&mut client, "feed:large", PUBLICATIONS as usize).await)
    {
        assert_eq!((offset, data["n"].as_u64()), (n, Some(n)));
        assert_eq!(data["pad"].as_str().map(str::len), Some(pad.len()));
    }
    client.assert_echo(9).await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_with_4008_and_the_others_are_not() {
    let mut config = config();
    config.limits.outbound_queue = 16;
    let server = start_channels(config).await;
    let hub = server.server.hub().clone();
    let mut slow = RawClient::connect(server.addr, Some(Codec::Json)).await;
    join(&mut slow, 1, "feed:s", None).await;
    let mut fast = RawClient::connect(server.addr, Some(Codec::Json)).await;
    join(&mut fast, 1, "feed:s", None).await;
    // Large publications fill the slow one's socket buffers and then its queue; the fast
    // one reads as they come.
    let big = "x".repeat(64 * 1024);
    let reader = tokio::spawn(async move {
        let got = msgs(&mut fast, "feed:s", 200).await;
        (got.len(), fast)
    });
    for n in 0..200 {
        hub.publish("feed:s", &json!({"n": n, "pad": big}))
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    let (received, mut fast) = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, 200);
    // The slow one: whatever it got before, then the 4008 close (or the socket ended).
    let mut closed = None;
    for _ in 0..400 {
        match slow.next_event(Duration::from_secs(5)).await {
            Some(support::Event::Frame(_)) => continue,
            Some(support::Event::Close(code)) => {
                closed = Some(code);
                break;
            }
            other => {
                closed = Some(None);
                let _ = other;
                break;
            }
        }
    }
    assert!(
        matches!(closed, Some(Some(4008)) | Some(None)),
        "{closed:?}"
    );
    // Once its connection is gone, the slow one has left the channel; the fast one stays.
    fast.assert_echo(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !hub
        .channels()
        .iter()
        .any(|(ch, subs)| ch == "feed:s" && *subs == 1)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            hub.channels()
        );
        tokio::task::yield_now().await;
    }
}
