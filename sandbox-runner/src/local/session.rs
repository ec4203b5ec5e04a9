//! A session's sandbox: one long-lived `runsc run` whose only process is the
//! session agent (`glassbox-session-agent`, bound read-only), driven over the
//! sandbox's stdin and stdout with the agent's framed protocol.
//!
//! The same recipe as an execution — its own tmpfs workspace, cgroups with
//! the session's memory, CPU and process limits, `--network=none`, the
//! parent-death and watchdog chain (here bounded by the session's maximum
//! lifetime) — and the same guarantee: whatever way it ends (closed,
//! expired, killed by the OOM killer, a dropped handle, a restarted runner),
//! the sandbox, its workspace, cgroups and bundle are gone afterwards.
//!
//! One request at a time per session (an exec holds the channel until its
//! end); a caller that gives up on an exec cancels it, and replies that
//! belong to an abandoned request are recognised by id and skipped.

use super::{Cleanup, LocalRunsc, cgroup, oci, spawn, workspace};
use crate::error::SandboxError;
use crate::result::Teardown;
use crate::spec::ExecutionSpec;
use glassbox_session_agent::protocol::{
    self, Entry, ExecDone, ExecKind, FrameError, Reply, Request, Stream,
};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Mutex, mpsc, watch};

/// How long the agent may take to come up (dependencies are installed first).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a file operation may take before the session is considered broken.
const FILE_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Margin on top of an exec's own timeout before the channel is given up.
const EXEC_GRACE: Duration = Duration::from_secs(10);

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The sandbox is gone (closed, or it ended on its own).
    #[error("session sandbox {sandbox_id} has ended: {reason}")]
    Ended { sandbox_id: String, reason: String },
    /// The agent refused the request (e.g. no such file).
    #[error("{0}")]
    Refused(String),
    #[error("session sandbox {sandbox_id}: {step} got no answer within {waited:?}")]
    Unresponsive {
        step: &'static str,
        sandbox_id: String,
        waited: Duration,
    },
}

/// One output chunk of a running exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// How a session's sandbox ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// `oom_killed`, `process_limit`, `lifetime`, `crashed`.
    pub cause: &'static str,
    pub detail: String,
}

struct Channel {
    replies: mpsc::UnboundedReceiver<Reply>,
    next_id: u64,
}

/// A running session sandbox. Dropping it without [`SessionSandbox::close`]
/// still tears everything down (in the background).
pub struct SessionSandbox {
    pub sandbox_id: String,
    pub runtime: String,
    /// The digest of the image the sandbox's root is.
    pub image_digest: Option<String>,
    backend: LocalRunsc,
    requests: mpsc::UnboundedSender<Vec<u8>>,
    channel: Mutex<Channel>,
    ended: watch::Receiver<Option<Ended>>,
    guard: std::sync::Mutex<Option<Cleanup>>,
    child: Arc<Mutex<Option<tokio::process::Child>>>,
}

impl std::fmt::Debug for SessionSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSandbox")
            .field("sandbox_id", &self.sandbox_id)
            .field("runtime", &self.runtime)
            .finish()
    }
}

/// Where to find the session agent: `GLASSBOX_SESSION_AGENT`, else next to
/// this executable (or one directory up, for test binaries in `deps/`).
pub fn find_agent() -> Result<PathBuf, SandboxError> {
    if let Ok(p) = std::env::var("GLASSBOX_SESSION_AGENT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(SandboxError::Unsupported {
                step: "find the session agent",
                detail: format!("GLASSBOX_SESSION_AGENT={} is not a file", p.display()),
            })
        };
    }
    let exe = std::env::current_exe().map_err(|e| SandboxError::Unsupported {
        step: "find the session agent",
        detail: e.to_string(),
    })?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for candidate in [
        dir.join("glassbox-session-agent"),
        dir.join("../glassbox-session-agent"),
    ] {
        if candidate.is_file() {
            return Ok(candidate.canonicalize().unwrap_or(candidate));
        }
    }
    Err(SandboxError::Unsupported {
        step: "find the session agent",
        detail: format!(
            "glassbox-session-agent is not next to {} (build it with `cargo build -p glassbox-session-agent`, or set GLASSBOX_SESSION_AGENT)",
            exe.display()
        ),
    })
}

