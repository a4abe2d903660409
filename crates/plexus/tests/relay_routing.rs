//! The relay over real sockets, with raw clients speaking only the wire: `$provide`,
//! routing by service (round-robin) and by node, answers, errors, streams with credit,
//! cancels, `$services`, `$watch`, and what happens when a provider goes away. Each test
//! runs in both codecs, and with a JSON caller and a MessagePack provider.

#[macro_use]
mod support;

use plexus_server::{Codec, EndpointConfig, RelayConfig, Server};
use serde_json::{Value, json};
use support::{CredentialAt, RawClient, TestServer, jwt_authenticator, start_with, sys, token};

async fn relay() -> TestServer {
    start_with(
        Server::builder()
            .router(sys())
            .relay(RelayConfig::default()),
    )
    .await
}

/// A provider connection: `$provide`s `node` with `services`.
async fn provider(server: &TestServer, codec: Codec, node: &str, services: &[&str]) -> RawClient {
    let mut client = RawClient::connect(server.addr, Some(codec)).await;
    let res = client
        .call(1, "$provide", json!({"node": node, "services": services}))
        .await;
    assert_eq!(res, json!({"t": "res", "id": 1, "d": {"node": node}}));
    client
}

/// Reads the next relayed call on a provider: its id, method and params.
async fn relayed(provider: &mut RawClient, kind: &str) -> (u64, String, Value) {
    let frame = provider.recv_json().await;
    assert_eq!(frame["t"], kind, "expected a relayed `{kind}`: {frame}");
    (
        frame["id"].as_u64().unwrap_or(0),
        frame["m"].as_str().unwrap().to_owned(),
        frame["d"].clone(),
    )
}

/// Answers relayed requests on `provider` with `{"node": node, "params": ...}` until
/// `count` were answered.
async fn answer(provider: &mut RawClient, node: &str, count: usize) {
    for _ in 0..count {
        let (id, _, params) = relayed(provider, "req").await;
        provider
            .send_json(json!({"t": "res", "id": id, "d": {"node": node, "params": params}}))
            .await;
    }
}

async fn requests_alternate_between_providers(codec: Codec) {
    let server = relay().await;
    let mut a = provider(&server, codec, "a", &["Greeting"]).await;
    let mut b = provider(&server, Codec::MsgPack, "b", &["Greeting"]).await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    let mut nodes = Vec::new();
    for id in 1..=4u64 {
        caller
            .send_json(json!({"t": "req", "id": id, "m": "Greeting.hello", "d": {"n": id}}))
            .await;
        // Whoever got it answers.
        let (node, (pid, method, params)) = tokio::select! {
            call = relayed(&mut a, "req") => ("a", call),
            call = relayed(&mut b, "req") => ("b", call),
        };
        let answering = if node == "a" { &mut a } else { &mut b };
        answering
            .send_json(json!({"t": "res", "id": pid, "d": {"node": node, "params": params}}))
            .await;
        assert_eq!(method, "Greeting.hello");
        assert_eq!(params, json!({"n": id}));
        let res = caller.recv_json().await;
        assert_eq!(
            (res["t"].clone(), res["id"].clone()),
            (json!("res"), json!(id)),
            "{res}"
        );
        assert_eq!(res["d"]["params"], json!({"n": id}));
        nodes.push(res["d"]["node"].as_str().unwrap().to_owned());
    }
    // Strictly alternating, whichever started.
    assert_ne!(nodes[0], nodes[1]);
    assert_eq!(nodes[0], nodes[2]);
    assert_eq!(nodes[1], nodes[3]);
}

async fn a_pinned_call_goes_to_its_node(codec: Codec) {
    let server = relay().await;
    let mut a = provider(&server, codec, "a", &["Greeting"]).await;
    let _b = provider(&server, codec, "b", &["Greeting"]).await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    for id in 1..=3u64 {
        caller
            .send_json(json!({"t": "req", "id": id, "m": "Greeting.hello", "d": id, "node": "a"}))
            .await;
        answer(&mut a, "a", 1).await;
        let res = caller.recv_json().await;
        assert_eq!(res["d"]["node"], "a", "{res}");
    }
    // A node that does not provide the service, or no node at all: SERVICE_OFFLINE at once.
    for node in ["nobody", "b2"] {
        caller
            .send_json(json!({"t": "req", "id": 9, "m": "Greeting.hello", "d": 1, "node": node}))
            .await;
        let err = caller.recv_json().await;
        assert_eq!(err["e"]["code"], "SERVICE_OFFLINE", "{err}");
        assert_eq!(err["e"]["data"]["started"], false);
    }
}

