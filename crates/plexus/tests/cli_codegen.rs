//! `plexus codegen ts` (the real binary) against a real server's `$contracts`, and from a
//! saved `$contracts` file: the same TypeScript module either way, with the token deciding
//! which methods it holds.

mod support;

use std::process::Output;
use std::time::Duration;

use plexus::{RpcError, Server, contract};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use support::process::Proc;

/// A note.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Note {
    text: String,
}

/// Notes.
#[contract]
trait Notes {
    /// Adds a note.
    #[public]
    async fn add(&self, note: Note) -> Result<u64, RpcError>;
    /// Forgets every note.
    #[requires("notes:admin")]
    async fn clear(&self) -> Result<(), RpcError>;
}

struct Book;

impl Notes for Book {
    async fn add(&self, _note: Note) -> Result<u64, RpcError> {
        Ok(1)
    }
    async fn clear(&self) -> Result<(), RpcError> {
        Ok(())
    }
}

/// `plexus ARGS`, to its end (within a bound).
async fn plexus(args: Vec<String>) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::output(&args, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codegen_ts_writes_the_servers_contracts_as_typescript() {
    let server = support::start_with(
        Server::builder()
            .router(NotesContract::router(Book))
            .authenticator(support::jwt_authenticator()),
    )
    .await;
    let url = format!("ws://{}/ws", server.addr);
    let token = support::token("ada", "notes:admin", 600);
    let dir = std::env::temp_dir().join(format!("plexus-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("notes.ts");

    let out = plexus(
        ["codegen", "ts", &url, "--token", &token, "-o"]
            .iter()
            .map(ToString::to_string)
            .chain([file.display().to_string()])
            .collect(),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let module = std::fs::read_to_string(&file).expect("written");
    for expected in [
        "import type * as plexus_client from \"@plexus/client\";",
        "export interface Note {\n  text: string;\n}",
        "export const Notes: plexus_client.Contract<{",
        "  add: { kind: \"request\"; params: Note; result: number };",
        "  clear: { kind: \"request\"; params: void; result: null };",
        "    add: { kind: \"request\", name: \"Notes.add\" },",
    ] {
        assert!(module.contains(expected), "{expected:?} not in:\n{module}");
    }

    // From a saved `$contracts` answer: the same module, on stdout, importing where told.
    let schema = dir.join("contracts.json");
    let contracts = vec![NotesContract::schema()];
    std::fs::write(&schema, serde_json::to_string(&contracts).expect("json")).expect("write");
    let out = plexus(vec![
        "codegen".into(),
        "ts".into(),
        "--schema".into(),
        schema.display().to_string(),
        "--import".into(),
        "./client.js".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        module.replace("\"@plexus/client\"", "\"./client.js\"")
    );

    // Without the permission, `clear` is not listed, so not generated.
    let reader = support::token("bob", "", 600);
    let out = plexus(
        ["codegen", "ts", &url, "--token", &reader]
            .iter()
            .map(ToString::to_string)
            .collect(),
    )
    .await;
    let module = String::from_utf8_lossy(&out.stdout);
    assert!(
        module.contains("add:") && !module.contains("clear"),
        "{module}"
    );

    // A file that is not a `$contracts` list says so, with exit 1.
    std::fs::write(&schema, "{\"name\": 1}").expect("write");
    let out = plexus(vec![
        "codegen".into(),
        "ts".into(),
        "--schema".into(),
        schema.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("INVALID_SCHEMA: "), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
