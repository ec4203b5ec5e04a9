//! Per-tenant request rate limits in Redis (fixed one-second windows).
//!
//! Redis rather than process memory so that every command-api replica counts
//! against the same budget. `INCR` + `EXPIRE` in one pipeline per request; the
//! key expires two seconds after its window, so nothing accumulates.
//!
//! Fail closed: when Redis cannot be asked, the request is refused (503), not
//! waved through.

use redis::aio::ConnectionManager;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limiter: connecting to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("rate limiter: counting request of tenant {tenant}: {source}")]
    Count {
        tenant: String,
        #[source]
        source: redis::RedisError,
    },
}

/// What the limiter decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit. `first` is true for exactly one request per tenant and
    /// window — the one that gets recorded in the ledger.
    Limited {
        first: bool,
        window_start: u64,
    },
}

#[derive(Clone)]
pub struct RateLimiter {
    conn: ConnectionManager,
    per_second: u64,
    prefix: String,
}

impl RateLimiter {
    /// Connects (and fails start-up if Redis cannot be reached).
    pub async fn connect(
        url: &str,
        per_second: u64,
        prefix: &str,
    ) -> Result<RateLimiter, RateLimitError> {
        let connect = |source| RateLimitError::Connect {
            url: redact(url),
            source,
        };
        let client = redis::Client::open(url).map_err(connect)?;
        let conn = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            ConnectionManager::new(client),
        )
        .await
        .map_err(|_| {
            connect(redis::RedisError::from((
                redis::ErrorKind::Io,
                "timed out after 5 s",
            )))
        })?
        .map_err(connect)?;
        Ok(RateLimiter {
            conn,
            per_second,
            prefix: prefix.to_owned(),
        })
    }

    pub fn per_second(&self) -> u64 {
        self.per_second
    }

    /// Counts one request of `tenant`.
    pub async fn check(&self, tenant: &str) -> Result<Verdict, RateLimitError> {
        let window = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let key = format!("{}:rl:{tenant}:{window}", self.prefix);
        let mut conn = self.conn.clone();
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, 2)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|source| RateLimitError::Count {
                tenant: tenant.to_owned(),
                source,
            })?;
        Ok(if count <= self.per_second {
            Verdict::Allowed
        } else {
            Verdict::Limited {
                first: count == self.per_second + 1,
                window_start: window,
            }
        })
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