impl LocalRunsc {
    /// Starts a session's sandbox: workspace, cgroups, bundle, then the agent
    /// (after the session's packages are installed from the wheel mirror, if
    /// any); returns once the agent is ready. `spec.limits.wall_time_ms` is
    /// the session's maximum lifetime (the watchdog's bound); its code, files
    /// and args are ignored.
    pub async fn open_session(
        &self,
        spec: ExecutionSpec,
        agent: &std::path::Path,
    ) -> Result<SessionSandbox, SandboxError> {
        spec.validate()?;
        let runtime = self.inner.config.registry.get(&spec.language)?.clone();
        let image_digest = self.root(&spec.language)?.image_digest.clone();
        let id = self.new_sandbox_id();
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(id.clone());
        }
        let guard = Cleanup {
            backend: self.clone(),
            id: id.clone(),
            armed: true,
        };
        let started = self.start_session(&spec, &runtime, agent, &id).await;
        match started {
            Ok((child, requests, replies, ended)) => Ok(SessionSandbox {
                sandbox_id: id,
                runtime: format!("{}-{}", spec.language, runtime.version),
                image_digest,
                backend: self.clone(),
                requests,
                channel: Mutex::new(Channel {
                    replies,
                    next_id: 0,
                }),
                ended,
                guard: std::sync::Mutex::new(Some(guard)),
                child,
            }),
            Err(e) => {
                let mut guard = guard;
                guard.armed = false;
                let backend = self.clone();
                let _ = tokio::task::spawn_blocking(move || Cleanup::blocking(&backend, &id)).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn start_session(
        &self,
        spec: &ExecutionSpec,
        runtime: &crate::runtime::Runtime,
        agent: &std::path::Path,
        id: &str,
    ) -> Result<
        (
            Arc<Mutex<Option<tokio::process::Child>>>,
            mpsc::UnboundedSender<Vec<u8>>,
            mpsc::UnboundedReceiver<Reply>,
            watch::Receiver<Option<Ended>>,
        ),
        SandboxError,
    > {
        let bundle = self.bundle_dir(id);
        let ws = self.workspace_dir(id);
        let cg = self.cgroups(id);
        let limits = spec.limits.clone();
        let io = |step: &'static str, path: PathBuf| {
            let id = id.to_owned();
            move |source| SandboxError::Io {
                step,
                sandbox_id: id,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&bundle).map_err(io("prepare bundle", bundle.clone()))?;
        workspace::mount(id, &ws, limits.workspace_bytes)?;
        if let Some(w) = &spec.wheels {
            workspace::write_requirements(id, &ws, w)?;
        }
        cg.create(
            limits.memory_bytes,
            oci::pids_backstop(limits.processes),
            oci::cpu_quota_us(limits.cpu_millicores),
            oci::CPU_PERIOD_US,
        )?;
        let root = self.root(&spec.language)?.clone();
        let config = oci::session_config(spec, runtime, agent, &root, &ws, &cg.cgroups_path());
        let config_path = bundle.join("config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).unwrap_or_default(),
        )
        .map_err(io("write config.json", config_path.clone()))?;
        let log = bundle.join("runsc.log");
        let mut cmd = spawn::guarded(
            &self.inner.config.runsc,
            limits.wall_time() + spawn::WATCHDOG_GRACE,
        );
        cmd.arg("--root").arg(&self.inner.paths.state);
        if spec.egress.is_some() {
            // Only host sockets inside the sandbox's bind mounts: its egress
            // proxy's (docs/runsc-recipe.md §13).
            cmd.arg("--host-uds=open");
        }
        cmd.arg("--network=none")
            .arg(format!("--log={}", log.display()))
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = spawn::spawn(cmd)
            .await
            .map_err(|e| SandboxError::RunscMissing {
                step: "start session sandbox",
                sandbox_id: id.to_owned(),
                path: self.inner.config.runsc.clone(),
                detail: e.to_string(),
            })?;
        let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SandboxError::Runsc {
                step: "start session sandbox",
                sandbox_id: id.to_owned(),
                detail: "no stdio pipes".into(),
            });
        };
        // Writer: frames to the agent's stdin, in order.
        let (requests, mut outbox) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(frame) = outbox.recv().await {
                if stdin.write_all(&frame).await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
        });
        // Reader: frames from the agent's stdout.
        let (tx, mut replies) = mpsc::unbounded_channel::<Reply>();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 4];
                if stdout.read_exact(&mut len).await.is_err() {
                    return;
                }
                let n = u32::from_be_bytes(len) as usize;
                if n > protocol::MAX_FRAME {
                    return;
                }
                let mut body = vec![0u8; n];
                if stdout.read_exact(&mut body).await.is_err() {
                    return;
                }
                match protocol::decode::<Reply>(&body) {
                    Ok(r) => {
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        let errors = tokio::spawn(super::capture::drain(stderr, 64 << 10));
        // The sandbox's end, whenever it comes.
        let child = Arc::new(Mutex::new(Some(child)));
        let (ended_tx, ended) = watch::channel(None);
        {
            let child = child.clone();
            let cg = cg.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let status = loop {
                    let mut guard = child.lock().await;
                    let Some(c) = guard.as_mut() else { return };
                    match c.try_wait() {
                        Ok(Some(s)) => break Some(s),
                        Ok(None) => {}
                        Err(_) => break None,
                    }
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                let stats = cg.stats();
                let stderr = tokio::time::timeout(Duration::from_secs(2), errors)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|c| c.text())
                    .unwrap_or_default();
                let runsc_log = std::fs::read_to_string(&log).unwrap_or_default();
                let _ = ended_tx.send(Some(ended_cause(status, &stats, &stderr, &runsc_log)));
            });
        }
        // The agent says it is ready (after any package installation).
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                match replies.recv().await {
                    Some(Reply::Ready { .. }) => return Ok(()),
                    Some(_) => continue,
                    None => return Err(()),
                }
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => Ok((child, requests, replies, ended)),
            other => {
                let mut ended = ended;
                let why = match tokio::time::timeout(
                    Duration::from_secs(5),
                    ended.wait_for(Option::is_some),
                )
                .await
                {
                    Ok(Ok(e)) => e.as_ref().map(|e| e.detail.clone()).unwrap_or_default(),
                    _ => String::new(),
                };
                if let Some(mut c) = child.lock().await.take() {
                    let _ = c.start_kill();
                    let _ = c.wait().await;
                }
                Err(SandboxError::Runsc {
                    step: "start session sandbox",
                    sandbox_id: id.to_owned(),
                    detail: match other {
                        Err(_) => format!("the agent was not ready within {START_TIMEOUT:?}"),
                        _ if why.is_empty() => {
                            "the sandbox ended before the agent was ready".into()
                        }
                        _ => format!("the sandbox ended before the agent was ready: {why}"),
                    },
                })
            }
        }
    }
}

