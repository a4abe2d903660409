//! The floor of plexus's benchmark: what a bare tokio + tokio-tungstenite server costs, with
//! no framework. It speaks the plain JSON bench protocol:
//!
//! - `{"id":N,"action":"echo","data":X}` → `{"id":N,"result":X}`;
//! - `{"action":"subscribe","channel":C}` → `{"action":"subscribed","channel":C}`;
//! - `{"action":"publish","channel":C,"data":X}` → every subscriber of C gets
//!   `{"action":"message","channel":C,"data":X}`, serialised once.
//!
//! Each connection has a writer task fed by a bounded queue; a subscriber whose queue is full
//! is dropped, as a real server would. Usage: `plexus-bench-floor PORT` (listens on
//! 127.0.0.1).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames queued per connection before it counts as a slow consumer.
const QUEUE: usize = 1024;

type Subscribers = HashMap<String, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9001);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let channels: Arc<Mutex<Subscribers>> = Arc::default();
    let ids = AtomicU64::new(1);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(id, stream, channels.clone()));
    }
}

async fn serve(id: u64, stream: tokio::net::TcpStream, channels: Arc<Mutex<Subscribers>>) {
    // A 4 KiB read buffer, as a careful deployment would set (the default is 128 KiB).
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            let mut batch = vec![text];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            for text in batch {
                if sink.feed(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = source.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(request) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let channel = request["channel"].as_str().unwrap_or_default();
        let reply = match request["action"].as_str() {
            Some("echo") => Some(json!({"id": request["id"], "result": request["data"]})),
            Some("subscribe") => {
                let mut channels = channels.lock().unwrap_or_else(|e| e.into_inner());
                channels
                    .entry(channel.to_owned())
                    .or_default()
                    .push((id, tx.clone()));
                Some(json!({"action": "subscribed", "channel": channel}))
            }
            Some("publish") => {
                let message: Utf8Bytes = json!({
                    "action": "message",
                    "channel": channel,
                    "data": request["data"],
                })
                .to_string()
                .into();
                let mut channels = channels.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(subscribers) = channels.get_mut(channel) {
                    subscribers.retain(|(_, queue)| queue.try_send(message.clone()).is_ok());
                }
                None
            }
            _ => None,
        };
        if let Some(reply) = reply
            && tx.send(reply.to_string().into()).await.is_err()
        {
            break;
        }
    }
    channels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values_mut()
        .for_each(|subscribers| subscribers.retain(|(who, _)| *who != id));
    drop(tx);
    let _ = writer.await;
}
