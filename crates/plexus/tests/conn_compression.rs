//! End-to-end: permessage-deflate negotiation (RFC 7692), checked on a hand-written HTTP
//! upgrade, and the RSV1 bit of the frames the server then writes, publications written
//! straight to the socket among them.

mod support;

use std::time::Duration;

use plexus_server::{Compression, Server};
use serde_json::{Value, json};
use support::{
    header, masked_text, raw_upgrade, read_raw_frame_with_flags, start_with, sys, within,
};
use tokio::io::AsyncWriteExt;

const OFFER: (&str, &str) = (
    "Sec-WebSocket-Extensions",
    "permessage-deflate; client_max_window_bits",
);

async fn server(compression: Compression) -> support::TestServer {
    let mut config = support::config();
    config.compression = compression;
    start_with(Server::builder().router(sys()).config(config)).await
}

/// The negotiated extensions of an upgrade offering deflate (and JSON), after checking 101.
async fn negotiate(compression: Compression, offer: bool) -> (Option<String>, support::TestServer) {
    let server = server(compression).await;
    let mut headers = vec![("Sec-WebSocket-Protocol", "plexus.v1.json")];
    if offer {
        headers.push(OFFER);
    }
    let (_, head, _) = raw_upgrade(server.addr, &headers).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-protocol"),
        Some("plexus.v1.json")
    );
    let extensions = header(&head, "sec-websocket-extensions").map(str::to_owned);
    (extensions, server)
}

#[tokio::test]
async fn on_negotiates_deflate() {
    let (extensions, _server) = negotiate(Compression::On, true).await;
    let extensions = extensions.expect("an extensions header");
    assert!(extensions.contains("permessage-deflate"), "{extensions}");
}

#[tokio::test]
async fn no_context_takeover_negotiates_deflate_without_server_takeover() {
    let (extensions, _server) = negotiate(Compression::NoContextTakeover, true).await;
    let extensions = extensions.expect("an extensions header");
    assert!(extensions.contains("permessage-deflate"), "{extensions}");
    assert!(
        extensions.contains("server_no_context_takeover"),
        "{extensions}"
    );
}

#[tokio::test]
async fn off_does_not_negotiate() {
    let (extensions, _server) = negotiate(Compression::Off, true).await;
    assert!(
        !extensions.is_some_and(|e| e.contains("permessage-deflate")),
        "compression is off"
    );
}

#[tokio::test]
async fn nothing_negotiated_without_an_offer() {
    let (extensions, _server) = negotiate(Compression::On, false).await;
    assert_eq!(extensions, None);
}

