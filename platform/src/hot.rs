//! Hot state in Redis: which runners are up (heartbeats with free capacity)
//! and, for every session not yet ended, which runner owns it and when it is
//! next due to expire.
//!
//! Redis is a cache here, never the record: the ledger says what happened,
//! and everything in Redis can be rebuilt from it (`built` marks that it
//! was). A reaper that finds a session due in Redis still asks the ledger
//! before it expires anything. Keys live under a namespace per deployment
//! (its database name), so deployments — and test databases — sharing one
//! Redis never see each other's state.
//!
//! Every call is bounded by [`REDIS_WAIT`]: a Redis that does not answer is
//! an error the caller handles (fail closed), not a hung request.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest any call waits on Redis.
pub const REDIS_WAIT: Duration = Duration::from_millis(800);

#[derive(Debug, thiserror::Error)]
pub enum HotError {
    #[error("hot state: connecting to Redis: {0}")]
    Connect(String),
    #[error("hot state: {step}: {detail}")]
    Redis { step: &'static str, detail: String },
    #[error("hot state: {0}: Redis did not answer in time")]
    Timeout(&'static str),
}

/// A runner's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerBeat {
    pub runner_id: String,
    /// Where its data-plane API listens (`http://host:port`).
    pub addr: String,
    /// Sessions it may hold, and holds.
    pub capacity: u32,
    pub sessions: u32,
    /// Unix milliseconds of the beat.
    pub at_ms: u64,
}

impl RunnerBeat {
    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.sessions)
    }
}

/// A session not yet ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHot {
    pub session_id: String,
    pub tenant: String,
    pub runner: String,
    /// Unix milliseconds of the next deadline (idle or lifetime).
    pub deadline_ms: u64,
}

/// The deployment's namespace for a database URL (its database name).
pub fn namespace(database_url: &str) -> String {
    let db = database_url
        .rsplit('/')
        .next()
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("");
    format!("glassbox:{db}")
}

#[derive(Clone)]
pub struct HotState {
    conn: ConnectionManager,
    ns: String,
}

impl std::fmt::Debug for HotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotState").field("ns", &self.ns).finish()
    }
}

impl HotState {
    /// Connects (start-up fails if Redis cannot be reached).
    pub async fn connect(url: &str, namespace: &str) -> Result<HotState, HotError> {
        let client = redis::Client::open(url).map_err(|e| HotError::Connect(e.to_string()))?;
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
        .map_err(|_| HotError::Connect("no answer within 5 s".into()))?
        .map_err(|e| HotError::Connect(e.to_string()))?;
        Ok(HotState {
            conn,
            ns: namespace.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.ns.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        step: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, HotError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(REDIS_WAIT, cmd.query_async::<T>(&mut conn))
            .await
            .map_err(|_| HotError::Timeout(step))?
            .map_err(|e| HotError::Redis {
                step,
                detail: e.to_string(),
            })
    }

    async fn pipe<T: redis::FromRedisValue>(
        &self,
        step: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, HotError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(REDIS_WAIT, pipe.query_async::<T>(&mut conn))
            .await
            .map_err(|_| HotError::Timeout(step))?
            .map_err(|e| HotError::Redis {
                step,
                detail: e.to_string(),
            })
    }

    /// Records a runner's heartbeat, live for `ttl`.
    pub async fn beat(&self, beat: &RunnerBeat, ttl: Duration) -> Result<(), HotError> {
        let body = serde_json::to_string(beat).unwrap_or_default();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&["runner", &beat.runner_id]))
            .arg(body)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        self.run::<()>("heartbeat", &cmd).await
    }

