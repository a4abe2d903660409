//! What the engine hands to this node: publications and presence events of the channels it
//! watches, messages from other nodes, and interruptions.

use std::sync::Weak;

use plexus_engine::{EngineSink, Member, NodeMessage, Publication};
use plexus_protocol::{CloseCode, Codec, ErrorBody, ErrorCode, Frame, Payload, PresenceEvent};

use super::cluster::spawn;
use super::fanout::{fan_out, send_to_subscribers};
use super::follow::Followed;
use super::{Hub, HubInner};

/// The hub as the engine's sink. Called from inside the engine, possibly under its locks:
/// nothing here blocks or calls back into the engine.
pub(super) struct HubSink(pub(super) Weak<HubInner>);

impl HubSink {
    fn hub(&self) -> Option<Hub> {
        self.0.upgrade().map(|inner| Hub { inner })
    }
}

impl EngineSink for HubSink {
    fn publication(&self, publication: &Publication) {
        let Some(hub) = self.hub() else { return };
        let Some(channel) = hub.inner.channels.get(&publication.channel) else {
            return;
        };
        let mut state = channel.lock();
        if state.joining > 0 {
            for subscriber in state.subscribers.values_mut() {
                if let Some(buffer) = &mut subscriber.joining {
                    // Bounded like the outbound queue the publications would have waited in.
                    if buffer.len() >= subscriber.conn.queue_capacity() {
                        if !subscriber.conn.is_closing() {
                            crate::metrics::server().slow_consumer_cuts.increment(1);
                        }
                        subscriber
                            .conn
                            .close(CloseCode::SLOW_CONSUMER, "slow consumer");
                    } else {
                        buffer.push(publication.clone());
                    }
                }
            }
        }
        fan_out(
            &mut state,
            &channel.name,
            publication,
            channel.options.meter(),
        );
    }

    fn presence(&self, channel: &str, event: PresenceEvent, member: &Member) {
        let Some(hub) = self.hub() else { return };
        hub.inner
            .followers
            .offer(channel, || Followed::Presence(event, member.clone()));
        let Some(channel) = hub.inner.channels.get(channel) else {
            return;
        };
        if !channel.options.join_leave_events {
            return;
        }
        let Ok(data) = Payload::encode(Codec::Json, member) else {
            return;
        };
        let frame = Frame::Presence {
            event,
            channel: channel.name.to_string(),
            data,
        };
        let mut state = channel.lock();
        send_to_subscribers(&mut state, &frame, |subscriber| {
            subscriber.conn.id() != member.conn
        });
    }

    fn message(&self, message: NodeMessage) {
        if let Some(hub) = self.hub() {
            hub.on_node_message(message);
        }
    }

    fn interrupted(&self, channel: &str) {
        let Some(hub) = self.hub() else { return };
        hub.inner.followers.offer(channel, || Followed::Resync);
        let Some(local) = hub.inner.channels.get(channel) else {
            return;
        };
        let conns = local.connections();
        let channel = channel.to_owned();
        spawn(async move {
            for conn in conns {
                let why = ErrorBody::new(
                    ErrorCode::UNAVAILABLE,
                    "the channel's stream was interrupted: join again to recover",
                );
                hub.unsubscribe_local(&conn, &channel, Some(why)).await;
            }
        });
    }
}
