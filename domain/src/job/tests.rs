//! `decide` given/when/then, with no database: given the events of a stream,
//! when a command, then these events — or this refusal.

use super::*;
use crate::catalogue::{Dependency, Limits};
use chrono::TimeZone as _;
use glassbox_verify::Digest;
use glassbox_verify::record::{Actor, Record};
use serde_json::Map;

const JOB: &str = "0b6c8a4e-5d1f-4f7a-9c1e-2a3b4c5d6e7f";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0)
        .single()
        .expect("time")
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

fn blob(n: &str) -> c::BlobRef {
    c::BlobRef {
        hmac: Digest::of(n.as_bytes()),
        size_bytes: n.len() as u64,
        key: format!("jobs/{JOB}/{n}"),
    }
}

fn submitted() -> KnownEvent {
    KnownEvent::JobSubmitted(Box::new(c::JobSubmitted {
        job_id: JOB.into(),
        language: "python".into(),
        code: blob("code"),
        stdin: None,
        args: None,
        arg_count: 0,
        env: None,
        env_count: 0,
        files: vec![],
        file_paths: None,
        dependencies: vec![Dependency {
            ecosystem: "pypi".into(),
            name: "six".into(),
            version: Some("1.16.0".into()),
        }],
        secrets: vec![],
        limits: Limits::default(),
        idempotency_key: None,
        egress: vec![],
    }))
}

fn accepted() -> KnownEvent {
    KnownEvent::JobAccepted(Box::new(c::JobAccepted {
        job_id: JOB.into(),
        effective_limits: Limits {
            wall_time_ms: Some(5_000),
            ..Limits::default()
        },
    }))
}

fn claimed(attempt: u64, lease: DateTime<Utc>) -> KnownEvent {
    KnownEvent::ExecutionClaimed(Box::new(c::ExecutionClaimed {
        runner: "r1".into(),
        attempt,
        lease_expires_at: lease.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}

fn output() -> c::OutputRef {
    c::OutputRef {
        blob: Some(blob("out")),
        size_bytes: 3,
        truncated: false,
    }
}

fn finished_event(attempt: u64, outcome: Outcome) -> c::ExecutionFinished {
    c::ExecutionFinished {
        attempt,
        outcome,
        exit_code: Some(0),
        signal: None,
        wall_ms: 120,
        cpu_ms: Some(30),
        peak_memory_bytes: None,
        stdout: output(),
        stderr: output(),
        artifact_index: None,
        artifacts_skipped: 0,
    }
}

fn finished(attempt: u64, outcome: Outcome) -> KnownEvent {
    KnownEvent::ExecutionFinished(Box::new(finished_event(attempt, outcome)))
}

fn ended(e: KnownEvent) -> KnownEvent {
    e
}

fn completed(outcome: Outcome) -> KnownEvent {
    KnownEvent::JobCompleted(Box::new(c::JobCompleted {
        job_id: JOB.into(),
        outcome,
    }))
}

fn cancel_requested() -> KnownEvent {
    KnownEvent::JobCancelRequested(Box::new(c::JobCancelRequested {
        job_id: JOB.into(),
        reason: None,
    }))
}

fn workspace() -> c::WorkspaceDestroyed {
    c::WorkspaceDestroyed {
        sandbox_id: "gb-r1-000000000001".into(),
        method: "zero-overwrite+unlink+umount-tmpfs".into(),
        bytes_scrubbed: 10,
        files_scrubbed: 1,
        complete: true,
        error: None,
    }
}

fn finish(attempt: u64, outcome: Outcome) -> JobCommand {
    JobCommand::Finish(Box::new(Finish {
        attempt,
        finished: finished_event(attempt, outcome),
        redactions: vec![],
        artifacts: vec![c::ArtifactStored {
            attempt,
            index: 0,
            blob: blob("a"),
            truncated: false,
        }],
        workspace: workspace(),
        storage_error: None,
        cancel_reason: None,
    }))
}

/// Records of a job stream holding `events`, one second apart.
pub(crate) fn records(events: &[KnownEvent]) -> Vec<Record> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            position: 100 + i as u64,
            event_id: uuid_of(i),
            stream: format!("job-{JOB}"),
            stream_version: i as u64 + 1,
            event_type: e.event_type().into(),
            occurred_at: at(i as i64),
            tenant: "acme".into(),
            actor: Actor::system("test"),
            correlation_id: "c".into(),
            causation_id: None,
            request_id: None,
            data: e.to_data().unwrap_or_else(|_| Map::new()),
            prev_hash: Digest::ZERO,
        })
        .collect()
}

