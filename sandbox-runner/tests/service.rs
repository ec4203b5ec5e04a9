//! The runner service against the real PostgreSQL and runsc: a runner process
//! killed with SIGKILL mid-job is replaced by another runner that re-executes the
//! job once its lease expires; exactly one `execution.finished` is the result,
//! and the projections rebuilt from the ledger equal the live ones.

use glassbox_events::Actor;
use glassbox_events::catalogue::{self, BlobRef, Limits};
use glassbox_events::store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StoredRecord};
use glassbox_events::testing::TestDb;
use glassbox_platform::blob::{Backend, BlobStore, Kek};
use glassbox_sandbox_runner::service::{Runner, RunnerConfig, SecretProvider};
use glassbox_sandbox_runner::{LocalConfig, LocalRunsc};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BASE: &str = "/run/glassbox-test";

fn runner_id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

async fn submit(store: &EventStore, blobs: &BlobStore, code: &str, wall_ms: u64) -> String {
    submit_with(store, blobs, code, wall_ms, |_, _| Vec::new()).await
}

/// Submits a job (as the control plane records it); `extra` adds events
/// between `job.submitted` (whose data it may change) and `job.accepted`.
async fn submit_with(
    store: &EventStore,
    blobs: &BlobStore,
    code: &str,
    wall_ms: u64,
    extra: impl FnOnce(&str, &mut catalogue::JobSubmitted) -> Vec<NewEvent>,
) -> String {
    let job = uuid::Uuid::new_v4().to_string();
    blobs.create_data_key(&job, "acme").await.expect("key");
    let b = blobs
        .put(&job, &format!("jobs/{job}/code"), code.as_bytes())
        .await
        .expect("code blob");
    let stream = format!("job-{job}");
    let limits = Limits {
        wall_time_ms: Some(wall_ms),
        ..Limits::default()
    };
    let mut submitted = catalogue::JobSubmitted {
        job_id: job.clone(),
        language: "python".into(),
        code: BlobRef {
            hmac: b.hmac,
            size_bytes: b.size_bytes,
            key: b.key,
        },
        stdin: None,
        args: None,
        arg_count: 0,
        env: None,
        env_count: 0,
        files: vec![],
        file_paths: None,
        dependencies: vec![],
        secrets: vec![],
        limits: limits.clone(),
        idempotency_key: None,
        egress: vec![],
    };
    let more = extra(&stream, &mut submitted);
    let mut events = vec![NewEvent::typed(&stream, &submitted).expect("event")];
    events.extend(more);
    events.push(
        NewEvent::typed(
            &stream,
            &catalogue::JobAccepted {
                job_id: job.clone(),
                effective_limits: submitted.limits.clone(),
            },
        )
        .expect("event"),
    );
    store
        .append(
            AppendRequest::new("acme", Actor::system("test"), events)
                .expect(stream, ExpectedVersion::NoStream),
        )
        .await
        .expect("append");
    job
}

async fn stream(store: &EventStore, job: &str) -> Vec<StoredRecord> {
    store
        .read_stream(&format!("job-{job}"), 1, 1000)
        .await
        .expect("stream")
}

fn count(records: &[StoredRecord], t: &str) -> usize {
    records.iter().filter(|r| r.record.event_type == t).count()
}

