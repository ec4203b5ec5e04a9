//! Starting `runsc` so that no sandbox outlives its runner or its wall time.
//!
//! Why: `runsc run` is attached to its sandbox (the sandbox and the gofer die
//! when `runsc run` dies — measured here), but nothing killed `runsc run` when
//! the runner itself died: after a SIGKILL of the runner a 10 s job was still
//! spinning a minute later. So each `runsc` is started as
//!
//! ```text
//! setpriv --pdeathsig KILL -- timeout --signal=KILL <limit> \
//!     setpriv --pdeathsig KILL -- runsc …
//! ```
//!
//! - the outer `setpriv` makes `timeout` die with the runner, and the inner one
//!   makes `runsc` die with `timeout`: a dead runner takes its sandboxes along
//!   at once;
//! - `timeout` is a watchdog that does not live in the runner: a runner that is
//!   alive but wedged still cannot keep a sandbox past `<limit>` (its wall time
//!   plus [`WATCHDOG_GRACE`]).
//!
//! A parent-death signal fires when the *thread* that forked the child exits,
//! so every such child is forked on one dedicated thread that lives as long as
//! the process ([`spawn`]), never on a runtime worker that may come and go.
//! Both tools are in Debian's essential packages (util-linux, coreutils).

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long past its wall time the watchdog lets a sandbox live (the runner's
/// own timer normally kills it at the wall time).
pub const WATCHDOG_GRACE: Duration = Duration::from_secs(15);

type Reply = tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>;
type Request = (tokio::runtime::Handle, tokio::process::Command, Reply);

fn spawner() -> Option<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<Request>>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("glassbox-spawner".into())
                .spawn(move || {
                    while let Ok((handle, mut cmd, reply)) = rx.recv() {
                        let _guard = handle.enter();
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
        .and_then(|m| m.lock().ok().map(|tx| tx.clone()))
}

/// `program args…` wrapped so that it dies with this process and at the
/// latest after `limit`.
pub fn guarded(program: &std::path::Path, limit: Duration) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("setpriv");
    c.args(["--pdeathsig", "KILL", "--", "timeout", "--signal=KILL"])
        .arg(format!("{}s", limit.as_secs().max(1)))
        .args(["setpriv", "--pdeathsig", "KILL", "--"])
        .arg(program);
    c
}

/// Spawns `cmd` from the dedicated spawner thread (see the module docs).
pub async fn spawn(cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sender = spawner().ok_or_else(|| std::io::Error::other("the spawner thread is gone"))?;
    sender
        .send((tokio::runtime::Handle::current(), cmd, tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
}

/// Checks that `setpriv` and `timeout` can run here (start-up).
pub fn check_tools() -> Result<(), String> {
    for (tool, arg) in [("setpriv", "--version"), ("timeout", "--version")] {
        match std::process::Command::new(tool)
            .arg(arg)
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "{tool} {arg} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Err(e) => return Err(format!("{tool} is not runnable: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_watchdog_kills_what_outlives_its_limit() {
        let mut cmd = guarded(std::path::Path::new("sleep"), Duration::from_secs(1));
        cmd.arg("30");
        let started = std::time::Instant::now();
        let status = spawn(cmd).await.expect("spawn").wait().await.expect("wait");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!status.success(), "killed, not finished: {status:?}");
    }

    #[tokio::test]
    async fn children_come_from_the_spawner_thread() {
        let out = spawn({
            let mut c = tokio::process::Command::new("sh");
            c.args(["-c", "echo $PPID"])
                .stdout(std::process::Stdio::piped());
            c
        })
        .await
        .expect("spawn")
        .wait_with_output()
        .await
        .expect("output");
        // The parent is this process (the thread's process ID).
        let ppid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pid");
        assert_eq!(ppid, std::process::id());
    }
}
