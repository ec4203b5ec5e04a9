//! The one read-fold-decide-append loop against the real PostgreSQL: a
//! decision is appended at exactly the version it saw, so concurrent deciders
//! never lose or duplicate a step; a carried state reads only what it missed.

use glassbox_domain::Aggregate;
use glassbox_events::store::NewEvent;
use glassbox_events::testing::TestDb;
use glassbox_events::{Actor, DecideError, Envelope, Record};
use serde_json::{Map, json};

/// A counter: the stream holds `counted {n: 1}`, `{n: 2}`, … in order.
#[derive(Debug, Default, Clone)]
struct Counter {
    version: u64,
    last: u64,
    gaps: u64,
}

impl Aggregate for Counter {
    fn apply(&mut self, r: &Record) {
        self.version = r.stream_version;
        let n = r.data["n"].as_u64().unwrap_or(0);
        if n != self.last + 1 {
            self.gaps += 1;
        }
        self.last = n;
    }
    fn version(&self) -> u64 {
        self.version
    }
}

fn next(stream: &str, c: &Counter) -> Result<Vec<NewEvent>, String> {
    if c.last >= 1000 {
        return Err("enough".into());
    }
    let mut data = Map::new();
    data.insert("n".into(), json!(c.last + 1));
    Ok(vec![NewEvent::new(stream, "test.counted", data)])
}

fn envelope() -> Envelope {
    Envelope::new("acme", Actor::system("test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deciders_append_every_step_once_in_order() {
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut landed = 0;
            for _ in 0..10 {
                match store
                    .decide::<Counter, _, _>("counter-1", &envelope(), |c| next("counter-1", c))
                    .await
                {
                    Ok(d) => {
                        assert!(d.appended.is_some());
                        landed += 1;
                    }
                    // Under heavy contention a decision may give up; it
                    // appended nothing then.
                    Err(DecideError::Contended { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            landed
        }));
    }
    let mut landed = 0;
    for t in tasks {
        landed += t.await.expect("task");
    }
    let folded: Counter = store.load("counter-1").await.expect("load");
    assert_eq!(folded.gaps, 0, "no step lost or repeated");
    assert_eq!(
        folded.last, landed,
        "every decision that landed is one step"
    );
    assert!(landed >= 10, "most decisions land ({landed})");
}

#[tokio::test]
async fn a_carried_state_reads_only_what_it_missed_and_a_refusal_appends_nothing() {
    let db = TestDb::new().await.expect("db");
    let store = db.store().await.expect("store");
    let mut state = Counter::default();
    for _ in 0..20 {
        state = store
            .decide_from("counter-2", state, &envelope(), |c| next("counter-2", c))
            .await
            .expect("decide")
            .state;
    }
    assert_eq!(state.last, 20);
    // Carrying the state forward, nothing is read from the ledger.
    let reads = store.records_read();
    state = store
        .decide_from("counter-2", state, &envelope(), |c| next("counter-2", c))
        .await
        .expect("decide")
        .state;
    assert_eq!(store.records_read(), reads, "no read without a conflict");
    // Someone else appends three steps; a stale state conflicts, reads exactly
    // those three, and decides again on top of them.
    let other = db.store().await.expect("another writer");
    for _ in 0..3 {
        other
            .decide::<Counter, _, _>("counter-2", &envelope(), |c| next("counter-2", c))
            .await
            .expect("other");
    }
    let reads = store.records_read();
    let d = store
        .decide_from("counter-2", state, &envelope(), |c| next("counter-2", c))
        .await
        .expect("decide");
    assert_eq!(d.state.last, 25);
    assert_eq!(store.records_read() - reads, 3, "only the missed records");
    // A refusal appends nothing and says why.
    let (head, _) = store.head().await.expect("head");
    let refused = store
        .decide_from("counter-2", d.state, &envelope(), |_| {
            Err::<Vec<NewEvent>, _>("not now".to_owned())
        })
        .await;
    assert!(matches!(refused, Err(DecideError::Refused(ref r)) if r == "not now"));
    assert_eq!(store.head().await.expect("head").0, head);
    // An empty decision is not an append either.
    let none = store
        .decide::<Counter, String, _>("counter-2", &envelope(), |_| Ok(Vec::new()))
        .await
        .expect("nothing");
    assert!(none.appended.is_none());
    assert_eq!(store.head().await.expect("head").0, head);
}
