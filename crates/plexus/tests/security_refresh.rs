//! Security over real sockets: credentials that expire while their connection is open.
//!
//! The server asks for a fresh token with `$refresh` (at min(30 s, half the time left) before
//! expiry); a valid one for the same user keeps the connection, anything else closes it
//! with 4001 (4003 for a token of another user) once the current token has expired.
//!
//! jsonwebtoken reads the system clock, so these tests spend real time: tokens live
//! [`TTL`] seconds. To keep the wall time at one token lifetime per test, each test runs
//! all its cases (both codecs, every variant) at once, on connections of their own.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use plexus_client::{BoxError, ClientOptions, Status};
use plexus_server::{
    ChannelAction, ChannelOptions, Codec, JwtAuthenticator, Namespaces, RpcError, Server,
};
use serde_json::{Value, json};
use support::{
    CredentialAt, Event, JWT_SECRET, RawClient, TIMEOUT, TestServer, assert_err, claims,
    jwt_config, sign_hs256, start_with, sys, token, within,
};
use tokio::sync::mpsc;

/// Lifetime of the short-lived tokens, in seconds.
const TTL: u64 = 3;
/// The authenticator's allowance for clock skew.
const LEEWAY: Duration = Duration::from_secs(1);

/// Every connection needs this permission; `admin.reset` needs `admin`.
const CONNECT: &str = "connect";

async fn start_refreshing() -> TestServer {
    let authenticator =
        JwtAuthenticator::new(jwt_config().with_leeway(LEEWAY)).expect("valid JWT config");
    let router = sys()
        .request("admin.reset", |_: Value| async {
            Ok::<_, RpcError>("reset")
        })
        .requires("admin")
        .stream("ops.tail", |_: Value| async {
            // One line, then it waits: a stream that lives until something stops it.
            let lines = futures_util::stream::once(async { Ok::<_, RpcError>("line 1") })
                .chain(futures_util::stream::pending());
            Ok::<_, RpcError>(lines)
        })
        .requires("ops.read");
    let namespaces = Namespaces::new().namespace(
        "vault:*",
        ChannelOptions::default().require(ChannelAction::Join, "vault.read"),
    );
    start_with(
        Server::builder()
            .router(router)
            .authenticator(authenticator)
            .connect_permission(CONNECT)
            .channels(namespaces),
    )
    .await
}

/// A connection of `alice` with the permissions `scope` and a token that expires in
/// [`TTL`] seconds, authenticated in the upgrade (`hello` false) or in band; and that
/// expiry (Unix seconds).
async fn short_lived(
    server: &TestServer,
    codec: Codec,
    hello: bool,
    scope: &str,
) -> (RawClient, u64) {
    let claims = claims("alice", scope, TTL);
    let exp = claims["exp"].as_u64().unwrap();
    let token = sign_hs256(JWT_SECRET.as_bytes(), &claims);
    let client = if hello {
        let mut client = RawClient::hello(server.addr, codec, Some(&token)).await;
        client.expect_welcome().await;
        client
    } else {
        RawClient::connect_with(server.addr, codec, Some((CredentialAt::Header, &token))).await
    };
    (client, exp)
}

/// A connection of `alice` with a token that outlives the test.
async fn witness(server: &TestServer, codec: Codec) -> RawClient {
    let token = token("alice", CONNECT, 3600);
    RawClient::connect_with(server.addr, codec, Some((CredentialAt::Header, &token))).await
}

/// Whether `client` may call `admin.reset` (as call `id`).
async fn is_admin(client: &mut RawClient, id: u64) -> bool {
    let reply = client.call(id, "admin.reset", json!(null)).await;
    if reply["t"] == "res" {
        return true;
    }
    assert_err(&reply, Some(id), "FORBIDDEN");
    false
}

/// Answers the server's `$refresh` call `id` with `token`.
async fn answer(client: &mut RawClient, id: u64, token: &str) {
    client
        .send_json(json!({"t": "res", "id": id, "d": {"token": token}}))
        .await;
}

fn unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Reads the server's `$refresh` request, which must come next and name the current
/// token's expiry; returns its id.
async fn expect_refresh(client: &mut RawClient, exp: u64) -> u64 {
    let frame = client.recv_json().await;
    assert_eq!(frame["t"], "req", "expected $refresh, got {frame}");
    assert_eq!(frame["m"], "$refresh", "{frame}");
    assert_eq!(frame["d"], json!({"exp": exp}), "{frame}");
    frame["id"].as_u64().expect("a request id")
}

