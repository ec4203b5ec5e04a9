//! Evidence bundles against the real PostgreSQL: export, then verify offline;
//! any flipped byte in any file fails with a reason; another key fails; a
//! tenant-filtered bundle holds nothing of other tenants and still verifies.

use glassbox_audit_query::bundle::{FILES, Filters, MANIFEST_NOTE, export, verify_bundle};
use glassbox_events::store::{AppendRequest, EventStore, NewEvent};
use glassbox_events::testing::TestDb;
use glassbox_events::{Actor, SigningKey};
use glassbox_verify::tarball;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

fn data(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

async fn fill(store: &EventStore) {
    for i in 0..40u64 {
        let (tenant, actor) = if i % 3 == 0 {
            ("globex", "gina@globex")
        } else {
            ("acme", "alice@acme")
        };
        let mut a = Actor::system("x");
        a.kind = glassbox_events::ActorKind::User;
        a.id = actor.into();
        a.via = glassbox_events::AuthVia::Jwt;
        let e = NewEvent::new(
            format!("job-{tenant}-{}", i % 5),
            if i % 2 == 0 {
                "job.submitted"
            } else {
                "policy.evaluated"
            },
            data(json!({"n": i, "secret_project": format!("{tenant}-project-{i}")})),
        );
        // Four "runs", each spanning both tenants.
        let mut r = AppendRequest::new(tenant, a, vec![e]);
        r.correlation_id = format!("run-{}", i % 4);
        store.append(r).await.expect("append");
    }
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "glassbox-bundle-{}-{name}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// (name, offset of its data, size) for each file in the tar.
fn layout(path: &Path) -> Vec<(String, u64, u64)> {
    let mut a = tar::Archive::new(std::fs::File::open(path).expect("open"));
    a.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.path().expect("path").to_string_lossy().into_owned(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect()
}

async fn setup() -> (TestDb, EventStore, SigningKey) {
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    fill(&store).await;
    let key = SigningKey::generate("glassbox.test/ledger").expect("key");
    store
        .publish_checkpoint(&key, "glassbox.test/ledger")
        .await
        .expect("checkpoint")
        .expect("signed");
    glassbox_projector::Projector::new(store.clone())
        .catch_up()
        .await
        .expect("projection");
    (db, store, key)
}

#[tokio::test]
async fn a_tenant_bundle_round_trips_offline_and_holds_no_other_tenant() {
    let (db, store, key) = setup().await;
    // Appended after the checkpoint: not provable yet, so not in the bundle.
    store
        .append(AppendRequest::new(
            "acme",
            Actor::system("late"),
            vec![NewEvent::new(
                "job-acme-late",
                "job.submitted",
                data(json!({"late": true})),
            )],
        ))
        .await
        .expect("late append");
    let out = tmp("acme.tar");
    let filters = Filters {
        tenant: Some("acme".into()),
        ..Filters::default()
    };
    let exported = export(&store, &key, &filters, "audrey@acme", &out)
        .await
        .expect("export");
    let acme = (0..40).filter(|i| i % 3 != 0).count() as u64;
    assert_eq!(exported.records, acme);
    assert_eq!(exported.tree_size, 40);
    let verified = verify_bundle(&out, &key.verifier()).expect("verifies offline");
    assert_eq!(verified.records, acme);
    assert_eq!(verified.exported_by, "audrey@acme");
    assert_eq!(verified.filters, filters);
    // Nothing of globex: not its name, IDs or data, in any file.
    let bytes = std::fs::read(&out).expect("read");
    let text = String::from_utf8_lossy(&bytes);
    for needle in ["globex", "gina"] {
        assert!(!text.contains(needle), "{needle} leaked into the bundle");
    }
    assert!(
        !text.contains("late"),
        "a record after the checkpoint was included"
    );
    let names: Vec<String> = layout(&out).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, FILES.map(str::to_owned));
    // Another key does not verify it.
    let other = SigningKey::generate("glassbox.test/ledger").expect("other key");
    let err = verify_bundle(&out, &other.verifier()).expect_err("another key");
    assert_eq!(err.file, "manifest.sig", "{err}");
    // Filters by event type and actor export exactly the matching records.
    let by_type = tmp("types.tar");
    let f = Filters {
        tenant: Some("acme".into()),
        event_type: Some("policy.evaluated".into()),
        from_position: Some(10),
        ..Filters::default()
    };
    let r = export(&store, &key, &f, "audrey@acme", &by_type)
        .await
        .expect("export");
    let want = (0..40u64)
        .filter(|i| i % 3 != 0 && i % 2 == 1 && i + 1 >= 10)
        .count() as u64;
    assert_eq!(r.records, want);
    assert_eq!(
        verify_bundle(&by_type, &key.verifier())
            .expect("verifies")
            .records,
        want
    );
    // By correlation ID: exactly the records of that run (the verifier checked
    // each one against the filter, so the count makes the set exact), across
    // tenants, or within one when combined with a tenant.
    let by_run = tmp("run.tar");
    for (tenant, want) in [
        (None, (0..40u64).filter(|i| i % 4 == 1).count() as u64),
        (
            Some("acme"),
            (0..40u64).filter(|i| i % 4 == 1 && i % 3 != 0).count() as u64,
        ),
    ] {
        let f = Filters {
            tenant: tenant.map(str::to_owned),
            correlation_id: Some("run-1".into()),
            ..Filters::default()
        };
        let r = export(&store, &key, &f, "audrey@acme", &by_run)
            .await
            .expect("export");
        assert_eq!(r.records, want, "{f:?}");
        let verified = verify_bundle(&by_run, &key.verifier()).expect("verifies");
        assert_eq!(verified.records, want);
        assert_eq!(verified.filters, f);
        let text = String::from_utf8_lossy(&std::fs::read(&by_run).expect("read")).into_owned();
        for other in ["run-0", "run-2", "run-3"] {
            assert!(!text.contains(other), "{other} in a run-1 bundle");
        }
    }
    for p in [out, by_type, by_run] {
        let _ = std::fs::remove_file(p);
    }
    db.drop_db().await;
}

#[tokio::test]
async fn a_bundle_whose_correlation_filter_does_not_match_a_record_does_not_verify() {
    let (db, store, key) = setup().await;
    let out = tmp("correlation.tar");
    let f = Filters {
        correlation_id: Some("run-2".into()),
        ..Filters::default()
    };
    let r = export(&store, &key, &f, "auditor", &out)
        .await
        .expect("export");
    assert_eq!(r.records, 10);
    assert_eq!(r.first_position, Some(3), "the first record of run-2");
    let parts = members(&out);
    // The same records under another run's filter (re-signed, as only the key
    // holder could): the first record is outside it.
    let bad = tmp("correlation-bad.tar");
    std::fs::write(
        &bad,
        resigned(&key, &parts, |m| {
            m["filters"]["correlation_id"] = json!("run-3");
        }),
    )
    .expect("write");
    let err = verify_bundle(&bad, &key.verifier()).expect_err("run-2 records as run-3");
    assert_eq!(err.file, "records.jsonl", "{err}");
    assert_eq!(
        err.reason,
        "line 1: position 3 is outside the filter (correlation_id)"
    );
    let o = outside_verifier(&bad, &key.verifier());
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "FAIL records.jsonl: line 1: position 3 is outside the filter (correlation_id)"
    );
    // A filter member of the wrong type is refused by both.
    std::fs::write(
        &bad,
        resigned(&key, &parts, |m| {
            m["filters"]["correlation_id"] = json!(2);
        }),
    )
    .expect("write");
    let err = verify_bundle(&bad, &key.verifier()).expect_err("a number");
    assert_eq!(err.file, "manifest.json", "{err}");
    assert_eq!(
        outside_verifier(&bad, &key.verifier()).status.code(),
        Some(1)
    );
    for p in [out, bad] {
        let _ = std::fs::remove_file(p);
    }
    db.drop_db().await;
}

#[tokio::test]
async fn flipping_any_byte_of_any_file_fails_verification_with_a_reason() {
    let (db, store, key) = setup().await;
    let out = tmp("all.tar");
    export(&store, &key, &Filters::default(), "auditor", &out)
        .await
        .expect("export");
    verify_bundle(&out, &key.verifier()).expect("the untouched bundle verifies");
    let original = std::fs::read(&out).expect("read");
    let mut tried = 0;
    for (name, offset, size) in layout(&out) {
        assert!(size > 0, "{name} is empty");
        for at in [0, size / 2, size - 1] {
            let mut bytes = original.clone();
            let i = (offset + at) as usize;
            bytes[i] ^= 0x01;
            let bad = tmp("flipped.tar");
            std::fs::write(&bad, &bytes).expect("write");
            let err = verify_bundle(&bad, &key.verifier())
                .expect_err(&format!("a flipped byte at {at} of {name} went unnoticed"));
            assert!(!err.reason.is_empty(), "{name}: no reason");
            let _ = std::fs::remove_file(&bad);
            tried += 1;
        }
    }
    assert_eq!(tried, 3 * FILES.len());
    // A truncated bundle and a non-bundle fail too.
    let bad = tmp("truncated.tar");
    std::fs::write(&bad, &original[..original.len() / 2]).expect("write");
    assert!(verify_bundle(&bad, &key.verifier()).is_err());
    std::fs::write(&bad, b"not a tar file at all").expect("write");
    assert!(verify_bundle(&bad, &key.verifier()).is_err());
    let _ = std::fs::remove_file(&bad);
    let _ = std::fs::remove_file(&out);
    db.drop_db().await;
}

/// The members of a bundle, read with the independent `tar` crate.
fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read as _;
    let mut a = tar::Archive::new(std::fs::File::open(path).expect("open"));
    a.entries()
        .expect("entries")
        .map(|e| {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().into_owned();
            let mut b = Vec::new();
            e.read_to_end(&mut b).expect("read");
            (name, b)
        })
        .collect()
}

