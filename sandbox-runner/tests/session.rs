//! Session sandboxes under runsc (as root), driven through the agent: state
//! between execs, files, timeouts that leave the session usable, a memory bomb
//! that ends only its own session, isolation between sessions, and nothing
//! left behind once a session is closed. Needs the `glassbox-session-agent`
//! binary (built by `cargo test --workspace`; or `cargo build -p
//! glassbox-session-agent`).

use glassbox_sandbox_runner::local::session::{Chunk, SessionSandbox, find_agent};
use glassbox_sandbox_runner::{ExecutionSpec, LocalRunsc};
use glassbox_session_agent::protocol::{ExecDone, ExecKind, Stream};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn session_spec(language: &str) -> ExecutionSpec {
    let mut s = ExecutionSpec::new(language, "");
    s.limits.wall_time_ms = 120_000;
    s
}

async fn open(b: &LocalRunsc, language: &str) -> SessionSandbox {
    let agent = find_agent().expect("the session agent (cargo build -p glassbox-session-agent)");
    b.open_session(session_spec(language), &agent)
        .await
        .expect("session opens")
}

async fn exec(
    s: &SessionSandbox,
    kind: ExecKind,
    source: &str,
    timeout: Duration,
) -> (String, String, ExecDone) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Chunk>();
    let done = s
        .exec(kind, source, b"", timeout, 1 << 20, 1 << 20, tx)
        .await
        .expect("exec");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Ok(c) = rx.try_recv() {
        match c.stream {
            Stream::Stdout => out.extend(c.data),
            Stream::Stderr => err.extend(c.data),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        done,
    )
}

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn state_files_and_commands_persist_across_execs_and_close_leaves_nothing() {
    let b = backend().await;
    let started = Instant::now();
    let s = open(&b, "python").await;
    eprintln!("python session open in {:?}", started.elapsed());
    let (out, err, d) = exec(
        &s,
        ExecKind::Code,
        "import json\ncount = 41\nprint('ready')",
        T,
    )
    .await;
    assert_eq!((out.as_str(), d.exit_code), ("ready\n", Some(0)), "{err}");
    let (out, _, _) = exec(
        &s,
        ExecKind::Code,
        "count += 1\njson.dumps({'count': count})",
        T,
    )
    .await;
    assert_eq!(
        out, "'{\"count\": 42}'\n",
        "a variable and an imported module survive"
    );
    // Files: written through the agent, seen by code and commands.
    s.write_file("data/in.txt", b"from the client")
        .await
        .expect("write");
    let (out, _, _) = exec(&s, ExecKind::Code, "open('data/in.txt').read().upper()", T).await;
    assert_eq!(out, "'FROM THE CLIENT'\n");
    let (out, _, d) = exec(
        &s,
        ExecKind::Command,
        "cat data/in.txt | wc -c; whoami 2>/dev/null || id -u",
        T,
    )
    .await;
    assert_eq!(d.exit_code, Some(0));
    assert!(out.starts_with("15\n"), "{out}");
    let (_, _, _) = exec(
        &s,
        ExecKind::Code,
        "open('made.txt','w').write('by code')",
        T,
    )
    .await;
    let (content, size) = s.read_file("made.txt", 1 << 20).await.expect("read");
    assert_eq!((content.as_slice(), size), (&b"by code"[..], 7));
    let (entries, _) = s.list("", 100).await.expect("list");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"data") && names.contains(&"made.txt"),
        "{names:?}"
    );
    s.delete("made.txt").await.expect("delete");
    assert!(s.read_file("made.txt", 10).await.is_err());
    // Round trip of a warm exec.
    let t = Instant::now();
    for _ in 0..5 {
        exec(&s, ExecKind::Code, "1", T).await;
    }
    eprintln!("warm exec: {:?} each", t.elapsed() / 5);
    let id = s.sandbox_id.clone();
    let teardown = s.close().await;
    assert!(teardown.complete, "{teardown:?}");
    assert!(
        teardown.bytes_scrubbed > 0,
        "the workspace was scrubbed: {teardown:?}"
    );
    assert_gone(&b, &id).await;
}

