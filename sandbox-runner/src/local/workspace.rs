//! The per-execution workspace: a size-limited tmpfs on the host, bound into the
//! sandbox at `/workspace`. Inputs go in before the run; outputs come out of
//! `/workspace/out` afterwards without following symlinks (the sandbox can plant
//! a link to any host path); at teardown every file is overwritten with zeros
//! before it is unlinked and the tmpfs unmounted.

use super::walk;
use crate::error::SandboxError;
use crate::result::Teardown;
use crate::spec::ExecutionSpec;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Command;

use super::oci::SANDBOX_UID;

/// How teardown destroys data (recorded in `workspace.destroyed`).
pub const SCRUB_METHOD: &str = "zero-overwrite+unlink+umount-tmpfs";

fn io(step: &'static str, id: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let (id, path) = (id.to_owned(), path.to_owned());
    move |source| SandboxError::Io {
        step,
        sandbox_id: id,
        path,
        source,
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Files and directories a workspace of `size` bytes may hold: one per KiB,
/// at least 16,384, at most 1,000,000 — so every walk over it is bounded.
pub fn inode_cap(size: u64) -> u64 {
    (size / 1024).clamp(16_384, walk::MAX_ENTRIES)
}

/// Mounts a fresh tmpfs of `size` bytes at `dir`, owned by the sandbox user.
pub fn mount(id: &str, dir: &Path, size: u64) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir).map_err(io("create workspace", id, dir))?;
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!(
            "size={size},nr_inodes={},mode=0755,nosuid,nodev",
            inode_cap(size)
        ))
        .arg("tmpfs")
        .arg(dir))
    .map_err(|detail| SandboxError::Mount {
        step: "mount workspace",
        sandbox_id: id.to_owned(),
        path: dir.to_owned(),
        detail,
    })?;
    std::os::unix::fs::chown(dir, Some(SANDBOX_UID), Some(SANDBOX_UID)).map_err(io(
        "chown workspace",
        id,
        dir,
    ))
}

/// The requirements file and the install target of packages installed from
/// the wheel mirror before the program (or a session's agent) starts.
pub fn write_requirements(
    id: &str,
    root: &Path,
    wheels: &crate::spec::WheelInstall,
) -> Result<(), SandboxError> {
    let mut req = wheels.requirements.join("\n");
    req.push('\n');
    write_file(
        id,
        root,
        ".glassbox/requirements.txt",
        req.as_bytes(),
        0o644,
    )?;
    let deps = root.join(".deps");
    if !deps.exists() {
        std::fs::create_dir(&deps).map_err(io("write inputs", id, &deps))?;
        std::os::unix::fs::chown(&deps, Some(SANDBOX_UID), Some(SANDBOX_UID)).map_err(io(
            "write inputs",
            id,
            &deps,
        ))?;
    }
    Ok(())
}

/// Is `dir` a mount point (per /proc/self/mountinfo)?
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

/// Writes one input file. Errors name the workspace, never the file: file
/// names are the caller's data and errors can end up in the ledger.
fn write_file(
    id: &str,
    root: &Path,
    rel: &str,
    content: &[u8],
    mode: u32,
) -> Result<(), SandboxError> {
    let path = root.join(rel);
    let io = |step| io(step, id, root);
    if let Some(parent) = path.parent() {
        // Create each parent owned by the sandbox user.
        let mut dir = root.to_path_buf();
        for part in parent
            .strip_prefix(root)
            .unwrap_or(Path::new(""))
            .components()
        {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).map_err(io("write inputs: create a directory"))?;
                std::os::unix::fs::chown(&dir, Some(SANDBOX_UID), Some(SANDBOX_UID))
                    .map_err(io("write inputs: chown a directory"))?;
            }
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io("write inputs: create a file"))?;
    f.write_all(content)
        .map_err(io("write inputs: write a file"))?;
    std::os::unix::fs::chown(&path, Some(SANDBOX_UID), Some(SANDBOX_UID))
        .map_err(io("write inputs: chown a file"))
}

/// Writes the code, the input files and an empty `out/`.
pub fn write_inputs(
    id: &str,
    root: &Path,
    file_name: &str,
    spec: &ExecutionSpec,
) -> Result<(), SandboxError> {
    write_file(id, root, file_name, &spec.code, 0o644)?;
    for f in &spec.files {
        if f.path == file_name {
            return Err(SandboxError::InvalidSpec(
                "an input file would overwrite the program".into(),
            ));
        }
        write_file(
            id,
            root,
            &f.path,
            &f.content,
            if f.executable { 0o755 } else { 0o644 },
        )?;
    }
    if let Some(w) = &spec.wheels {
        write_requirements(id, root, w)?;
    }
    let out = root.join("out");
    if !out.exists() {
        std::fs::create_dir(&out).map_err(io("write inputs", id, &out))?;
        std::os::unix::fs::chown(&out, Some(SANDBOX_UID), Some(SANDBOX_UID)).map_err(io(
            "write inputs",
            id,
            &out,
        ))?;
    }
    Ok(())
}

/// Collects regular files under `out/` (see [`walk::collect`]).
pub fn collect(root: &Path, max_files: u64, max_bytes: u64) -> walk::Collected {
    walk::collect(root, max_files, max_bytes)
}

/// Scrubs, unmounts and removes a workspace directory. Never fails: what could
/// not be done is in the returned [`Teardown`] (`complete: false`, `error`),
/// so one broken workspace is recorded and never stops a runner.
pub fn destroy(dir: &Path) -> Teardown {
    let mut t = Teardown {
        method: SCRUB_METHOD.into(),
        complete: true,
        ..Teardown::default()
    };
    if !dir.exists() {
        return t;
    }
    let r = walk::scrub(dir, walk::MAX_ENTRIES);
    t.bytes_scrubbed = r.bytes;
    t.files_scrubbed = r.files;
    let mut errors: Vec<String> = r.error.into_iter().collect();
    if is_mounted(dir) {
        let unmounted = run(Command::new("umount").arg(dir))
            .or_else(|_| run(Command::new("umount").arg("-l").arg(dir)));
        if let Err(detail) = unmounted {
            errors.push(format!("unmount workspace: {detail}"));
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        errors.push(format!("remove workspace directory: {e}"));
    }
    t.complete = errors.is_empty();
    t.error = (!errors.is_empty()).then(|| errors.join("; "));
    t
}
