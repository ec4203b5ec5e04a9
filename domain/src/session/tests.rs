//! `Session::decide` given/when/then, with no database: given the events of a
//! session stream, when a command, then these events — or this refusal.

use super::*;
use crate::catalogue::{Decision, Outcome, OutputRef};
use chrono::TimeZone as _;
use glassbox_verify::Digest;
use glassbox_verify::record::{Actor, Record};
use serde_json::Map;

const ID: &str = "5e55a0e2-0000-4000-8000-000000000001";

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
        key: format!("sessions/{ID}/{n}"),
    }
}

fn requested() -> KnownEvent {
    KnownEvent::SessionRequested(Box::new(c::SessionRequested {
        session_id: ID.into(),
        language: "python".into(),
        env: None,
        env_count: 0,
        dependencies: vec![],
        secrets: vec![],
        limits: SessionLimits::default(),
        idempotency_key: None,
        egress: vec![],
    }))
}

fn policy(decision: Decision) -> KnownEvent {
    KnownEvent::PolicyEvaluated(Box::new(c::PolicyEvaluated {
        policy: "glassbox.admission".into(),
        decision,
        reasons: vec![],
        bundle_digest: Digest::ZERO,
        input: Map::new(),
        input_digest: Digest::ZERO,
        error: None,
    }))
}

/// Opened at t0 on r1: idle timeout 60 s, lifetime 3600 s.
fn opened() -> KnownEvent {
    KnownEvent::SessionOpened(Box::new(c::SessionOpened {
        session_id: ID.into(),
        language: "python".into(),
        runner: "r1".into(),
        effective_limits: SessionLimits {
            idle_timeout_secs: Some(60),
            max_lifetime_secs: Some(3600),
            ..SessionLimits::default()
        },
        expires_at: "2026-11-28T11:00:00.000000Z".into(),
    }))
}

fn rejected() -> KnownEvent {
    KnownEvent::SessionRejected(Box::new(c::SessionRejected {
        session_id: ID.into(),
        reasons: vec!["no".into()],
    }))
}

fn started() -> KnownEvent {
    KnownEvent::SessionStarted(Box::new(c::SessionStarted {
        session_id: ID.into(),
        runner: "r1".into(),
        sandbox_id: "gb-r1-abc".into(),
        backend: "runsc".into(),
        runtime: "python-3.11".into(),
        image_digest: Some(format!("sha256:{}", "ab".repeat(32))),
    }))
}

fn exec_started(n: u64) -> KnownEvent {
    KnownEvent::SessionExecStarted(Box::new(c::SessionExecStarted {
        session_id: ID.into(),
        exec: n,
        kind: "code".into(),
        source: blob("code"),
        stdin: None,
        timeout_ms: 1000,
    }))
}

fn finished(n: u64) -> c::SessionExecFinished {
    let out = OutputRef {
        blob: None,
        size_bytes: 0,
        truncated: false,
    };
    c::SessionExecFinished {
        session_id: ID.into(),
        exec: n,
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        signal: None,
        wall_ms: 3,
        stdout: out.clone(),
        stderr: out,
        context_reset: false,
        redactions: 0,
    }
}

fn closed() -> KnownEvent {
    KnownEvent::SessionClosed(Box::new(c::SessionClosed {
        session_id: ID.into(),
        reason: "done".into(),
    }))
}

fn written() -> KnownEvent {
    KnownEvent::SessionFileWritten(Box::new(c::SessionFileWritten {
        session_id: ID.into(),
        name: blob("name"),
        size_bytes: 3,
        content_hmac: Digest::of(b"abc"),
    }))
}

fn workspace() -> c::WorkspaceDestroyed {
    c::WorkspaceDestroyed {
        sandbox_id: "gb-r1-abc".into(),
        method: "zero-overwrite".into(),
        bytes_scrubbed: 10,
        files_scrubbed: 1,
        complete: true,
        error: None,
    }
}

/// Records of a session stream holding `events`, `step` seconds apart.
fn records(events: &[KnownEvent], step: i64) -> Vec<Record> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            position: 100 + i as u64,
            event_id: uuid::Uuid::from_u128(i as u128 + 1),
            stream: crate::Stream::session(ID).as_str().to_owned(),
            stream_version: i as u64 + 1,
            event_type: e.event_type().into(),
            occurred_at: at(i as i64 * step),
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

fn given(events: &[KnownEvent]) -> Session {
    Session::fold(&records(events, 1))
}

