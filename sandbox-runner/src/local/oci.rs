//! The OCI runtime spec (config.json) of one execution — the recipe measured in
//! docs/runsc-recipe.md: the runtime's image as the read-only root (never the host
//! `/` or `/usr`), tmpfs `/tmp` and `/dev/shm`, the per-execution `/workspace`,
//! uid/gid 65534, no capabilities, no new privileges.

use super::SandboxRoot;
use crate::runtime::Runtime;
use crate::spec::ExecutionSpec;
use serde_json::{Value, json};
use std::path::Path;

/// The unprivileged user and group inside every sandbox.
pub const SANDBOX_UID: u32 = 65534;

/// Host paths bound read-only into the host template (benchmark baseline only).
pub const BASE_BINDS: &[&str] = &["/usr", "/etc/ld.so.cache", "/etc/alternatives"];

/// The pids cgroup backstop. Under gVisor's ptrace platform every guest process
/// costs ~14 host tasks plus ~40 for the sandbox; RLIMIT_NPROC does the real
/// limiting, and reaching pids.max crashes the whole sandbox.
pub fn pids_backstop(processes: u64) -> u64 {
    (64 + 16 * processes).max(1024)
}

/// Where the session agent is bound read-only inside a session's sandbox.
pub const AGENT_MOUNT: &str = "/glassbox-agent";

/// The config of one execution: the runtime's command on the job's code.
pub fn config(
    spec: &ExecutionSpec,
    runtime: &Runtime,
    root: &SandboxRoot,
    workspace: &Path,
    cgroups_path: &str,
) -> Value {
    config_with(
        spec,
        runtime,
        runtime.argv(&spec.args),
        root,
        workspace,
        cgroups_path,
    )
}

/// The config of a session's sandbox: the same recipe, with the session agent
/// (bound read-only from `agent`) as its one process.
pub fn session_config(
    spec: &ExecutionSpec,
    runtime: &Runtime,
    agent: &Path,
    root: &SandboxRoot,
    workspace: &Path,
    cgroups_path: &str,
) -> Value {
    let mut argv = vec![
        AGENT_MOUNT.to_owned(),
        "--language".to_owned(),
        spec.language.clone(),
    ];
    if let Some(interpreter) = runtime.command.first() {
        argv.push("--interpreter".to_owned());
        argv.push(interpreter.clone());
    }
    let mut config = config_with(spec, runtime, argv, root, workspace, cgroups_path);
    // With egress the agent is already there (it is the forwarder too, which
    // runs the agent).
    if spec.egress.is_none()
        && let Some(mounts) = config["mounts"].as_array_mut()
    {
        mounts.push(
            json!({"destination": AGENT_MOUNT, "type": "bind", "source": agent,
                           "options": ["bind", "ro", "nosuid", "nodev"]}),
        );
    }
    config
}

