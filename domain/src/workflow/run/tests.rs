//! `WorkflowRun::decide` given/when/then: given the run's events, when a
//! command, then these events — or this refusal. No database.

use super::*;
use crate::workflow::WorkflowRequest;
use glassbox_verify::Digest;
use glassbox_verify::record::{Actor, ActorKind, AuthVia};
use serde_json::{Map, json};

const RUN: &str = "7a11a0e2-0000-4000-8000-000000000001";

fn diamond() -> WorkflowDefinition {
    let step = |name: &str, needs: &[&str]| json!({"name": name, "needs": needs, "job": {"language": "python", "code": "print(1)"}});
    serde_json::from_value::<WorkflowRequest>(json!({
        "name": "report",
        "steps": [step("a", &[]), step("b", &["a"]), step("c", &["a"]), step("d", &["b", "c"])],
    }))
    .expect("request")
    .parse()
    .expect("definition")
}

fn n(s: &str) -> StepName {
    StepName::parse(s).expect("name")
}

fn started(def: &WorkflowDefinition) -> KnownEvent {
    started_gated(def, &[])
}

/// The start, with the steps the recorded gate decisions made wait for approval.
fn started_gated(def: &WorkflowDefinition, gated: &[&str]) -> KnownEvent {
    KnownEvent::WorkflowRunStarted(Box::new(c::WorkflowRunStarted {
        run_id: RUN.into(),
        name: "report".into(),
        version: 1,
        digest: def.digest.clone(),
        inputs: None,
        input_count: 0,
        idempotency_key: None,
        gated: gated.iter().map(|g| (*g).to_owned()).collect(),
        submitter_roles: vec!["submitter".into()],
    }))
}

/// The run's records: the first by `alice` (the submitter), the rest by the orchestrator.
fn given(events: &[KnownEvent]) -> WorkflowRun {
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            position: 10 + i as u64,
            event_id: uuid::Uuid::from_u128(i as u128 + 1),
            stream: crate::Stream::workflow_run(RUN).as_str().to_owned(),
            stream_version: i as u64 + 1,
            event_type: e.event_type().into(),
            occurred_at: chrono::DateTime::UNIX_EPOCH,
            tenant: "acme".into(),
            actor: if i == 0 {
                Actor {
                    kind: ActorKind::User,
                    id: "alice".into(),
                    app: None,
                    agent: None,
                    via: AuthVia::Jwt,
                }
            } else {
                Actor::system("orchestrator")
            },
            correlation_id: RUN.into(),
            causation_id: None,
            request_id: None,
            data: e.to_data().unwrap_or_else(|_| Map::new()),
            prev_hash: Digest::ZERO,
        })
        .collect();
    WorkflowRun::fold(&records)
}

fn advance(run: &WorkflowRun, def: &WorkflowDefinition) -> Vec<KnownEvent> {
    run.decide(RunCommand::Advance {
        definition: std::sync::Arc::new(def.clone()),
    })
    .expect("advance")
}

fn finished(step: &str, attempt: u32, ok: bool) -> KnownEvent {
    KnownEvent::WorkflowStepFinished(Box::new(c::WorkflowStepFinished {
        run_id: RUN.into(),
        step: step.into(),
        attempt: u64::from(attempt),
        job_id: job_id_for(RUN, &n(step), attempt),
        succeeded: ok,
        reason: None,
    }))
}

fn scheduled(step: &str, attempt: u32) -> KnownEvent {
    KnownEvent::WorkflowStepScheduled(Box::new(c::WorkflowStepScheduled {
        run_id: RUN.into(),
        step: step.into(),
        attempt: u64::from(attempt),
        job_id: job_id_for(RUN, &n(step), attempt),
    }))
}

fn types(events: &[KnownEvent]) -> Vec<&'static str> {
    events.iter().map(KnownEvent::event_type).collect()
}

#[test]
fn a_run_starts_once_on_a_new_stream() {
    let def = diamond();
    let start = RunCommand::Start {
        events: vec![started(&def)],
    };
    assert_eq!(
        WorkflowRun::default().decide(start.clone()),
        Ok(vec![started(&def)])
    );
    assert_eq!(
        given(&[started(&def)]).decide(start),
        Err(RunRefusal::Exists)
    );
    assert_eq!(
        WorkflowRun::default().decide(RunCommand::Start { events: vec![] }),
        Err(RunRefusal::BadStart)
    );
    assert_eq!(
        WorkflowRun::default().decide(RunCommand::Cancel),
        Err(RunRefusal::NoRun)
    );
}

