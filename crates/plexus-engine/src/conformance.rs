//! The contract every engine keeps, as runnable checks.
//!
//! An engine crate runs them from its own tests, giving a way to make nodes that share one
//! backend:
//!
//! ```no_run
//! # async fn run() {
//! use std::sync::Arc;
//! use plexus_engine::{Engine, MemoryEngine, conformance};
//!
//! let first = Arc::new(MemoryEngine::new());
//! let seed = first.clone();
//! conformance::run_all(move || {
//!     let node: Arc<dyn Engine> = Arc::new(seed.peer());
//!     async move { node }
//! })
//! .await;
//! # }
//! ```
//!
//! Every check uses channels of its own (a random suffix), so a shared backend may be used
//! by several runs at once. A check that fails panics with what it saw.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_protocol::{Codec, ErrorBody, ErrorCode, Payload, Position, PresenceEvent};
use tokio::sync::Notify;

use crate::{Engine, EngineSink, Member, NodeMessage, Publication, Retention};

/// How long a check waits for an event before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// What a test node's sink saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A publication: channel, epoch, offset, data as JSON text.
    Publication(String, String, u64, String),
    /// A presence change: channel, event, connection id.
    Presence(String, PresenceEvent, String),
    /// A node message.
    Message(NodeMessage),
    /// Continuity lost on a channel.
    Interrupted(String),
}

/// A sink that records what it is given and lets a check wait for it.
#[derive(Default)]
pub struct RecordingSink {
    seen: Mutex<Vec<Seen>>,
    changed: Notify,
}

impl RecordingSink {
    fn record(&self, seen: Seen) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(seen);
        self.changed.notify_waiters();
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `done` holds for what was seen; panics after ten seconds.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let seen = self.seen();
                if done(&seen) {
                    return seen;
                }
                changed.await;
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(seen) => seen,
            Err(_) => panic!("timed out waiting for {what}; saw {:?}", self.seen()),
        }
    }

    /// The offsets of the publications of `channel` seen so far.
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        offsets(&self.seen(), channel)
    }
}

fn offsets(seen: &[Seen], channel: &str) -> Vec<u64> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Publication(ch, _, offset, _) if ch == channel => Some(*offset),
            _ => None,
        })
        .collect()
}

impl EngineSink for RecordingSink {
    fn publication(&self, publication: &Publication) {
        self.record(Seen::Publication(
            publication.channel.to_string(),
            publication.epoch.to_string(),
            publication.offset,
            publication
                .data
                .to_json_value()
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ));
    }

    fn presence(&self, channel: &str, event: PresenceEvent, member: &Member) {
        self.record(Seen::Presence(
            channel.to_owned(),
            event,
            member.conn.clone(),
        ));
    }

    fn message(&self, message: NodeMessage) {
        self.record(Seen::Message(message));
    }

    fn interrupted(&self, channel: &str) {
        self.record(Seen::Interrupted(channel.to_owned()));
    }
}

/// A started node and its sink.
pub struct TestNode {
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// What reached the node.
    pub sink: Arc<RecordingSink>,
}

async fn node<F, Fut>(make: &F, name: &str) -> TestNode
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let engine = make().await;
    let sink = Arc::new(RecordingSink::default());
    engine
        .start(name, sink.clone())
        .await
        .expect("the engine starts");
    TestNode { engine, sink }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}:{}", uuid::Uuid::new_v4().simple())
}

fn data(n: u64) -> Payload {
    Payload::encode(Codec::Json, &n).expect("a number encodes")
}

fn keep(history_size: usize) -> Retention {
    Retention {
        history_size,
        history_ttl: None,
    }
}

/// Runs every check. `make` returns a new, not yet started node on the shared backend.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    offsets_increase_within_an_epoch(&make).await;
    history_after_a_position(&make).await;
    history_time_to_live(&make).await;
    watching_nodes_get_every_publication_in_order(&make).await;
    watches_are_counted(&make).await;
    watch_then_history_misses_nothing(&make).await;
    presence_across_nodes(&make).await;
    broadcast_reaches_the_other_nodes(&make).await;
}

