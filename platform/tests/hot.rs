//! Hot state against the real Redis (127.0.0.1:6379, or GLASSBOX_TEST_REDIS_URL):
//! heartbeats expire, sessions are found by runner and by deadline, and a
//! namespace never sees another's keys.

use glassbox_platform::hot::{HotState, RunnerBeat, SessionHot, namespace};
use std::time::Duration;

fn url() -> String {
    std::env::var("GLASSBOX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn hot() -> HotState {
    let ns = format!("glassbox-test-hot:{}", uuid::Uuid::new_v4().simple());
    HotState::connect(&url(), &ns).await.expect("redis")
}

fn beat(id: &str, sessions: u32) -> RunnerBeat {
    RunnerBeat {
        runner_id: id.into(),
        addr: format!("http://127.0.0.1:7{sessions:03}"),
        capacity: 10,
        sessions,
        at_ms: 1,
    }
}

#[tokio::test]
async fn heartbeats_are_live_for_their_ttl_only() {
    let h = hot().await;
    h.beat(&beat("r1", 3), Duration::from_millis(300))
        .await
        .expect("beat");
    h.beat(&beat("r2", 9), Duration::from_secs(30))
        .await
        .expect("beat");
    let mut all = h.runners().await.expect("runners");
    all.sort_by(|a, b| a.runner_id.cmp(&b.runner_id));
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].free(), 7);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let left = h.runners().await.expect("runners");
    assert_eq!(left.len(), 1, "r1's beat expired");
    assert_eq!(left[0].runner_id, "r2");
    assert_eq!(h.runner("r1").await.expect("get"), None);
    h.forget_everything().await.expect("forget");
}

#[tokio::test]
async fn sessions_are_found_by_runner_and_deadline_and_forgotten() {
    let h = hot().await;
    for (id, runner, deadline) in [("a", "r1", 100), ("b", "r1", 300), ("c", "r2", 200)] {
        h.put_session(&SessionHot {
            session_id: id.into(),
            tenant: "acme".into(),
            runner: runner.into(),
            deadline_ms: deadline,
        })
        .await
        .expect("put");
    }
    assert_eq!(h.due(200, 10).await.expect("due"), ["a", "c"]);
    let mut on_r1 = h.sessions_on("r1").await.expect("on");
    on_r1.sort();
    assert_eq!(on_r1, ["a", "b"]);
    assert_eq!(
        h.session("b").await.expect("get").map(|s| s.deadline_ms),
        Some(300)
    );
    // A later deadline moves it (a call came in).
    h.put_session(&SessionHot {
        session_id: "a".into(),
        tenant: "acme".into(),
        runner: "r1".into(),
        deadline_ms: 500,
    })
    .await
    .expect("touch");
    assert_eq!(h.due(200, 10).await.expect("due"), ["c"]);
    h.remove_session("c", "r2").await.expect("remove");
    assert_eq!(h.due(1000, 10).await.expect("due"), ["b", "a"]);
    assert!(h.sessions_on("r2").await.expect("on").is_empty());
    // Another namespace sees none of it; the rebuild marker is per namespace.
    let other = hot().await;
    assert!(other.sessions().await.expect("sessions").is_empty());
    assert!(!other.built().await.expect("built"));
    h.mark_built(1234).await.expect("mark");
    assert_eq!(h.built_at().await.expect("built at"), Some(1234));
    assert!(h.built().await.expect("built"));
    assert!(h.forget_everything().await.expect("forget") >= 4);
    assert!(!h.built().await.expect("built"));
    assert!(h.sessions().await.expect("sessions").is_empty());
}

#[test]
fn the_namespace_is_the_database_name() {
    assert_eq!(
        namespace("postgres://u@h:5432/glassbox?sslmode=disable"),
        "glassbox:glassbox"
    );
    assert_eq!(namespace("postgres://u@h/db1"), "glassbox:db1");
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    let started = std::time::Instant::now();
    let r = HotState::connect("redis://127.0.0.1:1", "x").await;
    assert!(r.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}
