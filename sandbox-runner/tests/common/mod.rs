//! Helpers shared by the sandbox tests: a backend of a fresh runner ID under
//! `/run/glassbox-test`, and the check that a sandbox left nothing behind.
#![allow(dead_code)]

use glassbox_sandbox_runner::result::ExecutionResult;
use glassbox_sandbox_runner::{
    CancellationToken, ExecutionSpec, LocalConfig, LocalRunsc, SandboxBackend,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const BASE: &str = "/run/glassbox-test";

pub fn runner_id() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub fn config(id: &str) -> LocalConfig {
    LocalConfig {
        runner_id: id.to_owned(),
        base_dir: PathBuf::from(BASE),
        ..LocalConfig::default()
    }
}

pub async fn backend() -> LocalRunsc {
    LocalRunsc::start(config(&runner_id()))
        .await
        .expect("runsc backend starts (is runsc installed and are we root?)")
        .0
}

pub fn spec(lang: &str, code: &str) -> ExecutionSpec {
    ExecutionSpec::new(lang, code)
}

pub async fn run(b: &LocalRunsc, s: ExecutionSpec) -> ExecutionResult {
    b.execute(s, CancellationToken::new())
        .await
        .expect("execution")
}

/// Everything an execution created is gone: runsc state, processes, cgroups,
/// bundle, workspace directory and mount.
pub fn leftovers(b: &LocalRunsc, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(entries) = std::fs::read_dir(b.state_dir()) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with(id) {
                left.push(format!("runsc state {}", e.path().display()));
            }
        }
    }
    let out = std::process::Command::new("runsc")
        .arg("--root")
        .arg(b.state_dir())
        .args(["list", "-quiet"])
        .output()
        .expect("runsc list");
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == id)
    {
        left.push("runsc list".into());
    }
    for p in std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(Result::ok)
    {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(id)
        {
            left.push(format!("process {}", p.file_name().to_string_lossy()));
        }
    }
    for c in [
        "memory", "pids", "cpu", "cpuacct", "blkio", "cpuset", "devices", "freezer", "systemd",
    ] {
        let d = Path::new("/sys/fs/cgroup")
            .join(c)
            .join("glassbox")
            .join(id);
        if d.exists() {
            left.push(format!("cgroup {}", d.display()));
        }
    }
    if b.bundle_dir(id).exists() {
        left.push("bundle".into());
    }
    if b.workspace_dir(id).exists() {
        left.push("workspace dir".into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    if mounts.contains(id) {
        left.push("mount".into());
    }
    left
}

pub async fn assert_gone(b: &LocalRunsc, id: &str) {
    // Abandoned executions clean up on a background thread: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = leftovers(b, id);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("left behind by {id}: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
