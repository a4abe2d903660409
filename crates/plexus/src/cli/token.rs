//! `plexus token`: mint an HS256 token for a server configured with a JWT `secret`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};

use super::parse_duration;

/// Arguments of `token`.
#[derive(Args, Debug)]
pub(crate) struct TokenArgs {
    /// The HMAC secret the server verifies tokens with (its JWT `secret`)
    #[arg(long, env = "PLEXUS_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// The user id (`sub` claim)
    #[arg(long)]
    sub: String,
    /// Permissions, space-separated (`scope` claim), e.g. "chat:read chat:write"
    #[arg(long)]
    scope: Option<String>,
    /// How long the token is valid: 30s, 15m, 1h, 2d
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    ttl: Duration,
    /// Public user information shown in presence (`info` claim), as JSON
    #[arg(long, value_parser = parse_json)]
    info: Option<Value>,
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

/// Prints the token on stdout; exits 1 with the reason on stderr if it cannot be made.
pub(crate) fn token(args: TokenArgs) -> ExitCode {
    if args.ttl.is_zero() {
        eprintln!("error: --ttl must be more than zero");
        return ExitCode::FAILURE;
    }
    let mut extra = Map::new();
    if let Some(info) = args.info {
        extra.insert("info".into(), info);
    }
    match plexus_server::auth::jwt::mint_hs256(
        &args.secret,
        &args.sub,
        args.scope.as_deref(),
        args.ttl,
        extra,
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
