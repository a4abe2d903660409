//! End-to-end: contracts declared with `#[plexus::contract]`, served by a real server and
//! called through their typed client stubs over real sockets: every kind of method, typed
//! application errors with their code and data, a stream cancelled by dropping it, a
//! timeout that cancels on the server, two contracts on one connection, the call's context,
//! declared permissions under strict mode, a name served twice refused at start, a contract
//! the server calls on its clients (served by the client's router), and one provided through
//! a relay by two provider processes' clients, called round-robin and pinned to a node.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use plexus::contract::{ItemStream, MethodInfo, MethodKind};
use plexus::{CallContext, ClientOptions, ErrorCode, Router, RpcError, Server, contract};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::{TestServer, recv, start_with};
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Line {
    room: String,
    text: String,
}

/// What `purge` answers (a type only an admin's methods use).
#[derive(Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Purged {
    lines: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Sent {
    number: u64,
}

/// An application error, with data a caller can act on.
#[derive(Debug)]
enum ChatError {
    TooLong { max: usize },
}

impl From<ChatError> for RpcError {
    fn from(error: ChatError) -> Self {
        match error {
            ChatError::TooLong { max } => {
                RpcError::new(ErrorCode::VALIDATION_ERROR, "the line is too long")
                    .with_data(&json!({ "max": max }))
            }
        }
    }
}

/// A chat room.
#[contract]
trait Chat {
    /// Posts a line.
    #[public]
    async fn send(&self, line: Line) -> Result<Sent, ChatError>;

    /// Someone is typing.
    #[notification]
    #[public]
    async fn typing(&self, who: String);

    /// `count` numbered lines, one every 10 ms (`count` 0: without end).
    #[stream]
    #[public]
    async fn lines(&self, count: u64) -> Result<ItemStream<Line>, RpcError>;

    /// Who is asking, from the call's context.
    #[public]
    async fn whoami(&self, ctx: CallContext) -> Result<String, RpcError>;

    /// Answers after `millis`, or reports that it was cancelled.
    #[public]
    #[rename = "sleepFor"]
    async fn sleep(&self, millis: u64) -> Result<(), RpcError>;

    /// Only for admins.
    #[requires("chat:admin")]
    async fn purge(&self) -> Result<Purged, RpcError>;

    /// Like `sleepFor`, with a deadline of its own on callers' stubs.
    #[public]
    #[timeout_ms = 100]
    async fn nap(&self, millis: u64) -> Result<(), RpcError>;

    /// An old name, still served (a deprecated method compiles without warnings here).
    #[public]
    #[deprecated = "use send"]
    async fn post(&self, line: Line) -> Result<Sent, ChatError>;

    /// A raw identifier: `Chat.type` on the wire.
    #[public]
    async fn r#type(&self) -> Result<String, RpcError>;
}

/// Presence, a second contract on the same connection.
#[contract(name = "presence")]
trait Presence {
    #[public]
    async fn count(&self) -> Result<u32, RpcError>;
}

/// What the implementation saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Typing(String),
    StreamDropped,
    SleepCancelled,
}

struct Room {
    seen: mpsc::UnboundedSender<Seen>,
    sent: Mutex<u64>,
}

/// Tells the test when a stream the server was sending is dropped (the call's cancel).
struct DropGuard(mpsc::UnboundedSender<Seen>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.0.send(Seen::StreamDropped);
    }
}

impl Chat for Room {
    async fn send(&self, line: Line) -> Result<Sent, ChatError> {
        if line.text.len() > 10 {
            return Err(ChatError::TooLong { max: 10 });
        }
        let mut sent = self.sent.lock().expect("not poisoned");
        *sent += 1;
        Ok(Sent { number: *sent })
    }

    async fn typing(&self, who: String) {
        let _ = self.seen.send(Seen::Typing(who));
    }