fn pack(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = tarball::Writer::new(Vec::new());
    for (n, b) in members {
        w.append(n, b.len() as u64, b.as_slice()).expect("append");
    }
    w.finish().expect("finish")
}

#[tokio::test]
async fn a_bundle_verifies_only_as_the_exact_bytes_that_were_exported() {
    let (db, store, key) = setup().await;
    let out = tmp("exact.tar");
    let report = export(&store, &key, &Filters::default(), "auditor", &out)
        .await
        .expect("export");
    let good = std::fs::read(&out).expect("read");
    let verified = verify_bundle(&out, &key.verifier()).expect("verifies");
    assert_eq!(verified.bundle_sha256, report.bundle_sha256);
    assert_eq!(
        verified.bundle_sha256,
        glassbox_events::Digest::of(&good).to_hex()
    );
    // Repacking the same members gives the same bytes: the form is canonical.
    assert_eq!(pack(&members(&out)), good);
    let marker = 1024;
    let mut appended = good[..good.len() - marker].to_vec();
    appended.extend_from_slice(&pack(&[("extra.txt".into(), b"more".to_vec())]));
    let mut after_marker = good.clone();
    after_marker.extend_from_slice(&pack(&[("extra.txt".into(), b"more".to_vec())]));
    let mut garbage = good.clone();
    garbage.extend_from_slice(b"trailing garbage");
    let no_marker = good[..good.len() - marker].to_vec();
    // A padding byte after the first member (whose size is not a multiple of 512).
    let first = members(&out)[0].1.len();
    assert_ne!(first % 512, 0);
    let mut padding = good.clone();
    padding[512 + first] = b' ';
    let mut header = good.clone();
    header[136] = b'1'; // mtime of manifest.json
    for (what, bytes) in [
        ("a member appended before the end marker", appended),
        ("a member after the end marker", after_marker),
        ("trailing garbage", garbage),
        ("a missing end marker", no_marker),
        ("changed padding", padding),
        ("a changed header field", header),
    ] {
        let bad = tmp("tampered.tar");
        std::fs::write(&bad, &bytes).expect("write");
        let err = verify_bundle(&bad, &key.verifier()).expect_err(&format!("{what} was accepted"));
        assert_eq!(err.file, "bundle", "{what}: {err}");
        let _ = std::fs::remove_file(&bad);
    }
    let _ = std::fs::remove_file(&out);
    db.drop_db().await;
}

