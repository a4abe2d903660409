//! Tests of the parent module.

use super::*;

fn parse(text: &str) -> Result<FileConfig, String> {
    let config: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    config.validate()?;
    Ok(config)
}

fn rate(per_second: u32, burst: u32) -> Option<RateLimit> {
    Some(RateLimit::new(per_second, burst).unwrap())
}

/// The auth settings applied to a server with the built-in methods, built (strict mode
/// checked).
fn build(config: &FileConfig, jwt_secret: Option<&str>) -> Result<(), String> {
    config
        .server_builder(config.endpoint(), jwt_secret)?
        .try_build()
        .map(drop)
        .map_err(|e| config.build_error(&e))
}

#[test]
fn the_example_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../plexus.example.toml");
    let config = load(Path::new(path)).unwrap();
    assert!(config.api_key.is_some());
    let namespaces = config.namespaces();
    let room = namespaces.resolve("room:1").unwrap();
    assert_eq!(
        room.required_permission(ChannelAction::Publish),
        Some("chat:write")
    );
    assert_eq!(
        room.required_permission(ChannelAction::History),
        Some("chat:read")
    );
    assert!(namespaces.undeclared().is_empty());
    // It shows the defaults of `plexus serve`.
    let endpoint = config.endpoint();
    let defaults = FileConfig::default().endpoint();
    assert_eq!(endpoint.origins, defaults.origins);
    assert_eq!(endpoint.limits.call_rate, defaults.limits.call_rate);
    assert_eq!(endpoint.limits.publish_rate, defaults.limits.publish_rate);
    assert_eq!(
        endpoint.limits.max_connections_per_ip,
        defaults.limits.max_connections_per_ip
    );
    assert_eq!(
        endpoint.limits.max_connections,
        defaults.limits.max_connections
    );
    assert_eq!(config.auth.jwt.as_ref().unwrap().leeway_secs, 5);
    build(&config, None).unwrap();
}

#[test]
fn the_bench_file_turns_the_rate_limits_off() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/plexus-bench.toml");
    let limits = load(Path::new(path)).unwrap().endpoint().limits;
    assert_eq!(limits.call_rate, None);
    assert_eq!(limits.publish_rate, None);
    assert!(limits.max_connections_per_ip > 20_000);
    assert!(limits.max_connections >= limits.max_connections_per_ip);
}

#[test]
fn serve_has_rate_limits_and_the_default_origin_policy() {
    let endpoint = parse("").unwrap().endpoint();
    assert_eq!(endpoint.limits.call_rate, rate(500, 1000));
    assert_eq!(endpoint.limits.publish_rate, rate(100, 200));
    assert_eq!(endpoint.limits.max_connections_per_ip, 1000);
    assert_eq!(endpoint.origins, OriginPolicy::SameOriginOrLocalhost);

    let config = parse(
        "origins = [\"https://app.example.com\"]\n[limits]\ncall_rate = \"off\"\n\
         publish_rate = { per_second = 5, burst = 10 }\nmax_connections = 50\n\
         max_connections_per_ip = 7",
    )
    .unwrap();
    let endpoint = config.endpoint();
    assert_eq!(endpoint.limits.call_rate, None);
    assert_eq!(endpoint.limits.publish_rate, rate(5, 10));
    assert_eq!(endpoint.limits.max_connections, 50);
    assert_eq!(endpoint.limits.max_connections_per_ip, 7);
    assert_eq!(
        endpoint.origins,
        OriginPolicy::list(["https://app.example.com"]).unwrap()
    );
}

