//! Security over real sockets: who may open a session. Every bad credential at every place
//! it may be presented (the upgrade's `Authorization: Bearer` header, the `plexus_token`
//! cookie, the `?token=` query, the in-band `hello`) is refused with the exact HTTP status,
//! or `reject` and close code; frames before `welcome` are never served; an already-open
//! connection is unaffected by each attempt.

#[macro_use]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use plexus_server::{
    CallContext, ChannelOptions, Codec, JwtAuthenticator, JwtConfig, Namespaces, Router, RpcError,
    Server, ServerBuilder,
};
use serde_json::{Value, json};
use support::{
    CredentialAt, Event, JWT_SECRET, RawClient, TIMEOUT, TestServer, claims, config,
    jwt_authenticator, refused_upgrade, sign_hs256, sign_rs256, start_with, sys, test_key, token,
    try_upgrade, unix_now, unsigned_token,
};

codec_tests!(
    bad_credentials_are_refused_everywhere,
    valid_credentials_are_accepted_everywhere,
    in_band_hello_is_awaited_before_welcome,
);

/// A server authenticating with [`support::jwt_authenticator`], serving `sys.*`,
/// `whoami` and `admin.reset` (needs `admin`).
fn auth_builder() -> ServerBuilder {
    Server::builder()
        .router(sys().merge(whoami()))
        .config(config())
        .authenticator(jwt_authenticator())
}

/// `whoami` answers the user and permissions of the calling connection; `admin.reset`
/// needs the `admin` permission.
fn whoami() -> Router {
    Router::new()
        .request("whoami", |ctx: CallContext, _: Value| async move {
            let principal = ctx.principal();
            let mut permissions: Vec<&String> = principal.permissions.iter().collect();
            permissions.sort();
            Ok::<_, RpcError>(json!({"user": principal.user, "permissions": permissions}))
        })
        .request("admin.reset", |_: Value| async {
            Ok::<_, RpcError>("reset")
        })
        .requires("admin")
}

/// A connection of `alice` that must keep working whatever the other clients do.
async fn witness(server: &TestServer, codec: Codec) -> RawClient {
    let token = token("alice", "", 3600);
    RawClient::connect_with(server.addr, codec, Some((CredentialAt::Header, &token))).await
}

/// A bad token and the reason the server gives for it.
struct Bad {
    what: &'static str,
    token: String,
    reason: &'static str,
}

fn bad_tokens() -> Vec<Bad> {
    let now = unix_now();
    let mut expired = claims("mallory", "admin", 0);
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut not_yet = claims("mallory", "admin", 7200);
    not_yet["nbf"] = json!(now + 3600);
    let mut wrong_iss = claims("mallory", "admin", 3600);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = claims("mallory", "admin", 3600);
    wrong_aud["aud"] = json!("another-service");
    vec![
        Bad {
            what: "malformed",
            token: "this-is-not-a-jwt".into(),
            reason: "malformed token",
        },
        Bad {
            what: "wrong signature",
            token: sign_hs256(
                b"not-the-server-secret-0123456789abcdef",
                &claims("mallory", "admin", 3600),
            ),
            reason: "bad signature",
        },
        Bad {
            what: "alg none",
            token: unsigned_token(&claims("mallory", "admin", 3600)),
            reason: "algorithm not allowed",
        },
        Bad {
            what: "expired",
            token: sign_hs256(JWT_SECRET.as_bytes(), &expired),
            reason: "token expired",
        },
        Bad {
            what: "not yet valid",
            token: sign_hs256(JWT_SECRET.as_bytes(), &not_yet),
            reason: "token not yet valid",
        },
        Bad {
            what: "wrong iss",
            token: sign_hs256(JWT_SECRET.as_bytes(), &wrong_iss),
            reason: "wrong issuer",
        },
        Bad {
            what: "wrong aud",
            token: sign_hs256(JWT_SECRET.as_bytes(), &wrong_aud),
            reason: "wrong audience",
        },
    ]
}