fn active() -> Vec<KnownEvent> {
    vec![requested(), policy(Decision::Allow), opened(), started()]
}

fn types(events: &[KnownEvent]) -> Vec<&'static str> {
    events.iter().map(KnownEvent::event_type).collect()
}

fn start_exec(runner: &str) -> SessionCommand {
    SessionCommand::StartExec {
        runner: runner.into(),
        kind: "code".into(),
        source: blob("code"),
        stdin: None,
        timeout_ms: 1000,
    }
}

#[test]
fn an_opening_is_the_request_the_decisions_and_the_verdict_on_a_new_stream() {
    let open = vec![requested(), policy(Decision::Allow), opened()];
    let s = Session::default();
    assert_eq!(
        s.decide(SessionCommand::Open {
            events: open.clone()
        }),
        Ok(open.clone())
    );
    let rejected_open = vec![requested(), policy(Decision::Deny), rejected()];
    assert!(
        s.decide(SessionCommand::Open {
            events: rejected_open
        })
        .is_ok()
    );
    for bad in [
        vec![requested(), policy(Decision::Deny), opened()],
        vec![requested(), policy(Decision::Allow), rejected()],
        vec![policy(Decision::Allow), opened()],
        vec![requested()],
        vec![],
    ] {
        assert!(
            matches!(
                s.decide(SessionCommand::Open {
                    events: bad.clone()
                }),
                Err(SessionRefusal::Invalid(_))
            ),
            "{:?}",
            types(&bad)
        );
    }
    assert_eq!(
        given(&open).decide(SessionCommand::Open { events: open }),
        Err(SessionRefusal::Exists)
    );
    let s = given(&[requested(), policy(Decision::Allow), opened()]);
    assert_eq!(s.status, SessionStatus::Opening);
    assert_eq!(s.runner.as_deref(), Some("r1"));
    let r = given(&[requested(), policy(Decision::Deny), rejected()]);
    assert_eq!(
        (r.status, r.reasons.clone()),
        (SessionStatus::Rejected, vec!["no".to_owned()])
    );
}

#[test]
fn only_its_runner_starts_it_and_only_once() {
    let opening = given(&[requested(), policy(Decision::Allow), opened()]);
    let start = |runner: &str| SessionCommand::Start {
        runner: runner.into(),
        sandbox_id: "gb-r1-abc".into(),
        backend: "runsc".into(),
        runtime: "python-3.11".into(),
        image_digest: Some(format!("sha256:{}", "ab".repeat(32))),
        materialized: vec![c::SecretMaterialized {
            name: "API_KEY".into(),
            mode: "env".into(),
        }],
    };
    let events = opening.decide(start("r1")).expect("start");
    assert_eq!(types(&events), ["secret.materialized", "session.started"]);
    assert_eq!(
        opening.decide(start("r2")),
        Err(SessionRefusal::WrongRunner)
    );
    let active = given(&active());
    assert_eq!(active.status, SessionStatus::Active);
    assert_eq!(
        active.decide(start("r1")),
        Err(SessionRefusal::NotActive(SessionStatus::Active))
    );
    // A sandbox that never came up fails the session.
    let failed = opening
        .decide(SessionCommand::Fail {
            runner: "r1".into(),
            reason: "no runsc".into(),
        })
        .expect("fail");
    assert_eq!(types(&failed), ["session.failed"]);
    let mut all = vec![requested(), policy(Decision::Allow), opened()];
    all.extend(failed);
    let s = given(&all);
    assert_eq!(s.status, SessionStatus::Failed);
    assert_eq!(
        s.decide(start("r1")),
        Err(SessionRefusal::Ended(SessionStatus::Failed))
    );
    assert_eq!(
        Session::default().decide(start("r1")),
        Err(SessionRefusal::NoSession)
    );
}

