//! The sandbox core, really running code under runsc (as root; scripts/test.sh
//! installs runsc when it is missing). Every test checks its own cleanup.

use glassbox_events::catalogue::Outcome;
use glassbox_sandbox_runner::local::{cgroup::Cgroups, oci};
use glassbox_sandbox_runner::{
    CancellationToken, InputFile, LocalRunsc, RuntimeRegistry, SandboxBackend, SandboxError,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::*;

#[tokio::test]
async fn hello_world_in_each_runtime() {
    let b = backend().await;
    for (lang, code) in [
        ("python", "print('hello from python')"),
        ("node", "console.log('hello from node')"),
        ("bash", "echo hello from bash"),
    ] {
        let r = run(&b, spec(lang, code)).await;
        assert_eq!(
            r.outcome,
            Outcome::Succeeded,
            "{lang}: {r:?} stderr={}",
            r.stderr.text()
        );
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.stdout.text(), format!("hello from {lang}\n"));
        assert!(r.wall_ms > 0);
        assert!(
            r.peak_memory_bytes.unwrap_or(0) > 1 << 20,
            "peak memory measured"
        );
        assert_eq!(r.teardown.method, "zero-overwrite+unlink+umount-tmpfs");
        assert!(r.teardown.bytes_scrubbed >= code.len() as u64);
        assert_gone(&b, &r.sandbox_id).await;
    }
}

#[tokio::test]
async fn exit_codes_signals_stdin_and_separate_streams() {
    let b = backend().await;
    let r = run(&b, spec("bash", "echo out; echo err >&2; exit 3")).await;
    assert_eq!(
        (r.outcome, r.exit_code, r.signal),
        (Outcome::Failed, Some(3), None)
    );
    assert_eq!(r.stdout.text(), "out\n");
    assert_eq!(r.stderr.text(), "err\n");

    let r = run(
        &b,
        spec(
            "python",
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
        ),
    )
    .await;
    assert_eq!((r.outcome, r.signal), (Outcome::Failed, Some(11)), "{r:?}");

    let mut s = spec(
        "python",
        "import sys, hashlib\nd = sys.stdin.buffer.read()\nprint(len(d), hashlib.sha256(d).hexdigest())",
    );
    s.stdin = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = format!(
        "1000000 {}\n",
        glassbox_events::Digest::of(&s.stdin).to_hex()
    );
    let r = run(&b, s).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    assert_eq!(r.stdout.text(), expected);

    // args, env and extra files reach the program.
    let mut s = spec(
        "python",
        "import os, sys\nprint(sys.argv[1:], os.environ['GREETING'], open('data/in.txt').read())",
    );
    s.args = vec!["a b".into(), "c".into()];
    s.env.insert("GREETING".into(), "hi".into());
    s.files.push(InputFile {
        path: "data/in.txt".into(),
        content: b"payload".to_vec(),
        executable: false,
    });
    let r = run(&b, s).await;
    assert_eq!(
        r.stdout.text(),
        "['a b', 'c'] hi payload\n",
        "{}",
        r.stderr.text()
    );
}

#[tokio::test]
async fn timeout_is_timed_out_and_leaves_nothing_behind() {
    let b = backend().await;
    let mut s = spec(
        "bash",
        "trap '' TERM; sleep 100 & sleep 100 & while :; do :; done",
    );
    s.limits.wall_time_ms = 1500;
    let started = Instant::now();
    let r = run(&b, s).await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(r.wall_ms >= 1500);
    assert!(
        leftovers(&b, &r.sandbox_id).is_empty(),
        "{:?}",
        leftovers(&b, &r.sandbox_id)
    );
}

#[tokio::test]
async fn memory_bomb_is_oom_killed() {
    let b = backend().await;
    let mut s = spec(
        "python",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n",
    );
    s.limits.memory_bytes = 128 << 20;
    let r = run(&b, s).await;
    assert_eq!(r.outcome, Outcome::OomKilled, "{r:?} {}", r.stderr.text());
    assert!(
        r.peak_memory_bytes.unwrap_or(0) <= 130 << 20,
        "peak {:?}",
        r.peak_memory_bytes
    );
    assert_gone(&b, &r.sandbox_id).await;
}

