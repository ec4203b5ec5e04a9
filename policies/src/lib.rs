//! # glassbox-policies — decisions as data
//!
//! One Rego bundle (`policies/rego/*.rego` plus tenant settings in
//! `policies/data/*.json`) decides authorization, admission (and the effective
//! limits), secret injection, dependency allowlisting and egress. It is
//! evaluated in-process with regorus.
//!
//! Why it is shaped like this: every decision is recorded in the ledger with the
//! bundle's digest and the digest of its input, and the bundle itself is kept by
//! digest, so an incident responder can re-evaluate any past decision exactly.
//! Evaluation **fails closed**: a parse error, an undefined result or a runtime
//! error is a deny that carries the error.

use glassbox_events::Digest;
use glassbox_events::canonical;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// The packages of the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Authz,
    Admission,
    Secrets,
    Dependencies,
    Egress,
    Workflows,
    Services,
}

impl Policy {
    pub const ALL: [Policy; 7] = [
        Policy::Authz,
        Policy::Admission,
        Policy::Secrets,
        Policy::Dependencies,
        Policy::Egress,
        Policy::Workflows,
        Policy::Services,
    ];

    /// The name recorded in `policy.evaluated` (`glassbox.admission`, …).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Authz => "glassbox.authz",
            Policy::Admission => "glassbox.admission",
            Policy::Secrets => "glassbox.secrets",
            Policy::Dependencies => "glassbox.dependencies",
            Policy::Egress => "glassbox.egress",
            Policy::Workflows => "glassbox.workflows",
            Policy::Services => "glassbox.services",
        }
    }

    fn rule(self) -> String {
        format!("data.{}.decision", self.name())
    }
}

struct PolicyMetrics {
    decisions: opentelemetry::metrics::Counter<u64>,
    egress_denials: opentelemetry::metrics::Counter<u64>,
}

/// Creates the denial counters at zero, so their series exist before the
/// first denial.
pub fn init_metrics() {
    let m = policy_metrics();
    m.egress_denials.add(
        0,
        &[
            opentelemetry::KeyValue::new("stage", "submission"),
            opentelemetry::KeyValue::new("reason", "not_allowed"),
        ],
    );
    for p in Policy::ALL {
        m.decisions.add(
            0,
            &[
                opentelemetry::KeyValue::new("policy", p.name()),
                opentelemetry::KeyValue::new("decision", "deny"),
                opentelemetry::KeyValue::new("reason", "not_allowed"),
            ],
        );
    }
}

fn policy_metrics() -> &'static PolicyMetrics {
    static M: std::sync::OnceLock<PolicyMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let m = opentelemetry::global::meter("glassbox");
        PolicyMetrics {
            decisions: m
                .u64_counter("glassbox.policy.decisions")
                .with_description("Policy decisions by policy, decision and reason class")
                .build(),
            egress_denials: m
                .u64_counter("glassbox.egress.denials")
                .with_description(
                    "Egress refused, by stage (submission: glassbox.egress at submission)",
                )
                .build(),
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy bundle {path}: {reason}")]
    Bundle { path: String, reason: String },
    #[error("policy bundle: {file} does not compile: {reason}")]
    Compile { file: String, reason: String },
    #[error("policy bundle: data file {file} is not a JSON object: {reason}")]
    Data { file: String, reason: String },
}

/// The bundle's files, by path relative to the bundle root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    files: BTreeMap<String, Vec<u8>>,
}

const BUILTIN: &[(&str, &str)] = &[
    ("rego/authz.rego", include_str!("../rego/authz.rego")),
    (
        "rego/admission.rego",
        include_str!("../rego/admission.rego"),
    ),
    ("rego/secrets.rego", include_str!("../rego/secrets.rego")),
    (
        "rego/dependencies.rego",
        include_str!("../rego/dependencies.rego"),
    ),
    ("rego/egress.rego", include_str!("../rego/egress.rego")),
    (
        "rego/workflows.rego",
        include_str!("../rego/workflows.rego"),
    ),
    ("rego/services.rego", include_str!("../rego/services.rego")),
    ("data/roles.json", include_str!("../data/roles.json")),
    ("data/tenants.json", include_str!("../data/tenants.json")),
];

