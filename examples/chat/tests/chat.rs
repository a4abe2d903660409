//! The chat example over real sockets: two Rust members talk through the contracts in both
//! directions, and the page's generated TypeScript is what the server's `$contracts` gives.

use std::time::Duration;

use plexus::contract::ContractSchema;
use plexus::{Client, ClientOptions, ErrorCode, RpcError, Server};
use plexus_example_chat::contracts::{
    ChatClient, Member, MemberContract, Message, Post, Presence, ReadUpTo, Status,
};
use plexus_example_chat::room::Room;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// What a member's client heard from the server.
#[derive(Debug, PartialEq)]
enum Heard {
    Message(Message),
    Typing(String),
}

struct Recorder {
    heard: mpsc::UnboundedSender<Heard>,
    status: Status,
}

impl Member for Recorder {
    async fn new_message(&self, message: Message) {
        let _ = self.heard.send(Heard::Message(message));
    }

    async fn typing(&self, name: String) {
        let _ = self.heard.send(Heard::Typing(name));
    }

    async fn are_you_there(&self) -> Result<Status, RpcError> {
        Ok(self.status)
    }
}

/// The example's server on a loopback port; stops when the sender is dropped.
async fn serve(room: Room) -> (String, oneshot::Sender<()>) {
    let server = Server::builder()
        .router(plexus_example_chat::router(room))
        .build();
    let app = plexus_example_chat::page().merge(server.route("/ws"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, app, async move {
                let _ = stopped.await;
            })
            .await;
    });
    (url, stop)
}

async fn member(url: &str, status: Status) -> (ChatClient, mpsc::UnboundedReceiver<Heard>) {
    let (heard, rx) = mpsc::unbounded_channel();
    let options =
        ClientOptions::default().router(MemberContract::client_router(Recorder { heard, status }));
    let client: Client = plexus::connect(url, options).await.expect("connect");
    (ChatClient::new(client), rx)
}

async fn next(heard: &mut mpsc::UnboundedReceiver<Heard>) -> Heard {
    tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("heard in time")
        .expect("still listening")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_talk_through_the_contracts_both_ways() {
    let room = Room::default();
    let (url, _stop) = serve(room.clone()).await;
    let (ada, mut ada_heard) = member(&url, Status::Here).await;
    let (bob, mut bob_heard) = member(&url, Status::Away).await;

    // Speaking before joining is refused with the contract's own code.
    let error = ada
        .send(&Post { text: "hi".into() })
        .await
        .expect_err("not joined");
    assert_eq!(*error.code(), ErrorCode::FORBIDDEN);
    let error = ada.who().await.expect_err("not joined");
    assert_eq!(*error.code(), ErrorCode::FORBIDDEN);

    assert!(ada.join(&"ada".to_owned()).await.expect("join").is_empty());
    bob.join(&"bob".to_owned()).await.expect("join");
    let taken = bob.join(&"ada".to_owned()).await.expect_err("taken");
    assert_eq!(*taken.code(), ErrorCode::CONFLICT);
    let data: Value = taken.data().expect("data").decode().expect("json");
    assert_eq!(data, json!({"name": "ada"}));

    // A message reaches every member, the sender included, as the answer says.
    let sent = ada
        .send(&Post {
            text: " hello ".into(),
        })
        .await
        .expect("send");
    let expected = Message {
        id: 1,
        from: "ada".into(),
        text: "hello".into(),
    };
    assert_eq!(sent, expected);
    assert_eq!(next(&mut ada_heard).await, Heard::Message(expected.clone()));
    assert_eq!(next(&mut bob_heard).await, Heard::Message(expected.clone()));

    let long = "x".repeat(501);
    let error = bob.send(&Post { text: long }).await.expect_err("too long");
    assert_eq!(*error.code(), ErrorCode::VALIDATION_ERROR);
    let data: Value = error.data().expect("data").decode().expect("json");
    assert_eq!(data, json!({"max": 500}));

    // Typing goes to the others only.
    bob.typing().await.expect("typing");
    assert_eq!(next(&mut ada_heard).await, Heard::Typing("bob".into()));

    bob.send(&Post { text: "two".into() }).await.expect("send");
    assert_eq!(
        bob.mark_read(&ReadUpTo { up_to: 1 }).await.expect("read"),
        1
    );
    assert_eq!(
        bob.mark_read(&ReadUpTo { up_to: 99 }).await.expect("read"),
        0
    );

    // The server asks each member's client (areYouThere) and gathers the answers.
    let who = ada.who().await.expect("who");
    assert_eq!(
        who,
        [
            Presence {
                name: "ada".into(),
                status: Status::Here
            },
            Presence {
                name: "bob".into(),
                status: Status::Away
            },
        ]
    );

    // The history stream: what came after message 1.
    use futures_util::StreamExt;
    let later: Vec<Message> = ada
        .history(&1)
        .await
        .expect("open")
        .map(|m| m.expect("a message"))
        .collect()
        .await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].text, "two");

    // A member that leaves frees its seat, and its name.
    let mut count = room.member_count();
    bob.client().close().await;
    tokio::time::timeout(Duration::from_secs(5), count.wait_for(|n| *n == 1))
        .await
        .expect("bob's seat freed in time")
        .expect("the room lives");
    assert_eq!(room.members(), ["ada"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_typescript_is_what_the_servers_contracts_generate() {
    let (url, _stop) = serve(Room::default()).await;
    let client = plexus::connect(&url, ClientOptions::default())
        .await
        .expect("connect");
    let contracts: Vec<ContractSchema> = client
        .request("$contracts", &Value::Null)
        .await
        .expect("$contracts");
    let names: Vec<&str> = contracts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["chat", "member"]);
    let generated = plexus::contract::typescript(&contracts, "../../../clients/js/src/index.js")
        .expect("TypeScript");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/web/contracts.ts");
    if std::env::var_os("UPDATE_CONTRACTS").is_some() {
        std::fs::write(path, &generated).expect("write");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "examples/chat/web/contracts.ts is stale: with `chat serve` running, run `plexus \
         codegen ts ws://127.0.0.1:8790/ws --import ../../../clients/js/src/index.js -o \
         examples/chat/web/contracts.ts` (or UPDATE_CONTRACTS=1 cargo test -p \
         plexus-example-chat), then npm run build:page in clients/js"
    );
}
