//! Definitions and the scheduler, given/when/then without a database.

use super::*;
use serde_json::json;

fn step(name: &str, needs: &[&str]) -> serde_json::Value {
    json!({
        "name": name,
        "needs": needs,
        "job": {"language": "python", "code": format!("print('{name}')")},
    })
}

fn request(steps: Vec<serde_json::Value>) -> WorkflowRequest {
    serde_json::from_value(json!({"name": "report", "steps": steps})).expect("request")
}

/// a → b, a → c, b + c → d; d reads b's and c's artifacts.
fn diamond() -> WorkflowRequest {
    let mut d = step("d", &["b", "c"]);
    d["inputs"] = json!([
        {"from": "b:out/b.json", "path": "in/b.json"},
        {"from": "a:out/a.txt", "path": "in/a.txt"},
    ]);
    request(vec![
        d,
        step("c", &["a"]),
        step("b", &["a"]),
        step("a", &[]),
    ])
}

fn refused(r: WorkflowRequest) -> Invalid {
    r.parse().expect_err("must be refused")
}

fn n(s: &str) -> StepName {
    StepName::parse(s).expect("name")
}

#[test]
fn a_diamond_parses_in_dependency_order_with_a_stable_digest() {
    let def = diamond().parse().expect("diamond");
    let order: Vec<&str> = def.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
    let d = def.step(&n("d")).expect("d");
    assert_eq!(d.inputs.len(), 2);
    assert_eq!(d.inputs[0].artifact.as_str(), "out/b.json");
    assert_eq!(d.inputs[0].path.as_str(), "in/b.json");
    assert!(def.digest.starts_with("sha256:") && def.digest.len() == 71);
    assert_eq!(diamond().parse().expect("again").digest, def.digest);
    let mut changed = diamond();
    changed.steps[3].job.code = "print('A')".into();
    assert_ne!(changed.parse().expect("changed").digest, def.digest);
}

#[test]
fn cycles_unknown_steps_and_bad_names_are_refused_naming_the_member() {
    let e = refused(request(vec![
        step("a", &["c"]),
        step("b", &["a"]),
        step("c", &["b"]),
        step("z", &[]),
    ]));
    assert_eq!(e.member, "steps");
    assert!(e.reason.contains("cycle through a, b, c"), "{e:?}");
    let e = refused(request(vec![step("a", &["a"])]));
    assert_eq!(e.member, "steps[0].needs[0]");
    let e = refused(request(vec![step("a", &["nope"])]));
    assert_eq!(
        (e.member.as_str(), e.reason.as_str()),
        ("steps[0].needs[0]", "no step is named nope")
    );
    let e = refused(request(vec![step("a", &[]), step("a", &[])]));
    assert_eq!(e.member, "steps[1].name");
    for bad in ["", "A", "-x", "a b", "../x", &"x".repeat(65)] {
        let e = refused(request(vec![step(bad, &[])]));
        assert_eq!(e.member, "steps[0].name", "{bad:?}");
    }
    let e = refused(request(vec![]));
    assert_eq!(e.member, "steps");
    let mut bad_name: WorkflowRequest = request(vec![step("a", &[])]);
    bad_name.name = "Report!".into();
    assert_eq!(refused(bad_name).member, "name");
}

#[test]
fn artifact_inputs_must_come_from_an_ancestors_out_directory() {
    // c reads b's artifact but does not need b: b might not have run.
    let mut c = step("c", &["a"]);
    c["inputs"] = json!([{"from": "b:out/x", "path": "x"}]);
    let e = refused(request(vec![step("a", &[]), step("b", &["a"]), c.clone()]));
    assert_eq!(e.member, "steps[2].inputs[0].from");
    assert!(e.reason.contains("b does not run before c"), "{e:?}");
    for (from, why) in [
        ("b", "STEP:out/PATH"),
        ("zz:out/x", "no step is named zz"),
        ("a:src/x", "under out/"),
        ("a:out/../etc/passwd", "relative path"),
    ] {
        c["inputs"] = json!([{"from": from, "path": "x"}]);
        let e = refused(request(vec![step("a", &[]), step("b", &["a"]), c.clone()]));
        assert!(
            e.member.starts_with("steps[2].inputs[0].from") && e.reason.contains(why),
            "{from}: {e:?}"
        );
    }
    c["inputs"] = json!([{"from": "a:out/x", "path": "/etc/x"}]);
    let e = refused(request(vec![step("a", &[]), step("b", &["a"]), c.clone()]));
    assert_eq!(e.member, "steps[2].inputs[0].path");
    c["inputs"] = json!([{"from": "a:out/x", "path": "x"}, {"from": "a:out/y", "path": "x"}]);
    let e = refused(request(vec![step("a", &[]), step("b", &["a"]), c]));
    assert_eq!(e.member, "steps[2].inputs[1].path");
}

