//! The contract the generated OpenAPI document states, request by request —
//! the mismatches a hand-written document had, each pinned down: what the
//! schema allows is accepted, what it does not is refused (400, naming the
//! member), and state the ledger has not reached is 409.

use crate::helpers::*;
use serde_json::{Value, json};

fn auditor() -> String {
    sign(&claims("acme", "auditor@acme", &["submitter", "auditor"]))
}

#[tokio::test]
async fn bodies_must_be_objects_all_the_way_down() {
    let app = spawn_app().await;
    let t = token("acme");
    for body in [
        json!({"language": "python", "code": "1", "limits": [null, null]}),
        json!({"language": "python", "code": "1", "files": [["a.txt", "x"]]}),
        json!({"language": "python", "code": "1", "dependencies": [["pypi", "six"]]}),
        json!({"language": "python", "code": "1", "secrets": [["API_KEY"]]}),
        json!(["python", "1"]),
    ] {
        let r = app.submit(&t, &body, None).await;
        assert_problem(&r, 400, "invalid_request");
    }
    for (path, body) in [
        ("/v1/audit/exports", json!([null, "acme"])),
        ("/v1/audit/exports", json!({"from_position": "1"})),
        ("/v1/audit/verify", json!([1, 2])),
        ("/v1/audit/verify", json!({"to": "2"})),
        (
            "/v1/jobs/0b6c1a52-55f5-4a3e-9a57-0e2c6f2b8f11/cancel",
            json!(["why"]),
        ),
    ] {
        let r = app.post(&auditor(), path, Some(&body)).await;
        assert_problem(&r, 400, "invalid_request");
    }
    assert!(app.records_of_type("job.submitted").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn integral_numbers_are_integers_however_they_are_written() {
    let app = spawn_app().await;
    let mut body = hello("python");
    body["limits"] = json!({"wall_time_ms": 2000.0, "output_files": 3e0});
    let r = app.submit(&token("acme"), &body, None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["effective_limits"]["wall_time_ms"], 2000);
    // A fraction is not an integer.
    body["limits"] = json!({"wall_time_ms": 2000.5});
    let r = app.submit(&token("acme"), &body, None).await;
    assert_problem(&r, 400, "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn every_rule_about_one_member_is_in_the_schema_and_enforced() {
    let app = spawn_app().await;
    let t = token("acme");
    let doc: Value = app.get(&t, "/openapi.json").await.body;
    let props = &doc["components"]["schemas"]["JobRequest"]["properties"];
    assert_eq!(props["env"]["propertyNames"]["minLength"], 1);
    assert!(props["env"]["propertyNames"]["not"]["pattern"].is_string());
    for (patch, member) in [
        (json!({"env": {"": "x"}}), "env"),
        (json!({"env": {"GLASSBOX_TOKEN": "x"}}), "env"),
        (
            json!({"files": [{"path": ".env", "content": "x"}]}),
            "files[0].path",
        ),
        (
            json!({"files": [{"path": "dir/-x", "content": "x"}]}),
            "files[0].path",
        ),
        (
            json!({"files": [{"path": "out/a", "content": "x"}]}),
            "files[0].path",
        ),
        (
            json!({"files": [{"path": "x", "content": "QR==", "encoding": "base64"}]}),
            "files[0].content",
        ),
        (json!({"limits": {"processes": 4097}}), "limits.processes"),
        (json!({"language": ""}), "language"),
    ] {
        let mut body = hello("python");
        body.as_object_mut()
            .expect("object")
            .extend(patch.as_object().expect("patch").clone());
        let r = app.submit(&t, &body, None).await;
        assert_problem(&r, 400, "invalid_request");
        assert!(
            r.body["detail"].as_str().unwrap_or("").contains(member),
            "{member}: {:?}",
            r.body
        );
    }
    // Rules between members (the schema cannot state them) are 400 too.
    let mut body = hello("python");
    body["secrets"] = json!(["A", {"name": "A"}]);
    assert_problem(&app.submit(&t, &body, None).await, 400, "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn empty_or_unreadable_query_parameters_are_refused_by_name() {
    let app = spawn_app().await;
    for (path, member) in [
        ("/v1/audit/events?tenant=", "tenant"),
        ("/v1/audit/events?stream=", "stream"),
        ("/v1/audit/events?correlation_id=", "correlation_id"),
        ("/v1/audit/events?cursor=", "cursor"),
        ("/v1/audit/events?cursor=zz", "cursor"),
        ("/v1/jobs?cursor=v1.0", "cursor"),
        ("/v1/jobs?limit=0", "limit"),
        ("/v1/audit/replay/job-x?at=%2B5", "at"),
        ("/v1/audit/replay/job-x?at=9007199254740992", "at"),
        ("/v1/audit/proofs/inclusion?position=0", "position"),
        ("/v1/audit/proofs/consistency?from=2&to=1", "from <= to"),
    ] {
        let r = app.get(&auditor(), path).await;
        assert_problem(&r, 400, "invalid_request");
        assert!(
            r.body["detail"].as_str().unwrap_or("").contains(member),
            "{path}: {:?}",
            r.body
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn asking_for_ledger_state_not_reached_yet_is_a_conflict() {
    let (app, _key) = crate::audit::audited_app().await;
    let projector = app.run_projector();
    let r = app.submit(&token("acme"), &hello("python"), None).await;
    assert_eq!(r.status, 201);
    let id = r.body["job_id"].as_str().expect("id").to_owned();
    let far = 9_007_199_254_740_991_u64;
    for path in [
        format!("/v1/jobs/{id}?min_position={far}"),
        format!("/v1/jobs?min_position={far}"),
        format!("/v1/audit/proofs/consistency?from=1&to={far}"),
        format!("/v1/audit/proofs/inclusion?position=1&size={far}"),
    ] {
        let r = app.get(&auditor(), &path).await;
        assert_problem(&r, 409, "conflict");
    }
    let r = app
        .post(&auditor(), "/v1/audit/verify", Some(&json!({"to": far})))
        .await;
    assert_problem(&r, 409, "conflict");
    // And the same question about the ledger as it is gets an answer.
    let (head, _) = app.store.head().await.expect("head");
    let r = app
        .post(&auditor(), "/v1/audit/verify", Some(&json!({"to": head})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["verifies"], true);
    projector.cancel();
    app.stop().await;
}

#[tokio::test]
async fn pages_follow_their_cursor_and_cursors_have_one_spelling() {
    let app = spawn_app().await;
    let projector = app.run_projector();
    let t = token("acme");
    let mut last = 0;
    for _ in 0..3 {
        last = app.submit(&t, &hello("python"), None).await.body["position"]
            .as_u64()
            .expect("position");
    }
    let r = app
        .get(&t, &format!("/v1/jobs?limit=2&min_position={last}"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cursor = r.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    assert!(cursor.starts_with("v1."), "{cursor}");
    let next = app
        .get(&t, &format!("/v1/jobs?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(next.status, 200);
    assert_eq!(next.body["jobs"].as_array().map(Vec::len), Some(1));
    assert!(next.body["next_cursor"].is_null());
    projector.cancel();
    app.stop().await;
}
