//! The chat's API, declared once: what the server serves (`Chat`) and what it calls on each
//! member's client (`Member`). The TypeScript page's types are generated from these
//! (`web/contracts.ts`).

use plexus::contract::ItemStream;
use plexus::{CallContext, ErrorCode, RpcError, contract};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The longest message the room accepts, in characters.
pub const MAX_TEXT: usize = 500;

/// A message, as every member receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    /// Its number in the room, from 1.
    pub id: u64,
    /// The member who sent it.
    pub from: String,
    /// What it says.
    pub text: String,
}

/// What a member sends.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Post {
    /// What it says: 1 to 500 characters, trimmed.
    pub text: String,
}

/// How far a member has read.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadUpTo {
    /// The number of the last message read.
    pub up_to: u64,
}

/// A member, and whether it answered `areYouThere`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Presence {
    /// The member's name.
    pub name: String,
    /// Its answer.
    pub status: Status,
}

/// What a member says when asked whether it is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// At the keyboard.
    Here,
    /// Connected, not looking.
    Away,
    /// Did not answer in time.
    Silent,
}

/// The chat room.
#[contract(name = "chat")]
pub trait Chat {
    /// Enters the room as `name`; answers the messages so far (the last 50).
    #[public]
    async fn join(&self, ctx: CallContext, name: String) -> Result<Vec<Message>, ChatError>;

    /// Posts a message; answers it as every member receives it (`newMessage`).
    #[public]
    async fn send(&self, ctx: CallContext, post: Post) -> Result<Message, ChatError>;

    /// Marks the messages up to `upTo` read; answers how many are still unread.
    #[public]
    #[rename = "markRead"]
    async fn mark_read(&self, ctx: CallContext, read: ReadUpTo) -> Result<u64, ChatError>;

    /// This member is typing (the others are told).
    #[notification]
    #[public]
    async fn typing(&self, ctx: CallContext);

    /// Asks every member whether it is there (`areYouThere`, 2 s to answer); for members.
    #[public]
    async fn who(&self, ctx: CallContext) -> Result<Vec<Presence>, ChatError>;

    /// The messages after number `after`, oldest first, then the stream ends.
    #[stream]
    #[public]
    async fn history(&self, after: u64) -> Result<ItemStream<Message>, RpcError>;
}

/// What the server calls on each member's client.
#[contract(name = "member")]
pub trait Member {
    /// A message was posted to the room (the sender's own included).
    #[notification]
    #[rename = "newMessage"]
    async fn new_message(&self, message: Message);

    /// Another member is typing.
    #[notification]
    async fn typing(&self, name: String);

    /// Are you there?
    #[rename = "areYouThere"]
    #[timeout_ms = 2000]
    async fn are_you_there(&self) -> Result<Status, RpcError>;
}

/// The room's refusals, each with its own code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// `join` first.
    NotJoined,
    /// Another member has this name.
    NameTaken(String),
    /// Empty, or longer than `max` characters.
    BadText {
        /// The most characters allowed.
        max: usize,
    },
    /// The room holds as many members as it may.
    RoomFull,
}

impl From<ChatError> for RpcError {
    fn from(error: ChatError) -> Self {
        match error {
            ChatError::NotJoined => {
                RpcError::new(ErrorCode::FORBIDDEN, "join the room before speaking")
            }
            ChatError::NameTaken(name) => RpcError::new(ErrorCode::CONFLICT, "the name is taken")
                .with_data(&serde_json::json!({ "name": name })),
            ChatError::BadText { max } => RpcError::new(
                ErrorCode::VALIDATION_ERROR,
                "a message has 1 to max characters",
            )
            .with_data(&serde_json::json!({ "max": max })),
            ChatError::RoomFull => RpcError::new(ErrorCode::RATE_LIMITED, "the room is full"),
        }
    }
}
