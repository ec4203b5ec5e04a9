//! The local backend: gVisor `runsc run` with one OCI bundle per execution.
//!
//! Layout under `base_dir` (default `/run/glassbox`): `runsc/` (runsc state root),
//! `bundles/<id>/` (config.json, runsc log), `ws/<id>/` (the workspace tmpfs),
//! and, for the benchmark baseline only, `rootfs/` (a template binding the host's
//! `/usr`). Sandbox roots are the runtimes' images ([`Roots::Images`]), verified
//! against their digests when the backend starts. Sandbox IDs are
//! `gb-<runner>-<12 hex>`, so a restarted runner recognises — and sweeps — exactly
//! what it owns.

mod capture;
pub mod cgroup;
pub mod oci;
pub mod session;
pub mod spawn;
pub mod walk;
pub mod workspace;

use crate::backend::SandboxBackend;
use crate::error::SandboxError;
use crate::result::{ExecutionResult, SweepFailure, SweepReport, Teardown};
use crate::runtime::RuntimeRegistry;
use crate::spec::ExecutionSpec;
use cgroup::Cgroups;
use glassbox_events::catalogue::Outcome;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Configuration of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The runsc binary (a name is looked up in PATH).
    pub runsc: PathBuf,
    /// Distinguishes this runner's sandboxes: `[a-z0-9_]{1,32}`.
    pub runner_id: String,
    pub base_dir: PathBuf,
    pub cgroup_root: PathBuf,
    pub registry: RuntimeRegistry,
    pub roots: Roots,
}

/// Where sandbox roots come from.
#[derive(Debug, Clone)]
pub enum Roots {
    /// Each runtime's image from this store, hashed and compared with its build
    /// when the backend starts (missing or altered: start-up fails). The default.
    Images(glassbox_images::ImageStore),
    /// A shared template that binds the host's `/usr` read-only. It shows the
    /// host's packages to the code: only the sandbox benchmark uses it, as the
    /// baseline images are measured against.
    HostUsrTemplate,
}

/// The root one language's sandboxes run on.
#[derive(Debug, Clone)]
pub struct SandboxRoot {
    pub path: PathBuf,
    /// The image digest (`None` for the host template).
    pub image_digest: Option<String>,
    /// The host template: bind the host's `/usr` into it.
    pub host_usr: bool,
}

impl Default for LocalConfig {
    fn default() -> LocalConfig {
        LocalConfig {
            runsc: PathBuf::from("runsc"),
            runner_id: "local".into(),
            base_dir: PathBuf::from("/run/glassbox"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            registry: RuntimeRegistry::builtin(),
            roots: Roots::Images(glassbox_images::ImageStore::open(
                glassbox_images::default_store_dir(),
            )),
        }
    }
}

#[derive(Debug)]
struct Paths {
    state: PathBuf,
    bundles: PathBuf,
    workspaces: PathBuf,
    rootfs: PathBuf,
}

/// The runsc backend. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct LocalRunsc {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LocalConfig,
    paths: Paths,
    /// Language → its root.
    roots: std::collections::BTreeMap<String, SandboxRoot>,
    live: Mutex<HashSet<String>>,
}

/// Hashes every image the registry's languages use (each once, in parallel) and
/// maps each language to its verified root.
fn verify_images(
    store: &glassbox_images::ImageStore,
    registry: &RuntimeRegistry,
) -> Result<std::collections::BTreeMap<String, SandboxRoot>, SandboxError> {
    let mut images: std::collections::BTreeMap<&str, &glassbox_images::Recipe> =
        std::collections::BTreeMap::new();
    let languages = registry.names();
    for language in &languages {
        let (image, recipe) = registry.image_of(language)?;
        images.insert(image, recipe);
    }
    let verified: Vec<(
        String,
        Result<glassbox_images::VerifiedImage, glassbox_images::ImageError>,
    )> = std::thread::scope(|scope| {
        let handles: Vec<_> = images
            .iter()
            .map(|(name, recipe)| {
                (
                    (*name).to_owned(),
                    scope.spawn(move || store.verify(name, recipe)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(glassbox_images::ImageError::Tool {
                        image: name.clone(),
                        step: "verify",
                        detail: "the verifying thread panicked".into(),
                    })
                });
                (name, r)
            })
            .collect()
    });
    let mut by_image = std::collections::BTreeMap::new();
    for (name, r) in verified {
        let image = r.map_err(|source| SandboxError::Image {
            step: "start-up: verify runtime images",
            source,
        })?;
        by_image.insert(name, image);
    }
    let mut roots = std::collections::BTreeMap::new();
    for language in languages {
        let (image, _) = registry.image_of(&language)?;
        if let Some(v) = by_image.get(image) {
            let root = SandboxRoot {
                path: v.rootfs.clone(),
                image_digest: Some(v.digest.to_string()),
                host_usr: false,
            };
            roots.insert(language, root);
        }
    }
    Ok(roots)
}