#[test]
fn a_bad_job_spec_or_retry_count_is_refused_before_anything_runs() {
    let mut a = step("a", &[]);
    a["job"]["language"] = json!("py thon");
    assert_eq!(refused(request(vec![a])).member, "steps[0].job.language");
    let mut a = step("a", &[]);
    a["retries"] = json!(6);
    assert_eq!(refused(request(vec![a])).member, "steps[0].retries");
    let unknown = serde_json::from_value::<WorkflowRequest>(json!({
        "name": "x", "steps": [{"name": "a", "job": {"language": "python", "code": "1"}, "retry": 1}]
    }));
    assert!(unknown.is_err(), "unknown members are refused");
}

fn states(pairs: &[(&str, StepState)]) -> BTreeMap<StepName, StepState> {
    pairs.iter().map(|(k, v)| (n(k), v.clone())).collect()
}

fn none() -> BTreeSet<StepName> {
    BTreeSet::new()
}

fn schedule(s: &str, attempt: u32) -> Next {
    Next::Schedule {
        step: n(s),
        attempt,
    }
}

#[test]
fn a_diamond_runs_its_middle_in_parallel_and_finishes_when_all_succeeded() {
    let def = diamond().parse().expect("diamond");
    use StepState::*;
    // Given nothing has run, when planned, then only a is scheduled.
    assert_eq!(plan(&def, &states(&[]), &none()), [schedule("a", 1)]);
    assert_eq!(
        plan(&def, &states(&[("a", Running { attempt: 1 })]), &none()),
        []
    );
    // a done: b and c together.
    assert_eq!(
        plan(&def, &states(&[("a", Succeeded)]), &none()),
        [schedule("b", 1), schedule("c", 1)]
    );
    let mid = states(&[
        ("a", Succeeded),
        ("b", Succeeded),
        ("c", Running { attempt: 1 }),
    ]);
    assert_eq!(plan(&def, &mid, &none()), []);
    let late = states(&[("a", Succeeded), ("b", Succeeded), ("c", Succeeded)]);
    assert_eq!(plan(&def, &late, &none()), [schedule("d", 1)]);
    let all = states(&[
        ("a", Succeeded),
        ("b", Succeeded),
        ("c", Succeeded),
        ("d", Succeeded),
    ]);
    assert_eq!(
        plan(&def, &all, &none()),
        [Next::Finish { succeeded: true }]
    );
}

#[test]
fn a_failed_step_skips_its_dependants_and_fails_the_run() {
    let def = diamond().parse().expect("diamond");
    use StepState::*;
    let s = states(&[
        ("a", Succeeded),
        ("b", Failed { attempt: 1 }),
        ("c", Running { attempt: 1 }),
    ]);
    // d is skipped at once; the run is not over while c runs.
    assert_eq!(
        plan(&def, &s, &none()),
        [Next::Skip {
            step: n("d"),
            because: n("b")
        }]
    );
    let s = states(&[
        ("a", Succeeded),
        ("b", Failed { attempt: 1 }),
        ("c", Succeeded),
        ("d", Skipped),
    ]);
    assert_eq!(plan(&def, &s, &none()), [Next::Finish { succeeded: false }]);
    // a fails: everything after it is skipped and the run fails in one decision.
    let s = states(&[("a", Failed { attempt: 1 })]);
    assert_eq!(
        plan(&def, &s, &none()),
        [
            Next::Skip {
                step: n("b"),
                because: n("a")
            },
            Next::Skip {
                step: n("c"),
                because: n("a")
            },
            Next::Skip {
                step: n("d"),
                because: n("b")
            },
            Next::Finish { succeeded: false },
        ]
    );
}

