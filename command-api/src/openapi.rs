//! The OpenAPI 3.1 document served at `/openapi.json`, generated from the
//! types the handlers parse into and reply with.
//!
//! Why generated: a hand-written document drifts from the handlers both ways
//! (schema-valid requests refused, schema-violating ones accepted). Here every
//! parameter, body and reply schema is derived with schemars (JSON Schema
//! 2020-12, which OpenAPI 3.1 uses) from the very type the handler
//! deserializes or serializes; the validation rules travel as schema
//! attributes on those types, next to the parse functions they mirror (and
//! tests hold the two together). What this module adds is only what a type
//! cannot say: the routes, which statuses each one answers, and the links
//! between operations (for clients and stateful testing).
//!
//! A few rules relate members to each other and cannot be stated in JSON
//! Schema; the server refuses them with 400 and names them in the operation
//! descriptions (`from <= to`, `position <= size`, input paths and secrets
//! named once, no path both a file and a directory). Requests that need the
//! ledger to be further along than it is (`min_position`, a tree size or
//! position beyond the head) are 409.

use crate::api::{CancelBody, GetJobParams, ListParams};
use crate::api_sessions::{
    CloseBody, EgressBody, GetSessionParams, ListFilesParams, ListSessionsParams,
};
use crate::api_workflows::AnswerBody;
use crate::audit::{
    ConsistencyParams, ExportBody, InclusionParams, ReplayParams, SearchParams, VerifyBody,
};
use crate::command::{
    ArtifactList, AuditPage, CheckpointView, ConsistencyView, FilterText, IdempotencyKey,
    InclusionView, JobEvents, JobId, JobList, JobOutput, StatusView, VerifierKeyView, VerifyView,
};
use crate::command::{RunId, WorkflowName};
use crate::command::{SessionEvents, SessionId};
use crate::core::{CancelReply, DeleteReply, Receipt};
use crate::sessions::{
    EgressChanged, ExecOutput, ExecResult, FileDeleted, FileListing, FileWritten, SessionClosed,
    SessionDataDeleted, SessionList, SessionReceipt,
};
use crate::workflows::{
    ApprovalReply, RunCancelReply, RunReceipt, RunView, WorkflowDefinedReply, WorkflowVersionsView,
};
use glassbox_domain::SessionView;
use glassbox_domain::request::{ExecRequest, SessionRequest};
use glassbox_domain::workflow::{RunRequest, WorkflowRequest};
use glassbox_domain::{JobRequest, JobView};
use glassbox_platform::problem::Problem;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

const COMPONENTS: &str = "/components/schemas";

/// One route: what it parses, what it answers.
struct Operation {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    parameters: Vec<Value>,
    body: Option<(Value, bool)>,
    raw_body: bool,
    responses: Vec<(&'static str, Value)>,
}

impl Operation {
    fn new(
        method: &'static str,
        path: &'static str,
        id: &'static str,
        summary: &'static str,
    ) -> Self {
        Operation {
            method,
            path,
            id,
            summary,
            description: None,
            parameters: Vec::new(),
            body: None,
            raw_body: false,
            responses: Vec::new(),
        }
    }

    fn describe(mut self, d: &'static str) -> Self {
        self.description = Some(d);
        self
    }

    fn param(mut self, p: Value) -> Self {
        self.parameters.push(p);
        self
    }

    fn params(mut self, ps: Vec<Value>) -> Self {
        self.parameters.extend(ps);
        self
    }

    fn json_body(mut self, schema: Value, required: bool) -> Self {
        self.body = Some((schema, required));
        self
    }

    /// A body of raw bytes (a file's content).
    fn bytes_body(mut self) -> Self {
        self.raw_body = true;
        self
    }

    fn answers(mut self, status: &'static str, response: Value) -> Self {
        self.responses.push((status, response));
        self
    }

    fn problem(self, status: &'static str, description: &'static str) -> Self {
        self.answers(status, problem(description))
    }