/// Presents every bad token at every place: HTTP 401 (with the reason) before any upgrade,
/// or `reject` `NOT_AUTHORIZED` and 4001 in band; the witness keeps working throughout.
async fn assert_all_refused(
    server: &TestServer,
    codec: Codec,
    bad: &[Bad],
    witness: &mut RawClient,
) {
    let mut id = 1000;
    for bad in bad {
        for at in CredentialAt::ALL {
            let (status, body) = refused_upgrade(server.addr, Some((at, &bad.token)), &[]).await;
            assert_eq!(status, 401, "{} token in {at:?}: {body}", bad.what);
            assert_eq!(body, bad.reason, "{} token in {at:?}", bad.what);
            id += 1;
            witness.assert_echo(id).await;
        }
        let mut client = RawClient::hello(server.addr, codec, Some(&bad.token)).await;
        client
            .assert_rejected("NOT_AUTHORIZED", bad.reason, 4001)
            .await;
        id += 1;
        witness.assert_echo(id).await;
    }
    // The refused connections do not linger: only the witness is left.
    support::wait_until("the refused connections to end", || {
        server.server.connection_count() == 1
    })
    .await;
}

async fn bad_credentials_are_refused_everywhere(codec: Codec) {
    let server = start_with(auth_builder()).await;
    let mut witness = witness(&server, codec).await;
    assert_all_refused(&server, codec, &bad_tokens(), &mut witness).await;
}

async fn valid_credentials_are_accepted_everywhere(codec: Codec) {
    let server = start_with(auth_builder()).await;
    let mut witness = witness(&server, codec).await;
    let token = token("bob", "chat:read chat:write", 3600);
    for at in CredentialAt::ALL {
        // Welcome comes first, without a hello.
        let mut client = RawClient::connect_with(server.addr, codec, Some((at, &token))).await;
        assert_eq!(client.welcome["user"], "bob", "{at:?}");
        let me = client.call(1, "whoami", json!(null)).await;
        assert_eq!(
            me["d"],
            json!({"user": "bob", "permissions": ["chat:read", "chat:write"]}),
            "{at:?}"
        );
        client.close().await;
    }
    let mut client = RawClient::hello(server.addr, codec, Some(&token)).await;
    assert_eq!(client.expect_welcome().await["user"], "bob");
    client.assert_echo(1).await;
    witness.assert_echo(1).await;
}