fn uuid_of(i: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(i as u128 + 1)
}

fn given(events: &[KnownEvent]) -> Job {
    Job::fold(&records(events))
}

fn types(events: &[KnownEvent]) -> Vec<&'static str> {
    events.iter().map(KnownEvent::event_type).collect()
}

fn claim(now: DateTime<Utc>) -> JobCommand {
    JobCommand::Claim {
        runner: "r2".into(),
        now,
        grace_ms: 1_000,
        max_attempts: 3,
    }
}

#[test]
fn an_accepted_job_is_claimed_with_a_lease_of_its_wall_time_plus_grace() {
    let then = given(&[submitted(), accepted()]).decide(claim(at(100)));
    let Ok(events) = then else { panic!("{then:?}") };
    let [KnownEvent::ExecutionClaimed(c)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!((c.runner.as_str(), c.attempt), ("r2", 1));
    assert_eq!(
        c.lease_expires_at, "2026-11-28T10:01:46.000Z",
        "100 s + 5 s wall + 1 s grace"
    );
}

#[test]
fn a_live_lease_is_never_claimed_over() {
    let job = given(&[submitted(), accepted(), claimed(1, at(60))]);
    assert_eq!(
        job.decide(claim(at(59))),
        Err(Refusal::NotClaimable("the lease of its attempt is live"))
    );
    assert!(!job.claimable(at(59)));
}

#[test]
fn an_expired_lease_is_claimed_as_the_next_attempt() {
    let job = given(&[submitted(), accepted(), claimed(1, at(60))]);
    assert!(job.claimable(at(60)));
    let events = job.decide(claim(at(61))).expect("claims");
    assert!(matches!(events.as_slice(), [KnownEvent::ExecutionClaimed(c)] if c.attempt == 2));
}

#[test]
fn a_job_whose_attempts_are_used_up_fails_instead_of_being_claimed() {
    let job = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        claimed(2, at(20)),
        claimed(3, at(30)),
    ]);
    let events = job.decide(claim(at(31))).expect("decides");
    let [KnownEvent::JobFailed(f)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert!(
        f.reason.starts_with("gave up after 3 attempts"),
        "{}",
        f.reason
    );
}

#[test]
fn a_cancelled_job_is_never_claimed() {
    // Cancelled at once before a claim: terminal.
    let job = given(&[
        submitted(),
        accepted(),
        cancel_requested(),
        KnownEvent::JobCancelled(Box::new(c::JobCancelled {
            job_id: JOB.into(),
            reason: None,
        })),
    ]);
    assert_eq!(
        job.decide(claim(at(1))),
        Err(Refusal::Ended(JobStatus::Cancelled))
    );
    // Requested while claimed, and that runner died: the next claim ends it.
    let job = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        cancel_requested(),
    ]);
    let events = job.decide(claim(at(11))).expect("decides");
    assert_eq!(types(&events), ["job.cancelled"]);
}

#[test]
fn a_recorded_result_without_an_end_is_completed_not_run_again() {
    let job = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        finished(1, Outcome::Failed),
    ]);
    let events = job.decide(claim(at(11))).expect("decides");
    assert_eq!(events, vec![completed(Outcome::Failed)]);
}

#[test]
fn claims_are_refused_for_jobs_that_are_not_accepted_ended_or_absent() {
    assert_eq!(Job::default().decide(claim(at(0))), Err(Refusal::NoJob));
    assert_eq!(
        given(&[submitted()]).decide(claim(at(0))),
        Err(Refusal::NotClaimable("it was not accepted"))
    );
    let done = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        finished(1, Outcome::Succeeded),
        completed(Outcome::Succeeded),
    ]);
    assert_eq!(
        done.decide(claim(at(99))),
        Err(Refusal::Ended(JobStatus::Completed))
    );
}

