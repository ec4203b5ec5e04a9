//! What to run: code, inputs and limits. Validated before anything touches the host.

use crate::error::SandboxError;
use glassbox_domain::request::{EnvName, PackageSpec, WorkspacePath};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A file placed in `/workspace` before the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Relative path inside `/workspace` (no `..`, not absolute).
    pub path: String,
    pub content: Vec<u8>,
    #[serde(default)]
    pub executable: bool,
}

/// Hard limits of one execution. Integer units only (they end up in the ledger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub wall_time_ms: u64,
    /// CPU in thousandths of a core (1000 = one core).
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    /// Processes the sandboxed user may have (RLIMIT_NPROC).
    pub processes: u64,
    pub workspace_bytes: u64,
    pub tmp_bytes: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Total bytes collected from `/workspace/out`.
    pub output_bytes: u64,
    /// Files collected from `/workspace/out`.
    pub output_files: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            wall_time_ms: 10_000,
            cpu_millicores: 1000,
            memory_bytes: 256 << 20,
            processes: 64,
            workspace_bytes: 64 << 20,
            tmp_bytes: 64 << 20,
            stdout_bytes: 1 << 20,
            stderr_bytes: 1 << 20,
            output_bytes: 8 << 20,
            output_files: 64,
        }
    }
}

impl Limits {
    pub fn wall_time(&self) -> Duration {
        Duration::from_millis(self.wall_time_ms)
    }

    pub fn validate(&self) -> Result<(), SandboxError> {
        let bad = |what: &str| Err(SandboxError::InvalidSpec(what.to_owned()));
        if self.wall_time_ms == 0 {
            return bad("wall_time_ms must be positive");
        }
        type L = glassbox_events::catalogue::Limits;
        if self.cpu_millicores < L::MIN_CPU_MILLICORES {
            return bad("cpu_millicores must be at least 10");
        }
        if self.memory_bytes < L::MIN_MEMORY_BYTES {
            return bad("memory_bytes must be at least 16 MiB");
        }
        if self.processes == 0 || self.processes > L::MAX_PROCESSES {
            return bad("processes must be between 1 and 4096");
        }
        if self.workspace_bytes < L::MIN_WORKSPACE_BYTES || self.tmp_bytes < L::MIN_TMP_BYTES {
            return bad("workspace_bytes and tmp_bytes must be at least 1 MiB");
        }
        Ok(())
    }
}

/// One execution: the action the core is asked to carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionSpec {
    /// A language of the runtime registry (`python`, `node`, `bash`, …).
    pub language: String,
    /// The main program, written to the runtime's file name.
    pub code: Vec<u8>,
    #[serde(default)]
    pub files: Vec<InputFile>,
    #[serde(default)]
    pub stdin: Vec<u8>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Non-secret environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
    /// Python packages to install inside the sandbox before the program runs,
    /// from a host directory of vetted wheels mounted read-only at
    /// [`WHEEL_MOUNT`] (no index, no network). Set by the trusted runner after
    /// each package passed `glassbox.dependencies`, never by a client.
    #[serde(default)]
    pub wheels: Option<WheelInstall>,
    /// Egress through the runner's proxy for this sandbox (set by the trusted
    /// runner, never by a client): the host directory holding the proxy's Unix
    /// socket ([`EGRESS_SOCKET`] inside), bound read-only at [`EGRESS_MOUNT`]
    /// and reached with runsc's `--host-uds=open`; the session agent binary
    /// runs the in-sandbox forwarder that `HTTP(S)_PROXY` points at.
    #[serde(default)]
    pub egress: Option<EgressPath>,
}

/// How a sandbox reaches its egress proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPath {
    /// Host directory with the proxy's socket.
    pub socket_dir: std::path::PathBuf,
    /// The session agent binary (runs the forwarder).
    pub agent: std::path::PathBuf,
    /// Service mode (sessions): the forwarder also offers connections to the
    /// runner's [`SERVICE_SOCKET`] in the same directory, through which the
    /// runner reaches ports on the sandbox's loopback.
    #[serde(default)]
    pub services: bool,
}

/// The runner's service socket's file name in the egress directory.
pub const SERVICE_SOCKET: &str = "service.sock";

/// Where the egress socket directory appears inside the sandbox (a mount point
/// every runtime image carries).
pub const EGRESS_MOUNT: &str = "/run/egress";
/// The proxy's socket file name in that directory.
pub const EGRESS_SOCKET: &str = "proxy.sock";
/// Where the forwarder listens inside the sandbox (what `HTTP(S)_PROXY` name).
pub const EGRESS_LISTEN: &str = "127.0.0.1:3128";

