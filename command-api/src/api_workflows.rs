//! HTTP handlers of workflows: parse into a [`Command`], dispatch, render.
//!
//! `POST /v1/workflows` (define), `GET /v1/workflows/{name}` (its versions),
//! `POST /v1/workflows/{name}/runs` (start a run), `GET /v1/workflow-runs/{id}`
//! (the run with its step graph), `POST /v1/workflow-runs/{id}/steps/{step}/
//! approve` and `…/deny`, `POST /v1/workflow-runs/{id}/cancel`.

use crate::AppState;
use crate::api::{ApiJson, OptionalJson, check_reason, idempotency_key, run};
use crate::command::{Command, RunId, WorkflowName};
use crate::core::Caller;
use crate::error::ApiError;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use glassbox_domain::request::pattern;
use glassbox_domain::workflow::{RunRequest, WorkflowRequest};
use schemars::JsonSchema;
use serde::Deserialize;

pub async fn define_workflow(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<WorkflowRequest>,
) -> Result<Response, ApiError> {
    run(&state, &caller, Command::DefineWorkflow { request }).await
}

pub async fn workflow_versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = WorkflowName::parse(&name)?;
    run(&state, &caller, Command::WorkflowVersions { name }).await
}

pub async fn start_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OptionalJson(request): OptionalJson<RunRequest>,
) -> Result<Response, ApiError> {
    let name = WorkflowName::parse(&name)?;
    let idempotency_key = idempotency_key(&headers)?;
    run(
        &state,
        &caller,
        Command::StartRun {
            name,
            request,
            idempotency_key,
        },
    )
    .await
}

pub async fn get_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run_id = RunId::parse(&id)?;
    run(&state, &caller, Command::GetRun { run: run_id }).await
}

/// The body of an approval's answer.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    /// Why (recorded with the answer).
    #[serde(default)]
    #[schemars(length(max = 1024), regex(pattern = pattern::NO_NUL))]
    pub reason: Option<String>,
}

async fn answer(
    state: AppState,
    caller: Caller,
    id: String,
    step: String,
    grant: bool,
    body: AnswerBody,
) -> Result<Response, ApiError> {
    let run_id = RunId::parse(&id)?;
    check_reason(body.reason.as_deref())?;
    run(
        &state,
        &caller,
        Command::AnswerApproval {
            run: run_id,
            step,
            grant,
            reason: body.reason,
        },
    )
    .await
}

pub async fn approve_step(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, step)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<AnswerBody>,
) -> Result<Response, ApiError> {
    answer(state, caller, id, step, true, body).await
}

pub async fn deny_step(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, step)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<AnswerBody>,
) -> Result<Response, ApiError> {
    answer(state, caller, id, step, false, body).await
}

pub async fn cancel_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run_id = RunId::parse(&id)?;
    run(&state, &caller, Command::CancelRun { run: run_id }).await
}
