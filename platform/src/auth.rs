//! JWT verification → [`Identity`].
//!
//! Keys come from a JWKS file or URL (cached; an unknown `kid` triggers at most
//! one re-read per `jwks_min_refresh`, which is how rotation works) and are
//! RS256 or ES256; HS256 with a shared secret exists only in development and test
//! (the configuration refuses it elsewhere). The header's `alg` must match the
//! key's own type, so a token cannot pick how it is checked (no RS/HS confusion),
//! and `alg: none` is refused before anything else. Issuer, audience, `exp` and
//! `nbf` are always checked.

use crate::config::{AuthConfig, ClaimNames};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::RwLock;

/// Who is calling, from verified claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Identity {
    pub tenant: String,
    pub subject: String,
    pub app: Option<String>,
    pub agent: Option<String>,
    pub roles: Vec<String>,
}

/// Why a token was refused. Each maps to a 401; the text is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token key {0:?} is unknown")]
    UnknownKey(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token signature does not verify")]
    Signature,
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    #[error("token keys are unavailable")]
    KeysUnavailable,
    #[error("token claim {0} is not acceptable: {1}")]
    BadClaim(String, &'static str),
}

#[derive(Clone)]
struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

struct Cache {
    keys: HashMap<String, Key>,
    loaded: Instant,
}

/// Verifies bearer tokens. Share it (`Arc`) across requests.
pub struct JwtVerifier {
    cfg: AuthConfig,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    hs256: Option<DecodingKey>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.cfg.issuer)
            .field("audience", &self.cfg.audience)
            .finish_non_exhaustive()
    }
}

/// Turns a JWKS document into keys; keys of other types are skipped.
fn parse_jwks(text: &str) -> Result<HashMap<String, Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
        keys.insert(kid, Key { alg, key });
    }
    Ok(keys)
}

impl JwtVerifier {
    /// Loads the configured keys (a JWKS URL that does not answer is an error).
    /// A service that verifies tokens needs a way to: without a JWKS file or
    /// URL, an HS256 secret (development) or the bypass (tests), start-up fails
    /// here. (Services that take no tokens, like the runner, never build one.)
    pub async fn new(cfg: &AuthConfig) -> Result<JwtVerifier, crate::ConfigError> {
        if cfg.jwks_file.is_none()
            && cfg.jwks_url.is_none()
            && cfg.hs256_secret.is_none()
            && !cfg.bypass
        {
            return Err(crate::ConfigError {
                var: "GLASSBOX_AUTH_JWKS_FILE".into(),
                reason: "no way to verify tokens: set GLASSBOX_AUTH_JWKS_FILE or GLASSBOX_AUTH_JWKS_URL (or, in development, GLASSBOX_AUTH_HS256_SECRET)".into(),
            });
        }
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| crate::ConfigError {
                var: "GLASSBOX_AUTH_JWKS_URL".into(),
                reason: format!("HTTP client: {e}"),
            })?;
        let v = JwtVerifier {
            cfg: cfg.clone(),
            http,
            cache: RwLock::new(Cache {
                keys: HashMap::new(),
                loaded: Instant::now(),
            }),
            hs256: cfg
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
        };
        if cfg.jwks_file.is_some() || cfg.jwks_url.is_some() {
            let keys = v.load_keys().await.map_err(|reason| crate::ConfigError {
                var: if cfg.jwks_url.is_some() {
                    "GLASSBOX_AUTH_JWKS_URL"
                } else {
                    "GLASSBOX_AUTH_JWKS_FILE"
                }
                .into(),
                reason,
            })?;
            *v.cache.write().await = Cache {
                keys,
                loaded: Instant::now(),
            };
        }
        Ok(v)
    }

    async fn load_keys(&self) -> Result<HashMap<String, Key>, String> {
        let mut keys = HashMap::new();
        if let Some(path) = &self.cfg.jwks_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            keys.extend(parse_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        if let Some(url) = &self.cfg.jwks_url {
            let resp = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("{url}: HTTP {}", resp.status()));
            }
            let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
            keys.extend(parse_jwks(&text).map_err(|e| format!("{url}: {e}"))?);
        }
        Ok(keys)
    }

    async fn key_for(&self, kid: &str) -> Result<Key, AuthError> {
        if let Some(k) = self.cache.read().await.keys.get(kid) {
            return Ok(k.clone());
        }
        // Unknown kid: maybe the keys rotated. Re-read, but not more often than allowed.
        let mut cache = self.cache.write().await;
        if let Some(k) = cache.keys.get(kid) {
            return Ok(k.clone());
        }
        if cache.loaded.elapsed() >= self.cfg.jwks_min_refresh {
            match self.load_keys().await {
                Ok(keys) => {
                    *cache = Cache {
                        keys,
                        loaded: Instant::now(),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the cached keys");
                    cache.loaded = Instant::now();
                    return Err(AuthError::KeysUnavailable);
                }
            }
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::UnknownKey(kid.to_owned()))
    }

    /// Verifies a bearer token and returns the identity it carries.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        // Look at the raw header first so `alg: none` is refused by name.
        let header_b64 = token.split('.').next().unwrap_or_default();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| AuthError::Malformed("header is not base64url".into()))?;
        let raw: Map<String, Value> = serde_json::from_slice(&raw)
            .map_err(|_| AuthError::Malformed("header is not a JSON object".into()))?;
        let alg_name = raw
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if alg_name.eq_ignore_ascii_case("none") || alg_name.is_empty() {
            return Err(AuthError::Algorithm(format!("{alg_name:?}")));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(k) => Key {
                    alg: Algorithm::HS256,
                    key: k.clone(),
                },
                None => return Err(AuthError::Algorithm("HS256".into())),
            },
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header
                    .kid
                    .clone()
                    .ok_or_else(|| AuthError::Malformed("token has no kid".into()))?;
                self.key_for(&kid).await?
            }
            other => return Err(AuthError::Algorithm(format!("{other:?}"))),
        };
        if key.alg != header.alg {
            // e.g. an HS256 token naming an RSA key's kid.
            return Err(AuthError::Algorithm(format!(
                "{:?} for a {:?} key",
                header.alg, key.alg
            )));
        }
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.cfg.issuer]);
        validation.set_audience(&[&self.cfg.audience]);
        validation.leeway = self.cfg.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::InvalidAudience => AuthError::Audience,
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                ErrorKind::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                other => AuthError::Malformed(format!("{other:?}")),
            })?;
        identity(&data.claims, &self.cfg.claims)
    }
}

