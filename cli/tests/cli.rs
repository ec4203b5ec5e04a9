//! The `glassbox` binary against a real PostgreSQL database.

use glassbox_events::store::NewEvent;
use glassbox_events::testing::TestDb;
use glassbox_events::{Actor, AppendRequest, VerifierKey};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

fn glassbox(args: &[&str], db_url: Option<&str>, key_file: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glassbox"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env("GLASSBOX_LEDGER_KEY_FILE", key_file);
    if let Some(url) = db_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("run glassbox")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn fill(db: &TestDb, n: u64) {
    let store = db.store().await.expect("store");
    for i in 0..n {
        let data = json!({"i": i}).as_object().cloned().expect("object");
        store
            .append(AppendRequest::new(
                "acme",
                Actor::system("cli-test"),
                vec![NewEvent::new(format!("s-{}", i % 3), "cli.tested", data)],
            ))
            .await
            .expect("append");
    }
}

#[tokio::test]
async fn keys_checkpoint_verify_proofs_and_show_end_to_end() {
    let db = TestDb::new().await.expect("test database");
    let dir = std::env::temp_dir().join(format!("gb-cli-{}", uuid::Uuid::new_v4()));
    let key_file = dir.join("keys/ledger.key");
    let url = Some(db.url.as_str());

    // keys generate: 0600 file, C2SP verifier key on stdout, never overwrites.
    let o = glassbox(
        &["keys", "generate", "--name", "glassbox.test/ledger"],
        None,
        &key_file,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let verifier = stdout(&o).trim().to_owned();
    let parsed = VerifierKey::parse(&verifier).expect("verifier key format");
    assert_eq!(parsed.name, "glassbox.test/ledger");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = glassbox(&["keys", "generate"], None, &key_file);
    assert_eq!(again.status.code(), Some(2), "refuses to overwrite");
    let o = glassbox(&["keys", "verifier"], None, &key_file);
    assert_eq!(stdout(&o).trim(), verifier);

    fill(&db, 40).await;
    let o = glassbox(&["ledger", "checkpoint"], url, &key_file);
    assert!(o.status.success(), "{}", stderr(&o));
    let note = stdout(&o);
    let cp = parsed.open(&note).expect("printed note verifies");
    assert_eq!(cp.size, 40);
    fill(&db, 5).await;

    let o = glassbox(&["ledger", "verify", "--json"], url, &key_file);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(report["records"], 45);
    assert_eq!(report["checkpoints_checked"], json!([40]));

    let o = glassbox(
        &[
            "ledger",
            "verify",
            "--from",
            "42",
            "--verifier-key",
            &verifier,
        ],
        url,
        &key_file,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("positions 41..=45"), "{}", stdout(&o));

    let o = glassbox(
        &["ledger", "proof", "inclusion", "7", "--size", "40"],
        url,
        &key_file,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let proof: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(proof["verified"], true);
    assert_eq!(proof["root"], cp.root.to_hex());

    let o = glassbox(
        &["ledger", "proof", "consistency", "13", "45"],
        url,
        &key_file,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let proof: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(proof["verified"], true);
    assert_eq!(proof["first"], 13);

    let o = glassbox(&["ledger", "show", "3"], url, &key_file);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(shown["record"]["position"], 3);
    assert_eq!(shown["record"]["type"], "cli.tested");
    assert_eq!(shown["known_type"], false);

    // Checkpoint notes an auditor kept outside the database count too: a
    // kept copy of the real one verifies; a different note of the same size
    // (a split view, signed with the same key) does not.
    let kept = dir.join("kept-40.txt");
    std::fs::write(&kept, &note).expect("keep note");
    let o = glassbox(
        &[
            "ledger",
            "verify",
            "--json",
            "--checkpoint",
            kept.to_str().expect("p"),
        ],
        url,
        &key_file,
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let signing = glassbox_events::SigningKey::load_file(&key_file).expect("key");
    let forged = dir.join("forged-40.txt");
    std::fs::write(
        &forged,
        signing.sign(&glassbox_events::Checkpoint {
            origin: cp.origin.clone(),
            size: 40,
            root: glassbox_events::Digest::of(b"what another auditor was shown"),
        }),
    )
    .expect("forge");
    let o = glassbox(
        &[
            "ledger",
            "verify",
            "--checkpoint",
            forged.to_str().expect("p"),
        ],
        url,
        &key_file,
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("size 40"), "{}", stdout(&o));
    // --chain-only needs no key at all (and says what it cannot see).
    let o = glassbox(
        &["ledger", "verify", "--chain-only", "--json"],
        url,
        &dir.join("no-such.key"),
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(report["records"], 45);
    assert_eq!(report["checkpoints_checked"], json!([]));

    // The read models: a rebuild equals them; a drifted row is caught by
    // --check (exit 1) and repaired by the rebuild.
    let o = glassbox(&["projector", "rebuild", "--check"], url, &key_file);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(r["identical"], true);
    assert_eq!(r["rebuilt_to_position"], 45);
    db.tamper("UPDATE projections.audit_index SET actor_id = 'someone-else' WHERE position = 3")
        .await
        .expect("drift");
    let o = glassbox(&["projector", "rebuild", "--check"], url, &key_file);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(r["identical"], false);
    let o = glassbox(&["projector", "rebuild", "--check"], url, &key_file);
    assert_eq!(o.status.code(), Some(0), "repaired: {}", stdout(&o));

    // Tamper as an insider: verify exits 1 and names the position.
    db.tamper("UPDATE ledger.records SET entry_hash = sha256('x') WHERE position = 12")
        .await
        .expect("tamper");
    let o = glassbox(&["ledger", "verify"], url, &key_file);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("position 12:"), "{}", stdout(&o));

    // Bad input: errors name what is wrong, exit 2.
    let o = glassbox(&["ledger", "show", "999"], url, &key_file);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no record at position 999"),
        "{}",
        stderr(&o)
    );
    let o = glassbox(&["ledger", "verify"], None, &key_file);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("DATABASE_URL"), "{}", stderr(&o));
    let o = glassbox(&["ledger", "verify"], url, &dir.join("missing.key"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--chain-only"), "{}", stderr(&o));
    let o = glassbox(
        &["ledger", "proof", "inclusion", "1", "--size", "4000"],
        url,
        &key_file,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("exceeds the ledger size"),
        "{}",
        stderr(&o)
    );

    std::fs::remove_dir_all(&dir).expect("cleanup");
    db.drop_db().await;
}

#[tokio::test]
async fn bench_ledger_prints_one_json_line_with_baseline_and_ratios() {
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args([
            "bench",
            "ledger",
            "--appends",
            "40",
            "--batches",
            "2",
            "--size",
            "600",
        ])
        .env("DATABASE_URL", glassbox_events::testing::admin_url())
        .output()
        .expect("run bench");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json line");
    for k in ["single_1_writer", "single_8_writers", "batch_100_1_writer"] {
        assert!(v["appends"][k]["ledger"]["p50_ms"].as_f64().expect("p50") > 0.0);
        assert!(
            v["appends"][k]["baseline"]["events_per_s"]
                .as_f64()
                .expect("baseline")
                > 0.0
        );
        assert!(v["ratio_to_baseline"][k].as_f64().expect("ratio") > 0.0);
    }
    assert_eq!(v["verify"]["records"], 600);
    assert_eq!(v["inclusion_proof_at_size"], 600);
}

#[tokio::test]
async fn bench_mcp_prints_one_json_line_with_the_rest_baseline() {
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["bench", "mcp", "--submissions", "48", "--concurrency", "2"])
        .env("DATABASE_URL", glassbox_events::testing::admin_url())
        .output()
        .expect("run bench");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json line");
    for level in ["concurrency_1", "concurrency_2"] {
        let l = &v["levels"][level];
        assert_eq!(l["submissions_per_path"], 48, "{v}");
        for k in ["mcp_submit_job", "rest_post_jobs"] {
            assert!(l[k]["p50_ms"].as_f64().expect("p50") > 0.0, "{v}");
            assert!(
                l[k]["submissions_per_s"].as_f64().expect("rate") > 0.0,
                "{v}"
            );
        }
        assert!(l["ratio_mcp_to_rest_throughput"].as_f64().expect("ratio") > 0.0);
    }
}

#[test]
fn sandbox_exec_runs_a_file_and_prints_the_result_as_json() {
    let dir = std::env::temp_dir().join(format!("gb-exec-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("hello.py");
    std::fs::write(
        &file,
        "import sys\nprint('hello', sys.argv[1:])\nsys.exit(4)\n",
    )
    .expect("write");
    let runner = format!("cli{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args([
            "sandbox",
            "exec",
            "--lang",
            "python",
            "--memory",
            "256M",
            "--timeout",
            "5s",
        ])
        .args(["--base-dir", "/run/glassbox-test", "--runner-id", &runner])
        .arg(&file)
        .args(["--", "a", "b"])
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(1),
        "exit 1: the program failed; {}",
        stderr(&o)
    );
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["exit_code"], 4);
    assert_eq!(v["stdout"]["text"], "hello ['a', 'b']\n");
    assert_eq!(v["backend"], "runsc");
    assert!(v["teardown"]["bytes_scrubbed"].as_u64().expect("scrubbed") > 0);

    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args([
            "sandbox",
            "exec",
            "--lang",
            "cobol",
            "--base-dir",
            "/run/glassbox-test",
            "--runner-id",
            &runner,
        ])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown language \"cobol\""),
        "{}",
        stderr(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["sandbox", "exec", "--lang", "python", "--memory", "lots"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "clap rejects a bad size");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn bench_sandbox_prints_one_json_line_with_raw_runsc_baseline() {
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args([
            "bench",
            "sandbox",
            "--runs",
            "2",
            "--base-dir",
            "/run/glassbox-test-bench",
        ])
        .output()
        .expect("run bench");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    for lang in ["python", "node", "bash"] {
        assert!(v["backend"][lang]["p50_ms"].as_f64().expect("p50") > 0.0);
        assert!(
            v["baseline_raw_runsc"][lang]["p95_ms"]
                .as_f64()
                .expect("raw")
                > 0.0
        );
        assert!(
            v["baseline_native"][lang]["p50_ms"]
                .as_f64()
                .expect("native")
                > 0.0
        );
        assert!(v["ratio_to_raw_runsc_p50"][lang].as_f64().expect("ratio") > 0.0);
    }
    assert_eq!(v["concurrent_python_hello"]["30"]["succeeded"], 30);
    assert!(
        v["idle_sandbox_memory_bytes_median"]
            .as_u64()
            .expect("memory")
            > 1 << 20
    );
}

#[tokio::test]
async fn audit_export_then_verify_bundle_offline_and_the_export_is_recorded() {
    let db = TestDb::new().await.expect("test database");
    let dir = std::env::temp_dir().join(format!("gb-cli-{}", uuid::Uuid::new_v4()));
    let key_file = dir.join("keys/ledger.key");
    let url = Some(db.url.as_str());
    let o = glassbox(
        &["keys", "generate", "--name", "glassbox.test/ledger"],
        None,
        &key_file,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let verifier = stdout(&o).trim().to_owned();
    fill(&db, 12).await;
    // One run's records (one correlation ID) in two tenants, among the others.
    let store = db.store().await.expect("store");
    for (i, tenant) in ["acme", "globex", "acme"].into_iter().enumerate() {
        let data = json!({"step": i}).as_object().cloned().expect("object");
        let mut r = AppendRequest::new(
            tenant,
            Actor::system("cli-test"),
            vec![NewEvent::new(format!("run-{tenant}"), "cli.tested", data)],
        );
        r.correlation_id = "run-7".into();
        store.append(r).await.expect("append");
    }
    let o = glassbox(&["ledger", "checkpoint"], url, &key_file);
    assert!(o.status.success(), "{}", stderr(&o));
    // The export reads the audit index: bring the read models up to date.
    let o = glassbox(&["projector", "rebuild"], url, &key_file);
    assert!(o.status.success(), "{}", stderr(&o));
    let bundle = dir.join("evidence.tar");
    let o = glassbox(
        &[
            "audit",
            "export",
            "--out",
            bundle.to_str().expect("path"),
            "--tenant",
            "acme",
            "--stream",
            "s-1",
            "--exported-by",
            "audrey",
        ],
        url,
        &key_file,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(report["records"], 4, "{report}");
    // Offline: no DATABASE_URL.
    let o = glassbox(
        &[
            "audit",
            "verify-bundle",
            bundle.to_str().expect("path"),
            "--key",
            &verifier,
        ],
        None,
        &key_file,
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("bundle verifies: 4 records"),
        "{}",
        stdout(&o)
    );
    let mut bytes = std::fs::read(&bundle).expect("read");
    let n = bytes.len();
    bytes[n / 2] ^= 0x20;
    std::fs::write(&bundle, &bytes).expect("write");
    let o = glassbox(
        &[
            "audit",
            "verify-bundle",
            bundle.to_str().expect("path"),
            "--key",
            &verifier,
            "--json",
        ],
        None,
        &key_file,
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["verifies"], false);
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
    // The export itself is in the ledger, with the bundle's digest.
    let all = store.read_all(1, 1000).await.expect("read");
    let exported: Vec<_> = all
        .iter()
        .filter(|r| r.record.event_type == "audit.exported")
        .collect();
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0].record.data["record_count"], 4);
    assert_eq!(exported[0].record.actor.id, "audrey");
    assert_eq!(exported[0].record.data["bundle_digest"], report["sha256"]);
    // `--correlation`: exactly one run's records, of every tenant (the
    // verifier checks each record against the filter; the count makes it exact).
    let run = dir.join("run.tar");
    let o = glassbox(
        &[
            "audit",
            "export",
            "--out",
            run.to_str().expect("path"),
            "--correlation",
            "run-7",
            "--exported-by",
            "audrey",
        ],
        url,
        &key_file,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(report["records"], 3, "{report}");
    assert_eq!(report["filters"], json!({"correlation_id": "run-7"}));
    let o = glassbox(
        &[
            "audit",
            "verify-bundle",
            run.to_str().expect("path"),
            "--key",
            &verifier,
            "--json",
        ],
        None,
        &key_file,
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["report"]["records"], 3);
    assert_eq!(v["report"]["filters"]["correlation_id"], "run-7");
    let run_positions: Vec<u64> = all
        .iter()
        .filter(|r| r.record.correlation_id == "run-7")
        .map(|r| r.record.position)
        .collect();
    assert_eq!(run_positions.len(), 3);
    assert_eq!(v["report"]["first_position"], run_positions[0]);
    assert_eq!(v["report"]["last_position"], run_positions[2]);
    let all = store.read_all(1, 1000).await.expect("read");
    let exported: Vec<_> = all
        .iter()
        .filter(|r| r.record.event_type == "audit.exported")
        .collect();
    assert_eq!(exported.len(), 2);
    assert_eq!(exported[1].record.data["record_count"], 3);
    assert_eq!(exported[1].record.data["query"]["correlation_id"], "run-7");
    assert_eq!(exported[1].record.data["query"]["tenant"], "*");
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}

#[tokio::test]
async fn replay_prints_a_streams_timeline_up_to_a_position() {
    let db = TestDb::new().await.expect("test database");
    let dir = std::env::temp_dir().join(format!("gb-cli-{}", uuid::Uuid::new_v4()));
    let key_file = dir.join("keys/ledger.key");
    let url = Some(db.url.as_str());
    fill(&db, 12).await;
    // fill() writes streams s-0, s-1, s-2 round robin: s-1 holds 2, 5, 8, 11.
    let o = glassbox(&["replay", "s-1", "--at", "8", "--json"], url, &key_file);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let positions: Vec<u64> = v["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect();
    assert_eq!(positions, [2, 5, 8]);
    assert_eq!(v["at_position"], 8);
    assert_eq!(v["tenant"], "acme");
    let o = glassbox(&["replay", "s-1"], url, &key_file);
    assert!(stdout(&o).contains("as of position 11"), "{}", stdout(&o));
    let o = glassbox(&["replay", "no-such-stream"], url, &key_file);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = glassbox(&["replay", "s-1", "--at", "yesterday"], url, &key_file);
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}

#[tokio::test]
async fn mcp_over_stdio_relays_to_the_running_api_with_the_same_identity() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("test database");
    let dir = std::env::temp_dir().join(format!("gb-cli-mcp-{}", uuid::Uuid::new_v4()));
    let vars = glassbox_command_api::testing::vars(&db.url, &dir).expect("vars");
    let app = glassbox_command_api::Application::build(
        glassbox_platform::Config::from_vars(vars).expect("config"),
    )
    .await
    .expect("api");
    let api = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());

    async fn session(api: &str, token: &str, lines: &[Value]) -> Vec<Value> {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args(["mcp", "--api", api, "--token", token])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("glassbox mcp");
        let mut stdin = child.stdin.take().expect("stdin");
        for l in lines {
            stdin
                .write_all(format!("{l}\n").as_bytes())
                .await
                .expect("write");
        }
        drop(stdin);
        let stdout = child.stdout.take().expect("stdout");
        let mut out = Vec::new();
        let mut reader = tokio::io::BufReader::new(stdout).lines();
        while let Some(l) = reader.next_line().await.expect("read") {
            out.push(serde_json::from_str(&l).expect("json line"));
        }
        assert!(child.wait().await.expect("exit").success());
        out
    }
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "stdio-test", "version": "1"}}});
    let token = glassbox_command_api::testing::token("restricted");
    let replies = session(
        &api,
        &token,
        &[
            init.clone(),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                "name": "run_code", "arguments": {"language": "node", "code": "1"}}}),
        ],
    )
    .await;
    assert_eq!(replies.len(), 3, "{replies:?}");
    // Requests after the handshake run concurrently: match replies by ID.
    let reply = |id: u64| {
        replies
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .expect("a reply")
    };
    assert_eq!(reply(1)["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(
        reply(2)["result"]["tools"].as_array().map(Vec::len),
        Some(21)
    );
    assert_eq!(reply(3)["result"]["isError"], true, "{:?}", reply(3));
    // The refusal is in the ledger as the token's identity.
    let store = db.store().await.expect("store");
    let all = store.read_all(1, 1000).await.expect("read");
    let rejected: Vec<_> = all
        .iter()
        .filter(|r| r.record.event_type == "job.rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].record.actor.id, "user@restricted");
    // A bad token: the relay answers with an error, not silence.
    let replies = session(&api, "not-a-token", &[init]).await;
    assert_eq!(replies[0]["id"], 1, "{replies:?}");
    assert_eq!(replies[0]["error"]["data"]["status"], 401, "{replies:?}");
    assert!(
        replies[0]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unauthenticated"),
        "{replies:?}"
    );
    // 2026-07-28: no handshake, no session; each request names its version in
    // _meta, and the relay adds the headers streamable HTTP then requires.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientInfo": {"name": "stdio-test", "version": "1"},
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let replies = session(
        &api,
        &token,
        &[
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "_meta": meta, "name": "get_job", "arguments": {"job_id": "nope"}}}),
            // No runner here: this waits its full 2 seconds...
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                "_meta": meta, "name": "run_code",
                "arguments": {"language": "python", "code": "print(1)", "wait_seconds": 2}}}),
            // ...and does not hold up the next call.
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {"_meta": meta}}),
        ],
    )
    .await;
    assert_eq!(replies.len(), 4, "{replies:?}");
    let at = |id: u64| replies.iter().position(|r| r["id"] == id).expect("a reply");
    assert!(at(4) < at(3), "{replies:?}");
    assert!(
        replies[at(3)].to_string().contains("still running"),
        "{replies:?}"
    );
    let replies: Vec<Value> = [1, 2].iter().map(|&i| replies[at(i)].clone()).collect();
    assert!(
        replies[0]["result"]["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("2026-07-28"))),
        "{replies:?}"
    );
    assert_eq!(replies[1]["result"]["isError"], true, "{replies:?}");
    assert!(
        replies[1].to_string().contains("does not exist"),
        "{replies:?}"
    );
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}