#[test]
fn advancing_schedules_each_step_once_even_when_decided_again_after_a_crash() {
    let def = diamond();
    let run = given(&[started(&def)]);
    assert_eq!(
        run.submitted_by.as_ref().map(|s| s.id.as_str()),
        Some("alice")
    );
    let first = advance(&run, &def);
    assert_eq!(first, [scheduled("a", 1)]);
    // An orchestrator that crashed after appending reads the stream and decides
    // again: nothing new.
    let run = given(&[started(&def), scheduled("a", 1)]);
    assert_eq!(advance(&run, &def), []);
    // a's job finished: b and c together, each its own derived job ID.
    let run = given(&[started(&def), scheduled("a", 1), finished("a", 1, true)]);
    let next = advance(&run, &def);
    assert_eq!(next, [scheduled("b", 1), scheduled("c", 1)]);
    assert_eq!(run.correlation_id.as_deref(), Some(RUN));
}

#[test]
fn a_step_result_must_name_the_running_job() {
    let def = diamond();
    let run = given(&[started(&def), scheduled("a", 1)]);
    let wrong = RunCommand::StepFinished {
        step: n("a"),
        job_id: job_id_for(RUN, &n("a"), 2),
        succeeded: true,
        reason: None,
    };
    assert!(matches!(run.decide(wrong), Err(RunRefusal::NotRunning(..))));
    let not_started = RunCommand::StepFinished {
        step: n("b"),
        job_id: job_id_for(RUN, &n("b"), 1),
        succeeded: true,
        reason: None,
    };
    assert!(matches!(
        run.decide(not_started),
        Err(RunRefusal::NotRunning(..))
    ));
    let right = RunCommand::StepFinished {
        step: n("a"),
        job_id: job_id_for(RUN, &n("a"), 1),
        succeeded: false,
        reason: Some("exit 1".into()),
    };
    let events = run.decide(right).expect("finished");
    assert_eq!(types(&events), ["workflow.step_finished"]);
}

#[test]
fn a_whole_failing_run_ends_in_one_decision_after_its_failure() {
    let def = diamond();
    let run = given(&[started(&def), scheduled("a", 1), finished("a", 1, false)]);
    assert_eq!(
        types(&advance(&run, &def)),
        [
            "workflow.step_skipped",
            "workflow.step_skipped",
            "workflow.step_skipped",
            "workflow.run_finished"
        ]
    );
    let done = given(&[
        started(&def),
        scheduled("a", 1),
        finished("a", 1, false),
        KnownEvent::WorkflowRunFinished(Box::new(c::WorkflowRunFinished {
            run_id: RUN.into(),
            succeeded: false,
        })),
    ]);
    assert_eq!(done.finished, Some(false));
    assert_eq!(done.decide(RunCommand::Cancel), Err(RunRefusal::Finished));
}

#[test]
fn the_submitter_cannot_approve_their_own_step_and_the_refusal_is_recorded() {
    let def = diamond();
    let base = vec![
        started_gated(&def, &["c"]),
        scheduled("a", 1),
        finished("a", 1, true),
    ];
    let run = given(&base);
    let next = advance(&run, &def);
    assert_eq!(
        types(&next),
        ["workflow.step_scheduled", "workflow.approval_requested"]
    );
    let mut events = base.clone();
    events.extend(next);
    let run = given(&events);
    let answer = |who: &str, grant: bool, refusals: Vec<String>| RunCommand::Answer {
        step: n("c"),
        approver: who.into(),
        grant,
        reason: Some("looked at it".into()),
        refusals,
    };
    let own = run.decide(answer("alice", true, vec![])).expect("recorded");
    let KnownEvent::WorkflowApprovalRefused(e) = &own[0] else {
        panic!("{own:?}")
    };
    assert_eq!(e.approver, "alice");
    assert!(e.reasons[0].contains("submitter"), "{e:?}");
    // The policy's refusal for another approver is recorded the same way.
    let by_policy = run
        .decide(answer("mallory", true, vec!["needs role approver".into()]))
        .expect("recorded");
    assert_eq!(types(&by_policy), ["workflow.approval_refused"]);
    // Someone else may: granted, then c is scheduled.
    let granted = run.decide(answer("bob", true, vec![])).expect("granted");
    assert_eq!(types(&granted), ["workflow.approval_granted"]);
    events.extend(granted);
    let run = given(&events);
    assert_eq!(run.approvers.get(&n("c")).map(String::as_str), Some("bob"));
    assert_eq!(advance(&run, &def), [scheduled("c", 1)]);
    assert!(matches!(
        run.decide(answer("bob", true, vec![])),
        Err(RunRefusal::NotAwaitingApproval(_))
    ));
}

