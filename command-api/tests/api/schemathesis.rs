//! The running API against its own /openapi.json with schemathesis
//! (installed from PyPI by scripts/test.sh), every check and every phase:
//! schema-valid requests must be accepted, schema-violating ones refused, no
//! 5xx, every response as documented, authentication enforced, and the links
//! between operations followed (stateful phase).
//!
//! The rules JSON Schema cannot state (members related to each other) are the
//! only ones the hooks file (`tests/schemathesis/glassbox_hooks.py`) keeps out
//! of the positive cases; `tests/schemathesis/schemathesis.toml` adjusts two
//! heuristics where Glassbox's semantics differ (a closed session stays
//! readable; shredded data is 410), with the reasons.

use crate::helpers::*;

#[tokio::test]
async fn schemathesis_finds_nothing_with_every_check_and_phase() {
    let app = spawn_app_with(&[
        // Short long-polls keep the run quick (the document advertises the bound).
        ("GLASSBOX_MAX_WAIT_SECS", "2"),
        // Thousands of requests a second, with and without credentials: the
        // limits themselves have their own tests.
        ("GLASSBOX_RATE_LIMIT_PER_SEC", "1000000"),
        ("GLASSBOX_AUTH_FAILURES_PER_SEC", "1000000"),
    ])
    .await;
    let projector = app.run_projector();
    // Openings need a runner with room: one that beats and accepts, without
    // sandboxes (sessions stay `opening`; the real runner has its own tests).
    let runner_stop = tokio_util::sync::CancellationToken::new();
    crate::fake_runner::start(&app.db.url, runner_stop.clone()).await;
    // Some data so reads have something to find.
    app.submit(&token("acme"), &hello("python"), None).await;
    let bin = std::env::var("GLASSBOX_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let url = format!("{}/openapi.json", app.addr);
    // A submitter who may also audit: every operation is reachable.
    let caller = sign(&claims("acme", "fuzzer@acme", &["submitter", "auditor"]));
    let auth = format!("Authorization: Bearer {caller}");
    let report = app.data_dir.join("schemathesis");
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let out = tokio::process::Command::new(&bin)
        .args([
            "--config-file",
            hooks.join("schemathesis.toml").to_str().expect("path"),
            "run",
            &url,
            "--header",
            &auth,
            "--checks",
            "all",
            // Off in the config too (see schemathesis.toml for why); `--checks
            // all` on the command line overrides the config's `enabled = false`.
            "--exclude-checks",
            "use_after_free",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "30",
            "--request-timeout",
            "20",
            // One worker: CPython 3.11's ast.parse is not thread-safe under
            // hypothesis' lambda descriptions ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--generation-allow-x00",
            "true",
            "--no-color",
            "--report-dir",
            report.to_str().expect("path"),
        ])
        .env("SCHEMATHESIS_HOOKS", "glassbox_hooks")
        .env("PYTHONPATH", &hooks)
        .current_dir(&app.data_dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {bin} (scripts/test.sh installs it from PyPI): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::write(
        std::env::temp_dir().join("glassbox-schemathesis.log"),
        format!("{stdout}\n{stderr}"),
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // It really exercised every operation of the document, in every phase.
    let doc = glassbox_command_api::openapi::document(2);
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().map_or(0, |m| m.len()))
        .sum();
    assert_eq!(operations, 40);
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "{stdout}"
    );
    for phase in ["Coverage", "Fuzzing", "Stateful"] {
        assert!(stdout.contains(&format!("✅ {phase}")), "{phase}: {stdout}");
    }
    assert!(!stdout.contains("❌"), "{stdout}");
    projector.cancel();
    runner_stop.cancel();
    app.stop().await;
}
