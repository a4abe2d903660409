//! Real cryptography with the test-only keys in `tests/keys/` (see the README there).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::auth::{Credential, CredentialSource};

const SECRET: &str = "test-secret-with-enough-bytes-for-hs256";

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn key_bytes(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for an hour for `alice`.
fn claims() -> Value {
    json!({"sub": "alice", "exp": now() + 3600})
}

fn with(mut claims: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn encoding_key(alg: Algorithm, private_pem: &str) -> EncodingKey {
    install_crypto_provider();
    let pem = key_bytes(private_pem);
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => unreachable!(),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

fn sign(alg: Algorithm, private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, private_pem)).unwrap()
}

fn sign_hmac(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    install_crypto_provider();
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn hs(config: JwtConfig) -> JwtAuthenticator {
    JwtAuthenticator::new(JwtConfig {
        secret: Some(SECRET.into()),
        ..config
    })
    .unwrap()
}

fn refused(reason: &str) -> Result<Principal, AuthError> {
    Err(AuthError::NotAuthorized(reason.to_owned()))
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

#[test]
fn hs256_token_maps_claims_to_the_principal() {
    let auth = hs(JwtConfig::default().with_permissions_claim("perms"));
    let exp = now() + 600;
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({
            "sub": "alice",
            "exp": exp,
            "scope": "chat:read  chat:write",
            "perms": ["admin", ""],
            "roles": ["ignored"],
            "info": {"name": "Alice"},
        }),
    );
    let principal = auth.verify(&token).unwrap();
    assert_eq!(principal.user.as_deref(), Some("alice"));
    assert_eq!(
        principal.permissions.iter().collect::<Vec<_>>(),
        ["admin", "chat:read", "chat:write"]
    );
    assert_eq!(principal.info, Some(json!({"name": "Alice"})));
    assert_eq!(
        principal.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(exp))
    );

    // HS384 and HS512 fit the key too; `scope` may be an array.
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign_hmac(
            alg,
            SECRET.as_bytes(),
            &with(claims(), json!({"scope": ["a", "b"]})),
        );
        let principal = auth.verify(&token).unwrap();
        assert!(principal.can("a") && principal.can("b"), "{alg:?}");
        assert_eq!(principal.info, None);
    }
}

#[test]
fn public_key_tokens_are_accepted() {
    let cases = [
        ("rsa", Algorithm::RS256),
        ("rsa", Algorithm::RS512),
        ("rsa", Algorithm::PS256),
        ("ec_p256", Algorithm::ES256),
        ("ec_p384", Algorithm::ES384),
        ("ed25519", Algorithm::EdDSA),
    ];
    for (key, alg) in cases {
        let auth = JwtAuthenticator::new(JwtConfig::public_key(key_path(&format!(
            "{key}_public.pem"
        ))))
        .unwrap();
        let token = sign(alg, &format!("{key}_private.pem"), None, &claims());
        let principal = auth
            .verify(&token)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(principal.user.as_deref(), Some("alice"));
    }
}

#[test]
fn malformed_tokens_are_refused() {
    let auth = hs(JwtConfig::default());
    let good = sign_hmac(Algorithm::HS256, SECRET.as_bytes(), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let not_json = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode("{"), parts[2]);
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "...",
        "!!!.###.$$$",
        &format!("{}.{}", parts[0], parts[1]),
        &format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        &not_json,
        "\u{1F600}.\u{1F600}.\u{1F600}",
    ] {
        let result = auth.verify(token);
        assert!(
            matches!(result, Err(AuthError::NotAuthorized(_))),
            "{token:?} gave {result:?}"
        );
    }
    assert_eq!(auth.verify("a.b.c"), refused("malformed token"));
    // A signature that is not base64url, after a valid header and claims.
    assert_eq!(
        auth.verify(&format!("{}.{}.***", parts[0], parts[1])),
        refused("malformed token")
    );
    // A tampered payload fails the signature.
    let other = b64(&with(claims(), json!({"sub": "mallory"})));
    assert_eq!(
        auth.verify(&format!("{}.{}.{}", parts[0], other, parts[2])),
        refused("bad signature")
    );
}

