//! The `plexus` binary end to end: `serve` in a child process, `call`, `notify` and `stream`
//! against it, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_plexus");

/// A `plexus serve` child on a free port, stopped (SIGTERM) when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("PLEXUS_JWT_SECRET")
            .env_remove("PLEXUS_CONFIG")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plexus serve");
        // The server logs where it listens; the test waits for that line, not for a delay.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("plexus serve exited before listening")
                .expect("read stderr");
            if let Some(at) = line.find("ws://") {
                break line[at..].split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url }
    }

    fn plexus(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command.args(&args[..1]).arg(&self.url).args(&args[1..]);
        command.env_remove("PLEXUS_TOKEN");
        command.output().expect("run plexus")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "plexus serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn call_prints_the_result_as_json() {
    let served = Served::start(&[]);
    for codec in [&[][..], &["--msgpack"][..]] {
        let mut args = vec!["call", "sys.echo", r#"{"hello":"world","n":[1,2.5]}"#];
        args.extend_from_slice(codec);
        let out = served.plexus(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "{\"hello\":\"world\",\"n\":[1,2.5]}\n");
    }
    let out = served.plexus(&["call", "sys.sleep", r#"{"ms":5}"#]);
    assert_eq!(stdout(&out), "{\"slept\":5}\n");
}

#[test]
fn call_errors_go_to_stderr_with_exit_code_1() {
    let served = Served::start(&[]);
    let out = served.plexus(&["call", "sys.nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out).trim(), "NOT_FOUND: unknown method `sys.nope`");

    let out = served.plexus(&["call", "sys.sleep", r#"{"ms":"soon"}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("VALIDATION_ERROR: "),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(r#"data: {"path":"ms"}"#),
        "{}",
        stderr(&out)
    );

    let out = served.plexus(&["call", "--timeout", "200ms", "sys.sleep", r#"{"ms":10000}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("TIMEOUT: "), "{}", stderr(&out));

    let out = served.plexus(&["call", "sys.echo", "{not json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("VALIDATION_ERROR: params are not valid JSON"));
}

#[test]
fn call_to_nothing_listening_is_unavailable() {
    // Bind and drop a listener to get a port that nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args(["call", &format!("ws://127.0.0.1:{port}/ws"), "sys.echo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("UNAVAILABLE: cannot connect"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stream_prints_one_item_per_line() {
    let served = Served::start(&[]);
    let out = served.plexus(&["stream", "sys.count", r#"{"n":4,"interval_ms":10}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\n1\n2\n3\n");
    let out = served.plexus(&["stream", "--msgpack", "sys.count", r#"{"n":2}"#]);
    assert_eq!(stdout(&out), "0\n1\n");
    let out = served.plexus(&["stream", "sys.echo", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("BAD_FRAME: "), "{}", stderr(&out));
}

#[test]
fn notify_reports_what_the_server_refused() {
    let served = Served::start(&[]);
    let out = served.plexus(&["notify", "nobody.listens", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "NOT_FOUND: unknown method `nobody.listens`"
    );
    // A request method sent as a notification is refused the same way.
    let out = served.plexus(&["notify", "sys.echo", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("BAD_FRAME: "));
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let mut served = Served::start(&["--echo-path", "/echo"]);
    let out = served.plexus(&["call", "sys.echo", "1"]);
    assert!(out.status.success());
    let status = served.terminate();
    assert!(status.success(), "plexus serve exited with {status}");
}

#[test]
fn help_texts_name_every_command() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = stdout(&out);
    for command in [
        "serve",
        "relay",
        "call",
        "notify",
        "stream",
        "sub",
        "pub",
        "token",
        "codegen",
        "checkconfig",
        "genconfig",
        "--log-format",
    ] {
        assert!(help.contains(command), "{help}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = stdout(&out);
    for flag in [
        "--listen",
        "--path",
        "--echo-path",
        "--compression",
        "--heartbeat",
        "--jwt-secret",
        "PLEXUS_JWT_SECRET",
        "--metrics",
        "--engine",
    ] {
        assert!(help.contains(flag), "{help}");
    }
}

/// A `plexus sub` child; its stdout lines arrive on a channel.
struct Subscriber {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Subscriber {
    fn start(url: &str, args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["sub", url])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plexus sub");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The subscription is open once `joined` appears on stderr.
        let stderr = child.stderr.take().unwrap();
        let mut err_lines = BufReader::new(stderr).lines();
        let joined = err_lines.next().expect("sub printed nothing").unwrap();
        assert!(joined.starts_with("joined "), "{joined}");
        std::thread::spawn(move || for _ in err_lines {});
        Self { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a publication line within 10 s")
    }

    fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

#[test]
fn sub_prints_what_pub_publishes_and_recovers_with_since() {
    let served = Served::start(&[]);
    let sub = Subscriber::start(&served.url, &["demo:cli"]);
    let out = served.plexus(&["pub", "demo:cli", r#"{"text":"one"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let position: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(position["offset"], 1);
    let out = served.plexus(&["pub", "--msgpack", "demo:cli", "[1,2]"]);
    assert!(out.status.success());
    assert_eq!(sub.line(), r#"{"o":1,"d":{"text":"one"}}"#);
    assert_eq!(sub.line(), r#"{"o":2,"d":[1,2]}"#);
    assert!(sub.interrupt().success());

    // Joining again from the first position replays what came after it.
    let since = format!("{}:1", position["epoch"].as_str().unwrap());
    let late = Subscriber::start(&served.url, &["demo:cli", "--since", &since]);
    assert_eq!(late.line(), r#"{"o":2,"d":[1,2]}"#);
    assert!(late.interrupt().success());

    let out = served.plexus(&["pub", "nowhere:x", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("NOT_FOUND: "), "{}", stderr(&out));
}

#[test]
fn sub_with_a_timeout_stops_by_itself_and_says_where_it_stopped() {
    let served = Served::start(&[]);
    let out = served.plexus(&["pub", "demo:timed", r#"{"n":1}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let position: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let epoch = position["epoch"].as_str().unwrap();

    // Run without blocking the test forever should it not stop.
    let since = format!("{epoch}:0");
    let child = Command::new(BIN)
        .args([
            "sub",
            &served.url,
            "demo:timed",
            "--since",
            &since,
            "--timeout",
            "300ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plexus sub");
    let pid = child.id().to_string();
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = done.recv_timeout(Duration::from_secs(20)) else {
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        panic!("plexus sub --timeout 300ms still ran after 20 s");
    };
    let out = out.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"o\":1,\"d\":{\"n\":1}}\n"
    );
    let err = stderr(&out);
    assert!(err.contains("(recovered: true)"), "{err}");
    assert!(err.contains(&format!("last position {epoch}:1")), "{err}");
}

#[test]
fn token_prints_a_jwt_that_verifies_with_the_secret() {
    use plexus_server::{AuthError, JwtAuthenticator};

    let out = Command::new(BIN)
        .args(["token", "--secret", "cli-test-secret", "--sub", "alice"])
        .args(["--scope", "chat:read chat:write", "--ttl", "2d"])
        .args(["--info", r#"{"name":"Alice"}"#])
        .env_remove("PLEXUS_JWT_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let token = printed.strip_suffix('\n').expect("one line");
    assert_eq!(token.split('.').count(), 3, "{printed}");

    let principal = JwtAuthenticator::hs256("cli-test-secret")
        .verify(token)
        .unwrap();
    assert_eq!(principal.user.as_deref(), Some("alice"));
    assert!(principal.can("chat:read") && principal.can("chat:write"));
    assert_eq!(principal.info, Some(serde_json::json!({"name": "Alice"})));
    let left = principal
        .expires_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(2 * 86400 - 60) && left <= Duration::from_secs(2 * 86400),
        "{left:?}"
    );
    assert!(matches!(
        JwtAuthenticator::hs256("another-secret").verify(token),
        Err(AuthError::NotAuthorized(_))
    ));

    // The secret may come from the environment; the default lifetime is an hour.
    let out = Command::new(BIN)
        .args(["token", "--sub", "bob"])
        .env("PLEXUS_JWT_SECRET", "from-env")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let principal = JwtAuthenticator::hs256("from-env")
        .verify(stdout(&out).trim())
        .unwrap();
    assert_eq!(principal.user.as_deref(), Some("bob"));
    assert!(principal.permissions.is_empty());
    let left = principal
        .expires_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_secs(3600), "{left:?}");

    // Bad arguments are refused with a reason and no token.
    for (bad, reason) in [
        (&["--secret", "s", "--ttl", "3w"][..], "unknown unit"),
        (&["--secret", "s", "--ttl", "0s"][..], "more than zero"),
        (
            &["--secret", "s", "--info", "{not json"][..],
            "not valid JSON",
        ),
        (&["--secret", ""][..], "secret is empty"),
    ] {
        let out = Command::new(BIN)
            .args(["token", "--sub", "carol"])
            .args(bad)
            .env_remove("PLEXUS_JWT_SECRET")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
        assert_eq!(stdout(&out), "", "{bad:?}");
        assert!(stderr(&out).contains(reason), "{bad:?}: {}", stderr(&out));
    }
}

/// A configuration file with `text`, in the test's scratch directory.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_commands");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A token from `plexus token`.
fn token(secret: &str, sub: &str, scope: Option<&str>) -> String {
    let mut command = Command::new(BIN);
    command.args(["token", "--secret", secret, "--sub", sub]);
    if let Some(scope) = scope {
        command.args(["--scope", scope]);
    }
    let out = command.env_remove("PLEXUS_JWT_SECRET").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// Runs `plexus serve` with a configuration it must refuse; returns its stderr.
fn refused(config: &PathBuf) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env_remove("PLEXUS_JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("plexus serve started with {}", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn jwt_secret_requires_a_token_from_plexus_token() {
    for served in [
        Served::start(&["--jwt-secret", "cli-serve-secret"]),
        Served::start_with_env(&[], &[("PLEXUS_JWT_SECRET", "cli-serve-secret")]),
    ] {
        let good = token("cli-serve-secret", "alice", None);
        let out = served.plexus(&["call", "--token", &good, "sys.echo", r#"{"a":1}"#]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "{\"a\":1}\n");

        // Without a token: refused at once (not after the handshake timeout).
        let started = Instant::now();
        let out = served.plexus(&["call", "sys.echo", "1"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stdout(&out), "");
        assert!(
            stderr(&out).starts_with("NOT_AUTHORIZED: ")
                && stderr(&out).contains("missing credential"),
            "{}",
            stderr(&out)
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        let forged = token("another-secret", "mallory", None);
        let out = served.plexus(&["call", "--token", &forged, "sys.echo", "1"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).starts_with("NOT_AUTHORIZED: "),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn namespace_permissions_come_from_the_token() {
    let config = config_file(
        "permissions.toml",
        r#"
[auth]
strict = true
connect_permission = "connect"
[auth.jwt]
secret = "cli-perm-secret"
[namespaces."chat:*"]
client_publish = true
require = { join = "chat:read", publish = "chat:write" }
"#,
    );
    let served = Served::start(&["--config", config.to_str().unwrap()]);
    let writer = token("cli-perm-secret", "w", Some("connect chat:read chat:write"));
    let reader = token("cli-perm-secret", "r", Some("connect chat:read"));
    let outsider = token("cli-perm-secret", "o", Some("chat:read chat:write"));

    let out = served.plexus(&["pub", "--token", &writer, "chat:x", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = served.plexus(&["pub", "--token", &reader, "chat:x", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("FORBIDDEN: "), "{}", stderr(&out));
    // Without `connect`, the connection itself is refused.
    let out = served.plexus(&["call", "--token", &outsider, "sys.echo", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("FORBIDDEN: "), "{}", stderr(&out));
    // The built-in methods are public, so strict mode serves them.
    let out = served.plexus(&["call", "--token", &reader, "sys.echo", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn invalid_security_configs_are_refused_naming_the_key() {
    let cases = [
        (
            "bad-key.toml",
            "[auth.jwt]\npublic_key_file = \"no-such-key.pem\"\n".to_owned(),
            vec!["`auth.jwt.public_key_file`", "no-such-key.pem"],
        ),
        (
            "strict.toml",
            "[auth]\nstrict = true\n[auth.jwt]\nsecret = \"s\"\n[namespaces.\"room:*\"]\n"
                .to_owned(),
            vec!["`auth.strict`", "`namespaces.\"room:*\"`", "public = true"],
        ),
        (
            "bad-origin.toml",
            "origins = [\"https://app.example.com\", \"app.example.com\"]\n".to_owned(),
            vec!["origins", "invalid origin `app.example.com`"],
        ),
        (
            "bad-rate.toml",
            "[limits]\ncall_rate = { per_second = 0, burst = 10 }\n".to_owned(),
            vec!["call_rate", "`per_second` must be at least 1"],
        ),
        (
            "permission-without-auth.toml",
            "[auth]\nconnect_permission = \"connect\"\n".to_owned(),
            vec!["`auth.connect_permission` needs authentication"],
        ),
    ];
    for (name, text, expected) in cases {
        let path = config_file(name, &text);
        let error = refused(&path);
        assert!(error.contains("invalid config"), "{name}: {error}");
        assert!(error.contains(name), "{name}: {error}");
        for part in expected {
            assert!(error.contains(part), "{name}: `{part}` not in {error}");
        }
    }
}

#[test]
fn limits_and_origins_from_the_config_apply() {
    let config = config_file(
        "limits.toml",
        r#"
origins = ["https://app.example.com"]
[limits]
call_rate = "off"
publish_rate = { per_second = 10, burst = 20 }
max_connections = 100
max_connections_per_ip = 1
"#,
    );
    let served = Served::start(&["--config", config.to_str().unwrap()]);
    let out = served.plexus(&[
        "call",
        "-H",
        "Origin: https://app.example.com",
        "sys.echo",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = served.plexus(&[
        "call",
        "-H",
        "Origin: https://evil.example",
        "sys.echo",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));

    // One connection per address: a second one waits for the first to go.
    let sub = Subscriber::start(&served.url, &["demo:limits"]);
    let out = served.plexus(&["call", "sys.echo", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("429"), "{}", stderr(&out));
    assert!(sub.interrupt().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = served.plexus(&["call", "sys.echo", "1"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", stderr(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_without_config_allows_same_origin_and_localhost_pages() {
    let served = Served::start(&[]);
    let out = served.plexus(&[
        "call",
        "-H",
        "Origin: http://localhost:3000",
        "sys.echo",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = served.plexus(&[
        "call",
        "-H",
        "Origin: https://evil.example",
        "sys.echo",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
}

/// The first lines `plexus serve` logs, up to the one saying where it listens.
fn first_log_lines(extra: &[&str]) -> Vec<String> {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("PLEXUS_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plexus serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read stderr");
        let listening = line.contains("ws://");
        lines.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn logs_are_plain_text_when_redirected_and_json_when_asked() {
    let text = first_log_lines(&[]);
    assert!(!text.is_empty());
    for line in &text {
        assert!(
            !line.contains('\u{1b}'),
            "a colour escape in a redirected log: {line:?}"
        );
    }
    let json = first_log_lines(&["--log-format", "json"]);
    assert!(!json.is_empty());
    for line in &json {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(record["level"], "INFO", "{record}");
        assert!(record["fields"]["message"].is_string(), "{record}");
    }
}

/// `plexus checkconfig FILE`.
fn checkconfig(path: &PathBuf) -> Output {
    Command::new(BIN)
        .arg("checkconfig")
        .arg(path)
        .env_remove("PLEXUS_JWT_SECRET")
        .output()
        .expect("run plexus checkconfig")
}

#[test]
fn genconfig_prints_the_example_and_checkconfig_accepts_it() {
    let out = Command::new(BIN).arg("genconfig").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../plexus.example.toml"
    ))
    .unwrap();
    assert_eq!(stdout(&out), example);
    let path = config_file("generated.toml", &stdout(&out));
    let checked = checkconfig(&path);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(stdout(&checked).contains(": ok ("), "{}", stdout(&checked));
}

#[test]
fn checkconfig_refuses_each_broken_file_as_serve_would() {
    let cases = [
        ("syntax.toml", "listen = \n", "invalid config"),
        (
            "unknown.toml",
            "[limits]\nheartbeet = \"1s\"\n",
            "heartbeet",
        ),
        (
            "value.toml",
            "[limits]\nheartbeat = \"10ms\"\n",
            "limits.heartbeat",
        ),
        (
            "engine.toml",
            "[engine]\nurl = \"postgres://x\"\n",
            "engine.url",
        ),
        (
            "keyfile.toml",
            "[auth.jwt]\npublic_key_file = \"missing.pem\"\n",
            "auth.jwt.public_key_file",
        ),
        (
            "strict.toml",
            "[auth]\nstrict = true\n[auth.jwt]\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
             [namespaces.\"room:*\"]\nhistory_size = 10\n",
            "auth.strict",
        ),
    ];
    for (name, text, named) in cases {
        let path = config_file(name, text);
        let out = checkconfig(&path);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stdout(&out));
        let problem = stderr(&out);
        assert!(problem.contains(named), "{name}: {problem}");
        // `serve` refuses it with the same words.
        let served = refused(&path);
        assert!(
            served.contains(problem.trim().trim_start_matches("error: ")),
            "{name}: checkconfig said {problem:?}, serve said {served:?}"
        );
    }
}

#[test]
fn a_call_is_a_span_with_its_method_and_outcome_in_the_json_log() {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("PLEXUS_JWT_SECRET")
        .env_remove("PLEXUS_CONFIG")
        .env("RUST_LOG", "info,plexus_server=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plexus serve");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let log = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line within 10 s")
    };
    let url = loop {
        let line = next();
        if let Some(at) = line.find("ws://") {
            break line[at..].split(['"', ' ']).next().unwrap().to_owned();
        }
    };
    let out = Command::new(BIN)
        .args(["call", &url, "sys.echo", "[1]"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let closed = loop {
        let record: serde_json::Value = serde_json::from_str(&next()).expect("JSON");
        if record["span"]["name"] == "call" && record["fields"]["message"] == "close" {
            break record;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(closed["span"]["method"], "sys.echo", "{closed}");
    assert_eq!(closed["span"]["outcome"], "ok", "{closed}");
    assert_eq!(closed["level"], "DEBUG", "{closed}");
}
