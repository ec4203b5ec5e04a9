//! Runs every decision case in `policies/cases/*.json` against the built-in bundle
//! (and the same bundle loaded from its directory), plus the fail-closed paths.

use glassbox_policies::{Bundle, Policy, PolicyEngine};
use serde_json::{Value, json};
use std::path::Path;

fn policy(name: &str) -> Policy {
    serde_json::from_value(json!(name)).unwrap_or_else(|_| panic!("unknown policy {name}"))
}

#[test]
fn every_decision_case_holds() {
    let engine = PolicyEngine::new(&Bundle::builtin()).expect("bundle compiles");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let mut count = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("cases dir")
        .filter_map(Result::ok)
        .collect();
    files.sort_by_key(|e| e.file_name());
    for file in files {
        let cases: Vec<Value> =
            serde_json::from_slice(&std::fs::read(file.path()).expect("read")).expect("json");
        for case in cases {
            let name = case["name"].as_str().expect("name");
            let d = engine.evaluate(
                policy(case["policy"].as_str().expect("policy")),
                &case["input"],
            );
            let expect = &case["expect"];
            assert_eq!(d.error, None, "{name}: evaluation error");
            assert_eq!(
                d.allow,
                expect["allow"].as_bool().expect("allow"),
                "{name}: {d:?}"
            );
            if let Some(reasons) = expect.get("reasons") {
                let want: Vec<String> = serde_json::from_value(reasons.clone()).expect("reasons");
                assert_eq!(d.reasons, want, "{name}");
            }
            if let Some(limits) = expect.get("effective_limits").and_then(Value::as_object) {
                let got = d.effective_limits.as_ref().expect("effective limits");
                for (k, v) in limits {
                    assert_eq!(got.get(k), Some(v), "{name}: {k}");
                }
            }
            if let Some(rule) = expect.get("rule") {
                assert_eq!(
                    d.rule.as_deref().map(Value::from).unwrap_or(Value::Null),
                    *rule,
                    "{name}"
                );
            }
            if let Some(private) = expect.get("allow_private").and_then(Value::as_bool) {
                assert_eq!(d.allow_private, private, "{name}");
            }
            if let Some(hosts) = expect.get("hosts") {
                let want: Vec<String> = serde_json::from_value(hosts.clone()).expect("hosts");
                assert_eq!(d.hosts, want, "{name}");
            }
            assert_eq!(d.bundle_digest, engine.bundle_digest());
            // Every refusal the bundle can give has a metrics label of its own.
            if !d.allow && !d.reasons.is_empty() {
                assert_ne!(d.reason_class(), "other", "{name}: {:?}", d.reasons);
            } else if !d.allow {
                assert_eq!(d.reason_class(), "unspecified", "{name}");
            } else {
                assert_eq!(d.reason_class(), "allowed", "{name}");
            }
            count += 1;
        }
    }
    assert!(count >= 25, "only {count} cases ran");
}

#[test]
fn the_directory_and_the_builtin_bundle_are_the_same_bundle() {
    let dir = Bundle::load_dir(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("load");
    assert_eq!(dir, Bundle::builtin());
    assert_eq!(dir.digest(), Bundle::builtin().digest());
    let mut files = dir.files().clone();
    files.insert("data/extra.json".into(), b"{}".to_vec());
    assert_ne!(
        Bundle::from_files(files).digest(),
        dir.digest(),
        "any file change changes the digest"
    );
}

#[test]
fn evaluation_fails_closed() {
    // A policy whose decision errors at run time.
    let mut files = Bundle::builtin().files().clone();
    files.insert(
        "rego/admission.rego".into(),
        b"package glassbox.admission\nimport rego.v1\ndecision := {\"allow\": true, \"reasons\": [], \"x\": 1 / input.zero}\n".to_vec(),
    );
    let engine = PolicyEngine::new(&Bundle::from_files(files)).expect("compiles");
    let d = engine.evaluate(Policy::Admission, &json!({"zero": 0}));
    assert!(!d.allow, "{d:?}");
    assert!(d.error.is_some());
    // An undefined decision.
    let mut files = Bundle::builtin().files().clone();
    files.insert(
        "rego/egress.rego".into(),
        b"package glassbox.egress\nimport rego.v1\nother := 1\n".to_vec(),
    );
    let engine = PolicyEngine::new(&Bundle::from_files(files)).expect("compiles");
    let d = engine.evaluate(
        Policy::Egress,
        &json!({"tenant": "acme", "host": "x", "port": 1}),
    );
    assert!(!d.allow && d.error.is_some(), "{d:?}");
    // A decision without a boolean allow.
    let mut files = Bundle::builtin().files().clone();
    files.insert(
        "rego/secrets.rego".into(),
        b"package glassbox.secrets\nimport rego.v1\ndecision := {\"allow\": \"yes\"}\n".to_vec(),
    );
    let engine = PolicyEngine::new(&Bundle::from_files(files)).expect("compiles");
    assert!(!engine.evaluate(Policy::Secrets, &json!({})).allow);
    // A bundle that does not compile is refused outright.
    let mut files = Bundle::builtin().files().clone();
    files.insert(
        "rego/authz.rego".into(),
        b"package glassbox.authz\nallow if {".to_vec(),
    );
    let e = PolicyEngine::new(&Bundle::from_files(files)).expect_err("syntax error");
    assert!(e.to_string().contains("rego/authz.rego"), "{e}");
}

#[test]
fn input_digest_is_the_digest_of_the_canonical_input() {
    let engine = PolicyEngine::new(&Bundle::builtin()).expect("bundle");
    let a = engine.evaluate(
        Policy::Egress,
        &json!({"tenant": "acme", "host": "x", "port": 1}),
    );
    let b = engine.evaluate(
        Policy::Egress,
        &serde_json::from_str(r#"{ "port": 1, "host": "x", "tenant": "acme" }"#).expect("json"),
    );
    assert_eq!(a.input_digest, b.input_digest);
    let c = engine.evaluate(
        Policy::Egress,
        &json!({"tenant": "acme", "host": "y", "port": 1}),
    );
    assert_ne!(a.input_digest, c.input_digest);
}