/// Maps claims to an identity using the configured claim names.
pub fn identity(claims: &Map<String, Value>, names: &ClaimNames) -> Result<Identity, AuthError> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let tenant =
        text(&names.tenant).ok_or_else(|| AuthError::MissingClaim(names.tenant.clone()))?;
    let subject =
        text(&names.subject).ok_or_else(|| AuthError::MissingClaim(names.subject.clone()))?;
    let roles = match claims.get(&names.roles) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let id = Identity {
        tenant,
        subject,
        app: text(&names.app),
        agent: text(&names.agent),
        roles,
    };
    check_identity(&id, names)?;
    Ok(id)
}

/// A tenant name: what storage keys, stream names and policy data can hold safely.
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'-' | b'_' | b'.')))
}

/// Refuses identities the rest of the system could not store faithfully
/// (control characters, oversized values, odd tenant names).
pub fn check_identity(id: &Identity, names: &ClaimNames) -> Result<(), AuthError> {
    if !valid_tenant(&id.tenant) {
        return Err(AuthError::BadClaim(
            names.tenant.clone(),
            "a tenant is 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ));
    }
    let plain = |s: &str| s.len() <= 256 && !s.chars().any(char::is_control);
    if !plain(&id.subject) {
        return Err(AuthError::BadClaim(
            names.subject.clone(),
            "at most 256 characters, no control characters",
        ));
    }
    for (name, v) in [(&names.app, &id.app), (&names.agent, &id.agent)] {
        if let Some(v) = v
            && !plain(v)
        {
            return Err(AuthError::BadClaim(
                name.clone(),
                "at most 256 characters, no control characters",
            ));
        }
    }
    if id.roles.len() > 32 || id.roles.iter().any(|r| !plain(r) || r.len() > 64) {
        return Err(AuthError::BadClaim(
            names.roles.clone(),
            "at most 32 roles of at most 64 characters, no control characters",
        ));
    }
    Ok(())
}