#[test]
fn execs_are_numbered_one_at_a_time_on_an_active_session() {
    let s = given(&active());
    let events = s.decide(start_exec("r1")).expect("exec");
    let [KnownEvent::SessionExecStarted(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(e.exec, 1);
    let mut stream = active();
    stream.push(exec_started(1));
    let busy = given(&stream);
    assert_eq!(busy.decide(start_exec("r1")), Err(SessionRefusal::Busy(1)));
    assert_eq!(
        busy.decide(SessionCommand::FinishExec {
            runner: "r1".into(),
            finished: Box::new(finished(2)),
        }),
        Err(SessionRefusal::NotRunning(2))
    );
    let done = busy
        .decide(SessionCommand::FinishExec {
            runner: "r1".into(),
            finished: Box::new(finished(1)),
        })
        .expect("finish");
    stream.extend(done);
    let s = given(&stream);
    assert_eq!((s.execs, s.running_exec), (1, None));
    let next = s.decide(start_exec("r1")).expect("next");
    assert!(matches!(&next[0], KnownEvent::SessionExecStarted(e) if e.exec == 2));
    assert_eq!(s.decide(start_exec("r9")), Err(SessionRefusal::WrongRunner));
    assert!(matches!(
        s.decide(SessionCommand::StartExec {
            runner: "r1".into(),
            kind: "shell".into(),
            source: blob("x"),
            stdin: None,
            timeout_ms: 1
        }),
        Err(SessionRefusal::Invalid(_))
    ));
    // Not before it started, not after it ended.
    let opening = given(&[requested(), policy(Decision::Allow), opened()]);
    assert_eq!(
        opening.decide(start_exec("r1")),
        Err(SessionRefusal::NotActive(SessionStatus::Opening))
    );
    stream.push(closed());
    assert_eq!(
        given(&stream).decide(start_exec("r1")),
        Err(SessionRefusal::Ended(SessionStatus::Closed))
    );
}

#[test]
fn an_exec_running_when_the_session_ends_still_gets_its_end_recorded() {
    let mut stream = active();
    stream.push(exec_started(1));
    stream.push(closed());
    let s = given(&stream);
    assert_eq!(s.running_exec, None);
    let events = s
        .decide(SessionCommand::FinishExec {
            runner: "r1".into(),
            finished: Box::new(finished(1)),
        })
        .expect("finish");
    assert_eq!(types(&events), ["session.exec_finished"]);
}

#[test]
fn file_operations_are_events_of_an_active_session_only() {
    let s = given(&active());
    let events = s
        .decide(SessionCommand::FileOp {
            runner: "r1".into(),
            event: written(),
        })
        .expect("write");
    assert_eq!(types(&events), ["session.file_written"]);
    assert!(matches!(
        s.decide(SessionCommand::FileOp {
            runner: "r1".into(),
            event: closed()
        }),
        Err(SessionRefusal::Invalid(_))
    ));
    let mut stream = active();
    stream.push(written());
    assert_eq!(given(&stream).file_ops, 1);
    stream.push(closed());
    assert_eq!(
        given(&stream).decide(SessionCommand::FileOp {
            runner: "r1".into(),
            event: written()
        }),
        Err(SessionRefusal::Ended(SessionStatus::Closed))
    );
}

#[test]
fn a_session_ends_once_and_closing_an_ended_one_is_refused() {
    let s = given(&active());
    for (command, ty, status) in [
        (
            SessionCommand::Close {
                reason: "bye".into(),
            },
            "session.closed",
            SessionStatus::Closed,
        ),
        (
            SessionCommand::Lose {
                reason: "runner r1 stopped answering".into(),
            },
            "session.lost",
            SessionStatus::Lost,
        ),
    ] {
        let events = s.decide(command).expect("end");
        assert_eq!(types(&events), [ty]);
        let mut stream = active();
        stream.extend(events);
        let ended = given(&stream);
        assert_eq!(ended.status, status);
        for again in [
            SessionCommand::Close {
                reason: "again".into(),
            },
            SessionCommand::Lose {
                reason: "again".into(),
            },
            SessionCommand::Expire { now: at(1_000_000) },
        ] {
            assert_eq!(ended.decide(again), Err(SessionRefusal::Ended(status)));
        }
    }
    assert_eq!(
        Session::default().decide(SessionCommand::Close { reason: "x".into() }),
        Err(SessionRefusal::NoSession)
    );
    // An opening session can be closed too (its sandbox may still be starting).
    let opening = given(&[requested(), policy(Decision::Allow), opened()]);
    assert!(
        opening
            .decide(SessionCommand::Close { reason: "x".into() })
            .is_ok()
    );
}

#[test]
fn it_expires_when_idle_past_its_timeout_or_past_its_lifetime_and_not_before() {
    // Records one second apart: the last activity is `started` at t0+3 s.
    let s = given(&active());
    assert_eq!(
        s.decide(SessionCommand::Expire { now: at(62) }),
        Err(SessionRefusal::NotDue)
    );
    let events = s
        .decide(SessionCommand::Expire { now: at(63) })
        .expect("idle");
    let [KnownEvent::SessionExpired(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert!(e.reason.starts_with("idle since"), "{}", e.reason);
    assert_eq!(s.deadline().map(|d| d.1), Some("idle"));
    // Calls keep it alive: an exec at t0+50 s moves the idle deadline.
    let mut busy = active();
    busy.push(exec_started(1));
    let keep = Session::fold(&records(&busy, 10));
    assert_eq!(keep.last_activity, Some(at(40)));
    assert_eq!(
        keep.decide(SessionCommand::Expire { now: at(99) }),
        Err(SessionRefusal::NotDue)
    );
    // Lifetime wins even over a recent call.
    let lifetime = Session::fold(&records(&busy, 1000));
    let events = lifetime
        .decide(SessionCommand::Expire { now: at(3600) })
        .expect("lifetime");
    let [KnownEvent::SessionExpired(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert!(e.reason.contains("maximum lifetime"), "{}", e.reason);
    let mut stream = active();
    stream.push(KnownEvent::SessionExpired(Box::new(c::SessionExpired {
        session_id: ID.into(),
        reason: "idle".into(),
    })));
    let expired = given(&stream);
    assert_eq!(expired.status, SessionStatus::Expired);
    assert_eq!(expired.deadline(), None);
}

#[test]
fn the_workspace_is_destroyed_and_the_data_shredded_only_after_it_ended_and_once() {
    let live = given(&active());
    assert_eq!(
        live.decide(SessionCommand::Destroyed {
            workspace: workspace()
        }),
        Err(SessionRefusal::NotEnded(SessionStatus::Active))
    );
    assert_eq!(
        live.decide(SessionCommand::Shred { reason: "x".into() }),
        Err(SessionRefusal::NotEnded(SessionStatus::Active))
    );
    let mut stream = active();
    stream.push(closed());
    let ended = given(&stream);
    let d = ended
        .decide(SessionCommand::Destroyed {
            workspace: workspace(),
        })
        .expect("destroyed");
    assert_eq!(types(&d), ["workspace.destroyed"]);
    let k = ended
        .decide(SessionCommand::Shred {
            reason: "asked".into(),
        })
        .expect("shred");
    assert_eq!(types(&k), ["key.destroyed"]);
    stream.extend(d);
    stream.extend(k);
    let done = given(&stream);
    assert_eq!(
        done.decide(SessionCommand::Destroyed {
            workspace: workspace()
        }),
        Ok(vec![])
    );
    assert_eq!(
        done.decide(SessionCommand::Shred {
            reason: "again".into()
        }),
        Ok(vec![])
    );
    let view = done.view().expect("view");
    assert!(view.workspace_destroyed && view.data_destroyed);
    assert_eq!(view.status, SessionStatus::Closed);
    assert_eq!(view.ended_reason.as_deref(), Some("done"));
}

#[test]
fn apply_never_moves_an_ended_session_back() {
    let mut stream = active();
    stream.push(closed());
    stream.push(started());
    stream.push(KnownEvent::SessionLost(Box::new(c::SessionLost {
        session_id: ID.into(),
        reason: "late".into(),
    })));
    let s = given(&stream);
    assert_eq!(s.status, SessionStatus::Closed);
    assert_eq!(s.ended_reason.as_deref(), Some("done"));
}

fn egress_changed(egress: &[&str]) -> KnownEvent {
    KnownEvent::SessionEgressChanged(Box::new(c::SessionEgressChanged {
        session_id: ID.into(),
        egress: egress.iter().map(|e| (*e).to_owned()).collect(),
    }))
}

fn egress_closed() -> KnownEvent {
    KnownEvent::EgressClosed(Box::new(c::EgressClosed {
        connection: 1,
        bytes_out: 10,
        bytes_in: 20,
        duration_ms: 3,
    }))
}

#[test]
fn an_egress_change_replaces_the_allowlist_while_the_session_lives() {
    let mut s = given(&active());
    assert!(s.egress.is_empty());
    let change = vec![
        policy(Decision::Allow),
        egress_changed(&["outside.test:8443"]),
    ];
    let events = s
        .decide(SessionCommand::ChangeEgress {
            events: change.clone(),
        })
        .expect("allowed");
    assert_eq!(events, change);
    let mut all = active();
    all.extend(events);
    s = given(&all);
    assert_eq!(s.egress, ["outside.test:8443"]);
    // A refusal is the decisions alone: the allowlist stays.
    let refused = vec![policy(Decision::Deny)];
    all.extend(
        s.decide(SessionCommand::ChangeEgress { events: refused })
            .expect("recorded"),
    );
    assert_eq!(given(&all).egress, ["outside.test:8443"]);
    // The change must come last and be about this session; nothing else fits.
    assert!(matches!(
        s.decide(SessionCommand::ChangeEgress {
            events: vec![egress_changed(&[]), policy(Decision::Allow)]
        }),
        Err(SessionRefusal::Invalid(_))
    ));
    assert!(matches!(
        s.decide(SessionCommand::ChangeEgress {
            events: vec![closed()]
        }),
        Err(SessionRefusal::Invalid(_))
    ));
    // Not after it ended.
    all.push(closed());
    assert!(matches!(
        given(&all).decide(SessionCommand::ChangeEgress {
            events: vec![egress_changed(&[])]
        }),
        Err(SessionRefusal::Ended(_))
    ));
}

#[test]
fn egress_records_come_from_its_runner_until_its_workspace_is_destroyed() {
    let mut all = active();
    let record = |runner: &str| SessionCommand::RecordEgress {
        runner: runner.into(),
        events: vec![egress_closed()],
    };
    assert!(given(&all).decide(record("r1")).is_ok());
    assert!(matches!(
        given(&all).decide(record("other")),
        Err(SessionRefusal::WrongRunner)
    ));
    assert!(matches!(
        given(&all).decide(SessionCommand::RecordEgress {
            runner: "r1".into(),
            events: vec![closed()]
        }),
        Err(SessionRefusal::Invalid(_))
    ));
    // A connection that ends as the session closes is still recorded…
    all.push(closed());
    assert!(given(&all).decide(record("r1")).is_ok());
    // …but nothing after the workspace is gone.
    all.push(KnownEvent::WorkspaceDestroyed(Box::new(workspace())));
    assert!(matches!(
        given(&all).decide(record("r1")),
        Err(SessionRefusal::Ended(_))
    ));
}

fn exposure(port: u64) -> c::ServiceExposed {
    c::ServiceExposed {
        session_id: ID.into(),
        port,
        roles: vec!["approver".into()],
        subjects: vec![],
        apps: vec![],
    }
}

fn served(port: u64) -> KnownEvent {
    KnownEvent::ServiceRequest(Box::new(c::ServiceRequest {
        session_id: ID.into(),
        port,
        caller: "bob".into(),
        method: "GET".into(),
        path_hmac: Digest::of(b"/"),
        decision: Decision::Allow,
        status: 200,
        bytes_in: 0,
        bytes_out: 5,
    }))
}

#[test]
fn a_port_is_exposed_while_active_and_only_exposed_ports_are_served() {
    let mut all = active();
    // Not a port that is not exposed.
    assert!(matches!(
        given(&all).decide(SessionCommand::Serve {
            events: vec![served(8000)]
        }),
        Err(SessionRefusal::Invalid(_))
    ));
    all.extend(
        given(&all)
            .decide(SessionCommand::Expose {
                exposure: exposure(8000),
            })
            .expect("exposed"),
    );
    assert_eq!(given(&all).exposure(8000), Some(&exposure(8000)));
    let events = given(&all)
        .decide(SessionCommand::Serve {
            events: vec![policy(Decision::Allow), served(8000)],
        })
        .expect("served");
    assert_eq!(types(&events), ["policy.evaluated", "service.request"]);
    // Exposing again replaces the exposure.
    let mut wider = exposure(8000);
    wider.roles = vec![];
    all.push(KnownEvent::ServiceExposed(Box::new(wider.clone())));
    assert_eq!(given(&all).exposed, [wider]);
    // Port 0, another session's exposure, or before it is active: refused.
    let mut zero = exposure(0);
    zero.port = 0;
    assert!(
        given(&all)
            .decide(SessionCommand::Expose { exposure: zero })
            .is_err()
    );
    let mut other = exposure(1);
    other.session_id = "another".into();
    assert!(
        given(&all)
            .decide(SessionCommand::Expose { exposure: other })
            .is_err()
    );
    let opening = vec![requested(), policy(Decision::Allow), opened()];
    assert!(matches!(
        given(&opening).decide(SessionCommand::Expose {
            exposure: exposure(8000)
        }),
        Err(SessionRefusal::NotActive(_))
    ));
    all.push(closed());
    assert!(matches!(
        given(&all).decide(SessionCommand::Serve {
            events: vec![served(8000)]
        }),
        Err(SessionRefusal::Ended(_))
    ));
}