#[test]
fn wrong_signatures_are_refused() {
    let auth = hs(JwtConfig::default());
    let token = sign_hmac(Algorithm::HS256, b"another-secret", &claims());
    assert_eq!(auth.verify(&token), refused("bad signature"));

    let rsa = JwtAuthenticator::new(JwtConfig::public_key(key_path("rsa_public.pem"))).unwrap();
    let token = sign(Algorithm::RS256, "rsa2_private.pem", None, &claims());
    assert_eq!(rsa.verify(&token), refused("bad signature"));

    let ec = JwtAuthenticator::new(JwtConfig::public_key(key_path("ec_p256_public.pem"))).unwrap();
    let mut token = sign(Algorithm::ES256, "ec_p256_private.pem", None, &claims());
    // Change one character in the middle of the signature (the last one carries padding
    // bits, where a change would make the base64 invalid instead).
    let at = token.len() - 10;
    let swapped = if &token[at..=at] == "A" { "B" } else { "A" };
    token.replace_range(at..=at, swapped);
    assert_eq!(ec.verify(&token), refused("bad signature"));
}

#[test]
fn alg_none_is_refused() {
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims())
    );
    let hmac = hs(JwtConfig::default());
    let rsa = JwtAuthenticator::new(JwtConfig::public_key(key_path("rsa_public.pem"))).unwrap();
    let jwks = JwtAuthenticator::new(JwtConfig::jwks(key_path("jwks.json"))).unwrap();
    for auth in [&hmac, &rsa, &jwks] {
        assert_eq!(auth.verify(&unsigned), refused("algorithm not allowed"));
        // With a signature copied from a real token, and with other spellings.
        let signed = sign_hmac(Algorithm::HS256, SECRET.as_bytes(), &claims());
        let signature = signed.rsplit('.').next().unwrap();
        assert_eq!(
            auth.verify(&format!("{unsigned}{signature}")),
            refused("algorithm not allowed")
        );
        for alg in ["None", "NONE", ""] {
            let token = format!("{}.{}.", b64(&json!({"alg": alg})), b64(&claims()));
            assert_eq!(auth.verify(&token), refused("algorithm not allowed"));
        }
    }
}

#[test]
fn rsa_public_key_used_as_an_hmac_secret_is_refused() {
    let rsa = JwtAuthenticator::new(JwtConfig::public_key(key_path("rsa_public.pem"))).unwrap();
    let public_pem = key_bytes("rsa_public.pem");
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let forged = sign_hmac(alg, &public_pem, &claims());
        assert_eq!(rsa.verify(&forged), refused("algorithm not allowed"));
    }
    // The same through a JWKS whose key has the attacker's `kid`.
    let jwks = JwtAuthenticator::new(JwtConfig::jwks(key_path("jwks.json"))).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&public_pem)).unwrap();
    assert_eq!(jwks.verify(&forged), refused("algorithm not allowed"));
}

#[test]
fn configured_algorithms_narrow_what_the_key_accepts() {
    let ps_only = JwtAuthenticator::new(
        JwtConfig::public_key(key_path("rsa_public.pem")).with_algorithms(["PS256"]),
    )
    .unwrap();
    let rs = sign(Algorithm::RS256, "rsa_private.pem", None, &claims());
    assert_eq!(ps_only.verify(&rs), refused("algorithm not allowed"));
    let ps = sign(Algorithm::PS256, "rsa_private.pem", None, &claims());
    assert!(ps_only.verify(&ps).is_ok());

    let hs256 = JwtAuthenticator::hs256(SECRET);
    let hs512 = sign_hmac(Algorithm::HS512, SECRET.as_bytes(), &claims());
    assert_eq!(hs256.verify(&hs512), refused("algorithm not allowed"));
}

#[test]
fn expiry_and_not_before_with_leeway() {
    let strict = hs(JwtConfig::default().with_leeway(Duration::ZERO));
    let lenient = hs(JwtConfig::default().with_leeway(Duration::from_secs(60)));
    let default = hs(JwtConfig::default());

    let expired = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &with(claims(), json!({"exp": now() - 30})),
    );
    assert_eq!(strict.verify(&expired), refused("token expired"));
    assert_eq!(default.verify(&expired), refused("token expired"));
    assert!(lenient.verify(&expired).is_ok());

    // Within the default leeway of 5 s.
    let just_expired = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &with(claims(), json!({"exp": now() - 2})),
    );
    assert!(default.verify(&just_expired).is_ok());
    assert_eq!(strict.verify(&just_expired), refused("token expired"));

    let early = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &with(claims(), json!({"nbf": now() + 30})),
    );
    assert_eq!(strict.verify(&early), refused("token not yet valid"));
    assert_eq!(default.verify(&early), refused("token not yet valid"));
    assert!(lenient.verify(&early).is_ok());

    let started = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &with(claims(), json!({"nbf": now() - 1})),
    );
    assert!(strict.verify(&started).is_ok());

    let bad_exp = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &with(claims(), json!({"exp": "tomorrow"})),
    );
    assert_eq!(default.verify(&bad_exp), refused("missing `exp` claim"));
}

