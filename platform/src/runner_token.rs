//! Tokens for the data-plane API: the control plane signs, a runner verifies.
//!
//! Each call the control plane makes to a runner carries a short-lived JWT
//! (EdDSA/Ed25519) whose audience is that one runner (`runner:<id>`) and whose
//! subject is what the call is about (`session:<id>`, or `runner` for health).
//! A runner holds only the public half, so it cannot mint tokens for itself
//! or for another runner; a token stolen from one call is good for one
//! runner, one session and a minute.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The `iss` of every runner token.
pub const ISSUER: &str = "glassbox-control-plane";
/// How a verifier key is spelled (`glassbox-runner-token+<base64 key>`).
pub const VERIFIER_PREFIX: &str = "glassbox-runner-token+";
/// The default lifetime of a token.
pub const TTL: Duration = Duration::from_secs(60);

/// What a token is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Session(String),
    /// The runner itself (health, capacity).
    Runner,
}

impl Subject {
    fn as_claim(&self) -> String {
        match self {
            Subject::Session(id) => format!("session:{id}"),
            Subject::Runner => "runner".into(),
        }
    }
}

fn audience(runner_id: &str) -> String {
    format!("runner:{runner_id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// Why a token was refused (never echoes the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerTokenError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token is for another runner")]
    WrongRunner,
    #[error("the token is for another subject")]
    WrongSubject,
    #[error("runner token key {path}: {reason}")]
    Key { path: String, reason: String },
}

/// The control plane's signing key.
pub struct RunnerTokenKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl std::fmt::Debug for RunnerTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerTokenKey")
            .field("verifier", &self.verifier().to_string())
            .finish()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RunnerTokenKey {
    pub fn generate() -> Result<RunnerTokenKey, RunnerTokenError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| RunnerTokenError::Key {
            path: "-".into(),
            reason: e.to_string(),
        })?;
        Self::from_pkcs8(doc.as_ref().to_vec(), "-")
    }

    fn from_pkcs8(pkcs8: Vec<u8>, path: &str) -> Result<RunnerTokenKey, RunnerTokenError> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| RunnerTokenError::Key {
            path: path.into(),
            reason: format!("not an Ed25519 PKCS#8 key: {e}"),
        })?;
        Ok(RunnerTokenKey {
            public: pair.public_key().as_ref().to_vec(),
            pkcs8,
        })
    }

    /// Reads a key file (base64 PKCS#8 on one line).
    pub fn load(path: &Path) -> Result<RunnerTokenKey, RunnerTokenError> {
        let err = |reason: String| RunnerTokenError::Key {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| err(format!("not base64: {e}")))?;
        Self::from_pkcs8(der, &path.display().to_string())
    }

    /// Loads the key file, creating it (mode 0600) when it does not exist.
    pub fn load_or_generate(path: &Path) -> Result<RunnerTokenKey, RunnerTokenError> {
        if path.exists() {
            return Self::load(path);
        }
        let key = Self::generate()?;
        let err = |reason: String| RunnerTokenError::Key {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        writeln!(
            f,
            "{}",
            base64::engine::general_purpose::STANDARD.encode(&key.pkcs8)
        )
        .map_err(|e| err(e.to_string()))?;
        Ok(key)
    }

    pub fn verifier(&self) -> RunnerTokenVerifier {
        RunnerTokenVerifier {
            public: self.public.clone(),
        }
    }

    /// A token for one call to `runner_id` about `subject`, valid for `ttl`.
    pub fn mint(
        &self,
        runner_id: &str,
        subject: &Subject,
        ttl: Duration,
    ) -> Result<String, RunnerTokenError> {
        let now = now_secs();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: audience(runner_id),
            sub: subject.as_claim(),
            iat: now,
            exp: now + ttl.as_secs().max(1),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_der(&self.pkcs8),
        )
        .map_err(|e| RunnerTokenError::Invalid(e.to_string()))
    }
}

/// A runner's verifier key: the public half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerTokenVerifier {
    public: Vec<u8>,
}

impl std::fmt::Display for RunnerTokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{VERIFIER_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.public)
        )
    }
}