async fn errors_and_values_keep_their_shape_end_to_end(codec: Codec) {
    let server = relay().await;
    let mut p = provider(&server, Codec::MsgPack, "p", &["Store"]).await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    caller
        .send_json(json!({"t": "req", "id": 1, "m": "Store.get", "d": {"key": "x"}}))
        .await;
    let (id, _, _) = relayed(&mut p, "req").await;
    p.send_json(json!({"t": "err", "id": id, "e": {"code": "NOT_FOUND", "message": "no x", "data": {"key": "x"}}}))
        .await;
    let err = caller.recv_json().await;
    assert_eq!(
        err,
        json!({"t": "err", "id": 1, "e": {"code": "NOT_FOUND", "message": "no x", "data": {"key": "x"}}})
    );
    // A value of 1 MB comes back whole (frames stay under the 1 MiB message limit).
    let big = "x".repeat(1_000_000);
    caller
        .send_json(json!({"t": "req", "id": 2, "m": "Store.put", "d": big}))
        .await;
    let (id, _, params) = relayed(&mut p, "req").await;
    assert_eq!(params.as_str().map(str::len), Some(1_000_000));
    p.send_json(json!({"t": "res", "id": id, "d": params}))
        .await;
    let res = caller.recv_json().await;
    assert_eq!(res["d"].as_str().map(str::len), Some(1_000_000));
}

async fn no_provider_is_service_offline(codec: Codec) {
    let server = relay().await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    let err = caller.call(1, "Nobody.here", json!({})).await;
    assert_eq!(err["e"]["code"], "SERVICE_OFFLINE", "{err}");
    assert_eq!(err["e"]["data"], json!({"started": false}));
    // The relay's own methods are still served.
    caller.assert_echo(2).await;
}

async fn a_stream_flows_with_credit_and_in_order(codec: Codec) {
    const ITEMS: u64 = 500;
    let server = relay().await;
    let mut p = provider(&server, codec, "p", &["Ticks"]).await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    caller
        .send_json(json!({"t": "sub", "id": 7, "m": "Ticks.count", "d": ITEMS, "credit": 10}))
        .await;
    let sub = p.recv_json().await;
    assert_eq!(
        (sub["t"].clone(), sub["m"].clone()),
        (json!("sub"), json!("Ticks.count"))
    );
    let sid = sub["id"].as_u64().unwrap();
    // The provider honours the credit the relay grants; it never sends beyond it.
    let providing = tokio::spawn(async move {
        let mut credit = sub["credit"]
            .as_u64()
            .expect("the relay asks for flow control");
        for n in 0..ITEMS {
            while credit == 0 {
                let grant = p.recv_json().await;
                assert_eq!(grant["t"], "credit", "{grant}");
                credit += grant["n"].as_u64().unwrap();
            }
            p.send_json(json!({"t": "item", "id": sid, "d": n})).await;
            credit -= 1;
        }
        p.send_json(json!({"t": "end", "id": sid})).await;
        p
    });
    // The caller reads slowly, granting 10 more each 10 items.
    for n in 0..ITEMS {
        let frame = caller.recv_json().await;
        assert_eq!(frame, json!({"t": "item", "id": 7, "d": n}), "in order");
        if (n + 1) % 10 == 0 {
            caller
                .send_json(json!({"t": "credit", "id": 7, "n": 10}))
                .await;
        }
    }
    assert_eq!(caller.recv_json().await, json!({"t": "end", "id": 7}));
    support::within("the provider", providing).await.unwrap();
}

async fn a_cancel_reaches_the_provider(codec: Codec) {
    let server = relay().await;
    let mut p = provider(&server, codec, "p", &["Slow"]).await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    caller
        .send_json(json!({"t": "req", "id": 3, "m": "Slow.wait", "d": null}))
        .await;
    let (id, _, _) = relayed(&mut p, "req").await;
    caller.send_json(json!({"t": "cancel", "id": 3})).await;
    assert_eq!(p.recv_json().await, json!({"t": "cancel", "id": id}));
    // A stream's cancel, too, and a caller that disconnects cancels what it had.
    caller
        .send_json(json!({"t": "sub", "id": 4, "m": "Slow.feed", "d": null}))
        .await;
    let (sid, _, _) = relayed(&mut p, "sub").await;
    drop(caller);
    assert_eq!(p.recv_json().await, json!({"t": "cancel", "id": sid}));
}

