//! Reconnecting: server restarts, close codes, backoff with full jitter, before_connect,
//! against the real server.

mod real;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use plexus_client::{ClientOptions, ConnectError, ReconnectOptions, Status, connect};
use real::{RealServer as TestServer, Script, WAIT, connect_to, wait_status};
use tokio::time::{Instant, timeout};

/// Waits for the `welcome` of proxied connection `conn`.
async fn wait_until_welcomed(server: &mut TestServer, conn: u64) {
    for _ in 0..1000 {
        if let real::Event::Welcome { conn: c } = server.event().await
            && c == conn
        {
            return;
        }
    }
    panic!("no welcome on connection {conn}");
}

fn fast_reconnect() -> ReconnectOptions {
    ReconnectOptions::default()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(100))
}

#[tokio::test]
async fn reconnects_after_the_server_restarts_on_the_same_port() {
    let mut server = TestServer::start(Script::default()).await;
    let port = server.port();
    let (client, _) = connect_to(
        &mut server,
        ClientOptions::default().reconnect(fast_reconnect()),
    )
    .await;
    let mut status = client.status();
    assert_eq!(*status.borrow_and_update(), Status::Connected);
    assert_eq!(client.conn_id(), Some(server.id_of(1)));

    server.stop().await;
    wait_status(&mut status, Status::Reconnecting).await;
    // Calls while down fail at once unless retryable.
    let error = client.request::<u32>("echo", &1).await.unwrap_err();
    assert!(error.is_unavailable());

    let mut server = TestServer::start_on(port, Script::default()).await;
    wait_status(&mut status, Status::Connected).await;
    server.upgrade().await;
    let n: u32 = client.request("echo", &41).await.unwrap();
    assert_eq!(n, 41);
}

#[tokio::test]
async fn status_goes_reconnecting_then_connected_when_dropped() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(
        &mut server,
        ClientOptions::default().reconnect(fast_reconnect()),
    )
    .await;
    let mut status = client.status();
    status.borrow_and_update();
    server.drop_all();
    // Observe each transition through the watch.
    timeout(WAIT, status.changed()).await.unwrap().unwrap();
    assert_eq!(*status.borrow_and_update(), Status::Reconnecting);
    wait_status(&mut status, Status::Connected).await;
    let (conn, _) = server.upgrade().await;
    assert_eq!(conn, 2);
    wait_until_welcomed(&mut server, conn).await;
    assert_eq!(client.conn_id(), Some(server.id_of(2)));
}

async fn closed_with(code: u16) {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(
        &mut server,
        ClientOptions::default().reconnect(fast_reconnect()),
    )
    .await;
    let mut status = client.status();
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.request::<u32>("never", &1).await })
    };
    server
        .frame_where(|f| matches!(f, plexus_protocol::Frame::Req { .. }))
        .await;
    server.close_all(code);
    wait_status(&mut status, Status::Closed).await;
    let error = timeout(WAIT, pending).await.unwrap().unwrap().unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    // Upper bound on an absence: no new connection comes.
    let again = tokio::time::timeout(Duration::from_millis(300), server.upgrade()).await;
    assert!(
        again.is_err(),
        "the client reconnected after close code {code}"
    );
    assert_eq!(*client.status().borrow(), Status::Closed);
}

#[tokio::test]
async fn close_4003_goes_closed_without_reconnecting() {
    closed_with(4003).await;
}

#[tokio::test]
async fn close_1008_goes_closed_without_reconnecting() {
    closed_with(1008).await;
}

#[tokio::test]
async fn close_1001_reconnects() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(
        &mut server,
        ClientOptions::default().reconnect(fast_reconnect()),
    )
    .await;
    let mut status = client.status();
    status.borrow_and_update();
    server.close_all(1001);
    wait_status(&mut status, Status::Reconnecting).await;
    wait_status(&mut status, Status::Connected).await;
    let n: u32 = client.request("echo", &2).await.unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn disabled_reconnect_closes_on_the_first_drop() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(
        &mut server,
        ClientOptions::default().reconnect(ReconnectOptions::disabled()),
    )
    .await;
    let mut status = client.status();
    server.drop_all();
    wait_status(&mut status, Status::Closed).await;
}