#[test]
fn auth_errors_name_the_key() {
    let error = parse("[auth]\nconnect_permission = \"\"").unwrap_err();
    assert_eq!(error, "`auth.connect_permission` is empty");
    let error = parse("[auth]\ncookie = \"a b\"").unwrap_err();
    assert!(
        error.starts_with("`auth.cookie` is not a cookie name"),
        "{error}"
    );
    let error = parse("[auth.jwt]\nsecret = \"s\"\naudiance = \"x\"").unwrap_err();
    assert!(error.contains("unknown field `audiance`"), "{error}");
    let error = parse("[auth]\nstrict = \"yes\"").unwrap_err();
    assert!(error.contains("strict"), "{error}");

    let build_error = |text: &str| build(&parse(text).unwrap(), None).unwrap_err();
    assert_eq!(
        build_error("[auth.jwt]\npublic_key_file = \"/no/such/key.pem\""),
        "`auth.jwt.public_key_file`: cannot read /no/such/key.pem: No such file or \
         directory (os error 2)"
    );
    assert!(
        build_error("[auth.jwt]\njwks_file = \"/no/such/jwks.json\"")
            .starts_with("`auth.jwt.jwks_file`: cannot read /no/such/jwks.json")
    );
    assert!(build_error("[auth.jwt]").starts_with("`auth.jwt`: no JWT key configured"));
    assert!(
        build_error("[auth.jwt]\nsecret = \"s\"\nalgorithms = [\"RS256\"]")
            .starts_with("`auth.jwt.algorithms`: ")
    );
    assert!(
        build_error("[auth.jwt]\nsecret = \"s\"\nleeway_secs = 100000")
            .starts_with("`auth.jwt.leeway_secs`: ")
    );
    assert_eq!(
        build_error("[auth]\nconnect_permission = \"c\""),
        "`auth.connect_permission` needs authentication: an `[auth.jwt]` table or \
         --jwt-secret"
    );
    assert_eq!(
        build_error("[namespaces.\"a:*\"]\nrequire = { join = \"r\" }"),
        "`namespaces.\"a:*\".require.join` needs authentication: an `[auth.jwt]` table or \
         --jwt-secret"
    );
}

#[test]
fn the_jwt_secret_flag_replaces_the_file_key() {
    let config = parse("[auth.jwt]\npublic_key_file = \"/no/such/key.pem\"").unwrap();
    build(&config, Some("flag-secret")).unwrap();
    build(&parse("").unwrap(), Some("flag-secret")).unwrap();
    assert_eq!(
        build(&parse("").unwrap(), Some("")).unwrap_err(),
        "--jwt-secret is empty"
    );
    // The file's other checks still apply.
    let config = parse("[auth.jwt]\nleeway_secs = 100000").unwrap();
    assert!(
        build(&config, Some("flag-secret"))
            .unwrap_err()
            .starts_with("`auth.jwt.leeway_secs`")
    );
    // Permissions are fine once a flag turns authentication on.
    let config = parse("[namespaces.\"a:*\"]\nrequire = { join = \"r\" }").unwrap();
    build(&config, Some("flag-secret")).unwrap();
}

#[test]
fn strict_mode_names_undeclared_namespaces() {
    let text = "[auth]\nstrict = true\n[auth.jwt]\nsecret = \"s\"\n\
                [namespaces.\"room:*\"]\n[namespaces.\"lobby\"]\npublic = true\n\
                [namespaces.\"chat:*\"]\nrequire = { join = \"chat:read\" }";
    assert_eq!(
        build(&parse(text).unwrap(), None).unwrap_err(),
        "`auth.strict` is on, but `namespaces.\"room:*\"` does not say who may use its \
         channels (give it `require = { join = \"permission\" }`, also with `publish`, \
         `presence` or `history`, or `public = true`)"
    );
    let declared = text.replace(
        "[namespaces.\"room:*\"]",
        "[namespaces.\"room:*\"]\npublic = true",
    );
    build(&parse(&declared).unwrap(), None).unwrap();
    // The built-in methods and the demo namespace are declared public.
    build(&parse("[auth]\nstrict = true").unwrap(), None).unwrap();
}

