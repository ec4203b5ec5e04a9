//! The agent's main loop: requests in, replies out.
//!
//! Why an agent: a session's sandbox stays up between calls, and code contexts
//! keep their state (a Python variable defined in one exec is there in the
//! next). Starting a process per call (`runsc exec`) would lose that state
//! and cost a sandbox round trip each time; instead the runner talks to this
//! program over the sandbox's stdin/stdout ([`protocol`]), and it keeps an
//! interpreter kernel ([`kernels`]) alive, runs shell commands in the
//! workspace, and reads and writes files there.
//!
//! It runs *inside* gVisor as the unprivileged sandbox user, so nothing it
//! does — or that the code it runs does — reaches beyond the sandbox.
//!
//! Every exec ends: a timeout or cancellation kills the kernel's (or the
//! command's) whole process group, and the next code exec starts a fresh
//! kernel (`context_reset`); the session itself goes on.

use crate::kernels;
use crate::protocol::{self, Entry, ExecDone, ExecKind, Reply, Request, Stream, b64, unb64};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Where the session's files are (inside the sandbox).
pub const WORKSPACE: &str = "/workspace";
/// The kernels' FIFOs (on the sandbox's own /tmp; one directory per agent).
fn ctl_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/.glassbox-agent-{}", std::process::id()))
}
/// How long a command's output may trail its exit (background processes can
/// hold the pipes open).
const TRAIL: Duration = Duration::from_millis(200);

/// Where an output chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Kernel(u64),
    Command(u64),
}

enum Event {
    Request(Request),
    InputClosed,
    Chunk {
        src: Source,
        stream: Stream,
        data: Vec<u8>,
    },
    Eof {
        src: Source,
        stream: Stream,
    },
    KernelDone {
        generation: u64,
        exit_code: i32,
    },
    KernelGone {
        generation: u64,
    },
    CommandExit {
        id: u64,
        status: Option<ExitStatus>,
    },
}

struct Kernel {
    generation: u64,
    child: Child,
    req: std::fs::File,
    paths: [PathBuf; 2],
}

/// What the agent runs code with.
pub struct Agent<W: Write> {
    workspace: PathBuf,
    language: String,
    interpreter: Option<PathBuf>,
    out: W,
    events: Receiver<Event>,
    tx: Sender<Event>,
    pending: VecDeque<Request>,
    kernel: Option<Kernel>,
    generations: u64,
    /// A kernel was lost since the last exec reported it.
    reset: bool,
    input_closed: bool,
}

/// `glassbox-session-agent --language L [--interpreter PATH] [--workspace
/// DIR]`: serves the runner on stdin/stdout until stdin closes.
pub fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("forward") {
        return crate::forward::main(&args[2..]);
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(language) = value("--language") else {
        let _ = writeln!(
            std::io::stderr(),
            "usage: glassbox-session-agent --language L [--interpreter PATH]"
        );
        return std::process::ExitCode::from(2);
    };
    let interpreter = value("--interpreter").map(PathBuf::from);
    let workspace = value("--workspace").map_or_else(|| PathBuf::from(WORKSPACE), PathBuf::from);
    let (tx, rx) = mpsc::channel();
    let input = tx.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            match protocol::read_frame::<Request>(&mut stdin) {
                Ok(r) => {
                    if input.send(Event::Request(r)).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = input.send(Event::InputClosed);
                    return;
                }
            }
        }
    });
    let mut agent = Agent {
        workspace,
        language,
        interpreter,
        out: std::io::stdout().lock(),
        events: rx,
        tx,
        pending: VecDeque::new(),
        kernel: None,
        generations: 0,
        reset: false,
        input_closed: false,
    };
    agent.serve();
    std::process::ExitCode::SUCCESS
}

impl<W: Write> Agent<W> {
    fn send(&mut self, reply: &Reply) -> bool {
        protocol::write_frame(&mut self.out, reply).is_ok()
    }

