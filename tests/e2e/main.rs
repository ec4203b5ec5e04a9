//! The whole path on one machine: a job submitted over HTTP is accepted by the
//! command API, claimed by a runner, run under gVisor (runsc, as root), and every
//! step lands on the ledger — against the real PostgreSQL, Redis, blob store and
//! runsc.

use glassbox_command_api::Application;
use glassbox_command_api::testing::{token, vars};
use glassbox_events::store::{EventStore, StoredRecord};
use glassbox_events::testing::TestDb;
use glassbox_sandbox_runner::egress::EgressSettings;
use glassbox_sandbox_runner::service::{Runner, RunnerConfig, SecretProvider};
use glassbox_sandbox_runner::{LocalConfig, LocalRunsc};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Stack {
    addr: String,
    client: reqwest::Client,
    store: EventStore,
    blobs: glassbox_platform::blob::BlobStore,
    engine: std::sync::Arc<glassbox_policies::PolicyEngine>,
    db: TestDb,
    data_dir: PathBuf,
    stop: CancellationToken,
}

async fn stack(secrets: SecretProvider) -> Stack {
    stack_with(secrets, &[], None, Default::default()).await
}

async fn stack_with(
    secrets: SecretProvider,
    extra: &[(&str, &str)],
    wheel_mirror: Option<PathBuf>,
    egress: EgressSettings,
) -> Stack {
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("database");
    let data_dir = std::env::temp_dir().join(format!("glassbox-e2e-{}", db.name));
    let mut v = vars(&db.url, &data_dir).expect("vars");
    v.extend(
        extra
            .iter()
            .map(|(k, x)| ((*k).to_owned(), (*x).to_owned())),
    );
    let config = glassbox_platform::Config::from_vars(v).expect("config");
    let app = Application::build(config).await.expect("command api");
    let addr = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    let core = app.state().core.clone();
    tokio::spawn(app.run_until_stopped());
    tokio::spawn(glassbox_projector::Projector::new(core.store.clone()).run(None, stop.clone()));
    spawn_runner(&core, secrets, wheel_mirror, egress, &stop).await;
    Stack {
        addr,
        client: reqwest::Client::new(),
        store: core.store.clone(),
        blobs: core.blobs.clone(),
        engine: core.engine.clone(),
        db,
        data_dir,
        stop,
    }
}

/// A runsc runner (two slots) on `core`'s ledger, until `stop`.
async fn spawn_runner(
    core: &glassbox_command_api::Core,
    secrets: SecretProvider,
    wheel_mirror: Option<PathBuf>,
    egress: EgressSettings,
    stop: &CancellationToken,
) {
    let runner_id = format!("e2e{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let (backend, _) = LocalRunsc::start(LocalConfig {
        runner_id: runner_id.clone(),
        base_dir: PathBuf::from("/run/glassbox-test"),
        ..LocalConfig::default()
    })
    .await
    .expect("runsc backend (root and runsc needed)");
    let runner = Runner::new(
        core.store.clone(),
        core.blobs.clone(),
        core.engine.clone(),
        backend,
        RunnerConfig {
            runner_id,
            slots: 2,
            lease_grace: Duration::from_secs(30),
            secrets,
            wheel_mirror,
            max_attempts: glassbox_sandbox_runner::service::DEFAULT_MAX_ATTEMPTS,
            egress,
        },
    );
    tokio::spawn(runner.run(stop.clone()));
}

