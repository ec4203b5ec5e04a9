//! Egress for one sandbox (issue 15): the runner starts a proxy of its own for
//! each sandbox that asked for destinations, on a Unix socket in a directory of
//! its own (bound into the sandbox, reached with `--host-uds=open` through the
//! forwarder inside; see docs/egress.md), and records every decision on the
//! job's or session's stream.
//!
//! **Policy.** A connection is allowed only to a destination the job or
//! session asked for *and* the tenant's `glassbox.egress` allows, decided
//! again for every connection with the bundle digest recorded
//! ([`TenantEgress`]).
//!
//! **What reaches the ledger.** The host a program connects to is program
//! data: it is recorded as a keyed digest (HMAC under the sandbox's data key),
//! in clear only when it is exactly a host the submitter named; the matching
//! requested destination, the tenant's rule and a reason *code* are in clear.
//! The program reads the host, rule and reason in its 403 — it named them.
//!
//! **Hostile counts.** Every connection counts toward the sandbox's
//! connection limit; past it, only the first refusal is recorded and the rest
//! are summed in one `egress.limit_reached` when the sandbox ends. Events are
//! appended in batches by one task; a denial waits for its position (the 403
//! names it), everything else does not.

use glassbox_domain::catalogue::{self, KnownEvent};
use glassbox_domain::request::EgressTarget;
use glassbox_egress::proxy::BoxFuture;
use glassbox_egress::{
    Destination, EgressEvent, Limits, Policy as EgressPolicy, Proxy, Recorder, Resolver,
    StaticHosts, SystemResolver, Verdict,
};
use glassbox_platform::blob::BlobStore;
use glassbox_policies::{Policy, PolicyEngine};
use serde_json::json;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The uid the sandboxed program runs as (its socket is its alone).
const SANDBOX_UID: u32 = 65534;
/// How long a finished sandbox's connections get to end on their own.
const DRAIN: Duration = Duration::from_millis(500);
/// Events appended in one go at most.
const BATCH: usize = 256;

pub struct TenantEgress {
    pub engine: Arc<PolicyEngine>,
    pub tenant: String,
    /// What the job or session asked for (a session's can change while it runs).
    pub requested: Arc<RwLock<Vec<EgressTarget>>>,
}

impl TenantEgress {
    pub fn new(engine: Arc<PolicyEngine>, tenant: &str, requested: Vec<EgressTarget>) -> Self {
        TenantEgress {
            engine,
            tenant: tenant.to_owned(),
            requested: Arc::new(RwLock::new(requested)),
        }
    }
}

impl EgressPolicy for TenantEgress {
    fn decide(&self, dest: &Destination) -> Verdict {
        let asked = self
            .requested
            .read()
            .map(|r| r.iter().any(|t| t.matches(&dest.host, dest.port)))
            .unwrap_or(false);
        if !asked {
            return Verdict {
                allow: false,
                rule: "not among the destinations this sandbox asked for".into(),
                allow_private: false,
                decided_by: None,
            };
        }
        let input = json!({"tenant": self.tenant, "host": dest.host, "port": dest.port});
        let d = self.engine.evaluate(Policy::Egress, &input);
        Verdict {
            allow: d.allow,
            // The tenant's rule, or a refusal without the host in it (the
            // rule is recorded; the host is program data).
            rule: d
                .rule
                .clone()
                .unwrap_or_else(|| format!("no egress rule of tenant {} allows it", self.tenant)),
            allow_private: d.allow_private,
            decided_by: Some(format!("{}@sha256:{}", d.policy, d.bundle_digest.to_hex())),
        }
    }
}

