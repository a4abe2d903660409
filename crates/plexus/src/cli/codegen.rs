//! `plexus codegen ts`: a server's contracts (`$contracts`) as a TypeScript module for the
//! TypeScript client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use plexus::contract::ContractSchema;
use serde_json::Value;

use super::call::{ConnectArgs, DEFAULT_TIMEOUT, Failure, exit};

/// What `codegen` writes.
#[derive(Subcommand, Debug)]
pub(crate) enum CodegenCommand {
    /// TypeScript: the contracts' types and one typed descriptor per contract, for
    /// `client.contract(Chat)` and `client.serve(Member, …)` of @plexus/client.
    Ts(TsArgs),
}

/// Arguments of `codegen ts`.
#[derive(Args, Debug)]
pub(crate) struct TsArgs {
    /// Server URL (e.g. ws://127.0.0.1:8787/ws): asks it for `$contracts`, which lists what
    /// this connection may call (give --token for the methods that need a permission)
    #[arg(required_unless_present = "schema")]
    url: Option<String>,
    /// Read the contracts from this file instead (a saved `$contracts` answer: a JSON array)
    #[arg(long, conflicts_with = "url")]
    schema: Option<PathBuf>,
    /// Write the module to this file (default: stdout)
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// The module the generated code imports the client's types from
    #[arg(long, default_value = "@plexus/client")]
    import: String,
    #[command(flatten)]
    conn: ConnectArgs,
}

pub(crate) async fn codegen(command: CodegenCommand) -> ExitCode {
    let CodegenCommand::Ts(args) = command;
    exit(ts(args).await)
}

async fn ts(args: TsArgs) -> Result<(), Failure> {
    let contracts: Vec<ContractSchema> = match (&args.schema, &args.url) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::local("IO_ERROR", format!("cannot read {}: {e}", path.display()))
            })?;
            serde_json::from_str(&text).map_err(|e| {
                Failure::local(
                    "INVALID_SCHEMA",
                    format!("{} is not a $contracts list: {e}", path.display()),
                )
            })?
        }
        (None, Some(url)) => {
            let client = args.conn.connect(url).await?;
            let answer = client
                .request::<Vec<ContractSchema>>("$contracts", &Value::Null)
                .timeout(args.conn.timeout().unwrap_or(DEFAULT_TIMEOUT))
                .await;
            client.close().await;
            answer?
        }
        (None, None) => unreachable!("clap requires a URL or --schema"),
    };
    let module = plexus::contract::typescript(&contracts, &args.import)
        .map_err(|e| Failure::local("INVALID_SCHEMA", e.to_string()))?;
    match &args.out {
        Some(path) => std::fs::write(path, module).map_err(|e| {
            Failure::local("IO_ERROR", format!("cannot write {}: {e}", path.display()))
        }),
        None => {
            print!("{module}");
            Ok(())
        }
    }
}