fn ended_cause(
    status: Option<std::process::ExitStatus>,
    stats: &cgroup::Stats,
    stderr: &str,
    runsc_log: &str,
) -> Ended {
    use std::os::unix::process::ExitStatusExt as _;
    if stats.oom_kills > 0 {
        return Ended {
            cause: "oom_killed",
            detail: "the session's memory limit was reached; the OOM killer ended it".into(),
        };
    }
    if stats.pids_max_hits > 0 {
        return Ended {
            cause: "process_limit",
            detail: "the session's process limit backstop was reached".into(),
        };
    }
    if let Some(s) = status
        && s.code() == Some(crate::spec::WHEEL_INSTALL_FAILED)
    {
        let tail: String = stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Ended {
            cause: "dependencies",
            detail: format!("installing the session's packages failed: {tail}"),
        };
    }
    if let Some(sig) = status.and_then(|s| s.signal()) {
        return Ended {
            cause: "killed",
            detail: format!(
                "the sandbox was killed by signal {sig} (closed, lifetime over, or its runner went away)"
            ),
        };
    }
    let last = runsc_log.lines().last().unwrap_or_default();
    Ended {
        cause: "crashed",
        detail: match status.and_then(|s| s.code()) {
            Some(c) if last.is_empty() => format!("the agent exited with status {c}"),
            Some(c) => format!("the sandbox exited with status {c}: {last}"),
            None => "the sandbox ended".into(),
        },
    }
}

