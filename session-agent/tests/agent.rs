//! The agent as a process, natively (no sandbox): the protocol, interpreter
//! state between execs, output, timeouts and files. The same binary runs
//! inside gVisor in the runner's session tests.

use glassbox_session_agent::protocol::{
    self, ExecDone, ExecKind, Reply, Request, Stream, b64, unb64,
};
use std::io::{BufReader, BufWriter};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

struct Agent {
    child: Child,
    tx: BufWriter<ChildStdin>,
    rx: BufReader<ChildStdout>,
    ws: std::path::PathBuf,
    next: u64,
}

impl Agent {
    fn start(language: &str, interpreter: &str) -> Agent {
        let ws = std::env::temp_dir().join(format!(
            "glassbox-agent-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&ws).expect("workspace");
        let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox-session-agent"))
            .args(["--language", language, "--interpreter", interpreter])
            .arg("--workspace")
            .arg(&ws)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("agent");
        let tx = BufWriter::new(child.stdin.take().expect("stdin"));
        let mut rx = BufReader::new(child.stdout.take().expect("stdout"));
        let ready: Reply = protocol::read_frame(&mut rx).expect("ready");
        assert_eq!(
            ready,
            Reply::Ready {
                language: language.into()
            }
        );
        Agent {
            child,
            tx,
            rx,
            ws,
            next: 0,
        }
    }

    fn call(&mut self, r: &Request) -> Reply {
        protocol::write_frame(&mut self.tx, r).expect("send");
        protocol::read_frame(&mut self.rx).expect("reply")
    }

    /// Runs an exec; returns (stdout, stderr, done).
    fn exec(
        &mut self,
        kind: ExecKind,
        source: &str,
        timeout_ms: u64,
    ) -> (String, String, ExecDone) {
        self.exec_with(kind, source, b"", timeout_ms, 1 << 20)
    }

    fn exec_with(
        &mut self,
        kind: ExecKind,
        source: &str,
        stdin: &[u8],
        timeout_ms: u64,
        cap: u64,
    ) -> (String, String, ExecDone) {
        self.next += 1;
        let id = self.next;
        protocol::write_frame(
            &mut self.tx,
            &Request::Exec {
                id,
                kind,
                source: source.into(),
                stdin_b64: b64(stdin),
                timeout_ms,
                max_stdout: cap,
                max_stderr: cap,
            },
        )
        .expect("send");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match protocol::read_frame::<Reply>(&mut self.rx).expect("frame") {
                Reply::Out {
                    id: i,
                    stream,
                    data_b64,
                } => {
                    assert_eq!(i, id);
                    let data = unb64(&data_b64).expect("b64");
                    match stream {
                        Stream::Stdout => out.extend(data),
                        Stream::Stderr => err.extend(data),
                    }
                }
                Reply::Done(d) => {
                    assert_eq!(d.id, id);
                    return (
                        String::from_utf8_lossy(&out).into_owned(),
                        String::from_utf8_lossy(&err).into_owned(),
                        d,
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.ws);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[test]
fn python_state_survives_between_execs_and_the_last_expression_is_shown() {
    let mut a = Agent::start("python", "/usr/bin/python3");
    let (out, err, d) = a.exec(ExecKind::Code, "import math\nx = 41\nprint('set')", 10_000);
    assert_eq!(
        (out.as_str(), err.as_str(), d.exit_code),
        ("set\n", "", Some(0))
    );
    assert!(!d.context_reset);
    let (out, _, d) = a.exec(ExecKind::Code, "x + 1", 10_000);
    assert_eq!((out.as_str(), d.exit_code), ("42\n", Some(0)));
    let (out, _, _) = a.exec(ExecKind::Code, "math.floor(2.5)", 10_000);
    assert_eq!(out, "2\n");
    // Exceptions: traceback on stderr, exit code 1, state kept.
    let (_, err, d) = a.exec(ExecKind::Code, "1/0", 10_000);
    assert_eq!(d.exit_code, Some(1));
    assert!(err.contains("ZeroDivisionError"), "{err}");
    assert!(!err.contains("_gb_"), "kernel frames are hidden: {err}");
    let (out, _, _) = a.exec(ExecKind::Code, "x", 10_000);
    assert_eq!(out, "41\n");
    // stdin, and sys.exit with a code.
    let (out, _, d) = a.exec_with(
        ExecKind::Code,
        "print(input().upper())",
        b"hi\n",
        10_000,
        1 << 20,
    );
    assert_eq!((out.as_str(), d.exit_code), ("HI\n", Some(0)));
    let (_, _, d) = a.exec(ExecKind::Code, "import sys; sys.exit(3)", 10_000);
    assert_eq!(d.exit_code, Some(3));
    let (out, _, _) = a.exec(ExecKind::Code, "x", 10_000);
    assert_eq!(out, "41\n", "sys.exit does not end the context");
}

#[test]
fn a_timeout_kills_the_context_not_the_agent() {
    let mut a = Agent::start("python", "/usr/bin/python3");
    a.exec(ExecKind::Code, "y = 5", 10_000);
    let started = std::time::Instant::now();
    let (out, _, d) = a.exec(
        ExecKind::Code,
        "print('before', flush=True)\nwhile True: pass",
        500,
    );
    assert!(d.timed_out && d.context_reset, "{d:?}");
    assert_eq!(d.exit_code, None);
    assert!(out.contains("before"), "{out:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // A fresh context: y is gone, the agent answers.
    let (_, err, d) = a.exec(ExecKind::Code, "y", 10_000);
    assert_eq!(d.exit_code, Some(1));
    assert!(err.contains("NameError"), "{err}");
    assert!(!d.context_reset, "reported once, on the exec that lost it");
    // A command that hangs is killed with its children.
    let (_, _, d) = a.exec(ExecKind::Command, "sleep 30 & sleep 30", 300);
    assert!(d.timed_out, "{d:?}");
    assert_eq!(a.call(&Request::Ping), Reply::Pong);
}

#[test]
fn commands_run_in_the_workspace_with_exit_status_and_caps() {
    let mut a = Agent::start("python", "/usr/bin/python3");
    let (out, err, d) = a.exec(
        ExecKind::Command,
        "echo out; echo err >&2; pwd; exit 7",
        10_000,
    );
    assert_eq!(d.exit_code, Some(7));
    assert_eq!(err, "err\n");
    assert!(out.starts_with("out\n"), "{out}");
    let ws = std::fs::canonicalize(&a.ws).expect("ws");
    assert!(out.contains(&ws.display().to_string()), "{out}");
    // Output past the cap is counted, not sent.
    let (out, _, d) = a.exec_with(
        ExecKind::Command,
        "head -c 100000 /dev/zero | tr '\\0' x",
        b"",
        10_000,
        1000,
    );
    assert_eq!(out.len(), 1000);
    assert_eq!(d.stdout_bytes, 100_000);
    assert!(d.stdout_truncated);
    // A big output arrives whole below the cap.
    let (out, _, d) = a.exec_with(ExecKind::Code, "print('y' * 300000)", b"", 10_000, 1 << 20);
    assert_eq!(out.len(), 300_001);
    assert!(!d.stdout_truncated);
}

#[test]
fn files_are_written_read_listed_and_deleted_under_the_workspace_only() {
    let mut a = Agent::start("python", "/usr/bin/python3");
    let ok = a.call(&Request::Write {
        path: "data/in.txt".into(),
        data_b64: b64(b"hello "),
        append: false,
    });
    assert_eq!(ok, Reply::Ok { size: 6 });
    a.call(&Request::Write {
        path: "data/in.txt".into(),
        data_b64: b64(b"world"),
        append: true,
    });
    let (out, _, _) = a.exec(ExecKind::Code, "open('data/in.txt').read()", 10_000);
    assert_eq!(out, "'hello world'\n");
    match a.call(&Request::Read {
        path: "data/in.txt".into(),
        offset: 6,
        len: 100,
    }) {
        Reply::Data {
            data_b64,
            size,
            eof,
        } => {
            assert_eq!(unb64(&data_b64).expect("b64"), b"world");
            assert_eq!((size, eof), (11, true));
        }
        other => panic!("{other:?}"),
    }
    match a.call(&Request::List {
        path: "".into(),
        max: 100,
    }) {
        Reply::Entries { entries, truncated } => {
            assert!(!truncated);
            assert_eq!(entries.len(), 1);
            assert_eq!(
                (entries[0].name.as_str(), entries[0].kind.as_str()),
                ("data", "dir")
            );
        }
        other => panic!("{other:?}"),
    }
    for bad in ["../escape", "/etc/passwd", "a//b", "./x"] {
        let r = a.call(&Request::Read {
            path: bad.into(),
            offset: 0,
            len: 10,
        });
        assert!(matches!(r, Reply::Error { .. }), "{bad}: {r:?}");
    }
    assert_eq!(
        a.call(&Request::Delete {
            path: "data".into()
        }),
        Reply::Ok { size: 0 }
    );
    assert!(matches!(
        a.call(&Request::Read {
            path: "data/in.txt".into(),
            offset: 0,
            len: 10
        }),
        Reply::Error { .. }
    ));
}

#[test]
fn node_keeps_its_declarations_and_awaits_promises() {
    if !std::path::Path::new("/usr/bin/node").exists() {
        eprintln!("node is not installed; skipped");
        return;
    }
    let mut a = Agent::start("node", "/usr/bin/node");
    let (_, err, d) = a.exec(
        ExecKind::Code,
        "let n = 20; var m = 1; function f(x) { return x * 2 }",
        10_000,
    );
    assert_eq!(d.exit_code, Some(0), "{err}");
    let (out, _, _) = a.exec(ExecKind::Code, "f(n) + m", 10_000);
    assert_eq!(out, "41\n");
    let (out, _, _) = a.exec(
        ExecKind::Code,
        "new Promise(r => setTimeout(() => r('later'), 50))",
        10_000,
    );
    assert_eq!(out, "'later'\n");
    let (_, err, d) = a.exec(ExecKind::Code, "throw new Error('boom')", 10_000);
    assert_eq!(d.exit_code, Some(1));
    assert!(err.contains("boom"), "{err}");
    let (out, _, _) = a.exec(
        ExecKind::Code,
        "console.log(require('path').join('a','b'))",
        10_000,
    );
    assert_eq!(out, "a/b\n");
}
