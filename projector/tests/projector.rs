//! The projector against the real PostgreSQL: fold rules, exactly-once effects
//! with concurrent instances, rebuild equality, lag, and signed checkpoints at
//! most once per interval with a single publisher.

use glassbox_events::catalogue::{self, BlobRef, Limits, Outcome, OutputRef};
use glassbox_events::store::{AppendRequest, EventStore, NewEvent};
use glassbox_events::testing::TestDb;
use glassbox_events::{Actor, Digest, SigningKey};
use glassbox_projector::{Projector, Publisher, snapshot};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn blob(name: &str) -> BlobRef {
    BlobRef {
        hmac: Digest::of(name.as_bytes()),
        size_bytes: name.len() as u64,
        key: format!("jobs/x/{name}"),
    }
}

async fn append<E: catalogue::Event>(store: &EventStore, tenant: &str, stream: &str, e: &E) -> u64 {
    let ev = NewEvent::typed(stream, e).expect("event");
    store
        .append(AppendRequest::new(tenant, Actor::system("test"), vec![ev]))
        .await
        .expect("append")
        .last_position()
}

async fn submit(store: &EventStore, tenant: &str, job: &str) {
    let stream = format!("job-{job}");
    append(
        store,
        tenant,
        &stream,
        &catalogue::JobSubmitted {
            job_id: job.into(),
            language: "python".into(),
            code: blob("code"),
            stdin: None,
            args: None,
            arg_count: 0,
            env: None,
            env_count: 0,
            files: vec![],
            file_paths: None,
            dependencies: vec![],
            secrets: vec![],
            limits: Limits::default(),
            idempotency_key: None,
            egress: vec![],
        },
    )
    .await;
    append(
        store,
        tenant,
        &stream,
        &catalogue::JobAccepted {
            job_id: job.into(),
            effective_limits: Limits {
                wall_time_ms: Some(1000),
                ..Limits::default()
            },
        },
    )
    .await;
}

fn finished(attempt: u64, outcome: Outcome, exit: i64) -> catalogue::ExecutionFinished {
    let out = OutputRef {
        blob: None,
        size_bytes: 0,
        truncated: false,
    };
    catalogue::ExecutionFinished {
        attempt,
        outcome,
        exit_code: Some(exit),
        signal: None,
        wall_ms: 120,
        cpu_ms: Some(30),
        peak_memory_bytes: Some(1 << 20),
        stdout: out.clone(),
        stderr: out,
        artifact_index: None,
        artifacts_skipped: 0,
    }
}

/// The read model's job as the API shows it (the stored domain Job's view).
async fn job_row(db: &TestDb, job: &str) -> Value {
    let job = glassbox_projector::queries::job(&db.pool, "acme", job)
        .await
        .expect("job query")
        .expect("job row");
    serde_json::to_value(job.view().expect("a submitted job")).expect("view json")
}

