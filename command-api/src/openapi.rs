//! The OpenAPI document served at `/openapi.json`.
//!
//! Written by hand next to the handlers (rather than derived) so the document
//! states the contract clients rely on — including every problem response — and
//! a schemathesis run in the test suite checks the server against it.

use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn common_errors() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(
        "400".into(),
        problem("Invalid request (code `invalid_request`)"),
    );
    m.insert(
        "401".into(),
        problem("Missing or refused token (code `unauthenticated`)"),
    );
    m.insert(
        "403".into(),
        problem("Refused by policy (codes `forbidden`, `policy_denied`)"),
    );
    m.insert(
        "404".into(),
        problem("No such resource for this tenant (code `not_found`)"),
    );
    m.insert(
        "429".into(),
        problem("Tenant rate limit exhausted (code `rate_limited`)"),
    );
    m.insert(
        "503".into(),
        problem("Dependency unavailable or read models behind (code `unavailable`)"),
    );
    m
}

fn responses(ok: &[(&str, Value)], extra: &[(&str, &str)]) -> Value {
    let mut m = common_errors();
    for (code, v) in ok {
        m.insert((*code).into(), v.clone());
    }
    for (code, d) in extra {
        m.insert((*code).into(), problem(d));
    }
    Value::Object(m)
}

fn ok_json(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn job_id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}})
}

fn limits_schema() -> Value {
    let mut props = serde_json::Map::new();
    for k in [
        "wall_time_ms",
        "cpu_millicores",
        "memory_bytes",
        "processes",
        "workspace_bytes",
        "tmp_bytes",
        "stdout_bytes",
        "stderr_bytes",
        "output_bytes",
        "output_files",
    ] {
        props.insert(
            k.into(),
            json!({"type": "integer", "minimum": 1, "maximum": 9_007_199_254_740_991_u64, "nullable": true}),
        );
    }
    json!({"type": "object", "additionalProperties": false, "properties": props})
}

/// Letters, digits and `_`, not starting with a digit (environment and secret names).
const ENV_NAME: &str = "^[A-Za-z_][A-Za-z0-9_]{0,127}$";
/// Languages, package names and ecosystems.
const NAME: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]*$";
/// Strings that may hold anything but NUL.
const NO_NUL: &str = "^[^\\u0000]*$";