async fn in_band_hello_is_awaited_before_welcome(codec: Codec) {
    let server = start_with(auth_builder()).await;
    let mut witness = witness(&server, codec).await;
    // No credential in the upgrade is not 401: the server waits for the hello.
    let ws = try_upgrade(server.addr, codec, None, &[])
        .await
        .expect("an upgrade without credential is accepted");
    let mut client = RawClient::unwelcomed(ws, codec);
    client.expect_silence(Duration::from_millis(300)).await;
    let token = token("carol", "", 3600);
    client
        .send_json(json!({"t": "hello", "token": token, "data": {"device": "test"}}))
        .await;
    assert_eq!(client.expect_welcome().await["user"], "carol");
    client.assert_echo(1).await;

    // A hello without token, or with an empty one, is a missing credential.
    for hello in [json!({"t": "hello"}), json!({"t": "hello", "token": ""})] {
        let ws = try_upgrade(server.addr, codec, None, &[]).await.unwrap();
        let mut client = RawClient::unwelcomed(ws, codec);
        client.send_json(hello).await;
        client
            .assert_rejected("NOT_AUTHORIZED", "missing credential", 4001)
            .await;
    }
    witness.assert_echo(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_public_key_used_as_hmac_secret_is_refused() {
    // The classic key-confusion attack: the server verifies RS256 with a public key; the
    // attacker signs HS256 with that same public key, as bytes, for a secret.
    let config = JwtConfig::public_key(test_key("rsa_public.pem"))
        .with_issuer(support::JWT_ISSUER)
        .with_audience(support::JWT_AUDIENCE);
    let server = start_with(
        Server::builder()
            .router(sys())
            .authenticator(JwtAuthenticator::new(config).expect("RSA config")),
    )
    .await;
    let private = std::fs::read(test_key("rsa_private.pem")).unwrap();
    let public = std::fs::read(test_key("rsa_public.pem")).unwrap();

    // A genuine RS256 token is accepted at every place.
    let genuine = sign_rs256(&private, &claims("alice", "", 3600));
    let mut witness = RawClient::connect_with(
        server.addr,
        Codec::Json,
        Some((CredentialAt::Header, &genuine)),
    )
    .await;
    assert_eq!(witness.welcome["user"], "alice");
    for at in [CredentialAt::Cookie, CredentialAt::Query] {
        let client = RawClient::connect_with(server.addr, Codec::Json, Some((at, &genuine))).await;
        client.close().await;
    }
    let mut client = RawClient::hello(server.addr, Codec::Json, Some(&genuine)).await;
    client.expect_welcome().await;
    client.close().await;

    let forged = sign_hs256(&public, &claims("mallory", "admin", 3600));
    let forged_pkcs1 = sign_hs256(
        &std::fs::read(test_key("rsa_public_pkcs1.pem")).unwrap(),
        &claims("mallory", "admin", 3600),
    );
    let bad = [
        Bad {
            what: "HS256 with the public key (SPKI)",
            token: forged,
            reason: "algorithm not allowed",
        },
        Bad {
            what: "HS256 with the public key (PKCS#1)",
            token: forged_pkcs1,
            reason: "algorithm not allowed",
        },
        Bad {
            what: "alg none",
            token: unsigned_token(&claims("mallory", "admin", 3600)),
            reason: "algorithm not allowed",
        },
    ];
    assert_all_refused(&server, Codec::Json, &bad, &mut witness).await;
    witness.assert_echo(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_credential_without_the_connect_permission_is_forbidden() {
    let server = start_with(auth_builder().connect_permission("chat:connect")).await;
    let allowed = token("alice", "chat:connect", 3600);
    let mut witness = RawClient::connect_with(
        server.addr,
        Codec::Json,
        Some((CredentialAt::Header, &allowed)),
    )
    .await;
    let message = "the `chat:connect` permission is needed to connect";
    let lacking = token("bob", "chat:read admin", 3600);
    let mut id = 0;
    for at in CredentialAt::ALL {
        let (status, body) = refused_upgrade(server.addr, Some((at, &lacking)), &[]).await;
        assert_eq!((status, body.as_str()), (403, message), "{at:?}");
        // An invalid token is still 401, not 403.
        let (status, _) = refused_upgrade(server.addr, Some((at, "junk")), &[]).await;
        assert_eq!(status, 401, "{at:?}");
        id += 1;
        witness.assert_echo(id).await;
    }
    let mut client = RawClient::hello(server.addr, Codec::Json, Some(&lacking)).await;
    client.assert_rejected("FORBIDDEN", message, 4003).await;
    let mut client = RawClient::hello(server.addr, Codec::Json, Some("junk")).await;
    client
        .assert_rejected("NOT_AUTHORIZED", "malformed token", 4001)
        .await;

    // With the permission: every place works.
    for at in CredentialAt::ALL {
        let client = RawClient::connect_with(server.addr, Codec::Json, Some((at, &allowed))).await;
        client.close().await;
    }
    let mut client = RawClient::hello(server.addr, Codec::Json, Some(&allowed)).await;
    client.expect_welcome().await;
    client.assert_echo(1).await;
    witness.assert_echo(100).await;
}

/// A server whose `effect.*` handlers count every time they run.
async fn start_counting(handshake_timeout: Duration) -> (TestServer, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let (req, ntf, sub) = (runs.clone(), runs.clone(), runs.clone());
    let router = sys()
        .merge(whoami())
        .request("effect.bump", move |_: Value| {
            let runs = req.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RpcError>(())
            }
        })
        .notify("effect.note", move |_: Value| {
            let runs = ntf.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        })
        .stream("effect.watch", move |_: Value| {
            let runs = sub.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RpcError>(futures_util::stream::iter([Ok::<_, RpcError>(1)]))
            }
        });
    let mut config = config();
    config.limits.handshake_timeout = handshake_timeout;
    let builder = Server::builder()
        .router(router)
        .config(config)
        .authenticator(jwt_authenticator())
        .channels(
            Namespaces::new().namespace(
                "room:*",
                ChannelOptions::default()
                    .client_publish(true)
                    .public_access(),
            ),
        );
    (start_with(builder).await, runs)
}

/// The next event must be the close frame `code`, with no frame before it.
async fn assert_closed_without_frames(client: &mut RawClient, code: u16, what: &str) {
    match client.next_event(TIMEOUT).await {
        Some(Event::Close(Some(got))) => assert_eq!(got, code, "{what}"),
        other => panic!("{what}: expected close {code} first, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_welcome_close_4000_and_are_never_served() {
    let (server, runs) = start_counting(Duration::from_secs(10)).await;
    let mut witness = witness(&server, Codec::Json).await;
    let firsts = [
        json!({"t": "req", "id": 1, "m": "effect.bump", "d": null}),
        json!({"t": "ntf", "m": "effect.note", "d": null}),
        json!({"t": "sub", "id": 1, "m": "effect.watch", "d": null}),
        json!({"t": "join", "id": 1, "ch": "room:1"}),
        json!({"t": "pub", "id": 1, "ch": "room:1", "d": {"x": 1}}),
        json!({"t": "req", "id": 1, "m": "$history", "d": {"ch": "room:1"}}),
        json!({"t": "ping"}),
        json!({"t": "res", "id": 1, "d": {"token": "x"}}),
        json!({"t": "cancel", "id": 1}),
    ];
    for first in firsts {
        for codec in [Codec::Json, Codec::MsgPack] {
            let ws = try_upgrade(server.addr, codec, None, &[]).await.unwrap();
            let mut client = RawClient::unwelcomed(ws, codec);
            client.send_json(first.clone()).await;
            // A valid hello after it comes too late.
            client
                .send_json(json!({"t": "hello", "token": token("eve", "", 3600)}))
                .await;
            assert_closed_without_frames(&mut client, 4000, &first.to_string()).await;
        }
        witness.assert_echo(1).await;
    }
    // Not even a hello: junk, the wrong message type, a hello with a token of the wrong type.
    let ws = try_upgrade(server.addr, Codec::Json, None, &[])
        .await
        .unwrap();
    let mut client = RawClient::unwelcomed(ws, Codec::Json);
    client.send_text("{not json").await;
    assert_closed_without_frames(&mut client, 4000, "junk").await;
    let ws = try_upgrade(server.addr, Codec::Json, None, &[])
        .await
        .unwrap();
    let mut client = RawClient::unwelcomed(ws, Codec::Json);
    client.send_binary(b"\x81\xa1t\xa5hello".to_vec()).await;
    assert_closed_without_frames(&mut client, 4000, "binary on JSON").await;
    let ws = try_upgrade(server.addr, Codec::Json, None, &[])
        .await
        .unwrap();
    let mut client = RawClient::unwelcomed(ws, Codec::Json);
    client.send_text(r#"{"t":"hello","token":42}"#).await;
    assert_closed_without_frames(&mut client, 4000, "hello with a numeric token").await;

    // The closed connections are gone, and nothing was ever run for them.
    support::wait_until("the refused connections to end", || {
        server.server.connection_count() == 1
    })
    .await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a frame before welcome was served"
    );
    assert!(
        server.server.hub().channels().is_empty(),
        "a join before welcome was served"
    );
    // The same methods do run once the session is open.
    let mut client = RawClient::connect_with(
        server.addr,
        Codec::Json,
        Some((CredentialAt::Header, &token("eve", "", 3600))),
    )
    .await;
    let res = client.call(1, "effect.bump", json!(null)).await;
    assert_eq!(res, json!({"t": "res", "id": 1, "d": null}));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    witness.assert_echo(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_right_after_hello_wait_for_its_verdict() {
    let (server, runs) = start_counting(Duration::from_secs(10)).await;
    let mut witness = witness(&server, Codec::Json).await;
    for codec in [Codec::Json, Codec::MsgPack] {
        // Refused: what followed the hello is never served.
        let ws = try_upgrade(server.addr, codec, None, &[]).await.unwrap();
        let mut client = RawClient::unwelcomed(ws, codec);
        client
            .feed_json(json!({"t": "hello", "token": "junk"}))
            .await;
        client
            .feed_json(json!({"t": "req", "id": 1, "m": "effect.bump", "d": null}))
            .await;
        client
            .feed_json(json!({"t": "ntf", "m": "effect.note", "d": null}))
            .await;
        client.flush().await;
        client
            .assert_rejected("NOT_AUTHORIZED", "malformed token", 4001)
            .await;
        // Accepted: served after the welcome, as the user the hello named.
        let ws = try_upgrade(server.addr, codec, None, &[]).await.unwrap();
        let mut client = RawClient::unwelcomed(ws, codec);
        client
            .feed_json(json!({"t": "hello", "token": token("carol", "", 3600)}))
            .await;
        client
            .feed_json(json!({"t": "req", "id": 1, "m": "whoami", "d": null}))
            .await;
        client
            .feed_json(json!({"t": "req", "id": 2, "m": "admin.reset", "d": null}))
            .await;
        client.flush().await;
        assert_eq!(client.expect_welcome().await["user"], "carol");
        assert_eq!(
            client.recv_json().await,
            json!({"t": "res", "id": 1, "d": {"user": "carol", "permissions": []}})
        );
        support::assert_err(&client.recv_json().await, Some(2), "FORBIDDEN");
    }
    witness.assert_echo(1).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a frame after a refused hello ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hello_within_the_handshake_timeout_closes_4000() {
    let timeout = Duration::from_millis(400);
    let (server, _runs) = start_counting(timeout).await;
    let mut witness = witness(&server, Codec::Json).await;
    let started = Instant::now();
    let ws = try_upgrade(server.addr, Codec::Json, None, &[])
        .await
        .unwrap();
    let mut client = RawClient::unwelcomed(ws, Codec::Json);
    assert_closed_without_frames(&mut client, 4000, "no hello").await;
    let waited = started.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(50),
        "closed after {waited:?}, before the handshake timeout {timeout:?}"
    );
    witness.assert_echo(1).await;
    support::wait_until("the silent connection to end", || {
        server.server.connection_count() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hello_cannot_switch_the_user() {
    let server = start_with(auth_builder()).await;
    let alice = token("alice", "", 3600);
    let mut client = RawClient::connect_with(
        server.addr,
        Codec::Json,
        Some((CredentialAt::Header, &alice)),
    )
    .await;
    let admin = token("root", "admin", 3600);
    client
        .send_json(json!({"t": "hello", "token": admin}))
        .await;
    let me = client.call(1, "whoami", json!(null)).await;
    assert_eq!(me["d"], json!({"user": "alice", "permissions": []}));
    let reply = client.call(2, "admin.reset", json!(null)).await;
    support::assert_err(&reply, Some(2), "FORBIDDEN");

    // Likewise after an in-band session start.
    let mut client = RawClient::hello(server.addr, Codec::MsgPack, Some(&alice)).await;
    client.expect_welcome().await;
    client
        .send_json(json!({"t": "hello", "token": token("root", "admin", 3600)}))
        .await;
    let reply = client.call(1, "admin.reset", json!(null)).await;
    support::assert_err(&reply, Some(1), "FORBIDDEN");
}
