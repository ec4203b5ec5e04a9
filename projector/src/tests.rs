//! The replay guarantee without a database: for any job stream the domain can
//! produce, folding any prefix with `Job::apply` equals what the projector
//! holds for that prefix — whatever batches the records arrived in, with the
//! state stored as JSON between batches.

use super::refold;
use chrono::{DateTime, TimeZone as _, Utc};
use glassbox_domain::catalogue::{self as c, Decision, KnownEvent, Limits, Outcome};
use glassbox_domain::job::Finish;
use glassbox_domain::{Aggregate as _, Job, JobCommand};
use glassbox_events::{Actor, Digest, Record};
use proptest::prelude::*;
use serde_json::Map;

const JOB: &str = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0)
        .single()
        .expect("time")
}

fn blob(n: &str) -> c::BlobRef {
    c::BlobRef {
        hmac: Digest::of(n.as_bytes()),
        size_bytes: n.len() as u64,
        key: format!("jobs/{JOB}/{n}"),
    }
}

fn evaluated(policy: &str, decision: Decision) -> KnownEvent {
    KnownEvent::PolicyEvaluated(Box::new(c::PolicyEvaluated {
        policy: policy.into(),
        decision,
        reasons: vec![],
        bundle_digest: Digest::ZERO,
        input: Map::new(),
        input_digest: Digest::ZERO,
        error: None,
    }))
}

fn submission(accept: bool) -> Vec<KnownEvent> {
    let submitted = KnownEvent::JobSubmitted(Box::new(c::JobSubmitted {
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
        dependencies: vec![],
        secrets: vec![],
        limits: Limits::default(),
        idempotency_key: Some("k".into()),
        egress: vec![],
    }));
    let end = if accept {
        KnownEvent::JobAccepted(Box::new(c::JobAccepted {
            job_id: JOB.into(),
            effective_limits: Limits {
                wall_time_ms: Some(2_000),
                ..Limits::default()
            },
        }))
    } else {
        KnownEvent::JobRejected(Box::new(c::JobRejected {
            job_id: JOB.into(),
            reasons: vec!["language is not allowed".into()],
        }))
    };
    vec![
        submitted,
        evaluated("glassbox.authz", Decision::Allow),
        evaluated(
            "glassbox.admission",
            if accept {
                Decision::Allow
            } else {
                Decision::Deny
            },
        ),
        end,
    ]
}

/// One step of a script: which command, and two numbers to shape it.
fn command(job: &Job, kind: u8, a: u8, b: u16, now: DateTime<Utc>) -> JobCommand {
    let attempt = job.attempt.max(1).saturating_sub(u64::from(a % 2));
    let outcomes = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::OomKilled,
        Outcome::Crashed,
        Outcome::Cancelled,
    ];
    match kind % 7 {
        0 => JobCommand::Claim {
            runner: format!("r{a}"),
            now,
            grace_ms: u64::from(b % 3000),
            max_attempts: 3,
        },
        1 => JobCommand::Progress {
            attempt: job.attempt,
            events: vec![KnownEvent::ExecutionStarted(Box::new(
                c::ExecutionStarted {
                    attempt: job.attempt,
                    sandbox_id: format!("gb-r-{b:012x}"),
                },
            ))],
        },
        2 | 3 => {
            let out = c::OutputRef {
                blob: Some(blob("out")),
                size_bytes: u64::from(b),
                truncated: b.is_multiple_of(5),
            };
            JobCommand::Finish(Box::new(Finish {
                attempt,
                finished: c::ExecutionFinished {
                    attempt,
                    outcome: outcomes[usize::from(a) % outcomes.len()],
                    exit_code: Some(i64::from(a)),
                    signal: None,
                    wall_ms: u64::from(b),
                    cpu_ms: None,
                    peak_memory_bytes: None,
                    stdout: out.clone(),
                    stderr: out,
                    artifact_index: None,
                    artifacts_skipped: 0,
                },
                redactions: vec![],
                artifacts: (0..u64::from(a % 3))
                    .map(|i| c::ArtifactStored {
                        attempt,
                        index: i,
                        blob: blob("art"),
                        truncated: false,
                    })
                    .collect(),
                workspace: c::WorkspaceDestroyed {
                    sandbox_id: "gb-r-000000000000".into(),
                    method: "zero-overwrite+unlink+umount-tmpfs".into(),
                    bytes_scrubbed: u64::from(b),
                    files_scrubbed: 1,
                    complete: true,
                    error: None,
                },
                storage_error: b
                    .is_multiple_of(11)
                    .then(|| "storing an output failed".into()),
                cancel_reason: None,
            }))
        }
        4 => JobCommand::Fail {
            attempt,
            reason: format!("reason {b}"),
        },
        5 => JobCommand::Cancel {
            reason: a.is_multiple_of(2).then(|| "no longer needed".into()),
        },
        _ => JobCommand::Shred {
            reason: "retention".into(),
        },
    }
}

