//! Test support shared by every crate's integration tests: a fresh, UUID-named
//! PostgreSQL database per test, with all migrations applied.
//!
//! The server comes from `GLASSBOX_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), a role that may create databases.

use crate::store::{EventStore, StoreError, migrate};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};
use std::time::Duration;

/// The server URL tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("GLASSBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn db_err(step: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { step, source }
}

/// A throw-away database.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// Creates the database and runs the migrations.
    pub async fn new() -> Result<TestDb, StoreError> {
        let name = format!("glassbox_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .map_err(db_err("test db: connect to server"))?;
        conn.execute(sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE {name}"
        ))))
        .await
        .map_err(db_err("test db: create database"))?;
        let (prefix, _) = admin
            .rsplit_once('/')
            .ok_or_else(|| StoreError::InvalidRequest("database URL has no path".into()))?;
        let url = format!("{prefix}/{name}");
        let pool = Self::pool_for(&url, 8).await?;
        migrate(&pool).await?;
        Ok(TestDb { name, url, pool })
    }

    pub async fn pool_for(url: &str, max: u32) -> Result<PgPool, StoreError> {
        crate::pg::pool_options(url)
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(60))
            .connect(url)
            .await
            .map_err(db_err("test db: connect pool"))
    }

    /// A new store with its own pool and writer (like another process).
    pub async fn store(&self) -> Result<EventStore, StoreError> {
        Ok(EventStore::new(Self::pool_for(&self.url, 6).await?))
    }

    /// Runs SQL as the database owner with triggers disabled — an insider.
    pub async fn tamper(&self, sql: &str) -> Result<(), StoreError> {
        let mut c = sqlx::PgConnection::connect(&self.url)
            .await
            .map_err(db_err("tamper: connect"))?;
        c.execute("SET session_replication_role = replica")
            .await
            .map_err(db_err("tamper: disable triggers"))?;
        c.execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await
            .map_err(db_err("tamper: run"))?;
        Ok(())
    }

    /// Drops the database (best effort).
    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url()).await {
            let _ = admin
                .execute(sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))))
                .await;
        }
    }
}
