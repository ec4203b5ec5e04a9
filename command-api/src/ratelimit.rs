//! Per-tenant request rate limits in Redis (fixed one-second windows).
//!
//! Redis rather than process memory so that every command-api replica counts
//! against the same budget. `INCR` + `EXPIRE` in one pipeline per request; the
//! key expires two seconds after its window, so nothing accumulates.
//!
//! Fail closed: when Redis cannot be asked, the request is refused (503), not
//! waved through — and quickly: every Redis call is bounded by [`REDIS_WAIT`]
//! (the connection manager's own reconnect would otherwise hold a request for
//! about ten seconds), and `/readyz` reports Redis down.
//!
//! Requests without a valid token are counted per client address as well, so
//! a client guessing tokens gets 429 after a few refusals a second instead of
//! an unlimited number of signature checks.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest any request waits on Redis before it is refused with 503.
pub const REDIS_WAIT: Duration = Duration::from_millis(800);

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limiter: connecting to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("rate limiter: counting request of {subject}: {source}")]
    Count {
        subject: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("rate limiter: Redis did not answer within {0:?}")]
    Timeout(Duration),
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
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
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
        self.count("rl", tenant, self.per_second).await
    }

    /// Counts one request of `tenant` to its sessions' exposed ports
    /// (service mode), against the tenant's own rate.
    pub async fn check_service(
        &self,
        tenant: &str,
        per_second: u64,
    ) -> Result<Verdict, RateLimitError> {
        self.count("svc", tenant, per_second).await
    }

    /// Counts one request refused for its credentials from `client` (an
    /// address); `limit` per second are answered 401, the rest 429.
    pub async fn check_auth_failure(
        &self,
        client: &str,
        limit: u64,
    ) -> Result<Verdict, RateLimitError> {
        self.count("authfail", client, limit).await
    }

    /// Answers when Redis does (for `/readyz`).
    pub async fn ping(&self) -> Result<(), RateLimitError> {
        let mut conn = self.conn.clone();
        let _: String = tokio::time::timeout(REDIS_WAIT, redis::cmd("PING").query_async(&mut conn))
            .await
            .map_err(|_| RateLimitError::Timeout(REDIS_WAIT))?
            .map_err(|source| RateLimitError::Count {
                subject: "ping".into(),
                source,
            })?;
        Ok(())
    }

    async fn count(&self, kind: &str, who: &str, limit: u64) -> Result<Verdict, RateLimitError> {
        let window = window();
        let key = format!("{}:{kind}:{who}:{window}", self.prefix);
        let mut conn = self.conn.clone();
        let (count,): (u64,) = tokio::time::timeout(
            REDIS_WAIT,
            redis::pipe()
                .atomic()
                .incr(&key, 1)
                .expire(&key, 2)
                .ignore()
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| RateLimitError::Timeout(REDIS_WAIT))?
        .map_err(|source| RateLimitError::Count {
            subject: who.to_owned(),
            source,
        })?;
        Ok(if count <= limit {
            Verdict::Allowed
        } else {
            Verdict::Limited {
                first: count == limit + 1,
                window_start: window,
            }
        })
    }
}

fn window() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
