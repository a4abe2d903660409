//! Security over real sockets: what an open session may do. Methods and channel actions
//! that need a permission answer `FORBIDDEN` without it (the connection stays open) and
//! work with it; revoking a user closes all their connections and nobody else's; strict
//! mode refuses to build while anything does not say who may use it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use plexus_server::{
    ChannelAction, ChannelOptions, CloseCode, Codec, Namespaces, Router, RpcError, Server,
};
use serde_json::{Value, json};
use support::{
    CredentialAt, RawClient, TestServer, assert_err, config, jwt_authenticator, start_with, sys,
    token,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Connects `user` with the space-separated permissions `scope` (token in the header).
async fn connect(server: &TestServer, codec: Codec, user: &str, scope: &str) -> RawClient {
    let token = token(user, scope, 3600);
    RawClient::connect_with(server.addr, codec, Some((CredentialAt::Header, &token))).await
}

/// Counts the runs of the `admin.*` and `ops.*` handlers; notifications report on `audits`.
struct Guarded {
    router: Router,
    runs: Arc<AtomicUsize>,
    audits: mpsc::UnboundedReceiver<Value>,
}

fn guarded_router() -> Guarded {
    let runs = Arc::new(AtomicUsize::new(0));
    let (audit_tx, audits) = mpsc::unbounded_channel();
    let (reset, tail, restart) = (runs.clone(), runs.clone(), runs.clone());
    let router = sys()
        .request("admin.reset", move |_: Value| {
            let runs = reset.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RpcError>("reset")
            }
        })
        .requires("admin")
        .notify("admin.audit", move |d: Value| {
            let tx = audit_tx.clone();
            async move {
                let _ = tx.send(d);
            }
        })
        .requires("admin")
        .stream("admin.tail", move |_: Value| {
            let runs = tail.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>("line")]))
            }
        })
        .requires("admin")
        // A rule: every `ops.*` method needs `ops`.
        .requires_all("ops.*", "ops")
        .request("ops.restart", move |_: Value| {
            let runs = restart.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RpcError>("restarted")
            }
        })
        .request("open.hello", |_: Value| async { Ok::<_, RpcError>("hi") })
        .public();
    Guarded {
        router,
        runs,
        audits,
    }
}