#[test]
fn retries_rerun_only_the_failed_step() {
    let mut r = diamond();
    r.steps[2].retries = 2; // b
    let def = r.parse().expect("diamond");
    use StepState::*;
    let s = states(&[
        ("a", Succeeded),
        ("b", Failed { attempt: 1 }),
        ("c", Succeeded),
    ]);
    assert_eq!(plan(&def, &s, &none()), [schedule("b", 2)]);
    let s = states(&[
        ("a", Succeeded),
        ("b", Failed { attempt: 2 }),
        ("c", Succeeded),
    ]);
    assert_eq!(plan(&def, &s, &none()), [schedule("b", 3)]);
    let s = states(&[
        ("a", Succeeded),
        ("b", Failed { attempt: 3 }),
        ("c", Succeeded),
    ]);
    assert_eq!(
        plan(&def, &s, &none()),
        [
            Next::Skip {
                step: n("d"),
                because: n("b")
            },
            Next::Finish { succeeded: false }
        ]
    );
}

#[test]
fn a_step_needing_approval_waits_for_it_and_a_denial_fails_it() {
    let def = diamond().parse().expect("diamond");
    use StepState::*;
    let gated: BTreeSet<StepName> = [n("c")].into();
    assert_eq!(
        plan(&def, &states(&[("a", Succeeded)]), &gated),
        [schedule("b", 1), Next::RequestApproval { step: n("c") }]
    );
    let waiting = states(&[("a", Succeeded), ("b", Succeeded), ("c", AwaitingApproval)]);
    assert_eq!(plan(&def, &waiting, &gated), []);
    let approved = states(&[("a", Succeeded), ("b", Succeeded), ("c", Approved)]);
    assert_eq!(plan(&def, &approved, &gated), [schedule("c", 1)]);
    let denied = states(&[("a", Succeeded), ("b", Succeeded), ("c", Denied)]);
    assert_eq!(
        plan(&def, &denied, &gated),
        [
            Next::Skip {
                step: n("d"),
                because: n("c")
            },
            Next::Finish { succeeded: false }
        ]
    );
}

#[test]
fn a_cancelled_run_schedules_nothing_more_and_finishes_failed() {
    let def = diamond().parse().expect("diamond");
    use StepState::*;
    let s = states(&[("a", Succeeded), ("b", Cancelled), ("c", Cancelled)]);
    assert_eq!(
        plan(&def, &s, &none()),
        [
            Next::Skip {
                step: n("d"),
                because: n("b")
            },
            Next::Finish { succeeded: false }
        ]
    );
}

#[test]
fn a_steps_job_carries_its_artifact_inputs_as_files_and_a_missing_one_is_named() {
    let def = diamond().parse().expect("diamond");
    let d = def.step(&n("d")).expect("d");
    let store: BTreeMap<(String, String), Vec<u8>> = [
        (
            ("b".to_owned(), "out/b.json".to_owned()),
            b"{\"b\": 1}".to_vec(),
        ),
        (
            ("a".to_owned(), "out/a.txt".to_owned()),
            vec![0, 159, 146, 150],
        ),
    ]
    .into();
    let lookup = |s: &StepName, p: &WorkspacePath| {
        store
            .get(&(s.as_str().to_owned(), p.as_str().to_owned()))
            .cloned()
    };
    let request = d.job_request(lookup).expect("request");
    let spec = request.clone().parse().expect("the step's job parses");
    let files: BTreeMap<&str, &[u8]> = spec
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.content.as_slice()))
        .collect();
    assert_eq!(files.get("in/b.json"), Some(&&b"{\"b\": 1}"[..]));
    assert_eq!(
        files.get("in/a.txt"),
        Some(&&[0u8, 159, 146, 150][..]),
        "binary survives"
    );
    let e = d
        .job_request(|s: &StepName, p: &WorkspacePath| {
            (s.as_str() == "a").then(|| lookup(s, p)).flatten()
        })
        .expect_err("b's artifact is missing");
    assert_eq!(
        e.to_string(),
        "step d needs out/b.json from step b, which did not write it"
    );
}