/// Re-signs a manifest changed by `edit` (as only the key holder could), so
/// that the checks behind the signature are what is tested.
fn resigned(
    key: &glassbox_events::SigningKey,
    parts: &[(String, Vec<u8>)],
    edit: impl Fn(&mut Value),
) -> Vec<u8> {
    let mut parts = parts.to_vec();
    let mut m: Value = serde_json::from_slice(&parts[0].1).expect("manifest");
    edit(&mut m);
    let bytes = glassbox_events::canonical::to_canonical_bytes(&m).expect("canonical");
    let sig = key.sign_text(&format!(
        "{MANIFEST_NOTE}\n{}\n",
        glassbox_events::Digest::of(&bytes).to_hex()
    ));
    parts[0].1 = bytes;
    parts[1].1 = sig.into_bytes();
    pack(&parts)
}

#[tokio::test]
async fn manifest_positions_and_key_name_must_match_the_records_and_the_key() {
    let (db, store, key) = setup().await;
    let out = tmp("positions.tar");
    let f = Filters {
        tenant: Some("acme".into()),
        ..Filters::default()
    };
    export(&store, &key, &f, "auditor", &out)
        .await
        .expect("export");
    let parts = members(&out);
    // The unchanged members re-signed still verify: the harness is sound.
    let same = tmp("same.tar");
    std::fs::write(&same, resigned(&key, &parts, |_| {})).expect("write");
    verify_bundle(&same, &key.verifier()).expect("re-signed, unchanged");
    for (what, edit) in [
        (
            "first_position",
            Box::new(|m: &mut Value| m["first_position"] = json!(1)) as Box<dyn Fn(&mut Value)>,
        ),
        (
            "last_position",
            Box::new(|m: &mut Value| m["last_position"] = json!(40)),
        ),
        (
            "verifier_key_name",
            Box::new(|m: &mut Value| m["verifier_key_name"] = json!("someone.else/ledger")),
        ),
        // The same instant, spelled otherwise than an export writes it.
        (
            "filters",
            Box::new(|m: &mut Value| m["filters"]["since"] = json!("2020-01-01T00:00:00+00:00")),
        ),
    ] {
        let bad = tmp("edited.tar");
        std::fs::write(&bad, resigned(&key, &parts, edit)).expect("write");
        let err = verify_bundle(&bad, &key.verifier()).expect_err(what);
        assert_eq!(err.file, "manifest.json", "{what}: {err}");
        assert!(err.reason.contains(what), "{what}: {err}");
        let _ = std::fs::remove_file(&bad);
    }
    let _ = std::fs::remove_file(&same);
    let _ = std::fs::remove_file(&out);
    db.drop_db().await;
}

