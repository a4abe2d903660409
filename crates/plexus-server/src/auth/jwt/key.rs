//! Verification keys: read once at construction, from a secret, a PEM file or a JWKS file.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::JwtConfigError;

/// The kind of a key, which fixes the algorithms it can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Every algorithm this kind of key verifies.
    pub(super) fn algorithms(self) -> &'static [Algorithm] {
        match self {
            Self::Hmac => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            Self::Rsa => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            Self::EcP256 => &[Algorithm::ES256],
            Self::EcP384 => &[Algorithm::ES384],
            Self::Ed25519 => &[Algorithm::EdDSA],
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Hmac => "HMAC",
            Self::Rsa => "RSA",
            Self::EcP256 => "EC P-256",
            Self::EcP384 => "EC P-384",
            Self::Ed25519 => "Ed25519",
        }
    }
}

/// A key and the validation (algorithms included) tokens signed with it go through.
pub(super) struct VerifyKey {
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
}

/// The keys of an authenticator.
#[derive(Default)]
pub(super) struct Keys {
    /// The key used whatever the token's `kid`: a secret, a PEM file, or the only key of a
    /// JWKS when that key has no `kid`.
    pub(super) any: Option<VerifyKey>,
    /// A JWKS's keys by `kid`: the token's `kid` selects one.
    pub(super) by_kid: HashMap<String, VerifyKey>,
}

/// Parses `names` (`"RS256"`, …), refusing unknown names.
pub(super) fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, JwtConfigError> {
    names
        .iter()
        .map(|name| {
            Algorithm::from_str(name.trim())
                .map_err(|_| JwtConfigError::UnknownAlgorithm(name.clone()))
        })
        .collect()
}

