//! Configuration from `GLASSBOX_*` environment variables (and `DATABASE_URL`),
//! optionally on top of a TOML file named by `GLASSBOX_CONFIG_FILE` whose keys are
//! the variable names without the prefix, in lower case (`http_addr = "…"`).
//! The environment wins over the file.
//!
//! A bad value fails start-up with an error naming the variable; secret values
//! are never echoed. The default environment is `production`, so nothing
//! permissive (HS256 tokens, the auth bypass) happens unless asked for.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Test,
    Production,
}

impl Environment {
    /// Development and test allow HS256 tokens and the auth bypass.
    pub fn is_permissive(self) -> bool {
        matches!(self, Environment::Development | Environment::Test)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {var}: {reason}")]
pub struct ConfigError {
    pub var: String,
    pub reason: String,
}

/// Which claims carry the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    pub tenant: String,
    pub subject: String,
    pub app: String,
    pub agent: String,
    pub roles: String,
}

/// A secret string: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// Development and test only.
    pub hs256_secret: Option<Secret>,
    pub claims: ClaimNames,
    pub leeway: Duration,
    /// A JWKS URL is re-fetched on an unknown `kid` at most this often.
    pub jwks_min_refresh: Duration,
    /// Requests without a token act as the identity in `X-Glassbox-Identity`
    /// (development and test only; every use is recorded).
    pub bypass: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub environment: Environment,
    pub http_addr: SocketAddr,
    pub database_url: Option<String>,
    pub redis_url: String,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub auth: AuthConfig,
    /// Requests per second per tenant (Redis fixed window).
    pub rate_limit_per_sec: u64,
    /// Longest `wait` a read may ask for (long polling), in seconds.
    pub max_wait_secs: u64,
    /// Finished jobs' data is crypto-shredded this long after they finish
    /// (0: kept until deleted).
    pub retention_secs: u64,
    /// A workflow step's approval that nobody answers within this many
    /// seconds is denied (default one day).
    pub workflow_approval_timeout_secs: u64,
    /// The checkpoint signing key file; the API serves its verifier key and
    /// verifies with it (it never signs).
    pub ledger_key_file: Option<PathBuf>,
    /// A policy bundle directory; the built-in bundle when unset.
    pub policy_dir: Option<PathBuf>,
    /// Where blobs are kept: `data_dir/blobs` unless an S3 bucket is configured.
    pub blob: crate::blob::Backend,
    /// Serve `/metrics` on this address instead of the API's.
    pub metrics_addr: Option<SocketAddr>,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret>,
    /// Requests with a bad or missing token one client address may make per
    /// second before it gets 429 instead of 401.
    pub auth_failures_per_sec: u64,
    /// The Ed25519 key the control plane signs runner tokens with (PKCS#8,
    /// base64); default `<data dir>/runner-token.key`, created if missing.
    /// A runner without `GLASSBOX_RUNNER_TOKEN_VERIFIER` takes its verifier
    /// from the same file.
    pub runner_token_key_file: PathBuf,
}

const PREFIX: &str = "GLASSBOX_";
/// Every key a configuration file may hold (its variable without the prefix).
const KNOWN: &[&str] = &[
    "env",
    "http_addr",
    "database_url",
    "redis_url",
    "data_dir",
    "max_body_bytes",
    "auth_issuer",
    "auth_audience",
    "auth_jwks_file",
    "auth_jwks_url",
    "auth_hs256_secret",
    "auth_tenant_claim",
    "auth_subject_claim",
    "auth_app_claim",
    "auth_agent_claim",
    "auth_roles_claim",
    "auth_leeway_secs",
    "auth_jwks_min_refresh_secs",
    "auth_bypass",
    "rate_limit_per_sec",
    "max_wait_secs",
    "retention_secs",
    "workflow_approval_timeout_secs",
    "ledger_key_file",
    "policy_dir",
    "blob_s3_bucket",
    "blob_s3_endpoint",
    "blob_s3_region",
    "blob_s3_access_key_id",
    "blob_s3_secret_access_key",
    "blob_s3_allow_http",
    "metrics_addr",
    "metrics_token",
    "auth_failures_per_sec",
    "runner_token_key_file",
];
const SECRETS: &[&str] = &[
    "auth_hs256_secret",
    "metrics_token",
    "database_url",
    "blob_s3_secret_access_key",
];