#[test]
fn a_step_whose_files_and_inputs_exceed_the_file_limit_is_refused() {
    let mut b = step("b", &["a"]);
    b["job"]["files"] = json!(
        (0..60)
            .map(|i| json!({"path": format!("f{i}"), "content": "x"}))
            .collect::<Vec<_>>()
    );
    b["inputs"] = json!(
        (0..5)
            .map(|i| json!({"from": "a:out/x", "path": format!("in{i}")}))
            .collect::<Vec<_>>()
    );
    let e = refused(request(vec![step("a", &[]), b]));
    assert_eq!(e.member, "steps[1].inputs", "{e:?}");
}

#[test]
fn run_inputs_are_checked_alone_and_against_every_step() {
    let def = diamond().parse().expect("definition");
    let file = |path: &str| crate::request::FileInput {
        path: path.into(),
        content: "x".into(),
        encoding: crate::request::Encoding::Utf8,
    };
    // Fine: a path no step uses.
    let ok = RunRequest {
        version: None,
        inputs: vec![file("in/params.json")],
    };
    assert_eq!(ok.check(), Ok(()));
    assert_eq!(def.check_inputs(&ok.inputs), Ok(()));
    // Named twice: refused on its own.
    let twice = RunRequest {
        version: None,
        inputs: vec![file("in/p"), file("in/p")],
    };
    let e = twice.check().expect_err("twice");
    assert!(e.member.starts_with("inputs"), "{e}");
    // Not a workspace path.
    let bad = RunRequest {
        version: None,
        inputs: vec![file("../etc/passwd")],
    };
    assert!(bad.check().is_err());
    // A path d's artifact input already takes: refused naming the step.
    let clash = def.check_inputs(&[file("in/b.json")]).expect_err("clash");
    assert!(clash.reason.contains("step d"), "{clash}");
}

mod versions {
    use crate::catalogue::{self as c, BlobRef, KnownEvent};
    use crate::workflow::versions::WorkflowVersions;
    use glassbox_verify::record::{Actor, Record};

    fn defined(version: u64, digest: &str) -> Record {
        let e = KnownEvent::WorkflowDefined(Box::new(c::WorkflowDefined {
            name: "report".into(),
            version,
            digest: digest.into(),
            definition: BlobRef {
                hmac: glassbox_verify::hash::Digest::ZERO,
                size_bytes: 1,
                key: "workflows/k/definition".into(),
            },
            steps: vec!["a".into()],
        }));
        Record {
            position: version * 10,
            event_id: uuid::Uuid::from_u128(u128::from(version)),
            stream: crate::Stream::workflow("acme", "report")
                .as_str()
                .to_owned(),
            stream_version: version,
            event_type: e.event_type().to_owned(),
            occurred_at: chrono::DateTime::UNIX_EPOCH,
            tenant: "acme".into(),
            actor: Actor::system("alice"),
            correlation_id: "c".into(),
            causation_id: None,
            request_id: None,
            data: e.to_data().expect("data"),
            prev_hash: glassbox_verify::hash::Digest::ZERO,
        }
    }

    #[test]
    fn the_same_document_is_the_same_version_and_another_is_the_next() {
        use crate::Aggregate as _;
        let none = WorkflowVersions::default();
        assert_eq!(none.version_for("sha256:a").err(), Some(1));
        let v = WorkflowVersions::fold(&[defined(1, "sha256:a"), defined(2, "sha256:b")]);
        assert_eq!(v.versions.len(), 2);
        assert_eq!(v.tenant, "acme");
        // The latest document again: that version, nothing to record.
        assert_eq!(v.version_for("sha256:b").map(|x| x.defined.version), Ok(2));
        // An older document again is a new version (the latest is what runs by default).
        assert_eq!(v.version_for("sha256:a").err(), Some(3));
        assert_eq!(
            v.get(1).map(|x| x.defined.digest.as_str()),
            Some("sha256:a")
        );
        assert_eq!(v.get(3), None);
        assert_eq!(v.latest().map(|x| x.defined_by.as_str()), Some("alice"));
    }
}