#[test]
fn csv_cells_a_spreadsheet_would_execute_are_escaped() {
    use glassbox_audit_query::bundle::csv_cell;
    assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    assert_eq!(csv_cell("+1"), "'+1");
    assert_eq!(csv_cell("-2"), "'-2");
    assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
    assert_eq!(csv_cell("\tx"), "'\tx");
    assert_eq!(csv_cell("\rx"), "\"'\rx\"");
    assert_eq!(csv_cell("a,b"), "\"a,b\"");
    assert_eq!(csv_cell("alice@acme"), "alice@acme");
    assert_eq!(csv_cell(""), "");
}

#[tokio::test]
async fn extra_signatures_crlf_and_non_canonical_proof_lines_are_refused() {
    let (db, store, key) = setup().await;
    let out = tmp("strict.tar");
    export(&store, &key, &Filters::default(), "auditor", &out)
        .await
        .expect("export");
    let parts = members(&out);
    let digest_of = |b: &[u8]| glassbox_events::Digest::of(b).to_hex();
    // A second, valid signature line by another key on manifest.sig.
    let other = glassbox_events::SigningKey::generate("someone.else/key").expect("key");
    let other_line = other
        .sign_text("x\n")
        .lines()
        .last()
        .expect("sig line")
        .to_owned();
    let mut two = parts.clone();
    two[1].1 = format!("{}{other_line}\n", String::from_utf8_lossy(&parts[1].1)).into_bytes();
    // The checkpoint with CRLF line ends (its digest updated, manifest re-signed).
    let crlf_cp = String::from_utf8_lossy(&parts[2].1)
        .replace('\n', "\r\n")
        .into_bytes();
    let with_cp = {
        let mut p = parts.clone();
        p[2].1 = crlf_cp.clone();
        let (d, n) = (digest_of(&crlf_cp), crlf_cp.len());
        resigned(&key, &p, |m| {
            m["files"]["checkpoint.txt"] = json!({"sha256": d, "bytes": n});
        })
    };
    // A proof line with a space after the colon (same JSON, other bytes).
    let spaced: Vec<u8> = String::from_utf8_lossy(&parts[4].1)
        .replacen("\"leaf_index\":", "\"leaf_index\": ", 1)
        .into_bytes();
    let with_proofs = {
        let mut p = parts.clone();
        p[4].1 = spaced.clone();
        let (d, n) = (digest_of(&spaced), spaced.len());
        resigned(&key, &p, |m| {
            m["files"]["proofs.jsonl"] = json!({"sha256": d, "bytes": n});
        })
    };
    for (what, bytes, file) in [
        ("a second signature line", pack(&two), "manifest.sig"),
        ("CRLF in the checkpoint note", with_cp, "checkpoint.txt"),
        ("a non-canonical proof line", with_proofs, "proofs.jsonl"),
    ] {
        let bad = tmp("strict-bad.tar");
        std::fs::write(&bad, &bytes).expect("write");
        let err = verify_bundle(&bad, &key.verifier()).expect_err(what);
        assert_eq!(err.file, file, "{what}: {err}");
        let _ = std::fs::remove_file(&bad);
    }
    let _ = std::fs::remove_file(&out);
    db.drop_db().await;
}