/// Offsets go up by one within an epoch, whichever node publishes.
pub async fn offsets_increase_within_an_epoch<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let (a, b) = (node(make, "a").await, node(make, "b").await);
    let channel = unique("offsets");
    let options = keep(10);
    let mut positions = Vec::new();
    for n in 0..6 {
        let publisher = if n % 2 == 0 { &a } else { &b };
        positions.push(
            publisher
                .engine
                .publish(&channel, data(n), &options)
                .await
                .expect("publish"),
        );
    }
    let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5, 6], "offsets go up by one");
    assert!(
        positions.iter().all(|p| p.epoch == positions[0].epoch),
        "one epoch: {positions:?}"
    );
    assert!(!positions[0].epoch.is_empty(), "an epoch is named");
}

/// History after a position: what is kept, whether it is complete, limits.
pub async fn history_after_a_position<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let a = node(make, "a").await;
    let channel = unique("history");
    let options = keep(5);
    let mut last = None;
    for n in 1..=10 {
        last = Some(
            a.engine
                .publish(&channel, data(n), &options)
                .await
                .expect("publish"),
        );
    }
    let top = last.expect("published");
    let at = |offset| Position {
        epoch: top.epoch.clone(),
        offset,
    };
    let all = a
        .engine
        .history(&channel, None, None)
        .await
        .expect("history");
    assert_eq!(all.position, top);
    assert_eq!(
        all.publications.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10],
        "the last five are kept"
    );
    assert!(!all.recoverable, "no position given: nothing to recover");
    assert_eq!(
        all.publications[0].1.to_json_value().expect("json"),
        serde_json::json!(6),
        "data is kept as published"
    );

    let since = at(7);
    let page = a
        .engine
        .history(&channel, Some(&since), None)
        .await
        .expect("history");
    assert!(page.recoverable, "everything after 7 is kept");
    assert_eq!(
        page.publications
            .iter()
            .map(|(o, _)| *o)
            .collect::<Vec<_>>(),
        vec![8, 9, 10]
    );

    let since = at(5);
    let page = a
        .engine
        .history(&channel, Some(&since), None)
        .await
        .expect("history");
    assert!(
        page.recoverable,
        "6 is the oldest kept, so nothing after 5 is missing"
    );

    let since = at(3);
    let page = a
        .engine
        .history(&channel, Some(&since), None)
        .await
        .expect("history");
    assert!(!page.recoverable, "4 and 5 were pushed out");

    let since = at(10);
    let page = a
        .engine
        .history(&channel, Some(&since), None)
        .await
        .expect("history");
    assert!(
        page.recoverable && page.publications.is_empty(),
        "up to date"
    );

    let since = at(11);
    let page = a
        .engine
        .history(&channel, Some(&since), None)
        .await
        .expect("history");
    assert!(
        !page.recoverable,
        "a position ahead of the channel is not recoverable"
    );

    let since = Position {
        epoch: "other".into(),
        offset: 7,
    };
    let page = a
        .engine
        .history(&channel, Some(&since), None)
        .await
        .expect("history");
    assert!(!page.recoverable, "another epoch is not recoverable");

    let page = a
        .engine
        .history(&channel, Some(&at(6)), Some(2))
        .await
        .expect("history");
    assert_eq!(
        page.publications
            .iter()
            .map(|(o, _)| *o)
            .collect::<Vec<_>>(),
        vec![7, 8]
    );

    let empty = unique("empty");
    let page = a.engine.history(&empty, None, None).await.expect("history");
    assert_eq!(
        page.position.offset, 0,
        "a channel never published to is at 0"
    );
    assert!(page.publications.is_empty());
}

/// Publications leave the history when their time to live is over, and a position from
/// before is then not recoverable.
pub async fn history_time_to_live<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let a = node(make, "a").await;
    let channel = unique("ttl");
    let options = Retention {
        history_size: 10,
        history_ttl: Some(Duration::from_millis(20)),
    };
    let first = a
        .engine
        .publish(&channel, data(1), &options)
        .await
        .expect("publish");
    let before = Position {
        epoch: first.epoch.clone(),
        offset: 0,
    };
    // The behaviour under test is time passing: there is no event to wait for.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let page = a
        .engine
        .history(&channel, Some(&before), None)
        .await
        .expect("history");
    assert!(page.publications.is_empty(), "expired: {page:?}");
    assert!(!page.recoverable, "publication 1 is lost");
}