async fn a_provider_that_leaves_fails_its_calls_and_goes_offline(codec: Codec) {
    let server = relay().await;
    let mut watcher = RawClient::connect(server.addr, Some(codec)).await;
    watcher
        .send_json(json!({"t": "sub", "id": 1, "m": "$watch", "d": null}))
        .await;
    assert_eq!(
        watcher.recv_json().await,
        json!({"t": "item", "id": 1, "d": []})
    );
    let mut p = provider(&server, codec, "p", &["Job"]).await;
    let mut q = provider(&server, codec, "q", &["Job"]).await;
    for node in ["p", "q"] {
        assert_eq!(
            watcher.recv_json().await,
            json!({"t": "item", "id": 1, "d": {"online": {"node": node, "services": ["Job"]}}})
        );
    }
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    caller
        .send_json(json!({"t": "req", "id": 1, "m": "Job.run", "d": null, "node": "p"}))
        .await;
    caller
        .send_json(json!({"t": "sub", "id": 2, "m": "Job.feed", "d": null, "node": "p"}))
        .await;
    relayed(&mut p, "req").await;
    let (sid, _, _) = relayed(&mut p, "sub").await;
    p.send_json(json!({"t": "item", "id": sid, "d": "first"}))
        .await;
    assert_eq!(
        caller.recv_json().await,
        json!({"t": "item", "id": 2, "d": "first"})
    );
    drop(p);
    let mut failed = Vec::new();
    for _ in 0..2 {
        let err = caller.recv_json().await;
        assert_eq!(err["e"]["code"], "SERVICE_OFFLINE", "{err}");
        assert_eq!(err["e"]["data"], json!({"node": "p", "started": true}));
        failed.push(err["id"].as_u64().unwrap());
    }
    failed.sort_unstable();
    assert_eq!(failed, [1, 2]);
    assert_eq!(
        watcher.recv_json().await,
        json!({"t": "item", "id": 1, "d": {"offline": {"node": "p"}}})
    );
    // The other provider takes every call now.
    for id in 3..=4u64 {
        caller
            .send_json(json!({"t": "req", "id": id, "m": "Job.run", "d": id}))
            .await;
        answer(&mut q, "q", 1).await;
        let res = caller.recv_json().await;
        assert_eq!(
            (res["id"].clone(), res["d"]["node"].clone()),
            (json!(id), json!("q"))
        );
    }
}

async fn services_list_the_live_providers(codec: Codec) {
    let server = relay().await;
    let mut a = provider(&server, codec, "a", &["Math", "Greeting"]).await;
    let _b = provider(&server, codec, "b", &["Greeting"]).await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    let res = caller.call(1, "$services", Value::Null).await;
    assert_eq!(
        res["d"],
        json!([
            {"node": "a", "services": ["Greeting", "Math"]},
            {"node": "b", "services": ["Greeting"]},
        ])
    );
    // A second `$provide` replaces the first; a new node id takes the old one offline.
    let res = a
        .call(2, "$provide", json!({"node": "a2", "services": ["Math"]}))
        .await;
    assert_eq!(res["d"], json!({"node": "a2"}));
    let res = caller.call(2, "$services", Value::Null).await;
    assert_eq!(
        res["d"],
        json!([
            {"node": "a2", "services": ["Math"]},
            {"node": "b", "services": ["Greeting"]},
        ])
    );
    // The old node id is no longer routable: a call pinned to it is SERVICE_OFFLINE, and
    // nothing reaches the connection that held it.
    caller
        .send_json(json!({"t": "req", "id": 3, "m": "Math.add", "d": [1, 2], "node": "a"}))
        .await;
    let err = caller.recv_json().await;
    assert_eq!(err["e"]["code"], "SERVICE_OFFLINE", "{err}");
    assert_eq!(err["e"]["data"], json!({"started": false}), "{err}");
    a.expect_silence(std::time::Duration::from_millis(50)).await;
    // A node id held by another live connection is refused, never stolen.
    let mut thief = RawClient::connect(server.addr, Some(codec)).await;
    let err = thief
        .call(
            1,
            "$provide",
            json!({"node": "b", "services": ["Greeting"]}),
        )
        .await;
    assert_eq!(err["e"]["code"], "CONFLICT", "{err}");
}

