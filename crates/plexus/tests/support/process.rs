//! `plexus` child processes for the tests that kill, restart and compose real processes.

use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::within;

/// The `plexus` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_plexus");

/// A `plexus` child, killed with SIGKILL when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("PLEXUS_JWT_SECRET")
        .env_remove("PLEXUS_CONFIG")
        .env_remove("PLEXUS_TOKEN")
        .env_remove("PLEXUS_ENGINE")
        .env_remove("PLEXUS_NODE_ID")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

impl Proc {
    /// Starts `plexus ARGS` and waits until its stderr has a line containing `ready`;
    /// returns the child and that line.
    pub(crate) async fn start(args: &[&str], ready: &str) -> (Proc, String) {
        let mut child = command(args).spawn().expect("start plexus");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let line = within(
            &format!("`plexus {}` to say {ready:?}", args.join(" ")),
            async {
                loop {
                    match lines.next_line().await.expect("read stderr") {
                        Some(line) if line.contains(ready) => break line,
                        Some(_) => {}
                        None => panic!("`plexus {}` exited before {ready:?}", args.join(" ")),
                    }
                }
            },
        )
        .await;
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (Proc { child }, line)
    }

    /// Runs `plexus ARGS` to its end (within `bound`); returns how it exited and its stderr.
    pub(crate) async fn run(args: &[&str], bound: std::time::Duration) -> (ExitStatus, String) {
        let output = Self::output(args, bound).await;
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs `plexus ARGS` to its end (within `bound`); returns its status, stdout and stderr.
    pub(crate) async fn output(args: &[&str], bound: std::time::Duration) -> std::process::Output {
        let child = command(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start plexus");
        tokio::time::timeout(bound, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`plexus {}` still runs after {bound:?}", args.join(" ")))
            .expect("plexus runs")
    }

    /// The process id, while it runs.
    pub(crate) fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL: the process dies without a close frame; the kernel closes its sockets.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.expect("kill -9");
    }
}

/// The socket address of a `ws://HOST:PORT/...` URL.
pub(crate) fn ws_addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("ws://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {url}"))
}

/// The first `ws://…` URL in a log line.
pub(crate) fn ws_url(line: &str) -> String {
    let at = line.find("ws://").expect("a ws:// URL in the line");
    line[at..]
        .split(|c: char| c.is_whitespace() || c == '\u{1b}')
        .next()
        .expect("url")
        .to_owned()
}

/// `plexus serve` on a free loopback port with the configuration `config` (in a file of its
/// own: tests run at once) and `extra` flags; the server, its URL and address, and the file.
#[allow(dead_code)] // each test binary uses what it needs
pub(crate) async fn serve_with_config(
    config: &str,
    extra: &[&str],
) -> (Proc, String, std::net::SocketAddr, std::path::PathBuf) {
    static SERVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("plexus-test-{}-{n}.toml", std::process::id()));
    std::fs::write(&file, config).expect("write the config");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        file.to_str().expect("UTF-8"),
    ];
    args.extend(extra);
    let (proc, line) = Proc::start(&args, "ws://").await;
    let url = ws_url(&line);
    let addr = ws_addr(&url);
    (proc, url, addr, file)
}
