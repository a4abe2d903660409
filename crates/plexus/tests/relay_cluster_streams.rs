//! Streams relayed across the relay nodes of one cluster, over real sockets with raw
//! clients: a provider connected to node `a`, a caller to node `b`. Items arrive in order
//! and within credit end to end (a caller that stops reading stops the provider), a cancel
//! or a vanished caller reaches the provider, and a provider's error or departure reaches
//! the caller. Each test runs on linked memory engines, on Redis and on NATS.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use plexus_server::{Codec, Engine, RelayConfig, Server};
use serde_json::json;
use support::broker::{Backend, Broker, engines};
use support::{RawClient, TestServer, start_with, sys, within};
use tokio::sync::mpsc;

/// Two relay nodes of one cluster, a watcher on `b`, and the broker's guard.
struct Mesh {
    a: TestServer,
    b: TestServer,
    watcher: RawClient,
    _broker: Option<Broker>,
}

async fn relay_node(engine: Arc<dyn Engine>, node: &str) -> TestServer {
    start_with(
        Server::builder()
            .router(sys())
            .relay(RelayConfig::default())
            .node_id(node)
            .engine(engine),
    )
    .await
}

impl Mesh {
    async fn start(backend: Backend) -> Self {
        let (a, b, broker) = engines(backend).await;
        let (a, b) = (relay_node(a, "a").await, relay_node(b, "b").await);
        let mut watcher = RawClient::connect(b.addr, Some(Codec::Json)).await;
        watcher
            .send_json(json!({"t": "sub", "id": 1, "m": "$watch", "d": null}))
            .await;
        assert_eq!(watcher.recv_json().await["d"], json!([]));
        Self {
            a,
            b,
            watcher,
            _broker: broker,
        }
    }

    /// A provider of `service` on node `a`, once node `b` knows it.
    async fn provider(&mut self, service: &str) -> RawClient {
        let mut provider = RawClient::connect(self.a.addr, Some(Codec::MsgPack)).await;
        let res = provider
            .call(1, "$provide", json!({"node": "p", "services": [service]}))
            .await;
        assert_eq!(res["d"], json!({"node": "p"}), "{res}");
        assert_eq!(
            self.watcher.recv_json().await["d"],
            json!({"online": {"node": "p", "services": [service]}})
        );
        provider
    }

    async fn caller(&self) -> RawClient {
        RawClient::connect(self.b.addr, Some(Codec::Json)).await
    }
}

/// Reads the relayed `sub` on a provider: its id and credit.
async fn relayed_sub(provider: &mut RawClient, method: &str) -> (u64, u64) {
    let sub = provider.recv_json().await;
    assert_eq!(
        (sub["t"].clone(), sub["m"].clone()),
        (json!("sub"), json!(method)),
        "{sub}"
    );
    let credit = sub["credit"].as_u64().expect("the relay asks for credit");
    (sub["id"].as_u64().unwrap(), credit)
}

async fn a_stream_crosses_relay_nodes_in_order_within_credit(backend: Backend) {
    const ITEMS: u64 = 400;
    const CALLER_CREDIT: u64 = 10;
    let mut mesh = Mesh::start(backend).await;
    let mut p = mesh.provider("Ticks").await;
    let mut caller = mesh.caller().await;
    caller
        .send_json(
            json!({"t": "sub", "id": 7, "m": "Ticks.count", "d": ITEMS, "credit": CALLER_CREDIT}),
        )
        .await;
    let (sid, mut credit) = relayed_sub(&mut p, "Ticks.count").await;
    // The provider sends as fast as its credit allows; when no more credit comes for a
    // second, it reports how many it sent (then waits on).
    let (stalled_tx, mut stalled) = mpsc::unbounded_channel();
    let providing = tokio::spawn(async move {
        for n in 0..ITEMS {
            while credit == 0 {
                let grant = match p.next_event(Duration::from_secs(1)).await {
                    Some(support::Event::Frame(grant)) => grant,
                    Some(other) => panic!("provider: {other:?}"),
                    None => {
                        let _ = stalled_tx.send(n);
                        p.recv_json_within(support::TIMEOUT * 2).await
                    }
                };
                assert_eq!(grant["t"], "credit", "{grant}");
                credit += grant["n"].as_u64().unwrap();
            }
            p.send_json(json!({"t": "item", "id": sid, "d": n})).await;
            credit -= 1;
        }
        p.send_json(json!({"t": "end", "id": sid})).await;
        p
    });
    for n in 0..CALLER_CREDIT {
        assert_eq!(
            caller.recv_json().await,
            json!({"t": "item", "id": 7, "d": n})
        );
    }
    // The caller reads nothing more: the provider is held back by the windows on the way
    // (each bounded: today 64 between the nodes and 64 to the provider, so 128), not let
    // run to the end.
    let sent = within("the provider to be held back", stalled.recv())
        .await
        .expect("the provider task");
    assert!(
        (CALLER_CREDIT..=CALLER_CREDIT + 256).contains(&sent),
        "the provider sent {sent} items to a caller that took {CALLER_CREDIT}"
    );
    caller
        .send_json(json!({"t": "credit", "id": 7, "n": ITEMS}))
        .await;
    for n in CALLER_CREDIT..ITEMS {
        let frame = caller.recv_json().await;
        assert_eq!(frame, json!({"t": "item", "id": 7, "d": n}), "in order");
    }
    assert_eq!(caller.recv_json().await, json!({"t": "end", "id": 7}));
    within("the provider", providing).await.unwrap();
}

