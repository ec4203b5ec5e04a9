//! # glassbox-command-api — the control plane's HTTP API
//!
//! Clients and agents submit jobs here. [`core`] decides and records; [`api`]
//! parses HTTP into core calls; [`auth`] establishes who is calling (JWT, or the
//! audited test-only bypass) and counts rate limits in Redis.
//!
//! Reads come from the projector's read models. A submission answers with the
//! ledger position of its records; passing it as `min_position` to a read makes
//! the read wait until the read models include it (read-your-writes), woken by
//! the projector's NOTIFY (see [`projection_watch`]).
//!
//! [`Application::build`] wires everything from a [`Config`]; binding port 0
//! gives tests a free port ([`Application::port`]).

#![recursion_limit = "512"]

pub mod api;
pub mod api_sessions;
pub mod api_workflows;
pub mod audit;
pub mod auth;
pub mod command;
pub mod core;
pub mod error;
pub mod mcp;
pub mod openapi;
pub mod ratelimit;
pub mod sessions;
pub mod telemetry;
pub mod testing;
pub mod workflows;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use glassbox_events::Digest;
use glassbox_events::store::EventStore;
use glassbox_platform::blob::{BlobStore, Kek};
use glassbox_platform::{Config, JwtVerifier};
use glassbox_policies::{Bundle, PolicyEngine};
use sqlx::postgres::{PgListener, PgPool};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use crate::core::{Caller, Core};
pub use crate::error::ApiError;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub core: Core,
    pub config: Arc<Config>,
    pub verifier: Arc<JwtVerifier>,
    pub limiter: ratelimit::RateLimiter,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("start-up: GLASSBOX_DATABASE_URL (or DATABASE_URL) is not set")]
    NoDatabase,
    #[error("start-up: connecting to PostgreSQL: {0}")]
    Database(#[source] sqlx::Error),
    #[error("start-up: {0}")]
    Store(#[from] glassbox_events::store::StoreError),
    #[error("start-up: {0}")]
    Config(#[from] glassbox_platform::ConfigError),
    #[error("start-up: blob store: {0}")]
    Blob(#[from] glassbox_platform::blob::BlobError),
    #[error("start-up: {0}")]
    Policy(#[from] glassbox_policies::PolicyError),
    #[error("start-up: {0}")]
    RateLimit(#[from] ratelimit::RateLimitError),
    #[error("start-up: checkpoint key {0}")]
    Key(String),
    #[error("start-up: Redis (hot session state): {0}")]
    Hot(String),
    #[error("start-up: binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Application {
    port: u16,
    listener: tokio::net::TcpListener,
    router: Router,
    /// `/metrics` on its own address (`GLASSBOX_METRICS_ADDR`).
    metrics: Option<(tokio::net::TcpListener, Router)>,
    state: AppState,
    shutdown: CancellationToken,
}

/// Connects a pool for a service and runs the migrations.
pub async fn connect(url: &str) -> Result<PgPool, BuildError> {
    let pool = glassbox_events::pg::pool_options(url)
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(BuildError::Database)?;
    glassbox_events::store::migrate(&pool).await?;
    Ok(pool)
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, BuildError> {
        let url = config.database_url.clone().ok_or(BuildError::NoDatabase)?;
        let pool = connect(&url).await?;
        let store = EventStore::new(pool.clone());
        let verifier = JwtVerifier::new(&config.auth).await?;
        let kek = Kek::load_or_generate(&config.data_dir.join("kek"))?;
        let blobs = BlobStore::new(&config.blob, pool.clone(), kek)?;
        let bundle = match &config.policy_dir {
            Some(dir) => Bundle::load_dir(dir)?,
            None => Bundle::builtin(),
        };
        let engine = PolicyEngine::new(&bundle)?;
        keep_bundle(&store, &blobs, &bundle).await?;
        if config.auth.bypass {
            tracing::warn!(
                environment = config.environment.as_str(),
                "authentication bypass is ON: requests without a token act as X-Glassbox-Identity (each recorded as auth.bypassed)"
            );
            auth::record_bypass_enabled(&store, config.environment.as_str()).await?;
        }
        // Rate-limit keys are namespaced by database, so deployments (and test
        // databases) sharing one Redis do not count against each other.
        let db_name = url
            .rsplit('/')
            .next()
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("");
        let limiter = ratelimit::RateLimiter::connect(
            &config.redis_url,
            config.rate_limit_per_sec,
            &format!("glassbox:{db_name}"),
        )
        .await?;
        let shutdown = CancellationToken::new();
        let projected = projection_watch(pool.clone(), shutdown.clone()).await;
        let signing_key = match &config.ledger_key_file {
            Some(path) if path.exists() => Some(Arc::new(
                glassbox_events::SigningKey::load_file(path)
                    .map_err(|e| BuildError::Key(format!("{}: {e}", path.display())))?,
            )),
            _ => None,
        };
        let verifier_key = signing_key.as_ref().map(|k| Arc::new(k.verifier()));
        let runner_key = glassbox_platform::runner_token::RunnerTokenKey::load_or_generate(
            &config.runner_token_key_file,
        )
        .map_err(|e| BuildError::Key(format!("runner token key: {e}")))?;
        let hot = glassbox_platform::hot::HotState::connect(
            &config.redis_url,
            &glassbox_platform::hot::namespace(&url),
        )
        .await
        .map_err(|e| BuildError::Hot(e.to_string()))?;
        let data_plane = Some(Arc::new(sessions::DataPlane::new(hot, runner_key)));
        let core = Core {
            store,
            pool: pool.clone(),
            blobs,
            engine: Arc::new(engine),
            projected,
            verifier_key,
            signing_key,
            data_plane,
            definitions: Arc::default(),
            approval_timeout: Duration::from_secs(config.workflow_approval_timeout_secs),
            limiter: Some(limiter.clone()),
        };
        let state = AppState {
            core,
            config: Arc::new(config.clone()),
            verifier: Arc::new(verifier),
            limiter,
        };
        if config.retention_secs > 0 {
            let (core, token) = (state.core.clone(), shutdown.clone());
            let retention = Duration::from_secs(config.retention_secs);
            let every = retention.min(Duration::from_secs(60));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    if let Err(e) = core.enforce_retention(retention).await {
                        tracing::warn!(error = %e, "retention sweep failed");
                    }
                }
            });
        }
        {
            // The status gauges (ledger head, checkpoint age, projection lag,
            // queue depth, open sessions), refreshed for OTLP push.
            glassbox_platform::telemetry::metrics::ensure();
            telemetry::init_metrics();
            let (st, token) = (state.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    if let Err(e) = telemetry::refresh_status(&st).await {
                        tracing::debug!(error = %e, "status gauges: refresh failed");
                    }
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(telemetry::STATUS_EVERY) => {}
                    }
                }
            });
        }
        {
            // The session reaper: expiry, lost runners, the hot state's rebuild.
            let (core, token) = (state.core.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(sessions::REAP_EVERY) => {}
                    }
                    if let Err(e) = core.reap().await {
                        tracing::warn!(error = %e, "session reaper pass failed");
                    }
                }
            });
        }
        // The workflow orchestrator (every instance; runs are locked one by one).
        tokio::spawn(workflows::orchestrate(state.core.clone(), shutdown.clone()));
        let router = router(state.clone(), pool, &shutdown);
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| BuildError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| BuildError::Bind {
                addr: config.http_addr,
                source,
            })?
            .port();
        let metrics = match config.metrics_addr {
            None => None,
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| BuildError::Bind { addr, source })?;
                Some((l, metrics_router(state.clone())))
            }
        };
        Ok(Application {
            port,
            listener,
            router,
            metrics,
            state,
            shutdown,
        })
    }

    /// The port `/metrics` is served on when it has its own address.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancelling it stops the server gracefully (in-flight requests finish).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        if let Some((listener, router)) = self.metrics {
            let token = self.shutdown.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let token = self.shutdown.clone();
        // With the peer address, so refused credentials are counted per client.
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
    }
}

