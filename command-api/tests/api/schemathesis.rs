//! Property-based fuzzing of the running API against its own /openapi.json with
//! schemathesis (installed from PyPI by scripts/test.sh): no request may produce
//! a 5xx, and responses must match the document.

use crate::helpers::*;

#[tokio::test]
async fn schemathesis_finds_no_server_errors_against_openapi_json() {
    // Short long-polls keep the run quick (the document advertises the bound).
    let app = spawn_app_with(&[("GLASSBOX_MAX_WAIT_SECS", "2")]).await;
    let projector = app.run_projector();
    // Some data so reads have something to find.
    app.submit(&token("acme"), &hello("python"), None).await;
    let bin = std::env::var("GLASSBOX_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let url = format!("{}/openapi.json", app.addr);
    let auth = format!("Authorization: Bearer {}", token("acme"));
    let report = app.data_dir.join("schemathesis");
    let out = tokio::process::Command::new(&bin)
        .args([
            "run",
            &url,
            "--header",
            &auth,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
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
        .env("SCHEMATHESIS_HOOKS", "")
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
    // It really exercised every operation of the document.
    let doc = glassbox_command_api::openapi::document(2);
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().map_or(0, |m| m.len()))
        .sum();
    assert!(operations >= 6);
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "{stdout}"
    );
    projector.cancel();
    app.stop().await;
}
