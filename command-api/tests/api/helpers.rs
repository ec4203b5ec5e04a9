//! `spawn_app()` → [`TestApp`]: a real command-api on a free port, its own
//! PostgreSQL database, blob directory and Redis key space, and typed helpers.

use glassbox_command_api::Application;
use glassbox_events::store::{EventStore, StoredRecord};
use glassbox_events::testing::TestDb;
use glassbox_platform::Config;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

pub use glassbox_command_api::testing::{claims, fixture, jwks_file, now, sign, sign_with, token};

pub struct TestApp {
    pub addr: String,
    pub db: TestDb,
    pub store: EventStore,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    pub shutdown: CancellationToken,
    pub app_state: glassbox_command_api::AppState,
}

/// The service's variables without the JWKS file (callers add one).
pub fn base_vars(db_url: &str, data_dir: &Path) -> Vec<(String, String)> {
    glassbox_command_api::testing::vars(db_url, data_dir)
        .expect("test variables")
        .into_iter()
        .filter(|(k, _)| k != "GLASSBOX_AUTH_JWKS_FILE")
        .collect()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Extra `GLASSBOX_*` variables override the defaults.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("test database");
    let data_dir = std::env::temp_dir().join(format!("glassbox-api-test-{}", db.name));
    std::fs::create_dir_all(&data_dir).expect("data dir");
    spawn_on(db, data_dir, extra).await
}

pub async fn spawn_on(db: TestDb, data_dir: PathBuf, extra: &[(&str, &str)]) -> TestApp {
    let mut vars = glassbox_command_api::testing::vars(&db.url, &data_dir).expect("test variables");
    for (k, v) in extra {
        vars.push(((*k).to_owned(), (*v).to_owned()));
    }
    let config = Config::from_vars(vars).expect("config");
    let app = Application::build(config).await.expect("build app");
    let port = app.port();
    let shutdown = app.shutdown_token();
    let app_state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    let store = db.store().await.expect("store");
    TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        db,
        store,
        client: reqwest::Client::new(),
        data_dir,
        shutdown,
        app_state,
    }
}

pub fn hello(language: &str) -> Value {
    json!({"language": language, "code": "print('hello')\n"})
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            headers,
            body,
        }
    }

    pub async fn submit(&self, token: &str, body: &Value, key: Option<&str>) -> Reply {
        let mut r = self
            .client
            .post(format!("{}/v1/jobs", self.addr))
            .bearer_auth(token)
            .json(body);
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        self.send(r).await
    }

    pub async fn get(&self, token: &str, path: &str) -> Reply {
        self.send(
            self.client
                .get(format!("{}{path}", self.addr))
                .bearer_auth(token),
        )
        .await
    }

    pub async fn post(&self, token: &str, path: &str, body: Option<&Value>) -> Reply {
        let mut r = self
            .client
            .post(format!("{}{path}", self.addr))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(b);
        }
        self.send(r).await
    }

    /// Every record in the ledger.
    pub async fn records(&self) -> Vec<StoredRecord> {
        self.store
            .read_all(1, 1_000_000)
            .await
            .expect("read ledger")
    }

    pub async fn records_of_type(&self, t: &str) -> Vec<StoredRecord> {
        self.records()
            .await
            .into_iter()
            .filter(|r| r.record.event_type == t)
            .collect()
    }

    pub fn projector(&self) -> glassbox_projector::Projector {
        glassbox_projector::Projector::new(self.store.clone())
    }

    /// Runs a projector until the returned token is cancelled.
    pub fn run_projector(&self) -> CancellationToken {
        let t = CancellationToken::new();
        tokio::spawn(self.projector().run(None, t.clone()));
        t
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        self.db.drop_db().await;
    }
}

pub fn assert_problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "status of {:?}", r.body);
    assert!(
        r.content_type.starts_with("application/problem+json"),
        "content type {:?} for {:?}",
        r.content_type,
        r.body
    );
    assert_eq!(r.body["code"], code, "code of {:?}", r.body);
    assert_eq!(r.body["status"], status);
}