impl Stack {
    async fn submit(&self, tenant: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/v1/jobs", self.addr))
            .bearer_auth(token(tenant))
            .json(&body)
            .send()
            .await
            .expect("submit");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, tenant: &str, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.addr))
            .bearer_auth(token(tenant))
            .send()
            .await
            .expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits (long-polling) until the job is terminal; returns it.
    async fn wait(&self, tenant: &str, receipt: &Value) -> Value {
        let id = receipt["job_id"].as_str().expect("job id");
        let pos = receipt["position"].as_u64().expect("position");
        for _ in 0..12 {
            let (status, job) = self
                .get(tenant, &format!("/v1/jobs/{id}?min_position={pos}&wait=10"))
                .await;
            assert_eq!(status, 200, "{job}");
            if ["completed", "failed", "cancelled", "rejected"]
                .contains(&job["status"].as_str().unwrap_or(""))
            {
                return job;
            }
        }
        panic!("job {id} did not finish in 2 minutes");
    }

    async fn stream(&self, id: &str) -> Vec<StoredRecord> {
        self.store
            .read_stream(&format!("job-{id}"), 1, 1000)
            .await
            .expect("stream")
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
        self.db.drop_db().await;
    }
}

fn types(records: &[StoredRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.record.event_type.clone())
        .collect()
}

mod egress;
mod mcp_sdk;
mod sessions;
mod telemetry;
mod workflows;