impl Bundle {
    /// The bundle compiled into this build.
    pub fn builtin() -> Bundle {
        Bundle {
            files: BUILTIN
                .iter()
                .map(|(p, c)| ((*p).to_owned(), c.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// Loads `rego/*.rego` and `data/*.json` under `root`.
    pub fn load_dir(root: &Path) -> Result<Bundle, PolicyError> {
        let err = |reason: String| PolicyError::Bundle {
            path: root.display().to_string(),
            reason,
        };
        let mut files = BTreeMap::new();
        for (dir, ext) in [("rego", "rego"), ("data", "json")] {
            let entries =
                std::fs::read_dir(root.join(dir)).map_err(|e| err(format!("{dir}/: {e}")))?;
            for e in entries {
                let e = e.map_err(|e| err(e.to_string()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(&format!(".{ext}")) {
                    let content =
                        std::fs::read(e.path()).map_err(|e| err(format!("{dir}/{name}: {e}")))?;
                    files.insert(format!("{dir}/{name}"), content);
                }
            }
        }
        if !files.keys().any(|k| k.ends_with(".rego")) {
            return Err(err("no rego/*.rego files".into()));
        }
        Ok(Bundle { files })
    }

    /// Rebuilds a bundle from its files (e.g. fetched from the blob store by digest).
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> Bundle {
        Bundle { files }
    }

    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// `{"files": {"<path>": "<sha256 hex>", …}}` — what the digest covers.
    pub fn manifest(&self) -> Value {
        let files: Map<String, Value> = self
            .files
            .iter()
            .map(|(p, c)| (p.clone(), Value::from(Digest::of(c).to_hex())))
            .collect();
        json!({ "files": files })
    }

    /// SHA-256 of the manifest's canonical (RFC 8785) bytes.
    pub fn digest(&self) -> Digest {
        Digest::of(&canonical::to_canonical_bytes(&self.manifest()).unwrap_or_default())
    }
}

/// One decision, as recorded in `policy.evaluated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub policy: &'static str,
    pub allow: bool,
    pub reasons: Vec<String>,
    /// Admission only: the limits the job runs with.
    pub effective_limits: Option<Map<String, Value>>,
    /// Dependencies and egress: the allowlist rule that matched.
    pub rule: Option<String>,
    /// Egress only: the matching rule lets the destination be (or resolve to)
    /// a non-public address.
    pub allow_private: bool,
    /// Secrets only: the destinations a brokered secret's value may be put in
    /// requests to (`host:port`; empty otherwise).
    pub hosts: Vec<String>,
    pub bundle_digest: Digest,
    /// SHA-256 of the input's canonical JSON.
    pub input_digest: Digest,
    /// Set when evaluation failed; the decision is then a deny.
    pub error: Option<String>,
}

impl Decision {
    /// What kind of refusal this is, as a short fixed label — for metrics and
    /// spans, where the reasons themselves (which name tenants, packages,
    /// hosts and secrets) do not belong. `allowed` for an allow.
    pub fn reason_class(&self) -> &'static str {
        if self.allow {
            return "allowed";
        }
        if self.error.is_some() {
            return "evaluation_error";
        }
        if self.reasons.is_empty() {
            // A deny the bundle gave no reason for (e.g. an input that does
            // not match the policy's expectations).
            return "unspecified";
        }
        let has = |needle: &str| self.reasons.iter().any(|r| r.contains(needle));
        if has("is not configured") {
            "tenant_not_configured"
        } else if has("approval by role") || has("asks for approval") {
            "approval_required"
        } else if has("may not approve") {
            "self_approval"
        } else if has("has no role") {
            "no_role"
        } else if has("unknown question") {
            "unknown_kind"
        } else if has("exceeds the tenant maximum") {
            "limit_exceeded"
        } else if has("unknown limit") {
            "unknown_limit"
        } else if has("too many dependencies") {
            "too_many_dependencies"
        } else if has("open sessions") {
            "session_quota"
        } else if has("belongs to another tenant") {
            "other_tenant"
        } else if has("no role of") {
            "no_role"
        } else if has("unknown kind") {
            "unknown_kind"
        } else if has("the exposure of port") {
            "not_named"
        } else if has("no hosts to be brokered to") {
            "not_brokerable"
        } else if has("not on the allowlist") || has("is not allowed") {
            "not_allowed"
        } else {
            "other"
        }
    }
}

/// A compiled bundle, ready to evaluate. Cheap to share across threads.
#[derive(Clone)]
pub struct PolicyEngine {
    base: regorus::Engine,
    digest: Digest,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicyEngine({})", self.digest)
    }
}

impl PolicyEngine {
    /// Compiles every policy and loads the data files under `data.glassbox.<file stem>`.
    pub fn new(bundle: &Bundle) -> Result<PolicyEngine, PolicyError> {
        let mut engine = regorus::Engine::new();
        let mut data = Map::new();
        for (path, content) in bundle.files() {
            let text = String::from_utf8_lossy(content).into_owned();
            if path.ends_with(".rego") {
                engine
                    .add_policy(path.clone(), text)
                    .map_err(|e| PolicyError::Compile {
                        file: path.clone(),
                        reason: e.to_string(),
                    })?;
            } else if let Some(stem) = path
                .strip_prefix("data/")
                .and_then(|p| p.strip_suffix(".json"))
            {
                let v: Value = serde_json::from_str(&text).map_err(|e| PolicyError::Data {
                    file: path.clone(),
                    reason: e.to_string(),
                })?;
                if !v.is_object() {
                    return Err(PolicyError::Data {
                        file: path.clone(),
                        reason: "top level must be an object".into(),
                    });
                }
                data.insert(stem.to_owned(), v);
            }
        }
        let data = json!({ "glassbox": data }).to_string();
        engine.add_data_json(&data).map_err(|e| PolicyError::Data {
            file: "data/".into(),
            reason: e.to_string(),
        })?;
        Ok(PolicyEngine {
            base: engine,
            digest: bundle.digest(),
        })
    }

    pub fn bundle_digest(&self) -> Digest {
        self.digest
    }

    /// Evaluates one policy. Never fails: any error is a deny carrying the error.
    /// Each evaluation is a `policy.evaluate` span (policy, decision, reason
    /// class, bundle digest — never the input) and counts in
    /// `glassbox.policy.decisions`.
    pub fn evaluate(&self, policy: Policy, input: &Value) -> Decision {
        let span = tracing::info_span!(
            "policy.evaluate",
            policy = policy.name(),
            decision = tracing::field::Empty,
            reason = tracing::field::Empty,
            policy.bundle_digest = %self.digest.to_hex(),
        );
        let d = span.in_scope(|| self.evaluate_inner(policy, input));
        let (decision, reason) = if d.allow {
            ("allow", "allowed")
        } else {
            ("deny", d.reason_class())
        };
        span.record("decision", decision);
        span.record("reason", reason);
        policy_metrics().decisions.add(
            1,
            &[
                opentelemetry::KeyValue::new("policy", policy.name()),
                opentelemetry::KeyValue::new("decision", decision),
                opentelemetry::KeyValue::new("reason", reason),
            ],
        );
        if !d.allow && policy == Policy::Egress {
            policy_metrics().egress_denials.add(
                1,
                &[
                    opentelemetry::KeyValue::new("stage", "submission"),
                    opentelemetry::KeyValue::new("reason", reason),
                ],
            );
        }
        d
    }

    fn evaluate_inner(&self, policy: Policy, input: &Value) -> Decision {
        let input_digest = Digest::of(&canonical::to_canonical_bytes(input).unwrap_or_default());
        let deny = |error: String| Decision {
            policy: policy.name(),
            allow: false,
            reasons: vec![format!("policy evaluation failed: {error}")],
            effective_limits: None,
            rule: None,
            allow_private: false,
            hosts: Vec::new(),
            bundle_digest: self.digest,
            input_digest,
            error: Some(error),
        };
        let mut engine = self.base.clone();
        if let Err(e) = engine.set_input_json(&input.to_string()) {
            return deny(format!("input: {e}"));
        }
        let value = match engine.eval_rule(policy.rule()) {
            Ok(v) => v,
            Err(e) => return deny(e.to_string()),
        };
        let out: Value = match value
            .to_json_str()
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
        {
            Some(v) => v,
            None => return deny("decision is undefined".into()),
        };
        let Some(allow) = out.get("allow").and_then(Value::as_bool) else {
            return deny(format!("decision has no boolean `allow`: {out}"));
        };
        let reasons = out
            .get("reasons")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Decision {
            policy: policy.name(),
            allow,
            reasons,
            effective_limits: out
                .get("effective_limits")
                .and_then(Value::as_object)
                .cloned(),
            rule: out.get("rule").and_then(Value::as_str).map(str::to_owned),
            allow_private: out.get("allow_private").and_then(Value::as_bool) == Some(true) && allow,
            hosts: if allow {
                out.get("hosts")
                    .and_then(Value::as_array)
                    .map(|h| {
                        h.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
            bundle_digest: self.digest,
            input_digest,
            error: None,
        }
    }
}