async fn a_cancel_or_a_vanished_caller_reaches_the_provider(backend: Backend) {
    let mut mesh = Mesh::start(backend).await;
    let mut p = mesh.provider("Feed").await;
    let mut caller = mesh.caller().await;
    caller
        .send_json(json!({"t": "sub", "id": 3, "m": "Feed.watch", "d": {"x": 1}}))
        .await;
    let (sid, _) = relayed_sub(&mut p, "Feed.watch").await;
    p.send_json(json!({"t": "item", "id": sid, "d": "first"}))
        .await;
    assert_eq!(
        caller.recv_json().await,
        json!({"t": "item", "id": 3, "d": "first"})
    );
    caller.send_json(json!({"t": "cancel", "id": 3})).await;
    assert_eq!(p.recv_json().await, json!({"t": "cancel", "id": sid}));

    caller
        .send_json(json!({"t": "sub", "id": 4, "m": "Feed.watch", "d": null}))
        .await;
    let (sid, _) = relayed_sub(&mut p, "Feed.watch").await;
    drop(caller);
    assert_eq!(p.recv_json().await, json!({"t": "cancel", "id": sid}));
}

async fn a_providers_error_or_departure_reaches_the_caller(backend: Backend) {
    let mut mesh = Mesh::start(backend).await;
    let mut p = mesh.provider("Feed").await;
    let mut caller = mesh.caller().await;
    caller
        .send_json(json!({"t": "sub", "id": 1, "m": "Feed.watch", "d": null}))
        .await;
    let (sid, _) = relayed_sub(&mut p, "Feed.watch").await;
    p.send_json(json!({"t": "err", "id": sid, "e": {"code": "FORBIDDEN", "message": "not yours", "data": {"why": 1}}}))
        .await;
    let err = caller.recv_json().await;
    assert_eq!(
        (err["t"].clone(), err["id"].clone(), err["e"].clone()),
        (
            json!("err"),
            json!(1),
            json!({"code": "FORBIDDEN", "message": "not yours", "data": {"why": 1}})
        ),
        "the provider's error as it sent it"
    );

    caller
        .send_json(json!({"t": "sub", "id": 2, "m": "Feed.watch", "d": null}))
        .await;
    let (sid, _) = relayed_sub(&mut p, "Feed.watch").await;
    p.send_json(json!({"t": "item", "id": sid, "d": 1})).await;
    assert_eq!(caller.recv_json().await["d"], 1);
    drop(p);
    let err = caller.recv_json().await;
    assert_eq!(
        (
            err["id"].clone(),
            err["e"]["code"].clone(),
            err["e"]["data"].clone()
        ),
        (
            json!(2),
            json!("SERVICE_OFFLINE"),
            json!({"node": "p", "started": true})
        ),
        "{err}"
    );
    // And a stream to a service nobody provides any more is refused at once.
    assert_eq!(
        mesh.watcher.recv_json().await["d"],
        json!({"offline": {"node": "p"}})
    );
    caller
        .send_json(json!({"t": "sub", "id": 3, "m": "Feed.watch", "d": null}))
        .await;
    let err = caller.recv_json().await;
    assert_eq!(err["e"]["code"], "SERVICE_OFFLINE", "{err}");
    assert_eq!(err["e"]["data"], json!({"started": false}));
}

backend_tests!(
    a_stream_crosses_relay_nodes_in_order_within_credit,
    a_cancel_or_a_vanished_caller_reaches_the_provider,
    a_providers_error_or_departure_reaches_the_caller,
);