/// How this runner gives sandboxes a way out.
#[derive(Clone)]
pub struct EgressSettings {
    /// Resolves the names programs ask for (never resolved in the sandbox).
    pub resolver: Arc<dyn Resolver>,
    /// Per sandbox, over its life.
    pub limits: Limits,
    /// The forwarder inside the sandbox (`glassbox-session-agent`); without
    /// it a job that asks for egress fails before it runs (fail closed).
    pub agent: Option<PathBuf>,
    /// Where each sandbox's socket directory is made.
    pub socket_root: PathBuf,
    /// What a brokered connection's real host must present a certificate
    /// from (the system's bundle, plus `GLASSBOX_EGRESS_CA_FILE`).
    pub upstream_roots: Arc<rustls::RootCertStore>,
    /// The system's CA bundle (PEM), given to a sandbox with brokered secrets
    /// together with its own CA (so other hosts still verify).
    pub system_bundle: Option<PathBuf>,
}

/// Where Debian keeps the system's CA bundle.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Certificates of a PEM file (a file that holds none is an error).
fn pem_certificates(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

impl EgressSettings {
    /// Adds the certificates of a PEM file to the roots upstream TLS is verified against.
    pub fn trust_upstream(&mut self, path: &std::path::Path) -> Result<(), String> {
        let mut roots = (*self.upstream_roots).clone();
        for c in pem_certificates(path)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        self.upstream_roots = Arc::new(roots);
        Ok(())
    }
}

impl std::fmt::Debug for EgressSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressSettings")
            .field("limits", &self.limits)
            .field("agent", &self.agent)
            .field("socket_root", &self.socket_root)
            .finish_non_exhaustive()
    }
}

impl Default for EgressSettings {
    fn default() -> Self {
        let system = PathBuf::from(SYSTEM_BUNDLE);
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(certs) = pem_certificates(&system) {
            roots.add_parsable_certificates(certs);
        }
        EgressSettings {
            resolver: Arc::new(SystemResolver),
            limits: Limits::default(),
            agent: crate::local::session::find_agent().ok(),
            socket_root: PathBuf::from("/run/glassbox/egress"),
            upstream_roots: Arc::new(roots),
            system_bundle: system.is_file().then_some(system),
        }
    }
}

impl EgressSettings {
    /// From the runner's settings: `GLASSBOX_EGRESS_HOSTS` (`name=address,…`,
    /// names pinned to addresses), `GLASSBOX_EGRESS_MAX_CONNECTIONS`,
    /// `GLASSBOX_EGRESS_MAX_BYTES`, `GLASSBOX_EGRESS_DIR`.
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<EgressSettings, (&'static str, String)> {
        let mut s = EgressSettings::default();
        if let Some(h) = get("GLASSBOX_EGRESS_HOSTS") {
            s.resolver =
                Arc::new(StaticHosts::parse(&h).map_err(|e| ("GLASSBOX_EGRESS_HOSTS", e))?);
        }
        let number = |name: &'static str| -> Result<Option<u64>, (&'static str, String)> {
            get(name)
                .map(|v| {
                    v.parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or((name, format!("{v:?} is not a positive integer")))
                })
                .transpose()
        };
        if let Some(n) = number("GLASSBOX_EGRESS_MAX_CONNECTIONS")? {
            s.limits.max_connections = n;
        }
        if let Some(n) = number("GLASSBOX_EGRESS_MAX_BYTES")? {
            s.limits.max_bytes = n;
        }
        if let Some(d) = get("GLASSBOX_EGRESS_DIR") {
            s.socket_root = PathBuf::from(d);
        }
        if let Some(f) = get("GLASSBOX_EGRESS_CA_FILE") {
            s.trust_upstream(std::path::Path::new(&f))
                .map_err(|e| ("GLASSBOX_EGRESS_CA_FILE", e))?;
        }
        Ok(s)
    }
}

/// Where a sandbox's egress records go (its job's or session's stream).
pub trait EgressLedger: Send + Sync {
    /// Appends `events` in order; the position of each.
    fn append(&self, events: Vec<KnownEvent>) -> BoxFuture<'_, Result<Vec<u64>, String>>;
}

type Item = (EgressEvent, Option<oneshot::Sender<Option<u64>>>);

/// Turns the proxy's events into ledger records and appends them in batches.
struct LedgerRecorder {
    tx: Mutex<Option<mpsc::UnboundedSender<Item>>>,
}

