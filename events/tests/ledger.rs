//! Integration tests of the ledger against the real PostgreSQL.
//!
//! Each test gets a fresh, UUID-named database with the migrations applied.
//! Set GLASSBOX_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
//! to a role that may create databases.

use glassbox_events::checkpoint::SigningKey;
use glassbox_events::merkle::{self, reference};
use glassbox_events::record::{Record, truncate_to_micros};
use glassbox_events::store::{ExpectedVersion, NewEvent, StoreError};
use glassbox_events::testing::TestDb;
use glassbox_events::verify::Problem;
use glassbox_events::{Actor, AppendRequest, Digest, EventStore};
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use sqlx::{Connection, Executor, Row};
use std::time::Duration;

fn data(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

fn req(stream: &str, n: u64) -> AppendRequest {
    AppendRequest::new(
        "acme",
        Actor::system("test"),
        vec![NewEvent::new(
            stream,
            "test.happened",
            data(json!({"n": n, "text": "héllo ✓"})),
        )],
    )
}

/// Appends `n` single-event requests spread over a few streams.
async fn fill(store: &EventStore, n: u64) {
    for i in 0..n {
        store
            .append(req(&format!("s-{}", i % 7), i))
            .await
            .expect("append");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_give_dense_positions_a_valid_chain_and_a_gapless_subscription() {
    let db = TestDb::new().await.expect("test database");
    let stores = [
        db.store().await.expect("store"),
        db.store().await.expect("store"),
        db.store().await.expect("store"),
        db.store().await.expect("store"),
    ];
    let mut sub = stores[0].subscribe(0);
    let seen = tokio::spawn(async move {
        let mut positions = Vec::with_capacity(8000);
        while positions.len() < 8000 {
            let r = tokio::time::timeout(Duration::from_secs(60), sub.next())
                .await
                .expect("subscription stalled")
                .expect("subscription open")
                .expect("record");
            positions.push(r.record.position);
        }
        positions
    });
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let store = stores[(w % 4) as usize].clone();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(500);
            for i in 0..500u64 {
                let stream = if i % 10 == 0 {
                    "shared".to_owned()
                } else {
                    format!("w{w}-{}", i % 3)
                };
                let out = store.append(req(&stream, i)).await.expect("append");
                assert!(!out.replayed);
                mine.push(out.first_position());
            }
            mine
        }));
    }
    for w in writers {
        let mine = w.await.expect("writer");
        // Each writer awaited every append before the next: commit order = position order.
        assert!(
            mine.windows(2).all(|p| p[0] < p[1]),
            "a writer's positions went backwards"
        );
    }
    let positions = seen.await.expect("subscriber");
    assert_eq!(
        positions,
        (1..=8000).collect::<Vec<u64>>(),
        "subscriber saw every position once, in order"
    );

    let store = &stores[0];
    assert_eq!(store.head().await.expect("head").0, 8000);
    let report = store
        .verify(None, &[], None, None)
        .await
        .expect("verify runs")
        .expect("ledger verifies");
    assert_eq!((report.from, report.to, report.records), (1, 8000, 8000));

    // Merkle root from stored nodes equals the reference over the stored leaves.
    let rows = sqlx::query("SELECT canonical FROM ledger.records ORDER BY position")
        .fetch_all(&db.pool)
        .await
        .expect("read");
    let leaves: Vec<Digest> = rows
        .iter()
        .map(|r| merkle::leaf_hash(&r.get::<Vec<u8>, _>("canonical")))
        .collect();
    assert_eq!(
        store.root_at(8000).await.expect("root"),
        reference::mth(&leaves)
    );
    assert_eq!(report.root, reference::mth(&leaves));

    // Every stream's versions are dense from 1.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream, max(stream_version) AS m, count(*) AS c, min(stream_version) AS lo \
         FROM ledger.records GROUP BY stream) s WHERE m <> c OR lo <> 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("query");
    assert_eq!(bad, 0);
    let shared: i64 =
        sqlx::query_scalar("SELECT version FROM ledger.streams WHERE stream = 'shared'")
            .fetch_one(&db.pool)
            .await
            .expect("shared");
    assert_eq!(shared, 16 * 50);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_on_one_expected_version_exactly_one_wins() {
    let db = TestDb::new().await.expect("test database");
    let (a, b) = (
        db.store().await.expect("store"),
        db.store().await.expect("store"),
    );
    for round in 0..20u64 {
        let stream = format!("race-{round}");
        a.append(req(&stream, 0).expect(&stream, ExpectedVersion::NoStream))
            .await
            .expect("create");
        let ra = a.append(req(&stream, 1).expect(&stream, ExpectedVersion::Exactly(1)));
        let rb = b.append(req(&stream, 2).expect(&stream, ExpectedVersion::Exactly(1)));
        let (ra, rb) = tokio::join!(ra, rb);
        let results = [ra, rb];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        let conflict = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("one lost");
        match conflict {
            StoreError::Conflict(c) => {
                assert_eq!(c.stream, stream);
                assert_eq!(c.expected, ExpectedVersion::Exactly(1));
                assert_eq!(c.actual, Some(2));
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(a.stream_version(&stream).await.expect("version"), Some(2));
    }
    // NoStream on an existing stream, Exactly on a missing one.
    let e = a
        .append(req("race-0", 9).expect("race-0", ExpectedVersion::NoStream))
        .await
        .expect_err("exists");
    assert!(
        matches!(e, StoreError::Conflict(ref c) if c.actual == Some(2)),
        "{e}"
    );
    let e = a
        .append(req("nope", 9).expect("nope", ExpectedVersion::Exactly(3)))
        .await
        .expect_err("missing");
    assert!(
        matches!(e, StoreError::Conflict(ref c) if c.actual.is_none()),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "append to stream nope: expected version 3, found no stream"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_appends_with_one_idempotency_key_land_once() {
    let db = TestDb::new().await.expect("test database");
    let stores = [
        db.store().await.expect("store"),
        db.store().await.expect("store"),
    ];
    let digest = Digest::of(b"request body");
    let mut tasks = Vec::new();
    for i in 0..50usize {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let r = AppendRequest::new(
                "acme",
                Actor::system("test"),
                vec![
                    NewEvent::new("job-x", "job.submitted", data(json!({"i": 1}))),
                    NewEvent::new("job-x", "job.accepted", data(json!({"i": 2}))),
                ],
            )
            .idempotent("key-1", digest);
            store.append(r).await.expect("append")
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("task"));
    }
    assert_eq!(
        outcomes.iter().filter(|o| !o.replayed).count(),
        1,
        "exactly one original"
    );
    let first = &outcomes[0].events;
    assert!(
        outcomes.iter().all(|o| &o.events == first),
        "all 50 see the same positions"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger.records")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(count, 2, "the events landed once");

    // Same key, different request: conflict, nothing appended. Other tenant: independent.
    let r = AppendRequest::new(
        "acme",
        Actor::system("t"),
        vec![NewEvent::new("job-y", "job.submitted", Map::new())],
    )
    .idempotent("key-1", Digest::of(b"another body"));
    let e = stores[0].append(r).await.expect_err("conflict");
    assert!(matches!(e, StoreError::IdempotencyConflict { .. }), "{e}");
    let r = AppendRequest::new(
        "other",
        Actor::system("t"),
        vec![NewEvent::new("job-y", "job.submitted", Map::new())],
    )
    .idempotent("key-1", Digest::of(b"another body"));
    assert!(!stores[0].append(r).await.expect("other tenant").replayed);
    assert_eq!(stores[0].head().await.expect("head").0, 3);
    db.drop_db().await;
}

#[tokio::test]
async fn floats_and_empty_requests_are_refused_and_nothing_lands() {
    let db = TestDb::new().await.expect("test database");
    let store = db.store().await.expect("store");
    let r = AppendRequest::new(
        "acme",
        Actor::system("t"),
        vec![
            NewEvent::new("s", "ok.happened", data(json!({"a": 1}))),
            NewEvent::new("s", "bad.happened", data(json!({"cpu": {"seconds": 0.25}}))),
        ],
    );
    let e = store.append(r).await.expect_err("float refused");
    match &e {
        StoreError::InvalidEvent { index, source, .. } => {
            assert_eq!(*index, 1);
            assert!(source.to_string().contains("data.cpu.seconds"), "{source}");
        }
        other => panic!("expected InvalidEvent, got {other:?}"),
    }
    let e = store
        .append(AppendRequest::new("acme", Actor::system("t"), vec![]))
        .await
        .expect_err("empty");
    assert!(matches!(e, StoreError::InvalidRequest(_)));
    assert_eq!(store.head().await.expect("head").0, 0);
    db.drop_db().await;
}

#[tokio::test]
async fn records_refuse_update_delete_truncate_and_the_service_role_may_only_insert_and_select() {
    let db = TestDb::new().await.expect("test database");
    let store = db.store().await.expect("store");
    fill(&store, 3).await;
    let key = SigningKey::generate("k").expect("key");
    store
        .publish_checkpoint(&key, "o")
        .await
        .expect("publish")
        .expect("signed");
    for sql in [
        "UPDATE ledger.records SET tenant = 'x' WHERE position = 1",
        "DELETE FROM ledger.records WHERE position = 2",
        "TRUNCATE ledger.records",
        "DELETE FROM ledger.checkpoints",
        "UPDATE ledger.merkle_nodes SET hash = hash",
        "TRUNCATE ledger.merkle_nodes CASCADE",
    ] {
        let e = sqlx::query(sql).execute(&db.pool).await.expect_err(sql);
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(
        store
            .verify(None, &[], None, None)
            .await
            .expect("runs")
            .expect("intact")
            .records,
        3
    );
    for (privilege, granted) in [
        ("INSERT", true),
        ("SELECT", true),
        ("UPDATE", false),
        ("DELETE", false),
        ("TRUNCATE", false),
    ] {
        let has: bool = sqlx::query_scalar(
            "SELECT has_table_privilege('glassbox_service', 'ledger.records', $1)",
        )
        .bind(privilege)
        .fetch_one(&db.pool)
        .await
        .expect("privilege");
        assert_eq!(
            has, granted,
            "glassbox_service {privilege} on ledger.records"
        );
    }
    // And really as that role:
    let mut c = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    c.execute("SET ROLE glassbox_service")
        .await
        .expect("set role");
    let e = c
        .execute("ALTER TABLE ledger.records DISABLE TRIGGER ALL")
        .await
        .expect_err("not owner");
    assert!(e.to_string().contains("must be owner"), "{e}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger.records")
        .fetch_one(&mut c)
        .await
        .expect("select");
    assert_eq!(n, 3);
    db.drop_db().await;
}

/// Builds a ledger of 200 records with a signed checkpoint every 10.
async fn ledger_with_checkpoints(db: &TestDb) -> (EventStore, SigningKey) {
    let store = db.store().await.expect("store");
    let key = SigningKey::generate("glassbox.test/ledger").expect("key");
    for i in 0..20 {
        fill(&store, 10).await;
        let cp = store
            .publish_checkpoint(&key, "glassbox.test/ledger")
            .await
            .expect("publish")
            .expect("new checkpoint");
        assert_eq!(cp.checkpoint.size, (i + 1) * 10);
    }
    (store, key)
}

async fn canonical_at(db: &TestDb, p: i64) -> Vec<u8> {
    sqlx::query_scalar("SELECT canonical FROM ledger.records WHERE position = $1")
        .bind(p)
        .fetch_one(&db.pool)
        .await
        .expect("row")
}

async fn first_failure(store: &EventStore, key: Option<&SigningKey>) -> Option<(u64, Problem)> {
    let v = key.map(|k| k.verifier());
    store
        .verify(v.as_ref(), &[], None, None)
        .await
        .expect("verify runs")
        .err()
        .map(|f| (f.position, f.problem))
}

#[tokio::test]
async fn tampering_changed_payload_byte_is_found_at_its_position() {
    let db = TestDb::new().await.expect("test database");
    let (store, key) = ledger_with_checkpoints(&db).await;
    assert_eq!(first_failure(&store, Some(&key)).await, None);
    let mut bytes = canonical_at(&db, 77).await;
    let at = bytes
        .windows(5)
        .position(|w| w == b"llo \xe2")
        .expect("payload text");
    bytes[at] = b'L';
    sqlx::query("SET session_replication_role = replica")
        .execute(&db.pool)
        .await
        .ok();
    db.tamper(&format!(
        "UPDATE ledger.records SET canonical = '\\x{}' WHERE position = 77",
        hex::encode(&bytes)
    ))
    .await
    .expect("tamper");
    let (pos, problem) = first_failure(&store, None)
        .await
        .expect("detected without checkpoints");
    assert_eq!(pos, 77);
    assert!(
        matches!(problem, Problem::EntryHashMismatch { .. }),
        "{problem}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn tampering_changed_stored_hash_is_found_at_its_position() {
    let db = TestDb::new().await.expect("test database");
    let (store, _key) = ledger_with_checkpoints(&db).await;
    db.tamper("UPDATE ledger.records SET entry_hash = sha256('forged') WHERE position = 91")
        .await
        .expect("tamper");
    let (pos, problem) = first_failure(&store, None).await.expect("detected");
    assert_eq!(pos, 91);
    assert!(
        matches!(problem, Problem::EntryHashMismatch { .. }),
        "{problem}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn tampering_deleted_row_is_found_at_its_position() {
    let db = TestDb::new().await.expect("test database");
    let (store, _key) = ledger_with_checkpoints(&db).await;
    db.tamper("DELETE FROM ledger.records WHERE position = 120")
        .await
        .expect("tamper");
    assert_eq!(
        first_failure(&store, None).await,
        Some((120, Problem::Missing))
    );
    db.drop_db().await;
}

#[tokio::test]
async fn tampering_swapped_payloads_are_found_at_the_first_of_them() {
    let db = TestDb::new().await.expect("test database");
    let (store, _key) = ledger_with_checkpoints(&db).await;
    // Swap bytes and hashes together, so each row is self-consistent on its own.
    db.tamper(
        "UPDATE ledger.records r SET canonical = o.canonical, entry_hash = o.entry_hash \
         FROM ledger.records o WHERE (r.position, o.position) IN ((30, 31), (31, 30))",
    )
    .await
    .expect("tamper");
    let (pos, problem) = first_failure(&store, None).await.expect("detected");
    assert_eq!(pos, 30);
    assert_eq!(problem, Problem::PositionMismatch { in_record: 31 });
    db.drop_db().await;
}

/// Re-signs nothing: the insider rewrites rows from `from` to the end with a fresh,
/// self-consistent chain (and fixes the head), but cannot forge a checkpoint.
async fn rewrite_tail(db: &TestDb, from: i64, insert_extra: bool) {
    let prev: Vec<u8> =
        sqlx::query_scalar("SELECT entry_hash FROM ledger.records WHERE position = $1")
            .bind(from - 1)
            .fetch_one(&db.pool)
            .await
            .expect("prev");
    let mut prev = Digest::from_slice(&prev).expect("digest");
    let rows =
        sqlx::query("SELECT canonical FROM ledger.records WHERE position >= $1 ORDER BY position")
            .bind(from)
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    let mut records: Vec<Record> = rows
        .iter()
        .map(|r| Record::from_canonical(&r.get::<Vec<u8>, _>("canonical")).expect("record"))
        .collect();
    if insert_extra {
        let mut forged = records[0].clone();
        forged.event_id = uuid::Uuid::new_v4();
        forged.stream = "forged".into();
        forged.stream_version = 1;
        forged.occurred_at = truncate_to_micros(chrono::Utc::now());
        records.insert(0, forged);
    } else {
        for r in &mut records {
            r.data.insert("text".into(), json!("rewritten"));
        }
    }
    let mut sql = String::from("DELETE FROM ledger.records WHERE position >= ");
    sql.push_str(&format!("{from};"));
    let mut position = from as u64;
    for r in &mut records {
        r.position = position;
        r.prev_hash = prev;
        let bytes = r.canonical_bytes().expect("bytes");
        prev = Digest::of(&bytes);
        sql.push_str(&format!(
            "INSERT INTO ledger.records VALUES ({}, '{}', '{}', {}, '{}', '{}', now(), '\\x{}', '\\x{}');",
            position,
            r.event_id,
            r.stream,
            r.stream_version,
            r.event_type,
            r.tenant,
            hex::encode(&bytes),
            prev.to_hex()
        ));
        position += 1;
    }
    sql.push_str(&format!(
        "UPDATE ledger.head SET position = {}, entry_hash = '\\x{}';",
        position - 1,
        prev.to_hex()
    ));
    db.tamper(&sql).await.expect("tamper");
}

#[tokio::test]
async fn tampering_inserted_row_is_found_where_the_chain_breaks() {
    let db = TestDb::new().await.expect("test database");
    let (store, _key) = ledger_with_checkpoints(&db).await;
    // Shift rows 60.. up by one and insert a well-formed, correctly chained record at
    // 60; the original record 60 (now at 61) no longer fits.
    db.tamper(
        "UPDATE ledger.records SET position = position + 1000001 WHERE position >= 60; \
         UPDATE ledger.records SET position = position - 1000000 WHERE position > 1000000;",
    )
    .await
    .expect("tamper");
    let prev: Vec<u8> =
        sqlx::query_scalar("SELECT entry_hash FROM ledger.records WHERE position = 59")
            .fetch_one(&db.pool)
            .await
            .expect("prev");
    let mut forged = Record::from_canonical(&canonical_at(&db, 61).await).expect("record");
    forged.position = 60;
    forged.prev_hash = Digest::from_slice(&prev).expect("digest");
    forged.event_id = uuid::Uuid::new_v4();
    forged.stream = "forged".into();
    forged.stream_version = 1;
    let bytes = forged.canonical_bytes().expect("bytes");
    db.tamper(&format!(
        "INSERT INTO ledger.records VALUES (60, '{}', 'forged', 1, '{}', 'acme', now(), '\\x{}', '\\x{}')",
        forged.event_id,
        forged.event_type,
        hex::encode(&bytes),
        Digest::of(&bytes).to_hex()
    ))
        .await
        .expect("tamper");
    let (pos, problem) = first_failure(&store, None).await.expect("detected");
    assert_eq!(
        pos, 61,
        "the first record that no longer fits is right after the inserted one"
    );
    assert_eq!(problem, Problem::PositionMismatch { in_record: 60 });
    db.drop_db().await;
}

#[tokio::test]
async fn tampering_cut_tail_is_found_only_against_a_signed_checkpoint() {
    let db = TestDb::new().await.expect("test database");
    let (store, key) = ledger_with_checkpoints(&db).await;
    let hash180: Vec<u8> =
        sqlx::query_scalar("SELECT entry_hash FROM ledger.records WHERE position = 180")
            .fetch_one(&db.pool)
            .await
            .expect("hash");
    db.tamper(&format!(
        "DELETE FROM ledger.records WHERE position > 180; \
         UPDATE ledger.head SET position = 180, entry_hash = '\\x{}';",
        hex::encode(hash180)
    ))
    .await
    .expect("tamper");
    // The chain itself is intact: without a checkpoint nothing is wrong.
    assert_eq!(
        first_failure(&store, None).await,
        None,
        "undetectable without a checkpoint"
    );
    // Against the signed checkpoint of size 200 the cut is named.
    let (pos, problem) = first_failure(&store, Some(&key)).await.expect("detected");
    assert_eq!(pos, 181);
    assert_eq!(
        problem,
        Problem::TailMissing {
            checkpoint_size: 200,
            ledger_size: 180
        }
    );
    // Even when the insider removes the stored checkpoints, an auditor's own copy of a
    // note still catches it.
    let note = store
        .checkpoints()
        .await
        .expect("cps")
        .pop()
        .expect("latest")
        .note;
    db.tamper("DELETE FROM ledger.checkpoints WHERE tree_size > 180")
        .await
        .expect("tamper");
    let v = key.verifier();
    let f = store
        .verify(Some(&v), &[note], None, None)
        .await
        .expect("runs")
        .expect_err("detected");
    assert_eq!(f.position, 181);
    db.drop_db().await;
}

#[tokio::test]
async fn tampering_rewritten_tail_with_recomputed_chain_is_found_only_against_a_signed_checkpoint()
{
    let db = TestDb::new().await.expect("test database");
    let (store, key) = ledger_with_checkpoints(&db).await;
    rewrite_tail(&db, 171, false).await;
    assert_eq!(
        first_failure(&store, None).await,
        None,
        "a self-consistent rewrite passes the chain check"
    );
    let (pos, problem) = first_failure(&store, Some(&key)).await.expect("detected");
    // Checkpoints every 10 records: 170 still matches, 180 does not.
    assert_eq!(pos, 171);
    assert_eq!(problem, Problem::CheckpointMismatch { size: 180 });

    // A forged insertion with a recomputed tail is caught the same way.
    let db2 = TestDb::new().await.expect("test database");
    let (store2, key2) = ledger_with_checkpoints(&db2).await;
    rewrite_tail(&db2, 95, true).await;
    assert_eq!(first_failure(&store2, None).await, None);
    assert_eq!(
        first_failure(&store2, Some(&key2)).await,
        Some((91, Problem::CheckpointMismatch { size: 100 }))
    );
    // The log refuses to sign anything on top of the rewritten history.
    assert!(matches!(
        store2
            .publish_checkpoint(&key2, "glassbox.test/ledger")
            .await,
        Err(StoreError::Inconsistent(_))
    ));
    db.drop_db().await;
    db2.drop_db().await;
}

#[tokio::test]
async fn store_proofs_match_the_reference_for_every_size_to_300() {
    let db = TestDb::new().await.expect("test database");
    let store = db.store().await.expect("store");
    // Batches of varying size so group and multi-event paths build the nodes.
    let mut i = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    while i < 300 {
        let n = rng.random_range(1..=9).min(300 - i);
        let events = (0..n)
            .map(|j| {
                NewEvent::new(
                    format!("p-{}", rng.random_range(0..5)),
                    "proof.tested",
                    data(json!({"j": j, "r": rng.random::<u32>()})),
                )
            })
            .collect();
        store
            .append(AppendRequest::new("acme", Actor::system("t"), events))
            .await
            .expect("append");
        i += n;
    }
    let leaves: Vec<Digest> = store
        .read_all(1, 1000)
        .await
        .expect("read")
        .iter()
        .map(|r| merkle::leaf_hash(&r.canonical))
        .collect();
    assert_eq!(leaves.len(), 300);
    for n in 1..=300u64 {
        let root = store.root_at(n).await.expect("root");
        assert_eq!(root, reference::mth(&leaves[..n as usize]), "root {n}");
        let m = rng.random_range(0..n);
        let proof = store.inclusion_proof(m + 1, n).await.expect("inclusion");
        assert_eq!(
            proof,
            reference::path(m as usize, &leaves[..n as usize]),
            "path {m} {n}"
        );
        merkle::verify_inclusion(m, n, &leaves[m as usize], &proof, &root).expect("verifies");
        let first = rng.random_range(1..=n);
        let cproof = store
            .consistency_proof(first, n)
            .await
            .expect("consistency");
        assert_eq!(
            cproof,
            reference::proof(first as usize, &leaves[..n as usize]),
            "proof {first} {n}"
        );
        let first_root = reference::mth(&leaves[..first as usize]);
        merkle::verify_consistency(first, n, &cproof, &first_root, &root).expect("verifies");
        if !proof.is_empty() {
            let mut bad = proof.clone();
            bad[0].0[3] ^= 0x10;
            assert!(merkle::verify_inclusion(m, n, &leaves[m as usize], &bad, &root).is_err());
        }
        if !cproof.is_empty() {
            let mut bad = cproof.clone();
            let last = bad.len() - 1;
            bad[last].0[0] ^= 1;
            assert!(merkle::verify_consistency(first, n, &bad, &first_root, &root).is_err());
        }
    }
    assert!(matches!(
        store.inclusion_proof(1, 301).await,
        Err(StoreError::Proof(_))
    ));
    db.drop_db().await;
}

#[tokio::test]
async fn subscription_survives_a_killed_connection_without_skipping_or_repeating() {
    let db = TestDb::new().await.expect("test database");
    let store = db.store().await.expect("store");
    fill(&store, 30).await;
    let mut sub = store.subscribe(10);
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(
            sub.next()
                .await
                .expect("open")
                .expect("record")
                .record
                .position,
        );
    }
    // Kill every LISTEN connection from outside, then keep appending.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("terminate");
    assert!(killed >= 1, "the listener connection was found and killed");
    fill(&store, 40).await;
    while got.len() < 60 {
        let r = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("subscription recovered")
            .expect("open")
            .expect("record");
        got.push(r.record.position);
    }
    assert_eq!(got, (11..=70).collect::<Vec<u64>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(700), sub.next())
            .await
            .is_err(),
        "nothing extra"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn checkpoints_single_publisher_incremental_verify_and_unknown_types() {
    let db = TestDb::new().await.expect("test database");
    let store = db.store().await.expect("store");
    let key = SigningKey::generate("glassbox.test/ledger").expect("key");
    assert!(
        store
            .publish_checkpoint(&key, "o")
            .await
            .expect("publish")
            .is_none(),
        "empty ledger"
    );
    // An event type not in the catalogue is stored, read back and verified.
    store
        .append(AppendRequest::new(
            "acme",
            Actor::system("t"),
            vec![NewEvent::new(
                "vendor-1",
                "vendor.thing_happened",
                data(json!({"k": [1, "two", null]})),
            )],
        ))
        .await
        .expect("unknown type appends");
    fill(&store, 49).await;
    // Several publishers at once: each size is signed once.
    let results = futures::future::join_all(
        (0..6).map(|_| store.publish_checkpoint(&key, "glassbox.test/ledger")),
    )
    .await;
    let published: Vec<_> = results
        .into_iter()
        .filter_map(|r| r.expect("publish"))
        .collect();
    assert_eq!(published.len(), 1);
    let cp = &published[0];
    assert_eq!(cp.checkpoint.size, 50);
    assert_eq!(
        key.verifier().open(&cp.note).expect("signature"),
        cp.checkpoint
    );
    assert!(
        store
            .publish_checkpoint(&key, "glassbox.test/ledger")
            .await
            .expect("again")
            .is_none()
    );
    fill(&store, 25).await;
    let v = key.verifier();
    let report = store
        .verify(Some(&v), &[], Some(60), None)
        .await
        .expect("runs")
        .expect("verifies");
    assert_eq!(
        (report.from, report.to),
        (51, 75),
        "incremental from the checkpoint at 50"
    );
    let first = store.read_stream("vendor-1", 1, 10).await.expect("read");
    assert_eq!(first[0].record.event_type, "vendor.thing_happened");
    assert_eq!(first[0].record.data, data(json!({"k": [1, "two", null]})));
    // Incremental verification still catches tampering after the checkpoint …
    db.tamper("UPDATE ledger.records SET entry_hash = sha256('x') WHERE position = 66")
        .await
        .expect("tamper");
    let f = store
        .verify(Some(&v), &[], Some(60), None)
        .await
        .expect("runs")
        .expect_err("detected");
    assert_eq!(f.position, 66);
    // … and refuses a start point whose stored nodes no longer match the signed root.
    db.tamper("UPDATE ledger.merkle_nodes SET hash = sha256('y') WHERE level = 5 AND idx = 0")
        .await
        .expect("tamper");
    let f = store
        .verify(Some(&v), &[], Some(60), None)
        .await
        .expect("runs")
        .expect_err("detected");
    assert_eq!(f.problem, Problem::CheckpointMismatch { size: 50 });
    db.drop_db().await;
}

#[tokio::test]
async fn tampering_row_appended_behind_the_heads_back_is_found() {
    let db = TestDb::new().await.expect("test database");
    let (store, _key) = ledger_with_checkpoints(&db).await;
    let last = Record::from_canonical(&canonical_at(&db, 200).await).expect("record");
    let mut forged = last.clone();
    forged.position = 201;
    forged.stream_version += 1;
    forged.event_id = uuid::Uuid::new_v4();
    forged.prev_hash = Digest::of(&last.canonical_bytes().expect("bytes"));
    let bytes = forged.canonical_bytes().expect("bytes");
    db.tamper(&format!(
        "INSERT INTO ledger.records VALUES (201, '{}', '{}', {}, '{}', '{}', now(), '\\x{}', '\\x{}')",
        forged.event_id,
        forged.stream,
        forged.stream_version,
        forged.event_type,
        forged.tenant,
        hex::encode(&bytes),
        Digest::of(&bytes).to_hex()
    ))
    .await
    .expect("tamper");
    let (pos, problem) = first_failure(&store, None).await.expect("detected");
    assert_eq!(pos, 201);
    assert!(matches!(problem, Problem::HeadMismatch(_)), "{problem}");
    db.drop_db().await;
}

/// A split view: a second checkpoint of the same size with another root,
/// signed by the same key (e.g. shown to another auditor). Verification with
/// both must fail at that size, not keep the first and ignore the other.
#[tokio::test]
async fn two_checkpoints_of_one_size_with_different_roots_fail_verification() {
    let db = TestDb::new().await.expect("test database");
    let (store, key) = ledger_with_checkpoints(&db).await;
    let verifier = key.verifier();
    store
        .verify(Some(&verifier), &[], None, None)
        .await
        .expect("runs")
        .expect("the ledger verifies");
    let forged = glassbox_events::Checkpoint {
        origin: "glassbox.test/ledger".into(),
        size: 100,
        root: glassbox_events::Digest::of(b"another history"),
    };
    let failure = store
        .verify(Some(&verifier), &[key.sign(&forged)], None, None)
        .await
        .expect("runs")
        .expect_err("a split view at size 100 must not verify");
    assert!(
        matches!(failure.problem, Problem::CheckpointMismatch { size: 100 }),
        "{failure:?}"
    );
    assert_eq!(
        failure.position, 91,
        "after the last checkpoint that held (90)"
    );
    db.drop_db().await;
}

/// Requests that were group-committed together succeed or fail on their own:
/// the head row is held so that three requests queue up and then share one
/// transaction (same `xmin`); the one with a wrong expected version fails
/// alone, the others land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_in_a_shared_group_commit_fails_alone() {
    let db = TestDb::new().await.expect("test database");
    let store = db.store().await.expect("store");
    store
        .append(req("shared-c", 0).expect("shared-c", ExpectedVersion::NoStream))
        .await
        .expect("create");
    // Hold the head row: the writer's next transaction waits on it.
    let mut holder = db.pool.begin().await.expect("begin");
    sqlx::query("SELECT position FROM ledger.head WHERE id FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock head");
    let first = tokio::spawn({
        let s = store.clone();
        async move { s.append(req("shared-a", 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // These queue while the first group waits: they become the next group.
    let b = tokio::spawn({
        let s = store.clone();
        async move { s.append(req("shared-b", 2)).await }
    });
    let c = tokio::spawn({
        let s = store.clone();
        async move {
            s.append(req("shared-c", 3).expect("shared-c", ExpectedVersion::Exactly(7)))
                .await
        }
    });
    let d = tokio::spawn({
        let s = store.clone();
        async move { s.append(req("shared-d", 4)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.rollback().await.expect("release");
    first.await.expect("task").expect("first lands");
    let (b, c, d) = (
        b.await.expect("task").expect("b lands"),
        c.await.expect("task"),
        d.await.expect("task").expect("d lands"),
    );
    assert!(matches!(c, Err(StoreError::Conflict(_))), "{c:?}");
    let xmin = |p: u64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT xmin::text FROM ledger.records WHERE position = $1",
            )
            .bind(p as i64)
            .fetch_one(&pool)
            .await
            .expect("xmin")
        }
    };
    assert_eq!(
        xmin(b.first_position()).await,
        xmin(d.first_position()).await,
        "b and d were committed in one transaction"
    );
    // b and d queue in whichever order the scheduler ran them; either way
    // they are adjacent: c, between them in the group, took no position.
    let (lo, hi) = (
        b.first_position().min(d.first_position()),
        b.first_position().max(d.first_position()),
    );
    assert_eq!(hi, lo + 1, "c took no position");
    assert_eq!(store.stream_version("shared-c").await.expect("v"), Some(1));
    store
        .verify(None, &[], None, None)
        .await
        .expect("runs")
        .expect("the chain verifies");
    db.drop_db().await;
}

#[tokio::test]
async fn a_type_watch_delivers_only_its_types_promptly_and_reads_nothing_else() {
    let db = TestDb::new().await.expect("test database");
    let store = db.store().await.expect("store");
    fill(&store, 5).await;
    let (head, _) = store.head().await.expect("head");
    let mut watch = store.watch_types(head, &["test.wanted"]);
    // Let the watch settle (LISTEN) before the appends it must see.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reads_before = store.records_read();
    let mut wanted = Vec::new();
    for i in 0..20u64 {
        let t = if i % 5 == 0 {
            "test.wanted"
        } else {
            "test.happened"
        };
        let out = store
            .append(AppendRequest::new(
                "acme",
                Actor::system("test"),
                vec![NewEvent::new("s-w", t, data(json!({"n": i})))],
            ))
            .await
            .expect("append");
        if t == "test.wanted" {
            wanted.push(out.first_position());
        }
    }
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    while got.len() < wanted.len() {
        let r = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the watch stalled")
            .expect("open")
            .expect("record");
        assert_eq!(r.record.event_type, "test.wanted");
        got.push(r.record.position);
    }
    assert_eq!(got, wanted, "in order, each once, nothing before `after`");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "woken, not polled late"
    );
    // Only the wanted records were read (the filter runs in the database).
    assert_eq!(store.records_read() - reads_before, wanted.len() as u64);
    // Nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), watch.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn verifying_to_a_position_far_beyond_the_head_checks_the_ledger_and_stops_at_the_head() {
    let db = TestDb::new().await.expect("test database");
    let store = db.store().await.expect("store");
    fill(&store, 12).await;
    // Before the fix this planned 2^53 / 5000 batches up front (memory blow-up).
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        store.verify(None, &[], None, Some(9_007_199_254_740_991)),
    )
    .await
    .expect("verify returned promptly")
    .expect("verify ran")
    .expect("the ledger verifies");
    assert_eq!(report.records, 12);
}