impl std::str::FromStr for RunnerTokenVerifier {
    type Err = RunnerTokenError;
    fn from_str(s: &str) -> Result<RunnerTokenVerifier, RunnerTokenError> {
        let bad = |r: &str| RunnerTokenError::Key {
            path: "verifier key".into(),
            reason: r.into(),
        };
        let b64 = s
            .trim()
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or_else(|| bad("does not start with glassbox-runner-token+"))?;
        let public = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad("not base64"))?;
        if public.len() != 32 {
            return Err(bad("not a 32-byte Ed25519 public key"));
        }
        Ok(RunnerTokenVerifier { public })
    }
}

impl RunnerTokenVerifier {
    /// Checks `token` is a live token of the control plane for `runner_id`
    /// about `subject`.
    pub fn verify(
        &self,
        token: &str,
        runner_id: &str,
        subject: &Subject,
    ) -> Result<(), RunnerTokenError> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // The audience is checked below, to tell "another runner" apart.
        v.validate_aud = false;
        v.leeway = 5;
        let data =
            jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_ed_der(&self.public), &v)
                .map_err(|e| RunnerTokenError::Invalid(e.to_string()))?;
        if data.claims.aud != audience(runner_id) {
            return Err(RunnerTokenError::WrongRunner);
        }
        if data.claims.sub != subject.as_claim() {
            return Err(RunnerTokenError::WrongSubject);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_for_one_runner_one_subject_and_its_lifetime() {
        let key = RunnerTokenKey::generate().expect("key");
        let v: RunnerTokenVerifier = key.verifier().to_string().parse().expect("parse");
        let s = Subject::Session("s1".into());
        let t = key.mint("r1", &s, TTL).expect("mint");
        assert_eq!(v.verify(&t, "r1", &s), Ok(()));
        assert_eq!(v.verify(&t, "r2", &s), Err(RunnerTokenError::WrongRunner));
        assert_eq!(
            v.verify(&t, "r1", &Subject::Session("s2".into())),
            Err(RunnerTokenError::WrongSubject)
        );
        assert_eq!(
            v.verify(&t, "r1", &Subject::Runner),
            Err(RunnerTokenError::WrongSubject)
        );
        // Another control plane's key, a tampered token, garbage.
        let other = RunnerTokenKey::generate().expect("key");
        let forged = other.mint("r1", &s, TTL).expect("mint");
        assert!(matches!(
            v.verify(&forged, "r1", &s),
            Err(RunnerTokenError::Invalid(_))
        ));
        let mut tampered = t.clone();
        tampered.insert(tampered.len() - 3, 'A');
        assert!(v.verify(&tampered, "r1", &s).is_err());
        assert!(v.verify("not.a.token", "r1", &s).is_err());
        // Expired (beyond the leeway).
        let claims = Claims {
            iss: ISSUER.into(),
            aud: audience("r1"),
            sub: s.as_claim(),
            iat: now_secs() - 120,
            exp: now_secs() - 60,
            jti: "x".into(),
        };
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_der(&key.pkcs8),
        )
        .expect("encode");
        assert!(matches!(
            v.verify(&old, "r1", &s),
            Err(RunnerTokenError::Invalid(_))
        ));
        // An HS256 token with the public key as secret is not accepted.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                exp: now_secs() + 60,
                ..claims
            },
            &EncodingKey::from_secret(&key.public),
        )
        .expect("encode");
        assert!(v.verify(&hs, "r1", &s).is_err());
    }

    #[test]
    fn key_files_round_trip_and_bad_verifiers_are_refused() {
        let dir = std::env::temp_dir().join(format!("gb-rtk-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("runner-token.key");
        let k1 = RunnerTokenKey::load_or_generate(&path).expect("create");
        let k2 = RunnerTokenKey::load_or_generate(&path).expect("load");
        assert_eq!(k1.verifier(), k2.verifier());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for bad in [
            "",
            "glassbox-runner-token+",
            "glassbox-runner-token+AAAA",
            "x+abc",
        ] {
            assert!(bad.parse::<RunnerTokenVerifier>().is_err(), "{bad}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