#[tokio::test]
async fn a_timed_out_exec_resets_only_the_context_and_the_session_goes_on() {
    let b = backend().await;
    let s = open(&b, "python").await;
    exec(&s, ExecKind::Code, "keep = 'me'", T).await;
    s.write_file("kept.txt", b"file state")
        .await
        .expect("write");
    let (_, _, d) = exec(
        &s,
        ExecKind::Code,
        "while True: pass",
        Duration::from_millis(800),
    )
    .await;
    assert!(d.timed_out && d.context_reset, "{d:?}");
    let (_, err, d) = exec(&s, ExecKind::Code, "keep", T).await;
    assert_eq!(
        d.exit_code,
        Some(1),
        "interpreter state is gone after a timeout"
    );
    assert!(err.contains("NameError"), "{err}");
    let (out, _, _) = exec(&s, ExecKind::Code, "open('kept.txt').read()", T).await;
    assert_eq!(out, "'file state'\n", "files are not");
    let (_, _, d) = exec(
        &s,
        ExecKind::Command,
        "sleep 60",
        Duration::from_millis(500),
    )
    .await;
    assert!(d.timed_out);
    let (out, _, d) = exec(&s, ExecKind::Command, "echo still here", T).await;
    assert_eq!((out.as_str(), d.exit_code), ("still here\n", Some(0)));
    let id = s.sandbox_id.clone();
    s.close().await;
    assert_gone(&b, &id).await;
}

#[tokio::test]
async fn a_memory_bomb_ends_its_own_session_and_no_other() {
    let b = backend().await;
    let mut bomb_spec = session_spec("python");
    bomb_spec.limits.memory_bytes = 64 << 20;
    let agent = find_agent().expect("agent");
    let bomb = b.open_session(bomb_spec, &agent).await.expect("open");
    let other = open(&b, "python").await;
    exec(&other, ExecKind::Code, "alive = True", T).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let r = bomb
        .exec(
            ExecKind::Code,
            "x = []\nwhile True: x.append(bytearray(8 << 20))",
            b"",
            T,
            1 << 20,
            1 << 20,
            tx,
        )
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(30), bomb.wait_ended())
        .await
        .expect("the bomb's sandbox ends");
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|d| d.context_reset),
        "{r:?}"
    );
    assert_eq!(ended.cause, "oom_killed", "{ended:?}");
    // The other session did not notice.
    let (out, _, _) = exec(&other, ExecKind::Code, "alive", T).await;
    assert_eq!(out, "True\n");
    let id = bomb.sandbox_id.clone();
    let teardown = bomb.close().await;
    assert!(teardown.complete, "{teardown:?}");
    assert_gone(&b, &id).await;
    let oid = other.sandbox_id.clone();
    other.close().await;
    assert_gone(&b, &oid).await;
}

#[tokio::test]
async fn two_sessions_see_neither_each_others_files_nor_processes() {
    let b = backend().await;
    let a = open(&b, "python").await;
    let c = open(&b, "node").await;
    a.write_file("secret-a.txt", b"only a")
        .await
        .expect("write");
    exec(&a, ExecKind::Command, "sleep 300 >/dev/null 2>&1 &", T).await;
    let (out, _, _) = exec(
        &c,
        ExecKind::Command,
        "ls -a /workspace; ps -e -o comm= 2>/dev/null || ls /proc",
        T,
    )
    .await;
    assert!(!out.contains("secret-a"), "{out}");
    assert!(!out.contains("sleep"), "{out}");
    assert!(c.read_file("secret-a.txt", 10).await.is_err());
    let (out, _, _) = exec(&c, ExecKind::Code, "let v = 6 * 7", T).await;
    assert_eq!(out, "");
    let (out, _, _) = exec(&c, ExecKind::Code, "v", T).await;
    assert_eq!(out, "42\n", "node keeps its declarations");
    for s in [a, c] {
        let id = s.sandbox_id.clone();
        s.close().await;
        assert_gone(&b, &id).await;
    }
}

#[tokio::test]
async fn a_dropped_session_is_torn_down_and_a_restarted_runner_sweeps_the_rest() {
    let id = runner_id();
    let (b, _) = LocalRunsc::start(config(&id)).await.expect("backend");
    let s = open(&b, "bash").await;
    let (out, _, _) = exec(&s, ExecKind::Code, "echo $((6*7))", T).await;
    assert_eq!(out, "42\n", "bash code runs as a shell command");
    let dropped = s.sandbox_id.clone();
    drop(s);
    assert_gone(&b, &dropped).await;
    // A session the runner forgot about (as after a crash) is swept at start.
    let s = open(&b, "python").await;
    let orphan = s.sandbox_id.clone();
    std::mem::forget(s);
    let (b2, report) = LocalRunsc::start(config(&id)).await.expect("restart");
    assert!(report.sandboxes.contains(&orphan), "{report:?}");
    assert_gone(&b2, &orphan).await;
}