#[tokio::test]
async fn before_connect_changes_url_and_headers_on_every_attempt() {
    let mut server = TestServer::start(Script::default()).await;
    let real_url: url::Url = server.url().parse().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let options = ClientOptions::default()
        .reconnect(fast_reconnect())
        .before_connect(move |req| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let url = real_url.clone();
            Box::pin(async move {
                req.url = url;
                req.headers
                    .insert(HeaderName::from_static("x-attempt"), HeaderValue::from(n));
                req.token = Some(format!("token-{n}"));
                Ok(())
            })
        });
    // The configured URL points nowhere; the hook redirects it.
    let client = connect("ws://127.0.0.1:9/nowhere", options).await.unwrap();
    let (_, headers) = server.upgrade().await;
    assert_eq!(headers["x-attempt"], "1");
    assert_eq!(headers["authorization"], "Bearer token-1");

    let mut status = client.status();
    status.borrow_and_update();
    server.drop_all();
    wait_status(&mut status, Status::Reconnecting).await;
    wait_status(&mut status, Status::Connected).await;
    let (_, headers) = server.upgrade().await;
    assert_eq!(headers["x-attempt"], "2");
    assert_eq!(headers["authorization"], "Bearer token-2");
}

#[test]
fn backoff_ceiling_grows_exponentially_and_caps() {
    let options = ReconnectOptions::default()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(2));
    let ceilings: Vec<u128> = (0..8)
        .map(|n| options.delay_ceiling(n).as_millis())
        .collect();
    assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
}

#[test]
fn backoff_delays_are_fully_jittered() {
    let options = ReconnectOptions::default();
    let ceiling = options.delay_ceiling(3);
    assert_eq!(ceiling, Duration::from_secs(2));
    let samples: Vec<Duration> = (0..2000).map(|_| options.delay(3)).collect();
    assert!(samples.iter().all(|d| *d <= ceiling));
    let min = samples.iter().min().unwrap();
    let max = samples.iter().max().unwrap();
    assert!(*min < ceiling / 10, "min {min:?}");
    assert!(*max > ceiling * 9 / 10, "max {max:?}");
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    assert!(
        mean > ceiling * 2 / 5 && mean < ceiling * 3 / 5,
        "mean {mean:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_are_spaced_by_jittered_backoff() {
    let times = Arc::new(Mutex::new(Vec::new()));
    let record = times.clone();
    let reconnect = ReconnectOptions::default()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(1))
        .max_attempts(Some(6));
    let options = ClientOptions::default()
        .reconnect(reconnect.clone())
        .before_connect(move |_req| {
            record.lock().unwrap().push(Instant::now());
            Box::pin(async { Err("token service down".into()) })
        });
    let error = connect("ws://127.0.0.1:9/ws", options).await.unwrap_err();
    assert!(matches!(error, ConnectError::Hook(_)), "{error:?}");

    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 6, "max_attempts bounds the first connect");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let mut at_ceiling = 0;
    for (i, gap) in gaps.iter().enumerate() {
        // After failure k (1-based) the delay is random in [0, initial * 2^k], capped.
        let ceiling = reconnect.delay_ceiling(i as u32 + 1);
        assert!(*gap <= ceiling, "gap {i}: {gap:?} > {ceiling:?}");
        if *gap == ceiling {
            at_ceiling += 1;
        }
    }
    assert!(at_ceiling < gaps.len(), "delays are not jittered: {gaps:?}");
}

#[tokio::test]
async fn max_attempts_bounds_the_first_connect() {
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let options = ClientOptions::default()
        .reconnect(fast_reconnect().max_attempts(Some(3)))
        .before_connect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        });
    let error = connect(&format!("ws://127.0.0.1:{port}/ws"), options)
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Transport(_)), "{error:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn first_connect_retries_until_the_server_is_up() {
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let options = ClientOptions::default()
        .reconnect(fast_reconnect().max_attempts(Some(1000)))
        .before_connect(move |req| {
            let _ = tx.send(req.attempt());
            Box::pin(async { Ok(()) })
        });
    let url = format!("ws://127.0.0.1:{port}/ws");
    let connecting = tokio::spawn(async move { connect(&url, options).await });
    // Start the server once the first attempt has failed and the second one started.
    for expected in 0..2 {
        assert_eq!(timeout(WAIT, rx.recv()).await.unwrap().unwrap(), expected);
    }
    let _server = TestServer::start_on(port, Script::default()).await;
    let client = timeout(WAIT, connecting).await.unwrap().unwrap().unwrap();
    assert_eq!(*client.status().borrow(), Status::Connected);
}

#[tokio::test]
async fn a_connector_that_fails_fails_the_attempt_and_is_called_again_on_each_retry() {
    let calls = Arc::new(AtomicU32::new(0));
    let options = ClientOptions::default()
        .reconnect(fast_reconnect().max_attempts(Some(3)))
        .connector({
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(std::io::Error::other("no pipe today")) }
            }
        });
    let error = timeout(WAIT, connect("ws://in-memory.invalid/ws", options))
        .await
        .expect("gave up in time")
        .expect_err("nothing to connect through");
    assert!(matches!(error, ConnectError::Transport(_)), "{error:?}");
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(chain.contains("no pipe today"), "{chain}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one call per attempt");
}