impl Recorder for LedgerRecorder {
    fn record(&self, event: EgressEvent) -> BoxFuture<'_, Option<u64>> {
        // A denial's position goes into the 403; nothing else waits.
        let wait = matches!(event, EgressEvent::Denied { .. });
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.lock().ok().is_some_and(|t| {
            t.as_ref()
                .is_some_and(|t| t.send((event, wait.then_some(reply))).is_ok())
        });
        Box::pin(async move {
            if wait && sent {
                answer.await.ok().flatten()
            } else {
                None
            }
        })
    }
}

/// What a sandbox's records need to name hosts without writing them in clear.
struct Naming {
    blobs: BlobStore,
    /// The data key of the job or session.
    key_id: String,
    requested: Arc<RwLock<Vec<EgressTarget>>>,
}

impl Naming {
    /// (matched target, host in clear if it is exactly a named host, keyed digest).
    async fn name(
        &self,
        dest: &Destination,
    ) -> Result<(Option<String>, Option<String>, glassbox_events::Digest), String> {
        let target = self
            .requested
            .read()
            .ok()
            .and_then(|r| r.iter().find(|t| t.matches(&dest.host, dest.port)).cloned());
        let clear = target
            .as_ref()
            .filter(|t| t.host == dest.host)
            .map(|t| t.host.clone());
        let hmac = self
            .blobs
            .keyed_digest(&self.key_id, dest.host.as_bytes())
            .await
            .map_err(|e| format!("digest a destination: {e}"))?;
        Ok((target.map(|t| t.to_string()), clear, hmac))
    }

    async fn record(&self, e: EgressEvent) -> Result<KnownEvent, String> {
        Ok(match e {
            EgressEvent::Allowed {
                connection,
                dest,
                rule,
                addr,
                decided_by,
            } => {
                let (target, host, host_hmac) = self.name(&dest).await?;
                KnownEvent::EgressAllowed(Box::new(catalogue::EgressAllowed {
                    connection,
                    target: target.unwrap_or_default(),
                    host,
                    host_hmac,
                    port: u64::from(dest.port),
                    address: addr.to_string(),
                    rule,
                    decided_by,
                }))
            }
            EgressEvent::Denied {
                connection,
                dest,
                rule,
                denial,
                decided_by,
            } => {
                let (target, host, host_hmac, port) = match &dest {
                    Some(d) => {
                        let (t, h, m) = self.name(d).await?;
                        (t, h, Some(m), Some(u64::from(d.port)))
                    }
                    None => (None, None, None, None),
                };
                KnownEvent::EgressDenied(Box::new(catalogue::EgressDenied {
                    connection,
                    reason: denial.code(),
                    target,
                    host,
                    host_hmac,
                    port,
                    rule,
                    decided_by,
                }))
            }
            EgressEvent::Closed {
                connection,
                bytes_out,
                bytes_in,
                duration_ms,
                ..
            } => KnownEvent::EgressClosed(Box::new(catalogue::EgressClosed {
                connection,
                bytes_out,
                bytes_in,
                duration_ms,
            })),
            EgressEvent::Brokered {
                connection,
                dest,
                sighting,
            } => {
                let (target, _, host_hmac) = self.name(&dest).await?;
                KnownEvent::SecretBrokered(Box::new(catalogue::SecretBrokered {
                    name: sighting.secret,
                    connection,
                    target,
                    host_hmac,
                    header: recorded_header(&sighting.header).to_owned(),
                    substituted: sighting.substituted,
                }))
            }
            EgressEvent::Masked {
                connection,
                secret,
                count,
            } => KnownEvent::OutputRedacted(Box::new(catalogue::OutputRedacted {
                secret_name: secret,
                target: format!("egress:{connection}"),
                count,
            })),
            EgressEvent::ByteLimit {
                connection, limit, ..
            } => KnownEvent::EgressLimitReached(Box::new(catalogue::EgressLimitReached {
                limit: "bytes".into(),
                max: limit,
                connection: Some(connection),
                refused: 0,
            })),
        })
    }
}