#[tokio::test]
async fn time_filters_finer_than_a_microsecond_export_what_the_verifier_accepts() {
    let (db, store, key) = setup().await;
    let r = store.record(7).await.expect("read").expect("record 7");
    // Half a microsecond after record 7: the database compares microseconds.
    let since = r.record.occurred_at + chrono::Duration::nanoseconds(500);
    let out = tmp("nanos.tar");
    let f = Filters {
        since: Some(since),
        ..Filters::default()
    };
    let report = export(&store, &key, &f, "auditor", &out)
        .await
        .expect("export");
    assert_eq!(
        report.filters.since,
        Some(r.record.occurred_at),
        "stored truncated"
    );
    let verified = verify_bundle(&out, &key.verifier()).expect("verifies");
    assert_eq!(verified.records, report.records);
    assert!(verified.first_position.is_some_and(|p| p <= 7));
    let huge = Filters {
        to_position: Some(u64::MAX),
        ..Filters::default()
    };
    assert!(matches!(
        export(&store, &key, &huge, "auditor", &out).await,
        Err(glassbox_audit_query::bundle::BundleError::InvalidFilter(_))
    ));
    let _ = std::fs::remove_file(&out);
    db.drop_db().await;
}

/// Records whose values are made to break renderings: spreadsheet formulas,
/// quotes, commas, CR/LF, tabs, control characters, non-ASCII.
async fn hostile(store: &EventStore) {
    let values = [
        (
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1,2",
            "@SUM(A1)",
            "-3\r\n\"q\"",
            "ü€😀\u{1}\t\u{7f}",
        ),
        ("\tlead", "plain", "", "\rcr", "</script>\"'\\"),
        (
            "anna\u{2028}bob",
            "app,with\"quote",
            "agent\nline",
            "corr-4",
            "nul\u{0}byte",
        ),
    ];
    for (actor, app, agent, corr, text) in values {
        let mut a = Actor::system("x");
        a.kind = glassbox_events::ActorKind::Agent;
        a.id = actor.into();
        a.app = Some(app.into());
        a.agent = (!agent.is_empty()).then(|| agent.to_owned());
        a.via = glassbox_events::AuthVia::Jwt;
        let mut r = AppendRequest::new(
            "acme",
            a,
            vec![NewEvent::new(
                "job-acme-hostile,\"stream\"",
                "job.submitted",
                data(
                    json!({"text": text, "nested": {"deep": [1, -2, 9007199254740991_u64, null, true]}}),
                ),
            )],
        );
        r.correlation_id = corr.into();
        r.causation_id = Some(text.into());
        r.request_id = Some(actor.into());
        store.append(r).await.expect("append");
    }
}

