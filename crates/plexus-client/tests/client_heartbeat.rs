//! Half-open detection: nothing heard for heartbeat + grace means reconnect. Against the
//! real server; the recording proxy freezes the connection half-open.

mod real;

use std::time::Duration;

use plexus_client::{ClientOptions, ReconnectOptions, Status, connect};
use real::{RealServer as TestServer, Script, WAIT, wait_status};
use tokio::time::{Instant, timeout};

const HEARTBEAT_MS: u64 = 200;
const GRACE: Duration = Duration::from_millis(300);

fn options() -> ClientOptions {
    ClientOptions::default().heartbeat_grace(GRACE).reconnect(
        ReconnectOptions::default()
            .initial_delay(Duration::from_millis(20))
            .max_delay(Duration::from_millis(100)),
    )
}

fn script() -> Script {
    Script {
        heartbeat_ms: HEARTBEAT_MS,
        ..Script::default()
    }
}

#[tokio::test]
async fn half_open_connection_is_detected_and_replaced() {
    let mut server = TestServer::start(script()).await;
    let client = timeout(WAIT, connect(&server.url(), options()))
        .await
        .unwrap()
        .unwrap();
    server.upgrade().await;
    let mut status = client.status();
    status.borrow_and_update();

    server.freeze();
    let frozen_at = Instant::now();
    timeout(WAIT, status.changed()).await.unwrap().unwrap();
    assert_eq!(*status.borrow_and_update(), Status::Reconnecting);
    let detected_after = frozen_at.elapsed();
    // Detected after heartbeat + grace since the last traffic (at most one interval
    // before the freeze), with slack for a loaded machine.
    let bound = Duration::from_millis(HEARTBEAT_MS) + GRACE;
    assert!(
        detected_after >= GRACE && detected_after < bound * 4,
        "detected after {detected_after:?}"
    );

    wait_status(&mut status, Status::Connected).await;
    let (conn, _) = server.upgrade().await;
    assert_eq!(conn, 2, "a new connection replaced the frozen one");
    let n: u32 = client.request("echo", &9).await.unwrap();
    assert_eq!(n, 9);
}

#[tokio::test]
async fn server_pings_keep_an_idle_connection_alive() {
    let mut server = TestServer::start(script()).await;
    let client = timeout(WAIT, connect(&server.url(), options()))
        .await
        .unwrap()
        .unwrap();
    server.upgrade().await;
    let mut status = client.status();
    status.borrow_and_update();
    // Upper bound on an absence: over several heartbeat + grace periods of silence from
    // the application, only pings flow, and the status does not change.
    let changed = timeout(Duration::from_millis(1500), status.changed()).await;
    assert!(changed.is_err(), "status changed to {:?}", *status.borrow());
    assert_eq!(client.conn_id(), Some(server.id_of(1)));
}