/// A header's name as the ledger may hold it: a program names its headers,
/// so only the usual credential headers are recorded by name, any other as
/// `other`.
fn recorded_header(name: &str) -> &'static str {
    const KNOWN: [&str; 8] = [
        ":request-target",
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "private-token",
    ];
    KNOWN
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("other")
}

/// Appends queued events in batches until the queue closes and is drained.
async fn append_loop(
    mut rx: mpsc::UnboundedReceiver<Item>,
    naming: Naming,
    ledger: Arc<dyn EgressLedger>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (e, reply) in batch {
            match naming.record(e).await {
                Ok(k) => {
                    events.push(k);
                    replies.push(reply);
                }
                Err(err) => {
                    tracing::error!(error = %err, "egress: an event could not be recorded");
                }
            }
        }
        match ledger.append(events).await {
            Ok(positions) => {
                for (reply, p) in replies.into_iter().zip(positions) {
                    if let Some(r) = reply {
                        let _ = r.send(Some(p));
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "egress: appending records failed");
            }
        }
    }
}

/// The brokered secrets of a sandbox from its approved secrets: each gets a
/// placeholder (what the sandbox holds) and the exact `host:port`s the policy
/// named (a wildcard names no host here). `value` gives a secret's value.
pub fn broker_for(
    settings: &EgressSettings,
    label: &str,
    approved: &[glassbox_domain::job::ApprovedSecret],
    value: impl Fn(&str) -> Option<String>,
) -> Result<Option<Arc<glassbox_egress::Broker>>, String> {
    let mut secrets = Vec::new();
    for s in approved.iter().filter(|s| s.mode == "brokered") {
        let Some(v) = value(&s.name) else {
            return Err(format!(
                "secret {} has no value in this runner's provider",
                s.name
            ));
        };
        let hosts: Vec<(String, u16)> = s
            .hosts
            .iter()
            .filter_map(|h| EgressTarget::parse(h).ok())
            .filter(|t| !t.host.starts_with("*."))
            .map(|t| (t.host, t.port))
            .collect();
        if hosts.is_empty() {
            return Err(format!("secret {} has no host to be brokered to", s.name));
        }
        secrets.push(glassbox_egress::Brokered::new(&s.name, v, hosts).map_err(|e| e.to_string())?);
    }
    if secrets.is_empty() {
        return Ok(None);
    }
    glassbox_egress::Broker::new(label, secrets, (*settings.upstream_roots).clone())
        .map(|b| Some(Arc::new(b)))
        .map_err(|e| e.to_string())
}

/// A sandbox's proxy while the sandbox lives.
pub struct SandboxEgress {
    dir: PathBuf,
    proxy: Arc<Proxy>,
    recorder: Arc<LedgerRecorder>,
    accept: tokio::task::JoinHandle<tokio::task::JoinSet<()>>,
    appender: tokio::task::JoinHandle<()>,
    ledger: Arc<dyn EgressLedger>,
    stop: tokio_util::sync::CancellationToken,
    /// Stops the accept loop (and so every connection) if this is dropped
    /// without [`SandboxEgress::finish`] (an error on the way).
    _guard: tokio_util::sync::DropGuard,
    /// The forwarder binary to bind into the sandbox.
    agent: PathBuf,
    /// With brokered secrets: the trust bundle the sandbox gets.
    brokering: bool,
    /// Service mode: the forwarder offers connections to the runner.
    services: bool,
}

/// The sandbox's CA alone, and with the system's bundle (in its socket
/// directory, so at `/run/egress/…` inside).
const CA_FILE: &str = "ca.pem";
const BUNDLE_FILE: &str = "ca-bundle.pem";

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress for {sandbox}: {step}: {detail}")]
    Start {
        sandbox: String,
        step: &'static str,
        detail: String,
    },
}