    async fn lines(&self, count: u64) -> Result<ItemStream<Line>, RpcError> {
        let guard = DropGuard(self.seen.clone());
        let numbers = futures_util::stream::iter(1..).take_while(move |n| {
            let go = count == 0 || *n <= count;
            async move { go }
        });
        Ok(Box::pin(numbers.then(move |n: u64| {
            let _keep = &guard;
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(Line {
                    room: "r".into(),
                    text: format!("line {n}"),
                })
            }
        })))
    }

    async fn whoami(&self, ctx: CallContext) -> Result<String, RpcError> {
        Ok(ctx.connection_id().to_owned())
    }

    async fn sleep(&self, millis: u64) -> Result<(), RpcError> {
        struct Cancelled(Option<mpsc::UnboundedSender<Seen>>);
        impl Drop for Cancelled {
            fn drop(&mut self) {
                if let Some(seen) = self.0.take() {
                    let _ = seen.send(Seen::SleepCancelled);
                }
            }
        }
        let mut cancelled = Cancelled(Some(self.seen.clone()));
        tokio::time::sleep(Duration::from_millis(millis)).await;
        cancelled.0 = None;
        Ok(())
    }

    async fn purge(&self) -> Result<Purged, RpcError> {
        Ok(Purged { lines: 0 })
    }

    async fn nap(&self, millis: u64) -> Result<(), RpcError> {
        self.sleep(millis).await
    }

    async fn post(&self, line: Line) -> Result<Sent, ChatError> {
        self.send(line).await
    }

    async fn r#type(&self) -> Result<String, RpcError> {
        Ok("chat".into())
    }
}

struct Counter;

impl Presence for Counter {
    async fn count(&self) -> Result<u32, RpcError> {
        Ok(7)
    }
}

async fn serve() -> (TestServer, mpsc::UnboundedReceiver<Seen>) {
    let (tx, seen) = mpsc::unbounded_channel();
    let room = Room {
        seen: tx,
        sent: Mutex::new(0),
    };
    let router = ChatContract::router(room).merge(PresenceContract::router(Counter));
    (start_with(Server::builder().router(router)).await, seen)
}

