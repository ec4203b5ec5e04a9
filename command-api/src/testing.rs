//! Test support shared by this crate's tests and the end-to-end tests: tokens
//! signed with the test-only fixture keys (`platform/tests/fixtures`) and the
//! configuration of a service on a throw-away database. Nothing in production
//! uses it.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../platform/tests/fixtures")
        .join(name)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn claims(tenant: &str, subject: &str, roles: &[&str]) -> Value {
    json!({"iss": "glassbox", "aud": "glassbox", "sub": subject, "tenant": tenant,
           "roles": roles, "exp": now() + 600, "iat": now()})
}

/// An RS256 token signed with fixture key `pem` under key ID `kid`.
pub fn sign_with(kid: &str, pem: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.to_owned());
    let key = std::fs::read(fixture(pem))
        .ok()
        .and_then(|p| jsonwebtoken::EncodingKey::from_rsa_pem(&p).ok());
    match key {
        Some(k) => jsonwebtoken::encode(&h, claims, &k).unwrap_or_default(),
        None => String::new(),
    }
}

pub fn sign(claims: &Value) -> String {
    sign_with("rsa1", "rsa1.pem", claims)
}

/// A submitter of `tenant`.
pub fn token(tenant: &str) -> String {
    sign(&claims(tenant, &format!("user@{tenant}"), &["submitter"]))
}

/// A JWKS file holding the fixture key `rsa1`, written into `dir`.
pub fn jwks_file(dir: &Path) -> std::io::Result<PathBuf> {
    let jwk: Value = serde_json::from_slice(&std::fs::read(fixture("rsa1.jwk.json"))?)?;
    let path = dir.join("jwks.json");
    std::fs::write(&path, json!({"keys": [jwk]}).to_string())?;
    Ok(path)
}

/// Variables for a test-environment service on `db_url` keeping data in `data_dir`
/// (which gets the JWKS file).
pub fn vars(db_url: &str, data_dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    std::fs::create_dir_all(data_dir)?;
    let jwks = jwks_file(data_dir)?;
    Ok([
        ("GLASSBOX_ENV", "test"),
        ("GLASSBOX_HTTP_ADDR", "127.0.0.1:0"),
        ("GLASSBOX_DATABASE_URL", db_url),
        ("GLASSBOX_DATA_DIR", data_dir.to_str().unwrap_or_default()),
        ("GLASSBOX_AUTH_JWKS_FILE", jwks.to_str().unwrap_or_default()),
        ("GLASSBOX_RATE_LIMIT_PER_SEC", "100000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect())
}