/// `glassbox mcp` as an agent drives it: one line at a time, reading replies.
struct StdioAgent {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    replies: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl StdioAgent {
    fn start(api: &str, token: &str, extra: &[&str]) -> StdioAgent {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args(["mcp", "--api", api, "--token", token])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("glassbox mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        use tokio::io::AsyncBufReadExt as _;
        StdioAgent {
            child,
            stdin,
            replies: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    async fn send(&mut self, msg: Value) {
        use tokio::io::AsyncWriteExt as _;
        self.stdin
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .expect("write");
    }

    async fn reply(&mut self) -> Value {
        let line =
            tokio::time::timeout(std::time::Duration::from_secs(20), self.replies.next_line())
                .await
                .expect("a reply within 20 s")
                .expect("read")
                .expect("a line");
        serde_json::from_str(&line).expect("json line")
    }
}

async fn start_api(
    db: &TestDb,
    dir: &Path,
    addr: &str,
) -> (String, tokio_util::sync::CancellationToken) {
    let mut vars = glassbox_command_api::testing::vars(&db.url, dir).expect("vars");
    vars.push(("GLASSBOX_HTTP_ADDR".into(), addr.into()));
    let app = glassbox_command_api::Application::build(
        glassbox_platform::Config::from_vars(vars).expect("config"),
    )
    .await
    .expect("api");
    let api = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    (api, stop)
}

#[tokio::test]
async fn mcp_over_stdio_survives_a_lost_session_and_drops_cancelled_requests() {
    glassbox_platform::install_crypto_provider();
    let db = TestDb::new().await.expect("test database");
    let dir = std::env::temp_dir().join(format!("gb-cli-mcp2-{}", uuid::Uuid::new_v4()));
    let (api, stop) = start_api(&db, &dir, "127.0.0.1:0").await;
    let token = glassbox_command_api::testing::token("acme");
    let mut agent = StdioAgent::start(&api, &token, &["--max-message-bytes", "4096"]);
    agent
        .send(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "stdio-test", "version": "1"}}}),
        )
        .await;
    assert_eq!(agent.reply().await["id"], 1);
    agent
        .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;

