//! End-to-end: `cancel` frames and disconnects stop handlers, run their cleanups with the
//! right reason, and nothing more is sent for a cancelled call; for both codecs.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use plexus_server::{CallContext, CancelReason, Codec, Router, RpcError};
use serde_json::{Value, json};
use support::{recv, start, sys};
use tokio::sync::mpsc;

/// Far below the minute `guarded.sleep` sleeps (and the never of the others): a stop within
/// it is the cancel's doing, however busy the machine. How soon exactly is checked on a
/// paused clock in the session's own tests.
const PROMPT: Duration = Duration::from_secs(30);

codec_tests!(
    cancel_request_runs_cleanup_and_sends_nothing,
    cancel_stream_stops_items_without_end,
    cancel_stream_with_context_reports_cancelled,
    close_handshake_cancels_in_flight_with_disconnected,
    dropped_socket_cancels_in_flight_with_disconnected,
    cancelled_sleep_is_dropped_at_once,
    cancel_of_finished_or_unknown_call_is_ignored,
    completed_call_does_not_run_cleanup,
);

/// What the test handlers report.
#[derive(Debug)]
enum Ev {
    Started(u64),
    Cleanup(u64, CancelReason, Instant),
    Dropped(u64, Instant),
}

/// Reports `Dropped` when the handler's future (or stream) is dropped.
struct DropGuard(mpsc::UnboundedSender<Ev>, u64);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.0.send(Ev::Dropped(self.1, Instant::now()));
    }
}

fn router(events: mpsc::UnboundedSender<Ev>) -> Router {
    let (wait_tx, stream_tx, done_tx) = (events.clone(), events.clone(), events.clone());
    let sleep_tx = events;
    sys()
        .request("slow.wait", move |ctx: CallContext, _: Value| {
            let events = wait_tx.clone();
            async move {
                let id = ctx.call_id();
                let cleanup = events.clone();
                ctx.on_cancel(move |reason| {
                    let _ = cleanup.send(Ev::Cleanup(id, reason, Instant::now()));
                });
                let _guard = DropGuard(events.clone(), id);
                let _ = events.send(Ev::Started(id));
                ctx.cancelled().await;
                Ok::<_, RpcError>("must never be sent")
            }
        })
        .stream("slow.ticks", move |ctx: CallContext, _: Value| {
            let events = stream_tx.clone();
            async move {
                let id = ctx.call_id();
                let cleanup = events.clone();
                ctx.on_cancel(move |reason| {
                    let _ = cleanup.send(Ev::Cleanup(id, reason, Instant::now()));
                });
                let guard = DropGuard(events.clone(), id);
                let _ = events.send(Ev::Started(id));
                let first = stream::iter([Ok::<_, RpcError>(json!("first"))]);
                let rest = stream::pending().map(move |item: Result<Value, RpcError>| {
                    let _keep = &guard;
                    item
                });
                Ok::<_, RpcError>(first.chain(rest))
            }
        })
        .request("quick.done", move |ctx: CallContext, _: Value| {
            let events = done_tx.clone();
            async move {
                let id = ctx.call_id();
                let cleanup = events.clone();
                ctx.on_cancel(move |reason| {
                    let _ = cleanup.send(Ev::Cleanup(id, reason, Instant::now()));
                });
                // Not ready at the first poll: the call runs in its own task.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, RpcError>("done")
            }
        })
        .request("guarded.sleep", move |p: Value| {
            let events = sleep_tx.clone();
            async move {
                let id = p["id"].as_u64().unwrap_or(0);
                let _guard = DropGuard(events.clone(), id);
                let _ = events.send(Ev::Started(id));
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, RpcError>("slept a minute")
            }
        })
}

async fn setup(
    codec: Codec,
) -> (
    support::TestServer,
    support::RawClient,
    mpsc::UnboundedReceiver<Ev>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = start(router(tx), support::config()).await;
    let client = server.client(codec).await;
    (server, client, rx)
}