#[test]
fn namespace_permissions_need_their_feature() {
    for (text, error) in [
        (
            "require = { publish = \"w\" }",
            "`namespaces.\"n:*\".require.publish` needs `client_publish = true`",
        ),
        (
            "require = { presence = \"p\" }",
            "`namespaces.\"n:*\".require.presence` needs `presence = true`",
        ),
        (
            "require = { history = \"h\" }",
            "`namespaces.\"n:*\".require.history` needs `history_size` above 0",
        ),
        (
            "require = { join = \"\" }",
            "`namespaces.\"n:*\".require.join` is empty",
        ),
    ] {
        let text = format!("[namespaces.\"n:*\"]\n{text}");
        assert_eq!(parse(&text).unwrap_err(), error, "{text}");
    }
    let error = parse("[namespaces.\"n:*\"]\nrequire = { joins = \"r\" }").unwrap_err();
    assert!(error.contains("unknown field `joins`"), "{error}");
}

#[test]
fn errors_name_the_key_and_the_problem() {
    let error = parse("[limits]\nheartbeat = \"10ms\"").unwrap_err();
    assert_eq!(error, "`limits.heartbeat` must be at least 100ms");
    let error = parse("[limits]\nheartbeet = \"1s\"").unwrap_err();
    assert!(error.contains("unknown field `heartbeet`"), "{error}");
    let error = parse("[namespaces.\"room:*\"]\njoin_leave_events = true").unwrap_err();
    assert_eq!(
        error,
        "`namespaces.\"room:*\".join_leave_events` needs `presence = true`"
    );
    let error = parse("[namespaces.\"a*b\"]").unwrap_err();
    assert!(error.contains("may only have `*` at its end"), "{error}");
    let error = parse("[limits]\nheartbeat = \"soon\"").unwrap_err();
    assert!(error.contains("not a duration"), "{error}");
    let error = parse("compression = \"maybe\"").unwrap_err();
    assert!(error.contains("unknown variant `maybe`"), "{error}");
    let error = parse("origins = [\"app.example.com\"]").unwrap_err();
    assert!(
        error.contains("invalid origin `app.example.com`"),
        "{error}"
    );
    let error = parse("[limits]\ncall_rate = \"of\"").unwrap_err();
    assert!(error.contains(r#"expected "off" or"#), "{error}");
    let error = parse("[limits]\npublish_rate = { per_second = 1, burst = 0 }").unwrap_err();
    assert!(error.contains("`burst` must be at least 1"), "{error}");
    let error = parse("[limits]\nmax_connections_per_ip = 0").unwrap_err();
    assert_eq!(error, "`limits.max_connections_per_ip` must be at least 1");
}

#[test]
fn no_namespaces_table_means_the_demo_namespace() {
    let config = parse("").unwrap();
    assert!(config.namespaces().resolve("demo:chat").is_some());
    let config = parse("[namespaces]").unwrap();
    assert!(config.namespaces().resolve("demo:chat").is_none());
}

#[test]
fn the_engine_table_is_checked_and_the_flag_wins() {
    use super::super::engine::EngineChoice;
    let error = parse("[engine]\nurl = \"postgres://db\"").unwrap_err();
    assert!(
        error.starts_with("`engine.url` is `postgres://db`"),
        "{error}"
    );
    let error = parse("[engine]\nprefix = \"a.b\"").unwrap_err();
    assert!(error.starts_with("`engine.prefix`"), "{error}");
    let error = parse("[engine]\npresence_ttl = \"100ms\"").unwrap_err();
    assert_eq!(error, "`engine.presence_ttl` must be at least 1s");
    let error = parse("[engine]\nurll = \"memory\"").unwrap_err();
    assert!(error.contains("unknown field `urll`"), "{error}");

    let file = parse("[engine]\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"app\"").unwrap();
    assert!(matches!(
        file.engine.choose(None),
        Ok(EngineChoice::Redis(_))
    ));
    assert!(matches!(
        file.engine.choose(Some("nats://127.0.0.1:4222")),
        Ok(EngineChoice::Nats(_))
    ));
    assert!(matches!(
        file.engine.choose(Some("memory")),
        Ok(EngineChoice::Memory)
    ));
    let Err(error) = file.engine.choose(Some("redis:/oops")) else {
        panic!("not a URL");
    };
    assert!(error.starts_with("`--engine` is `redis:/oops`"), "{error}");
    assert!(matches!(
        FileConfig::default().engine.choose(None),
        Ok(EngineChoice::Memory)
    ));
}