    // The server restarts on the same address and has forgotten the session:
    // the relay opens a new one with the agent's own initialize and retries.
    stop.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let addr = api.trim_start_matches("http://").to_owned();
    let (_, stop) = start_api(&db, &dir, &addr).await;
    agent
        .send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}))
        .await;
    let listed = agent.reply().await;
    assert_eq!(listed["id"], 2, "{listed}");
    assert_eq!(
        listed["result"]["tools"].as_array().map(Vec::len),
        Some(21),
        "{listed}"
    );

    // A message over the relay's limit is refused there, and the next one goes on.
    agent
        .send(
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": "run_code", "arguments": {"language": "python", "code": "#".repeat(10_000)}}}),
        )
        .await;
    let refused = agent.reply().await;
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused.to_string().contains("payload_too_large"),
        "{refused}"
    );
    // A cancelled request gets no reply and does not hold the relay: no runner
    // here, so this call would wait its full 30 seconds.
    agent
        .send(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "run_code",
            "arguments": {"language": "python", "code": "print(1)", "wait_seconds": 30}}}),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    agent
        .send(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                     "params": {"requestId": 3, "reason": "the user changed their mind"}}),
        )
        .await;
    agent
        .send(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {}}))
        .await;
    assert_eq!(agent.reply().await["id"], 4);
    let started = std::time::Instant::now();
    drop(agent.stdin);
    // EOF: the relay exits once nothing is in flight — the cancelled call is not.
    assert!(agent.replies.next_line().await.expect("read").is_none());
    let status = agent.child.wait().await.expect("exit");
    assert!(status.success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the relay waited for a cancelled call: {:?}",
        started.elapsed()
    );
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `glassbox dev` with no database URL: it creates and starts a private
/// PostgreSQL cluster, serves the API with a runner, `glassbox run` exits with
/// the program's exit code, and on SIGTERM everything stops — the cluster too.
#[test]
fn dev_on_a_private_cluster_and_run_exits_with_the_programs_code() {
    let dir = std::env::temp_dir().join(format!("gb-dev-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (pg_port, api_port) = (free_port(), free_port());
    let api = format!("http://127.0.0.1:{api_port}");
    let runner = format!("dev{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let env = |c: &mut Command| {
        c.env_remove("DATABASE_URL")
            .env_remove("GLASSBOX_DATABASE_URL")
            .env_remove("GLASSBOX_LEDGER_KEY_FILE")
            .env("GLASSBOX_DATA_DIR", &dir)
            .env("GLASSBOX_DEV_PG_PORT", pg_port.to_string())
            .env("GLASSBOX_HTTP_ADDR", format!("127.0.0.1:{api_port}"))
            .env("GLASSBOX_RUNNER_ID", &runner)
            .env("GLASSBOX_SANDBOX_DIR", "/run/glassbox-test");
    };
    let mut dev = Command::new(env!("CARGO_BIN_EXE_glassbox"));
    env(&mut dev);
    let mut dev = dev
        .arg("dev")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("dev.log")).expect("log"))
        .spawn()
        .expect("glassbox dev");
    let started = std::time::Instant::now();
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok();
        if up {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "glassbox dev did not come up: {}",
            std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
    assert!(
        log.contains("creating a private PostgreSQL cluster"),
        "{log}"
    );
    let run = |code: &str, file: &str| {
        let f = dir.join(file);
        std::fs::write(&f, code).expect("program");
        let mut c = Command::new(env!("CARGO_BIN_EXE_glassbox"));
        env(&mut c);
        c.args(["run", "--api", &api])
            .arg(&f)
            .args(["--", "x"])
            .output()
            .expect("glassbox run")
    };
    let o = run(
        "import sys\nprint('hi', sys.argv[1])\nsys.exit(3)\n",
        "three.py",
    );
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("hi x"), "{}", stdout(&o));
    assert!(stderr(&o).contains("ledger position"), "{}", stderr(&o));
    let o = run("echo fine \"$1\"\n", "ok.sh");
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "fine x\n");
    // Killed at its wall time (10 s by default): 137, as a shell reports a
    // SIGKILLed child.
    let o = run("import time\ntime.sleep(30)\n", "slow.py");
    assert_eq!(o.status.code(), Some(137), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("timed_out"), "{}", stderr(&o));
    // Refused by policy (tenant `restricted` runs python only): exit 1.
    let f = dir.join("no.js");
    std::fs::write(&f, "console.log(1)\n").expect("program");
    let mut c = Command::new(env!("CARGO_BIN_EXE_glassbox"));
    env(&mut c);
    let o = c
        .args(["run", "--api", &api, "--tenant", "restricted"])
        .arg(&f)
        .output()
        .expect("glassbox run");
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("language node is not allowed"),
        "{}",
        stderr(&o)
    );
    // SIGTERM: dev stops, and so does its private cluster.
    let term = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = dev.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", pg_port)).is_err(),
        "the private cluster was stopped"
    );
    // The cluster lives under /var/lib/glassbox as root; remove this test's.
    let tag = hex::encode(
        &ring::digest::digest(&ring::digest::SHA256, dir.to_string_lossy().as_bytes()).as_ref()
            [..6],
    );
    let _ = std::fs::remove_dir_all(format!("/var/lib/glassbox/postgres-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn glassbox_dev_starts_a_local_redis_that_does_not_answer_and_refuses_a_remote_one() {
    // A free port on loopback: nothing answers there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let started = glassbox_cli::dev::ensure_redis(&url)
        .await
        .expect("started");
    assert_eq!(started, Some(format!("redis-server on 127.0.0.1:{port}")));
    // It answers now; asking again starts nothing.
    let ping = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "ping"])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&ping.stdout).trim(), "PONG");
    assert_eq!(
        glassbox_cli::dev::ensure_redis(&url).await.expect("up"),
        None
    );
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "shutdown", "nosave"])
        .output();
    // A Redis elsewhere that does not answer is an error naming it, not started.
    let e = glassbox_cli::dev::ensure_redis("redis://192.0.2.1:6379")
        .await
        .expect_err("remote");
    assert!(e.to_string().contains("192.0.2.1:6379"), "{e}");
}