impl LocalRunsc {
    /// Checks runsc and cgroups, prepares the directories and root template, and
    /// sweeps whatever an earlier run of this runner left behind.
    pub async fn start(config: LocalConfig) -> Result<(LocalRunsc, SweepReport), SandboxError> {
        let ok_id = !config.runner_id.is_empty()
            && config.runner_id.len() <= 32
            && config
                .runner_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok_id {
            return Err(SandboxError::InvalidSpec(format!(
                "runner id {:?} must match [a-z0-9_]{{1,32}}",
                config.runner_id
            )));
        }
        let version = tokio::process::Command::new(&config.runsc)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await;
        match version {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(SandboxError::RunscMissing {
                    step: "start-up: runsc --version",
                    sandbox_id: "-".into(),
                    path: config.runsc.clone(),
                    detail: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                });
            }
            Err(e) => {
                return Err(SandboxError::RunscMissing {
                    step: "start-up: runsc --version",
                    sandbox_id: "-".into(),
                    path: config.runsc.clone(),
                    detail: e.to_string(),
                });
            }
        }
        Cgroups::check_host(&config.cgroup_root)?;
        spawn::check_tools().map_err(|detail| SandboxError::Unsupported {
            step: "start-up: sandbox watchdog tools",
            detail,
        })?;
        let base = &config.base_dir;
        let paths = Paths {
            state: base.join("runsc"),
            bundles: base.join("bundles"),
            workspaces: base.join("ws"),
            rootfs: base.join("rootfs"),
        };
        for d in [&paths.state, &paths.bundles, &paths.workspaces] {
            std::fs::create_dir_all(d).map_err(|source| SandboxError::Io {
                step: "start-up: create directories",
                sandbox_id: "-".into(),
                path: d.clone(),
                source,
            })?;
        }
        let roots = match &config.roots {
            Roots::Images(store) => {
                let (store, registry) = (store.clone(), config.registry.clone());
                tokio::task::spawn_blocking(move || verify_images(&store, &registry))
                    .await
                    .map_err(|e| SandboxError::Unsupported {
                        step: "start-up: verify runtime images",
                        detail: e.to_string(),
                    })??
            }
            Roots::HostUsrTemplate => {
                let binds: Vec<&Path> = oci::BASE_BINDS.iter().map(Path::new).collect();
                oci::ensure_rootfs(&paths.rootfs, &binds).map_err(|source| SandboxError::Io {
                    step: "start-up: prepare root template",
                    sandbox_id: "-".into(),
                    path: paths.rootfs.clone(),
                    source,
                })?;
                config
                    .registry
                    .names()
                    .into_iter()
                    .map(|language| {
                        let root = SandboxRoot {
                            path: paths.rootfs.clone(),
                            image_digest: None,
                            host_usr: true,
                        };
                        (language, root)
                    })
                    .collect()
            }
        };
        let backend = LocalRunsc {
            inner: Arc::new(Inner {
                config,
                paths,
                roots,
                live: Mutex::new(HashSet::new()),
            }),
        };
        let report = backend.sweep_now().await?;
        Ok((backend, report))
    }

    /// The root `language`'s sandboxes run on.
    pub fn root(&self, language: &str) -> Result<&SandboxRoot, SandboxError> {
        self.inner.roots.get(language).ok_or_else(|| {
            SandboxError::UnknownLanguage(
                language.to_owned(),
                self.inner.config.registry.names().join(", "),
            )
        })
    }

    fn prefix(&self) -> String {
        format!("gb-{}-", self.inner.config.runner_id)
    }

    /// A fresh sandbox ID of this runner (`gb-<runner>-<12 hex>`).
    fn new_sandbox_id(&self) -> String {
        format!(
            "{}{}",
            self.prefix(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    }

    fn owns(&self, id: &str) -> bool {
        id.strip_prefix(&self.prefix())
            .is_some_and(|rest| rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    /// Where the runsc state of sandbox `id` would be.
    pub fn state_dir(&self) -> &Path {
        &self.inner.paths.state
    }

    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.inner.paths.bundles.join(id)
    }

    pub fn workspace_dir(&self, id: &str) -> PathBuf {
        self.inner.paths.workspaces.join(id)
    }

    pub fn cgroups(&self, id: &str) -> Cgroups {
        Cgroups::new(&self.inner.config.cgroup_root, id)
    }

    fn runsc(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.inner.config.runsc);
        c.arg("--root").arg(&self.inner.paths.state);
        c
    }

    async fn sweep_now(&self) -> Result<SweepReport, SandboxError> {
        let mut report = SweepReport::default();
        let live: HashSet<String> = self
            .inner
            .live
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let stale = |id: &str| self.owns(id) && !live.contains(id);
        // 1. runsc's own state.
        let out = self
            .runsc()
            .args(["list", "--format=json"])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| SandboxError::RunscMissing {
                step: "sweep: runsc list",
                sandbox_id: "-".into(),
                path: self.inner.config.runsc.clone(),
                detail: e.to_string(),
            })?;
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .ok()
            .and_then(|v: serde_json::Value| v.as_array().cloned())
            .unwrap_or_default();
        let mut ids: Vec<String> = listed
            .iter()
            .filter_map(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
            .collect();
        // Lock or state files of sandboxes that never fully started.
        if let Ok(entries) = std::fs::read_dir(&self.inner.paths.state) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some((id, _)) = name.split_once("_sandbox:")
                    && !ids.iter().any(|i| i == id)
                {
                    ids.push(id.to_owned());
                }
            }
        }
        for id in ids.into_iter().filter(|i| stale(i)) {
            let backend = self.clone();
            let stale_id = id.clone();
            if tokio::task::spawn_blocking(move || backend.destroy_sandbox_blocking(&stale_id))
                .await
                .is_err()
            {
                report.failures.push(SweepFailure {
                    sandbox_id: id.clone(),
                    step: "delete the runsc sandbox".into(),
                    detail: "the cleanup task panicked".into(),
                });
            }
            report.sandboxes.push(id);
        }
        // 2. Workspaces, bundles and cgroups. One that cannot be removed is
        // reported and the sweep goes on: a single broken leftover must not
        // keep a runner from starting.
        for (dir, kind) in [
            (&self.inner.paths.workspaces, 0),
            (&self.inner.paths.bundles, 1),
        ] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.filter_map(Result::ok) {
                let id = e.file_name().to_string_lossy().into_owned();
                if !stale(&id) {
                    continue;
                }
                if kind == 0 {
                    let ws = e.path();
                    match tokio::task::spawn_blocking(move || workspace::destroy(&ws)).await {
                        Ok(t) => {
                            report.bytes_scrubbed += t.bytes_scrubbed;
                            if let Some(detail) = t.error {
                                report.failures.push(SweepFailure {
                                    sandbox_id: id.clone(),
                                    step: "scrub the workspace".into(),
                                    detail,
                                });
                            }
                        }
                        Err(_) => report.failures.push(SweepFailure {
                            sandbox_id: id.clone(),
                            step: "scrub the workspace".into(),
                            detail: "the scrub task panicked".into(),
                        }),
                    }
                    report.workspaces.push(id);
                } else {
                    if let Err(e) = std::fs::remove_dir_all(e.path()) {
                        report.failures.push(SweepFailure {
                            sandbox_id: id.clone(),
                            step: "remove the bundle".into(),
                            detail: e.to_string(),
                        });
                    }
                    report.bundles.push(id);
                }
            }
        }
        for c in cgroup::ALL {
            let parent = self.inner.config.cgroup_root.join(c).join(cgroup::PARENT);
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for e in entries.filter_map(Result::ok) {
                let id = e.file_name().to_string_lossy().into_owned();
                if stale(&id) && e.path().is_dir() {
                    for removed in self.cgroups(&id).remove_all() {
                        report.cgroups.push(removed.display().to_string());
                    }
                }
            }
        }
        if report != SweepReport::default() {
            tracing::info!(
                sandboxes = report.sandboxes.len(),
                workspaces = report.workspaces.len(),
                failures = report.failures.len(),
                "swept stale sandboxes of this runner"
            );
        }
        Ok(report)
    }

    /// runsc's state and lock files of sandbox `id`.
    fn state_files(&self, id: &str) -> Vec<PathBuf> {
        let prefix = format!("{id}_sandbox:");
        std::fs::read_dir(&self.inner.paths.state)
            .map(|it| {
                it.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills and deletes a sandbox's runsc state, ignoring "not found"
    /// (blocking: used by the sweep and by `Cleanup`, which may run in `Drop`).
    fn destroy_sandbox_blocking(&self, id: &str) {
        for args in [
            &["kill", "--all", id, "KILL"][..],
            &["delete", "--force", id][..],
        ] {
            let _ = std::process::Command::new(&self.inner.config.runsc)
                .arg("--root")
                .arg(&self.inner.paths.state)
                .args(args)
                .stdin(Stdio::null())
                .output();
        }
        for f in self.state_files(id) {
            let _ = std::fs::remove_file(f);
        }
    }

    async fn run(
        &self,
        spec: ExecutionSpec,
        cancel: CancellationToken,
        id: String,
        progress: Option<tokio::sync::mpsc::UnboundedSender<crate::backend::Progress>>,
    ) -> Result<ExecutionResult, SandboxError> {
        let tell = |p: crate::backend::Progress| {
            if let Some(tx) = &progress {
                let _ = tx.send(p);
            }
        };
        let registry = &self.inner.config.registry;
        let runtime = registry.get(&spec.language)?.clone();
        // Phase spans: each lives from its phase's start to its end (the
        // exporter takes creation and close as the span's times).
        let provisioning = Instant::now();
        let provision =
            tracing::info_span!("sandbox.provision", sandbox_id = %id, runtime = %spec.language);
        let bundle = self.bundle_dir(&id);
        let ws = self.workspace_dir(&id);
        let cg = self.cgroups(&id);
        let limits = spec.limits.clone();

        std::fs::create_dir_all(&bundle).map_err(|source| SandboxError::Io {
            step: "prepare bundle",
            sandbox_id: id.clone(),
            path: bundle.clone(),
            source,
        })?;
        workspace::mount(&id, &ws, limits.workspace_bytes)?;
        workspace::write_inputs(&id, &ws, &runtime.file_name, &spec)?;
        cg.create(
            limits.memory_bytes,
            oci::pids_backstop(limits.processes),
            oci::cpu_quota_us(limits.cpu_millicores),
            oci::CPU_PERIOD_US,
        )?;
        let root = self.root(&spec.language)?.clone();
        let config = oci::config(&spec, &runtime, &root, &ws, &cg.cgroups_path());
        let config_path = bundle.join("config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).unwrap_or_default(),
        )
        .map_err(|source| SandboxError::Io {
            step: "write config.json",
            sandbox_id: id.clone(),
            path: config_path.clone(),
            source,
        })?;
        let log = bundle.join("runsc.log");
        tell(crate::backend::Progress::Provisioned {
            sandbox_id: id.clone(),
            runtime: format!("{}-{}", spec.language, runtime.version),
            image_digest: root.image_digest.clone(),
        });
        drop(provision);

        let execute = tracing::info_span!(
            "sandbox.execute",
            sandbox_id = %id,
            outcome = tracing::field::Empty,
            exit_code = tracing::field::Empty,
        );
        let started = Instant::now();
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
            .arg(&id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = spawn::spawn(cmd)
            .await
            .map_err(|e| SandboxError::RunscMissing {
                step: "start sandbox",
                sandbox_id: id.clone(),
                path: self.inner.config.runsc.clone(),
                detail: e.to_string(),
            })?;
        crate::metrics::sandbox_started("job", &spec.language, provisioning.elapsed());
        tell(crate::backend::Progress::Started {
            sandbox_id: id.clone(),
        });
        let stdin = child.stdin.take();
        let input = spec.stdin.clone();
        let writer = tokio::spawn(async move {
            if let Some(mut s) = stdin {
                let _ = s.write_all(&input).await;
                let _ = s.shutdown().await;
            }
        });
        let out_task = child
            .stdout
            .take()
            .map(|s| tokio::spawn(capture::drain(s, limits.stdout_bytes)));
        let err_task = child
            .stderr
            .take()
            .map(|s| tokio::spawn(capture::drain(s, limits.stderr_bytes)));

        let (mut timed_out, mut cancelled) = (false, false);
        let status = tokio::select! {
            s = child.wait() => Some(s),
            _ = tokio::time::sleep(limits.wall_time()) => { timed_out = true; None }
            _ = cancel.cancelled() => { cancelled = true; None }
        };
        let status = match status {
            Some(s) => s,
            None => {
                let _ = self
                    .runsc()
                    .args(["kill", "--all", &id, "KILL"])
                    .stdin(Stdio::null())
                    .output()
                    .await;
                match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                }
            }
        }
        .map_err(|source| SandboxError::Io {
            step: "wait for sandbox",
            sandbox_id: id.clone(),
            path: bundle.clone(),
            source,
        })?;
        let wall = started.elapsed();
        let collect_span = tracing::info_span!(parent: &execute, "sandbox.collect", sandbox_id = %id, files = tracing::field::Empty);
        writer.abort();
        let collect = |t: Option<tokio::task::JoinHandle<crate::result::Captured>>| async move {
            match t {
                Some(t) => tokio::time::timeout(Duration::from_secs(5), t)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default(),
                None => Default::default(),
            }
        };
        let stdout = collect(out_task).await;
        let stderr = collect(err_task).await;

        let stats = cg.stats();
        let runsc_log = std::fs::read_to_string(&log).unwrap_or_default();
        let code = status.code();
        use std::os::unix::process::ExitStatusExt as _;
        let (outcome, exit_code, signal, detail) = classify(
            timed_out,
            cancelled,
            &stats,
            code,
            status.signal(),
            runsc_log.trim(),
        );
        let collected = {
            let ws = ws.clone();
            let (max_files, max_bytes) = (limits.output_files, limits.output_bytes);
            tokio::task::spawn_blocking(move || workspace::collect(&ws, max_files, max_bytes))
                .await
                .unwrap_or_default()
        };
        collect_span.record("files", collected.files.len());
        drop(collect_span);
        execute.record("outcome", outcome.as_str());
        if let Some(c) = exit_code {
            execute.record("exit_code", c);
        }
        drop(execute);
        crate::metrics::execution_finished("job", &spec.language, outcome.as_str(), wall);
        Ok(ExecutionResult {
            sandbox_id: id.clone(),
            backend: "runsc",
            runtime: format!("{}-{}", spec.language, runtime.version),
            outcome,
            exit_code,
            signal,
            detail,
            wall_ms: wall.as_millis() as u64,
            cpu_ms: stats.cpu_ns.map(|ns| ns / 1_000_000),
            peak_memory_bytes: stats.peak_memory_bytes,
            stdout,
            stderr,
            files: collected.files,
            files_truncated: collected.truncated,
            skipped: collected.skipped,
            skipped_total: collected.skipped_total,
            teardown: Teardown::default(),
        })
    }
}

/// Decides the outcome. Order matters: our own timeout/cancel flags, then the OOM
/// counter, then the pids backstop, then runsc's own failure, then the exit status.
fn classify(
    timed_out: bool,
    cancelled: bool,
    stats: &cgroup::Stats,
    code: Option<i32>,
    host_signal: Option<i32>,
    runsc_log: &str,
) -> (Outcome, Option<i32>, Option<i32>, Option<String>) {
    let signal_of = |c: i32| (129..=192).contains(&c).then_some(c - 128);
    if cancelled {
        return (Outcome::Cancelled, code, Some(9), None);
    }
    if timed_out {
        return (Outcome::TimedOut, code, Some(9), None);
    }
    if stats.oom_kills > 0 {
        return (
            Outcome::OomKilled,
            code,
            Some(9),
            Some("memory limit reached; killed by the OOM killer".into()),
        );
    }
    if stats.pids_max_hits > 0 {
        return (
            Outcome::Crashed,
            code,
            Some(9),
            Some("process limit backstop reached; the sandbox was killed".into()),
        );
    }
    if let Some(sig) = host_signal {
        return (
            Outcome::Crashed,
            None,
            Some(sig),
            Some(format!("runsc was killed by signal {sig}")),
        );
    }
    if !runsc_log.is_empty() {
        let last = runsc_log.lines().last().unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(last)
            .ok()
            .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| last.to_owned());
        return (Outcome::Crashed, code, None, Some(msg));
    }
    match code {
        Some(0) => (Outcome::Succeeded, Some(0), None, None),
        Some(c) => (Outcome::Failed, Some(c), signal_of(c), None),
        None => (Outcome::Crashed, None, None, Some("no exit status".into())),
    }
}

/// Undoes everything an execution created, on every path. Armed until the normal
/// path has run it; if the execution future is dropped or panics, `Drop` runs the
/// same steps on a separate thread.
struct Cleanup {
    backend: LocalRunsc,
    id: String,
    armed: bool,
}

impl Cleanup {
    /// Never fails: what could not be undone is in the returned teardown.
    fn blocking(backend: &LocalRunsc, id: &str) -> Teardown {
        if !backend.state_files(id).is_empty() {
            backend.destroy_sandbox_blocking(id);
        }
        let mut teardown = workspace::destroy(&backend.workspace_dir(id));
        backend.cgroups(id).remove_all();
        if let Err(e) = std::fs::remove_dir_all(backend.bundle_dir(id))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            teardown.complete = false;
            let more = format!("remove the bundle: {e}");
            teardown.error = Some(match teardown.error.take() {
                Some(prev) => format!("{prev}; {more}"),
                None => more,
            });
        }
        if let Ok(mut live) = backend.inner.live.lock() {
            live.remove(id);
        }
        teardown
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (backend, id) = (self.backend.clone(), self.id.clone());
        tracing::warn!(sandbox_id = %id, "execution abandoned; cleaning up in the background");
        std::thread::spawn(move || {
            // Give kill_on_drop's SIGKILL to `runsc run` a moment to land.
            std::thread::sleep(Duration::from_millis(100));
            let t = Cleanup::blocking(&backend, &id);
            if let Some(e) = t.error {
                tracing::error!(sandbox_id = %id, error = %e, "cleanup after abandoned execution was incomplete");
            }
        });
    }
}

