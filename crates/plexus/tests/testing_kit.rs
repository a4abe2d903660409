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