/// Cancels an exec whose caller stopped waiting.
struct CancelOnDrop {
    requests: mpsc::UnboundedSender<Vec<u8>>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed
            && let Ok(frame) = protocol::encode(&Request::Cancel { id: self.id })
        {
            let _ = self.requests.send(frame);
        }
    }
}

impl SessionSandbox {
    /// How the sandbox ended on its own, if it has.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.borrow().clone()
    }

    /// Resolves when the sandbox ends on its own.
    pub async fn wait_ended(&self) -> Ended {
        let mut rx = self.ended.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(e) => e.clone().unwrap_or(Ended {
                cause: "crashed",
                detail: "the sandbox ended".into(),
            }),
            Err(_) => Ended {
                cause: "crashed",
                detail: "the sandbox ended".into(),
            },
        }
    }

    fn gone(&self) -> SessionError {
        SessionError::Ended {
            sandbox_id: self.sandbox_id.clone(),
            reason: self
                .ended()
                .map(|e| e.detail)
                .unwrap_or_else(|| "the agent's channel closed".into()),
        }
    }

    fn send(&self, request: &Request) -> Result<(), SessionError> {
        let frame = protocol::encode(request).map_err(|e| SessionError::Refused(e.to_string()))?;
        self.requests.send(frame).map_err(|_| self.gone())
    }

    /// Runs `source` (code for the session's interpreter, or a shell
    /// command), sending output chunks on `chunks` as they come.
    #[allow(clippy::too_many_arguments)]
    pub async fn exec(
        &self,
        kind: ExecKind,
        source: &str,
        stdin: &[u8],
        timeout: Duration,
        max_stdout: u64,
        max_stderr: u64,
        chunks: mpsc::UnboundedSender<Chunk>,
    ) -> Result<ExecDone, SessionError> {
        let mut ch = self.channel.lock().await;
        ch.next_id += 1;
        let id = ch.next_id;
        self.send(&Request::Exec {
            id,
            kind,
            source: source.to_owned(),
            stdin_b64: protocol::b64(stdin),
            timeout_ms: timeout.as_millis().max(1) as u64,
            max_stdout,
            max_stderr,
        })?;
        let mut cancel = CancelOnDrop {
            requests: self.requests.clone(),
            id,
            armed: true,
        };
        let deadline = Instant::now() + timeout + EXEC_GRACE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match tokio::time::timeout(left, ch.replies.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(self.gone()),
                Err(_) => {
                    return Err(SessionError::Unresponsive {
                        step: "exec",
                        sandbox_id: self.sandbox_id.clone(),
                        waited: timeout + EXEC_GRACE,
                    });
                }
            };
            match reply {
                Reply::Out {
                    id: i,
                    stream,
                    data_b64,
                } if i == id => {
                    let data = protocol::unb64(&data_b64)
                        .map_err(|e| SessionError::Refused(e.to_string()))?;
                    let _ = chunks.send(Chunk { stream, data });
                }
                Reply::Done(done) if done.id == id => {
                    cancel.armed = false;
                    return Ok(done);
                }
                // Left over from an abandoned request.
                _ => {}
            }
        }
    }

    /// One non-exec request and its answer.
    async fn call(&self, step: &'static str, request: Request) -> Result<Reply, SessionError> {
        let mut ch = self.channel.lock().await;
        self.send(&request)?;
        loop {
            let reply = match tokio::time::timeout(FILE_OP_TIMEOUT, ch.replies.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(self.gone()),
                Err(_) => {
                    return Err(SessionError::Unresponsive {
                        step,
                        sandbox_id: self.sandbox_id.clone(),
                        waited: FILE_OP_TIMEOUT,
                    });
                }
            };
            match reply {
                // Left over from an abandoned exec.
                Reply::Out { .. } | Reply::Done(_) => continue,
                Reply::Error { message } => return Err(SessionError::Refused(message)),
                other => return Ok(other),
            }
        }
    }

    /// Writes `data` to `path` (relative to the workspace), replacing it.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<u64, SessionError> {
        let mut size = 0;
        let mut first = true;
        let mut chunks = data.chunks(protocol::MAX_CHUNK as usize);
        loop {
            let piece = chunks.next();
            if piece.is_none() && !first {
                break;
            }
            let reply = self
                .call(
                    "write a file",
                    Request::Write {
                        path: path.to_owned(),
                        data_b64: protocol::b64(piece.unwrap_or_default()),
                        append: !first,
                    },
                )
                .await?;
            if let Reply::Ok { size: s } = reply {
                size = s;
            }
            first = false;
        }
        Ok(size)
    }

    /// Reads `path` up to `max` bytes: (content, the file's whole size).
    pub async fn read_file(&self, path: &str, max: u64) -> Result<(Vec<u8>, u64), SessionError> {
        let mut data = Vec::new();
        loop {
            let reply = self
                .call(
                    "read a file",
                    Request::Read {
                        path: path.to_owned(),
                        offset: data.len() as u64,
                        len: (max - data.len() as u64).min(protocol::MAX_CHUNK),
                    },
                )
                .await?;
            let Reply::Data {
                data_b64,
                size,
                eof,
            } = reply
            else {
                return Err(SessionError::Refused("unexpected answer to a read".into()));
            };
            let piece =
                protocol::unb64(&data_b64).map_err(|e| SessionError::Refused(e.to_string()))?;
            let empty = piece.is_empty();
            data.extend(piece);
            if eof || empty || data.len() as u64 >= max {
                return Ok((data, size));
            }
        }
    }

    /// The entries of a directory (relative to the workspace; "" is its root).
    pub async fn list(&self, path: &str, max: u32) -> Result<(Vec<Entry>, bool), SessionError> {
        match self
            .call(
                "list files",
                Request::List {
                    path: path.to_owned(),
                    max,
                },
            )
            .await?
        {
            Reply::Entries { entries, truncated } => Ok((entries, truncated)),
            _ => Err(SessionError::Refused(
                "unexpected answer to a listing".into(),
            )),
        }
    }

    pub async fn delete(&self, path: &str) -> Result<(), SessionError> {
        self.call(
            "delete a file",
            Request::Delete {
                path: path.to_owned(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Is the agent answering?
    pub async fn ping(&self) -> Result<(), SessionError> {
        match self.call("ping", Request::Ping).await? {
            Reply::Pong => Ok(()),
            _ => Err(SessionError::Refused("unexpected answer to a ping".into())),
        }
    }

    /// Stops the sandbox and destroys its workspace (scrubbed), cgroups and
    /// bundle. Never fails: what could not be undone is in the teardown.
    pub async fn close(&self) -> Teardown {
        let guard = self.guard.lock().ok().and_then(|mut g| g.take());
        let Some(mut guard) = guard else {
            return Teardown {
                method: workspace::SCRUB_METHOD.into(),
                complete: true,
                ..Teardown::default()
            };
        };
        guard.armed = false;
        if let Some(mut c) = self.child.lock().await.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
        let backend = self.backend.clone();
        let id = self.sandbox_id.clone();
        tokio::task::spawn_blocking(move || Cleanup::blocking(&backend, &id))
            .await
            .unwrap_or_else(|_| Teardown {
                method: workspace::SCRUB_METHOD.into(),
                error: Some("the cleanup task panicked".into()),
                ..Teardown::default()
            })
    }
}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> SessionError {
        SessionError::Refused(e.to_string())
    }
}