async fn started(events: &mut mpsc::UnboundedReceiver<Ev>, id: u64) {
    match recv(events, "handler start").await {
        Ev::Started(got) => assert_eq!(got, id),
        other => panic!("expected Started({id}), got {other:?}"),
    }
}

/// Waits for the cleanup and the drop of call `id`, in either order; returns the cleanup's
/// reason and time (if `want_cleanup`) and the drop time.
async fn stopped(
    events: &mut mpsc::UnboundedReceiver<Ev>,
    id: u64,
    want_cleanup: bool,
) -> (Option<(CancelReason, Instant)>, Instant) {
    let mut cleanup = None;
    let mut dropped = None;
    while dropped.is_none() || (want_cleanup && cleanup.is_none()) {
        match recv(events, "handler stop").await {
            Ev::Cleanup(got, reason, at) if got == id => {
                assert!(cleanup.is_none(), "cleanup ran twice");
                cleanup = Some((reason, at));
            }
            Ev::Dropped(got, at) if got == id => dropped = Some(at),
            other => panic!("unexpected event {other:?}"),
        }
    }
    (cleanup, dropped.expect("dropped"))
}

async fn cancel_request_runs_cleanup_and_sends_nothing(codec: Codec) {
    let (_server, mut client, mut events) = setup(codec).await;
    client
        .send_json(json!({"t": "req", "id": 1, "m": "slow.wait", "d": null}))
        .await;
    started(&mut events, 1).await;

    let sent = Instant::now();
    client.send_json(json!({"t": "cancel", "id": 1})).await;
    let (cleanup, dropped) = stopped(&mut events, 1, true).await;
    let (reason, cleaned) = cleanup.expect("cleanup");
    assert_eq!(reason, CancelReason::Cancelled);
    // The handler never ends by itself: the cleanup and the drop are the cancel's doing.
    // That they happen at the instant of the cancel is checked on a paused clock in the
    // session's tests; here they must come long before any timeout of the handler's.
    let latency = cleaned.duration_since(sent);
    assert!(latency < PROMPT, "cleanup ran {latency:?} after cancel");
    assert!(dropped.duration_since(sent) < PROMPT);

    // No res/err for id 1: the next frame is the echo's reply, and nothing follows.
    client.assert_echo(2).await;
    client.expect_silence(Duration::from_millis(200)).await;
    // The id is free again.
    client.assert_echo(1).await;
}

async fn cancel_stream_stops_items_without_end(codec: Codec) {
    let (_server, mut client, _events) = setup(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 1, "m": "sys.count", "d": {"n": 1_000_000, "interval_ms": 10}}))
        .await;
    for i in 0..3 {
        assert_eq!(
            client.recv_json().await,
            json!({"t": "item", "id": 1, "d": i})
        );
    }
    client.send_json(json!({"t": "cancel", "id": 1})).await;
    client
        .send_json(json!({"t": "req", "id": 99, "m": "sys.echo", "d": "after cancel"}))
        .await;
    // Items already on their way may still arrive before the echo's reply, never an end.
    let mut late = 0;
    loop {
        let frame = client.recv_json().await;
        if frame["t"] == "res" {
            assert_eq!(frame, json!({"t": "res", "id": 99, "d": "after cancel"}));
            break;
        }
        assert_eq!(
            frame["t"], "item",
            "only items may precede the echo: {frame}"
        );
        assert_eq!(frame["id"], 1);
        late += 1;
        assert!(late < 10, "items keep coming after cancel");
    }
    // 300 ms is 30 intervals of the stream: it has stopped, and never ends.
    client.expect_silence(Duration::from_millis(300)).await;
}

async fn cancel_stream_with_context_reports_cancelled(codec: Codec) {
    let (_server, mut client, mut events) = setup(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 5, "m": "slow.ticks", "d": null}))
        .await;
    started(&mut events, 5).await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "item", "id": 5, "d": "first"})
    );
    let sent = Instant::now();
    client.send_json(json!({"t": "cancel", "id": 5})).await;
    let (cleanup, dropped) = stopped(&mut events, 5, true).await;
    let (reason, cleaned) = cleanup.expect("cleanup");
    assert_eq!(reason, CancelReason::Cancelled);
    assert!(cleaned.duration_since(sent) < PROMPT);
    assert!(dropped.duration_since(sent) < PROMPT);
    client.assert_echo(6).await;
    client.expect_silence(Duration::from_millis(100)).await;
}

