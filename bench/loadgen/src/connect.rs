//! Opening a connection: loopback only, from one of several source addresses (so that many
//! connections do not run out of ports), then the server's handshake steps.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::template::{Fill, Template};

pub(crate) type Ws = WebSocketStream<tokio::net::TcpStream>;

/// How long one handshake step may wait.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect and what to do once connected.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    /// `send:TEMPLATE` or `expect:TEXT`, in order.
    pub(crate) handshake: Vec<String>,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    pub(crate) src_addrs: u8,
}

impl Target {
    /// Checks that `url` is a `ws://` URL on a loopback address: load goes nowhere else.
    pub(crate) fn new(url: &str, handshake: Vec<String>, src_addrs: u8) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .context("the URL must start with ws://")?;
        let authority = rest.split('/').next().unwrap_or_default();
        let addr: SocketAddr = match authority.strip_prefix("localhost:") {
            Some(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port.parse()?),
            None => authority
                .parse()
                .with_context(|| format!("`{authority}` is not an IP address and port"))?,
        };
        if !addr.ip().is_loopback() {
            bail!("refusing {addr}: only loopback addresses are load targets");
        }
        Ok(Self {
            url: url.to_owned(),
            addr,
            handshake,
            src_addrs: src_addrs.max(1),
        })
    }

    /// Connection number `conn`: upgraded, handshake done.
    pub(crate) async fn open(&self, conn: usize, pad: &str) -> anyhow::Result<Ws> {
        let socket = TcpSocket::new_v4()?;
        if self.addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) && self.src_addrs > 1 {
            let last = 1 + (conn % self.src_addrs as usize) as u8;
            socket.bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
                0,
            ))?;
        }
        socket.set_nodelay(true)?;
        let stream = socket.connect(self.addr).await?;
        // tungstenite zeroes its read buffer on every read: 4 KiB instead of the default
        // 128 KiB keeps that from being the generator's largest cost.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (mut ws, _) = client_async_with_config(self.url.as_str(), stream, Some(config)).await?;
        for step in &self.handshake {
            let fill = Fill {
                conn,
                pad,
                ..Fill::default()
            };
            if let Some(template) = step.strip_prefix("send:") {
                ws.send(Message::text(Template::new(template).render(fill)))
                    .await?;
            } else if let Some(text) = step.strip_prefix("expect:") {
                tokio::time::timeout(STEP_TIMEOUT, expect(&mut ws, text))
                    .await
                    .with_context(|| {
                        format!("no frame containing {text} within {STEP_TIMEOUT:?}")
                    })??;
            } else {
                bail!("a handshake step is send:TEMPLATE or expect:TEXT, not `{step}`");
            }
        }
        Ok(ws)
    }
}

/// Reads until a text frame contains `text`.
pub(crate) async fn expect(ws: &mut Ws, text: &str) -> anyhow::Result<()> {
    while let Some(message) = ws.next().await {
        if let Message::Text(got) = message?
            && got.as_str().contains(text)
        {
            return Ok(());
        }
    }
    bail!("the connection ended before a frame containing {text}")
}