#[tokio::test]
async fn fork_bomb_is_contained_and_the_host_unaffected() {
    let b = backend().await;
    let mut s = spec(
        "bash",
        "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived",
    );
    s.limits.wall_time_ms = 8000;
    let bomb = tokio::spawn({
        let b = b.clone();
        async move { run(&b, s).await }
    });
    // While it rages, the host still starts processes promptly.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    let ok = std::process::Command::new("/bin/true")
        .status()
        .expect("host spawn")
        .success();
    assert!(
        ok && t.elapsed() < Duration::from_secs(2),
        "host spawn took {:?}",
        t.elapsed()
    );
    let r = tokio::time::timeout(Duration::from_secs(30), bomb)
        .await
        .expect("bomb returned")
        .expect("task");
    // Contained means a limit stopped it — not that the sandbox failed to
    // start (which is also `Crashed`): either fork was refused inside
    // (RLIMIT_NPROC) and the script went on, or the pids backstop killed it.
    let refused = r.stderr.text().contains("Resource temporarily unavailable");
    let backstop = r.outcome == Outcome::Crashed
        && r.detail.as_deref().unwrap_or("").contains("process limit");
    assert!(
        (refused
            && matches!(
                r.outcome,
                Outcome::Succeeded | Outcome::TimedOut | Outcome::Failed
            ))
            || backstop,
        "{r:?}"
    );
    if r.outcome == Outcome::Succeeded {
        assert!(r.stdout.text().contains("survived"), "{r:?}");
    }
    assert_gone(&b, &r.sandbox_id).await;
}

#[tokio::test]
async fn cpu_quota_is_honoured() {
    let b = backend().await;
    let code = "import time\nt0 = time.time(); c0 = time.process_time()\nwhile time.time() - t0 < 3: pass\nprint(time.process_time() - c0)";
    let mut s = spec("python", code);
    s.limits.cpu_millicores = 500;
    let r = run(&b, s).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    // gVisor's in-guest process_time is not reliable under ptrace; the host's
    // cgroup accounting is what the quota governs.
    let host_cpu = r.cpu_ms.expect("cpu measured") as f64;
    let wall = r.wall_ms as f64;
    assert!(
        host_cpu <= wall * 0.6,
        "half a core: {host_cpu} ms of CPU over {wall} ms"
    );
    assert!(
        host_cpu >= wall * 0.1,
        "the busy loop ran: {host_cpu} ms over {wall} ms"
    );
}

#[tokio::test]
async fn no_network_not_even_the_hosts_postgres() {
    // The host's PostgreSQL is really listening, so a failure inside means isolation.
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5432").is_ok(),
        "host PostgreSQL must be up for this test"
    );
    let b = backend().await;
    let code = r#"
import json, socket
res = {}
def attempt(name, f):
    try:
        f(); res[name] = "connected"
    except Exception as e:
        res[name] = type(e).__name__
attempt("postgres", lambda: socket.create_connection(("127.0.0.1", 5432), timeout=2))
attempt("dns", lambda: socket.getaddrinfo("example.com", 80))
attempt("outside", lambda: socket.create_connection(("192.0.2.1", 80), timeout=2))
attempt("outside_v6", lambda: socket.create_connection(("2001:db8::1", 80), timeout=2))
print(json.dumps(res))
"#;
    let r = run(&b, spec("python", code)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    let res: serde_json::Value = serde_json::from_str(r.stdout.text().trim()).expect("json");
    for k in ["postgres", "dns", "outside", "outside_v6"] {
        assert_ne!(res[k], "connected", "{k}: {res}");
        assert!(res[k].is_string(), "{k}: {res}");
    }
}