/// Every watching node gets every publication once, in offset order; others get none.
pub async fn watching_nodes_get_every_publication_in_order<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let (a, b, c) = (
        node(make, "a").await,
        node(make, "b").await,
        node(make, "c").await,
    );
    let channel = unique("order");
    a.engine.watch(&channel).await.expect("watch");
    b.engine.watch(&channel).await.expect("watch");
    let options = keep(0);
    let publishers = [a.engine.clone(), c.engine.clone()];
    let mut tasks = Vec::new();
    for (i, engine) in publishers.into_iter().enumerate() {
        let channel = channel.clone();
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..100u64 {
                engine
                    .publish(&channel, data(i as u64 * 1000 + n), &options)
                    .await
                    .expect("publish");
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher");
    }
    let expected: Vec<u64> = (1..=200).collect();
    for (name, sink) in [("a", &a.sink), ("b", &b.sink)] {
        sink.wait_for("200 publications", |seen| {
            offsets(seen, &channel).len() >= 200
        })
        .await;
        assert_eq!(
            sink.offsets(&channel),
            expected,
            "node {name}: in order, once each"
        );
    }
    assert!(
        c.sink.offsets(&channel).is_empty(),
        "a node not watching gets nothing"
    );
    a.engine.unwatch(&channel).await.expect("unwatch");
    b.engine.unwatch(&channel).await.expect("unwatch");
}

/// A node keeps watching while it made more watch calls than unwatch calls.
pub async fn watches_are_counted<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let (a, b) = (node(make, "a").await, node(make, "b").await);
    let channel = unique("counted");
    let options = keep(0);
    b.engine.watch(&channel).await.expect("watch");
    b.engine.watch(&channel).await.expect("watch");
    b.engine.unwatch(&channel).await.expect("unwatch");
    a.engine
        .publish(&channel, data(1), &options)
        .await
        .expect("publish");
    b.sink
        .wait_for("publication 1", |seen| offsets(seen, &channel) == [1])
        .await;
    b.engine.unwatch(&channel).await.expect("unwatch");
    // A marker channel, watched after the unwatch, shows when later deliveries would have
    // arrived: the engine delivers per channel in call order.
    let marker = unique("marker");
    b.engine.watch(&marker).await.expect("watch");
    a.engine
        .publish(&channel, data(2), &options)
        .await
        .expect("publish");
    a.engine
        .publish(&marker, data(0), &options)
        .await
        .expect("publish");
    b.sink
        .wait_for("the marker", |seen| !offsets(seen, &marker).is_empty())
        .await;
    assert!(
        offsets(&b.sink.seen(), &channel).iter().all(|&o| o == 1),
        "nothing after the last unwatch: {:?}",
        b.sink.seen()
    );
    b.engine.unwatch(&marker).await.expect("unwatch");
}