fn config_with(
    spec: &ExecutionSpec,
    runtime: &Runtime,
    argv: Vec<String>,
    root: &SandboxRoot,
    workspace: &Path,
    cgroups_path: &str,
) -> Value {
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".into(),
        "HOME=/workspace".into(),
        "LANG=C.UTF-8".into(),
        "TMPDIR=/tmp".into(),
    ];
    env.extend(runtime.env.iter().map(|(k, v)| format!("{k}={v}")));
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let ro = |src: &str| json!({"destination": src, "type": "bind", "source": src, "options": ["rbind", "ro", "nosuid", "nodev"]});
    let limits = &spec.limits;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "noexec", "mode=755"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "nodev", "noexec", "mode=1777", format!("size={}", limits.tmp_bytes.min(16 << 20))]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", format!("size={}", limits.tmp_bytes)]}),
    ];
    if root.host_usr {
        mounts.extend(BASE_BINDS.iter().map(|b| ro(b)));
    }
    mounts.push(
        json!({"destination": "/workspace", "type": "bind", "source": workspace,
                       "options": ["rbind", "rw", "nosuid", "nodev"]}),
    );
    let mut args = argv;
    if let Some(w) = &spec.wheels {
        mounts.push(
            json!({"destination": crate::spec::WHEEL_MOUNT, "type": "bind", "source": w.mirror,
                           "options": ["rbind", "ro", "nosuid", "nodev"]}),
        );
        env.push(format!("PYTHONPATH={}", crate::spec::WHEEL_TARGET));
        env.push("PIP_NO_CACHE_DIR=1".into());
        env.push("PIP_DISABLE_PIP_VERSION_CHECK=1".into());
        // Install from the read-only mirror only (no index, no network), then
        // exec the program with its own argv; pip's log goes to stderr only on failure.
        let script = format!(
            "/usr/bin/python3 -m pip install --quiet --no-index --find-links {m} --target {t} -r /workspace/.glassbox/requirements.txt >/tmp/.pip.log 2>&1 || {{ cat /tmp/.pip.log >&2; exit {code}; }}; exec \"$@\"",
            m = crate::spec::WHEEL_MOUNT,
            t = crate::spec::WHEEL_TARGET,
            code = crate::spec::WHEEL_INSTALL_FAILED,
        );
        let mut wrapped = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            script,
            "glassbox-setup".to_owned(),
        ];
        wrapped.extend(args);
        args = wrapped;
    }
    if let Some(e) = &spec.egress {
        use crate::spec::{EGRESS_LISTEN, EGRESS_MOUNT, EGRESS_SOCKET};
        // The proxy's socket directory (runsc --host-uds=open lets the program
        // connect to the socket in it; the directory, not the file, so a proxy
        // that re-creates its socket stays reachable) and the forwarder.
        mounts.push(
            json!({"destination": EGRESS_MOUNT, "type": "bind", "source": e.socket_dir,
                   "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}),
        );
        mounts.push(
            json!({"destination": AGENT_MOUNT, "type": "bind", "source": e.agent,
                   "options": ["bind", "ro", "nosuid", "nodev"]}),
        );
        let proxy = format!("http://{EGRESS_LISTEN}");
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.push(format!("{k}={proxy}"));
        }
        let mut wrapped = vec![
            AGENT_MOUNT.to_owned(),
            "forward".to_owned(),
            EGRESS_LISTEN.to_owned(),
            format!("{EGRESS_MOUNT}/{EGRESS_SOCKET}"),
        ];
        if e.services {
            wrapped.push("--services".to_owned());
            wrapped.push(format!("{EGRESS_MOUNT}/{}", crate::spec::SERVICE_SOCKET));
        }
        wrapped.push("--".to_owned());
        wrapped.extend(args);
        args = wrapped;
    }
    if root.host_usr {
        // The host's /usr brings /usr/local along; hide its host configuration.
        mounts.push(
            json!({"destination": "/usr/local/etc", "type": "tmpfs", "source": "tmpfs",
                           "options": ["ro", "nosuid", "nodev", "noexec", "size=4k", "mode=755"]}),
        );
    }
    let caps: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.0",
        "process": {
            "terminal": false,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_UID, "additionalGids": []},
            "args": args,
            "env": env,
            "cwd": "/workspace",
            "capabilities": {"bounding": caps, "effective": caps, "inheritable": caps, "permitted": caps, "ambient": caps},
            "rlimits": [
                {"type": "RLIMIT_NPROC", "hard": limits.processes, "soft": limits.processes},
                {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": true,
        },
        "root": {"path": root.path, "readonly": true},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "resources": {
                "memory": {"limit": limits.memory_bytes},
                "cpu": {"quota": cpu_quota_us(limits.cpu_millicores), "period": CPU_PERIOD_US},
                "pids": {"limit": pids_backstop(limits.processes)},
            },
            "maskedPaths": [],
            "readonlyPaths": [],
            "cgroupsPath": cgroups_path,
        }
    })
}

pub const CPU_PERIOD_US: u64 = 100_000;

pub fn cpu_quota_us(millicores: u64) -> u64 {
    millicores * CPU_PERIOD_US / 1000
}

/// Creates the shared read-only root template (idempotent): symlinks into `/usr`,
/// empty mount points and a minimal `/etc`.
pub fn ensure_rootfs(root: &Path, extra_binds: &[&Path]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for d in [
        "usr",
        "etc/alternatives",
        "tmp",
        "workspace",
        "mnt/wheels",
        "proc",
        "dev",
        "sys",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        let p = root.join(link);
        if std::fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(target, &p)?;
        }
    }
    for (file, content) in [
        ("etc/ld.so.cache", ""),
        (AGENT_MOUNT.trim_start_matches('/'), ""),
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/workspace:/usr/sbin/nologin\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        (
            "etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n",
        ),
    ] {
        let p = root.join(file);
        if !p.exists() {
            std::fs::write(&p, content)?;
        }
    }
    for b in extra_binds {
        let rel = b.strip_prefix("/").unwrap_or(b);
        let target = root.join(rel);
        if target.exists() {
            continue;
        }
        if b.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, "")?;
        }
    }
    Ok(())
}
