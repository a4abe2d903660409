//! Opening a connection: to a loopback address unless told otherwise, from one of several
//! source addresses on loopback (so that many connections do not run out of ports), with
//! the request's headers, then the server's handshake steps.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::template::{Fill, Template};

/// An open connection.
pub type Ws = WebSocketStream<tokio::net::TcpStream>;

/// How long one handshake step may wait.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which servers a [`Target`] may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Loopback addresses only: what the repository's benchmark and tests load.
    Loopback,
    /// Any address: a server of one's own on another machine.
    Any,
}

/// Where to connect and what to do once connected.
#[derive(Clone, Debug)]
pub struct Target {
    url: String,
    addr: SocketAddr,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `send:TEMPLATE` or `expect:TEXT`, in order.
    handshake: Vec<String>,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    src_addrs: u8,
}

impl Target {
    /// The server at the `ws://` URL `url` (a host name is resolved), refused unless
    /// `scope` allows its address. After the upgrade each connection runs `handshake`:
    /// `send:TEMPLATE` or `expect:TEXT` steps, in order. Connections to 127.0.0.1 come from
    /// 127.0.0.1 to 127.0.0.`src_addrs`.
    pub async fn resolve(
        url: &str,
        handshake: Vec<String>,
        src_addrs: u8,
        scope: Scope,
    ) -> anyhow::Result<Self> {
        if url.starts_with("wss://") {
            bail!("only ws:// URLs: measure the server behind its TLS terminator");
        }
        let rest = url
            .strip_prefix("ws://")
            .context("the URL must start with ws://")?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let addr = match authority.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let with_port = if authority.rsplit_once(':').is_some_and(|(_, port)| {
                    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                }) {
                    authority.to_owned()
                } else {
                    format!("{authority}:80")
                };
                let all: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
                    .await
                    .with_context(|| format!("cannot resolve `{authority}`"))?
                    .collect();
                // Every address, not only the one used: whoever else resolves the name (a
                // client of the caller's) must not reach a server off this machine either.
                if scope == Scope::Loopback
                    && let Some(remote) = all.iter().find(|a| !a.ip().is_loopback())
                {
                    bail!(
                        "refusing `{authority}`: it resolves to {remote}, and only loopback addresses are load targets here"
                    );
                }
                // IPv4 first where both exist: the source addresses are IPv4.
                all.iter()
                    .find(|a| a.is_ipv4())
                    .or(all.first())
                    .copied()
                    .with_context(|| format!("`{authority}` has no address"))?
            }
        };
        if scope == Scope::Loopback && !addr.ip().is_loopback() {
            bail!("refusing {addr}: only loopback addresses are load targets here");
        }
        Ok(Self {
            url: url.to_owned(),
            addr,
            headers: Vec::new(),
            handshake,
            src_addrs: src_addrs.max(1),
        })
    }

    /// Sends `name: value` with every upgrade request (a token, a cookie).
    pub fn header(mut self, name: &str, value: &str) -> anyhow::Result<Self> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("`{name}` is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("the value of {name} is not a header value"))?;
        self.headers.push((name, value));
        Ok(self)
    }

    /// The address connections go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connection number `conn`: upgraded, handshake done.
    pub async fn open(&self, conn: usize, pad: &str) -> anyhow::Result<Ws> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if self.addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) && self.src_addrs > 1 {
            let last = 1 + (conn % self.src_addrs as usize) as u8;
            socket.bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
                0,
            ))?;
        }
        socket.set_nodelay(true)?;
        let stream = socket.connect(self.addr).await?;
        let mut request = self.url.as_str().into_client_request()?;
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        // tungstenite zeroes its read buffer on every read: 4 KiB instead of the default
        // 128 KiB keeps that from being the generator's largest cost.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (mut ws, _) = client_async_with_config(request, stream, Some(config)).await?;
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