async fn until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Processes whose command line names a sandbox ID starting with `prefix`.
fn sandbox_processes(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(prefix)
        {
            found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    found
}

/// A fresh database, blob store and projector for one test.
struct Env {
    db: TestDb,
    store: EventStore,
    blobs: BlobStore,
    data_dir: PathBuf,
    stop: CancellationToken,
}

async fn env() -> Env {
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    let data_dir = std::env::temp_dir().join(format!("glassbox-runner-test-{}", db.name));
    std::fs::create_dir_all(&data_dir).expect("dir");
    let blobs = BlobStore::new(
        &Backend::Local(data_dir.join("blobs")),
        db.pool.clone(),
        Kek::load_or_generate(&data_dir.join("kek")).expect("kek"),
    )
    .expect("blobs");
    let stop = CancellationToken::new();
    tokio::spawn(glassbox_projector::Projector::new(store.clone()).run(None, stop.clone()));
    Env {
        db,
        store,
        blobs,
        data_dir,
        stop,
    }
}

impl Env {
    async fn close(self) {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
        self.db.drop_db().await;
    }

    /// Every file name under the blob directory.
    fn blob_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut stack = vec![self.data_dir.join("blobs")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                names.push(e.file_name().to_string_lossy().into_owned());
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        names
    }
}

async fn append_events(store: &EventStore, events: Vec<NewEvent>) {
    store
        .append(AppendRequest::new("acme", Actor::system("ghost"), events))
        .await
        .expect("append");
}

fn claim(job: &str, attempt: u64, lease: chrono::DateTime<chrono::Utc>) -> NewEvent {
    NewEvent::typed(
        format!("job-{job}"),
        &catalogue::ExecutionClaimed {
            runner: "ghost".into(),
            attempt,
            lease_expires_at: lease.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        },
    )
    .expect("claim")
}

fn types(records: &[StoredRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.record.event_type.clone())
        .collect()
}

/// A one-slot runner in this process, on the real runsc backend.
async fn in_process_runner(
    store: &EventStore,
    blobs: &BlobStore,
    id: &str,
    lease_grace: Duration,
) -> Arc<Runner<LocalRunsc>> {
    runner_with(store, blobs, id, lease_grace, SecretProvider::None).await
}

async fn runner_with(
    store: &EventStore,
    blobs: &BlobStore,
    id: &str,
    lease_grace: Duration,
    secrets: SecretProvider,
) -> Arc<Runner<LocalRunsc>> {
    let (backend, _) = LocalRunsc::start(LocalConfig {
        runner_id: id.to_owned(),
        base_dir: PathBuf::from(BASE),
        ..LocalConfig::default()
    })
    .await
    .expect("runsc backend");
    let engine = Arc::new(
        glassbox_policies::PolicyEngine::new(&glassbox_policies::Bundle::builtin())
            .expect("engine"),
    );
    Runner::new(
        store.clone(),
        blobs.clone(),
        engine,
        backend,
        RunnerConfig {
            runner_id: id.to_owned(),
            slots: 1,
            lease_grace,
            secrets,
            wheel_mirror: None,
            max_attempts: glassbox_sandbox_runner::service::DEFAULT_MAX_ATTEMPTS,
            egress: Default::default(),
        },
    )
}

fn spawn_runner_process(db_url: &str, data_dir: &Path, id: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-runner"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GLASSBOX_ENV", "test")
        .env("GLASSBOX_DATABASE_URL", db_url)
        .env("GLASSBOX_DATA_DIR", data_dir)
        .env("GLASSBOX_RUNNER_ID", id)
        .env("GLASSBOX_RUNNER_SLOTS", "1")
        .env("GLASSBOX_RUNNER_LEASE_GRACE_SECS", "1")
        .env("GLASSBOX_SANDBOX_DIR", BASE)
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(data_dir.join(format!("{id}.log")))
                .map(std::process::Stdio::from)
                .unwrap_or_else(|_| std::process::Stdio::null()),
        )
        .spawn()
        .expect("runner process")
}