/// Where the wheel mirror appears inside the sandbox.
pub const WHEEL_MOUNT: &str = "/mnt/wheels";
/// Where packages are installed inside the sandbox (on `PYTHONPATH`).
pub const WHEEL_TARGET: &str = "/workspace/.deps";
/// The exit code of a sandbox whose package installation failed.
pub const WHEEL_INSTALL_FAILED: i32 = 97;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WheelInstall {
    /// Host directory of `.whl` files.
    pub mirror: std::path::PathBuf,
    /// `name` or `name==version`.
    pub requirements: Vec<String>,
}

impl ExecutionSpec {
    pub fn new(language: impl Into<String>, code: impl Into<Vec<u8>>) -> ExecutionSpec {
        ExecutionSpec {
            language: language.into(),
            code: code.into(),
            files: Vec::new(),
            stdin: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            limits: Limits::default(),
            wheels: None,
            egress: None,
        }
    }

    pub fn validate(&self) -> Result<(), SandboxError> {
        self.limits.validate()?;
        for f in &self.files {
            check_relative_path(&f.path)?;
        }
        for (k, v) in &self.env {
            if EnvName::parse(k).is_err() {
                // Not echoed: names are the caller's data and errors can be recorded.
                return Err(SandboxError::InvalidSpec(
                    "an environment variable name is invalid".into(),
                ));
            }
            if v.contains('\0') {
                return Err(SandboxError::InvalidSpec(
                    "an environment variable's value contains NUL".into(),
                ));
            }
        }
        if let Some(w) = &self.wheels {
            if !w.mirror.is_absolute() || !w.mirror.is_dir() {
                return Err(SandboxError::InvalidSpec(format!(
                    "wheel mirror {} is not an absolute directory",
                    w.mirror.display()
                )));
            }
            for r in &w.requirements {
                // The rules every entry point applies to a package.
                let (name, version) = match r.split_once("==") {
                    Some((n, v)) => (n, Some(v)),
                    None => (r.as_str(), None),
                };
                if PackageSpec::parse("pypi", name, version).is_err() {
                    return Err(SandboxError::InvalidSpec(format!(
                        "requirement {r:?} is not name[==version]"
                    )));
                }
            }
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(SandboxError::InvalidSpec("an argument contains NUL".into()));
        }
        let input: u64 = self.code.len() as u64
            + self
                .files
                .iter()
                .map(|f| f.content.len() as u64)
                .sum::<u64>();
        if input > self.limits.workspace_bytes {
            return Err(SandboxError::InvalidSpec(format!(
                "code and files ({input} bytes) exceed the workspace size ({} bytes)",
                self.limits.workspace_bytes
            )));
        }
        Ok(())
    }
}

/// Accepts `a/b.txt`; refuses absolute paths, `..`, `.` and empty
/// components, control characters and backslashes (the domain's
/// [`WorkspacePath`] rule, which every entry point shares).
pub fn check_relative_path(path: &str) -> Result<(), SandboxError> {
    WorkspacePath::parse(path).map(|_| ()).map_err(|_| {
        SandboxError::InvalidSpec(
            "an input file path must be relative, without `..` or empty components".into(),
        )
    })
}

/// Parses `256M`, `1G`, `512k`, `1048576` (binary units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let mult = match s[i..]
                .to_ascii_lowercase()
                .trim_end_matches("ib")
                .trim_end_matches('b')
            {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                other => return Err(format!("unknown size unit {other:?} in {s:?}")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses `5s`, `500ms`, `2m`, `10` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split]
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    Ok(match &s[split..] {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("42"), Ok(42));
        assert!(parse_bytes("12Q").is_err());
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn paths_and_env_are_checked() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "",
            "./a",
            "a\nb",
            "a\\b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad}");
        }
        assert!(check_relative_path("data/in.csv").is_ok());
        let mut s = ExecutionSpec::new("python", "print(1)");
        s.env.insert("1BAD".into(), "x".into());
        assert!(s.validate().is_err());
        let mut s = ExecutionSpec::new("python", "print(1)");
        s.limits.memory_bytes = 1024;
        assert!(s.validate().is_err());
        for (requirement, ok) in [
            ("six", true),
            ("six==1.16.0", true),
            ("-e", false),
            ("x==", false),
            ("x==1 0", false),
        ] {
            let mut s = ExecutionSpec::new("python", "print(1)");
            s.wheels = Some(WheelInstall {
                mirror: std::env::temp_dir(),
                requirements: vec![requirement.into()],
            });
            assert_eq!(s.validate().is_ok(), ok, "{requirement}");
        }
    }
}