#[test]
fn exp_is_required_unless_configured_otherwise() {
    let no_exp = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &without(claims(), "exp"),
    );
    assert_eq!(
        hs(JwtConfig::default()).verify(&no_exp),
        refused("missing `exp` claim")
    );
    let optional = hs(JwtConfig::default().with_require_exp(false));
    let principal = optional.verify(&no_exp).unwrap();
    assert_eq!(principal.expires_at, None);
    // Still checked when present.
    let expired = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &with(claims(), json!({"exp": now() - 3600})),
    );
    assert_eq!(optional.verify(&expired), refused("token expired"));
}

#[test]
fn issuer_and_audience() {
    let auth = hs(JwtConfig::default()
        .with_issuer("https://auth.example")
        .with_audience("plexus"));
    let good = with(
        claims(),
        json!({"iss": "https://auth.example", "aud": "plexus"}),
    );
    let sign = |claims: &Value| sign_hmac(Algorithm::HS256, SECRET.as_bytes(), claims);
    assert!(auth.verify(&sign(&good)).is_ok());
    let many_audiences = with(good.clone(), json!({"aud": ["other", "plexus"]}));
    assert!(auth.verify(&sign(&many_audiences)).is_ok());

    let wrong_iss = with(good.clone(), json!({"iss": "https://evil.example"}));
    assert_eq!(auth.verify(&sign(&wrong_iss)), refused("wrong issuer"));
    assert_eq!(
        auth.verify(&sign(&without(good.clone(), "iss"))),
        refused("missing `iss` claim")
    );
    let wrong_aud = with(good.clone(), json!({"aud": "other"}));
    assert_eq!(auth.verify(&sign(&wrong_aud)), refused("wrong audience"));
    let wrong_auds = with(good.clone(), json!({"aud": ["a", "b"]}));
    assert_eq!(auth.verify(&sign(&wrong_auds)), refused("wrong audience"));
    assert_eq!(
        auth.verify(&sign(&without(good.clone(), "aud"))),
        refused("missing `aud` claim")
    );

    // Without a configured audience, a token meant for some audience is not for us.
    let plain = hs(JwtConfig::default());
    assert_eq!(plain.verify(&sign(&good)), refused("wrong audience"));
    assert!(plain.verify(&sign(&without(good, "aud"))).is_ok());
}

#[test]
fn sub_is_required_and_claims_must_be_well_typed() {
    let auth = hs(JwtConfig::default().with_permissions_claim("perms"));
    let sign = |claims: &Value| sign_hmac(Algorithm::HS256, SECRET.as_bytes(), claims);
    assert_eq!(
        auth.verify(&sign(&without(claims(), "sub"))),
        refused("missing `sub` claim")
    );
    assert_eq!(
        auth.verify(&sign(&with(claims(), json!({"sub": 42})))),
        refused("missing `sub` claim")
    );
    assert_eq!(
        auth.verify(&sign(&with(claims(), json!({"sub": ""})))),
        refused("invalid `sub` claim")
    );
    assert_eq!(
        auth.verify(&sign(&with(claims(), json!({"scope": 7})))),
        refused("invalid `scope` claim")
    );
    assert_eq!(
        auth.verify(&sign(&with(claims(), json!({"perms": ["a", {"b": 1}]})))),
        refused("invalid `perms` claim")
    );
    // A null claim is the same as none.
    let principal = auth
        .verify(&sign(&with(claims(), json!({"scope": null, "info": null}))))
        .unwrap();
    assert!(principal.permissions.is_empty());
    assert_eq!(principal.info, None);
}