async fn providing_needs_the_permission_when_auth_is_on(codec: Codec) {
    let server = start_with(
        Server::builder()
            .router(sys())
            .authenticator(jwt_authenticator())
            .relay(RelayConfig::default()),
    )
    .await;
    let connect = |scope: &'static str| {
        let token = token("svc", scope, 3600);
        async move {
            RawClient::connect_with(server.addr, codec, Some((CredentialAt::Header, &token))).await
        }
    };
    let provide = json!({"node": "a", "services": ["Greeting"]});
    let both = json!({"node": "a", "services": ["Greeting", "Billing"]});

    let mut anyone = connect("").await;
    let err = anyone.call(1, "$provide", provide.clone()).await;
    assert_eq!(err["e"]["code"], "FORBIDDEN", "{err}");

    // A permission per service allows that service only.
    let mut scoped = connect("relay:provide:Greeting").await;
    let err = scoped.call(1, "$provide", both.clone()).await;
    assert_eq!(err["e"]["code"], "FORBIDDEN", "{err}");
    let res = scoped.call(2, "$provide", provide).await;
    assert_eq!(res["d"], json!({"node": "a"}), "{res}");

    // `relay:provide` allows any service.
    let mut any = connect("relay:provide").await;
    let res = any
        .call(
            1,
            "$provide",
            json!({"node": "b", "services": ["Greeting", "Billing"]}),
        )
        .await;
    assert_eq!(res["d"], json!({"node": "b"}), "{res}");

    // Callers need no provider permission.
    anyone
        .send_json(json!({"t": "req", "id": 7, "m": "Greeting.hello", "d": 1, "node": "a"}))
        .await;
    let (id, method, _) = relayed(&mut scoped, "req").await;
    assert_eq!(method, "Greeting.hello");
    scoped
        .send_json(json!({"t": "res", "id": id, "d": "hi"}))
        .await;
    assert_eq!(
        anyone.recv_json().await,
        json!({"t": "res", "id": 7, "d": "hi"})
    );
}

async fn calls_past_a_providers_limit_are_rate_limited(codec: Codec) {
    // Each connection may have 2 calls in flight: callers and providers alike.
    let server = start_with(
        Server::builder()
            .router(sys())
            .config(
                EndpointConfig::default().limits(plexus_server::Limits::default().max_in_flight(2)),
            )
            .relay(RelayConfig::default()),
    )
    .await;
    let mut a = provider(&server, codec, "a", &["Greeting"]).await;
    let mut first = RawClient::connect(server.addr, Some(codec)).await;
    let mut second = RawClient::connect(server.addr, Some(codec)).await;
    for id in 1..=2u64 {
        first
            .send_json(json!({"t": "req", "id": id, "m": "Greeting.wait", "d": id}))
            .await;
        relayed(&mut a, "req").await;
    }
    // The provider has 2 calls in flight: a third, from a caller within its own limit, is
    // refused at once, and the provider never sees it.
    let err = second.call(9, "Greeting.wait", json!(3)).await;
    assert_eq!(err["e"]["code"], "RATE_LIMITED", "{err}");
    a.expect_silence(std::time::Duration::from_millis(100))
        .await;
    // A caller past its own limit is refused too, before any routing: `first` has 2 in
    // flight, and a second provider with room would otherwise take the call.
    let mut b = provider(&server, codec, "b", &["Greeting"]).await;
    let err = first.call(3, "Greeting.wait", json!(3)).await;
    assert_eq!(err["e"]["code"], "RATE_LIMITED", "{err}");
    b.expect_silence(std::time::Duration::from_millis(100))
        .await;
}

async fn a_server_that_does_not_relay_answers_not_found(codec: Codec) {
    let server = start_with(Server::builder().router(sys())).await;
    let mut client = RawClient::connect(server.addr, Some(codec)).await;
    let provide = json!({"node": "a", "services": ["Greeting"]});
    for (id, method, params) in [
        (1, "$provide", provide),
        (2, "$services", Value::Null),
        (3, "$nope", json!({"ch": "x"})),
    ] {
        let err = client.call(id, method, params).await;
        assert_eq!(err["e"]["code"], "NOT_FOUND", "{method}: {err}");
    }
    client
        .send_json(json!({"t": "sub", "id": 4, "m": "$watch"}))
        .await;
    let err = client.recv_json().await;
    assert_eq!(err["e"]["code"], "NOT_FOUND", "{err}");
    // `node` means nothing to a server that does not relay: the call is served.
    client
        .send_json(json!({"t": "req", "id": 5, "m": "sys.echo", "d": 5, "node": "x"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 5, "d": 5})
    );
}