    fn serve(&mut self) {
        let ready = Reply::Ready {
            language: self.language.clone(),
        };
        if !self.send(&ready) {
            return;
        }
        loop {
            let request = match self.pending.pop_front() {
                Some(r) => r,
                None => {
                    if self.input_closed {
                        break;
                    }
                    match self.events.recv() {
                        Ok(Event::Request(r)) => r,
                        Ok(Event::InputClosed) | Err(_) => break,
                        // Stray output of an earlier exec or kernel.
                        Ok(_) => continue,
                    }
                }
            };
            let reply = self.handle(request);
            if !self.send(&reply) {
                break;
            }
        }
        self.stop_kernel();
        let _ = std::fs::remove_dir_all(ctl_dir());
    }

    fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Exec {
                id,
                kind,
                source,
                stdin_b64,
                timeout_ms,
                max_stdout,
                max_stderr,
            } => {
                let stdin = unb64(&stdin_b64).unwrap_or_default();
                let limits = Caps {
                    timeout: Duration::from_millis(timeout_ms.max(1)),
                    stdout: max_stdout,
                    stderr: max_stderr,
                };
                let started = Instant::now();
                let kernel_language = matches!(self.language.as_str(), "python" | "node");
                let mut done = match kind {
                    ExecKind::Code if kernel_language => {
                        self.exec_code(id, &source, &stdin, limits)
                    }
                    ExecKind::Code => {
                        let shell = self
                            .interpreter
                            .clone()
                            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
                        self.exec_command(id, &shell, &source, stdin, limits)
                    }
                    ExecKind::Command => {
                        self.exec_command(id, Path::new("/bin/sh"), &source, stdin, limits)
                    }
                };
                done.id = id;
                done.wall_ms = started.elapsed().as_millis() as u64;
                Reply::Done(done)
            }
            Request::Cancel { .. } => Reply::Ok { size: 0 },
            Request::Write {
                path,
                data_b64,
                append,
            } => match unb64(&data_b64)
                .map_err(|e| e.to_string())
                .and_then(|data| write_file(&self.workspace, &path, &data, append))
            {
                Ok(size) => Reply::Ok { size },
                Err(message) => Reply::Error { message },
            },
            Request::Read { path, offset, len } => {
                match read_file(&self.workspace, &path, offset, len) {
                    Ok((data, size)) => Reply::Data {
                        eof: offset + data.len() as u64 >= size,
                        data_b64: b64(&data),
                        size,
                    },
                    Err(message) => Reply::Error { message },
                }
            }
            Request::List { path, max } => {
                match list(&self.workspace, &path, max.min(protocol::MAX_LIST)) {
                    Ok((entries, truncated)) => Reply::Entries { entries, truncated },
                    Err(message) => Reply::Error { message },
                }
            }
            Request::Delete { path } => match delete(&self.workspace, &path) {
                Ok(()) => Reply::Ok { size: 0 },
                Err(message) => Reply::Error { message },
            },
            Request::Ping => Reply::Pong,
        }
    }

    fn start_kernel(&mut self) -> Result<(), String> {
        self.generations += 1;
        let generation = self.generations;
        let dir = ctl_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("kernel directory: {e}"))?;
        let req_path = dir.join(format!("k{generation}.req"));
        let done_path = dir.join(format!("k{generation}.done"));
        for p in [&req_path, &done_path] {
            let _ = std::fs::remove_file(p);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
                0,
            )
            .map_err(|e| format!("kernel channel: {e}"))?;
        }
        let interpreter = self.interpreter.clone().unwrap_or_else(|| {
            PathBuf::from(if self.language == "node" {
                "/usr/bin/node"
            } else {
                "/usr/bin/python3"
            })
        });
        let mut cmd = Command::new(&interpreter);
        if self.language == "node" {
            cmd.arg("-e").arg(kernels::NODE);
        } else {
            cmd.arg("-c").arg(kernels::PYTHON);
        }
        cmd.arg(&req_path)
            .arg(&done_path)
            .current_dir(&self.workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", interpreter.display()))?;
        let src = Source::Kernel(generation);
        if let Some(s) = child.stdout.take() {
            pump(s, src, Stream::Stdout, self.tx.clone());
        }
        if let Some(s) = child.stderr.take() {
            pump(s, src, Stream::Stderr, self.tx.clone());
        }
        // The answers: a thread of its own opens the done FIFO (the kernel
        // opens its two ends in its own order; neither side can deadlock).
        let tx = self.tx.clone();
        let done = done_path.clone();
        std::thread::spawn(move || {
            let Ok(mut f) = std::fs::File::open(&done) else {
                let _ = tx.send(Event::KernelGone { generation });
                return;
            };
            loop {
                match protocol::read_frame::<serde_json::Value>(&mut f) {
                    Ok(v) => {
                        let exit_code = v["exit_code"].as_i64().unwrap_or(1) as i32;
                        if tx
                            .send(Event::KernelDone {
                                generation,
                                exit_code,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(_) => {
                        let _ = tx.send(Event::KernelGone { generation });
                        return;
                    }
                }
            }
        });
        // Opening the request FIFO waits for the kernel to open its end; a
        // kernel that dies first would leave it waiting, so it has a deadline
        // (and the FIFO is then opened for reading here to release it).
        let (otx, orx) = mpsc::channel();
        let req = req_path.clone();
        std::thread::spawn(move || {
            let _ = otx.send(std::fs::OpenOptions::new().write(true).open(&req));
        });
        match orx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(file)) => {
                self.kernel = Some(Kernel {
                    generation,
                    child,
                    req: file,
                    paths: [req_path, done_path],
                });
                Ok(())
            }
            other => {
                let _ = kill_group(&child);
                let _ = child.wait();
                let _ = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(&req_path);
                for p in [&req_path, &done_path] {
                    let _ = std::fs::remove_file(p);
                }
                Err(match other {
                    Ok(Err(e)) => format!("open the kernel channel: {e}"),
                    _ => format!("{} did not start", interpreter.display()),
                })
            }
        }
    }

    fn stop_kernel(&mut self) {
        if let Some(mut k) = self.kernel.take() {
            let _ = kill_group(&k.child);
            let _ = k.child.wait();
            for p in &k.paths {
                let _ = std::fs::remove_file(p);
            }
            self.reset = true;
        }
    }

    fn exec_code(&mut self, id: u64, code: &str, stdin: &[u8], caps: Caps) -> ExecDone {
        let deadline = Instant::now() + caps.timeout;
        if self.kernel.is_none()
            && let Err(e) = self.start_kernel()
        {
            return ExecDone {
                error: Some(e),
                context_reset: std::mem::take(&mut self.reset),
                ..ExecDone::default()
            };
        }
        let nonce = nonce();
        let request = serde_json::json!({"code": code, "stdin_b64": b64(stdin), "nonce": nonce});
        let sent = match self.kernel.as_mut() {
            Some(k) => protocol::write_frame(&mut k.req, &request).is_ok(),
            None => false,
        };
        let generation = self.kernel.as_ref().map_or(0, |k| k.generation);
        let mut result = ExecDone {
            context_reset: std::mem::take(&mut self.reset),
            ..ExecDone::default()
        };
        if !sent {
            self.stop_kernel();
            self.reset = false;
            result.context_reset = true;
            result.error = Some("the interpreter is gone; its state was reset".into());
            return result;
        }
        let sentinel = format!("\u{1e}gb-end-{nonce}\u{1e}").into_bytes();
        let mut out = Filter::new(Stream::Stdout, caps.stdout, Some(sentinel.clone()));
        let mut err = Filter::new(Stream::Stderr, caps.stderr, Some(sentinel));
        let mut exit_code = None;
        let src = Source::Kernel(generation);
        loop {
            if exit_code.is_some() && out.ended && err.ended {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                result.timed_out = true;
                break;
            }
            match self
                .events
                .recv_timeout((deadline - now).min(Duration::from_millis(250)))
            {
                Ok(Event::Chunk {
                    src: s,
                    stream,
                    data,
                }) if s == src => {
                    let f = if stream == Stream::Stdout {
                        &mut out
                    } else {
                        &mut err
                    };
                    for piece in f.push(&data) {
                        self.forward(id, stream, &piece);
                    }
                }
                Ok(Event::KernelDone {
                    generation: g,
                    exit_code: c,
                }) if g == generation => exit_code = Some(c),
                Ok(Event::KernelGone { generation: g }) if g == generation => {
                    result.error = Some(self.kernel_exit_reason());
                    break;
                }
                Ok(Event::Eof { src: s, .. }) if s == src => {
                    result.error = Some(self.kernel_exit_reason());
                    break;
                }
                Ok(Event::Request(Request::Cancel { id: c })) if c == id => {
                    result.cancelled = true;
                    break;
                }
                Ok(Event::Request(r)) => self.pending.push_back(r),
                Ok(Event::InputClosed) => {
                    self.input_closed = true;
                    result.cancelled = true;
                    break;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(k) = self.kernel.as_mut()
                        && let Ok(Some(_)) = k.child.try_wait()
                    {
                        result.error = Some(self.kernel_exit_reason());
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let complete = exit_code.is_some() && out.ended && err.ended;
        if !complete {
            // Timed out, cancelled or died: the kernel and everything it
            // started go; the next code exec gets a fresh one.
            self.stop_kernel();
            self.reset = false;
            result.context_reset = true;
            if result.timed_out || result.cancelled {
                result.signal = Some(9);
            }
        }
        for piece in out.finish().into_iter().chain(err.finish()) {
            self.forward(id, piece.0, &piece.1);
        }
        result.exit_code = if complete { exit_code } else { None };
        out.report(&mut result);
        err.report(&mut result);
        result
    }

    fn kernel_exit_reason(&mut self) -> String {
        let status = self
            .kernel
            .as_mut()
            .and_then(|k| k.child.wait().ok())
            .map(describe)
            .unwrap_or_else(|| "ended".into());
        format!("the interpreter {status}; its state was reset")
    }

    fn exec_command(
        &mut self,
        id: u64,
        shell: &Path,
        source: &str,
        stdin: Vec<u8>,
        caps: Caps,
    ) -> ExecDone {
        let deadline = Instant::now() + caps.timeout;
        let mut result = ExecDone::default();
        let spawned = Command::new(shell)
            .arg("-c")
            .arg(source)
            .current_dir(&self.workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                result.error = Some(format!("start {}: {e}", shell.display()));
                return result;
            }
        };
        let pgid = child.id();
        let src = Source::Command(id);
        if let Some(mut s) = child.stdin.take() {
            std::thread::spawn(move || {
                let _ = s.write_all(&stdin);
            });
        }
        if let Some(s) = child.stdout.take() {
            pump(s, src, Stream::Stdout, self.tx.clone());
        }
        if let Some(s) = child.stderr.take() {
            pump(s, src, Stream::Stderr, self.tx.clone());
        }
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let status = child.wait().ok();
            let _ = tx.send(Event::CommandExit { id, status });
        });
        let mut out = Filter::new(Stream::Stdout, caps.stdout, None);
        let mut err = Filter::new(Stream::Stderr, caps.stderr, None);
        let mut exited: Option<(Option<ExitStatus>, Instant)> = None;
        let mut killed = false;
        loop {
            let now = Instant::now();
            if let Some((_, at)) = exited
                && ((out.ended && err.ended) || now >= at + TRAIL)
            {
                break;
            }
            if !killed && now >= deadline {
                result.timed_out = true;
                killed = true;
                let _ = kill_pgid(pgid);
            }
            let wait = match exited {
                Some((_, at)) => (at + TRAIL).saturating_duration_since(now),
                None if killed => Duration::from_millis(250),
                None => deadline.saturating_duration_since(now),
            };
            match self
                .events
                .recv_timeout(wait.clamp(Duration::from_millis(1), Duration::from_millis(250)))
            {
                Ok(Event::Chunk {
                    src: s,
                    stream,
                    data,
                }) if s == src => {
                    let f = if stream == Stream::Stdout {
                        &mut out
                    } else {
                        &mut err
                    };
                    for piece in f.push(&data) {
                        self.forward(id, stream, &piece);
                    }
                }
                Ok(Event::Eof { src: s, stream }) if s == src => {
                    if stream == Stream::Stdout {
                        out.ended = true;
                    } else {
                        err.ended = true;
                    }
                }
                Ok(Event::CommandExit { id: i, status }) if i == id => {
                    exited = Some((status, Instant::now()));
                }
                Ok(Event::Request(Request::Cancel { id: c })) if c == id => {
                    result.cancelled = true;
                    killed = true;
                    let _ = kill_pgid(pgid);
                }
                Ok(Event::Request(r)) => self.pending.push_back(r),
                Ok(Event::InputClosed) => {
                    self.input_closed = true;
                    result.cancelled = true;
                    killed = true;
                    let _ = kill_pgid(pgid);
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for piece in out.finish().into_iter().chain(err.finish()) {
            self.forward(id, piece.0, &piece.1);
        }
        if let Some((Some(status), _)) = exited {
            use std::os::unix::process::ExitStatusExt as _;
            result.exit_code = status.code();
            result.signal = status.signal();
        }
        out.report(&mut result);
        err.report(&mut result);
        result
    }

    fn forward(&mut self, id: u64, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let reply = Reply::Out {
            id,
            stream,
            data_b64: b64(data),
        };
        let _ = self.send(&reply);
    }
}

#[derive(Debug, Clone, Copy)]
struct Caps {
    timeout: Duration,
    stdout: u64,
    stderr: u64,
}

/// One output stream of an exec: forwards up to its cap, counts the rest, and
/// (for a kernel) ends at the sentinel, which it strips.
struct Filter {
    stream: Stream,
    cap: u64,
    forwarded: u64,
    total: u64,
    truncated: bool,
    sentinel: Option<Vec<u8>>,
    held: Vec<u8>,
    ended: bool,
}

impl Filter {
    fn new(stream: Stream, cap: u64, sentinel: Option<Vec<u8>>) -> Filter {
        Filter {
            stream,
            cap,
            forwarded: 0,
            total: 0,
            truncated: false,
            sentinel,
            held: Vec::new(),
            ended: false,
        }
    }

    /// The bytes to forward now.
    fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        if self.ended {
            return Vec::new();
        }
        let Some(sentinel) = &self.sentinel else {
            return self.take(data.to_vec());
        };
        self.held.extend_from_slice(data);
        if let Some(at) = find(&self.held, sentinel) {
            let before: Vec<u8> = self.held[..at].to_vec();
            self.held.clear();
            self.ended = true;
            return self.take(before);
        }
        // Hold back what could be the start of the sentinel.
        let keep = sentinel.len().saturating_sub(1).min(self.held.len());
        let ready: Vec<u8> = self.held.drain(..self.held.len() - keep).collect();
        self.take(ready)
    }

    fn take(&mut self, data: Vec<u8>) -> Vec<Vec<u8>> {
        self.total += data.len() as u64;
        let room = self.cap.saturating_sub(self.forwarded) as usize;
        if data.len() > room {
            self.truncated = true;
        }
        let piece: Vec<u8> = data.into_iter().take(room).collect();
        self.forwarded += piece.len() as u64;
        if piece.is_empty() {
            Vec::new()
        } else {
            vec![piece]
        }
    }

    /// Whatever was held back (an exec that ended without its sentinel).
    fn finish(&mut self) -> Vec<(Stream, Vec<u8>)> {
        let held = std::mem::take(&mut self.held);
        self.take(held)
            .into_iter()
            .map(|p| (self.stream, p))
            .collect()
    }

    fn report(&self, done: &mut ExecDone) {
        match self.stream {
            Stream::Stdout => {
                done.stdout_bytes = self.total;
                done.stdout_truncated = self.truncated;
            }
            Stream::Stderr => {
                done.stderr_bytes = self.total;
                done.stderr_truncated = self.truncated;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads `r` to its end on a thread, as chunks.
fn pump(mut r: impl Read + Send + 'static, src: Source, stream: Stream, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Event::Eof { src, stream });
                    return;
                }
                Ok(n) => {
                    if tx
                        .send(Event::Chunk {
                            src,
                            stream,
                            data: buf[..n].to_vec(),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
}

fn kill_group(child: &Child) -> std::io::Result<()> {
    kill_pgid(child.id())
}

fn kill_pgid(pid: u32) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| std::io::Error::other("no process"))?;
    rustix::process::kill_process_group(pid, rustix::process::Signal::KILL)
        .map_err(std::io::Error::from)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

fn nonce() -> String {
    let mut bytes = [0u8; 8];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !filled {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (t as u64 ^ u64::from(std::process::id())).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path under the workspace: relative, no `.`, `..` or empty components.
/// (The runner checks paths with the domain's `WorkspacePath` before they get
/// here; this is the agent's own guard.)
fn resolve(ws: &Path, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Ok(ws.to_path_buf());
    }
    let ok = !path.starts_with('/')
        && path.len() <= 4096
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if ok {
        Ok(ws.join(path))
    } else {
        Err("path: must be relative, without `..` or empty components".into())
    }
}

fn write_file(ws: &Path, path: &str, data: &[u8], append: bool) -> Result<u64, String> {
    if path.is_empty() {
        return Err("path: a file name is needed".into());
    }
    let p = resolve(ws, path)?;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create the directory: {e}"))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&p)
        .map_err(|e| format!("open for writing: {e}"))?;
    f.write_all(data).map_err(|e| format!("write: {e}"))?;
    f.metadata().map(|m| m.len()).map_err(|e| e.to_string())
}

fn read_file(ws: &Path, path: &str, offset: u64, len: u64) -> Result<(Vec<u8>, u64), String> {
    use std::io::Seek as _;
    let p = resolve(ws, path)?;
    let mut f = std::fs::File::open(&p).map_err(|e| format!("open: {e}"))?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    f.seek(std::io::SeekFrom::Start(offset))
        .map_err(|e| format!("seek: {e}"))?;
    let mut data = Vec::new();
    f.take(len.min(protocol::MAX_CHUNK))
        .read_to_end(&mut data)
        .map_err(|e| format!("read: {e}"))?;
    Ok((data, meta.len()))
}

fn list(ws: &Path, path: &str, max: u32) -> Result<(Vec<Entry>, bool), String> {
    let p = resolve(ws, path)?;
    let mut entries = Vec::new();
    let mut truncated = false;
    for e in std::fs::read_dir(&p).map_err(|e| format!("list: {e}"))? {
        let Ok(e) = e else { continue };
        if entries.len() >= max as usize {
            truncated = true;
            break;
        }
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        let kind = if meta.is_file() {
            "file"
        } else if meta.is_dir() {
            "dir"
        } else if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "other"
        };
        entries.push(Entry {
            name: e.file_name().to_string_lossy().into_owned(),
            kind: kind.into(),
            size: if meta.is_file() { meta.len() } else { 0 },
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((entries, truncated))
}

fn delete(ws: &Path, path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path: the workspace itself cannot be deleted".into());
    }
    let p = resolve(ws, path)?;
    let meta = p.symlink_metadata().map_err(|e| format!("delete: {e}"))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(&p)
    } else {
        std::fs::remove_file(&p)
    }
    .map_err(|e| format!("delete: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentinel_is_found_across_chunks_and_stripped() {
        let s = b"\x1egb-end-abc\x1e".to_vec();
        let mut f = Filter::new(Stream::Stdout, 100, Some(s));
        let mut got = Vec::new();
        for chunk in [&b"hello \x1egb-e"[..], b"nd-ab", b"c\x1etrailing"] {
            for p in f.push(chunk) {
                got.extend(p);
            }
        }
        assert!(f.ended);
        assert_eq!(got, b"hello ");
        assert!(f.push(b"more").is_empty());
    }

    #[test]
    fn output_beyond_the_cap_is_counted_not_forwarded() {
        let mut f = Filter::new(Stream::Stderr, 4, None);
        let got: Vec<u8> = f.push(b"abcdef").into_iter().flatten().collect();
        assert_eq!(got, b"abcd");
        let mut done = ExecDone::default();
        f.report(&mut done);
        assert_eq!((done.stderr_bytes, done.stderr_truncated), (6, true));
    }
}