/// The whole document (`max_wait` is the configured longest long-poll).
pub fn document(max_wait: u64) -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Glassbox command API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Submit untrusted code to run in gVisor sandboxes; every decision is recorded in the Glassbox ledger. Errors are RFC 9457 problem+json with a stable `code`."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "code"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "code": {"type": "string"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"}
                    }
                },
                "Limits": limits_schema(),
                "JobRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["language", "code"],
                    "properties": {
                        "language": {"type": "string", "enum": ["python", "node", "bash"], "description": "the runtimes this build has; each tenant's policy may allow fewer"},
                        "code": {"type": "string", "minLength": 1},
                        "stdin": {"type": "string", "nullable": true},
                        "args": {"type": "array", "items": {"type": "string", "pattern": NO_NUL}, "maxItems": 256},
                        "env": {"type": "object", "maxProperties": 128, "additionalProperties": {"type": "string", "pattern": NO_NUL},
                                "description": "names: letters, digits and '_', not starting with a digit or GLASSBOX_"},
                        "files": {"type": "array", "maxItems": 64, "items": {
                            "type": "object", "additionalProperties": false, "required": ["path", "content"],
                            "properties": {
                                "path": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$", "description": "relative to /workspace; no '..', not out/ or main"},
                                "content": {"type": "string"},
                                "encoding": {"type": "string", "enum": ["utf8", "base64"]}
                            }
                        }},
                        "dependencies": {"type": "array", "maxItems": 64, "items": {
                            "type": "object", "additionalProperties": false, "required": ["name"],
                            "properties": {
                                "ecosystem": {"type": "string", "minLength": 1, "maxLength": 32, "pattern": NAME},
                                "name": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NAME},
                                "version": {"type": "string", "nullable": true, "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9.+!_-]+$"}
                            }
                        }},
                        "secrets": {"type": "array", "maxItems": 32, "uniqueItems": true, "items": {"oneOf": [
                            {"type": "string", "pattern": ENV_NAME},
                            {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
                                "name": {"type": "string", "pattern": ENV_NAME},
                                "mode": {"type": "string", "enum": ["env", "file"]}
                            }}
                        ]}},
                        "limits": {"$ref": "#/components/schemas/Limits"}
                    }
                },
                "Decision": {
                    "type": "object",
                    "required": ["policy", "decision", "reasons"],
                    "properties": {
                        "policy": {"type": "string"},
                        "decision": {"type": "string", "enum": ["allow", "deny"]},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                        "error": {"type": "string"}
                    }
                },
                "Receipt": {
                    "type": "object",
                    "required": ["job_id", "status", "stream", "submitted_position", "position", "decisions", "reasons"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "status": {"type": "string", "enum": ["accepted", "rejected"]},
                        "stream": {"type": "string"},
                        "submitted_position": {"type": "integer"},
                        "position": {"type": "integer", "description": "pass as min_position to read this job"},
                        "decisions": {"type": "array", "items": {"$ref": "#/components/schemas/Decision"}},
                        "effective_limits": {"nullable": true, "allOf": [{"$ref": "#/components/schemas/Limits"}]},
                        "reasons": {"type": "array", "items": {"type": "string"}}
                    }
                },
                "Job": {
                    "type": "object",
                    "required": ["job_id", "tenant", "status", "language", "submitted_position", "last_position"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "tenant": {"type": "string"},
                        "status": {"type": "string", "enum": ["submitted", "accepted", "rejected", "claimed", "running", "completed", "failed", "cancelled"]},
                        "language": {"type": "string"},
                        "submitted_by": {"type": "string"},
                        "app": {"type": "string", "nullable": true},
                        "agent": {"type": "string", "nullable": true},
                        "idempotency_key": {"type": "string", "nullable": true},
                        "submitted_position": {"type": "integer"},
                        "submitted_at": {"type": "string"},
                        "last_position": {"type": "integer"},
                        "updated_at": {"type": "string"},
                        "requested_limits": {"type": "object"},
                        "effective_limits": {"type": "object", "nullable": true},
                        "secrets": {"type": "array", "items": {"type": "string"}},
                        "dependencies": {"type": "array", "items": {"type": "object"}},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                        "cancel_requested": {"type": "boolean"},
                        "attempt": {"type": "integer"},
                        "runner": {"type": "string", "nullable": true},
                        "outcome": {"type": "string", "nullable": true},
                        "exit_code": {"type": "integer", "nullable": true},
                        "signal": {"type": "integer", "nullable": true},
                        "wall_ms": {"type": "integer", "nullable": true},
                        "artifacts": {"type": "array", "items": {"type": "object"}},
                        "data_destroyed": {"type": "boolean"}
                    }
                },
                "JobList": {
                    "type": "object",
                    "required": ["jobs", "next_cursor"],
                    "properties": {
                        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                        "next_cursor": {"type": "string", "nullable": true}
                    }
                },
                "JobEvents": {
                    "type": "object",
                    "required": ["job_id", "events"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "events": {"type": "array", "items": {
                            "type": "object",
                            "required": ["position", "entry_hash", "record"],
                            "properties": {
                                "position": {"type": "integer"},
                                "entry_hash": {"type": "string"},
                                "record": {"type": "object"}
                            }
                        }}
                    }
                },
                "CancelReply": {
                    "type": "object",
                    "required": ["job_id", "status", "position"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "status": {"type": "string", "enum": ["cancelled", "cancel_requested"]},
                        "position": {"type": "integer"}
                    }
                },
                "Stream": {
                    "type": "object",
                    "required": ["encoding", "content", "size_bytes", "truncated"],
                    "properties": {
                        "encoding": {"type": "string", "enum": ["utf8", "base64"]},
                        "content": {"type": "string"},
                        "size_bytes": {"type": "integer"},
                        "truncated": {"type": "boolean"}
                    }
                },
                "Output": {
                    "type": "object",
                    "required": ["job_id", "attempt", "outcome", "stdout", "stderr"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "attempt": {"type": "integer"},
                        "outcome": {"type": "string", "enum": ["succeeded", "failed", "timed_out", "oom_killed", "crashed", "cancelled"]},
                        "exit_code": {"type": "integer", "nullable": true},
                        "signal": {"type": "integer", "nullable": true},
                        "wall_ms": {"type": "integer"},
                        "stdout": {"$ref": "#/components/schemas/Stream"},
                        "stderr": {"$ref": "#/components/schemas/Stream"}
                    }
                },
                "Artifacts": {
                    "type": "object",
                    "required": ["job_id", "artifacts"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "artifacts": {"type": "array", "items": {"type": "object",
                            "required": ["path", "size_bytes", "truncated"],
                            "properties": {"path": {"type": "string"}, "size_bytes": {"type": "integer"}, "truncated": {"type": "boolean"}}}}
                    }
                },
                "DeleteReply": {
                    "type": "object",
                    "required": ["job_id", "position"],
                    "properties": {"job_id": {"type": "string"}, "position": {"type": "integer"}}
                },
                "AuditPage": {
                    "type": "object",
                    "required": ["events", "next_cursor"],
                    "properties": {
                        "events": {"type": "array", "items": {"type": "object",
                            "required": ["position", "entry_hash", "record"],
                            "properties": {"position": {"type": "integer"}, "entry_hash": {"type": "string"}, "record": {"type": "object"}}}},
                        "next_cursor": {"type": "string", "nullable": true}
                    }
                },
                "Checkpoint": {
                    "type": "object",
                    "required": ["origin", "tree_size", "root", "key_name", "note"],
                    "properties": {"origin": {"type": "string"}, "tree_size": {"type": "integer"}, "root": {"type": "string"},
                                   "key_name": {"type": "string"}, "note": {"type": "string"}}
                },
                "Status": {"type": "object"}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Submit a job; every policy decision is recorded before anything runs",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}}},
                    "responses": responses(
                        &[("201", ok_json("Accepted", "Receipt")),
                          ("200", ok_json("Accepted (idempotent replay)", "Receipt"))],
                        &[("409", "Idempotency-Key reused with a different body (code `idempotency_key_reused`)"),
                          ("413", "Body too large (code `payload_too_large`)"),
                          ("415", "Not JSON (code `unsupported_media_type`)")])
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "The caller's tenant's jobs, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["submitted", "accepted", "rejected", "claimed", "running", "completed", "failed", "cancelled"]}},
                        {"name": "language", "in": "query", "schema": {"type": "string", "minLength": 1, "maxLength": 32, "pattern": NAME}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "min_position", "in": "query", "schema": {"type": "integer", "minimum": 0}}
                    ],
                    "responses": responses(&[("200", ok_json("A page of jobs", "JobList"))], &[])
                }
            },
            "/v1/jobs/{id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job from the read models; wait long-polls until it is terminal",
                    "parameters": [
                        job_id_param(),
                        {"name": "wait", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": max_wait}},
                        {"name": "min_position", "in": "query", "schema": {"type": "integer", "minimum": 0}}
                    ],
                    "responses": responses(&[("200", ok_json("The job", "Job"))], &[])
                }
            },
            "/v1/jobs/{id}/events": {
                "get": {
                    "operationId": "getJobEvents",
                    "summary": "The job's ledger records (canonical JSON with positions and entry hashes)",
                    "parameters": [job_id_param()],
                    "responses": responses(&[("200", ok_json("The records", "JobEvents"))], &[])
                }
            },
            "/v1/jobs/{id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job (at once if unclaimed, else its runner stops it)",
                    "parameters": [job_id_param()],
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false,
                        "properties": {"reason": {"type": "string", "maxLength": 1024}}
                    }}}},
                    "responses": responses(&[("202", ok_json("Cancellation recorded", "CancelReply"))],
                        &[("409", "The job already finished (code `conflict`)")])
                }
            },
            "/v1/jobs/{id}/output": {
                "get": {
                    "operationId": "getJobOutput",
                    "summary": "stdout and stderr of the job's result (decrypted), with its exit status",
                    "parameters": [job_id_param()],
                    "responses": responses(&[("200", ok_json("The output", "Output"))],
                        &[("409", "The job has not finished (code `conflict`)"),
                          ("410", "The job's data was destroyed (code `gone`)")])
                }
            },
            "/v1/jobs/{id}/data": {
                "delete": {
                    "operationId": "deleteJobData",
                    "summary": "Crypto-shred a finished job's data (key.destroyed); afterwards its code, output and artifacts answer 410",
                    "parameters": [job_id_param()],
                    "responses": responses(&[("200", ok_json("Destroyed (or already destroyed)", "DeleteReply"))],
                        &[("409", "The job has not finished (code `conflict`)")])
                }
            },
            "/v1/jobs/{id}/artifacts": {
                "get": {
                    "operationId": "listJobArtifacts",
                    "summary": "Files the job left in /workspace/out",
                    "parameters": [job_id_param()],
                    "responses": responses(&[("200", ok_json("The artifacts", "Artifacts"))],
                        &[("409", "The job has not finished (code `conflict`)"),
                          ("410", "The job's data was destroyed (code `gone`)")])
                }
            },
            "/v1/jobs/{id}/artifacts/{path}": {
                "get": {
                    "operationId": "getJobArtifact",
                    "summary": "One artifact's bytes (decrypted)",
                    "parameters": [job_id_param(), {"name": "path", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": responses(&[("200", json!({"description": "The bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}))],
                        &[("409", "The job has not finished (code `conflict`)"),
                          ("410", "The job's data was destroyed (code `gone`)")])
                }
            },
            "/v1/audit/events": {
                "get": {
                    "operationId": "searchAudit",
                    "summary": "Ledger records matching filters (own tenant; tenant=<other> or * needs a cross-tenant audit role, and is itself recorded)",
                    "parameters": [
                        {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                        {"name": "stream", "in": "query", "schema": {"type": "string"}},
                        {"name": "event_type", "in": "query", "schema": {"type": "string"}},
                        {"name": "actor", "in": "query", "schema": {"type": "string"}},
                        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "from_position", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "to_position", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": responses(&[("200", ok_json("A page of records", "AuditPage"))], &[])
                }
            },
            "/v1/audit/checkpoints/latest": {
                "get": {
                    "operationId": "latestCheckpoint",
                    "summary": "The latest signed checkpoint (C2SP signed note)",
                    "responses": responses(&[("200", ok_json("The checkpoint", "Checkpoint"))], &[])
                }
            },
            "/v1/audit/verifier-key": {
                "get": {
                    "operationId": "verifierKey",
                    "summary": "The ledger's checkpoint verifier key",
                    "responses": responses(&[("200", {
                        let mut v = ok_json("The key", "Status");
                        v["content"]["application/json"]["schema"] = json!({"type": "object", "required": ["verifier_key"], "properties": {"verifier_key": {"type": "string"}}});
                        v
                    })], &[])
                }
            },
            "/v1/audit/proofs/inclusion": {
                "get": {
                    "operationId": "inclusionProof",
                    "summary": "RFC 9162 inclusion proof of a record (default size: the latest signed checkpoint)",
                    "parameters": [
                        {"name": "position", "in": "query", "required": true, "schema": {"type": "integer", "minimum": 1}},
                        {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 1}}
                    ],
                    "responses": responses(&[("200", ok_json("The proof", "Status"))], &[])
                }
            },
            "/v1/audit/proofs/consistency": {
                "get": {
                    "operationId": "consistencyProof",
                    "summary": "RFC 9162 consistency proof between two tree sizes",
                    "parameters": [
                        {"name": "from", "in": "query", "required": true, "schema": {"type": "integer", "minimum": 1}},
                        {"name": "to", "in": "query", "required": true, "schema": {"type": "integer", "minimum": 1}}
                    ],
                    "responses": responses(&[("200", ok_json("The proof", "Status"))], &[])
                }
            },
            "/v1/audit/replay/{stream}": {
                "get": {
                    "operationId": "replayStream",
                    "summary": "A stream's state and timeline at a position or time; reevaluate=true re-runs each recorded decision against its bundle",
                    "parameters": [
                        {"name": "stream", "in": "path", "required": true, "schema": {"type": "string"}},
                        {"name": "at", "in": "query", "schema": {"type": "string", "description": "a ledger position or an RFC 3339 time"}},
                        {"name": "reevaluate", "in": "query", "schema": {"type": "boolean"}}
                    ],
                    "responses": responses(&[("200", ok_json("The replay", "Status"))], &[])
                }
            },
            "/v1/audit/exports": {
                "post": {
                    "operationId": "exportEvidence",
                    "summary": "An evidence bundle (tar) for the filters, proving each record against the latest signed checkpoint; recorded as audit.exported",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false,
                        "properties": {
                            "tenant": {"type": "string"}, "stream": {"type": "string"}, "event_type": {"type": "string"},
                            "actor": {"type": "string"}, "from_position": {"type": "integer", "minimum": 0},
                            "to_position": {"type": "integer", "minimum": 0},
                            "since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"}
                        }
                    }}}},
                    "responses": responses(&[("200", json!({"description": "The bundle (docs/evidence-bundle.md)",
                        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}))],
                        &[("413", "Body too large (code `payload_too_large`)"), ("415", "Not JSON (code `unsupported_media_type`)")])
                }
            },
            "/v1/audit/verify": {
                "post": {
                    "operationId": "verifyLedger",
                    "summary": "Verify the ledger (or a range) against its signed checkpoints; the first failure if any",
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false,
                        "properties": {"from": {"type": "integer", "minimum": 1}, "to": {"type": "integer", "minimum": 1}}
                    }}}},
                    "responses": responses(&[("200", ok_json("The verdict", "Status"))], &[])
                }
            },
            "/v1/status": {
                "get": {
                    "operationId": "status",
                    "summary": "Ledger head, latest signed checkpoint and projection lag",
                    "responses": responses(&[("200", ok_json("Status", "Status"))], &[])
                }
            }
        }
    })
}