#[test]
fn info_claim_is_configurable() {
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &with(claims(), json!({"info": 1, "profile": {"n": "A"}})),
    );
    let renamed = hs(JwtConfig::default().with_info_claim("profile"));
    assert_eq!(
        renamed.verify(&token).unwrap().info,
        Some(json!({"n": "A"}))
    );
    let off = hs(JwtConfig::default().with_info_claim(""));
    assert_eq!(off.verify(&token).unwrap().info, None);
}

#[test]
fn jwks_selects_the_key_by_kid() {
    let auth = JwtAuthenticator::new(JwtConfig::jwks(key_path("jwks.json"))).unwrap();
    for (kid, alg, private) in [
        ("rsa-1", Algorithm::RS256, "rsa_private.pem"),
        ("rsa-2", Algorithm::RS256, "rsa2_private.pem"),
        ("ec-1", Algorithm::ES256, "ec_p256_private.pem"),
        ("ed-1", Algorithm::EdDSA, "ed25519_private.pem"),
    ] {
        let token = sign(alg, private, Some(kid), &claims());
        assert!(auth.verify(&token).is_ok(), "{kid}");
    }
    // The kid names a key that did not sign the token.
    let token = sign(
        Algorithm::RS256,
        "rsa2_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(auth.verify(&token), refused("bad signature"));
    // The key's own `alg` (RS256) decides, not the token's header.
    let token = sign(
        Algorithm::PS256,
        "rsa_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(auth.verify(&token), refused("algorithm not allowed"));
    let token = sign(
        Algorithm::ES256,
        "ec_p256_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(auth.verify(&token), refused("algorithm not allowed"));

    let token = sign(Algorithm::RS256, "rsa_private.pem", Some("nope"), &claims());
    assert_eq!(auth.verify(&token), refused("unknown key id"));
    // The encryption key was skipped.
    let token = sign(
        Algorithm::RS256,
        "rsa_private.pem",
        Some("enc-1"),
        &claims(),
    );
    assert_eq!(auth.verify(&token), refused("unknown key id"));
    let token = sign(Algorithm::RS256, "rsa_private.pem", None, &claims());
    assert_eq!(auth.verify(&token), refused("token has no key id"));
}

#[test]
fn jwks_with_one_key_needs_no_kid_and_configured_algorithms_filter_keys() {
    let dir = std::env::temp_dir().join(format!("plexus-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let full: Value = serde_json::from_slice(&key_bytes("jwks.json")).unwrap();
    let mut ed = full["keys"][3].clone();
    ed.as_object_mut().unwrap().remove("kid");
    let path = dir.join("one.json");
    std::fs::write(&path, json!({"keys": [ed]}).to_string()).unwrap();
    let auth = JwtAuthenticator::new(JwtConfig::jwks(&path)).unwrap();
    let token = sign(Algorithm::EdDSA, "ed25519_private.pem", None, &claims());
    assert!(auth.verify(&token).is_ok());
    let token = sign(
        Algorithm::EdDSA,
        "ed25519_private.pem",
        Some("x"),
        &claims(),
    );
    assert!(auth.verify(&token).is_ok());

    // Only ES256 allowed: the EC key is the one usable key left.
    let auth =
        JwtAuthenticator::new(JwtConfig::jwks(key_path("jwks.json")).with_algorithms(["ES256"]))
            .unwrap();
    let token = sign(
        Algorithm::RS256,
        "rsa_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(auth.verify(&token), refused("unknown key id"));
    let token = sign(
        Algorithm::ES256,
        "ec_p256_private.pem",
        Some("ec-1"),
        &claims(),
    );
    assert!(auth.verify(&token).is_ok());

    // An HMAC key (`oct`) in a JWKS verifies HMAC tokens only.
    let path = dir.join("oct.json");
    let k = URL_SAFE_NO_PAD.encode(SECRET);
    std::fs::write(
        &path,
        json!({"keys": [{"kty": "oct", "kid": "h", "k": k}, full["keys"][0]]}).to_string(),
    )
    .unwrap();
    let auth = JwtAuthenticator::new(JwtConfig::jwks(&path)).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("h".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(auth.verify(&token).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn construction_errors_name_the_problem() {
    let err = |config: JwtConfig| JwtAuthenticator::new(config).unwrap_err();
    assert!(matches!(err(JwtConfig::default()), JwtConfigError::NoKey));
    let mut both = JwtConfig::hmac("x");
    both.jwks_file = Some(key_path("jwks.json"));
    assert!(matches!(err(both), JwtConfigError::SeveralKeys));
    assert!(matches!(
        err(JwtConfig::hmac("")),
        JwtConfigError::EmptySecret
    ));

    let missing = err(JwtConfig::public_key(key_path("nope.pem")));
    assert!(matches!(missing, JwtConfigError::Read { .. }), "{missing}");
    assert!(missing.to_string().contains("nope.pem"), "{missing}");

    let private = err(JwtConfig::public_key(key_path("rsa_private.pem")));
    assert!(
        matches!(&private, JwtConfigError::Key { reason, .. } if reason.contains("private key")),
        "{private}"
    );
    let short = err(JwtConfig::public_key(key_path("rsa1024_public.pem")));
    assert!(short.to_string().contains("at least 2048"), "{short}");
    let not_pem = err(JwtConfig::public_key(key_path("jwks.json")));
    assert!(matches!(not_pem, JwtConfigError::Key { .. }), "{not_pem}");
    let not_jwks = err(JwtConfig::jwks(key_path("rsa_public.pem")));
    assert!(
        matches!(not_jwks, JwtConfigError::Jwks { .. }),
        "{not_jwks}"
    );

    let unknown = err(JwtConfig::hmac("x").with_algorithms(["HS257"]));
    assert!(matches!(&unknown, JwtConfigError::UnknownAlgorithm(a) if a == "HS257"));
    let mismatch =
        err(JwtConfig::public_key(key_path("rsa_public.pem")).with_algorithms(["HS256"]));
    assert_eq!(
        mismatch.to_string(),
        "algorithm HS256 does not fit the configured RSA key"
    );
    let curve =
        err(JwtConfig::public_key(key_path("ec_p384_public.pem")).with_algorithms(["ES256"]));
    assert!(matches!(
        curve,
        JwtConfigError::AlgorithmMismatch {
            key: "EC P-384",
            ..
        }
    ));
    let leeway = err(JwtConfig::hmac("x").with_leeway(Duration::from_secs(100_000)));
    assert!(matches!(leeway, JwtConfigError::Leeway(100_000)));

    let dir = std::env::temp_dir().join(format!("plexus-jwks-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let full: Value = serde_json::from_slice(&key_bytes("jwks.json")).unwrap();
    for (name, keys, expected) in [
        ("empty", json!([]), "no usable signature"),
        ("enc", json!([full["keys"][4]]), "no usable signature"),
        (
            "twice",
            json!([full["keys"][0], full["keys"][0]]),
            "used twice",
        ),
        (
            "nokid",
            json!([full["keys"][0], {"kty": "OKP", "crv": "Ed25519", "x": full["keys"][3]["x"]}]),
            "has no `kid`",
        ),
        (
            "mislabeled",
            json!([{"kty": "EC", "kid": "e", "alg": "RS256", "crv": "P-256",
                    "x": full["keys"][2]["x"], "y": full["keys"][2]["y"]}]),
            "does not fit",
        ),
        (
            "badpoint",
            json!([{"kty": "EC", "kid": "e", "crv": "P-384",
                    "x": full["keys"][2]["x"], "y": full["keys"][2]["y"]}]),
            "does not fit its curve",
        ),
    ] {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        let error = err(JwtConfig::jwks(&path));
        assert!(
            matches!(error, JwtConfigError::Jwks { .. }) && error.to_string().contains(expected),
            "{name}: {error}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_deserializes_with_defaults_and_refuses_unknown_fields() {
    let config: JwtConfig = serde_json::from_value(json!({
        "secret": "s",
        "issuer": "i",
        "permissions_claim": "perms",
    }))
    .unwrap();
    assert_eq!(config.leeway_secs, 5);
    assert!(config.require_exp);
    assert_eq!(config.info_claim, "info");
    assert_eq!(config.permissions_claims, ["perms"]);
    let config: JwtConfig = serde_json::from_value(json!({
        "jwks_file": "k.json",
        "permissions_claims": ["a", "b"],
        "algorithms": ["RS256"],
        "leeway_secs": 0,
        "require_exp": false,
        "info_claim": "",
    }))
    .unwrap();
    assert_eq!(config.permissions_claims, ["a", "b"]);
    assert!(!config.require_exp);
    assert!(serde_json::from_value::<JwtConfig>(json!({"secret": "s", "audiance": "x"})).is_err());

    let shown = format!("{:?}", JwtConfig::hmac("super-secret-value"));
    assert!(!shown.contains("super-secret-value"), "{shown}");
}

#[test]
fn mint_hs256_makes_tokens_hs256_accepts() {
    let mut extra = Map::new();
    extra.insert("info".into(), json!({"name": "Alice"}));
    extra.insert("sub".into(), json!("overridden"));
    let token = mint_hs256(
        SECRET,
        "alice",
        Some("a b"),
        Duration::from_millis(1500),
        extra,
    )
    .unwrap();
    let principal = JwtAuthenticator::hs256(SECRET).verify(&token).unwrap();
    assert_eq!(principal.user.as_deref(), Some("alice"));
    assert!(principal.can("a") && principal.can("b"));
    assert_eq!(principal.info, Some(json!({"name": "Alice"})));
    let expires = principal.expires_at.unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(2), "{left:?}");

    assert!(mint_hs256("", "a", None, Duration::from_secs(1), Map::new()).is_err());
    assert!(mint_hs256("s", "", None, Duration::from_secs(1), Map::new()).is_err());
    assert!(mint_hs256("s", "a", None, Duration::MAX, Map::new()).is_err());
}

#[test]
fn empty_secret_authenticator_refuses_everything() {
    let auth = JwtAuthenticator::hs256("");
    let token = sign_hmac(Algorithm::HS256, b"", &claims());
    assert!(matches!(
        auth.verify(&token),
        Err(AuthError::NotAuthorized(_))
    ));
}

#[tokio::test]
async fn authenticate_reads_the_credential() {
    let auth = JwtAuthenticator::hs256(SECRET);
    let headers = http::HeaderMap::new();
    assert_eq!(
        auth.authenticate(AuthRequest::new(&headers)).await,
        refused("missing credential")
    );
    let token = mint_hs256(SECRET, "bob", None, Duration::from_secs(60), Map::new()).unwrap();
    let credential = Credential::new(token, CredentialSource::Hello);
    let principal = auth
        .authenticate(AuthRequest::new(&headers).with_credential(Some(&credential)))
        .await
        .unwrap();
    assert_eq!(principal.user.as_deref(), Some("bob"));

    let huge = Credential::new("a".repeat(MAX_CREDENTIAL_LEN + 1), CredentialSource::Query);
    assert_eq!(
        auth.authenticate(AuthRequest::new(&headers).with_credential(Some(&huge)))
            .await,
        refused("token too large")
    );
}

mod arbitrary_input {
    use proptest::prelude::*;

    use super::*;

    fn authenticators() -> [JwtAuthenticator; 3] {
        [
            JwtAuthenticator::hs256(SECRET),
            JwtAuthenticator::new(JwtConfig::public_key(key_path("ec_p256_public.pem"))).unwrap(),
            JwtAuthenticator::new(JwtConfig::jwks(key_path("jwks.json"))).unwrap(),
        ]
    }

    proptest! {
        #[test]
        fn any_string_is_refused_without_panicking(token in ".{0,300}") {
            for auth in authenticators() {
                prop_assert!(matches!(auth.verify(&token), Err(AuthError::NotAuthorized(_))));
            }
        }

        #[test]
        fn any_json_parts_are_refused_without_panicking(
            header in prop::collection::vec(any::<u8>(), 0..80),
            alg in prop::sample::select(vec!["HS256", "RS256", "ES256", "EdDSA", "none", "x"]),
            kid in prop::option::of("[a-z0-9-]{0,6}"),
            claims in prop::collection::vec(any::<u8>(), 0..80),
            signature in prop::collection::vec(any::<u8>(), 0..80),
        ) {
            let json_header = b64(&json!({"alg": alg, "kid": kid}));
            for head in [URL_SAFE_NO_PAD.encode(&header), json_header] {
                for body in [URL_SAFE_NO_PAD.encode(&claims), b64(&super::claims())] {
                    let token = format!("{head}.{body}.{}", URL_SAFE_NO_PAD.encode(&signature));
                    for auth in authenticators() {
                        prop_assert!(matches!(
                            auth.verify(&token),
                            Err(AuthError::NotAuthorized(_))
                        ));
                    }
                }
            }
        }
    }
}