impl SandboxEgress {
    /// Starts the proxy of sandbox `name` (a job or session ID): its socket
    /// directory (`<socket_root>/<name>-<random>`, 0755, the socket 0600 owned
    /// by the sandbox's uid), the policy and the recorder.
    pub async fn start(
        settings: &EgressSettings,
        name: &str,
        policy: TenantEgress,
        blobs: BlobStore,
        ledger: Arc<dyn EgressLedger>,
        broker: Option<Arc<glassbox_egress::Broker>>,
    ) -> Result<SandboxEgress, EgressError> {
        let fail = |step: &'static str| {
            let sandbox = name.to_owned();
            move |e: std::io::Error| EgressError::Start {
                sandbox,
                step,
                detail: e.to_string(),
            }
        };
        let agent = settings.agent.clone().ok_or_else(|| EgressError::Start {
            sandbox: name.to_owned(),
            step: "find the forwarder",
            detail: "this runner has no glassbox-session-agent (GLASSBOX_SESSION_AGENT)".into(),
        })?;
        std::fs::create_dir_all(&settings.socket_root).map_err(fail("make the socket root"))?;
        let dir = settings.socket_root.join(format!(
            "{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir(&dir).map_err(fail("make the socket directory"))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(fail("set the socket directory's mode"))?;
        let sock = dir.join(crate::spec::EGRESS_SOCKET);
        let listener = tokio::net::UnixListener::bind(&sock).map_err(fail("bind the socket"))?;
        std::os::unix::fs::chown(&sock, Some(SANDBOX_UID), Some(SANDBOX_UID))
            .map_err(fail("give the socket to the sandbox's user"))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(fail("set the socket's mode"))?;
        if let Some(b) = &broker {
            let mut bundle = settings
                .system_bundle
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            if !bundle.is_empty() && !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(b.ca_pem());
            for (file, text) in [(CA_FILE, b.ca_pem().to_owned()), (BUNDLE_FILE, bundle)] {
                let path = dir.join(file);
                std::fs::write(&path, text).map_err(fail("write the sandbox's CA"))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(fail("set the CA file's mode"))?;
            }
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let naming = Naming {
            blobs,
            key_id: name.to_owned(),
            requested: policy.requested.clone(),
        };
        let appender = tokio::spawn(append_loop(rx, naming, ledger.clone()));
        let recorder = Arc::new(LedgerRecorder {
            tx: Mutex::new(Some(tx)),
        });
        let mut proxy = Proxy::new(
            Arc::new(policy),
            settings.resolver.clone(),
            recorder.clone(),
            settings.limits,
        );
        let brokering = broker.is_some();
        if let Some(b) = broker {
            proxy = proxy.with_broker(b);
        }
        let proxy = Arc::new(proxy);
        let stop = tokio_util::sync::CancellationToken::new();
        let accept = {
            let (proxy, stop) = (proxy.clone(), stop.clone());
            tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        a = listener.accept() => match a {
                            Ok((s, _)) => {
                                let p = proxy.clone();
                                conns.spawn(async move { p.serve(s).await });
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "egress: accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                    }
                    while conns.try_join_next().is_some() {}
                }
                conns
            })
        };
        Ok(SandboxEgress {
            dir,
            proxy,
            recorder,
            accept,
            appender,
            ledger,
            _guard: stop.clone().drop_guard(),
            stop,
            agent,
            brokering,
            services: false,
        })
    }

    /// What the sandbox binds and runs to reach this proxy.
    pub fn path(&self) -> crate::spec::EgressPath {
        crate::spec::EgressPath {
            socket_dir: self.dir.clone(),
            agent: self.agent.clone(),
            services: self.services,
        }
    }

    /// Service mode: the runner's socket the forwarder offers connections to
    /// (in the same directory; call before [`SandboxEgress::path`]).
    pub fn dock(&mut self) -> Result<crate::ports::ServiceDock, EgressError> {
        let d = crate::ports::ServiceDock::bind(&self.dir).map_err(|e| EgressError::Start {
            sandbox: self.dir.display().to_string(),
            step: "bind the service socket",
            detail: e.to_string(),
        })?;
        self.services = true;
        Ok(d)
    }

    /// The environment a sandbox with brokered secrets needs: the trust
    /// bundle that holds its own CA, where the usual clients look for one.
    pub fn trust_env(&self) -> Vec<(String, String)> {
        if !self.brokering {
            return Vec::new();
        }
        let bundle = format!("{}/{BUNDLE_FILE}", crate::spec::EGRESS_MOUNT);
        let ca = format!("{}/{CA_FILE}", crate::spec::EGRESS_MOUNT);
        vec![
            ("SSL_CERT_FILE".into(), bundle.clone()),
            ("REQUESTS_CA_BUNDLE".into(), bundle.clone()),
            ("CURL_CA_BUNDLE".into(), bundle),
            ("NODE_EXTRA_CA_CERTS".into(), ca),
        ]
    }

    /// The sandbox ended: stop accepting, let open connections end (then end
    /// them), record what the limits refused without a record each, append
    /// everything queued and remove the socket directory.
    pub async fn finish(self) {
        self.stop.cancel();
        let mut conns = self.accept.await.unwrap_or_default();
        if tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            self.proxy.close();
            while conns.join_next().await.is_some() {}
        }
        self.proxy.close();
        if let Ok(mut t) = self.recorder.tx.lock() {
            t.take();
        }
        let _ = self.appender.await;
        let refused = self.proxy.refused_over_limit();
        if refused > 0 {
            let e = KnownEvent::EgressLimitReached(Box::new(catalogue::EgressLimitReached {
                limit: "connections".into(),
                max: self.proxy.limits.max_connections,
                connection: None,
                refused,
            }));
            if let Err(err) = self.ledger.append(vec![e]).await {
                tracing::error!(error = %err, "egress: recording the refused connections failed");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(error = %e, "egress: removing a socket directory failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tenant: &str, requested: &[&str]) -> TenantEgress {
        TenantEgress::new(
            Arc::new(PolicyEngine::new(&glassbox_policies::Bundle::builtin()).expect("bundle")),
            tenant,
            requested
                .iter()
                .map(|r| EgressTarget::parse(r).expect("target"))
                .collect(),
        )
    }

    fn d(host: &str, port: u16) -> Destination {
        Destination {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn only_usual_credential_headers_reach_the_ledger_by_name() {
        assert_eq!(recorded_header("authorization"), "authorization");
        assert_eq!(recorded_header(":request-target"), ":request-target");
        assert_eq!(recorded_header("x-exfil-c2VjcmV0"), "other");
    }

    #[test]
    fn a_connection_needs_both_the_request_and_the_tenants_rule() {
        let p = policy(
            "acme",
            &[
                "api.example.com:443",
                "*.pythonhosted.org:443",
                "evil.example:443",
            ],
        );
        let v = p.decide(&d("api.example.com", 443));
        assert!(v.allow && !v.allow_private, "{v:?}");
        assert_eq!(v.rule, "api.example.com:[443]");
        assert!(
            v.decided_by
                .as_deref()
                .is_some_and(|b| b.starts_with("glassbox.egress@sha256:"))
        );
        let v = p.decide(&d("files.pythonhosted.org", 443));
        assert!(v.allow, "{v:?}");
        // Asked for, but the tenant does not allow it.
        let v = p.decide(&d("evil.example", 443));
        assert!(!v.allow);
        assert_eq!(v.rule, "no egress rule of tenant acme allows it", "{v:?}");
        // Allowed for the tenant, but this sandbox did not ask for it.
        let v = p.decide(&d("outside.test", 8443));
        assert!(!v.allow);
        assert_eq!(v.rule, "not among the destinations this sandbox asked for");
        // A rule that allows private addresses says so.
        let v = policy("acme", &["outside.test:8443"]).decide(&d("outside.test", 8443));
        assert!(v.allow && v.allow_private, "{v:?}");
        // Another tenant, the same request: nothing.
        let v = policy("globex", &["api.example.com:443"]).decide(&d("api.example.com", 443));
        assert!(!v.allow);
    }
}
