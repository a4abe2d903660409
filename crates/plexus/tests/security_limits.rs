//! Security over real sockets: the server's doors. The `Origin` check (403), connection
//! limits per address (429) and in total (503), and per-connection rate limits on calls and
//! publications (`RATE_LIMITED`, the connection stays usable); each time, connections that
//! did nothing wrong are unaffected.

mod support;

use std::time::Duration;

use plexus_server::{
    ChannelOptions, Codec, EndpointConfig, Namespaces, OriginPolicy, RateLimit, Server,
};
use serde_json::{Value, json};
use support::{
    CredentialAt, RawClient, TestServer, assert_err, config, jwt_authenticator, refused_upgrade,
    start_with, sys, token, try_upgrade, wait_until,
};

// ---- origin ------------------------------------------------------------------------------

async fn start_origins(origins: OriginPolicy) -> TestServer {
    let mut config = config();
    config.origins = origins;
    start_with(Server::builder().router(sys()).config(config)).await
}

/// Whether an upgrade with these `Origin` headers is accepted (`welcome`) or refused with
/// exactly 403.
async fn origin_allowed(server: &TestServer, origins: &[&str]) -> bool {
    let headers: Vec<(&str, &str)> = origins.iter().map(|o| ("Origin", *o)).collect();
    match try_upgrade(server.addr, Codec::Json, None, &headers).await {
        Ok(ws) => {
            let mut client = RawClient::unwelcomed(ws, Codec::Json);
            client.expect_welcome().await;
            client.close().await;
            true
        }
        Err((status, body)) => {
            assert_eq!(
                (status, body.as_str()),
                (403, "origin not allowed"),
                "{origins:?}"
            );
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_origin_policy_allows_same_origin_and_localhost_only() {
    let server = start_origins(OriginPolicy::default()).await;
    let mut witness = server.client(Codec::Json).await;
    let port = server.addr.port();
    let same = format!("http://127.0.0.1:{port}");
    let same_tls = format!("https://127.0.0.1:{port}");
    let allowed = [
        vec![],
        vec![same.as_str()],
        vec![same_tls.as_str()],
        vec!["http://localhost:5173"],
        vec!["http://127.0.0.1:8080"],
        vec!["http://[::1]:3000"],
    ];
    for origins in allowed {
        assert!(origin_allowed(&server, &origins).await, "{origins:?}");
    }
    let refused = [
        vec!["https://evil.example"],
        vec!["null"],
        vec!["http://127.0.0.1.evil.example"],
        vec!["http://localhost.evil.example:5173"],
        vec!["not an origin"],
        vec!["https://evil.example", same.as_str()],
        vec![same.as_str(), "http://localhost:5173"],
    ];
    for (id, origins) in refused.into_iter().enumerate() {
        assert!(!origin_allowed(&server, &origins).await, "{origins:?}");
        witness.assert_echo(id as u64 + 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_origin_list_allows_exactly_its_entries() {
    let policy = OriginPolicy::list(["https://app.example.com", "https://*.example.org"]).unwrap();
    let server = start_origins(policy).await;
    let mut witness = server.client(Codec::Json).await;
    for origins in [
        vec![],
        vec!["https://app.example.com"],
        vec!["https://APP.example.com:443"],
        vec!["https://eu.example.org"],
        vec!["https://a.b.example.org"],
    ] {
        assert!(origin_allowed(&server, &origins).await, "{origins:?}");
    }
    let same = format!("http://127.0.0.1:{}", server.addr.port());
    for (id, origins) in [
        vec!["http://app.example.com"],
        vec!["https://app.example.com:8443"],
        vec!["https://example.org"],
        vec!["https://evil-example.org"],
        vec!["https://app.example.com.evil.net"],
        // The list replaces the default: neither localhost nor the same origin.
        vec!["http://localhost:5173"],
        vec![same.as_str()],
        vec!["null"],
    ]
    .into_iter()
    .enumerate()
    {
        assert!(!origin_allowed(&server, &origins).await, "{origins:?}");
        witness.assert_echo(id as u64 + 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_cookie_from_a_foreign_page_is_refused() {
    // Cross-site WebSocket hijacking: the browser sends the user's cookie along with
    // another site's upgrade. The origin check comes first: 403, not a session.
    let server = start_with(
        Server::builder()
            .router(sys())
            .config(config())
            .authenticator(jwt_authenticator()),
    )
    .await;
    let token = token("alice", "admin", 3600);
    let cookie = Some((CredentialAt::Cookie, token.as_str()));
    let (status, body) =
        refused_upgrade(server.addr, cookie, &[("Origin", "https://evil.example")]).await;
    assert_eq!((status, body.as_str()), (403, "origin not allowed"));
    // The same cookie from an allowed page opens the session.
    let same = format!("http://127.0.0.1:{}", server.addr.port());
    let ws = try_upgrade(
        server.addr,
        Codec::Json,
        cookie,
        &[("Origin", same.as_str())],
    )
    .await
    .expect("same-origin upgrade");
    let mut client = RawClient::unwelcomed(ws, Codec::Json);
    assert_eq!(client.expect_welcome().await["user"], "alice");
    client.assert_echo(1).await;
}

// ---- connection limits -------------------------------------------------------------------

fn limits(total: usize, per_ip: usize) -> EndpointConfig {
    let mut config = config();
    config.limits.max_connections = total;
    config.limits.max_connections_per_ip = per_ip;
    config
}

/// Closes `client` and waits until the server counts `left` connections.
async fn close_and_wait(server: &TestServer, client: RawClient, left: usize) {
    client.close().await;
    wait_until("the closed connection to be released", || {
        server.server.connection_count() == left
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_limit_get_429() {
    const N: usize = 3;
    let server = start_with(Server::builder().router(sys()).config(limits(1000, N))).await;
    let mut open = Vec::new();
    for _ in 0..N {
        open.push(server.client(Codec::Json).await);
    }
    // Headers a client writes itself do not make it another address.
    for spoof in [
        vec![],
        vec![("X-Forwarded-For", "203.0.113.7")],
        vec![("X-Real-IP", "203.0.113.8")],
        vec![("Forwarded", "for=203.0.113.9")],
    ] {
        let (status, body) = refused_upgrade(server.addr, None, &spoof).await;
        assert_eq!(
            (status, body.as_str()),
            (429, "too many connections from this address"),
            "{spoof:?}"
        );
    }
    for (id, client) in open.iter_mut().enumerate() {
        client.assert_echo(id as u64 + 1).await;
    }
    // Each place given back can be taken again, at once, many times over.
    for round in 0..20 {
        let client = open.remove(0);
        close_and_wait(&server, client, N - 1).await;
        match try_upgrade(server.addr, Codec::Json, None, &[]).await {
            Ok(ws) => {
                let mut client = RawClient::unwelcomed(ws, Codec::Json);
                client.expect_welcome().await;
                open.push(client);
            }
            Err(refused) => panic!(
                "round {round}: the server counted {} connections, yet refused a new one: \
                 {refused:?}",
                server.server.connection_count()
            ),
        }
        let (status, _) = refused_upgrade(server.addr, None, &[]).await;
        assert_eq!(status, 429, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_total_limit_get_503() {
    const N: usize = 2;
    let server = start_with(Server::builder().router(sys()).config(limits(N, 100))).await;
    let mut open = Vec::new();
    for _ in 0..N {
        open.push(server.client(Codec::Json).await);
    }
    let (status, body) = refused_upgrade(server.addr, None, &[]).await;
    assert_eq!((status, body.as_str()), (503, "too many connections"));
    open[1].assert_echo(1).await;
    let client = open.remove(0);
    close_and_wait(&server, client, N - 1).await;
    let mut client = server.client(Codec::Json).await;
    client.assert_echo(1).await;
    let (status, _) = refused_upgrade(server.addr, None, &[]).await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_count_and_refused_ones_do_not() {
    let mut config = limits(1000, 3);
    config.limits.handshake_timeout = Duration::from_millis(500);
    let server = start_with(
        Server::builder()
            .router(sys())
            .config(config)
            .authenticator(jwt_authenticator()),
    )
    .await;
    let token = token("alice", "", 3600);
    let mut witness = RawClient::connect_with(
        server.addr,
        Codec::Json,
        Some((CredentialAt::Header, &token)),
    )
    .await;
    // Refused credentials give their place back at once: 401 every time, never 429.
    for (id, at) in CredentialAt::ALL.into_iter().cycle().take(12).enumerate() {
        let (status, _) = refused_upgrade(server.addr, Some((at, "junk")), &[]).await;
        assert_eq!(status, 401, "attempt {id}");
    }
    witness.assert_echo(1).await;
    // Sockets that never say hello hold their place until the handshake timeout.
    let mut silent = Vec::new();
    for _ in 0..2 {
        let ws = try_upgrade(server.addr, Codec::Json, None, &[])
            .await
            .unwrap();
        silent.push(RawClient::unwelcomed(ws, Codec::Json));
    }
    let (status, _) = refused_upgrade(server.addr, Some((CredentialAt::Header, &token)), &[]).await;
    assert_eq!(status, 429, "pending handshakes count toward the limit");
    for client in &mut silent {
        assert_eq!(client.recv_close().await, 4000);
    }
    wait_until("the silent connections to be released", || {
        server.server.connection_count() == 1
    })
    .await;
    let mut client = RawClient::connect_with(
        server.addr,
        Codec::Json,
        Some((CredentialAt::Query, &token)),
    )
    .await;
    client.assert_echo(1).await;
    witness.assert_echo(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_come_in_order_origin_total_per_address_credential() {
    let token = token("alice", "", 3600);
    let evil = [("Origin", "https://evil.example")];
    for (total, per_ip, full) in [(1, 1, 503), (100, 1, 429)] {
        let server = start_with(
            Server::builder()
                .router(sys())
                .config(limits(total, per_ip))
                .authenticator(jwt_authenticator()),
        )
        .await;
        let mut open = RawClient::connect_with(
            server.addr,
            Codec::Json,
            Some((CredentialAt::Header, &token)),
        )
        .await;
        // A foreign page is refused before anything is counted or checked.
        let (status, _) =
            refused_upgrade(server.addr, Some((CredentialAt::Header, "junk")), &evil).await;
        assert_eq!(status, 403);
        // A full server refuses before it looks at the credential, good or bad.
        for credential in [None, Some("junk"), Some(token.as_str())] {
            let credential = credential.map(|t| (CredentialAt::Header, t));
            let (status, _) = refused_upgrade(server.addr, credential, &[]).await;
            assert_eq!(status, full, "total {total}, per address {per_ip}");
        }
        open.assert_echo(1).await;
    }
}

// ---- rate limits -------------------------------------------------------------------------

/// Feeds `n` echo requests (ids from `first`) at once and sorts the answers: the ids served
/// and the ids refused with `RATE_LIMITED`.
async fn burst(client: &mut RawClient, first: u64, n: u64) -> (Vec<u64>, Vec<u64>) {
    for id in first..first + n {
        client
            .feed_json(json!({"t": "req", "id": id, "m": "sys.echo", "d": id}))
            .await;
    }
    client.flush().await;
    let (mut served, mut limited) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let frame = client.recv_json().await;
        let id = frame["id"].as_u64().expect("an answer with an id");
        if frame["t"] == "res" {
            assert_eq!(frame["d"], id);
            served.push(id);
        } else {
            assert_err(&frame, Some(id), "RATE_LIMITED");
            limited.push(id);
        }
    }
    (served, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_flood_is_rate_limited_and_the_connection_stays_usable() {
    // Bursts of 5, then 5 a second (one every 200 ms).
    let mut config = config();
    config.limits.call_rate = Some(RateLimit::new(5, 5).unwrap());
    let router = sys().notify("log.note", |_: Value| async {});
    let server = start_with(Server::builder().router(router).config(config).channels(
        Namespaces::new().namespace(
            "room:*",
            ChannelOptions::default().public_access().presence(true),
        ),
    ))
    .await;
    let mut witness = server.client(Codec::MsgPack).await;
    let mut flooder = server.client(Codec::Json).await;
    let (served, limited) = burst(&mut flooder, 1, 40).await;
    assert!(
        served.len() >= 5 && served.len() <= 7,
        "served {served:?}, limited {limited:?}"
    );
    assert_eq!(served[..5], [1, 2, 3, 4, 5], "the burst is served first");
    assert_eq!(served.len() + limited.len(), 40);
    // Every kind of call counts: a notification (refused without id), a join, a built-in.
    flooder
        .send_json(json!({"t": "ntf", "m": "log.note", "d": null}))
        .await;
    assert_err(&flooder.recv_json().await, None, "RATE_LIMITED");
    flooder
        .send_json(json!({"t": "join", "id": 100, "ch": "room:1"}))
        .await;
    assert_err(&flooder.recv_json().await, Some(100), "RATE_LIMITED");
    let reply = flooder
        .call(101, "$presence", json!({"ch": "room:1"}))
        .await;
    assert_err(&reply, Some(101), "RATE_LIMITED");
    // Another connection has its own budget.
    let (served, limited) = burst(&mut witness, 1, 5).await;
    assert_eq!((served.len(), limited.len()), (5, 0));
    // Once a token has come back, the flooder is served again.
    tokio::time::sleep(Duration::from_millis(250)).await;
    flooder.assert_echo(200).await;
    assert!(
        server.server.connection_count() == 2,
        "nobody was disconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_flood_is_rate_limited_apart_from_calls() {
    // Bursts of 3 publications, then one a second.
    let mut config = config();
    config.limits.publish_rate = Some(RateLimit::new(1, 3).unwrap());
    let namespaces = Namespaces::new().namespace(
        "room:*",
        ChannelOptions::default()
            .client_publish(true)
            .public_access(),
    );
    let server = start_with(
        Server::builder()
            .router(sys())
            .config(config)
            .channels(namespaces),
    )
    .await;
    let mut subscriber = server.client(Codec::Json).await;
    subscriber
        .send_json(json!({"t": "join", "id": 1, "ch": "room:1"}))
        .await;
    assert_eq!(subscriber.recv_json().await["t"], "res");
    let mut flooder = server.client(Codec::MsgPack).await;
    for id in 1..=12u64 {
        flooder
            .feed_json(json!({"t": "pub", "id": id, "ch": "room:1", "d": {"n": id}}))
            .await;
    }
    flooder.flush().await;
    let mut served = Vec::new();
    for _ in 1..=12 {
        let frame = flooder.recv_json().await;
        let id = frame["id"].as_u64().unwrap();
        if frame["t"] == "res" {
            served.push(id);
        } else {
            assert_err(&frame, Some(id), "RATE_LIMITED");
        }
    }
    assert!(served.len() == 3 || served.len() == 4, "served {served:?}");
    assert_eq!(served[..3], [1, 2, 3]);
    // Calls have a budget of their own.
    for id in 100..110 {
        flooder.assert_echo(id).await;
    }
    // Another publisher is not limited by the flooder.
    let mut other = server.client(Codec::Json).await;
    let reply = other.call(1, "sys.echo", json!("warm-up")).await;
    assert_eq!(reply["t"], "res");
    other
        .send_json(json!({"t": "pub", "id": 2, "ch": "room:1", "d": {"n": "other"}}))
        .await;
    assert_eq!(other.recv_json().await["t"], "res");
    // The subscriber got exactly the accepted publications, in order.
    let mut expected: Vec<Value> = served.iter().map(|n| json!({"n": n})).collect();
    expected.push(json!({"n": "other"}));
    for want in expected {
        let frame = subscriber.recv_json().await;
        assert_eq!(frame["t"], "msg", "{frame}");
        assert_eq!(frame["d"], want);
    }
    subscriber.assert_echo(1).await;
}