#[test]
fn progress_belongs_to_the_attempt_that_holds_the_job() {
    let job = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        claimed(2, at(20)),
    ]);
    let started = KnownEvent::ExecutionStarted(Box::new(c::ExecutionStarted {
        attempt: 2,
        sandbox_id: "sb".into(),
    }));
    assert_eq!(
        job.decide(JobCommand::Progress {
            attempt: 1,
            events: vec![started.clone()],
        }),
        Err(Refusal::LeaseLost {
            attempt: 1,
            current: 2,
            status: JobStatus::Claimed
        })
    );
    assert_eq!(
        job.decide(JobCommand::Progress {
            attempt: 2,
            events: vec![started.clone()],
        }),
        Ok(vec![started])
    );
    assert!(matches!(
        job.decide(JobCommand::Progress {
            attempt: 2,
            events: vec![completed(Outcome::Succeeded)],
        }),
        Err(Refusal::Invalid(_))
    ));
}

#[test]
fn the_first_finish_is_the_result_with_its_artifacts_and_the_end() {
    let job = given(&[submitted(), accepted(), claimed(1, at(10))]);
    let events = job.decide(finish(1, Outcome::Succeeded)).expect("decides");
    assert_eq!(
        types(&events),
        [
            "execution.finished",
            "artifact.stored",
            "workspace.destroyed",
            "job.completed"
        ]
    );
}

#[test]
fn a_later_finish_is_superseded_and_never_a_second_result() {
    // Attempt 1 finished (its runner died before the end); attempt 2 finishes too.
    let job = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        claimed(2, at(20)),
        finished(1, Outcome::Failed),
    ]);
    let events = job.decide(finish(2, Outcome::Succeeded)).expect("decides");
    assert_eq!(
        types(&events),
        [
            "execution.superseded",
            "workspace.destroyed",
            "job.completed"
        ]
    );
    assert!(
        matches!(&events[0], KnownEvent::ExecutionSuperseded(s) if s.attempt == 2 && s.winning_attempt == 1)
    );
    assert_eq!(
        events[2],
        completed(Outcome::Failed),
        "the winning result ends the job"
    );
    // When the end is already recorded, only the supersession and the teardown.
    let ended_job = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        claimed(2, at(20)),
        finished(1, Outcome::Failed),
        ended(completed(Outcome::Failed)),
    ]);
    let events = ended_job
        .decide(finish(2, Outcome::Succeeded))
        .expect("decides");
    assert_eq!(
        types(&events),
        ["execution.superseded", "workspace.destroyed"]
    );
}

#[test]
fn a_result_that_could_not_be_stored_fails_the_job_and_a_cancelled_run_is_cancelled() {
    let job = given(&[submitted(), accepted(), claimed(1, at(10))]);
    let JobCommand::Finish(mut f) = finish(1, Outcome::Succeeded) else {
        panic!()
    };
    f.storage_error = Some("storing an output failed: disk full".into());
    let events = job.decide(JobCommand::Finish(f)).expect("decides");
    let Some(KnownEvent::JobFailed(failed)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        failed.reason,
        "the result of attempt 1 could not be kept: storing an output failed: disk full"
    );
    let JobCommand::Finish(mut f) = finish(1, Outcome::Cancelled) else {
        panic!()
    };
    f.cancel_reason = Some("cancel requested".into());
    let events = job.decide(JobCommand::Finish(f)).expect("decides");
    assert!(
        matches!(events.last(), Some(KnownEvent::JobCancelled(c)) if c.reason.as_deref() == Some("cancel requested"))
    );
    assert!(matches!(
        job.decide(finish(5, Outcome::Succeeded)),
        Err(Refusal::Invalid(_))
    ));
}

#[test]
fn fail_ends_the_attempt_that_holds_the_job_only() {
    let job = given(&[submitted(), accepted(), claimed(1, at(10))]);
    let fail = |attempt| JobCommand::Fail {
        attempt,
        reason: "the sandbox failed".into(),
    };
    assert_eq!(types(&job.decide(fail(1)).expect("fails")), ["job.failed"]);
    assert!(matches!(
        job.decide(fail(2)),
        Err(Refusal::LeaseLost { .. })
    ));
}