/// The routes, for embedding (e.g. `glassbox dev`) and tests.
pub fn router(state: AppState, pool: PgPool, shutdown: &CancellationToken) -> Router {
    let v1 = Router::new()
        .route("/v1/jobs", post(api::submit_job).get(api::list_jobs))
        .route("/v1/jobs/{id}", get(api::get_job))
        .route("/v1/jobs/{id}/events", get(api::job_events))
        .route("/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route("/v1/jobs/{id}/output", get(api::job_output))
        .route(
            "/v1/jobs/{id}/data",
            axum::routing::delete(api::delete_job_data),
        )
        .route("/v1/jobs/{id}/artifacts", get(api::job_artifacts))
        .route("/v1/jobs/{id}/artifacts/{*path}", get(api::job_artifact))
        .route(
            "/v1/sessions",
            post(api_sessions::open_session).get(api_sessions::list_sessions),
        )
        .route(
            "/v1/sessions/{id}",
            get(api_sessions::get_session).delete(api_sessions::close_session),
        )
        .route(
            "/v1/sessions/{id}/events",
            get(api_sessions::session_events),
        )
        .route("/v1/sessions/{id}/exec", post(api_sessions::exec))
        .route(
            "/v1/sessions/{id}/execs/{exec}/output",
            get(api_sessions::exec_output),
        )
        .route("/v1/sessions/{id}/files", get(api_sessions::list_files))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            axum::routing::put(api_sessions::write_file)
                .get(api_sessions::read_file)
                .delete(api_sessions::delete_file),
        )
        .route(
            "/v1/sessions/{id}/data",
            axum::routing::delete(api_sessions::delete_session_data),
        )
        .route(
            "/v1/sessions/{id}/egress",
            axum::routing::patch(api_sessions::set_egress),
        )
        .route("/v1/sessions/{id}/ports", post(api_sessions::expose_port))
        .route(
            "/v1/sessions/{id}/ports/{port}/",
            axum::routing::any(api_sessions::service_root),
        )
        .route(
            "/v1/sessions/{id}/ports/{port}/{*path}",
            axum::routing::any(api_sessions::service),
        )
        .route("/v1/status", get(api::status))
        .route("/v1/audit/events", get(audit::events))
        .route(
            "/v1/audit/checkpoints/latest",
            get(audit::latest_checkpoint),
        )
        .route("/v1/audit/verifier-key", get(audit::verifier_key))
        .route("/v1/audit/proofs/inclusion", get(audit::inclusion))
        .route("/v1/audit/proofs/consistency", get(audit::consistency))
        .route("/v1/audit/verify", post(audit::verify))
        .route("/v1/audit/replay/{stream}", get(audit::replay))
        .route("/v1/audit/exports", post(audit::export))
        .route("/v1/workflows", post(api_workflows::define_workflow))
        .route(
            "/v1/workflows/{name}",
            get(api_workflows::workflow_versions),
        )
        .route("/v1/workflows/{name}/runs", post(api_workflows::start_run))
        .route("/v1/workflow-runs/{id}", get(api_workflows::get_run))
        .route(
            "/v1/workflow-runs/{id}/cancel",
            post(api_workflows::cancel_run),
        )
        .route(
            "/v1/workflow-runs/{id}/steps/{step}/approve",
            post(api_workflows::approve_step),
        )
        .route(
            "/v1/workflow-runs/{id}/steps/{step}/deny",
            post(api_workflows::deny_step),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route_layer(middleware::from_fn(telemetry::record_route));
    // MCP (streamable HTTP) behind the same authentication as REST.
    let mcp = mcp::router(state.clone(), shutdown.child_token());
    let v1 = v1.merge(mcp);
    let max_body = state.config.max_body_bytes;
    let document = Arc::new(openapi::document(state.config.max_wait_secs));
    let mut routes = Router::new().merge(v1).route(
        "/openapi.json",
        get(move || {
            let d = document.clone();
            async move { axum::Json((*d).clone()) }
        }),
    );
    if state.config.metrics_addr.is_none() {
        routes = routes.route("/metrics", get(api::metrics));
    }
    let limiter = state.limiter.clone();
    let redis: glassbox_platform::health::Check = Arc::new(move || {
        let l = limiter.clone();
        Box::pin(async move { l.ping().await.map_err(|e| e.to_string()) })
    });
    routes
        .with_state(state)
        .merge(glassbox_platform::health::router_with(
            pool,
            vec![("redis", redis)],
        ))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(telemetry::request))
}

