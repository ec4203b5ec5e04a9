//! The per-execution workspace: a size-limited tmpfs on the host, bound into the
//! sandbox at `/workspace`. Inputs go in before the run; outputs come out of
//! `/workspace/out` afterwards without following symlinks (the sandbox can plant
//! a link to any host path); at teardown every file is overwritten with zeros
//! before it is unlinked and the tmpfs unmounted.

use crate::error::SandboxError;
use crate::result::{CollectedFile, Skipped, Teardown};
use crate::spec::ExecutionSpec;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
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

/// Mounts a fresh tmpfs of `size` bytes at `dir`, owned by the sandbox user.
pub fn mount(id: &str, dir: &Path, size: u64) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir).map_err(io("create workspace", id, dir))?;
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={size},mode=0755,nosuid,nodev"))
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

/// Is `dir` a mount point (per /proc/self/mountinfo)?
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

fn write_file(
    id: &str,
    root: &Path,
    rel: &str,
    content: &[u8],
    mode: u32,
) -> Result<(), SandboxError> {
    let path = root.join(rel);
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
                std::fs::create_dir(&dir).map_err(io("write inputs", id, &dir))?;
                std::os::unix::fs::chown(&dir, Some(SANDBOX_UID), Some(SANDBOX_UID))
                    .map_err(io("write inputs", id, &dir))?;
            }
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io("write inputs", id, &path))?;
    f.write_all(content)
        .map_err(io("write inputs", id, &path))?;
    std::os::unix::fs::chown(&path, Some(SANDBOX_UID), Some(SANDBOX_UID)).map_err(io(
        "write inputs",
        id,
        &path,
    ))
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
            return Err(SandboxError::InvalidSpec(format!(
                "file {} would overwrite the program",
                f.path
            )));
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
        let mut req = w.requirements.join("\n");
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

/// Collects regular files under `out/`, never following a symlink, within the caps.
pub fn collect(
    root: &Path,
    max_files: u64,
    max_bytes: u64,
) -> (Vec<CollectedFile>, bool, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut truncated = false;
    let mut budget = max_bytes;
    let out = root.join("out");
    match std::fs::symlink_metadata(&out) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            skipped.push(Skipped {
                path: ".".into(),
                reason: "/workspace/out is not a directory".into(),
            });
            return (files, truncated, skipped);
        }
        Err(_) => return (files, truncated, skipped),
    }
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(out, String::new(), 0)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                skipped.push(Skipped {
                    path: rel,
                    reason: "symbolic link (not followed)".into(),
                });
                continue;
            }
            if meta.is_dir() {
                if depth >= 16 {
                    skipped.push(Skipped {
                        path: rel,
                        reason: "directory nesting too deep".into(),
                    });
                } else {
                    stack.push((e.path(), rel, depth + 1));
                }
                continue;
            }
            if !meta.is_file() {
                skipped.push(Skipped {
                    path: rel,
                    reason: "not a regular file".into(),
                });
                continue;
            }
            if files.len() as u64 >= max_files {
                truncated = true;
                skipped.push(Skipped {
                    path: rel,
                    reason: "output file count limit reached".into(),
                });
                continue;
            }
            let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(e.path())
            else {
                skipped.push(Skipped {
                    path: rel,
                    reason: "could not be opened without following links".into(),
                });
                continue;
            };
            let size = meta.len();
            let take = size.min(budget);
            let mut content = Vec::with_capacity(take as usize);
            if f.take(take).read_to_end(&mut content).is_err() {
                skipped.push(Skipped {
                    path: rel,
                    reason: "read failed".into(),
                });
                continue;
            }
            budget -= content.len() as u64;
            let cut = (content.len() as u64) < size;
            truncated |= cut;
            files.push(CollectedFile {
                path: rel,
                content,
                size_bytes: size,
                truncated: cut,
            });
        }
    }
    (files, truncated, skipped)
}

/// Overwrites every regular file with zeros (and syncs), then unlinks everything.
/// Symlinks are unlinked, never followed. Returns (bytes, files) scrubbed.
pub fn scrub(root: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0u64, 0u64);
    let Ok(entries) = std::fs::read_dir(root) else {
        return (0, 0);
    };
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let (b, f) = scrub(&path);
            bytes += b;
            files += f;
            let _ = std::fs::remove_dir(&path);
            continue;
        }
        if meta.is_file()
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        {
            let zeros = [0u8; 64 * 1024];
            let mut left = meta.len();
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                if f.write_all(&zeros[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
            let _ = f.sync_data();
            bytes += meta.len() - left;
            files += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    (bytes, files)
}

/// Scrubs, unmounts and removes a workspace directory.
pub fn destroy(id: &str, dir: &Path) -> Result<Teardown, SandboxError> {
    if !dir.exists() {
        return Ok(Teardown {
            method: SCRUB_METHOD.into(),
            bytes_scrubbed: 0,
            files_scrubbed: 0,
        });
    }
    let (bytes, files) = scrub(dir);
    if is_mounted(dir) {
        run(Command::new("umount").arg(dir))
            .or_else(|_| run(Command::new("umount").arg("-l").arg(dir)))
            .map_err(|detail| SandboxError::Mount {
                step: "unmount workspace",
                sandbox_id: id.to_owned(),
                path: dir.to_owned(),
                detail,
            })?;
    }
    std::fs::remove_dir(dir).map_err(io("remove workspace", id, dir))?;
    Ok(Teardown {
        method: SCRUB_METHOD.into(),
        bytes_scrubbed: bytes,
        files_scrubbed: files,
    })
}
