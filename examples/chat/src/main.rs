//! `chat serve`: the room, its page at `/` and plexus at `/ws`. `chat client URL --name NAME`:
//! a terminal member (each line typed is sent; `/who` asks who is there).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use plexus::client::Status as ConnStatus;
use plexus::{Client, ClientOptions, ErrorCode, RpcError, Server};
use plexus_example_chat::contracts::{
    ChatClient, Member, MemberContract, Message, Post, ReadUpTo, Status,
};
use plexus_example_chat::room::Room;
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(about = "A chat room on plexus contracts")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the room (the default): the page at http://LISTEN/, plexus at ws://LISTEN/ws.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8790")]
        listen: SocketAddr,
    },
    /// Join the room from the terminal: each line is a message, `/who` asks who is there.
    Client {
        /// e.g. ws://127.0.0.1:8790/ws
        url: String,
        #[arg(long)]
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        None => serve("127.0.0.1:8790".parse()?).await,
        Some(Command::Serve { listen }) => serve(listen).await,
        Some(Command::Client { url, name }) => client(&url, &name).await,
    }
}

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let server = Server::builder()
        .router(plexus_example_chat::router(Room::default()))
        .build();
    let app = plexus_example_chat::page().merge(server.route("/ws"));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "chat: http://{}/ (plexus at ws://{0}/ws)",
        listener.local_addr()?
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server.serve(listener, app, ctrl_c).await?;
    Ok(())
}

/// The terminal: prints what the room says, answers that it is here.
struct Terminal;

impl Member for Terminal {
    async fn new_message(&self, message: Message) {
        println!("#{} {}: {}", message.id, message.from, message.text);
    }

    async fn typing(&self, name: String) {
        println!("({name} is typing)");
    }

    async fn are_you_there(&self) -> Result<Status, RpcError> {
        Ok(Status::Here)
    }
}

/// Takes the seat; `again` (after a reconnect), waiting while the name is still held by this
/// member's previous connection, until the server sees that it is gone.
async fn join(chat: &ChatClient, name: &str, again: bool) -> bool {
    let mut wait = Duration::from_millis(250);
    loop {
        match chat.join(&name.to_owned()).await {
            Ok(recent) => {
                for m in recent {
                    println!("#{} {}: {}", m.id, m.from, m.text);
                }
                eprintln!("joined as {name}");
                return true;
            }
            Err(e)
                if again && *e.code() == ErrorCode::CONFLICT && wait < Duration::from_secs(30) =>
            {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                eprintln!("cannot join: {e}");
                return false;
            }
        }
    }
}

async fn client(url: &str, name: &str) -> anyhow::Result<()> {
    let options = ClientOptions::default().router(MemberContract::client_router(Terminal));
    let client: Client = plexus::connect(url, options).await?;
    let chat = ChatClient::new(client.clone());
    // A new session is a new connection: join again after every reconnect.
    let rejoin = {
        let (chat, name) = (chat.clone(), name.to_owned());
        let mut status = client.status();
        tokio::spawn(async move {
            let mut joined = false;
            loop {
                if *status.borrow_and_update() == ConnStatus::Connected {
                    joined = join(&chat, &name, joined).await || joined;
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line == "/who" {
            match chat.who().timeout(Duration::from_secs(5)).await {
                Ok(presence) => {
                    for p in presence {
                        println!("  {} ({:?})", p.name, p.status);
                    }
                }
                Err(e) => eprintln!("who: {e}"),
            }
        } else if !line.is_empty() {
            match chat
                .send(&Post {
                    text: line.to_owned(),
                })
                .await
            {
                Ok(sent) => {
                    let _ = chat.mark_read(&ReadUpTo { up_to: sent.id }).await;
                }
                Err(e) => eprintln!("not sent: {e}"),
            }
        }
    }
    rejoin.abort();
    client.close().await;
    Ok(())
}