    /// The runner's last heartbeat, if it is still live.
    pub async fn runner(&self, runner_id: &str) -> Result<Option<RunnerBeat>, HotError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(&["runner", runner_id]));
        let v: Option<String> = self.run("read a heartbeat", &cmd).await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Every live runner.
    pub async fn runners(&self) -> Result<Vec<RunnerBeat>, HotError> {
        let pattern = self.key(&["runner", "*"]);
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(200);
            let (next, batch): (u64, Vec<String>) = self.run("list runners", &cmd).await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() > 10_000 {
                break;
            }
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for k in &keys {
            cmd.arg(k);
        }
        let values: Vec<Option<String>> = self.run("read heartbeats", &cmd).await?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect())
    }

    /// Records (or updates) a session's owner and next deadline.
    pub async fn put_session(&self, s: &SessionHot) -> Result<(), HotError> {
        let body = serde_json::to_string(s).unwrap_or_default();
        let mut p = redis::pipe();
        p.atomic()
            .cmd("SET")
            .arg(self.key(&["session", &s.session_id]))
            .arg(body)
            .ignore()
            .cmd("ZADD")
            .arg(self.key(&["deadlines"]))
            .arg(s.deadline_ms)
            .arg(&s.session_id)
            .ignore()
            .cmd("SADD")
            .arg(self.key(&["runner-sessions", &s.runner]))
            .arg(&s.session_id)
            .ignore();
        self.pipe::<()>("record a session", &p).await
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionHot>, HotError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(&["session", id]));
        let v: Option<String> = self.run("read a session", &cmd).await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Forgets an ended session.
    pub async fn remove_session(&self, id: &str, runner: &str) -> Result<(), HotError> {
        let mut p = redis::pipe();
        p.atomic()
            .cmd("DEL")
            .arg(self.key(&["session", id]))
            .ignore()
            .cmd("ZREM")
            .arg(self.key(&["deadlines"]))
            .arg(id)
            .ignore()
            .cmd("SREM")
            .arg(self.key(&["runner-sessions", runner]))
            .arg(id)
            .ignore();
        self.pipe::<()>("forget a session", &p).await
    }

    /// Sessions whose deadline is at or before `now_ms` (at most `max`).
    pub async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<String>, HotError> {
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(self.key(&["deadlines"]))
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(max);
        self.run("find due sessions", &cmd).await
    }

    /// Every session it knows (not ended).
    pub async fn sessions(&self) -> Result<Vec<String>, HotError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.key(&["deadlines"])).arg(0).arg(-1);
        self.run("list sessions", &cmd).await
    }

    /// The sessions a runner owns.
    pub async fn sessions_on(&self, runner: &str) -> Result<Vec<String>, HotError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.key(&["runner-sessions", runner]));
        self.run("list a runner's sessions", &cmd).await
    }

    /// Was the state rebuilt from the ledger since Redis last lost it?
    pub async fn built(&self) -> Result<bool, HotError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.key(&["built"]));
        let n: u64 = self.run("check the rebuild marker", &cmd).await?;
        Ok(n > 0)
    }

    /// Marks the state rebuilt at `now_ms` (Unix milliseconds).
    pub async fn mark_built(&self, now_ms: u64) -> Result<(), HotError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&["built"])).arg(now_ms);
        self.run::<()>("set the rebuild marker", &cmd).await
    }

    /// When the state was last rebuilt (Unix milliseconds), if it was: the
    /// runners' heartbeats were lost with it, so no runner is judged gone
    /// until a beat has had time to come back.
    pub async fn built_at(&self) -> Result<Option<u64>, HotError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(&["built"]));
        let v: Option<String> = self.run("read the rebuild marker", &cmd).await?;
        Ok(v.map(|s| s.parse().unwrap_or(0)))
    }

    /// Deletes every key of this namespace (what a flushed Redis looks like to
    /// this deployment; for tests and operators).
    pub async fn forget_everything(&self) -> Result<u64, HotError> {
        let pattern = format!("{}:*", self.ns);
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500);
            let (next, keys): (u64, Vec<String>) = self.run("scan the namespace", &cmd).await?;
            if !keys.is_empty() {
                let mut del = redis::cmd("DEL");
                for k in &keys {
                    del.arg(k);
                }
                removed += self.run::<u64>("delete keys", &del).await?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }
}