impl SandboxBackend for LocalRunsc {
    fn name(&self) -> &'static str {
        "runsc"
    }

    async fn execute(
        &self,
        spec: ExecutionSpec,
        cancel: CancellationToken,
    ) -> Result<ExecutionResult, SandboxError> {
        self.execute_observed(spec, cancel, None).await
    }

    async fn execute_observed(
        &self,
        spec: ExecutionSpec,
        cancel: CancellationToken,
        progress: Option<tokio::sync::mpsc::UnboundedSender<crate::backend::Progress>>,
    ) -> Result<ExecutionResult, SandboxError> {
        spec.validate()?;
        self.inner.config.registry.get(&spec.language)?;
        let id = self.new_sandbox_id();
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(id.clone());
        }
        let mut guard = Cleanup {
            backend: self.clone(),
            id: id.clone(),
            armed: true,
        };
        let result = self.run(spec, cancel, id.clone(), progress).await;
        guard.armed = false;
        let backend = self.clone();
        let cleanup_id = id.clone();
        let teardown_span = tracing::info_span!("sandbox.teardown", sandbox_id = %id);
        let teardown =
            tokio::task::spawn_blocking(move || Cleanup::blocking(&backend, &cleanup_id))
                .instrument(teardown_span)
                .await
                .unwrap_or_else(|_| Teardown {
                    method: workspace::SCRUB_METHOD.into(),
                    error: Some("the cleanup task panicked".into()),
                    ..Teardown::default()
                });
        let mut result = result?;
        result.teardown = teardown;
        Ok(result)
    }

    async fn sweep(&self) -> Result<SweepReport, SandboxError> {
        self.sweep_now().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(oom: u64, pids: u64) -> cgroup::Stats {
        cgroup::Stats {
            oom_kills: oom,
            pids_max_hits: pids,
            ..Default::default()
        }
    }

    #[test]
    fn outcome_classification_order() {
        let s0 = stats(0, 0);
        assert_eq!(
            classify(false, false, &s0, Some(0), None, "").0,
            Outcome::Succeeded
        );
        assert_eq!(
            classify(false, false, &s0, Some(3), None, ""),
            (Outcome::Failed, Some(3), None, None)
        );
        assert_eq!(classify(false, false, &s0, Some(139), None, "").2, Some(11));
        // Our own flags win over what the kill looks like.
        assert_eq!(
            classify(true, false, &stats(1, 0), Some(137), None, "").0,
            Outcome::TimedOut
        );
        assert_eq!(
            classify(false, true, &s0, Some(137), None, "").0,
            Outcome::Cancelled
        );
        assert_eq!(
            classify(false, false, &stats(1, 0), Some(137), None, "").0,
            Outcome::OomKilled
        );
        assert_eq!(
            classify(false, false, &stats(0, 1), Some(2), None, "").0,
            Outcome::Crashed
        );
        let (o, _, _, detail) = classify(
            false,
            false,
            &s0,
            Some(128),
            None,
            "{\"msg\":\"starting container: no such file\",\"level\":\"error\"}",
        );
        assert_eq!(o, Outcome::Crashed);
        assert_eq!(detail.as_deref(), Some("starting container: no such file"));
    }
}
