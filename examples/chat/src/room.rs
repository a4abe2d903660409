//! The room: the server's implementation of [`Chat`], calling [`Member`] on its members.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use plexus::contract::ItemStream;
use plexus::{CallContext, RpcError};
use tokio::sync::watch;

use crate::contracts::{
    Chat, ChatError, MAX_TEXT, MemberConnection, Message, Post, Presence, ReadUpTo, Status,
};

/// How many members a room holds.
pub const MAX_MEMBERS: usize = 1_000;
/// How many messages a room keeps (older ones leave `history`).
pub const KEPT: usize = 1_000;
/// How many messages `join` answers.
const ON_JOIN: usize = 50;

/// A chat room; clones share it.
#[derive(Clone)]
pub struct Room {
    state: Arc<Mutex<State>>,
    /// How many members are in (for whoever watches: a test, a dashboard).
    count: Arc<watch::Sender<usize>>,
}

impl Default for Room {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            count: Arc::new(watch::channel(0).0),
        }
    }
}

#[derive(Default)]
struct State {
    messages: VecDeque<Message>,
    last_id: u64,
    /// By connection id.
    members: HashMap<String, Seat>,
}

struct Seat {
    name: String,
    member: MemberConnection,
    read_up_to: u64,
}

impl Room {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many members are in, as it changes.
    pub fn member_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The members' names, sorted.
    pub fn members(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state()
            .members
            .values()
            .map(|s| s.name.clone())
            .collect();
        names.sort_unstable();
        names
    }
}

impl Chat for Room {
    async fn join(&self, ctx: CallContext, name: String) -> Result<Vec<Message>, ChatError> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 40 {
            return Err(ChatError::BadText { max: 40 });
        }
        let conn = ctx.conn().clone();
        let mut state = self.state();
        let id = conn.id().to_owned();
        if state
            .members
            .iter()
            .any(|(other, seat)| *other != id && seat.name == name)
        {
            return Err(ChatError::NameTaken(name));
        }
        if !state.members.contains_key(&id) && state.members.len() >= MAX_MEMBERS {
            return Err(ChatError::RoomFull);
        }
        // Joining again (another name) keeps how far the member has read.
        let read_up_to = state.members.get(&id).map_or(0, |seat| seat.read_up_to);
        let seat = Seat {
            name,
            member: MemberConnection::new(conn.clone()),
            read_up_to,
        };
        if state.members.insert(id.clone(), seat).is_none() {
            self.count.send_replace(state.members.len());
            // The seat is freed when the connection ends, however it ends.
            let room = self.clone();
            tokio::spawn(async move {
                conn.closed().await;
                let mut state = room.state();
                state.members.remove(&id);
                room.count.send_replace(state.members.len());
            });
        }
        let skip = state.messages.len().saturating_sub(ON_JOIN);
        Ok(state.messages.iter().skip(skip).cloned().collect())
    }

    async fn send(&self, ctx: CallContext, post: Post) -> Result<Message, ChatError> {
        let text = post.text.trim();
        if text.is_empty() || text.chars().count() > MAX_TEXT {
            return Err(ChatError::BadText { max: MAX_TEXT });
        }
        let mut state = self.state();
        let from = match state.members.get(ctx.connection_id()) {
            Some(seat) => seat.name.clone(),
            None => return Err(ChatError::NotJoined),
        };
        state.last_id += 1;
        let message = Message {
            id: state.last_id,
            from,
            text: text.to_owned(),
        };
        if state.messages.len() == KEPT {
            state.messages.pop_front();
        }
        state.messages.push_back(message.clone());
        for seat in state.members.values() {
            // A member whose connection has ended is leaving the room (its seat goes with
            // it); one too slow to read is closed by the server's slow-consumer rule.
            let _ = seat.member.new_message(&message);
        }
        Ok(message)
    }

    async fn mark_read(&self, ctx: CallContext, read: ReadUpTo) -> Result<u64, ChatError> {
        let mut state = self.state();
        let last = state.last_id;
        let seat = state
            .members
            .get_mut(ctx.connection_id())
            .ok_or(ChatError::NotJoined)?;
        seat.read_up_to = seat.read_up_to.max(read.up_to.min(last));
        Ok(last - seat.read_up_to)
    }

    async fn typing(&self, ctx: CallContext) {
        let state = self.state();
        let Some(typist) = state.members.get(ctx.connection_id()) else {
            return;
        };
        for (id, seat) in &state.members {
            if id != ctx.connection_id() {
                let _ = seat.member.typing(&typist.name);
            }
        }
    }

    async fn who(&self, ctx: CallContext) -> Result<Vec<Presence>, ChatError> {
        let members: Vec<(String, MemberConnection)> = {
            let state = self.state();
            // Each `who` asks every member: only members may start one.
            if !state.members.contains_key(ctx.connection_id()) {
                return Err(ChatError::NotJoined);
            }
            state
                .members
                .values()
                .map(|seat| (seat.name.clone(), seat.member.clone()))
                .collect()
        };
        let asked = members.into_iter().map(|(name, member)| async move {
            // `areYouThere` has a deadline of its own (2 s): silence is an answer too.
            let status = member.are_you_there().await.unwrap_or(Status::Silent);
            Presence { name, status }
        });
        let mut presence = futures_util::future::join_all(asked).await;
        presence.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(presence)
    }

    async fn history(&self, after: u64) -> Result<ItemStream<Message>, RpcError> {
        let messages: Vec<Result<Message, RpcError>> = self
            .state()
            .messages
            .iter()
            .filter(|m| m.id > after)
            .cloned()
            .map(Ok)
            .collect();
        Ok(Box::pin(futures_util::stream::iter(messages)))
    }
}