#[test]
fn a_denial_fails_the_step_and_skips_what_needs_it() {
    let def = diamond();
    let mut events = vec![
        started_gated(&def, &["c"]),
        scheduled("a", 1),
        finished("a", 1, true),
    ];
    let run = given(&events);
    events.extend(advance(&run, &def));
    let run = given(&events);
    events.extend(
        run.decide(RunCommand::Answer {
            step: n("c"),
            approver: "bob".into(),
            grant: false,
            reason: Some("not today".into()),
            refusals: vec![],
        })
        .expect("denied"),
    );
    events.push(finished("b", 1, true));
    let run = given(&events);
    let next = advance(&run, &def);
    assert_eq!(
        types(&next),
        ["workflow.step_skipped", "workflow.run_finished"]
    );
    let KnownEvent::WorkflowRunFinished(f) = &next[1] else {
        panic!("{next:?}")
    };
    assert!(!f.succeeded);
}

#[test]
fn a_cancel_skips_what_has_not_started_and_finishes_when_running_jobs_end() {
    let def = diamond();
    let mut events = vec![
        started_gated(&def, &["c"]),
        scheduled("a", 1),
        finished("a", 1, true),
    ];
    let run = given(&events);
    events.extend(advance(&run, &def)); // b scheduled, c awaiting approval
    let run = given(&events);
    let cancel = run.decide(RunCommand::Cancel).expect("cancel");
    assert_eq!(types(&cancel), ["workflow.cancel_requested"]);
    events.extend(cancel);
    let run = given(&events);
    assert_eq!(
        run.decide(RunCommand::Cancel),
        Ok(vec![]),
        "a second cancel adds nothing"
    );
    assert_eq!(run.running_jobs(), [(n("b"), job_id_for(RUN, &n("b"), 1))]);
    // b still runs: c and d are skipped, the run is not over.
    let next = advance(&run, &def);
    assert_eq!(
        types(&next),
        ["workflow.step_skipped", "workflow.step_skipped"]
    );
    events.extend(next);
    events.push(finished("b", 1, false));
    let run = given(&events);
    // b's cancelled job ended: no retry after a cancel, the run fails.
    let next = advance(&run, &def);
    assert_eq!(types(&next), ["workflow.run_finished"]);
}

#[test]
fn a_definition_other_than_the_runs_is_refused() {
    let def = diamond();
    let run = given(&[started(&def)]);
    let mut other = def.clone();
    other.digest = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(
        run.decide(RunCommand::Advance {
            definition: std::sync::Arc::new(other),
        }),
        Err(RunRefusal::WrongDefinition(_))
    ));
}

#[test]
fn job_ids_are_uuids_derived_from_run_step_and_attempt() {
    let a1 = job_id_for(RUN, &n("a"), 1);
    assert_eq!(a1, job_id_for(RUN, &n("a"), 1));
    assert_ne!(a1, job_id_for(RUN, &n("a"), 2));
    assert_ne!(a1, job_id_for(RUN, &n("b"), 1));
    assert_ne!(a1, job_id_for("another-run", &n("a"), 1));
    let u = uuid::Uuid::parse_str(&a1).expect("a UUID");
    assert_eq!(u.get_version_num(), 8);
    assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
}

#[test]
fn step_jobs_are_told_apart_from_client_jobs_by_their_id() {
    let id = job_id_for(RUN, &n("a"), 1);
    assert!(super::is_step_job(&id), "{id}");
    assert!(!super::is_step_job(&uuid::Uuid::new_v4().to_string()));
    assert!(!super::is_step_job("job"));
}
