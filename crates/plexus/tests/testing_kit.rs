//! The test kit (`plexus::testing`, feature `testing`) as an application's tests use it: a
//! chat service's handlers tested in a few lines each.

use std::time::Duration;

use plexus::testing::TestServer;
use plexus::{CallContext, ChannelOptions, ErrorCode, Namespaces, Router, RpcError, Server};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Said {
    text: String,
}

/// The application under test: rooms clients publish to, and `chat.say`, which checks a
/// message and acknowledges it to the speaker with a notification.
fn chat() -> plexus::ServerBuilder {
    let router = Router::new().request("chat.say", |ctx: CallContext, say: Say| async move {
        if say.text.is_empty() {
            return Err(RpcError::new(ErrorCode::VALIDATION_ERROR, "nothing to say"));
        }
        ctx.conn()
            .notify(
                "chat.ack",
                &json!({"room": say.room, "length": say.text.len()}),
            )
            .map_err(|e| RpcError::new(ErrorCode::INTERNAL, e.to_string()))?;
        Ok(say.text.len())
    });
    Server::builder().router(router).channels(
        Namespaces::new().namespace(
            "room:*",
            ChannelOptions::default()
                .client_publish(true)
                .public_access(),
        ),
    )
}

#[tokio::test]
async fn a_message_reaches_the_room_and_the_speaker_is_told() {
    let server = TestServer::start(chat()).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let mut room = bob.join("room:lobby").await;

    let offset = alice
        .publish("room:lobby", &Said { text: "hi".into() })
        .await;
    assert_eq!(
        room.publication::<Said>().await,
        (offset, Said { text: "hi".into() })
    );
    let length: usize = alice
        .call("chat.say", &json!({"room": "lobby", "text": "hi"}))
        .await
        .expect("said");
    assert_eq!(length, 2);
    // Only the speaker is acknowledged.
    let ack: Value = alice.notification("chat.ack").await;
    assert_eq!(ack, json!({"room": "lobby", "length": 2}));
    bob.no_notification("chat.ack", Duration::from_millis(50))
        .await;

    let error = alice
        .call::<u64>("chat.say", &json!({"room": "lobby", "text": ""}))
        .await
        .expect_err("refused");
    assert_eq!(*error.code(), ErrorCode::VALIDATION_ERROR);
}

#[tokio::test]
async fn the_hub_reaches_a_client_by_its_connection_id() {
    let server = TestServer::start(chat()).await;
    let mut carol = server.client().await;
    server
        .hub()
        .notify(
            &carol.conn_id(),
            "chat.note",
            &json!({"text": "from the server"}),
        )
        .await
        .expect("notified");
    let note: Value = carol.notification("chat.note").await;
    assert_eq!(note["text"], "from the server");
}

// On Tokio's paused clock: the kit's clients reach the server through in-memory pipes, so
// the clock only moves when every task waits, and what a timer causes is tested at once.

#[tokio::test(start_paused = true)]
async fn an_hour_long_handler_times_out_at_once_on_the_paused_clock() {
    let router = Router::new()
        .request("report.slow", |_: ()| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, RpcError>("done")
        })
        .request(
            "report.fast",
            |_: ()| async move { Ok::<_, RpcError>("done") },
        );
    let server = TestServer::start(Server::builder().router(router)).await;
    let alice = server.client().await;
    let (virtual_start, real_start) = (tokio::time::Instant::now(), std::time::Instant::now());
    // The client's call timeout (30 s) passes without anyone waiting for it.
    let error = alice
        .client()
        .request::<String>("report.slow", &())
        .await
        .expect_err("timed out");
    assert!(error.is_timeout(), "{error}");
    assert!(virtual_start.elapsed() >= Duration::from_secs(30));
    assert!(real_start.elapsed() < Duration::from_secs(5));
    // The connection is fine: the next call is answered.
    let answer: String = alice.call("report.fast", &()).await.expect("answered");
    assert_eq!(answer, "done");
}

#[tokio::test(start_paused = true)]
async fn a_periodic_job_publishes_when_its_hour_comes() {
    let server = TestServer::start(chat()).await;
    let hub = server.hub().clone();
    let every = Duration::from_secs(3600);
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        for tick in 1u32.. {
            hourly.tick().await;
            let _ = hub.publish("room:clock", &json!({ "tick": tick })).await;
        }
    });
    let dave = server.client().await;
    let mut clock = dave.join("room:clock").await;
    // Sleeping lets the hour pass timer by timer, heartbeats included; `advance(every)` would
    // fire the idle checks of a whole hour at once and cut both ends as silent.
    tokio::time::sleep(every).await;
    let (_, first) = clock.publication::<Value>().await;
    assert_eq!(first, json!({"tick": 1}));
    tokio::time::sleep(every).await;
    let (_, second) = clock.publication::<Value>().await;
    assert_eq!(second, json!({"tick": 2}));
}

#[tokio::test(start_paused = true)]
async fn advancing_the_clock_by_hand_fires_what_is_due() {
    let server = TestServer::start(chat()).await;
    let hub = server.hub().clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = hub.publish("room:alarm", &json!("ring")).await;
    });
    let frank = server.client().await;
    let mut alarm = frank.join("room:alarm").await;
    // Shorter than a heartbeat interval: nothing else is due on the way.
    plexus::testing::time::advance(Duration::from_secs(10)).await;
    assert_eq!(alarm.publication::<String>().await.1, "ring");
}

#[tokio::test(start_paused = true)]
async fn a_day_of_heartbeats_keeps_an_idle_client_on_one_connection() {
    // The default heartbeat: a ping every 25 s, a peer silent for two intervals is cut.
    let server = TestServer::start(chat()).await;
    let erin = server.client().await;
    let conn = erin.conn_id();
    let real_start = std::time::Instant::now();
    // Timer by timer: every ping is answered before the idle check that follows it.
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    // About 3,500 pings in a debug build on a busy machine: well under a minute.
    assert!(real_start.elapsed() < Duration::from_secs(60));
    assert_eq!(erin.conn_id(), conn, "never reconnected");
    assert_eq!(server.server().connection_count(), 1);
    let length: usize = erin
        .call("chat.say", &json!({"room": "lobby", "text": "still here"}))
        .await
        .expect("answered");
    assert_eq!(length, 10);
}

#[tokio::test]
async fn a_handler_reads_the_upgrade_requests_headers_but_not_the_handshakes() {
    let router = Router::new().request("whoami.tenant", |ctx: CallContext, _: ()| async move {
        let header = |name: &str| {
            ctx.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok::<_, RpcError>(json!({
            "tenant": header("x-tenant"),
            "key": header("sec-websocket-key"),
        }))
    });
    let server = TestServer::start(Server::builder().router(router)).await;
    let options = plexus::ClientOptions::default().header(
        http::HeaderName::from_static("x-tenant"),
        http::HeaderValue::from_static("acme"),
    );
    let client = server.client_with(options).await;
    let seen: Value = client.call("whoami.tenant", &()).await.expect("answered");
    assert_eq!(seen, json!({"tenant": "acme", "key": null}));
}