/// Everything any test in this process logs, so a test can check
/// that nothing of a job's data reached a log line.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = buf.clone();
        // Glassbox's own crates at debug; everything else (sqlx, hyper) at info.
        let filter = tracing_subscriber::EnvFilter::new(
            "info,glassbox_command_api=debug,glassbox_sandbox_runner=debug,\
             glassbox_events=debug,glassbox_projector=debug,glassbox_platform=debug,\
             glassbox_audit_query=debug",
        );
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(move || LogWriter(w.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every file under `dir`: (name, contents).
fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push((p.display().to_string(), Vec::new()));
                stack.push(p);
            } else {
                out.push((
                    p.display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn crypto_shredding_leaves_no_byte_of_a_jobs_data_anywhere_and_the_ledger_verifies() {
    let logs = captured_logs();
    let s = stack(SecretProvider::None).await;
    let markers = [
        "CODEMARK7a1",
        "STDINMARK2b2",
        "ARGMARK3c3",
        "ENVNAMEMARK4d4",
        "ENVVALMARK5e5",
        "FILENAMEMARK6f6",
        "FILEBODYMARK7a7",
        "OUTNAMEMARK8b8",
        "OUTBODYMARK9c9",
    ];
    let code = "import os, sys\n\
        # CODEMARK7a1\n\
        data = sys.stdin.read()\n\
        print(data, sys.argv[1], os.environ['ENVNAMEMARK4d4'])\n\
        print(open('in/FILENAMEMARK6f6.txt').read())\n\
        open('out/OUTNAMEMARK8b8.txt', 'w').write('OUTBODYMARK9c9')\n";
    let body = json!({
        "language": "python", "code": code, "stdin": "STDINMARK2b2", "args": ["ARGMARK3c3"],
        "env": {"ENVNAMEMARK4d4": "ENVVALMARK5e5"},
        "files": [{"path": "in/FILENAMEMARK6f6.txt", "content": "FILEBODYMARK7a7"}],
    });
    // A job that is still running cannot be shredded (cancel it first).
    let (_, slow) = s
        .submit("acme", json!({"language": "bash", "code": "sleep 30"}))
        .await;
    let slow_id = slow["job_id"].as_str().expect("id");
    let del = |id: &str| {
        s.client
            .delete(format!("{}/v1/jobs/{id}/data", s.addr))
            .bearer_auth(glassbox_command_api::testing::sign(
                &glassbox_command_api::testing::claims("acme", "owner@acme", &["admin"]),
            ))
            .send()
    };
    let r = del(slow_id).await.expect("delete");
    assert_eq!(r.status().as_u16(), 409);
    let (status, receipt) = s.submit("acme", body).await;
    assert_eq!(status, 201, "{receipt}");
    let job = s.wait("acme", &receipt).await;
    assert_eq!(job["status"], "completed", "{job}");
    let id = receipt["job_id"].as_str().expect("id");
    let (_, out) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
    let stdout = out["stdout"]["content"].as_str().unwrap_or("").to_owned();
    assert!(
        stdout.contains("STDINMARK2b2 ARGMARK3c3 ENVVALMARK5e5")
            && stdout.contains("FILEBODYMARK7a7"),
        "the job saw its inputs: {out}"
    );
    let (status, arts) = s.get("acme", &format!("/v1/jobs/{id}/artifacts")).await;
    assert_eq!(status, 200);
    assert_eq!(arts["artifacts"][0]["path"], "OUTNAMEMARK8b8.txt");

    let r = del(id).await.expect("delete");
    assert_eq!(r.status().as_u16(), 200);
    let shred: Value = r.json().await.expect("json");
    // Everything readable before answers 410 now.
    for path in [
        format!("/v1/jobs/{id}/output"),
        format!("/v1/jobs/{id}/artifacts"),
        format!("/v1/jobs/{id}/artifacts/OUTNAMEMARK8b8.txt"),
    ] {
        let (status, body) = s.get("acme", &path).await;
        assert_eq!(status, 410, "{path}: {body}");
    }
    // Asking again is not an error and points at the same record.
    let again: Value = del(id).await.expect("delete").json().await.expect("json");
    assert_eq!(again["position"], shred["position"]);
    // The code and inputs are unreadable too (the key is gone) — and gone.
    let submitted = s.stream(id).await.into_iter().next().expect("submitted");
    let key = submitted.record.data["code"]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let blobs = glassbox_platform::blob::BlobStore::new(
        &glassbox_platform::blob::Backend::Local(s.data_dir.join("blobs")),
        s.db.pool.clone(),
        glassbox_platform::blob::Kek::load_or_generate(&s.data_dir.join("kek")).expect("kek"),
    )
    .expect("blobs");
    assert!(matches!(
        blobs.get(id, &key).await,
        Err(glassbox_platform::blob::BlobError::KeyDestroyed { .. })
    ));
    // No byte of any marker anywhere: a full dump of the database (ledger,
    // read models, key table), every blob file's name and bytes, every log line.
    let dump = std::process::Command::new("pg_dump")
        .arg(&s.db.url)
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(dump.contains(id), "the dump holds the job's records");
    let blobs_dir = files_under(&s.data_dir.join("blobs"));
    let log =
        String::from_utf8_lossy(&logs.lock().map(|l| l.clone()).unwrap_or_default()).into_owned();
    assert!(log.contains("request finished"), "logs were captured");
    for m in markers {
        assert!(!dump.contains(m), "{m} is in the database");
        assert!(!log.contains(m), "{m} is in a log line");
        for (name, bytes) in &blobs_dir {
            assert!(!name.contains(m), "{m} names a blob file");
            assert!(
                !String::from_utf8_lossy(bytes).contains(m),
                "{m} is in {name}"
            );
        }
    }
    // …and the ledger still verifies, shredded records included.
    s.store
        .verify(None, &[], None, None)
        .await
        .expect("verify")
        .expect("the ledger verifies after shredding");
    let _ = s
        .client
        .post(format!("{}/v1/jobs/{slow_id}/cancel", s.addr))
        .bearer_auth(token("acme"))
        .send()
        .await;
    s.stop().await;
}

/// `glassbox images list --json`: image name → digest.
fn listed_images() -> std::collections::BTreeMap<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_glassbox-e2e-cli"))
        .args(["images", "list", "--json"])
        .output()
        .expect("glassbox images list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    list.iter()
        .map(|m| {
            (
                m["name"].as_str().expect("name").to_owned(),
                m["digest"].as_str().expect("digest").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn each_runtime_runs_end_to_end_and_every_step_is_on_the_ledger() {
    let s = stack(SecretProvider::None).await;
    let images = listed_images();
    for (lang, code, want) in [
        (
            "python",
            "import sys\nprint('hello from python', sys.argv[1:])\n",
            "hello from python ['a']\n",
        ),
        (
            "node",
            "console.log('hello from node', process.argv.slice(2))\n",
            "hello from node [ 'a' ]\n",
        ),
        (
            "bash",
            "echo \"hello from bash $1\"\n",
            "hello from bash a\n",
        ),
    ] {
        let (status, receipt) = s
            .submit(
                "acme",
                json!({"language": lang, "code": code, "args": ["a"]}),
            )
            .await;
        assert_eq!(status, 201, "{receipt}");
        let job = s.wait("acme", &receipt).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["outcome"], "succeeded");
        assert_eq!(job["exit_code"], 0);
        let id = receipt["job_id"].as_str().expect("id");
        let (status, out) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["stdout"]["content"], want, "{lang}");
        assert_eq!(out["outcome"], "succeeded");
        let records = s.stream(id).await;
        // The sandbox's root is the runtime's image, the one `glassbox images list` shows.
        let provisioned = records
            .iter()
            .find(|r| r.record.event_type == "sandbox.provisioned")
            .expect("sandbox.provisioned");
        let digest = provisioned.record.data["image_digest"]
            .as_str()
            .expect("image digest");
        assert_eq!(
            Some(digest),
            images.get(lang).map(String::as_str),
            "{lang}: {images:?}"
        );
        let t = types(&records);
        assert_eq!(
            t[t.len() - 6..],
            [
                "execution.claimed",
                "sandbox.provisioned",
                "execution.started",
                "execution.finished",
                "workspace.destroyed",
                "job.completed"
            ],
            "{lang}: {t:?}"
        );
        // Another tenant cannot read the output.
        let (status, _) = s.get("globex", &format!("/v1/jobs/{id}/output")).await;
        assert_eq!(status, 404);
    }
    let report = s
        .store
        .verify(None, &[], None, None)
        .await
        .expect("verify")
        .expect("the ledger verifies");
    assert!(report.records > 20);
    s.stop().await;
}

#[tokio::test]
async fn refused_jobs_never_reach_a_runner_and_denied_dependencies_fail_before_running() {
    let s = stack(SecretProvider::None).await;
    // Admission refuses: no claim ever.
    let (status, refused) = s
        .submit(
            "restricted",
            json!({"language": "node", "code": "console.log(1)"}),
        )
        .await;
    assert_eq!(status, 403);
    // A dependency the tenant does not allow: checked, denied, failed — never run.
    let (status, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": "import leftpad", "dependencies": [{"name": "leftpad", "version": "1.0"}]}),
        )
        .await;
    assert_eq!(status, 201, "{receipt}");
    let job = s.wait("acme", &receipt).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["reasons"].to_string().contains("dependency denied"),
        "{job}"
    );
    let t = types(&s.stream(receipt["job_id"].as_str().expect("id")).await);
    assert!(t.contains(&"dependency.checked".to_owned()), "{t:?}");
    assert!(!t.contains(&"sandbox.provisioned".to_owned()), "{t:?}");
    assert!(!t.contains(&"execution.started".to_owned()), "{t:?}");
    let checked = s
        .stream(receipt["job_id"].as_str().expect("id"))
        .await
        .into_iter()
        .find(|r| r.record.event_type == "dependency.checked")
        .expect("dependency.checked");
    assert_eq!(checked.record.data["decision"], "deny");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = types(&s.stream(refused["job_id"].as_str().expect("id")).await);
    assert_eq!(t.last().map(String::as_str), Some("job.rejected"));
    assert!(!t.contains(&"execution.claimed".to_owned()), "{t:?}");
    s.stop().await;
}

#[tokio::test]
async fn approved_secrets_are_materialized_and_redacted_from_output_and_artifacts() {
    let dir = std::env::temp_dir().join(format!(
        "glassbox-e2e-secrets-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("secrets.json");
    let value = "sk-e2e-7c1f9a3b5d";
    std::fs::write(
        &file,
        json!({"OPENAI_API_KEY": value, "DATABASE_PASSWORD": "pw-e2e-0042"}).to_string(),
    )
    .expect("secrets file");
    let s = stack(SecretProvider::File(file)).await;
    let code = "import os\n\
                k = os.environ['OPENAI_API_KEY']\n\
                print('key is', k, 'and again', k)\n\
                pw = open('.secrets/DATABASE_PASSWORD').read()\n\
                os.makedirs('out', exist_ok=True)\n\
                open('out/result.txt', 'w').write('result 42 with ' + pw)\n";
    let (status, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": code,
                   "secrets": ["OPENAI_API_KEY", {"name": "DATABASE_PASSWORD", "mode": "file"}]}),
        )
        .await;
    assert_eq!(status, 201, "{receipt}");
    let job = s.wait("acme", &receipt).await;
    assert_eq!(job["status"], "completed", "{job}");
    let id = receipt["job_id"].as_str().expect("id");
    let (_, out) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
    assert_eq!(
        out["stdout"]["content"], "key is [REDACTED] and again [REDACTED]\n",
        "{out}"
    );
    let (status, arts) = s.get("acme", &format!("/v1/jobs/{id}/artifacts")).await;
    assert_eq!(status, 200);
    assert_eq!(arts["artifacts"][0]["path"], "result.txt");
    let bytes = s
        .client
        .get(format!("{}/v1/jobs/{id}/artifacts/result.txt", s.addr))
        .bearer_auth(token("acme"))
        .send()
        .await
        .expect("artifact")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(&bytes[..], b"result 42 with [REDACTED]");
    let records = s.stream(id).await;
    let redacted: Vec<&StoredRecord> = records
        .iter()
        .filter(|r| r.record.event_type == "output.redacted")
        .collect();
    assert_eq!(redacted.len(), 2, "{:?}", types(&records));
    assert_eq!(redacted[0].record.data["secret_name"], "OPENAI_API_KEY");
    assert_eq!(redacted[0].record.data["count"], 2);
    // The target names the artifact by its index, never by its (program-chosen) name.
    assert_eq!(redacted[1].record.data["target"], "artifact:0");
    let materialized = records
        .iter()
        .filter(|r| r.record.event_type == "secret.materialized")
        .count();
    assert_eq!(materialized, 2);
    // No secret value anywhere in the ledger or the read models.
    for r in s.store.read_all(1, 100_000).await.expect("ledger") {
        let text = String::from_utf8_lossy(&r.canonical);
        assert!(
            !text.contains(value) && !text.contains("pw-e2e-0042"),
            "secret in record {}",
            r.record.position
        );
    }
    let dump = glassbox_projector::snapshot(&s.db.pool)
        .await
        .expect("snapshot")
        .to_string();
    assert!(!dump.contains(value) && !dump.contains("pw-e2e-0042"));
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_cancel_stops_a_running_job_and_retention_shreds_finished_ones() {
    let s = stack_with(
        SecretProvider::None,
        &[("GLASSBOX_RETENTION_SECS", "2")],
        None,
        Default::default(),
    )
    .await;
    let (status, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": "import time\nprint('working', flush=True)\ntime.sleep(30)\n",
                   "limits": {"wall_time_ms": 60000}}),
        )
        .await;
    assert_eq!(status, 201, "{receipt}");
    let id = receipt["job_id"].as_str().expect("id").to_owned();
    // Wait until it runs, then cancel it.
    let started = std::time::Instant::now();
    loop {
        let t = types(&s.stream(&id).await);
        if t.contains(&"execution.started".to_owned()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never started: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = s
        .client
        .post(format!("{}/v1/jobs/{id}/cancel", s.addr))
        .bearer_auth(token("acme"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["status"], "cancel_requested",
        "a claimed job is stopped by its runner"
    );
    let cancelled_at = std::time::Instant::now();
    let job = s.wait("acme", &receipt).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["outcome"], "cancelled");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(15),
        "stopped promptly"
    );
    let t = types(&s.stream(&id).await);
    let finished = t
        .iter()
        .position(|x| x == "execution.finished")
        .expect("finished");
    assert!(
        t.iter()
            .position(|x| x == "job.cancel_requested")
            .expect("requested")
            < finished
    );
    assert!(t.contains(&"workspace.destroyed".to_owned()));
    // Retention: two seconds after it finished, its data is shredded by the service.
    let started = std::time::Instant::now();
    loop {
        let records = s.stream(&id).await;
        if let Some(k) = records
            .iter()
            .find(|r| r.record.event_type == "key.destroyed")
        {
            assert!(
                k.record.data["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("retention")
            );
            assert_eq!(
                serde_json::to_value(k.record.actor.kind).expect("kind"),
                "system"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
    assert_eq!(status, 410);
    s.stop().await;
}

/// Builds a small pure-Python wheel (no network, no build tools: a zip with the
/// dist-info files pip needs).
fn build_wheel(dir: &std::path::Path) {
    let script = r#"
import base64, hashlib, sys, zipfile
out = sys.argv[1]
files = {
    "glassbox_demo/__init__.py": "GREETING = 'hi from a vetted wheel'\n",
    "glassbox_demo-1.0.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: glassbox-demo\nVersion: 1.0.0\n",
    "glassbox_demo-1.0.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: glassbox-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out + "/glassbox_demo-1.0.0-py3-none-any.whl", "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("glassbox_demo-1.0.0.dist-info/RECORD,,")
    z.writestr("glassbox_demo-1.0.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let ok = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .status()
        .expect("python3 builds the test wheel")
        .success();
    assert!(ok, "building the test wheel");
}

#[tokio::test]
async fn an_allowed_wheel_installs_from_the_read_only_mirror_and_imports() {
    let mirror = std::env::temp_dir().join(format!(
        "glassbox-e2e-wheels-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&mirror).expect("mirror dir");
    build_wheel(&mirror);
    let s = stack_with(
        SecretProvider::None,
        &[],
        Some(mirror.clone()),
        Default::default(),
    )
    .await;
    let code = "import glassbox_demo, os\n\
                print(glassbox_demo.GREETING)\n\
                try:\n    open('/mnt/wheels/x', 'w')\nexcept OSError as e:\n    print('mirror is read-only:', e.errno)\n";
    let (status, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": code,
                   "dependencies": [{"name": "glassbox-demo", "version": "1.0.0"}]}),
        )
        .await;
    assert_eq!(status, 201, "{receipt}");
    let job = s.wait("acme", &receipt).await;
    let id = receipt["job_id"].as_str().expect("id");
    let (_, out) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
    assert_eq!(job["outcome"], "succeeded", "{job} {out}");
    let stdout = out["stdout"]["content"].as_str().unwrap_or("");
    assert!(stdout.starts_with("hi from a vetted wheel\n"), "{out}");
    // EACCES before EROFS: the sandbox user cannot write there either way.
    assert!(
        stdout.contains("mirror is read-only: 30") || stdout.contains("mirror is read-only: 13"),
        "{out}"
    );
    let records = s.stream(id).await;
    let checked = records
        .iter()
        .find(|r| r.record.event_type == "dependency.checked")
        .expect("dependency.checked");
    assert_eq!(checked.record.data["decision"], "allow");
    assert_eq!(checked.record.data["name"], "glassbox-demo");
    assert!(!checked.record.data["rule"].is_null());
    let t = types(&records);
    assert!(
        t.iter().position(|x| x == "dependency.checked")
            < t.iter().position(|x| x == "sandbox.provisioned"),
        "{t:?}"
    );
    // Allowed by policy but not in the mirror: pip cannot fetch it (no index,
    // no network), so the program never runs.
    let (_, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": "import requests\nprint('ran')",
                   "dependencies": [{"name": "requests", "version": "2.32.3"}]}),
        )
        .await;
    let job = s.wait("acme", &receipt).await;
    let id = receipt["job_id"].as_str().expect("id");
    let (_, out) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
    assert_eq!(out["exit_code"], 97, "{job} {out}");
    assert!(
        !out["stdout"]["content"]
            .as_str()
            .unwrap_or("")
            .contains("ran")
    );
    assert!(
        out["stderr"]["content"]
            .as_str()
            .unwrap_or("")
            .contains("requests"),
        "{out}"
    );
    s.stop().await;
    let _ = std::fs::remove_dir_all(&mirror);
}
