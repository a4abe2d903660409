//! `plexus checkconfig FILE` and `plexus genconfig`: a configuration checked before a deploy
//! exactly as `serve` checks it at start (without listening or reaching the broker), and the
//! example configuration with every key.

use std::path::Path;

use super::FileConfig;

/// The repository's `plexus.example.toml`: every key, with its default unless its comment
/// says otherwise.
pub(crate) const EXAMPLE: &str = include_str!("../../../../../plexus.example.toml");

/// Everything `serve` checks before it listens: the file (syntax, unknown keys, values),
/// the key files it names, the engine URL, the raw endpoints' paths, and strict mode. `Ok`
/// with the file's summary.
pub(crate) fn check(path: &Path) -> Result<String, String> {
    let file = super::load(path)?;
    let endpoint = file.endpoint();
    let publish_rate = endpoint.limits.publish_rate;
    let builder = file.server_builder(endpoint, None)?;
    file.engine.choose(None)?;
    let pipes = file.pipes();
    let ws_path = file.path.as_deref().unwrap_or("/ws");
    let builder = crate::cli::with_raw_endpoints(
        builder,
        ws_path,
        file.echo_path.as_deref(),
        &pipes,
        publish_rate,
        &crate::cli::http_routes(
            file.metrics.unwrap_or(true),
            file.page.unwrap_or(true),
            file.api_key.is_some(),
        ),
    )
    .map_err(|e| e.to_string())?;
    builder.try_build().map_err(|e| file.build_error(&e))?;
    Ok(summary(&file, path))
}

fn summary(file: &FileConfig, path: &Path) -> String {
    let namespaces = file.namespaces.as_ref().map_or(0, |n| n.len());
    format!(
        "{}: ok ({} namespace{}, authentication {}, engine {})",
        path.display(),
        namespaces,
        if namespaces == 1 { "" } else { "s" },
        if file.has_jwt() { "on" } else { "off" },
        file.engine.url.as_deref().unwrap_or("memory"),
    )
}
