//! The HTTP API over a real socket: the key, publish, broadcast, channels, presence,
//! disconnect, server-side subscriptions, and bad requests.

mod support;

use plexus_server::{ChannelOptions, Codec, Namespaces, Server};
use serde_json::json;
use support::{RawClient, TestServer, config, sys};
use tokio::net::TcpListener;

const KEY: &str = "s3cret-key";

async fn start_api() -> TestServer {
    let server = Server::builder()
        .router(sys())
        .config({
            let mut config = config();
            config.limits.max_message_size = 4096;
            config
        })
        .channels(Namespaces::new().namespace("room:*", ChannelOptions::default().presence(true)))
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server.route("/ws").merge(server.api_routes(KEY));
    support::serve_app(server, listener, app, addr)
}

#[tokio::test]
async fn every_endpoint_needs_the_key() {
    let server = start_api().await;
    for (method, path, body) in [
        (
            "POST",
            "/api/publish",
            Some(r#"{"channel":"room:1","data":1}"#),
        ),
        (
            "POST",
            "/api/broadcast",
            Some(r#"{"channels":["room:1"],"data":1}"#),
        ),
        ("GET", "/api/channels", None),
        ("GET", "/api/presence?channel=room:1", None),
        ("POST", "/api/disconnect", Some(r#"{"user":"u"}"#)),
        (
            "POST",
            "/api/subscribe",
            Some(r#"{"conn":"c","channel":"room:1"}"#),
        ),
        (
            "POST",
            "/api/unsubscribe",
            Some(r#"{"conn":"c","channel":"room:1"}"#),
        ),
        ("POST", "/api/send", Some(r#"{"conn":"c","data":"x"}"#)),
    ] {
        let (status, body_json) = support::http(server.addr, method, path, None, body).await;
        assert_eq!(status, 401, "{method} {path} without a key");
        assert_eq!(body_json["error"]["code"], "NOT_AUTHORIZED");
        let (status, _) = support::http(server.addr, method, path, Some("wrong"), body).await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
    }
    // Nothing was published.
    let (_, channels) = support::http(server.addr, "GET", "/api/channels", Some(KEY), None).await;
    assert_eq!(channels, json!({"channels": []}));
}

#[tokio::test]
async fn publish_and_broadcast_reach_subscribers() {
    let server = start_api().await;
    let mut sub = RawClient::connect(server.addr, Some(Codec::MsgPack)).await;
    sub.send_json(json!({"t": "join", "id": 1, "ch": "room:1"}))
        .await;
    assert_eq!(sub.recv_json().await["t"], "res");

    let (status, body) = support::http(
        server.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(r#"{"channel":"room:1","data":{"text":"from a backend"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 1);
    assert_eq!(
        sub.recv_json().await,
        json!({"t": "msg", "ch": "room:1", "o": 1, "d": {"text": "from a backend"}})
    );

    let (status, body) = support::http(
        server.addr,
        "POST",
        "/api/broadcast",
        Some(KEY),
        Some(r#"{"channels":["room:1","room:2","elsewhere"],"data":7}"#),
    )
    .await;
    assert_eq!(status, 200);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["offset"], 2);
    assert_eq!(results[1]["offset"], 1);
    assert_eq!(results[2]["error"]["code"], "NOT_FOUND");
    assert_eq!(sub.recv_json().await["o"], 2);

    let (_, channels) = support::http(server.addr, "GET", "/api/channels", Some(KEY), None).await;
    assert_eq!(
        channels,
        json!({"channels": [{"channel": "room:1", "subscribers": 1}]})
    );
    let (_, presence) = support::http(
        server.addr,
        "GET",
        "/api/presence?channel=room:1",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(presence["members"][0]["conn"], sub.welcome["conn"]);
}

#[tokio::test]
async fn disconnect_closes_the_connection() {
    let server = start_api().await;
    let mut victim = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let mut bystander = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let body = json!({"conn": victim.welcome["conn"]}).to_string();
    let (status, answer) = support::http(
        server.addr,
        "POST",
        "/api/disconnect",
        Some(KEY),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"disconnected": 1}));
    assert_eq!(victim.recv_close().await, 1000);
    bystander.assert_echo(1).await;
    let (status, answer) = support::http(
        server.addr,
        "POST",
        "/api/disconnect",
        Some(KEY),
        Some("{}"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "VALIDATION_ERROR");
    // A close code telling the client not to come back, and one that is not allowed.
    let body = json!({"conn": bystander.welcome["conn"], "code": 4003}).to_string();
    let (status, _) = support::http(
        server.addr,
        "POST",
        "/api/disconnect",
        Some(KEY),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(bystander.recv_close().await, 4003);
    let body = json!({"user": "u", "code": 1011}).to_string();
    let (status, answer) = support::http(
        server.addr,
        "POST",
        "/api/disconnect",
        Some(KEY),
        Some(&body),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test]
async fn subscribe_and_unsubscribe_a_connection_from_the_backend() {
    let server = start_api().await;
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let conn = client.welcome["conn"].as_str().expect("a conn").to_owned();
    let post = |path: &'static str, body: String| {
        let addr = server.addr;
        async move { support::http(addr, "POST", path, Some(KEY), Some(&body)).await }
    };
    let body = json!({"conn": conn, "channel": "room:7"}).to_string();
    let (status, answer) = post("/api/subscribe", body.clone()).await;
    assert_eq!((status, answer), (200, json!({"subscribed": 1})));
    let joined = client.recv_json().await;
    assert_eq!(joined["t"], "joined");
    assert_eq!(joined["ch"], "room:7");
    let publish = json!({"channel": "room:7", "data": {"n": 1}}).to_string();
    assert_eq!(post("/api/publish", publish).await.0, 200);
    let msg = client.recv_json().await;
    assert_eq!(
        (msg["t"].clone(), msg["d"].clone()),
        (json!("msg"), json!({"n": 1}))
    );
    let (status, answer) = post("/api/unsubscribe", body).await;
    assert_eq!((status, answer), (200, json!({"unsubscribed": 1})));
    let left = client.recv_json().await;
    assert_eq!(
        (left["t"].clone(), left["ch"].clone()),
        (json!("left"), json!("room:7"))
    );
    // A connection this node does not hold (another node may: it is asked through the
    // engine), and a channel no namespace declares.
    let unknown = json!({"conn": "nobody", "channel": "room:7"}).to_string();
    let (status, answer) = post("/api/subscribe", unknown).await;
    assert_eq!((status, answer), (200, json!({"subscribed": 0})));
    let undeclared = json!({"conn": conn, "channel": "nowhere:1"}).to_string();
    let (status, answer) = post("/api/subscribe", undeclared).await;
    assert_eq!(status, 404, "{answer}");
    // The same for a connection elsewhere: the namespace is checked before the engine.
    let undeclared_elsewhere = json!({"conn": "nobody", "channel": "nowhere:1"}).to_string();
    let (status, answer) = post("/api/subscribe", undeclared_elsewhere).await;
    assert_eq!(status, 404, "{answer}");
}

#[tokio::test]
async fn bad_requests_get_defined_answers() {
    let server = start_api().await;
    let (status, body) = support::http(
        server.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some("{not json"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    let (status, _) = support::http(
        server.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(r#"{"channel":"room:1"}"#),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = support::http(
        server.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(r#"{"channel":"nowhere","data":1}"#),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let big = format!(r#"{{"channel":"room:1","data":"{}"}}"#, "x".repeat(8000));
    let (status, _) =
        support::http(server.addr, "POST", "/api/publish", Some(KEY), Some(&big)).await;
    assert_eq!(status, 413, "bodies are limited to the message size");
}