#[tokio::test]
async fn the_first_acceptable_offer_of_a_list_is_agreed_and_used() {
    let server = server(Compression::On).await;
    // A window of 8 bits cannot be honoured; the second offer can; the third is not needed.
    let offers = "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, \
                  permessage-deflate; server_no_context_takeover, permessage-deflate";
    let (mut socket, head, mut buf) =
        raw_upgrade(server.addr, &[("Sec-WebSocket-Extensions", offers)]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let agreed = header(&head, "sec-websocket-extensions").expect("an agreed offer");
    assert!(
        agreed.starts_with("permessage-deflate") && agreed.contains("server_no_context_takeover"),
        "{agreed}"
    );
    assert!(!agreed.contains(','), "one offer agreed: {agreed}");
    within("welcome", read_raw_frame_with_flags(&mut socket, &mut buf))
        .await
        .expect("welcome");
    let (compressed, payload) = echo_on(&mut socket, &mut buf, 4000).await;
    assert!(
        compressed && payload.len() < 1000,
        "{compressed} {}",
        payload.len()
    );
}

/// The next data frame the server sends, skipping pings: whether RSV1 (compressed) is set,
/// and the payload as sent. Checks it is a final text frame.
async fn next_text_frame(socket: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (bool, Vec<u8>) {
    loop {
        let (first, payload) = within("a frame", read_raw_frame_with_flags(socket, buf))
            .await
            .expect("a frame");
        match first & 0x0f {
            0x9 => continue,
            0x1 => {
                assert_eq!(first & 0x80, 0x80, "FIN");
                return (first & 0x40 != 0, payload);
            }
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

/// Sends an uncompressed `sys.echo` of `size` characters on an upgraded socket; the reply
/// frame's RSV1 bit and payload.
async fn echo_on(
    socket: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    size: usize,
) -> (bool, Vec<u8>) {
    let request = json!({"t": "req", "id": 1, "m": "sys.echo", "d": "a".repeat(size)});
    within(
        "send",
        socket.write_all(&masked_text(request.to_string().as_bytes())),
    )
    .await
    .expect("write");
    next_text_frame(socket, buf).await
}

/// Sends an uncompressed `sys.echo` of `size` characters on a raw upgraded socket and
/// returns the RSV1 bit and length of the reply frame.
async fn echo_frame(compression: Compression, size: usize) -> (bool, usize) {
    let server = server(compression).await;
    let (mut socket, head, mut buf) = raw_upgrade(server.addr, &[OFFER]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The welcome (small: never compressed).
    let (first, payload) = within("welcome", read_raw_frame_with_flags(&mut socket, &mut buf))
        .await
        .expect("welcome");
    assert_eq!(first, 0x81, "an uncompressed final text frame");
    let welcome: Value = serde_json::from_slice(&payload).expect("json");
    assert_eq!(welcome["t"], "welcome");

    let (compressed, payload) = echo_on(&mut socket, &mut buf, size).await;
    (compressed, payload.len())
}

#[tokio::test]
async fn large_messages_are_compressed_small_ones_not() {
    // 4,000 repeated characters deflate to far less; the raw reply is about 4,030 bytes.
    let (compressed, len) = echo_frame(Compression::On, 4000).await;
    assert!(compressed, "RSV1 set on a large message");
    assert!(len < 1000, "compressed length {len}");
    let (compressed, len) = echo_frame(Compression::NoContextTakeover, 4000).await;
    assert!(compressed && len < 1000, "RSV1 {compressed}, {len} bytes");
    // Under the 256-byte threshold: sent as is.
    let (compressed, len) = echo_frame(Compression::On, 10).await;
    assert!(!compressed, "small message sent uncompressed");
    assert_eq!(len, r#"{"t":"res","id":1,"d":"aaaaaaaaaa"}"#.len());
    // Off: never compressed, whatever the offer.
    let (compressed, len) = echo_frame(Compression::Off, 4000).await;
    assert!(!compressed);
    assert!(len > 4000);
}

/// Publications to a compressed connection: small ones after a quiet spell may be written
/// straight to the socket by the publisher (uncompressed), large ones go through the
/// connection's task and yawc's compressor. Interleaved, every frame must still decode, in
/// order, with the compressor's context intact (context takeover on).
#[tokio::test]
async fn direct_and_compressed_publications_interleave_intact() {
    use plexus_server::{ChannelOptions, Namespaces};

    let mut config = support::config();
    config.compression = Compression::On;
    let server = start_with(
        Server::builder()
            .router(sys())
            .config(config)
            .channels(Namespaces::new().namespace("feed:*", ChannelOptions::default())),
    )
    .await;
    let (mut socket, head, mut buf) = raw_upgrade(server.addr, &[OFFER]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let extensions = header(&head, "sec-websocket-extensions").unwrap_or_default();
    assert!(extensions.contains("permessage-deflate"), "{extensions}");
    assert!(
        !extensions.contains("server_no_context_takeover"),
        "{extensions}"
    );

    // The server's context carries over between messages: one inflater for all of them.
    let mut inflater = flate2::Decompress::new(false);
    let mut next_text = async |socket: &mut tokio::net::TcpStream, buf: &mut Vec<u8>| {
        let (compressed, payload) = next_text_frame(socket, buf).await;
        if !compressed {
            return (false, serde_json::from_slice::<Value>(&payload).unwrap());
        }
        let mut input = payload;
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut output = Vec::with_capacity(64 * 1024);
        inflater
            .decompress_vec(&input, &mut output, flate2::FlushDecompress::Sync)
            .expect("inflates with the shared context");
        assert!(output.len() < output.capacity(), "inflated whole");
        (true, serde_json::from_slice::<Value>(&output).unwrap())
    };
    let (_, welcome) = next_text(&mut socket, &mut buf).await;
    assert_eq!(welcome["t"], "welcome");
    let join = json!({"t": "join", "id": 1, "ch": "feed:z"}).to_string();
    within("send", socket.write_all(&masked_text(join.as_bytes())))
        .await
        .expect("write");
    let (_, res) = next_text(&mut socket, &mut buf).await;
    assert_eq!(res["t"], "res", "{res}");

    let hub = server.server.hub().clone();
    let large = "abc".repeat(2000);
    let mut expected = Vec::new();
    for round in 0..8u64 {
        // Quiet for longer than the direct-write rule asks (50 ms): a small publication
        // that opens the round may go straight to the socket, a large one must not (it is
        // to be compressed); the rest of the round follows through the queue.
        tokio::time::sleep(Duration::from_millis(80)).await;
        let n = round * 3;
        let sizes = if round % 2 == 0 {
            [false, true, false]
        } else {
            [true, false, false]
        };
        for (k, is_large) in (0..).zip(sizes) {
            let data = if is_large {
                json!({"n": n + k, "pad": large})
            } else {
                json!({"n": n + k})
            };
            hub.publish("feed:z", &data).await.unwrap();
            expected.push((n + k, is_large));
        }
    }
    for (offset, (n, compressed)) in (1u64..).zip(expected) {
        let (was_compressed, frame) = next_text(&mut socket, &mut buf).await;
        assert_eq!(frame["t"], "msg", "{frame}");
        assert_eq!(frame["o"], offset, "in order, none missing: {frame}");
        assert_eq!(frame["d"]["n"], n);
        assert_eq!(was_compressed, compressed, "publication {n}");
        if compressed {
            assert_eq!(frame["d"]["pad"], large.as_str());
        }
    }
}