    fn render(self) -> Value {
        let mut responses = Map::new();
        for (status, description) in [
            ("400", "Invalid request (code `invalid_request`)"),
            ("401", "Missing or refused token (code `unauthenticated`)"),
            (
                "403",
                "Refused by policy (codes `forbidden`, `policy_denied`)",
            ),
            ("404", "No such resource for this tenant (code `not_found`)"),
            ("429", "Tenant rate limit exhausted (code `rate_limited`)"),
            (
                "503",
                "Dependency unavailable or read models behind (code `unavailable`)",
            ),
        ] {
            responses.insert(status.into(), problem(description));
        }
        for (status, r) in self.responses {
            responses.insert(status.into(), r);
        }
        let mut op = json!({
            "operationId": self.id,
            "summary": self.summary,
            "responses": responses,
        });
        if let Some(d) = self.description {
            op["description"] = d.into();
        }
        if !self.parameters.is_empty() {
            op["parameters"] = Value::Array(self.parameters);
        }
        if let Some((schema, required)) = self.body {
            op["requestBody"] = json!({
                "required": required,
                "content": {"application/json": {"schema": schema}},
            });
        }
        if self.raw_body {
            op["requestBody"] = json!({
                "required": false,
                "content": {"application/octet-stream": {
                    "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                }},
            });
        }
        op
    }
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn json_reply(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn binary_reply(description: &str, media_type: &str) -> Value {
    json!({
        "description": description,
        "content": {media_type: {"schema": {"type": "string", "contentMediaType": media_type}}}
    })
}

/// Drops `null` from a schema (a query or header parameter is absent, never null).
fn without_null(schema: Value) -> Value {
    let mut s = schema;
    if s.get("default") == Some(&Value::Null)
        && let Some(o) = s.as_object_mut()
    {
        o.remove("default");
    }
    if let Some(Value::Array(types)) = s.get("type").cloned() {
        let kept: Vec<Value> = types.into_iter().filter(|t| t != "null").collect();
        s["type"] = match kept.as_slice() {
            [one] => one.clone(),
            _ => Value::Array(kept),
        };
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = s.get(key).cloned() {
            let kept: Vec<Value> = options
                .into_iter()
                .filter(|o| o.get("type") != Some(&json!("null")))
                .collect();
            if kept.len() == 1 {
                let mut only = kept[0].clone();
                if let (Some(o), Some(d)) = (only.as_object_mut(), s.get("description")) {
                    o.entry("description").or_insert_with(|| d.clone());
                }
                return only;
            }
            s[key] = Value::Array(kept);
        }
    }
    s
}

/// The members of a query struct, as query parameters (its definition is
/// taken out of the components: a query has no body).
fn query_params<T: JsonSchema>(g: &mut SchemaGenerator) -> Vec<Value> {
    g.subschema_for::<T>();
    let name = T::schema_name();
    let def = g
        .definitions_mut()
        .remove(name.as_ref())
        .unwrap_or_default();
    let required: Vec<&str> = def["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = def["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, schema)| {
            let mut schema = without_null(schema.clone());
            let description = schema.as_object_mut().and_then(|o| o.remove("description"));
            let mut p = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": schema,
            });
            if let Some(d) = description {
                p["description"] = d;
            }
            p
        })
        .collect()
}

fn path_param<T: JsonSchema>(g: &mut SchemaGenerator, name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": g.subschema_for::<T>(),
    })
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

/// Follow-up operations on the job a submission created (`id` from
/// `pointer`, read models at least as new as `position`).
fn job_links(pointer: &str, position: Option<&str>) -> Value {
    let mut links = Map::new();
    for (name, op) in [
        ("GetJob", "getJob"),
        ("GetJobEvents", "getJobEvents"),
        ("CancelJob", "cancelJob"),
        ("GetJobOutput", "getJobOutput"),
        ("ListJobArtifacts", "listJobArtifacts"),
        ("DeleteJobData", "deleteJobData"),
    ] {
        let mut parameters = json!({"id": format!("$response.body#{pointer}")});
        if op == "getJob"
            && let Some(p) = position
        {
            parameters["min_position"] = format!("$response.body#{p}").into();
        }
        links.insert(
            name.into(),
            json!({"operationId": op, "parameters": parameters}),
        );
    }
    Value::Object(links)
}

/// Follow-up operations on the session an opening created.
fn session_links() -> Value {
    let mut links = Map::new();
    for (name, op) in [
        ("GetSession", "getSession"),
        ("GetSessionEvents", "getSessionEvents"),
        ("Exec", "execInSession"),
        ("ListSessionFiles", "listSessionFiles"),
        ("CloseSession", "closeSession"),
    ] {
        links.insert(
            name.into(),
            json!({"operationId": op, "parameters": {"id": "$response.body#/session/session_id"}}),
        );
    }
    Value::Object(links)
}

fn with_links(mut response: Value, links: Value) -> Value {
    response["links"] = links;
    response
}

/// The whole document (`max_wait` is the configured longest long-poll).
pub fn document(max_wait: u64) -> Value {
    let mut g = SchemaGenerator::new(
        SchemaSettings::draft2020_12().with(|s| s.definitions_path = COMPONENTS.into()),
    );
    let g = &mut g;
    let job_id = |g: &mut SchemaGenerator| path_param::<JobId>(g, "id", "The job's ID");

    let mut get_job_params = query_params::<GetJobParams>(g);
    for p in &mut get_job_params {
        if p["name"] == "wait" {
            p["schema"]["maximum"] = max_wait.into();
        }
    }

    let receipt = schema::<Receipt>(g);
    let operations = vec![
        Operation::new("post", "/v1/jobs", "submitJob", "Submit a job; every policy decision is recorded before anything runs")
            .describe("Refused with 400 besides what the schema states: an input path or a secret named twice, or a path that is both a file and a directory of another.")
            .param(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Retries with the same key and body answer the first submission",
                "schema": g.subschema_for::<IdempotencyKey>(),
            }))
            .json_body(schema::<JobRequest>(g), true)
            .answers("201", with_links(json_reply("Accepted", receipt.clone()), job_links("/job_id", Some("/position"))))
            .answers("200", with_links(json_reply("Accepted (idempotent replay)", receipt), job_links("/job_id", Some("/position"))))
            .problem("409", "Idempotency-Key reused with a different body (code `idempotency_key_reused`)")
            .problem("413", "Body too large (code `payload_too_large`)")
            .problem("415", "Not JSON (code `unsupported_media_type`)"),
        Operation::new("get", "/v1/jobs", "listJobs", "The caller's tenant's jobs, newest first")
            .params(query_params::<ListParams>(g))
            .answers("200", json_reply("A page of jobs", schema::<JobList>(g)))
            .problem("409", "min_position is beyond the ledger head (code `conflict`)"),
        Operation::new("get", "/v1/jobs/{id}", "getJob", "A job from the read models; wait long-polls until it is terminal")
            .param(job_id(g))
            .params(get_job_params)
            .answers("200", json_reply("The job", schema::<JobView>(g)))
            .problem("409", "min_position is beyond the ledger head (code `conflict`)"),
        Operation::new("get", "/v1/jobs/{id}/events", "getJobEvents", "The job's ledger records (canonical JSON with positions and entry hashes)")
            .param(job_id(g))
            .answers("200", json_reply("The records", schema::<JobEvents>(g))),
        Operation::new("post", "/v1/jobs/{id}/cancel", "cancelJob", "Cancel a job (at once if unclaimed, else its runner stops it)")
            .param(job_id(g))
            .json_body(schema::<CancelBody>(g), false)
            .answers("202", json_reply("Cancellation recorded", schema::<CancelReply>(g)))
            .problem("409", "The job already finished (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)"),
        Operation::new("get", "/v1/jobs/{id}/output", "getJobOutput", "stdout and stderr of the job's result (decrypted), with its exit status")
            .param(job_id(g))
            .answers("200", json_reply("The output", schema::<JobOutput>(g)))
            .problem("409", "The job has not finished (code `conflict`)")
            .problem("410", "The job's data was destroyed (code `gone`)"),
        Operation::new("delete", "/v1/jobs/{id}/data", "deleteJobData", "Crypto-shred a finished job's data (key.destroyed); afterwards its code, output and artifacts answer 410")
            .param(job_id(g))
            .answers("200", json_reply("Destroyed (or already destroyed)", schema::<DeleteReply>(g)))
            .problem("409", "The job has not finished (code `conflict`)"),
        Operation::new("get", "/v1/jobs/{id}/artifacts", "listJobArtifacts", "Files the job left in /workspace/out")
            .param(job_id(g))
            .answers("200", json_reply("The artifacts", schema::<ArtifactList>(g)))
            .problem("409", "The job has not finished (code `conflict`)")
            .problem("410", "The job's data was destroyed (code `gone`)"),
        Operation::new("get", "/v1/jobs/{id}/artifacts/{path}", "getJobArtifact", "One artifact's bytes (decrypted)")
            .param(job_id(g))
            .param(json!({"name": "path", "in": "path", "required": true, "description": "The artifact's path under out/", "schema": {"type": "string"}}))
            .answers("200", binary_reply("The bytes", "application/octet-stream"))
            .problem("409", "The job has not finished (code `conflict`)")
            .problem("410", "The job's data was destroyed (code `gone`)"),
        Operation::new("get", "/v1/audit/events", "searchAudit", "Ledger records matching filters (own tenant; tenant=<other> or * needs a cross-tenant audit role, and is itself recorded)")
            .params(query_params::<SearchParams>(g))
            .answers("200", json_reply("A page of records", schema::<AuditPage>(g))),
        Operation::new("get", "/v1/audit/checkpoints/latest", "latestCheckpoint", "The latest signed checkpoint (C2SP signed note)")
            .answers("200", json_reply("The checkpoint", schema::<CheckpointView>(g))),
        Operation::new("get", "/v1/audit/verifier-key", "verifierKey", "The ledger's checkpoint verifier key")
            .answers("200", json_reply("The key", schema::<VerifierKeyView>(g))),
        Operation::new("get", "/v1/audit/proofs/inclusion", "inclusionProof", "RFC 9162 inclusion proof of a record (default size: the latest signed checkpoint)")
            .describe("400 when position exceeds an explicit size; 409 when the size is beyond the ledger, or the record is newer than the latest signed checkpoint.")
            .params(query_params::<InclusionParams>(g))
            .answers("200", json_reply("The proof", schema::<InclusionView>(g)))
            .problem("409", "The ledger or its latest checkpoint has not reached that size (code `conflict`)"),
        Operation::new("get", "/v1/audit/proofs/consistency", "consistencyProof", "RFC 9162 consistency proof between two tree sizes")
            .describe("400 unless from <= to; 409 when to is beyond the ledger.")
            .params(query_params::<ConsistencyParams>(g))
            .answers("200", json_reply("The proof", schema::<ConsistencyView>(g)))
            .problem("409", "The ledger has not reached that size (code `conflict`)"),
        Operation::new("get", "/v1/audit/replay/{stream}", "replayStream", "A stream's state and timeline at a position or time; reevaluate=true re-runs each recorded decision against its bundle")
            .param(path_param::<FilterText>(g, "stream", "The stream's name"))
            .params(query_params::<ReplayParams>(g))
            .answers("200", json_reply("The replay", json!({"type": "object"}))),
        Operation::new("post", "/v1/audit/exports", "exportEvidence", "An evidence bundle (tar) for the filters, proving each record against the latest signed checkpoint; recorded as audit.exported")
            .json_body(schema::<ExportBody>(g), true)
            .answers("200", binary_reply("The bundle (docs/evidence-bundle.md)", "application/x-tar"))
            .problem("413", "Body too large (code `payload_too_large`)")
            .problem("415", "Not JSON (code `unsupported_media_type`)"),
        Operation::new("post", "/v1/audit/verify", "verifyLedger", "Verify the ledger (or a range) against its signed checkpoints; the first failure if any")
            .describe("400 unless from <= to; 409 when either is beyond the ledger head.")
            .json_body(schema::<VerifyBody>(g), false)
            .answers("200", json_reply("The verdict", schema::<VerifyView>(g)))
            .problem("409", "A position beyond the ledger head (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)"),
        Operation::new("get", "/v1/status", "status", "Ledger head, latest signed checkpoint and projection lag")
            .answers("200", json_reply("Status", schema::<StatusView>(g))),
        Operation::new("post", "/v1/sessions", "openSession", "Open a session: a sandbox that keeps its state between calls; every policy decision is recorded first")
            .describe("Refused with 400 besides what the schema states: a secret named twice. Refused with 403 (code `policy_denied`) when a policy denies it or the tenant has its maximum of open sessions; the refusal is recorded. 503 (code `unavailable`) when no runner has room: nothing is recorded, try again.")
            .param(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Retries with the same key and body answer the first opening",
                "schema": g.subschema_for::<IdempotencyKey>(),
            }))
            .json_body(schema::<SessionRequest>(g), true)
            .answers("201", with_links(json_reply("Opened (its sandbox is up)", schema::<SessionReceipt>(g)), session_links()))
            .problem("409", "Idempotency-Key reused with a different body (code `idempotency_key_reused`)")
            .problem("413", "Body too large (code `payload_too_large`)")
            .problem("415", "Not JSON (code `unsupported_media_type`)"),
        Operation::new("get", "/v1/sessions", "listSessions", "The caller's tenant's sessions, newest first")
            .params(query_params::<ListSessionsParams>(g))
            .answers("200", json_reply("A page of sessions", schema::<SessionList>(g)))
            .problem("409", "min_position is beyond the ledger head (code `conflict`)"),
        Operation::new("get", "/v1/sessions/{id}", "getSession", "A session from the read models")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .params(query_params::<GetSessionParams>(g))
            .answers("200", json_reply("The session", schema::<SessionView>(g)))
            .problem("409", "min_position is beyond the ledger head (code `conflict`)"),
        Operation::new("delete", "/v1/sessions/{id}", "closeSession", "Close a session: recorded, then its sandbox and workspace are destroyed")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .json_body(schema::<CloseBody>(g), false)
            .answers("200", json_reply("Closed", schema::<SessionClosed>(g)))
            .problem("409", "The session has already ended (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)"),
        Operation::new("patch", "/v1/sessions/{id}/egress", "setSessionEgress", "Replace an active session's egress allowlist (from its next connection on)")
            .describe("Each destination is decided by `glassbox.egress` against the tenant's allowlist and the decisions are recorded with the change (`session.egress_changed`); one refusal refuses the whole change (403, the decisions recorded). The session's proxy uses the new list from the next connection on.")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .json_body(schema::<EgressBody>(g), true)
            .answers("200", json_reply("Changed", schema::<EgressChanged>(g)))
            .problem("409", "The session is not active (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)")
            .problem("415", "Not JSON (code `unsupported_media_type`)"),
        Operation::new("post", "/v1/sessions/{id}/ports", "exposeSessionPort", "Expose a port of an active session (service mode)")
            .describe("Recorded as `service.exposed`. Callers then reach what the session's program serves on its own 127.0.0.1:PORT at `/v1/sessions/{id}/ports/{port}/…` with their own token: `glassbox.services` decides each request (the session's tenant only; the roles, subjects or apps named, or any caller of the tenant when none are), the tenant's service rate applies (429), and every request is recorded (`service.request`).")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .json_body(schema::<glassbox_domain::request::ExposeRequest>(g), true)
            .answers("201", json_reply("Exposed", schema::<crate::sessions::Exposed>(g)))
            .problem("409", "The session is not active (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)")
            .problem("415", "Not JSON (code `unsupported_media_type`)"),
        Operation::new("get", "/v1/sessions/{id}/ports/{port}/{path}", "getFromSessionPort", "A GET to an exposed port of a session (any method is carried the same way)")
            .describe("The answer is the session's service's own (status, headers, body of at most 1 MiB). 403 when `glassbox.services` refuses, 404 when the port is not exposed, 429 over the tenant's service rate, 503 when nothing answers; each recorded as `service.request`.")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .param(json!({"name": "port", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1, "maximum": 65535}}))
            .param(json!({"name": "path", "in": "path", "required": true, "schema": {"type": "string"}}))
            .answers("200", json!({"description": "The service's answer (any status and content type)", "content": {"*/*": {"schema": {}}}}))
            .problem("409", "The session is not active (code `conflict`)")
            .problem("429", "Over the tenant's service rate (code `rate_limited`)")
            .problem("503", "The session's service does not answer (code `unavailable`)"),
        Operation::new("get", "/v1/sessions/{id}/events", "getSessionEvents", "The session's ledger records")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .answers("200", json_reply("The records", schema::<SessionEvents>(g))),
        Operation::new("post", "/v1/sessions/{id}/exec", "execInSession", "Run code (the interpreter keeps its state) or a shell command in an active session")
            .describe("Exactly one of code and command (400 otherwise). With `Accept: text/event-stream` the reply is server-sent events (`started`, `stdout`, `stderr`, then `finished` with the result, or `error`); otherwise the result as JSON when the exec ends.")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .json_body(schema::<ExecRequest>(g), true)
            .answers("200", json_reply("The exec's result", schema::<ExecResult>(g)))
            .problem("409", "The session is not active, or another exec is running (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)")
            .problem("415", "Not JSON (code `unsupported_media_type`)"),
        Operation::new("get", "/v1/sessions/{id}/execs/{exec}/output", "getExecOutput", "The stored output of one exec (decrypted)")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .param(json!({"name": "exec", "in": "path", "required": true, "description": "The exec's number (1, 2, …)", "schema": {"type": "integer", "minimum": 1, "maximum": glassbox_domain::request::MAX_INTEGER}}))
            .answers("200", json_reply("The output", schema::<ExecOutput>(g)))
            .problem("410", "The session's data was destroyed (code `gone`)"),
        Operation::new("get", "/v1/sessions/{id}/files", "listSessionFiles", "A directory of an active session's workspace")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .params(query_params::<ListFilesParams>(g))
            .answers("200", json_reply("The entries", schema::<FileListing>(g)))
            .problem("409", "The session is not active (code `conflict`)"),
        Operation::new("put", "/v1/sessions/{id}/files/{path}", "writeSessionFile", "Write a file into an active session's workspace (parents are created)")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .param(json!({"name": "path", "in": "path", "required": true, "description": "Relative to /workspace", "schema": {"type": "string", "minLength": 1}}))
            .bytes_body()
            .answers("201", json_reply("Written", schema::<FileWritten>(g)))
            .problem("409", "The session is not active (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)"),
        Operation::new("get", "/v1/sessions/{id}/files/{path}", "readSessionFile", "A file of an active session's workspace (secret values redacted)")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .param(json!({"name": "path", "in": "path", "required": true, "description": "Relative to /workspace", "schema": {"type": "string", "minLength": 1}}))
            .answers("200", binary_reply("The bytes", "application/octet-stream"))
            .problem("409", "The session is not active (code `conflict`)"),
        Operation::new("delete", "/v1/sessions/{id}/files/{path}", "deleteSessionFile", "Delete a file (or an empty directory) of an active session's workspace")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .param(json!({"name": "path", "in": "path", "required": true, "description": "Relative to /workspace", "schema": {"type": "string", "minLength": 1}}))
            .answers("200", json_reply("Deleted", schema::<FileDeleted>(g)))
            .problem("409", "The session is not active (code `conflict`)"),
        Operation::new("delete", "/v1/sessions/{id}/data", "deleteSessionData", "Crypto-shred an ended session's data (key.destroyed)")
            .param(path_param::<SessionId>(g, "id", "The session's ID"))
            .answers("200", json_reply("Destroyed", schema::<SessionDataDeleted>(g)))
            .problem("409", "The session has not ended (code `conflict`)"),
        Operation::new("post", "/v1/workflows", "defineWorkflow", "Define a workflow (a new version unless the latest is this very document), stored by content digest")
            .describe("Refused with 400 besides what the schema states: a step named twice, an unknown or cyclic `needs`, an input from a step that does not run before (it must be in the step's needs, directly or not), a path used twice, a job that is not valid as for POST /v1/jobs. 201 for a new version, 200 when the latest version already is this document.")
            .json_body(schema::<WorkflowRequest>(g), true)
            .answers("201", json_reply("Stored as a new version", schema::<WorkflowDefinedReply>(g)))
            .answers("200", json_reply("The latest version already is this document", schema::<WorkflowDefinedReply>(g)))
            .problem("413", "Body too large (code `payload_too_large`)")
            .problem("415", "Not JSON (code `unsupported_media_type`)"),
        Operation::new("get", "/v1/workflows/{name}", "getWorkflowVersions", "A workflow's versions, oldest first")
            .param(path_param::<WorkflowName>(g, "name", "The workflow's name"))
            .answers("200", json_reply("The versions", schema::<WorkflowVersionsView>(g))),
        Operation::new("post", "/v1/workflows/{name}/runs", "startWorkflowRun", "Start a run: one append holds the authorization, each step's approval-gate decision and workflow.run_started; steps then run as jobs when what they need has succeeded")
            .describe("400 besides what the schema states: an input path named twice, or both a file and a directory. 409 when valid inputs clash with this definition: a path a step already uses, or more files for a step than a job may have.")
            .param(path_param::<WorkflowName>(g, "name", "The workflow's name"))
            .param(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Retries with the same key and body answer the first start",
                "schema": g.subschema_for::<IdempotencyKey>(),
            }))
            .json_body(schema::<RunRequest>(g), false)
            .answers("201", json_reply("Started", schema::<RunReceipt>(g)))
            .problem("409", "Inputs that clash with the definition's steps (code `conflict`), or Idempotency-Key reused with a different body (code `idempotency_key_reused`)")
            .problem("413", "Body too large (code `payload_too_large`)")
            .problem("415", "Not JSON (code `unsupported_media_type`)"),
        Operation::new("get", "/v1/workflow-runs/{id}", "getWorkflowRun", "A run with its step graph and each step's state, folded from the run's ledger stream")
            .param(path_param::<RunId>(g, "id", "The run's ID"))
            .answers("200", json_reply("The run", schema::<RunView>(g))),
        Operation::new("post", "/v1/workflow-runs/{id}/cancel", "cancelWorkflowRun", "Cancel a run: running steps' jobs are cancelled, steps not started are skipped")
            .param(path_param::<RunId>(g, "id", "The run's ID"))
            .answers("202", json_reply("Cancellation recorded", schema::<RunCancelReply>(g)))
            .problem("409", "The run has finished (code `conflict`)"),
        Operation::new("post", "/v1/workflow-runs/{id}/steps/{step}/approve", "approveWorkflowStep", "Grant a step that waits for approval")
            .describe("Who may answer is decided by `glassbox.workflows` (the tenant's approver role) and is never the run's submitter; a refused answer is recorded (`workflow.approval_refused`) and answered 403.")
            .param(path_param::<RunId>(g, "id", "The run's ID"))
            .param(json!({"name": "step", "in": "path", "required": true, "description": "The step's name", "schema": {"type": "string", "minLength": 1}}))
            .json_body(schema::<AnswerBody>(g), false)
            .answers("200", json_reply("Granted", schema::<ApprovalReply>(g)))
            .problem("409", "The step is not waiting for approval, or the run has finished (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)"),
        Operation::new("post", "/v1/workflow-runs/{id}/steps/{step}/deny", "denyWorkflowStep", "Deny a step that waits for approval (it and what needs it do not run; the run fails)")
            .describe("Who may answer is decided as for approve; a refused answer is recorded and answered 403.")
            .param(path_param::<RunId>(g, "id", "The run's ID"))
            .param(json!({"name": "step", "in": "path", "required": true, "description": "The step's name", "schema": {"type": "string", "minLength": 1}}))
            .json_body(schema::<AnswerBody>(g), false)
            .answers("200", json_reply("Denied", schema::<ApprovalReply>(g)))
            .problem("409", "The step is not waiting for approval, or the run has finished (code `conflict`)")
            .problem("413", "Body too large (code `payload_too_large`)"),
    ];
    g.subschema_for::<Problem>();

    let mut paths = Map::new();
    for op in operations {
        let (method, path) = (op.method, op.path);
        let entry = paths
            .entry(path)
            .or_insert_with(|| Value::Object(Map::new()));
        entry[method] = op.render();
    }
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Glassbox command API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Submit untrusted code to run in gVisor sandboxes; every decision is recorded in the Glassbox ledger. Errors are RFC 9457 problem+json with a stable `code`."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": g.take_definitions(true),
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_every_route_is_documented() {
        let doc = document(30);
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r} points outside the components"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
        let paths = doc["paths"].as_object().expect("paths");
        assert_eq!(
            paths
                .values()
                .map(|p| p.as_object().map_or(0, Map::len))
                .sum::<usize>(),
            40
        );
    }

    #[test]
    fn the_document_carries_the_rules_of_the_types() {
        let doc = document(7);
        let s = &doc["components"]["schemas"];
        // The request's rules come from the domain's types and patterns.
        assert_eq!(
            s["JobRequest"]["properties"]["language"]["pattern"],
            glassbox_domain::request::pattern::NAME
        );
        assert_eq!(
            s["JobRequest"]["properties"]["env"]["propertyNames"]["pattern"],
            glassbox_domain::request::pattern::ENV_NAME
        );
        assert_eq!(s["Limits"]["properties"]["cpu_millicores"]["minimum"], 10);
        assert_eq!(
            s["FileInput"]["properties"]["path"]["pattern"],
            glassbox_domain::request::pattern::INPUT_PATH
        );
        // Parameters from the query types, the configured wait in its bound.
        let get = &doc["paths"]["/v1/jobs/{id}"]["get"]["parameters"];
        let wait = get
            .as_array()
            .expect("params")
            .iter()
            .find(|p| p["name"] == "wait")
            .expect("wait");
        assert_eq!(wait["schema"]["maximum"], 7);
        assert_eq!(wait["in"], "query");
        // Statuses are the domain's enum.
        let statuses: Vec<&Value> = s["JobStatus"]["oneOf"]
            .as_array()
            .expect("one of the statuses")
            .iter()
            .map(|v| &v["const"])
            .collect();
        assert_eq!(statuses.len(), glassbox_domain::JobStatus::ALL.len());
        for st in glassbox_domain::JobStatus::ALL {
            assert!(statuses.contains(&&json!(st.as_str())), "{st}");
        }
        // Query structs are expanded, not left as schemas.
        assert!(s.get("ListParams").is_none());
    }
}