/// Waits for the close that must come next (after, at most, the server's `cancel` of its
/// unanswered `$refresh` call `refresh`); returns its code and when it came.
async fn closed(client: &mut RawClient, refresh: u64) -> (u16, SystemTime) {
    loop {
        match client.next_event(TIMEOUT).await {
            Some(Event::Close(Some(code))) => return (code, SystemTime::now()),
            Some(Event::Frame(frame)) if frame == json!({"t": "cancel", "id": refresh}) => {}
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

/// Asserts a close at the expiry `exp`: not while the token is still valid, and not much
/// later than its expiry plus the leeway and the time a client gets to answer (2 s).
fn assert_closed_at_expiry(at: SystemTime, exp: u64, what: &str) {
    let early = unix(exp) - Duration::from_millis(100);
    let late = unix(exp) + LEEWAY + Duration::from_millis(2500);
    assert!(
        at >= early,
        "{what}: closed {:?} before the token expired",
        unix(exp).duration_since(at).unwrap_or_default()
    );
    assert!(
        at <= late,
        "{what}: closed {:?} after the token expired",
        at.duration_since(unix(exp)).unwrap_or_default()
    );
}

/// Reads nothing but pings until `until`; panics on any frame or close.
async fn stays_open_until(client: &mut RawClient, until: SystemTime) {
    while let Ok(left) = until.duration_since(SystemTime::now()) {
        if let Some(event) = client.next_event(left).await {
            panic!("expected the connection to stay quiet and open, got {event:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_connection_outlives_its_first_token() {
    let server = start_refreshing().await;
    let raw = |codec: Codec, hello: bool| {
        let server = &server;
        async move {
            let what = format!("{codec:?}, hello {hello}");
            let (mut client, exp) = short_lived(server, codec, hello, CONNECT).await;
            let id = expect_refresh(&mut client, exp).await;
            assert!(
                SystemTime::now() < unix(exp),
                "{what}: $refresh must come before the token expires"
            );
            answer(&mut client, id, &token("alice", CONNECT, 3600)).await;
            stays_open_until(&mut client, unix(exp) + LEEWAY + Duration::from_millis(500)).await;
            client.assert_echo(1).await;
        }
    };
    tokio::join!(
        raw(Codec::Json, false),
        raw(Codec::Json, true),
        raw(Codec::MsgPack, false),
        raw(Codec::MsgPack, true),
        refreshed_twice(&server),
        permissions_follow_the_refreshed_token(&server),
        rust_client(&server),
    );
}

/// The refreshed token's expiry replaces the first one's: the server asks again before it,
/// and the connection lives on past both.
async fn refreshed_twice(server: &TestServer) {
    let (mut client, exp) = short_lived(server, Codec::Json, false, CONNECT).await;
    let id = expect_refresh(&mut client, exp).await;
    let second = claims("alice", CONNECT, TTL);
    let second_exp = second["exp"].as_u64().unwrap();
    assert!(second_exp > exp);
    answer(&mut client, id, &sign_hs256(JWT_SECRET.as_bytes(), &second)).await;
    let id = expect_refresh(&mut client, second_exp).await;
    answer(&mut client, id, &token("alice", CONNECT, 3600)).await;
    stays_open_until(&mut client, unix(second_exp) + LEEWAY).await;
    client.assert_echo(1).await;
}

/// The refreshed token's permissions replace the old ones, both ways.
async fn permissions_follow_the_refreshed_token(server: &TestServer) {
    let (mut admin, admin_exp) = short_lived(server, Codec::MsgPack, false, "connect admin").await;
    let (mut plain, plain_exp) = short_lived(server, Codec::Json, true, CONNECT).await;
    assert!(is_admin(&mut admin, 1).await);
    assert!(!is_admin(&mut plain, 1).await);
    let id = expect_refresh(&mut admin, admin_exp).await;
    answer(&mut admin, id, &token("alice", CONNECT, 3600)).await;
    let id = expect_refresh(&mut plain, plain_exp).await;
    answer(&mut plain, id, &token("alice", "connect admin", 3600)).await;
    // The answer is checked as it arrives: the next call sees the new permissions.
    assert!(
        !is_admin(&mut admin, 2).await,
        "the dropped permission still works"
    );
    assert!(
        is_admin(&mut plain, 2).await,
        "the granted permission does not work"
    );
}

/// The Rust client answers `$refresh` with its credentials hook, by itself.
async fn rust_client(server: &TestServer) {
    let url = format!("ws://{}/ws", server.addr);
    // Every call of the hook mints a short-lived token and reports its expiry.
    let (minted_tx, mut minted) = mpsc::unbounded_channel::<u64>();
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = calls.clone();
    let options = ClientOptions::default().credentials(move || {
        hook_calls.fetch_add(1, Ordering::SeqCst);
        let claims = claims("alice", CONNECT, TTL);
        let _ = minted_tx.send(claims["exp"].as_u64().unwrap());
        let token = sign_hs256(JWT_SECRET.as_bytes(), &claims);
        async move { Ok::<_, BoxError>(Some(token)) }
    });
    let client = within("connect", plexus_client::connect(&url, options))
        .await
        .expect("the client connects");
    let conn = client.conn_id().expect("connected");
    let mut status = client.status();
    assert_eq!(*status.borrow_and_update(), Status::Connected);
    let first_exp = support::recv(&mut minted, "the first token").await;
    // The server's `$refresh` calls the hook again, before the first token expires.
    let _ = support::recv(&mut minted, "the hook called for $refresh").await;
    assert!(SystemTime::now() < unix(first_exp));

    // Past the first token's expiry the same session still serves calls.
    tokio::time::sleep(time_until(first_exp) + LEEWAY + Duration::from_millis(500)).await;
    let echoed: Value = within("echo", client.request("sys.echo", &json!({"n": 1})))
        .await
        .expect("the session is still open");
    assert_eq!(echoed, json!({"n": 1}));
    assert_eq!(
        client.conn_id().as_deref(),
        Some(conn.as_str()),
        "no reconnect"
    );
    assert!(
        !status.has_changed().unwrap(),
        "the status changed: {:?}",
        *status.borrow()
    );
    assert!(calls.load(Ordering::SeqCst) >= 2);
    client.close().await;
}

/// How a client answers `$refresh` without a valid fresh token for its user.
#[derive(Clone, Copy, Debug)]
enum NoRefresh {
    /// `err` `UNAVAILABLE`, as a client without a credential.
    Unavailable,
    /// `err` `NOT_FOUND`, as a client that does not serve `$refresh`.
    NotServed,
    /// No answer at all.
    Silent,
    /// A token that does not verify.
    Invalid,
    /// A token that has already expired.
    Expired,
    /// A result without a token.
    NoToken,
    /// A valid token of another user: 4003, not 4001.
    OtherUser,
    /// A valid token of the same user without the connect permission: 4003.
    NotAllowed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_valid_refresh_closes_the_connection_at_expiry() {
    let server = start_refreshing().await;
    let mut witnesses = [
        witness(&server, Codec::Json).await,
        witness(&server, Codec::MsgPack).await,
    ];
    let run = |codec: Codec, how: NoRefresh, hello: bool| {
        let server = &server;
        async move {
            let what = format!("{how:?} ({codec:?}, hello {hello})");
            let (mut client, exp) = short_lived(server, codec, hello, CONNECT).await;
            let id = expect_refresh(&mut client, exp).await;
            let answer = match how {
                NoRefresh::Unavailable => Some(json!({"t": "err", "id": id,
                    "e": {"code": "UNAVAILABLE", "message": "no credential available"}})),
                NoRefresh::NotServed => Some(json!({"t": "err", "id": id,
                    "e": {"code": "NOT_FOUND", "message": "unknown method `$refresh`"}})),
                NoRefresh::Silent => None,
                NoRefresh::Invalid => {
                    Some(json!({"t": "res", "id": id, "d": {"token": "not-a-token"}}))
                }
                NoRefresh::Expired => {
                    let mut old = claims("alice", CONNECT, 0);
                    old["exp"] = json!(exp - 600);
                    let old = sign_hs256(JWT_SECRET.as_bytes(), &old);
                    Some(json!({"t": "res", "id": id, "d": {"token": old}}))
                }
                NoRefresh::NoToken => Some(json!({"t": "res", "id": id, "d": {}})),
                NoRefresh::OtherUser => {
                    let other = token("mallory", "connect admin", 3600);
                    Some(json!({"t": "res", "id": id, "d": {"token": other}}))
                }
                NoRefresh::NotAllowed => {
                    let lacking = token("alice", "admin", 3600);
                    Some(json!({"t": "res", "id": id, "d": {"token": lacking}}))
                }
            };
            if let Some(answer) = answer {
                client.send_json(answer).await;
            }
            let (code, at) = closed(&mut client, id).await;
            let expected = match how {
                NoRefresh::OtherUser | NoRefresh::NotAllowed => 4003,
                _ => 4001,
            };
            assert_eq!(code, expected, "{what}");
            assert_closed_at_expiry(at, exp, &what);
        }
    };
    let mut cases = Vec::new();
    for codec in [Codec::Json, Codec::MsgPack] {
        for how in [
            NoRefresh::Unavailable,
            NoRefresh::NotServed,
            NoRefresh::Silent,
            NoRefresh::Invalid,
            NoRefresh::Expired,
            NoRefresh::NoToken,
            NoRefresh::OtherUser,
            NoRefresh::NotAllowed,
        ] {
            cases.push(run(codec, how, false));
        }
        cases.push(run(codec, NoRefresh::Unavailable, true));
        cases.push(run(codec, NoRefresh::OtherUser, true));
    }
    futures_util::future::join_all(cases).await;
    for (id, witness) in witnesses.iter_mut().enumerate() {
        witness.assert_echo(id as u64 + 1).await;
    }
}

/// Real time from now until the Unix second `exp` (zero if past).
fn time_until(exp: u64) -> Duration {
    unix(exp)
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// A refresh that takes away the permission to join a channel must also end the
/// subscription made with it: otherwise a user whose access was withdrawn (the usual way:
/// the identity provider stops granting it in new tokens) goes on reading the channel for
/// as long as the connection lives. The server may say so with `left` (any `e`); what it
/// must not do is deliver another `msg` of that channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_without_the_join_permission_ends_the_subscription() {
    let server = start_refreshing().await;
    let hub = server.server.hub().clone();
    let (mut client, exp) = short_lived(&server, Codec::Json, false, "connect vault.read").await;
    client
        .send_json(json!({"t": "join", "id": 1, "ch": "vault:1"}))
        .await;
    assert_eq!(client.recv_json().await["t"], "res");
    hub.publish("vault:1", &json!({"n": 1})).await.unwrap();
    assert_eq!(client.recv_json().await["d"], json!({"n": 1}));

    let id = expect_refresh(&mut client, exp).await;
    answer(&mut client, id, &token("alice", CONNECT, 3600)).await;
    // The channel joined under the old token ends, saying why...
    let left = client.recv_json().await;
    assert_eq!(
        (
            left["t"].clone(),
            left["ch"].clone(),
            left["e"]["code"].clone()
        ),
        (json!("left"), json!("vault:1"), json!("FORBIDDEN")),
        "{left}"
    );
    assert!(hub.channels().is_empty(), "{:?}", hub.channels());
    // ...joining is refused from now on...
    client
        .send_json(json!({"t": "join", "id": 2, "ch": "vault:2"}))
        .await;
    assert_err(&client.recv_json().await, Some(2), "FORBIDDEN");
    // ...and nothing more of it is read.
    hub.publish("vault:1", &json!({"n": 2})).await.unwrap();
    client
        .send_json(json!({"t": "req", "id": 3, "m": "sys.echo", "d": "after"}))
        .await;
    let frame = client.recv_json().await;
    assert_eq!(frame, json!({"t": "res", "id": 3, "d": "after"}), "{frame}");
}

/// A stream opened with a permission the refreshed token no longer holds is stopped and
/// answered `FORBIDDEN`; the connection goes on.
#[tokio::test]
async fn a_refresh_without_a_method_permission_stops_its_stream() {
    let server = start_refreshing().await;
    let (mut client, exp) = short_lived(&server, Codec::Json, false, "connect ops.read").await;
    client
        .send_json(json!({"t": "sub", "id": 1, "m": "ops.tail", "d": null}))
        .await;
    let item = client.recv_json().await;
    assert_eq!(
        (item["t"].clone(), item["d"].clone()),
        (json!("item"), json!("line 1"))
    );
    let id = expect_refresh(&mut client, exp).await;
    answer(&mut client, id, &token("alice", CONNECT, 3600)).await;
    assert_err(&client.recv_json().await, Some(1), "FORBIDDEN");
    client
        .send_json(json!({"t": "sub", "id": 2, "m": "ops.tail", "d": null}))
        .await;
    assert_err(&client.recv_json().await, Some(2), "FORBIDDEN");
    client
        .send_json(json!({"t": "req", "id": 3, "m": "sys.echo", "d": "still here"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 3, "d": "still here"})
    );
}