fn outside_verifier(bundle: &Path, key: &glassbox_events::VerifierKey) -> std::process::Output {
    let python = std::env::var("GLASSBOX_MCP_PYTHON").unwrap_or_else(|_| "python3".into());
    std::process::Command::new(python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/outside-verifier/verify_bundle.py"),
        )
        .arg(bundle)
        .arg("--key")
        .arg(key.to_string())
        .output()
        .expect("run the outside verifier (python3 with the cryptography package)")
}

/// The outside verifier (tests/outside-verifier/verify_bundle.py) was written
/// from docs/evidence-bundle.md and docs/ledger-format.md alone. It must accept
/// what Glassbox exports — re-deriving the CSV and OCSF renderings byte for
/// byte, for hostile values too — and refuse what was tampered with.
#[tokio::test]
async fn an_outside_verifier_written_from_the_docs_alone_agrees_with_every_export() {
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    fill(&store).await;
    hostile(&store).await;
    let key = SigningKey::generate("glassbox.test/ledger").expect("key");
    store
        .publish_checkpoint(&key, "glassbox.test/ledger")
        .await
        .expect("checkpoint")
        .expect("signed");
    glassbox_projector::Projector::new(store.clone())
        .catch_up()
        .await
        .expect("projection");
    let vk = key.verifier();
    let t0 = store
        .record(10)
        .await
        .expect("read")
        .expect("r")
        .record
        .occurred_at;
    let filters = [
        Filters::default(),
        Filters {
            tenant: Some("acme".into()),
            ..Filters::default()
        },
        Filters {
            actor: Some("=HYPERLINK(\"http://x\",\"y\")".into()),
            ..Filters::default()
        },
        Filters {
            correlation_id: Some("-3\r\n\"q\"".into()),
            ..Filters::default()
        },
        Filters {
            tenant: Some("acme".into()),
            correlation_id: Some("run-1".into()),
            ..Filters::default()
        },
        Filters {
            event_type: Some("policy.evaluated".into()),
            from_position: Some(5),
            to_position: Some(30),
            since: Some(t0 + chrono::Duration::nanoseconds(1)),
            ..Filters::default()
        },
        Filters {
            tenant: Some("nobody".into()),
            ..Filters::default()
        },
    ];
    for f in &filters {
        let out = tmp("outside.tar");
        let report = export(&store, &key, f, "auditor \"=1\"", &out)
            .await
            .expect("export");
        let o = outside_verifier(&out, &vk);
        let said = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{f:?}: {said}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            said.trim(),
            format!(
                "OK {} records, tree size {}, bundle sha256 {}",
                report.records, report.tree_size, report.bundle_sha256
            )
        );
        // Our own verifier agrees, and both refuse a flipped byte in each part.
        verify_bundle(&out, &vk).expect("verifies");
        let bytes = std::fs::read(&out).expect("read");
        for (name, offset, size) in layout(&out) {
            if size == 0 {
                continue;
            }
            let mut bad = bytes.clone();
            bad[(offset + size / 2) as usize] ^= 0x20;
            let p = tmp("outside-bad.tar");
            std::fs::write(&p, &bad).expect("write");
            let o = outside_verifier(&p, &vk);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{name}: {}",
                String::from_utf8_lossy(&o.stdout)
            );
            assert!(verify_bundle(&p, &vk).is_err(), "{name}");
            let _ = std::fs::remove_file(&p);
        }
        let _ = std::fs::remove_file(&out);
    }
    db.drop_db().await;
}