async fn stubs(server: &TestServer) -> (ChatClient, PresenceClient) {
    let url = format!("ws://{}/ws", server.addr);
    let client = plexus::connect(&url, ClientOptions::default())
        .await
        .expect("connect");
    (ChatClient::new(client.clone()), PresenceClient::new(client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_method_over_one_connection_with_two_contracts() {
    let (server, mut seen) = serve().await;
    let (chat, presence) = stubs(&server).await;
    let line = Line {
        room: "r".into(),
        text: "hello".into(),
    };
    assert_eq!(chat.send(&line).await.expect("send"), Sent { number: 1 });
    assert_eq!(chat.send(&line).await.expect("send"), Sent { number: 2 });
    chat.typing(&"ada".to_owned()).await.expect("typing");
    assert_eq!(recv(&mut seen, "typing").await, Seen::Typing("ada".into()));
    let lines: Vec<Line> = chat
        .lines(&3)
        .await
        .expect("open")
        .map(|line| line.expect("a line"))
        .collect()
        .await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["line 1", "line 2", "line 3"]);
    assert_eq!(
        recv(&mut seen, "the finished stream").await,
        Seen::StreamDropped
    );
    // The context: the connection the call came on.
    let me = chat.whoami().await.expect("whoami");
    assert_eq!(Some(me.as_str()), chat.client().conn_id().as_deref());
    // The second contract, on the same connection, under its own name.
    assert_eq!(presence.count().await.expect("count"), 7);
    assert_eq!(
        PresenceContract::METHODS,
        [MethodInfo {
            name: "presence.count",
            kind: MethodKind::Request
        }]
    );
    assert_eq!(ChatContract::NAME, "Chat");
    assert_eq!(chat.r#type().await.expect("type"), "chat");
    assert!(ChatContract::METHODS.iter().any(|m| m.name == "Chat.type"));
    assert!(
        ChatContract::METHODS
            .iter()
            .any(|m| m.name == "Chat.sleepFor")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_error_arrives_with_its_code_and_data() {
    let (server, _seen) = serve().await;
    let (chat, _) = stubs(&server).await;
    let long = Line {
        room: "r".into(),
        text: "far too long a line".into(),
    };
    let error = chat.send(&long).await.expect_err("too long");
    assert_eq!(*error.code(), ErrorCode::VALIDATION_ERROR);
    assert_eq!(error.message(), "the line is too long");
    let data: serde_json::Value = error.data().expect("data").decode().expect("json");
    assert_eq!(data, json!({"max": 10}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_it_and_a_timeout_cancels_the_call() {
    let (server, mut seen) = serve().await;
    let (chat, _) = stubs(&server).await;
    let mut endless = chat.lines(&0).await.expect("open");
    for _ in 0..3 {
        endless.next().await.expect("an item").expect("a line");
    }
    drop(endless);
    assert_eq!(recv(&mut seen, "the cancel").await, Seen::StreamDropped);

    let error = chat
        .sleep(&60_000)
        .timeout(Duration::from_millis(100))
        .await
        .expect_err("the timeout");
    assert_eq!(*error.code(), ErrorCode::TIMEOUT);
    assert_eq!(recv(&mut seen, "the cancel").await, Seen::SleepCancelled);
    chat.sleep(&1).await.expect("a short one answers");
    // A method's own deadline (#[timeout_ms = 100]) needs nothing of the caller.
    let error = chat.nap(&60_000).await.expect_err("its deadline");
    assert_eq!(*error.code(), ErrorCode::TIMEOUT);
    assert_eq!(recv(&mut seen, "the cancel").await, Seen::SleepCancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_permissions_hold_and_satisfy_strict_mode() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let room = Room {
        seen: tx,
        sent: Mutex::new(0),
    };
    let server = start_with(
        Server::builder()
            .strict(true)
            .router(ChatContract::router(room)),
    )
    .await;
    let (chat, _) = stubs(&server).await;
    let error = chat.purge().await.expect_err("not an admin");
    assert_eq!(*error.code(), ErrorCode::FORBIDDEN);
    chat.whoami().await.expect("a public method");
}

#[test]
fn a_name_served_twice_stops_the_start_naming_it() {
    let twice = std::panic::catch_unwind(|| {
        PresenceContract::router(Counter).merge(PresenceContract::router(Counter))
    });
    let panic = twice.expect_err("served twice");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("presence.count"), "{message}");
    // Another router serving a contract's name is refused the same way.
    let other = std::panic::catch_unwind(|| {
        Router::new()
            .request("presence.count", |_: ()| async { Ok::<_, RpcError>(1) })
            .merge(PresenceContract::router(Counter))
    });
    assert!(other.is_err());
}

/// What the server asks of its clients.
#[contract]
trait Device {
    /// "Are you there?"
    async fn are_you_there(&self) -> Result<bool, RpcError>;

    #[notification]
    async fn new_message(&self, line: Line);

    #[stream]
    async fn readings(&self, count: u32) -> Result<ItemStream<u32>, RpcError>;
}

struct Phone {
    messages: mpsc::UnboundedSender<Line>,
}

impl Device for Phone {
    async fn are_you_there(&self) -> Result<bool, RpcError> {
        Ok(true)
    }

    async fn new_message(&self, line: Line) {
        let _ = self.messages.send(line);
    }

    async fn readings(&self, count: u32) -> Result<ItemStream<u32>, RpcError> {
        Ok(Box::pin(futures_util::stream::iter((1..=count).map(Ok))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_calls_a_contract_its_client_serves() {
    let (builder, mut conns) = support::with_connect_hook(Server::builder());
    let server = start_with(builder).await;
    let (messages, mut received) = mpsc::unbounded_channel();
    let url = format!("ws://{}/ws", server.addr);
    let options =
        ClientOptions::default().router(DeviceContract::client_router(Phone { messages }));
    let _client = plexus::connect(&url, options).await.expect("connect");
    let device = DeviceConnection::new(recv(&mut conns, "the connection").await);
    assert!(device.are_you_there().await.expect("an answer"));
    let line = Line {
        room: "r".into(),
        text: "for you".into(),
    };
    device.new_message(&line).expect("sent");
    assert_eq!(recv(&mut received, "the notification").await, line);
    let readings: Vec<u32> = device
        .readings(&3)
        .await
        .expect("open")
        .map(|reading| reading.expect("a reading"))
        .collect()
        .await;
    assert_eq!(readings, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_lists_its_contracts_with_their_json_schemas() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let room = Room {
        seen: tx,
        sent: Mutex::new(0),
    };
    let router = ChatContract::router(room)
        .merge(PresenceContract::router(Counter))
        .describe(DeviceContract::client_schema());
    let server = start_with(
        Server::builder()
            .router(router)
            .authenticator(support::jwt_authenticator()),
    )
    .await;
    let url = format!("ws://{}/ws", server.addr);
    let as_user = |scope: &str| ClientOptions::default().token(support::token("ada", scope, 600));
    let client = plexus::connect(&url, as_user("")).await.expect("connect");
    let listed: Vec<Value> = client
        .request("$contracts", &Value::Null)
        .await
        .expect("$contracts");
    let names: Vec<(&str, &str)> = listed
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name"),
                c["served_by"].as_str().expect("side"),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("Chat", "server"),
            ("presence", "server"),
            ("Device", "client")
        ]
    );
    let chat = &listed[0];
    let method = |name: &str| -> &Value {
        chat["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    // Without `chat:admin`, the caller is not shown `purge`.
    assert!(
        chat["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .all(|m| m["name"] != "Chat.purge")
    );
    assert_eq!(chat["description"], "A chat room.");
    let send = method("Chat.send");
    assert_eq!(send["kind"], "request");
    assert_eq!(send["description"], "Posts a line.");
    assert_eq!(send["params"], json!({"$ref": "#/$defs/Line"}));
    assert_eq!(send["result"], json!({"$ref": "#/$defs/Sent"}));
    let line = &chat["$defs"]["Line"];
    assert_eq!(line["type"], "object");
    assert_eq!(line["properties"]["text"]["type"], "string");
    assert_eq!(line["required"], json!(["room", "text"]));
    assert_eq!(method("Chat.typing")["kind"], "notification");
    assert_eq!(method("Chat.typing")["params"]["type"], "string");
    assert!(method("Chat.typing").get("result").is_none());
    assert_eq!(method("Chat.lines")["kind"], "stream");
    assert_eq!(
        method("Chat.lines")["result"],
        json!({"$ref": "#/$defs/Line"})
    );
    // No parameter: none listed (the caller sends null).
    assert!(method("Chat.type").get("params").is_none());
    assert_eq!(method("Chat.nap")["timeout_ms"], 100);
    assert_eq!(method("Chat.post")["deprecated"], true);
    assert!(method("Chat.send").get("deprecated").is_none());
    // The Rust side reads the same document.
    let typed: Vec<plexus::contract::ContractSchema> = client
        .request("$contracts", &Value::Null)
        .await
        .expect("typed");
    let mut expected = ChatContract::schema();
    expected.retain_methods(|m| m.name != "Chat.purge");
    // Nor the types only `purge` uses.
    assert!(typed[0].definitions.get("Purged").is_none());
    assert!(typed[0].definitions.get("Line").is_some());
    assert_eq!(typed[0], expected);
    assert_eq!(typed[2], DeviceContract::client_schema());

    // An admin is.
    let admin = plexus::connect(&url, as_user("chat:admin"))
        .await
        .expect("connect");
    let typed: Vec<plexus::contract::ContractSchema> = admin
        .request("$contracts", &Value::Null)
        .await
        .expect("typed");
    assert_eq!(typed[0], ChatContract::schema());
    assert!(typed[0].definitions.get("Purged").is_some());
}

/// A service provided through a relay.
#[contract]
trait Greeting {
    async fn hello(&self, name: String) -> Result<String, RpcError>;
}

struct Greeter(&'static str);

impl Greeting for Greeter {
    async fn hello(&self, name: String) -> Result<String, RpcError> {
        Ok(format!("hello {name}, from {}", self.0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_provided_through_a_relay_is_called_by_its_typed_client() {
    let relay = start_with(Server::builder().relay(plexus::server::RelayConfig::default())).await;
    let url = format!("ws://{}/ws", relay.addr);
    let mut providers = Vec::new();
    for node in ["a", "b"] {
        let options = ClientOptions::default()
            .router(GreetingContract::client_router(Greeter(node)))
            .provide(node, [GreetingContract::NAME]);
        providers.push(plexus::connect(&url, options).await.expect("a provider"));
    }
    let caller = plexus::connect(&url, ClientOptions::default())
        .await
        .expect("the caller");
    let mut watch = caller.watch_services().await.expect("watch");
    support::within("both providers", async {
        while watch.nodes_of("Greeting").len() < 2 {
            watch.next().await.expect("watch open").expect("an event");
        }
    })
    .await;
    let greeting = GreetingClient::new(caller);
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(greeting.hello(&"ada".to_owned()).await.expect("an answer"));
    }
    answers.sort();
    assert_eq!(answers, ["hello ada, from a", "hello ada, from b"]);
    let pinned = greeting
        .hello(&"bo".to_owned())
        .node("b")
        .await
        .expect("pinned");
    assert_eq!(pinned, "hello bo, from b");
}