impl Config {
    /// From the process environment (and the file it names).
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// From explicit variables — what tests use.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        if let Some(path) = vars.get("GLASSBOX_CONFIG_FILE") {
            let err = |reason: String| ConfigError {
                var: "GLASSBOX_CONFIG_FILE".into(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(format!("{path}: {e}")))?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| err(format!("{path}: {e}")))?;
            for (k, v) in table {
                if !KNOWN.contains(&k.as_str()) {
                    return Err(err(format!("{path}: unknown setting `{k}`")));
                }
                let v = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(err(format!(
                            "{path}: `{k}` must be a string, integer or boolean, not {}",
                            other.type_str()
                        )));
                    }
                };
                values.insert(k, v);
            }
        }
        for (k, v) in &vars {
            if let Some(key) = k.strip_prefix(PREFIX) {
                let key = key.to_ascii_lowercase();
                if KNOWN.contains(&key.as_str()) {
                    values.insert(key, v.clone());
                }
            }
        }
        if let Some(url) = vars.get("DATABASE_URL") {
            values
                .entry("database_url".into())
                .or_insert_with(|| url.clone());
        }
        let get = |k: &str| values.get(k).map(String::as_str).filter(|s| !s.is_empty());
        let bad = |k: &str, reason: String| ConfigError {
            var: format!("{PREFIX}{}", k.to_ascii_uppercase()),
            reason,
        };
        let shown = |k: &str, v: &str| {
            if SECRETS.contains(&k) {
                "(hidden)".to_owned()
            } else {
                format!("{v:?}")
            }
        };

        let environment = match get("env").unwrap_or("production") {
            "development" | "dev" => Environment::Development,
            "test" => Environment::Test,
            "production" | "prod" => Environment::Production,
            other => {
                return Err(bad(
                    "env",
                    format!("{other:?} is not one of development, test, production"),
                ));
            }
        };
        let http_addr = get("http_addr")
            .unwrap_or("127.0.0.1:8080")
            .parse::<SocketAddr>()
            .map_err(|_| {
                bad(
                    "http_addr",
                    format!(
                        "{} is not a socket address like 127.0.0.1:8080",
                        shown("http_addr", get("http_addr").unwrap_or_default())
                    ),
                )
            })?;
        let database_url = match get("database_url") {
            None => None,
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Some(u.to_owned())
            }
            Some(_) => {
                return Err(bad(
                    "database_url",
                    "must be a postgres:// URL (value hidden)".into(),
                ));
            }
        };
        let redis_url = get("redis_url")
            .unwrap_or("redis://127.0.0.1:6379")
            .to_owned();
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            return Err(bad(
                "redis_url",
                format!("{redis_url:?} must be a redis:// URL"),
            ));
        }
        let data_dir = get("data_dir").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".local/share/glassbox")
        });
        let number = |k: &str, default: u64, min: u64| -> Result<u64, ConfigError> {
            match get(k) {
                None => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => Err(bad(k, format!("{v:?} is not an integer >= {min}"))),
                },
            }
        };
        let boolean = |k: &str| -> Result<bool, ConfigError> {
            match get(k) {
                None => Ok(false),
                Some("true" | "1" | "yes") => Ok(true),
                Some("false" | "0" | "no") => Ok(false),
                Some(v) => Err(bad(k, format!("{v:?} is not true or false"))),
            }
        };
        let max_body_bytes = number("max_body_bytes", 8 << 20, 1024)? as usize;
        let hs256_secret = match get("auth_hs256_secret") {
            None => None,
            Some(s) if s.len() < 32 => {
                return Err(bad(
                    "auth_hs256_secret",
                    "must be at least 32 bytes (value hidden)".into(),
                ));
            }
            Some(s) => Some(Secret(s.to_owned())),
        };
        if hs256_secret.is_some() && !environment.is_permissive() {
            return Err(bad(
                "auth_hs256_secret",
                format!(
                    "HS256 tokens are only accepted in development and test, not {}",
                    environment.as_str()
                ),
            ));
        }
        let bypass = boolean("auth_bypass")?;
        if bypass && !environment.is_permissive() {
            return Err(bad(
                "auth_bypass",
                format!(
                    "the auth bypass is refused in the {} environment (development and test only)",
                    environment.as_str()
                ),
            ));
        }
        let jwks_url = get("auth_jwks_url").map(str::to_owned);
        if let Some(u) = &jwks_url
            && !(u.starts_with("https://")
                || (environment.is_permissive() && u.starts_with("http://")))
        {
            return Err(bad(
                "auth_jwks_url",
                format!("{u:?} must be an https:// URL"),
            ));
        }
        let claim = |k: &str, default: &str| get(k).unwrap_or(default).to_owned();
        let auth = AuthConfig {
            issuer: claim("auth_issuer", "glassbox"),
            audience: claim("auth_audience", "glassbox"),
            jwks_file: get("auth_jwks_file").map(PathBuf::from),
            jwks_url,
            hs256_secret,
            claims: ClaimNames {
                tenant: claim("auth_tenant_claim", "tenant"),
                subject: claim("auth_subject_claim", "sub"),
                app: claim("auth_app_claim", "app"),
                agent: claim("auth_agent_claim", "agent"),
                roles: claim("auth_roles_claim", "roles"),
            },
            leeway: Duration::from_secs(number("auth_leeway_secs", 30, 0)?),
            jwks_min_refresh: Duration::from_secs(number("auth_jwks_min_refresh_secs", 30, 0)?),
            bypass,
        };
        let rate_limit_per_sec = number("rate_limit_per_sec", 100, 1)?;
        let max_wait_secs = number("max_wait_secs", 60, 0)?;
        if max_wait_secs > 3600 {
            return Err(bad(
                "max_wait_secs",
                format!("{max_wait_secs} is more than 3600"),
            ));
        }
        let retention_secs = number("retention_secs", 0, 0)?;
        let workflow_approval_timeout_secs = number("workflow_approval_timeout_secs", 86_400, 1)?;
        let ledger_key_file = get("ledger_key_file").map(PathBuf::from);
        let runner_token_key_file = get("runner_token_key_file")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("runner-token.key"));
        let policy_dir = get("policy_dir").map(PathBuf::from);
        let blob = match get("blob_s3_bucket") {
            None => crate::blob::Backend::Local(data_dir.join("blobs")),
            Some(bucket) => {
                let required = |k: &str| {
                    get(k).map(str::to_owned).ok_or_else(|| {
                        bad(k, "is required when GLASSBOX_BLOB_S3_BUCKET is set".into())
                    })
                };
                let allow_http = boolean("blob_s3_allow_http")?;
                let endpoint = get("blob_s3_endpoint").map(str::to_owned);
                if let Some(e) = &endpoint
                    && e.starts_with("http://")
                    && !allow_http
                {
                    return Err(bad(
                        "blob_s3_endpoint",
                        format!(
                            "{e:?} is plain http; set GLASSBOX_BLOB_S3_ALLOW_HTTP=true to allow it"
                        ),
                    ));
                }
                crate::blob::Backend::S3 {
                    bucket: bucket.to_owned(),
                    endpoint,
                    region: get("blob_s3_region").unwrap_or("us-east-1").to_owned(),
                    access_key_id: required("blob_s3_access_key_id")?,
                    secret_access_key: Secret::new(required("blob_s3_secret_access_key")?),
                    allow_http,
                }
            }
        };
        let metrics_addr = match get("metrics_addr") {
            None => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                bad(
                    "metrics_addr",
                    format!("{v:?} is not a socket address like 127.0.0.1:9464"),
                )
            })?),
        };
        let metrics_token = match get("metrics_token") {
            None => None,
            Some(t) if t.len() < 16 => {
                return Err(bad(
                    "metrics_token",
                    "must be at least 16 characters (value hidden)".into(),
                ));
            }
            Some(t) => Some(Secret(t.to_owned())),
        };
        let auth_failures_per_sec = number("auth_failures_per_sec", 10, 1)?;
        Ok(Config {
            environment,
            http_addr,
            database_url,
            redis_url,
            data_dir,
            max_body_bytes,
            auth,
            rate_limit_per_sec,
            max_wait_secs,
            retention_secs,
            workflow_approval_timeout_secs,
            ledger_key_file,
            policy_dir,
            blob,
            metrics_addr,
            metrics_token,
            auth_failures_per_sec,
            runner_token_key_file,
        })
    }
}