async fn close_handshake_cancels_in_flight_with_disconnected(codec: Codec) {
    let (_server, mut client, mut events) = setup(codec).await;
    client
        .send_json(json!({"t": "req", "id": 1, "m": "slow.wait", "d": null}))
        .await;
    started(&mut events, 1).await;
    client
        .send_json(json!({"t": "sub", "id": 2, "m": "slow.ticks", "d": null}))
        .await;
    started(&mut events, 2).await;
    client.close().await;
    let mut reasons = Vec::new();
    let mut drops = 0;
    while reasons.len() < 2 || drops < 2 {
        match recv(&mut events, "stop after close").await {
            Ev::Cleanup(id, reason, _) => reasons.push((id, reason)),
            Ev::Dropped(..) => drops += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    reasons.sort_by_key(|(id, _)| *id);
    assert_eq!(
        reasons,
        [
            (1, CancelReason::Disconnected),
            (2, CancelReason::Disconnected)
        ]
    );
}

async fn dropped_socket_cancels_in_flight_with_disconnected(codec: Codec) {
    let (_server, mut client, mut events) = setup(codec).await;
    client
        .send_json(json!({"t": "req", "id": 3, "m": "slow.wait", "d": null}))
        .await;
    started(&mut events, 3).await;
    // No close frame: the TCP connection just goes away.
    drop(client);
    let (cleanup, _) = stopped(&mut events, 3, true).await;
    assert_eq!(cleanup.expect("cleanup").0, CancelReason::Disconnected);
}

async fn cancelled_sleep_is_dropped_at_once(codec: Codec) {
    let (_server, mut client, mut events) = setup(codec).await;
    // The built-in sys.sleep: cancelled, it never answers.
    client
        .send_json(json!({"t": "req", "id": 1, "m": "sys.sleep", "d": {"ms": 60_000}}))
        .await;
    client.send_json(json!({"t": "cancel", "id": 1})).await;
    client.assert_echo(2).await;

    // The same shape with a drop guard shows the handler future is dropped at once.
    client
        .send_json(json!({"t": "req", "id": 3, "m": "guarded.sleep", "d": {"id": 3}}))
        .await;
    started(&mut events, 3).await;
    let sent = Instant::now();
    client.send_json(json!({"t": "cancel", "id": 3})).await;
    let (_, dropped) = stopped(&mut events, 3, false).await;
    let latency = dropped.duration_since(sent);
    assert!(latency < PROMPT, "future dropped {latency:?} after cancel");
    client.assert_echo(4).await;
    client.expect_silence(Duration::from_millis(100)).await;
}

async fn cancel_of_finished_or_unknown_call_is_ignored(codec: Codec) {
    let (_server, mut client, _events) = setup(codec).await;
    client.assert_echo(1).await;
    client.send_json(json!({"t": "cancel", "id": 1})).await;
    client.send_json(json!({"t": "cancel", "id": 12345})).await;
    client.assert_echo(2).await;
    client.expect_silence(Duration::from_millis(100)).await;
}

async fn completed_call_does_not_run_cleanup(codec: Codec) {
    let (tx, mut events) = mpsc::unbounded_channel();
    let (builder, mut gone) =
        support::with_disconnect_hook(plexus_server::Server::builder().router(router(tx)));
    let server = support::start_with(builder).await;
    let mut client = server.client(codec).await;
    assert_eq!(
        client.call(1, "quick.done", json!(null)).await,
        json!({"t": "res", "id": 1, "d": "done"})
    );
    client.close().await;
    // The connection has finished (and cancelled whatever was still in flight) before
    // on_disconnect runs: a cleanup would already be in the channel.
    recv(&mut gone, "on_disconnect").await;
    if let Ok(event) = events.try_recv() {
        panic!("cleanup ran for a completed call: {event:?}");
    }
}