/// Watching, then reading history since a position, and merging the two by offset gives
/// every publication exactly once, even while publications keep coming.
pub async fn watch_then_history_misses_nothing<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let (a, b) = (node(make, "a").await, node(make, "b").await);
    let channel = unique("merge");
    let options = keep(1000);
    let mut since = None;
    for n in 1..=50 {
        since = Some(
            a.engine
                .publish(&channel, data(n), &options)
                .await
                .expect("publish"),
        );
    }
    let since = since.expect("published");
    let publisher = {
        let engine = a.engine.clone();
        let channel = channel.clone();
        let options = options.clone();
        tokio::spawn(async move {
            for n in 51..=250 {
                engine
                    .publish(&channel, data(n), &options)
                    .await
                    .expect("publish");
                if n % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    b.engine.watch(&channel).await.expect("watch");
    let page = b
        .engine
        .history(&channel, Some(&since), None)
        .await
        .expect("history");
    assert!(page.recoverable);
    publisher.await.expect("publisher");
    let top = page.position.offset;
    if top < 250 {
        b.sink
            .wait_for("publication 250", |seen| {
                offsets(seen, &channel).last() == Some(&250)
            })
            .await;
    }
    let mut merged: Vec<u64> = page.publications.iter().map(|(o, _)| *o).collect();
    merged.extend(b.sink.offsets(&channel).into_iter().filter(|&o| o > top));
    assert_eq!(
        merged,
        (51..=250).collect::<Vec<_>>(),
        "history then live, no gap, no repeat"
    );
    b.engine.unwatch(&channel).await.expect("unwatch");
}

/// Members added on any node are seen from every node; watching nodes get join and leave
/// events; replacing a member sends none.
pub async fn presence_across_nodes<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let (a, b) = (node(make, "a").await, node(make, "b").await);
    let channel = unique("presence");
    b.engine.watch(&channel).await.expect("watch");
    let member = |conn: &str, user: &str| Member {
        user: Some(user.into()),
        conn: conn.into(),
        info: None,
    };
    let (m1, m2) = (member("c1", "alice"), member("c2", "bob"));
    a.engine.add_member(&channel, &m1).await.expect("add");
    b.engine.add_member(&channel, &m2).await.expect("add");
    a.engine.add_member(&channel, &m1).await.expect("add again");
    for engine in [&a.engine, &b.engine] {
        let mut conns: Vec<String> = engine
            .members(&channel)
            .await
            .expect("members")
            .into_iter()
            .map(|m| m.conn)
            .collect();
        conns.sort();
        assert_eq!(conns, ["c1", "c2"]);
    }
    a.engine
        .remove_member(&channel, "c1")
        .await
        .expect("remove");
    let seen = b
        .sink
        .wait_for("three presence events", |seen| {
            seen.iter()
                .filter(|s| matches!(s, Seen::Presence(..)))
                .count()
                >= 3
        })
        .await;
    let events: Vec<(PresenceEvent, String)> = seen
        .into_iter()
        .filter_map(|s| match s {
            Seen::Presence(ch, event, conn) if ch == channel => Some((event, conn)),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            (PresenceEvent::Join, "c1".into()),
            (PresenceEvent::Join, "c2".into()),
            (PresenceEvent::Leave, "c1".into()),
        ],
        "join, join, leave; re-adding sent nothing"
    );
    let conns: BTreeSet<String> = a
        .engine
        .members(&channel)
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.conn)
        .collect();
    assert_eq!(conns, BTreeSet::from(["c2".to_owned()]));
    b.engine
        .remove_member(&channel, "c2")
        .await
        .expect("remove");
    b.engine.unwatch(&channel).await.expect("unwatch");
}

/// A broadcast of each kind of message reaches every other node whole, and not the sender.
pub async fn broadcast_reaches_the_other_nodes<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let (a, b, c) = (
        node(make, "a").await,
        node(make, "b").await,
        node(make, "c").await,
    );
    let json = |value: serde_json::Value| Payload::encode(Codec::Json, &value).expect("encode");
    // Each kind a cluster engine must carry whole, errors with their data included.
    let messages = [
        NodeMessage::Disconnect {
            conn: unique("conn"),
            code: 4000,
            reason: "test".into(),
        },
        NodeMessage::Request {
            conn: unique("conn"),
            method: "ui.confirm".into(),
            data: json(serde_json::json!({"q": "sure?"})),
            node: "a".into(),
            id: 7,
            timeout_ms: 5_000,
        },
        NodeMessage::Reply {
            node: "a".into(),
            id: 7,
            result: Ok(json(serde_json::json!({"ok": true}))),
        },
        NodeMessage::CancelRequest {
            node: "a".into(),
            id: 9,
        },
        NodeMessage::Reply {
            node: "a".into(),
            id: 8,
            result: Err(ErrorBody::new(ErrorCode::new("DECLINED"), "no")
                .with_data(json(serde_json::json!({"why": "busy"})))),
        },
    ];
    for message in messages {
        a.engine
            .broadcast(message.clone())
            .await
            .expect("broadcast");
        for sink in [&b.sink, &c.sink] {
            sink.wait_for("the message", |seen| {
                seen.contains(&Seen::Message(message.clone()))
            })
            .await;
        }
        assert!(
            !a.sink.seen().contains(&Seen::Message(message)),
            "the sender does not get its own message"
        );
    }
}
