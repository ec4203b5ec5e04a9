//! cgroup v1 handling for one sandbox.
//!
//! runsc only configures (and later deletes) controllers whose directory does not
//! exist yet. We pre-create memory, pids, cpu and cpuacct and write the limits
//! ourselves, so the directories survive the sandbox and we can read `oom_kill`,
//! peak memory, CPU time and `pids.events` afterwards — that is how an OOM kill is
//! told apart from a timeout (both end in SIGKILL).

use crate::error::SandboxError;
use std::path::{Path, PathBuf};

/// Parent of every sandbox cgroup (`cgroupsPath` = `/glassbox/<id>`).
pub const PARENT: &str = "glassbox";
/// Controllers we create and own.
pub const OWNED: &[&str] = &["memory", "pids", "cpu", "cpuacct"];
/// Every v1 hierarchy runsc may create a directory in.
pub const ALL: &[&str] = &[
    "memory", "pids", "cpu", "cpuacct", "blkio", "cpuset", "devices", "freezer", "systemd",
];

#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    id: String,
}

/// Counters read after the sandbox exited.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub oom_kills: u64,
    pub pids_max_hits: u64,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_ns: Option<u64>,
}

impl Cgroups {
    pub fn new(root: &Path, id: &str) -> Cgroups {
        Cgroups {
            root: root.to_owned(),
            id: id.to_owned(),
        }
    }

    /// `/glassbox/<id>`.
    pub fn cgroups_path(&self) -> String {
        format!("/{PARENT}/{}", self.id)
    }

    pub fn dir(&self, controller: &str) -> PathBuf {
        self.root.join(controller).join(PARENT).join(&self.id)
    }

    /// Fails unless this host has the cgroup v1 hierarchies we drive.
    pub fn check_host(root: &Path) -> Result<(), SandboxError> {
        for c in OWNED {
            if !root.join(c).join("tasks").exists() {
                return Err(SandboxError::Unsupported {
                    step: "start-up: cgroups",
                    detail: format!(
                        "cgroup v1 controller {c} not found under {} (cgroup v2-only hosts are not supported yet)",
                        root.display()
                    ),
                });
            }
        }
        Ok(())
    }

    fn write(
        &self,
        controller: &str,
        file: &str,
        value: &str,
        optional: bool,
    ) -> Result<(), SandboxError> {
        let path = self.dir(controller).join(file);
        match std::fs::write(&path, value) {
            Ok(()) => Ok(()),
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SandboxError::Cgroup {
                step: "configure cgroup",
                sandbox_id: self.id.clone(),
                path,
                source,
            }),
        }
    }

    /// Creates the owned controllers and writes the limits.
    pub fn create(
        &self,
        memory: u64,
        pids: u64,
        cpu_quota_us: u64,
        cpu_period_us: u64,
    ) -> Result<(), SandboxError> {
        for c in OWNED {
            let dir = self.dir(c);
            std::fs::create_dir_all(&dir).map_err(|source| SandboxError::Cgroup {
                step: "create cgroup",
                sandbox_id: self.id.clone(),
                path: dir.clone(),
                source,
            })?;
        }
        self.write(
            "memory",
            "memory.limit_in_bytes",
            &memory.to_string(),
            false,
        )?;
        // Present only with swap accounting; without swap there is nothing to cap.
        self.write(
            "memory",
            "memory.memsw.limit_in_bytes",
            &memory.to_string(),
            true,
        )?;
        self.write("memory", "memory.swappiness", "0", true)?;
        self.write("pids", "pids.max", &pids.to_string(), false)?;
        self.write(
            "cpu",
            "cpu.cfs_period_us",
            &cpu_period_us.to_string(),
            false,
        )?;
        self.write("cpu", "cpu.cfs_quota_us", &cpu_quota_us.to_string(), false)?;
        Ok(())
    }

    fn read(&self, controller: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir(controller).join(file)).ok()
    }

    fn keyed(text: &str, key: &str) -> Option<u64> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }

    pub fn stats(&self) -> Stats {
        Stats {
            oom_kills: self
                .read("memory", "memory.oom_control")
                .and_then(|t| Self::keyed(&t, "oom_kill"))
                .unwrap_or(0),
            pids_max_hits: self
                .read("pids", "pids.events")
                .and_then(|t| Self::keyed(&t, "max"))
                .unwrap_or(0),
            peak_memory_bytes: self
                .read("memory", "memory.max_usage_in_bytes")
                .and_then(|t| t.trim().parse().ok()),
            cpu_ns: self
                .read("cpuacct", "cpuacct.usage")
                .and_then(|t| t.trim().parse().ok()),
        }
    }

    /// Removes this sandbox's directory in every hierarchy (rmdir only: a cgroup
    /// directory is never emptied with rm -r). Returns what it removed.
    pub fn remove_all(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for c in ALL {
            let dir = self.dir(c);
            if !dir.exists() {
                continue;
            }
            for attempt in 0..50 {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {
                        removed.push(dir.clone());
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => {
                        // Tasks may still be exiting.
                        if attempt == 49 {
                            tracing::warn!(sandbox_id = %self.id, path = %dir.display(), error = %e, "cgroup not removed");
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_counters_parse() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(Cgroups::keyed(t, "oom_kill"), Some(3));
        assert_eq!(Cgroups::keyed("max 1\n", "max"), Some(1));
        assert_eq!(Cgroups::keyed("", "max"), None);
    }
}
