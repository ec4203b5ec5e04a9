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
    let events = vec![
        NewEvent::typed(
            &stream,
            &catalogue::JobSubmitted {
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
            },
        )
        .expect("event"),
        NewEvent::typed(
            &stream,
            &catalogue::JobAccepted {
                job_id: job.clone(),
                effective_limits: limits,
            },
        )
        .expect("event"),
    ];
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

/// A one-slot runner in this process, on the real runsc backend.
async fn in_process_runner(
    store: &EventStore,
    blobs: &BlobStore,
    id: &str,
    lease_grace: Duration,
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
            secrets: SecretProvider::None,
            wheel_mirror: None,
            max_attempts: glassbox_sandbox_runner::service::DEFAULT_MAX_ATTEMPTS,
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
    assert_eq!(job_row["attempt"], 2);
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