/// The algorithms of `kind` that `configured` allows (all of them when `configured` is
/// empty), or the first configured algorithm that does not fit the key.
pub(super) fn allowed(
    kind: KeyKind,
    configured: &[Algorithm],
) -> Result<Vec<Algorithm>, Algorithm> {
    if configured.is_empty() {
        return Ok(kind.algorithms().to_vec());
    }
    match configured
        .iter()
        .find(|alg| !kind.algorithms().contains(alg))
    {
        Some(&misfit) => Err(misfit),
        None => Ok(configured.to_vec()),
    }
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, JwtConfigError> {
    std::fs::read(path).map_err(|source| JwtConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A public key from a PEM file: RSA, EC P-256/P-384 or Ed25519 (`PUBLIC KEY`, or
/// `RSA PUBLIC KEY` for PKCS#1).
pub(super) fn from_pem(path: &Path) -> Result<(KeyKind, DecodingKey), JwtConfigError> {
    let pem = read(path)?;
    let bad = |reason: &str| JwtConfigError::Key {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let label = pem_label(&pem).ok_or_else(|| bad("not a PEM file"))?;
    if label.contains("PRIVATE") {
        return Err(bad(
            "is a private key: configure the public key (openssl pkey -pubout)",
        ));
    }
    if label == "CERTIFICATE" {
        return Err(bad(
            "is a certificate: configure its public key (openssl x509 -pubkey -noout)",
        ));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        check_rsa(&key).map_err(|reason| bad(&reason))?;
        return Ok((KeyKind::Rsa, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        let kind =
            ec_kind(&key).ok_or_else(|| bad("EC key on a curve other than P-256 or P-384"))?;
        return Ok((kind, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        check_ed25519(&key).ok_or_else(|| bad("not an Ed25519 public key"))?;
        return Ok((KeyKind::Ed25519, key));
    }
    Err(bad(
        "not an RSA, EC (P-256, P-384) or Ed25519 public key in PEM",
    ))
}

/// The label of the first PEM block: `PUBLIC KEY` in `-----BEGIN PUBLIC KEY-----`.
fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let rest = &text[text.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    Some(&rest[..rest.find("-----")?])
}

/// Refuses RSA keys that are not valid or that the crypto library would not verify with
/// (shorter than 2048 bits), so that they fail here rather than as bad signatures later.
fn check_rsa(key: &DecodingKey) -> Result<(), String> {
    let der = key
        .try_get_as_bytes()
        .map_err(|_| "not an RSA public key".to_owned())?;
    let (n, _) = (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
        .key_utils
        .rsa_pub_components_from_public_key)(der)
    .map_err(|_| "not a valid RSA public key".to_owned())?;
    check_rsa_modulus(&n)
}

fn check_rsa_modulus(n: &[u8]) -> Result<(), String> {
    let significant = n.iter().position(|&b| b != 0).map_or(0, |at| n.len() - at);
    if significant * 8 < 2048 {
        return Err(format!(
            "RSA key of about {} bits: at least 2048 are needed",
            significant * 8
        ));
    }
    Ok(())
}

/// The curve of an EC public key, from the length of its uncompressed point.
fn ec_kind(key: &DecodingKey) -> Option<KeyKind> {
    match key.try_get_as_bytes().ok()? {
        [0x04, rest @ ..] if rest.len() == 64 => Some(KeyKind::EcP256),
        [0x04, rest @ ..] if rest.len() == 96 => Some(KeyKind::EcP384),
        _ => None,
    }
}

fn check_ed25519(key: &DecodingKey) -> Option<()> {
    (key.try_get_as_bytes().ok()?.len() == 32).then_some(())
}

/// The keys of a JWKS file. Keys for encryption (`"use": "enc"`), with an algorithm that is not
/// a JWS one, of an unsupported type or curve, or with none of the `configured` algorithms are
/// skipped; a key whose `alg` does not fit its type is an error, and so is a file with no
/// usable key, duplicate `kid`s, or several keys where one has no `kid`.
pub(super) fn from_jwks(
    path: &Path,
    configured: &[Algorithm],
    base: &Validation,
) -> Result<Keys, JwtConfigError> {
    let bytes = read(path)?;
    let bad = |reason: String| JwtConfigError::Jwks {
        path: path.to_owned(),
        reason,
    };
    let set: JwkSet =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a JWKS: {e}")))?;
    let mut usable = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("key `{kid}`"),
            None => format!("key #{index}"),
        };
        match jwk_key(jwk, configured).map_err(|reason| bad(format!("{name}: {reason}")))? {
            Some((algorithms, key)) => {
                let mut validation = base.clone();
                validation.algorithms = algorithms;
                usable.push((
                    jwk.common.key_id.clone(),
                    name,
                    VerifyKey { key, validation },
                ));
            }
            None => tracing::debug!(path = %path.display(), "JWKS {name} skipped"),
        }
    }
    if usable.is_empty() {
        return Err(bad("no usable signature verification key".to_owned()));
    }
    if usable.len() == 1 && usable[0].0.is_none() {
        let (_, _, key) = usable.remove(0);
        return Ok(Keys {
            any: Some(key),
            by_kid: HashMap::new(),
        });
    }
    let mut by_kid = HashMap::with_capacity(usable.len());
    for (kid, name, key) in usable {
        let kid =
            kid.ok_or_else(|| bad(format!("{name} has no `kid` (needed with several keys)")))?;
        if by_kid.contains_key(&kid) {
            return Err(bad(format!("`kid` {kid} is used twice")));
        }
        by_kid.insert(kid, key);
    }
    Ok(Keys { any: None, by_kid })
}

/// The algorithms and key of one JWK, `None` if it is to be skipped.
fn jwk_key(
    jwk: &Jwk,
    configured: &[Algorithm],
) -> Result<Option<(Vec<Algorithm>, DecodingKey)>, String> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Ok(None);
    }
    let invalid = |_| "invalid key material".to_owned();
    let (kind, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            let key = DecodingKey::from_rsa_components(&params.n, &params.e).map_err(invalid)?;
            if let jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind() {
                check_rsa_modulus(n)?;
            }
            (KeyKind::Rsa, key)
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let kind = match params.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                _ => return Ok(None),
            };
            let key = DecodingKey::from_ec_components(&params.x, &params.y).map_err(invalid)?;
            if ec_kind(&key) != Some(kind) {
                return Err("EC point does not fit its curve".to_owned());
            }
            (kind, key)
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            if params.curve != EllipticCurve::Ed25519 {
                return Ok(None);
            }
            let key = DecodingKey::from_ed_components(&params.x).map_err(invalid)?;
            check_ed25519(&key).ok_or("not an Ed25519 public key")?;
            (KeyKind::Ed25519, key)
        }
        AlgorithmParameters::OctetKey(_) => {
            let key = DecodingKey::from_jwk(jwk).map_err(invalid)?;
            if key.try_get_as_bytes().map_or(true, <[u8]>::is_empty) {
                return Err("empty secret".to_owned());
            }
            (KeyKind::Hmac, key)
        }
        _ => return Ok(None),
    };
    let own: Vec<Algorithm> = match jwk.common.key_algorithm {
        None => kind.algorithms().to_vec(),
        Some(alg) => match Algorithm::try_from(alg) {
            // An encryption algorithm (RSA-OAEP, …) or an unknown one: not for tokens.
            Err(_) => return Ok(None),
            Ok(alg) if !kind.algorithms().contains(&alg) => {
                return Err(format!(
                    "alg {alg:?} does not fit the key type ({})",
                    kind.name()
                ));
            }
            Ok(alg) => vec![alg],
        },
    };
    let algorithms: Vec<Algorithm> = if configured.is_empty() {
        own
    } else {
        own.into_iter()
            .filter(|alg| configured.contains(alg))
            .collect()
    };
    Ok((!algorithms.is_empty()).then_some((algorithms, key)))
}