/// A stream the domain could have produced, from a script of commands.
fn stream(accept: bool, script: &[(u8, u8, u16)]) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    let mut job = Job::default();
    let mut now = t0();
    let push = |records: &mut Vec<Record>, job: &mut Job, e: KnownEvent, at: DateTime<Utc>| {
        let r = Record {
            position: 10 + 3 * records.len() as u64,
            event_id: uuid::Uuid::from_u128(records.len() as u128 + 1),
            stream: format!("job-{JOB}"),
            stream_version: records.len() as u64 + 1,
            event_type: e.event_type().into(),
            occurred_at: at,
            tenant: "acme".into(),
            actor: Actor::system("test"),
            correlation_id: "c".into(),
            causation_id: None,
            request_id: None,
            data: e.to_data().unwrap_or_default(),
            prev_hash: Digest::ZERO,
        };
        job.apply(&r);
        records.push(r);
    };
    let submitted = Job::default()
        .decide(JobCommand::Submit {
            events: submission(accept),
        })
        .expect("a valid submission");
    for e in submitted {
        push(&mut records, &mut job, e, now);
    }
    for &(kind, a, b) in script {
        now += chrono::Duration::milliseconds(i64::from(b));
        if let Ok(events) = job.decide(command(&job, kind, a, b, now)) {
            for e in events {
                push(&mut records, &mut job, e, now);
            }
        }
    }
    records
}

/// What the projector holds after the records arrived in these batches.
fn projected(records: &[Record], cuts: &[usize]) -> Job {
    let mut stored: Option<serde_json::Value> = None;
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
    bounds.push(records.len());
    bounds.sort_unstable();
    for end in bounds {
        if end <= start {
            continue;
        }
        let batch: Vec<&Record> = records[start..end].iter().collect();
        let job: Job = refold(stored.as_ref(), &batch).expect("readable state");
        stored = Some(serde_json::to_value(&job).expect("serializes"));
        start = end;
    }
    match stored {
        Some(v) => serde_json::from_value(v).expect("deserializes"),
        None => Job::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_prefix_folded_equals_the_projectors_row_for_it(
        accept in prop::bool::weighted(0.9),
        script in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u16>()), 0..30),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let records = stream(accept, &script);
        for n in 0..=records.len() {
            let prefix = &records[..n];
            let folded = Job::fold(prefix);
            let row = projected(prefix, &cuts);
            prop_assert_eq!(&folded, &row);
            prop_assert_eq!(folded.view(), row.view());
            // The same state a second time through: applying a record twice
            // (a replayed batch) changes nothing.
            let again: Job = refold(
                Some(&serde_json::to_value(&row).expect("json")),
                &prefix.iter().collect::<Vec<_>>(),
            )
            .expect("readable");
            prop_assert_eq!(&again, &row);
        }
        // The domain's own invariants hold on every stream it produced.
        let job = Job::fold(&records);
        let finished = records.iter().filter(|r| r.event_type == "execution.finished").count();
        prop_assert!(finished <= 1, "one result at most, {} recorded", finished);
        let ends = records
            .iter()
            .filter(|r| ["job.completed", "job.failed", "job.cancelled", "job.rejected"].contains(&r.event_type.as_str()))
            .count();
        prop_assert!(ends <= 1, "one end at most, {} recorded", ends);
        prop_assert_eq!(job.is_terminal(), ends == 1);
    }
}