#[tokio::test]
async fn the_first_finished_attempt_is_the_result_and_terminal_states_stay() {
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    submit(&store, "acme", "j1").await;
    let s = "job-j1";
    append(
        &store,
        "acme",
        s,
        &catalogue::ExecutionClaimed {
            runner: "r1".into(),
            attempt: 1,
            lease_expires_at: "2026-11-26T10:00:00Z".into(),
        },
    )
    .await;
    append(
        &store,
        "acme",
        s,
        &catalogue::ExecutionStarted {
            attempt: 1,
            sandbox_id: "sb1".into(),
        },
    )
    .await;
    let p = Projector::new(store.clone());
    p.catch_up().await.expect("catch up");
    let row = job_row(&db, "j1").await;
    assert_eq!(row["status"], "running");
    assert_eq!(row["runner"], "r1");
    append(
        &store,
        "acme",
        s,
        &catalogue::ExecutionClaimed {
            runner: "r2".into(),
            attempt: 2,
            lease_expires_at: "2026-11-26T10:01:00Z".into(),
        },
    )
    .await;
    append(&store, "acme", s, &finished(2, Outcome::Succeeded, 0)).await;
    // A late finish of attempt 1 is never a second result.
    append(&store, "acme", s, &finished(1, Outcome::Failed, 3)).await;
    append(
        &store,
        "acme",
        s,
        &catalogue::ArtifactStored {
            attempt: 2,
            index: 0,
            blob: blob("a"),
            truncated: false,
        },
    )
    .await;
    append(
        &store,
        "acme",
        s,
        &catalogue::JobCompleted {
            job_id: "j1".into(),
            outcome: Outcome::Succeeded,
        },
    )
    .await;
    // Nothing moves a terminal job back.
    append(
        &store,
        "acme",
        s,
        &catalogue::ExecutionStarted {
            attempt: 3,
            sandbox_id: "sb3".into(),
        },
    )
    .await;
    // Unknown event types are indexed but change nothing.
    let mut data = Map::new();
    data.insert("x".into(), json!(1));
    store
        .append(AppendRequest::new(
            "acme",
            Actor::system("test"),
            vec![NewEvent::new(s, "vendor.thing_happened", data)],
        ))
        .await
        .expect("append unknown");
    p.catch_up().await.expect("catch up");
    let row = job_row(&db, "j1").await;
    assert_eq!(row["status"], "completed");
    assert_eq!(row["outcome"], "succeeded");
    assert_eq!(row["exit_code"], 0);
    assert_eq!(row["attempt"], 2);
    assert_eq!(
        row["artifacts"][0],
        json!({"attempt": 2, "index": 0, "size_bytes": 1, "truncated": false}),
        "no file name in the read model"
    );
    let (head, _) = store.head().await.expect("head");
    // `last_position` is the job stream's last record, whatever its type: the
    // unknown event (the head) is on the job's stream.
    assert_eq!(row["last_position"], head);
    let indexed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projections.audit_index WHERE event_type = 'vendor.thing_happened'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(indexed, 1);
    // Data destruction is recorded on the job.
    append(
        &store,
        "acme",
        s,
        &catalogue::KeyDestroyed {
            key_id: "j1".into(),
            reason: "retention".into(),
        },
    )
    .await;
    p.catch_up().await.expect("catch up");
    assert_eq!(job_row(&db, "j1").await["data_destroyed"], true);
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_projectors_apply_each_record_exactly_once_and_rebuild_is_identical() {
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    let token = CancellationToken::new();
    // Three instances with different batch sizes, each with its own pool.
    for batch in [1, 7, 50] {
        let s = db.store().await.expect("store");
        tokio::spawn(Projector::new(s).with_batch(batch).run(None, token.clone()));
    }
    for i in 0..60 {
        let job = format!("j{i}");
        submit(&store, if i % 2 == 0 { "acme" } else { "globex" }, &job).await;
        if i % 3 == 0 {
            append(
                &store,
                "acme",
                &format!("job-{job}"),
                &catalogue::JobCancelled {
                    job_id: job.clone(),
                    reason: None,
                },
            )
            .await;
        }
    }
    let (head, _) = store.head().await.expect("head");
    let p = Projector::new(store.clone());
    for _ in 0..200 {
        if p.position().await.expect("position") >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    assert_eq!(p.lag().await.expect("lag").events, 0);
    let live = snapshot(&db.pool).await.expect("snapshot");
    let index = live["projections.audit_index"].as_array().expect("rows");
    assert_eq!(index.len() as u64, head, "each record indexed exactly once");
    let positions: Vec<u64> = index
        .iter()
        .map(|r| r["position"].as_u64().expect("p"))
        .collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>());
    assert_eq!(live["projections.jobs"].as_array().expect("jobs").len(), 60);
    assert_eq!(p.rebuild().await.expect("rebuild"), head);
    assert_eq!(snapshot(&db.pool).await.expect("snapshot"), live);
    // A rebuild of an empty ledger leaves empty tables.
    let empty = TestDb::new().await.expect("db");
    let e = Projector::new(empty.store().await.expect("store"));
    assert_eq!(e.rebuild().await.expect("rebuild"), 0);
    assert_eq!(
        snapshot(&empty.pool).await.expect("snapshot")["projections.jobs"],
        json!([])
    );
    empty.drop_db().await;
    db.drop_db().await;
}

#[tokio::test]
async fn lag_is_reported_in_events_and_time() {
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    for i in 0..5 {
        submit(&store, "acme", &format!("j{i}")).await;
    }
    let p = Projector::new(store.clone()).with_batch(4);
    let lag = p.lag().await.expect("lag");
    assert_eq!((lag.head, lag.position, lag.events), (10, 0, 10));
    assert_eq!(p.step().await.expect("step"), 4);
    assert_eq!(p.lag().await.expect("lag").events, 6);
    p.catch_up().await.expect("catch up");
    let lag = p.lag().await.expect("lag");
    assert_eq!((lag.events, lag.millis), (0, 0));
    db.drop_db().await;
}

#[tokio::test]
async fn checkpoints_are_signed_at_most_once_per_interval_by_one_publisher() {
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    let key = Arc::new(SigningKey::generate("glassbox.test/log").expect("key"));
    let token = CancellationToken::new();
    for _ in 0..3 {
        let s = db.store().await.expect("store");
        let publisher = Publisher {
            key: key.clone(),
            origin: "glassbox.test/log".into(),
            interval: Duration::from_secs(1),
        };
        tokio::spawn(Projector::new(s).run(Some(publisher), token.clone()));
    }
    // New events for about 3.5 seconds.
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        submit(&store, "acme", &format!("j{i}")).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once events stop, the tail gets signed too.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    token.cancel();
    let rows: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT tree_size, extract(epoch FROM created_at)::float8 FROM ledger.checkpoints ORDER BY tree_size",
    )
    .fetch_all(&db.pool)
    .await
    .expect("checkpoints");
    assert!(rows.len() >= 3, "signed while events arrived: {rows:?}");
    assert!(rows.len() <= 7, "at most one per second: {rows:?}");
    for w in rows.windows(2) {
        assert!(
            w[1].1 - w[0].1 >= 0.999,
            "two checkpoints within a second: {rows:?}"
        );
    }
    let (head, _) = store.head().await.expect("head");
    assert_eq!(
        rows.last().expect("last").0 as u64,
        head,
        "the tail is signed"
    );
    // Every checkpoint verifies against the verifier key.
    let report = store
        .verify(Some(&key.verifier()), &[], None, None)
        .await
        .expect("verify")
        .expect("ledger verifies");
    assert_eq!(report.checkpoints_checked.len(), rows.len());
    // And nothing more is signed while nothing new arrives.
    let p = Projector::new(store.clone());
    let publisher = Publisher {
        key: key.clone(),
        origin: "glassbox.test/log".into(),
        interval: Duration::from_secs(1),
    };
    let t = CancellationToken::new();
    let h = tokio::spawn(p.run(Some(publisher), t.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.cancel();
    h.await.expect("join");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger.checkpoints")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(n as usize, rows.len());
    db.drop_db().await;
}