async fn a_cancel_racing_the_start_still_reaches_the_provider(codec: Codec) {
    let server = relay().await;
    let mut p = provider(&server, codec, "p", &["Slow"]).await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    // Each `req` and its `cancel` leave in one write: the cancel may reach the relay before
    // the call reached the provider. Whatever the provider was sent, it is then cancelled.
    for id in 1..=20u64 {
        caller
            .feed_json(json!({"t": "req", "id": id, "m": "Slow.wait", "d": id}))
            .await;
        caller.feed_json(json!({"t": "cancel", "id": id})).await;
    }
    caller.flush().await;
    let mut started = std::collections::BTreeSet::new();
    let mut cancelled = std::collections::BTreeSet::new();
    while let Some(support::Event::Frame(frame)) =
        p.next_event(std::time::Duration::from_millis(300)).await
    {
        let id = frame["id"].as_u64().unwrap();
        match frame["t"].as_str() {
            Some("req") => assert!(started.insert(id), "{frame}"),
            Some("cancel") => {
                assert!(started.contains(&id), "a cancel before its call: {frame}");
                assert!(cancelled.insert(id), "{frame}");
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(
        started, cancelled,
        "every call the provider got was cancelled"
    );
    // And the caller heard nothing for the calls it cancelled.
    caller
        .expect_silence(std::time::Duration::from_millis(50))
        .await;
}

async fn a_provider_that_does_not_answer_in_time_is_cancelled(codec: Codec) {
    let server = start_with(
        Server::builder()
            .router(sys())
            .relay(RelayConfig::default().call_timeout(std::time::Duration::from_millis(300))),
    )
    .await;
    let mut p = provider(&server, codec, "p", &["Slow"]).await;
    let mut caller = RawClient::connect(server.addr, Some(codec)).await;
    caller
        .send_json(json!({"t": "req", "id": 5, "m": "Slow.wait", "d": null}))
        .await;
    let (id, _, _) = relayed(&mut p, "req").await;
    let err = caller.recv_json().await;
    assert_eq!(
        (err["id"].clone(), err["e"]["code"].clone()),
        (json!(5), json!("TIMEOUT")),
        "{err}"
    );
    assert_eq!(p.recv_json().await, json!({"t": "cancel", "id": id}));
    // An answer after the timeout reaches nobody.
    p.send_json(json!({"t": "res", "id": id, "d": "late"}))
        .await;
    caller
        .expect_silence(std::time::Duration::from_millis(100))
        .await;
    // Nor does the timeout hurry anyone else: a call answered in time is answered.
    caller
        .send_json(json!({"t": "req", "id": 6, "m": "Slow.wait", "d": null}))
        .await;
    answer(&mut p, "p", 1).await;
    assert_eq!(caller.recv_json().await["t"], "res");
    // A caller that disconnects with a request waiting cancels it.
    caller
        .send_json(json!({"t": "req", "id": 7, "m": "Slow.wait", "d": null}))
        .await;
    let (id, _, _) = relayed(&mut p, "req").await;
    drop(caller);
    assert_eq!(p.recv_json().await, json!({"t": "cancel", "id": id}));
}

codec_tests!(
    a_provider_that_does_not_answer_in_time_is_cancelled,
    a_cancel_racing_the_start_still_reaches_the_provider,
    a_server_that_does_not_relay_answers_not_found,
    providing_needs_the_permission_when_auth_is_on,
    calls_past_a_providers_limit_are_rate_limited,
    requests_alternate_between_providers,
    a_pinned_call_goes_to_its_node,
    errors_and_values_keep_their_shape_end_to_end,
    no_provider_is_service_offline,
    a_stream_flows_with_credit_and_in_order,
    a_cancel_reaches_the_provider,
    a_provider_that_leaves_fails_its_calls_and_goes_offline,
    services_list_the_live_providers,
);