/// `/metrics` alone, for its own listener (`GLASSBOX_METRICS_ADDR`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(api::metrics))
        .with_state(state)
        .fallback(api::not_found)
}

/// The projector's position as a watch channel: updated on its NOTIFY, and
/// re-read every second as a safety net for missed notifications.
pub async fn projection_watch(pool: PgPool, shutdown: CancellationToken) -> watch::Receiver<u64> {
    let initial = glassbox_projector::position(&pool).await.unwrap_or(0);
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        let mut listener = None;
        loop {
            if listener.is_none() {
                match PgListener::connect_with(&pool).await {
                    Ok(mut l) => {
                        if l.listen(glassbox_projector::NOTIFY_CHANNEL).await.is_ok() {
                            listener = Some(l);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "projection watch: cannot listen"),
                }
            }
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l
                        .recv()
                        .await
                        .ok()
                        .and_then(|n| n.payload().parse::<u64>().ok()),
                    None => None,
                }
            };
            let got = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(Duration::from_secs(1), notified) => r,
            };
            let position = match got {
                Ok(Some(p)) => Some(p),
                _ => glassbox_projector::position(&pool).await.ok(),
            };
            if let Some(p) = position {
                tx.send_if_modified(|cur| {
                    if p > *cur {
                        *cur = p;
                        true
                    } else {
                        false
                    }
                });
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Keeps the policy bundle in the blob store by digest (see
/// [`glassbox_audit_query::policy_bundles::keep`]).
async fn keep_bundle(
    store: &EventStore,
    blobs: &BlobStore,
    bundle: &Bundle,
) -> Result<(), BuildError> {
    glassbox_audit_query::policy_bundles::keep(store, blobs, bundle)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            glassbox_audit_query::policy_bundles::BundleStoreError::Store(s) => {
                BuildError::Store(s)
            }
            glassbox_audit_query::policy_bundles::BundleStoreError::Blob(b) => BuildError::Blob(b),
            other => BuildError::Key(other.to_string()),
        })
}

/// Reads a bundle back from the blob store by digest (for re-evaluation).
pub async fn load_bundle(blobs: &BlobStore, digest: &Digest) -> Result<Bundle, ApiError> {
    glassbox_audit_query::policy_bundles::load(blobs, digest)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}