/// Every guarded method refuses `client`, which stays open; nothing runs.
async fn assert_all_forbidden(client: &mut RawClient, guarded: &mut Guarded) {
    let reply = client.call(1, "admin.reset", json!(null)).await;
    assert_err(&reply, Some(1), "FORBIDDEN");
    assert_eq!(reply["e"]["message"], "not allowed to call `admin.reset`");
    let reply = client.call(2, "ops.restart", json!(null)).await;
    assert_err(&reply, Some(2), "FORBIDDEN");
    client
        .send_json(json!({"t": "sub", "id": 3, "m": "admin.tail", "d": null}))
        .await;
    assert_err(&client.recv_json().await, Some(3), "FORBIDDEN");
    client
        .send_json(json!({"t": "ntf", "m": "admin.audit", "d": {"who": "mallory"}}))
        .await;
    // A notification's refusal is an `err` without id.
    let reply = client.recv_json().await;
    assert_err(&reply, None, "FORBIDDEN");
    assert_eq!(reply["e"]["message"], "not allowed to call `admin.audit`");
    // Still open, and the public methods answer.
    client.assert_echo(4).await;
    let reply = client.call(5, "open.hello", json!(null)).await;
    assert_eq!(reply, json!({"t": "res", "id": 5, "d": "hi"}));
    assert_eq!(
        guarded.runs.load(Ordering::SeqCst),
        0,
        "a refused method ran"
    );
    assert!(
        guarded.audits.try_recv().is_err(),
        "a refused notification ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_without_their_permission_are_forbidden() {
    let mut guarded = guarded_router();
    let server = start_with(
        Server::builder()
            .router(std::mem::take(&mut guarded.router))
            .config(config())
            .authenticator(jwt_authenticator()),
    )
    .await;
    let mut root = connect(&server, Codec::Json, "root", "admin ops").await;
    for codec in [Codec::Json, Codec::MsgPack] {
        // Permissions that only look alike do not count.
        for scope in ["", "admins", "ops.restart", "Admin"] {
            let mut client = connect(&server, codec, "mallory", scope).await;
            assert_all_forbidden(&mut client, &mut guarded).await;
        }
    }
    // One permission does not grant the other.
    let mut half = connect(&server, Codec::Json, "half", "ops").await;
    let reply = half.call(1, "admin.reset", json!(null)).await;
    assert_err(&reply, Some(1), "FORBIDDEN");
    let reply = half.call(2, "ops.restart", json!(null)).await;
    assert_eq!(reply, json!({"t": "res", "id": 2, "d": "restarted"}));

    // With the permissions, every method is served.
    let reply = root.call(1, "admin.reset", json!(null)).await;
    assert_eq!(reply, json!({"t": "res", "id": 1, "d": "reset"}));
    root.send_json(json!({"t": "sub", "id": 2, "m": "admin.tail", "d": null}))
        .await;
    assert_eq!(
        root.recv_json().await,
        json!({"t": "item", "id": 2, "d": "line"})
    );
    assert_eq!(root.recv_json().await, json!({"t": "end", "id": 2}));
    root.send_json(json!({"t": "ntf", "m": "admin.audit", "d": {"who": "root"}}))
        .await;
    assert_eq!(
        support::recv(&mut guarded.audits, "the audit notification").await,
        json!({"who": "root"})
    );
    let reply = root.call(3, "ops.restart", json!(null)).await;
    assert_eq!(reply, json!({"t": "res", "id": 3, "d": "restarted"}));
    root.assert_echo(4).await;
    assert_eq!(guarded.runs.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_hold_no_permission() {
    let mut guarded = guarded_router();
    let server = start_with(
        Server::builder()
            .router(std::mem::take(&mut guarded.router))
            .config(config()),
    )
    .await;
    let mut client = server.client(Codec::Json).await;
    assert!(client.welcome.get("user").is_none(), "{}", client.welcome);
    assert_all_forbidden(&mut client, &mut guarded).await;
}

fn guarded_namespaces() -> Namespaces {
    Namespaces::new()
        .namespace(
            "vault:*",
            ChannelOptions::default()
                .history_size(10)
                .presence(true)
                .client_publish(true)
                .require(ChannelAction::Join, "vault.read")
                .require(ChannelAction::Publish, "vault.write"),
        )
        .namespace(
            // Presence and history with a permission of their own, beyond joining.
            "audit:*",
            ChannelOptions::default()
                .history_size(10)
                .presence(true)
                .require(ChannelAction::Join, "audit.read")
                .require(ChannelAction::Presence, "audit.admin")
                .require(ChannelAction::History, "audit.admin"),
        )
}

/// A channel action by `client` as call `id`; returns the answer.
async fn act(client: &mut RawClient, id: u64, action: ChannelAction, ch: &str) -> Value {
    let frame = match action {
        ChannelAction::Join => json!({"t": "join", "id": id, "ch": ch}),
        ChannelAction::Publish => json!({"t": "pub", "id": id, "ch": ch, "d": {"from": id}}),
        ChannelAction::Presence => json!({"t": "req", "id": id, "m": "$presence", "d": {"ch": ch}}),
        ChannelAction::History => json!({"t": "req", "id": id, "m": "$history", "d": {"ch": ch}}),
        other => panic!("unknown action {other:?}"),
    };
    client.send_json(frame).await;
    loop {
        // Our own publication to a channel we joined may come first.
        let frame = client.recv_json().await;
        if frame["t"] != "msg" {
            return frame;
        }
    }
}

/// Asserts what each action on `ch` gives `client`: `true` served, `false` `FORBIDDEN`.
async fn assert_actions(
    client: &mut RawClient,
    ch: &str,
    expected: [(ChannelAction, bool); 4],
    next_id: &mut u64,
) {
    for (action, allowed) in expected {
        *next_id += 1;
        let reply = act(client, *next_id, action, ch).await;
        if allowed {
            assert_eq!(reply["t"], "res", "{action:?} on {ch}: {reply}");
            assert_eq!(reply["id"], *next_id);
        } else {
            assert_err(&reply, Some(*next_id), "FORBIDDEN");
        }
    }
    // The connection is still open.
    *next_id += 1;
    client.assert_echo(*next_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_actions_without_their_permission_are_forbidden() {
    use ChannelAction::{History, Join, Presence, Publish};
    let server = start_with(
        Server::builder()
            .router(sys())
            .config(config())
            .authenticator(jwt_authenticator())
            .channels(guarded_namespaces()),
    )
    .await;
    let hub = server.server.hub().clone();
    let mut id = 0;
    let mut writer = connect(&server, Codec::Json, "writer", "vault.read vault.write").await;
    assert_actions(
        &mut writer,
        "vault:1",
        [
            (Join, true),
            (Publish, true),
            (Presence, true),
            (History, true),
        ],
        &mut id,
    )
    .await;
    let mut writes = 1;
    for codec in [Codec::Json, Codec::MsgPack] {
        // Unrelated permissions, or ones that only look alike, do not count.
        let mut nobody = connect(&server, codec, "nobody", "audit.admin vault vault.*").await;
        assert_actions(
            &mut nobody,
            "vault:1",
            [
                (Join, false),
                (Publish, false),
                (Presence, false),
                (History, false),
            ],
            &mut id,
        )
        .await;
        // Publishing needs only its own permission (not joining's): a write-only client
        // cannot read what it writes.
        let mut dropbox = connect(&server, codec, "dropbox", "vault.write").await;
        assert_actions(
            &mut dropbox,
            "vault:1",
            [
                (Join, false),
                (Publish, true),
                (Presence, false),
                (History, false),
            ],
            &mut id,
        )
        .await;
        writes += 1;
        // Not subscribed: a publication does not reach it (the echo's answer comes first).
        hub.publish("vault:1", &json!({"from": "server"}))
            .await
            .unwrap();
        writes += 1;
        id += 1;
        nobody.assert_echo(id).await;
        // Nor does recovery hand out the history: the refusal is the next frame.
        id += 1;
        nobody
            .send_json(json!({"t": "join", "id": id, "ch": "vault:1",
                "since": {"epoch": "", "offset": 0}}))
            .await;
        assert_err(&nobody.recv_json().await, Some(id), "FORBIDDEN");

        let mut reader = connect(&server, codec, "reader", "vault.read audit.read").await;
        assert_actions(
            &mut reader,
            "vault:1",
            [
                (Join, true),
                (Publish, false),
                (Presence, true),
                (History, true),
            ],
            &mut id,
        )
        .await;
        assert_actions(
            &mut reader,
            "audit:1",
            [
                (Join, true),
                (Publish, false),
                (Presence, false),
                (History, false),
            ],
            &mut id,
        )
        .await;
        let mut auditor = connect(&server, codec, "auditor", "audit.read audit.admin").await;
        assert_actions(
            &mut auditor,
            "audit:1",
            [
                (Join, true),
                (Publish, false),
                (Presence, true),
                (History, true),
            ],
            &mut id,
        )
        .await;
        // The writer's publications reach the reader.
        id += 1;
        let reply = act(&mut writer, id, Publish, "vault:1").await;
        assert_eq!(reply["t"], "res", "{reply}");
        writes += 1;
        loop {
            let frame = reader.recv_json().await;
            if frame["t"] == "msg" && frame["d"] == json!({"from": id}) {
                break;
            }
        }
    }
    // Only the allowed publications are in the channel, and the refused joins left no
    // member behind.
    let history = hub.history("vault:1", None, None).await.unwrap();
    assert_eq!(history.publications.len(), writes, "{history:?}");
    let members: Vec<String> = hub
        .presence("vault:1")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|member| member.user)
        .collect();
    assert!(!members.iter().any(|user| user == "nobody"), "{members:?}");
    writer.assert_echo(1000).await;
}

/// One HTTP/1.1 request to the API; the status and the JSON body.
async fn http(addr: std::net::SocketAddr, path: &str, key: &str, body: &str) -> (u16, Value) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: apikey {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    support::within("the API response", stream.read_to_end(&mut response))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

const API_KEY: &str = "security-api-key";

/// A server with JWT auth and the HTTP API.
async fn start_with_api() -> TestServer {
    let server = Server::builder()
        .router(sys())
        .config(config())
        .authenticator(jwt_authenticator())
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server.route("/ws").merge(server.api_routes(API_KEY));
    support::serve_app(server, listener, app, addr)
}

/// Three connections of `alice` (header, cookie, hello), one of `bob`, and one still
/// waiting for its hello.
async fn sessions(server: &TestServer) -> (Vec<RawClient>, RawClient, RawClient) {
    let alice = token("alice", "", 3600);
    let mut alices = vec![
        RawClient::connect_with(
            server.addr,
            Codec::Json,
            Some((CredentialAt::Header, &alice)),
        )
        .await,
        RawClient::connect_with(
            server.addr,
            Codec::MsgPack,
            Some((CredentialAt::Cookie, &alice)),
        )
        .await,
    ];
    let mut third = RawClient::hello(server.addr, Codec::Json, Some(&alice)).await;
    third.expect_welcome().await;
    alices.push(third);
    let bob = connect(server, Codec::Json, "bob", "").await;
    let pending = RawClient::unwelcomed(
        support::try_upgrade(server.addr, Codec::Json, None, &[])
            .await
            .unwrap(),
        Codec::Json,
    );
    (alices, bob, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_user_closes_all_their_connections_and_only_theirs() {
    let server = start_with_api().await;
    let (mut alices, mut bob, mut pending) = sessions(&server).await;
    let closed = server
        .server
        .hub()
        .disconnect_user("alice", CloseCode::FORBIDDEN, "revoked")
        .await
        .unwrap();
    assert_eq!(closed, 3);
    for alice in &mut alices {
        assert_eq!(alice.recv_close().await, 4003);
    }
    bob.assert_echo(1).await;
    // The connection still waiting for its hello is nobody yet: it was not closed.
    pending
        .send_json(json!({"t": "hello", "token": token("carol", "", 3600)}))
        .await;
    assert_eq!(pending.expect_welcome().await["user"], "carol");
    pending.assert_echo(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_disconnects_a_user_everywhere() {
    let server = start_with_api().await;
    let disconnect =
        |key: &'static str, body: &'static str| http(server.addr, "/api/disconnect", key, body);
    // Without the key, or with a close code it does not take, nothing happens.
    let (status, body) = disconnect("wrong", r#"{"user":"alice","code":4003}"#).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = disconnect(API_KEY, r#"{"user":"alice","code":4000}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    // A revocation (4003: do not come back), then a plain disconnect (1000, the default).
    for (request, code) in [
        (r#"{"user":"alice","code":4003}"#, 4003),
        (r#"{"user":"alice","code":4001}"#, 4001),
        (r#"{"user":"alice"}"#, 1000),
    ] {
        let (mut alices, mut bob, pending) = sessions(&server).await;
        for (id, alice) in alices.iter_mut().enumerate() {
            alice.assert_echo(id as u64 + 1).await;
        }
        let (status, body) = disconnect(API_KEY, request).await;
        assert_eq!(
            (status, body),
            (200, json!({"disconnected": 3})),
            "{request}"
        );
        for alice in &mut alices {
            assert_eq!(alice.recv_close().await, code, "{request}");
        }
        bob.assert_echo(1).await;
        // Start the next round from nothing.
        drop((alices, bob, pending));
        support::wait_until("every connection to end", || {
            server.server.connection_count() == 0
        })
        .await;
    }
}

// ---- strict mode -------------------------------------------------------------------------

fn ok(_: Value) -> std::future::Ready<Result<(), RpcError>> {
    std::future::ready(Ok(()))
}

#[test]
fn strict_mode_names_every_undeclared_method_and_namespace() {
    let router = Router::new()
        .request("a.one", ok)
        .request("b.two", ok)
        .public()
        .request("c.three", ok)
        .requires("x")
        .stream("d.four", |_: Value| async {
            Ok::<_, RpcError>(futures_util::stream::empty::<Result<u8, RpcError>>())
        })
        .notify("e.five", |_: Value| async {});
    let namespaces = Namespaces::new()
        .namespace("room:*", ChannelOptions::default().client_publish(true))
        .namespace("news:*", ChannelOptions::default().public_access())
        .namespace(
            "team:*",
            ChannelOptions::default().authorize(|_, _, _| true),
        );
    let built = Server::builder()
        .router(router)
        .channels(namespaces)
        .strict(true)
        .try_build();
    let Err(plexus_server::BuildError::Strict(error)) = built else {
        panic!("strict mode built a server with undeclared methods");
    };
    assert_eq!(error.methods(), ["a.one", "d.four", "e.five"]);
    assert_eq!(error.namespaces(), ["room:*"]);
    let text = error.to_string();
    for named in ["`a.one`", "`d.four`", "`e.five`", "`room:*`"] {
        assert!(text.contains(named), "{text} does not name {named}");
    }
    for declared in ["b.two", "c.three", "news:*", "team:*"] {
        assert!(!text.contains(declared), "{text} names {declared}");
    }
    // The built-in `sys.*` methods are declared public: a strict server may serve them.
    assert!(
        Server::builder()
            .router(sys())
            .strict(true)
            .try_build()
            .is_ok()
    );
    // Without strict mode, undeclared methods build (and are open to everyone).
    assert!(
        Server::builder()
            .router(Router::new().request("a.one", ok))
            .try_build()
            .is_ok()
    );
}

#[test]
#[should_panic(expected = "`a.one`")]
fn strict_build_panics_naming_the_method() {
    let _ = Server::builder()
        .router(Router::new().request("a.one", ok))
        .strict(true)
        .build();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_server_with_declarations_builds_and_enforces_them() {
    let router = Router::new()
        .request("a.one", ok)
        .requires("a")
        .request("b.two", ok)
        .public()
        .requires_all("ops.*", "ops")
        .request("ops.restart", ok)
        .merge(sys());
    let namespaces = Namespaces::new().namespace(
        "room:*",
        ChannelOptions::default().require(ChannelAction::Join, "room"),
    );
    let server = Server::builder()
        .router(router)
        .channels(namespaces)
        .strict(true)
        .try_build()
        .unwrap_or_else(|e| panic!("declared everything, still refused: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server.route("/ws");
    let server = support::serve_app(server, listener, app, addr);
    // Anonymous: only the public method.
    let mut client = server.client(Codec::Json).await;
    assert_err(
        &client.call(1, "a.one", json!(null)).await,
        Some(1),
        "FORBIDDEN",
    );
    assert_err(
        &client.call(2, "ops.restart", json!(null)).await,
        Some(2),
        "FORBIDDEN",
    );
    assert_eq!(
        client.call(3, "b.two", json!(null)).await,
        json!({"t": "res", "id": 3, "d": null})
    );
    client
        .send_json(json!({"t": "join", "id": 4, "ch": "room:1"}))
        .await;
    assert_err(&client.recv_json().await, Some(4), "FORBIDDEN");
    client.assert_echo(5).await;
}

/// The token's `info` claim is what presence shows of the member, to `$presence` and in
/// `pjoin`; the user is the token's `sub`.
#[tokio::test]
async fn presence_shows_the_user_and_info_from_the_token() {
    let server = start_with(
        Server::builder()
            .router(sys())
            .config(config())
            .authenticator(jwt_authenticator())
            .channels(
                Namespaces::new().namespace(
                    "room:*",
                    ChannelOptions::default()
                        .presence(true)
                        .join_leave_events(true),
                ),
            ),
    )
    .await;
    let mut bob = connect(&server, Codec::Json, "bob", "").await;
    bob.send_json(json!({"t": "join", "id": 1, "ch": "room:p"}))
        .await;
    assert_eq!(bob.recv_json().await["t"], "res");
    let mut claims = support::claims("alice", "", 3600);
    claims["info"] = json!({"name": "Alice", "color": "teal"});
    let token = support::sign_hs256(support::JWT_SECRET.as_bytes(), &claims);
    let mut alice = RawClient::connect_with(
        server.addr,
        Codec::MsgPack,
        Some((CredentialAt::Header, &token)),
    )
    .await;
    assert_eq!(alice.welcome["user"], "alice");
    alice
        .send_json(json!({"t": "join", "id": 1, "ch": "room:p"}))
        .await;
    assert_eq!(alice.recv_json().await["t"], "res");
    let pjoin = bob.recv_json().await;
    assert_eq!(pjoin["t"], "pjoin");
    assert_eq!(pjoin["d"]["user"], "alice");
    assert_eq!(
        pjoin["d"]["info"],
        json!({"name": "Alice", "color": "teal"})
    );
    let members = alice.call(2, "$presence", json!({"ch": "room:p"})).await;
    let mut members: Vec<Value> = members["d"].as_array().cloned().unwrap_or_default();
    members.sort_by_key(|m| m["user"].as_str().map(str::to_owned));
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(members[0]["user"], "alice");
    assert_eq!(members[0]["info"]["name"], "Alice");
    assert_eq!(members[1]["user"], "bob");
    assert_eq!(members[1]["info"], Value::Null);
}