#[tokio::test]
async fn a_runner_killed_mid_job_is_replaced_and_exactly_one_result_counts() {
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    let data_dir = std::env::temp_dir().join(format!("glassbox-runner-test-{}", db.name));
    std::fs::create_dir_all(&data_dir).expect("dir");
    let kek_path: PathBuf = data_dir.join("kek");
    let blobs = BlobStore::new(
        &Backend::Local(data_dir.join("blobs")),
        db.pool.clone(),
        Kek::load_or_generate(&kek_path).expect("kek"),
    )
    .expect("blobs");
    let stop = CancellationToken::new();
    tokio::spawn(glassbox_projector::Projector::new(store.clone()).run(None, stop.clone()));

    // Runner A, a separate process, takes the job and is killed while it runs.
    let code = "import time\nprint('started', flush=True)\ntime.sleep(3)\nprint('done')\n";
    let job = submit(&store, &blobs, code, 4000).await;
    let a_id = runner_id("killa");
    let mut a = spawn_runner_process(&db.url, &data_dir, &a_id);
    let a_log = data_dir.join(format!("{a_id}.log"));
    until(
        &format!("runner A to start the job (log: {})", a_log.display()),
        Duration::from_secs(60),
        async || count(&stream(&store, &job).await, "execution.started") == 1,
    )
    .await;
    a.kill().expect("SIGKILL runner A");
    let _ = a.wait();
    let killed_at = Instant::now();

    // Runner B (in this process) waits for A's lease to expire, then re-runs it.
    let b_id = runner_id("takeb");
    let runner = in_process_runner(&store, &blobs, &b_id, Duration::from_secs(1)).await;
    tokio::spawn(runner.run(stop.clone()));
    until("the job to complete", Duration::from_secs(90), async || {
        count(&stream(&store, &job).await, "job.completed") == 1
    })
    .await;
    let records = stream(&store, &job).await;
    let claims: Vec<&StoredRecord> = records
        .iter()
        .filter(|r| r.record.event_type == "execution.claimed")
        .collect();
    assert_eq!(claims.len(), 2, "one claim per attempt");
    assert_eq!(claims[0].record.data["runner"], a_id.as_str());
    assert_eq!(claims[1].record.data["runner"], b_id.as_str());
    assert_eq!(claims[1].record.data["attempt"], 2);
    assert!(
        killed_at.elapsed() >= Duration::from_millis(500),
        "B waited for the lease"
    );
    assert_eq!(
        count(&records, "execution.finished"),
        1,
        "exactly one result"
    );
    let finished = records
        .iter()
        .find(|r| r.record.event_type == "execution.finished")
        .expect("finished");
    assert_eq!(finished.record.data["attempt"], 2);
    assert_eq!(finished.record.data["outcome"], "succeeded");
    let out = finished.record.data["stdout"]["blob"]["key"]
        .as_str()
        .expect("stdout key");
    assert_eq!(
        blobs.get(&job, out).await.expect("stdout"),
        b"started\ndone\n"
    );

    // Projections rebuilt from the ledger equal the live ones.
    let p = glassbox_projector::Projector::new(store.clone());
    let (head, _) = store.head().await.expect("head");
    until(
        "the projection to catch up",
        Duration::from_secs(30),
        async || p.position().await.map(|x| x >= head).unwrap_or(false),
    )
    .await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = glassbox_projector::snapshot(&db.pool)
        .await
        .expect("snapshot");
    let job_row = live["projections.jobs"][0].clone();
    assert_eq!(job_row["status"], "completed");
    assert_eq!(job_row["state"]["attempt"], 2);
    p.rebuild().await.expect("rebuild");
    assert_eq!(
        glassbox_projector::snapshot(&db.pool)
            .await
            .expect("snapshot"),
        live
    );

    // A restarted runner A sweeps what the killed process left behind.
    let (_, swept) = LocalRunsc::start(LocalConfig {
        runner_id: a_id.clone(),
        base_dir: PathBuf::from(BASE),
        ..LocalConfig::default()
    })
    .await
    .expect("restart A");
    assert!(
        !swept.workspaces.is_empty() || !swept.sandboxes.is_empty(),
        "{swept:?}"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
    db.drop_db().await;
}

#[tokio::test]
async fn a_late_finish_of_an_earlier_attempt_wins_and_the_later_one_is_superseded() {
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    let data_dir = std::env::temp_dir().join(format!("glassbox-runner-test-{}", db.name));
    std::fs::create_dir_all(&data_dir).expect("dir");
    let blobs = BlobStore::new(
        &Backend::Local(data_dir.join("blobs")),
        db.pool.clone(),
        Kek::load_or_generate(&data_dir.join("kek")).expect("kek"),
    )
    .expect("blobs");
    let stop = CancellationToken::new();
    tokio::spawn(glassbox_projector::Projector::new(store.clone()).run(None, stop.clone()));
    let job = submit(
        &store,
        &blobs,
        "import time\ntime.sleep(2)\nprint('attempt two')\n",
        5000,
    )
    .await;
    // A "ghost" runner claimed attempt 1 long ago; its lease has expired.
    let s = format!("job-{job}");
    let claim = NewEvent::typed(
        &s,
        &catalogue::ExecutionClaimed {
            runner: "ghost".into(),
            attempt: 1,
            lease_expires_at: "2020-01-01T00:00:00.000Z".into(),
        },
    )
    .expect("claim");
    store
        .append(AppendRequest::new(
            "acme",
            Actor::system("ghost"),
            vec![claim],
        ))
        .await
        .expect("ghost claim");
    let id = runner_id("late");
    let runner = in_process_runner(&store, &blobs, &id, Duration::from_secs(30)).await;
    tokio::spawn(runner.run(stop.clone()));
    until("attempt 2 to start", Duration::from_secs(60), async || {
        count(&stream(&store, &job).await, "execution.started") == 1
    })
    .await;
    // The ghost was alive after all and reports attempt 1 first.
    let out = glassbox_events::catalogue::OutputRef {
        blob: None,
        size_bytes: 0,
        truncated: false,
    };
    let late = NewEvent::typed(
        &s,
        &catalogue::ExecutionFinished {
            attempt: 1,
            outcome: catalogue::Outcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            wall_ms: 10,
            cpu_ms: None,
            peak_memory_bytes: None,
            stdout: out.clone(),
            stderr: out,
            artifact_index: None,
            artifacts_skipped: 0,
        },
    )
    .expect("finish");
    store
        .append(AppendRequest::new(
            "acme",
            Actor::system("ghost"),
            vec![late],
        ))
        .await
        .expect("ghost finish");
    until("the job to end", Duration::from_secs(60), async || {
        count(&stream(&store, &job).await, "job.completed") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = stream(&store, &job).await;
    assert_eq!(count(&records, "execution.finished"), 1, "one result");
    let sup = records
        .iter()
        .find(|r| r.record.event_type == "execution.superseded")
        .expect("attempt 2 is recorded as superseded");
    assert_eq!(sup.record.data["attempt"], 2);
    assert_eq!(sup.record.data["winning_attempt"], 1);
    assert_eq!(count(&records, "job.completed"), 1);
    assert_eq!(
        count(&records, "artifact.stored"),
        0,
        "a superseded attempt stores no result"
    );
    assert_eq!(
        count(&records, "workspace.destroyed"),
        1,
        "its workspace is still accounted for"
    );
    stop.cancel();
    let _ = std::fs::remove_dir_all(&data_dir);
    db.drop_db().await;
}

#[tokio::test]
async fn a_deep_tree_and_a_255_byte_output_name_end_the_job_once_and_the_runner_stays_up() {
    let e = env().await;
    let code = r#"
import os
name = 'd' * 200
for base in ('/workspace', '/workspace/out'):
    os.chdir(base)
    for i in range(1000):
        os.mkdir(name)
        os.chdir(name)
os.chdir('/workspace/out')
open('n' * 255, 'w').write('long name')
print('built')
"#;
    let job = submit(&e.store, &e.blobs, code, 30_000).await;
    let id = runner_id("deep");
    let runner = in_process_runner(&e.store, &e.blobs, &id, Duration::from_secs(2)).await;
    tokio::spawn(runner.clone().run(e.stop.clone()));
    until("the job to end", Duration::from_secs(90), async || {
        count(&stream(&e.store, &job).await, "job.completed") == 1
    })
    .await;
    let records = stream(&e.store, &job).await;
    assert_eq!(
        count(&records, "execution.claimed"),
        1,
        "{:?}",
        types(&records)
    );
    assert_eq!(count(&records, "execution.finished"), 1);
    let finished = records
        .iter()
        .find(|r| r.record.event_type == "execution.finished")
        .expect("finished");
    assert_eq!(finished.record.data["outcome"], "succeeded");
    let destroyed = records
        .iter()
        .find(|r| r.record.event_type == "workspace.destroyed")
        .expect("destroyed");
    assert_eq!(
        destroyed.record.data["complete"], true,
        "{:?}",
        destroyed.record.data
    );
    // The long name is the program's data: in the encrypted index, not in any
    // record, read model or blob name.
    let long = "n".repeat(255);
    for r in &records {
        assert!(!String::from_utf8_lossy(&r.canonical).contains(&long[..40]));
    }
    assert!(
        e.blob_names().iter().all(|n| !n.contains(&long[..40])),
        "{:?}",
        e.blob_names()
    );
    let index_key = finished.record.data["artifact_index"]["key"]
        .as_str()
        .expect("index");
    let index: Vec<String> =
        serde_json::from_slice(&e.blobs.get(&job, index_key).await.expect("index")).expect("json");
    assert!(index.contains(&long), "{index:?}");
    // The same runner goes on with the next job.
    let next = submit(&e.store, &e.blobs, "print('next')", 10_000).await;
    until("the next job", Duration::from_secs(60), async || {
        count(&stream(&e.store, &next).await, "job.completed") == 1
    })
    .await;
    // A restart of this runner finds nothing to sweep and nothing it cannot.
    e.stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, swept) = LocalRunsc::start(LocalConfig {
        runner_id: id.clone(),
        base_dir: PathBuf::from(BASE),
        ..LocalConfig::default()
    })
    .await
    .expect("restart");
    assert!(swept.failures.is_empty(), "{swept:?}");
    assert!(
        swept.workspaces.is_empty() && swept.sandboxes.is_empty(),
        "{swept:?}"
    );
    e.close().await;
}

#[tokio::test]
async fn a_live_lease_is_never_claimed_over_and_an_expired_one_is() {
    let e = env().await;
    let job = submit(&e.store, &e.blobs, "print('second attempt')", 5_000).await;
    let lease = chrono::Utc::now() + chrono::Duration::seconds(4);
    append_events(&e.store, vec![claim(&job, 1, lease)]).await;
    let runner = in_process_runner(
        &e.store,
        &e.blobs,
        &runner_id("lease"),
        Duration::from_secs(2),
    )
    .await;
    tokio::spawn(runner.run(e.stop.clone()));
    // While the ghost's lease is live: no second claim, however often the
    // runner looks (it polls at least every 500 ms).
    while chrono::Utc::now() < lease - chrono::Duration::milliseconds(300) {
        assert_eq!(
            count(&stream(&e.store, &job).await, "execution.claimed"),
            1,
            "claimed while the lease was live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until("the job to complete", Duration::from_secs(60), async || {
        count(&stream(&e.store, &job).await, "job.completed") == 1
    })
    .await;
    let records = stream(&e.store, &job).await;
    let second = records
        .iter()
        .filter(|r| r.record.event_type == "execution.claimed")
        .nth(1)
        .expect("attempt 2");
    assert_eq!(second.record.data["attempt"], 2);
    assert!(
        second.record.occurred_at >= lease,
        "claimed at {} before {lease}",
        second.record.occurred_at
    );
    e.close().await;
}

#[tokio::test]
async fn a_poison_job_fails_after_its_last_attempt_instead_of_cycling() {
    let e = env().await;
    let job = submit(&e.store, &e.blobs, "print('never')", 5_000).await;
    let past = chrono::Utc::now() - chrono::Duration::seconds(60);
    append_events(
        &e.store,
        (1..=glassbox_sandbox_runner::service::DEFAULT_MAX_ATTEMPTS)
            .map(|a| claim(&job, a, past))
            .collect(),
    )
    .await;
    let runner = in_process_runner(
        &e.store,
        &e.blobs,
        &runner_id("poison"),
        Duration::from_secs(1),
    )
    .await;
    tokio::spawn(runner.run(e.stop.clone()));
    until("the job to fail", Duration::from_secs(30), async || {
        count(&stream(&e.store, &job).await, "job.failed") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = stream(&e.store, &job).await;
    assert_eq!(
        count(&records, "execution.claimed"),
        3,
        "{:?}",
        types(&records)
    );
    assert_eq!(count(&records, "execution.started"), 0);
    let failed = records.last().expect("last");
    assert_eq!(failed.record.event_type, "job.failed");
    assert!(
        failed.record.data["reason"]
            .as_str()
            .unwrap_or("")
            .contains("gave up after 3 attempts"),
        "{:?}",
        failed.record.data
    );
    e.close().await;
}

#[tokio::test]
async fn a_tampered_input_blob_fails_the_job_before_anything_runs() {
    let e = env().await;
    let job = submit(&e.store, &e.blobs, "print('the real program')", 5_000).await;
    // Someone with write access to the blob store swaps the program (a valid
    // ciphertext under the job's key, so only the recorded digest can tell).
    e.blobs
        .put(
            &job,
            &format!("jobs/{job}/code"),
            b"print('an evil program')",
        )
        .await
        .expect("swap");
    let runner = in_process_runner(
        &e.store,
        &e.blobs,
        &runner_id("tamper"),
        Duration::from_secs(1),
    )
    .await;
    tokio::spawn(runner.run(e.stop.clone()));
    until("the job to fail", Duration::from_secs(30), async || {
        count(&stream(&e.store, &job).await, "job.failed") == 1
    })
    .await;
    let records = stream(&e.store, &job).await;
    assert_eq!(
        count(&records, "sandbox.provisioned"),
        0,
        "{:?}",
        types(&records)
    );
    assert_eq!(count(&records, "execution.started"), 0);
    let reason = records.last().expect("last").record.data["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("code: does not match the digest in the ledger"),
        "{reason}"
    );
    e.close().await;
}

#[tokio::test]
async fn approved_secrets_without_a_provider_and_dependencies_without_a_mirror_fail_closed() {
    let e = env().await;
    let secret = submit_with(&e.store, &e.blobs, "print('ran')", 5_000, |s, sub| {
        sub.secrets = vec!["OPENAI_API_KEY".into()];
        vec![
            NewEvent::typed(
                s,
                &catalogue::SecretInjectionApproved {
                    name: "OPENAI_API_KEY".into(),
                    mode: "env".into(),
                    hosts: vec![],
                },
            )
            .expect("event"),
        ]
    })
    .await;
    let deps = submit_with(&e.store, &e.blobs, "import six", 5_000, |_, sub| {
        sub.dependencies = vec![catalogue::Dependency {
            ecosystem: "pypi".into(),
            name: "six".into(),
            version: Some("1.16.0".into()),
        }];
        Vec::new()
    })
    .await;
    let runner = in_process_runner(
        &e.store,
        &e.blobs,
        &runner_id("closed"),
        Duration::from_secs(1),
    )
    .await;
    tokio::spawn(runner.run(e.stop.clone()));
    for (job, why) in [
        (
            &secret,
            "secret OPENAI_API_KEY has no value in this runner's provider",
        ),
        (&deps, "this runner has no wheel mirror"),
    ] {
        until("the job to fail", Duration::from_secs(30), async || {
            count(&stream(&e.store, job).await, "job.failed") == 1
        })
        .await;
        let records = stream(&e.store, job).await;
        assert_eq!(
            count(&records, "execution.started"),
            0,
            "{:?}",
            types(&records)
        );
        assert_eq!(count(&records, "secret.materialized"), 0);
        let reason = records.last().expect("last").record.data["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(reason.contains(why), "{reason}");
    }
    let checked = stream(&e.store, &deps).await;
    let d = checked
        .iter()
        .find(|r| r.record.event_type == "dependency.checked")
        .expect("the dependency was checked first");
    assert_eq!(d.record.data["decision"], "allow");
    e.close().await;
}

#[tokio::test]
async fn sigterm_cancels_the_running_job_records_it_and_leaves_no_sandbox() {
    let e = env().await;
    let job = submit(
        &e.store,
        &e.blobs,
        "import time\nprint('up', flush=True)\ntime.sleep(60)",
        90_000,
    )
    .await;
    let id = runner_id("term");
    let mut p = spawn_runner_process(&e.db.url, &e.data_dir, &id);
    until("the job to start", Duration::from_secs(60), async || {
        count(&stream(&e.store, &job).await, "execution.started") == 1
    })
    .await;
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&p),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    let started = Instant::now();
    loop {
        if p.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the runner did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = stream(&e.store, &job).await;
    let ends: Vec<&StoredRecord> = records
        .iter()
        .filter(|r| {
            r.record.event_type.starts_with("job.")
                && r.record.event_type != "job.submitted"
                && r.record.event_type != "job.accepted"
        })
        .collect();
    assert_eq!(ends.len(), 1, "{:?}", types(&records));
    assert_eq!(ends[0].record.event_type, "job.cancelled");
    assert_eq!(ends[0].record.data["reason"], "the runner shut down");
    assert_eq!(count(&records, "workspace.destroyed"), 1);
    assert!(sandbox_processes(&format!("gb-{id}-")).is_empty());
    let (_, swept) = LocalRunsc::start(LocalConfig {
        runner_id: id,
        base_dir: PathBuf::from(BASE),
        ..LocalConfig::default()
    })
    .await
    .expect("restart");
    assert!(
        swept.sandboxes.is_empty() && swept.workspaces.is_empty(),
        "{swept:?}"
    );
    e.close().await;
}

#[tokio::test]
async fn a_secret_used_as_file_and_directory_names_or_cut_by_the_cap_leaves_no_trace() {
    let e = env().await;
    let secret = "s3cr3t-7c1d9a-value";
    let secrets_file = e.data_dir.join("secrets.json");
    std::fs::write(
        &secrets_file,
        serde_json::json!({"API_TOKEN": secret}).to_string(),
    )
    .expect("secrets");
    let code = r#"
import os
s = os.environ['API_TOKEN']
os.makedirs('/workspace/out/' + s, exist_ok=True)
open('/workspace/out/' + s + '/' + s + '.txt', 'w').write('value ' + s)
open('/workspace/out/plain.txt', 'w').write('no secret here')
print('x' * (100 - 5) + s, end='')
"#
    .to_owned();
    let job = submit_with(&e.store, &e.blobs, &code, 10_000, |st, sub| {
        sub.secrets = vec!["API_TOKEN".into()];
        sub.limits.stdout_bytes = Some(100);
        vec![
            NewEvent::typed(
                st,
                &catalogue::SecretInjectionApproved {
                    name: "API_TOKEN".into(),
                    mode: "env".into(),
                    hosts: vec![],
                },
            )
            .expect("event"),
        ]
    })
    .await;
    // The job's limits: stdout capped at 100 bytes cuts the secret after 5 bytes.
    let id = runner_id("leak");
    let mut p = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-runner"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GLASSBOX_ENV", "test")
        .env("GLASSBOX_DATABASE_URL", &e.db.url)
        .env("GLASSBOX_DATA_DIR", &e.data_dir)
        .env("GLASSBOX_RUNNER_ID", &id)
        .env("GLASSBOX_SANDBOX_DIR", BASE)
        .env("GLASSBOX_SECRETS_FILE", &secrets_file)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(e.data_dir.join("runner.log"))
                .map(std::process::Stdio::from)
                .expect("log"),
        )
        .spawn()
        .expect("runner");
    until("the job to complete", Duration::from_secs(60), async || {
        count(&stream(&e.store, &job).await, "job.completed") == 1
    })
    .await;
    let _ = p.kill();
    let _ = p.wait();
    let records = stream(&e.store, &job).await;
    let finished = records
        .iter()
        .find(|r| r.record.event_type == "execution.finished")
        .expect("finished");
    let stdout_key = finished.record.data["stdout"]["blob"]["key"]
        .as_str()
        .expect("stdout");
    let stdout = e.blobs.get(&job, stdout_key).await.expect("stdout");
    assert_eq!(
        stdout,
        "x".repeat(95).into_bytes(),
        "no prefix of the secret is left"
    );
    let index_key = finished.record.data["artifact_index"]["key"]
        .as_str()
        .expect("index");
    let index: Vec<String> =
        serde_json::from_slice(&e.blobs.get(&job, index_key).await.expect("index")).expect("json");
    assert_eq!(index, ["plain.txt", "[REDACTED]/[REDACTED].txt"]);
    let redacted: Vec<(String, u64)> = records
        .iter()
        .filter(|r| r.record.event_type == "output.redacted")
        .map(|r| {
            (
                r.record.data["target"].as_str().unwrap_or("").to_owned(),
                r.record.data["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(redacted.contains(&("stdout".into(), 1)), "{redacted:?}");
    assert!(
        redacted.contains(&("artifact_names".into(), 2)),
        "{redacted:?}"
    );
    assert!(redacted.contains(&("artifact:1".into(), 1)), "{redacted:?}");
    // Not in the ledger, the read models, blob names, the runner's log, or
    // any decrypted output.
    let head = &secret[..8];
    let (ledger_head, _) = e.store.head().await.expect("head");
    for r in e.store.read_all(1, ledger_head).await.expect("all") {
        assert!(
            !String::from_utf8_lossy(&r.canonical).contains(head),
            "ledger: {}",
            r.record.event_type
        );
    }
    until("the projection", Duration::from_secs(30), async || {
        glassbox_projector::position(&e.db.pool).await.unwrap_or(0) >= ledger_head
    })
    .await;
    let models = glassbox_projector::snapshot(&e.db.pool)
        .await
        .expect("snapshot")
        .to_string();
    assert!(!models.contains(head), "read models");
    assert!(
        e.blob_names().iter().all(|n| !n.contains(head)),
        "blob names"
    );
    let log = std::fs::read_to_string(e.data_dir.join("runner.log")).expect("log");
    assert!(log.contains("runner started"), "the log was written: {log}");
    assert!(!log.contains(head), "runner log");
    for r in &records {
        if let Some(k) = r.record.data.get("blob").and_then(|b| b["key"].as_str()) {
            let bytes = e.blobs.get(&job, k).await.expect("artifact");
            assert!(
                !String::from_utf8_lossy(&bytes).contains(head),
                "artifact content"
            );
        }
    }
    e.close().await;
}

#[tokio::test]
async fn a_killed_runner_takes_its_sandboxes_along() {
    let e = env().await;
    // A job that would run for a minute.
    let job = submit(
        &e.store,
        &e.blobs,
        "import time\nprint('up', flush=True)\ntime.sleep(60)",
        90_000,
    )
    .await;
    let id = runner_id("orphan");
    let mut p = spawn_runner_process(&e.db.url, &e.data_dir, &id);
    until("the job to start", Duration::from_secs(60), async || {
        count(&stream(&e.store, &job).await, "execution.started") == 1
    })
    .await;
    let prefix = format!("gb-{id}-");
    // `execution.started` is recorded when runsc is started; wait until the
    // sandbox itself (runsc boot) runs, and a little more.
    until("the sandbox to boot", Duration::from_secs(30), async || {
        sandbox_processes(&prefix)
            .iter()
            .any(|p| p.contains(" boot "))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.kill().expect("SIGKILL");
    let _ = p.wait();
    // Its sandbox dies with it (parent-death signals along runsc's chain),
    // not at the end of its 90 s wall time.
    until(
        "the sandbox to die with its runner",
        Duration::from_secs(5),
        async || sandbox_processes(&prefix).is_empty(),
    )
    .await;
    // The same runner, restarted, removes what the killed one left (its
    // workspace, cgroups, runsc state) and records it.
    let mut again = spawn_runner_process(&e.db.url, &e.data_dir, &id);
    let runner_stream = format!("runner-{id}");
    until(
        "the sweep to be recorded",
        Duration::from_secs(60),
        async || {
            !e.store
                .read_stream(&runner_stream, 1, 10)
                .await
                .unwrap_or_default()
                .is_empty()
        },
    )
    .await;
    let swept = e
        .store
        .read_stream(&runner_stream, 1, 10)
        .await
        .expect("stream");
    assert_eq!(swept[0].record.event_type, "runner.sweep_finished");
    assert_eq!(swept[0].record.data["runner"], id.as_str());
    assert!(
        swept[0].record.data["workspaces"].as_u64().unwrap_or(0) >= 1,
        "{:?}",
        swept[0].record.data
    );
    assert_eq!(swept[0].record.data["failures"], serde_json::json!([]));
    let _ = again.kill();
    let _ = again.wait();
    e.close().await;
}

#[tokio::test]
async fn a_result_that_cannot_be_stored_ends_the_attempt_with_the_reason_once() {
    let e = env().await;
    let job = submit(&e.store, &e.blobs, "print('a result')", 10_000).await;
    // The blob store cannot take this job's outputs: where their directory
    // would go, there is a file.
    let jobs_dir = e.data_dir.join("blobs").join("jobs").join(&job);
    std::fs::create_dir_all(&jobs_dir).expect("dir");
    std::fs::write(jobs_dir.join("attempts"), b"in the way").expect("file");
    let runner = in_process_runner(
        &e.store,
        &e.blobs,
        &runner_id("nostore"),
        Duration::from_secs(1),
    )
    .await;
    tokio::spawn(runner.run(e.stop.clone()));
    until("the job to fail", Duration::from_secs(60), async || {
        count(&stream(&e.store, &job).await, "job.failed") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let records = stream(&e.store, &job).await;
    assert_eq!(
        count(&records, "execution.claimed"),
        1,
        "never retried: {:?}",
        types(&records)
    );
    let finished = records
        .iter()
        .find(|r| r.record.event_type == "execution.finished")
        .expect("the execution itself is recorded");
    assert_eq!(finished.record.data["outcome"], "succeeded");
    assert_eq!(
        finished.record.data["stdout"]["blob"],
        serde_json::Value::Null
    );
    assert_eq!(finished.record.data["stdout"]["size_bytes"], 9);
    assert_eq!(count(&records, "workspace.destroyed"), 1);
    let reason = records.last().expect("last").record.data["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("could not be kept: storing an output failed"),
        "{reason}"
    );
    e.close().await;
}

#[tokio::test]
async fn the_data_plane_bypass_is_refused_in_production_before_anything_starts() {
    use glassbox_sandbox_runner::service::{RunnerSettings, StartError, run_service};
    let db = TestDb::new().await.expect("db");
    let dir = std::env::temp_dir().join(format!("glassbox-bypass-{}", db.name));
    let base = |env: &str| {
        vec![
            ("GLASSBOX_ENV".to_owned(), env.to_owned()),
            ("GLASSBOX_DATABASE_URL".to_owned(), db.url.clone()),
            ("GLASSBOX_DATA_DIR".to_owned(), dir.display().to_string()),
            (
                "GLASSBOX_AUTH_JWKS_FILE".to_owned(),
                dir.join("jwks.json").display().to_string(),
            ),
        ]
    };
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("jwks.json"), r#"{"keys": []}"#).expect("jwks");
    let vars: std::collections::BTreeMap<String, String> = [
        ("GLASSBOX_RUNNER_AUTH_BYPASS", "true"),
        ("GLASSBOX_RUNNER_ID", "bypass_check"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let settings = RunnerSettings::from_vars(&vars).expect("settings");
    assert!(settings.sessions.bypass);
    let config = glassbox_platform::Config::from_vars(base("production")).expect("config");
    let r = run_service(&config, settings, CancellationToken::new()).await;
    assert!(matches!(r, Err(StartError::BypassRefused(_))), "{r:?}");
    // Nothing was recorded: the runner never came up.
    let store = db.store().await.expect("store");
    assert_eq!(store.head().await.expect("head").0, 0);
    // A value that is not a boolean is refused by name.
    let bad: std::collections::BTreeMap<String, String> =
        [("GLASSBOX_RUNNER_AUTH_BYPASS".to_owned(), "yes".to_owned())].into();
    let e = RunnerSettings::from_vars(&bad).expect_err("refused");
    assert_eq!(e.var, "GLASSBOX_RUNNER_AUTH_BYPASS");
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}