#[tokio::test]
async fn host_paths_are_invisible_and_writes_confined() {
    let b = backend().await;
    let code = r#"
import json, os
res = {}
def attempt(name, f):
    try:
        f(); res[name] = "ok"
    except Exception as e:
        res[name] = type(e).__name__
attempt("read_shadow", lambda: open("/etc/shadow").read())
attempt("list_root", lambda: os.listdir("/root"))
attempt("list_work", lambda: os.listdir("/work"))
attempt("write_root", lambda: open("/x", "w").write("x"))
attempt("write_usr", lambda: open("/usr/x", "w").write("x"))
attempt("write_etc", lambda: open("/etc/x", "w").write("x"))
attempt("write_workspace", lambda: open("/workspace/x", "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/x", "w").write("x"))
res["uid"] = os.getuid()
passwd = open("/etc/passwd").read()
res["passwd_nobody"] = "nobody:x:65534:" in passwd
res["passwd_host_only"] = "postgres:" in passwd or "redis:" in passwd
print(json.dumps(res))
"#;
    let r = run(&b, spec("python", code)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    let res: serde_json::Value = serde_json::from_str(r.stdout.text().trim()).expect("json");
    for k in [
        "read_shadow",
        "list_root",
        "list_work",
        "write_root",
        "write_usr",
        "write_etc",
    ] {
        assert_ne!(res[k], "ok", "{k}: {res}");
    }
    assert_eq!(res["write_workspace"], "ok", "{res}");
    assert_eq!(res["write_tmp"], "ok", "{res}");
    assert_eq!(res["uid"], 65534);
    assert_eq!(res["passwd_nobody"], true, "{res}");
    assert_eq!(
        res["passwd_host_only"], false,
        "the sandbox sees its image's /etc/passwd, not the host's: {res}"
    );
    assert!(!Path::new("/usr/x").exists() && !Path::new("/x").exists());
}

#[tokio::test]
async fn filling_the_workspace_hits_its_quota() {
    let b = backend().await;
    let code = r#"
import errno
n = 0
try:
    with open("/workspace/fill", "wb") as f:
        while True:
            f.write(b"\0" * (1 << 20)); f.flush(); n += 1 << 20
except OSError as e:
    print(errno.errorcode[e.errno], n)
"#;
    let mut s = spec("python", code);
    s.limits.workspace_bytes = 8 << 20;
    let r = run(&b, s).await;
    let out = r.stdout.text();
    let mut parts = out.split_whitespace();
    assert_eq!(parts.next(), Some("ENOSPC"), "{out} {}", r.stderr.text());
    let written: u64 = parts.next().expect("bytes").parse().expect("number");
    assert!(written <= 8 << 20, "{written}");
    assert!(r.teardown.bytes_scrubbed >= written, "{:?}", r.teardown);
}

#[tokio::test]
async fn fifty_megabytes_of_output_are_capped_and_flagged() {
    let b = backend().await;
    let code = "import sys\nchunk = b'x' * (1 << 20)\nfor _ in range(50): sys.stdout.buffer.write(chunk)\nsys.stderr.write('done')";
    let r = run(&b, spec("python", code)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    assert!(r.stdout.truncated);
    assert_eq!(r.stdout.bytes.len(), 1 << 20);
    assert_eq!(r.stdout.total_bytes, 50 << 20);
    assert!(!r.stderr.truncated);
    assert_eq!(r.stderr.text(), "done");
}

#[tokio::test]
async fn outputs_are_collected_without_following_symlinks() {
    let b = backend().await;
    let code = "ln -s /etc/passwd /workspace/out/passwd-link\nmkdir -p /workspace/out/sub\necho result > /workspace/out/sub/real.txt\nln -s /workspace/out /workspace/out/sub/loop";
    let r = run(&b, spec("bash", code)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec!["sub/real.txt"]);
    assert_eq!(r.files[0].content, b"result\n");
    let skipped: Vec<&str> = r.skipped.iter().map(|s| s.path.as_str()).collect();
    assert!(
        skipped.contains(&"passwd-link") && skipped.contains(&"sub/loop"),
        "{skipped:?}"
    );
    assert!(r.skipped.iter().all(|s| s.reason.contains("symbolic link")));

    // Output caps: file count and bytes.
    let mut s = spec(
        "bash",
        "for i in 1 2 3 4 5; do head -c 3000 /dev/zero > /workspace/out/f$i; done",
    );
    s.limits.output_files = 3;
    s.limits.output_bytes = 7000;
    let r = run(&b, s).await;
    assert!(r.files_truncated);
    assert_eq!(r.files.len(), 3);
    assert_eq!(r.files.iter().map(|f| f.content.len()).sum::<usize>(), 7000);
}

#[tokio::test]
async fn cancellation_mid_run_and_a_dropped_future_both_clean_up() {
    let b = backend().await;
    let token = CancellationToken::new();
    let task = tokio::spawn({
        let (b, token) = (b.clone(), token.clone());
        async move {
            b.execute(spec("bash", "echo started; sleep 60"), token)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    token.cancel();
    let r = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("returns")
        .expect("task")
        .expect("ok");
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert_eq!(r.stdout.text(), "started\n");
    assert!(leftovers(&b, &r.sandbox_id).is_empty());

    // The caller gives up on the future: nothing may stay behind. The
    // sandbox is found while it runs (by this backend's own id prefix), so the
    // test checks the very sandbox it abandoned.
    let id = runner_id();
    let (b, _) = LocalRunsc::start(config(&id)).await.expect("start");
    let prefix = format!("gb-{id}-");
    let task = tokio::spawn({
        let b = b.clone();
        async move {
            b.execute(spec("bash", "sleep 60"), CancellationToken::new())
                .await
        }
    });
    let started = Instant::now();
    let sandbox = loop {
        let found = std::fs::read_dir(Path::new(BASE).join("ws"))
            .ok()
            .and_then(|it| {
                it.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n.starts_with(&prefix))
            });
        if let Some(sid) = found
            && !leftovers(&b, &sid).is_empty()
        {
            break sid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sandbox never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    assert!(
        task.await.is_err_and(|e| e.is_cancelled()),
        "the future was dropped mid-run"
    );
    assert_gone(&b, &sandbox).await;
}

#[tokio::test]
async fn the_sandboxed_process_has_no_capabilities_and_no_new_privileges() {
    let b = backend().await;
    let code = "import ctypes\n\
        status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n\
        for k in ('Uid', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd'):\n    print(k, status[k].split()[0])\n\
        print('NoNewPrivs', ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))\n";
    let r = run(&b, spec("python", code)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    assert_eq!(
        r.stdout.text(),
        "Uid 65534\nCapInh 0000000000000000\nCapPrm 0000000000000000\n\
         CapEff 0000000000000000\nCapBnd 0000000000000000\nNoNewPrivs 1\n"
    );
    assert_gone(&b, &r.sandbox_id).await;
}

#[tokio::test]
async fn twenty_concurrent_executions_return_their_own_results() {
    let b = backend().await;
    let tasks: Vec<_> = (0..20u32)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                let mut s = spec("python", "import sys\nn = int(sys.stdin.read())\nprint(n * 7)\nopen('/workspace/out/n.txt','w').write(str(n))");
                s.stdin = i.to_string().into_bytes();
                (i, run(&b, s).await)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (i, r) = t.await.expect("task");
        assert_eq!(r.outcome, Outcome::Succeeded, "{i}: {}", r.stderr.text());
        assert_eq!(r.stdout.text(), format!("{}\n", i * 7));
        assert_eq!(r.files[0].content, i.to_string().into_bytes());
        assert!(ids.insert(r.sandbox_id.clone()));
        assert!(leftovers(&b, &r.sandbox_id).is_empty());
    }
}

#[tokio::test]
async fn restart_sweeps_stale_sandboxes_bundles_cgroups_and_mounts() {
    let runner = runner_id();
    let (b, _) = LocalRunsc::start(config(&runner)).await.expect("start");
    // Fake a crash: a sandbox whose `runsc run` was SIGKILLed, with its workspace
    // (holding data), bundle and cgroups still there.
    let id = format!("gb-{runner}-0123456789ab");
    let ws = b.workspace_dir(&id);
    std::fs::create_dir_all(&ws).expect("ws");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&ws)
        .status()
        .expect("mount");
    assert!(st.success());
    std::fs::write(ws.join("secret.txt"), vec![b's'; 10_000]).expect("data");
    std::fs::create_dir_all(ws.join("out")).expect("out");
    let bundle = b.bundle_dir(&id);
    std::fs::create_dir_all(&bundle).expect("bundle");
    let registry = RuntimeRegistry::builtin();
    let s = spec("bash", "sleep 60");
    let cg = Cgroups::new(Path::new("/sys/fs/cgroup"), &id);
    cg.create(256 << 20, 1024, 100_000, 100_000)
        .expect("cgroups");
    std::fs::write(ws.join("main.sh"), "sleep 60").expect("code");
    let cfg = oci::config(
        &s,
        registry.get("bash").expect("bash"),
        b.root("bash").expect("bash root"),
        &ws,
        &cg.cgroups_path(),
    );
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&cfg).expect("json"),
    )
    .expect("config");
    let mut child = std::process::Command::new("runsc")
        .arg("--root")
        .arg(b.state_dir())
        .args(["--network=none", "run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runsc run");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("kill runsc run");
    let _ = child.wait();
    assert!(
        !leftovers(&b, &id).is_empty(),
        "the crash left state behind"
    );
    drop(b);

    // A new runner with the same id sweeps all of it at start-up.
    let (b, report) = LocalRunsc::start(config(&runner)).await.expect("restart");
    assert_eq!(report.sandboxes, vec![id.clone()], "{report:?}");
    assert_eq!(report.workspaces, vec![id.clone()]);
    assert_eq!(report.bundles, vec![id.clone()]);
    assert!(!report.cgroups.is_empty());
    assert!(report.bytes_scrubbed >= 10_000);
    assert_gone(&b, &id).await;
}

#[tokio::test]
async fn broken_runsc_and_cgroup_failures_are_typed_errors_naming_step_and_sandbox() {
    let mut c = config(&runner_id());
    c.runsc = PathBuf::from("/nonexistent/runsc");
    let e = LocalRunsc::start(c).await.expect_err("missing runsc");
    assert!(
        matches!(
            e,
            SandboxError::RunscMissing {
                step: "start-up: runsc --version",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/runsc"), "{e}");

    // A cgroup tree where the sandbox's cgroup cannot be created.
    let fake = std::env::temp_dir().join(format!("gb-cg-{}", runner_id()));
    for ctl in ["memory", "pids", "cpu", "cpuacct"] {
        std::fs::create_dir_all(fake.join(ctl)).expect("fake");
        std::fs::write(fake.join(ctl).join("tasks"), "").expect("tasks");
    }
    std::fs::write(fake.join("memory").join("glassbox"), "not a directory").expect("blocker");
    let mut c = config(&runner_id());
    c.cgroup_root = fake.clone();
    let (b, _) = LocalRunsc::start(c).await.expect("starts");
    let e = b
        .execute(spec("bash", "true"), CancellationToken::new())
        .await
        .expect_err("cgroup failure");
    match &e {
        SandboxError::Cgroup {
            step, sandbox_id, ..
        } => {
            assert_eq!(*step, "create cgroup");
            assert!(sandbox_id.starts_with("gb-t"), "{e}");
            assert!(
                leftovers(&b, sandbox_id).is_empty(),
                "failed start cleaned up"
            );
        }
        other => panic!("expected a cgroup error, got {other}"),
    }
    let _ = std::fs::remove_dir_all(&fake);

    // Bad specs never reach the host.
    let b = backend().await;
    let e = b
        .execute(spec("cobol", "x"), CancellationToken::new())
        .await
        .expect_err("unknown language");
    assert!(e.to_string().contains("known: bash, node, python"), "{e}");
    let mut s = spec("bash", "true");
    s.files.push(InputFile {
        path: "../escape".into(),
        content: vec![],
        executable: false,
    });
    assert!(matches!(
        b.execute(s, CancellationToken::new()).await,
        Err(SandboxError::InvalidSpec(_))
    ));
}

/// What a hostile program can build in its workspace: 1,000 nested
/// directories of 200-byte names (far beyond PATH_MAX) in `/workspace` and in
/// `/workspace/out`, 3,000 files in one directory, and a file with a 255-byte
/// name. Collection
/// stays bounded, teardown is complete, and nothing is left behind.
#[tokio::test]
async fn trees_deeper_than_path_max_and_255_byte_names_are_collected_bounded_and_scrubbed() {
    let b = backend().await;
    let code = r#"
import os
name = 'd' * 200
for base in ('/workspace', '/workspace/out'):
    os.chdir(base)
    for i in range(1000):
        os.mkdir(name)
        os.chdir(name)
        if i % 250 == 0:
            open('f', 'w').write('deep data')
os.chdir('/workspace/out')
open('x' * 255, 'w').write('long name')
os.mkdir('/workspace/wide')
for i in range(3000):
    open('/workspace/wide/%d' % i, 'w').close()
print('built')
"#;
    let mut s = spec("python", code);
    s.limits.wall_time_ms = 60_000;
    let r = run(&b, s).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    assert_eq!(r.stdout.text(), "built\n");
    let long = r
        .files
        .iter()
        .find(|f| f.path == "x".repeat(255))
        .expect("the 255-byte name is collected");
    assert_eq!(long.content, b"long name");
    assert!(r.files.len() as u64 <= s_limits_default_files());
    assert!(r.files.iter().all(|f| f.path.matches('/').count() <= 16));
    assert!(
        r.skipped_total > 0,
        "the deep and wide parts were skipped, not followed"
    );
    assert!(r.teardown.complete, "{:?}", r.teardown);
    assert!(r.teardown.files_scrubbed >= 3000, "{:?}", r.teardown);
    assert_gone(&b, &r.sandbox_id).await;
}

fn s_limits_default_files() -> u64 {
    glassbox_sandbox_runner::Limits::default().output_files
}