#[test]
fn cancel_is_immediate_before_a_claim_a_request_after_and_idempotent() {
    let cancel = || JobCommand::Cancel {
        reason: Some("no longer needed".into()),
    };
    let unclaimed = given(&[submitted(), accepted()]);
    assert_eq!(
        types(&unclaimed.decide(cancel()).expect("cancels")),
        ["job.cancel_requested", "job.cancelled"]
    );
    let claimed_job = given(&[submitted(), accepted(), claimed(1, at(10))]);
    assert_eq!(
        types(&claimed_job.decide(cancel()).expect("requests")),
        ["job.cancel_requested"]
    );
    let requested = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        cancel_requested(),
    ]);
    assert_eq!(
        requested.decide(cancel()),
        Ok(vec![]),
        "asking twice is not an error"
    );
    let done = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        finished(1, Outcome::Succeeded),
        completed(Outcome::Succeeded),
    ]);
    assert_eq!(
        done.decide(cancel()),
        Err(Refusal::Ended(JobStatus::Completed))
    );
    let rejected = given(&[
        submitted(),
        KnownEvent::JobRejected(Box::new(c::JobRejected {
            job_id: JOB.into(),
            reasons: vec!["no".into()],
        })),
    ]);
    assert_eq!(
        rejected.decide(cancel()),
        Err(Refusal::Ended(JobStatus::Rejected))
    );
    assert_eq!(Job::default().decide(cancel()), Err(Refusal::NoJob));
}

#[test]
fn only_a_finished_job_is_shredded_and_only_once() {
    let shred = || JobCommand::Shred {
        reason: "retention".into(),
    };
    let running = given(&[submitted(), accepted(), claimed(1, at(10))]);
    assert_eq!(
        running.decide(shred()),
        Err(Refusal::NotEnded(JobStatus::Claimed))
    );
    let mut done_events = vec![
        submitted(),
        accepted(),
        claimed(1, at(10)),
        finished(1, Outcome::Succeeded),
        completed(Outcome::Succeeded),
    ];
    let done = given(&done_events);
    let events = done.decide(shred()).expect("shreds");
    assert!(matches!(events.as_slice(), [KnownEvent::KeyDestroyed(k)] if k.key_id == JOB));
    done_events.extend(events);
    assert_eq!(given(&done_events).decide(shred()), Ok(vec![]));
    assert_eq!(Job::default().decide(shred()), Err(Refusal::NoJob));
}

#[test]
fn a_submission_is_new_consistent_and_ends_with_the_decision() {
    let allow = |policy: &str| {
        KnownEvent::PolicyEvaluated(Box::new(c::PolicyEvaluated {
            policy: policy.into(),
            decision: c::Decision::Allow,
            reasons: vec![],
            bundle_digest: Digest::ZERO,
            input: Map::new(),
            input_digest: Digest::ZERO,
            error: None,
        }))
    };
    let deny = |policy: &str| {
        let KnownEvent::PolicyEvaluated(mut p) = allow(policy) else {
            panic!()
        };
        p.decision = c::Decision::Deny;
        KnownEvent::PolicyEvaluated(p)
    };
    let rejected = KnownEvent::JobRejected(Box::new(c::JobRejected {
        job_id: JOB.into(),
        reasons: vec!["no".into()],
    }));
    let submit = |events: Vec<KnownEvent>| JobCommand::Submit { events };
    let ok = vec![
        submitted(),
        allow("glassbox.authz"),
        allow("glassbox.admission"),
        accepted(),
    ];
    assert_eq!(Job::default().decide(submit(ok.clone())), Ok(ok.clone()));
    let refused = vec![deny("glassbox.authz"), rejected.clone()];
    assert_eq!(Job::default().decide(submit(refused.clone())), Ok(refused));
    for bad in [
        vec![submitted(), deny("glassbox.admission"), accepted()],
        vec![allow("glassbox.authz"), accepted()],
        vec![submitted(), allow("glassbox.authz"), rejected],
        vec![submitted()],
        vec![],
    ] {
        assert!(
            matches!(
                Job::default().decide(submit(bad.clone())),
                Err(Refusal::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        given(&[submitted()]).decide(submit(ok)),
        Err(Refusal::Exists)
    );
}

#[test]
fn apply_never_moves_a_terminal_job_back_and_keeps_the_first_result() {
    let job = given(&[
        submitted(),
        accepted(),
        claimed(1, at(10)),
        finished(1, Outcome::Failed),
        completed(Outcome::Failed),
        claimed(2, at(20)),
        finished(2, Outcome::Succeeded),
    ]);
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.finished.as_ref().map(|f| f.attempt), Some(1));
    let view = job.view().expect("a view");
    assert_eq!(view.outcome, Some(Outcome::Failed));
    assert_eq!(view.attempt, 2);
    assert_eq!(view.last_position, 106, "the stream's last record");
    assert_eq!(view.submitted_at, "2026-11-28T10:00:00.000000Z");
}
