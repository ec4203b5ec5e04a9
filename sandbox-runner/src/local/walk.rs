//! Walks over trees a sandboxed program made: scrub (overwrite + unlink) and
//! collect (read `out/` without following links).
//!
//! Why this module exists: everything in a workspace is hostile — names, depth,
//! counts, sizes, sparse files. A recursive walk with a buffer on the stack per
//! level let a job with ~40 nested directories overflow the runner's stack and
//! abort the whole process (and the start-up sweep crashed on the same tree
//! again). So:
//! - every walk is **iterative** and works on directory **file descriptors**
//!   (`openat`/`unlinkat` relative to the parent), never on joined paths, so
//!   neither depth nor `PATH_MAX` matters and a symlink is never followed;
//! - the scrub keeps **one** directory open at a time and climbs back with
//!   `..` (the sandbox is gone, nothing moves the tree under us), so its memory
//!   and descriptors are O(1) in the depth;
//! - the collector descends at most [`MAX_COLLECT_DEPTH`] levels;
//! - both stop after a bounded number of entries ([`MAX_ENTRIES`]) and say so,
//!   and overwriting touches only the allocated extents of a file
//!   (`SEEK_DATA`/`SEEK_HOLE`), so a sparse 1 TB file costs nothing;
//! - nothing here returns a program-chosen name inside an error: errors name
//!   the step only (names are program data, DESIGN §5).

use crate::result::{CollectedFile, Skipped};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, SeekFrom};
use rustix::io::Errno;
use std::ffi::{CStr, CString};
use std::io::Read as _;
use std::path::Path;

/// Entries a single walk visits at most (the workspace tmpfs also caps inodes).
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Directory levels below `out/` that collection descends into.
pub const MAX_COLLECT_DEPTH: usize = 16;
/// `skipped` entries kept in a result (the rest are only counted).
pub const MAX_SKIPPED_LISTED: usize = 256;

static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

fn open_dir_at(dir: impl AsFd, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn open_root(root: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The names in a directory (without `.` and `..`), at most `budget` of them.
fn names(dir: &OwnedFd, budget: &mut u64) -> rustix::io::Result<Vec<CString>> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        if is_dot(e.file_name()) {
            continue;
        }
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        out.push(e.file_name().to_owned());
    }
    Ok(out)
}

/// What [`scrub`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Bytes overwritten with zeros.
    pub bytes: u64,
    /// Regular files overwritten.
    pub files: u64,
    /// Everything under the root was removed.
    pub complete: bool,
    /// Why not, when not (a step, never a program's name).
    pub error: Option<String>,
}

/// Overwrites the allocated extents of an open regular file with zeros and
/// syncs it; returns the bytes written.
fn zero_extents(fd: &OwnedFd, size: u64) -> u64 {
    let mut written = 0u64;
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(_) => break, // ENXIO: no more data after `pos`
        };
        let end = rustix::fs::seek(fd, SeekFrom::Hole(start))
            .unwrap_or(size)
            .min(size);
        let mut at = start;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            match rustix::io::pwrite(fd, &ZEROS[..n], at) {
                Ok(0) | Err(_) => return written,
                Ok(k) => {
                    at += k as u64;
                    written += k as u64;
                }
            }
        }
        pos = end.max(start + 1);
    }
    let _ = rustix::fs::fdatasync(fd);
    written
}

/// One directory level of a scrub: its non-empty subdirectories still to
/// visit, and the one being visited (removed when the walk climbs back).
#[derive(Default)]
struct Level {
    pending: Vec<CString>,
    child: Option<CString>,
}

/// Scrubs the entries of one directory: overwrites and unlinks files, unlinks
/// everything else that is not a directory, removes empty directories and
/// queues the others on `level`. Returns (entries seen, entries removed or queued).
fn scrub_entries(
    cur: &OwnedFd,
    level: &mut Level,
    budget: &mut u64,
    report: &mut ScrubReport,
) -> rustix::io::Result<(usize, usize)> {
    let entries = names(cur, budget)?;
    let mut progressed = 0;
    for name in &entries {
        let Ok(st) = rustix::fs::statat(cur, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                match rustix::fs::unlinkat(cur, name.as_c_str(), AtFlags::REMOVEDIR) {
                    Ok(()) => progressed += 1,
                    Err(Errno::NOTEMPTY | Errno::EXIST) => {
                        level.pending.push(name.clone());
                        progressed += 1;
                    }
                    Err(_) => {}
                }
            }
            kind => {
                if kind == FileType::RegularFile
                    && let Ok(fd) = rustix::fs::openat(
                        cur,
                        name.as_c_str(),
                        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                {
                    report.bytes += zero_extents(&fd, st.st_size.max(0) as u64);
                    report.files += 1;
                }
                if rustix::fs::unlinkat(cur, name.as_c_str(), AtFlags::empty()).is_ok() {
                    progressed += 1;
                }
            }
        }
    }
    Ok((entries.len(), progressed))
}

/// Overwrites every regular file under `root` with zeros (allocated extents
/// only), then unlinks everything below `root` (not `root` itself). Symlinks
/// are unlinked, never followed. Iterative with one directory descriptor open
/// at a time (it climbs back through `..`); besides that it keeps, per level,
/// the names of subdirectories still to visit — bounded by the entries that
/// exist, never by the stack. At most `max_entries` entries are looked at.
pub fn scrub(root: &Path, max_entries: u64) -> ScrubReport {
    let mut report = ScrubReport::default();
    let mut cur = match open_root(root) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            report.complete = true;
            return report;
        }
        Err(e) => {
            report.error = Some(format!("open the workspace: {e}"));
            return report;
        }
    };
    let mut budget = max_entries;
    let mut levels = vec![Level::default()];
    let mut stuck = 0u64;
    let mut scan = true;
    while let Some(level) = levels.last_mut() {
        if scan {
            scan = false;
            match scrub_entries(&cur, level, &mut budget, &mut report) {
                Ok((seen, progressed)) => {
                    if seen > progressed {
                        stuck += (seen - progressed) as u64;
                    }
                }
                Err(e) => {
                    report.error = Some(format!("read a directory: {e}"));
                    return report;
                }
            }
            if budget == 0 {
                report.error = Some(format!(
                    "stopped after {max_entries} entries; the rest goes with the tmpfs"
                ));
                return report;
            }
        }
        if let Some(name) = level.pending.pop() {
            match open_dir_at(&cur, name.as_c_str()) {
                Ok(fd) => {
                    level.child = Some(name);
                    levels.push(Level::default());
                    cur = fd;
                    scan = true;
                }
                Err(_) => stuck += 1,
            }
            continue;
        }
        // Nothing left to visit here: look once more (a directory that was
        // changed while it was read may list more), then climb.
        let mut again = Level::default();
        match scrub_entries(&cur, &mut again, &mut budget, &mut report) {
            Ok((seen, progressed)) if seen > 0 && progressed > 0 => {
                level.pending = again.pending;
                continue;
            }
            Ok((seen, _)) => stuck += seen as u64,
            Err(_) => stuck += 1,
        }
        if levels.len() == 1 {
            break;
        }
        levels.pop();
        match open_dir_at(&cur, c"..") {
            Ok(parent) => cur = parent,
            Err(e) => {
                report.error = Some(format!("climb out of a directory: {e}"));
                return report;
            }
        }
        if let Some(child) = levels.last_mut().and_then(|l| l.child.take())
            && rustix::fs::unlinkat(&cur, child.as_c_str(), AtFlags::REMOVEDIR).is_err()
        {
            stuck += 1;
        }
    }
    if budget == 0 {
        report.error = Some(format!(
            "stopped after {max_entries} entries; the rest goes with the tmpfs"
        ));
    } else if stuck > 0 {
        report.error = Some(format!("{stuck} entries could not be removed"));
    } else {
        report.complete = true;
    }
    report
}

/// What [`collect`] found.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub files: Vec<CollectedFile>,
    /// More files or bytes were there than the limits allow.
    pub truncated: bool,
    /// Up to [`MAX_SKIPPED_LISTED`] things not collected, with the reason.
    pub skipped: Vec<Skipped>,
    /// All things not collected.
    pub skipped_total: u64,
}

impl Collected {
    fn skip(&mut self, path: String, reason: &str) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push(Skipped {
                path,
                reason: reason.to_owned(),
            });
        }
    }
}

struct Frame {
    fd: OwnedFd,
    prefix: String,
    entries: Vec<CString>,
    next: usize,
}

/// Collects regular files under `root/out`, in name order, never following a
/// symlink, at most `max_files` files and `max_bytes` bytes, at most
/// [`MAX_COLLECT_DEPTH`] levels deep and [`MAX_ENTRIES`] entries in all.
/// Names that are not UTF-8 are skipped (paths are shown to clients as text).
pub fn collect(root: &Path, max_files: u64, max_bytes: u64) -> Collected {
    let mut c = Collected::default();
    let root_fd = match open_root(root) {
        Ok(fd) => fd,
        Err(_) => return c,
    };
    let out = match open_dir_at(&root_fd, c"out") {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return c,
        Err(_) => {
            c.skip(".".into(), "/workspace/out is not a directory");
            return c;
        }
    };
    let mut budget = MAX_ENTRIES;
    let mut bytes_left = max_bytes;
    let mut entries = names(&out, &mut budget).unwrap_or_default();
    entries.sort();
    let mut stack = vec![Frame {
        fd: out,
        prefix: String::new(),
        entries,
        next: 0,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.entries.get(top.next).cloned() else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let depth = stack.len();
        let Some(top) = stack.last() else { break };
        let Ok(text) = name.to_str() else {
            c.skip(
                format!("{}<not UTF-8>", top.prefix),
                "file name is not UTF-8",
            );
            continue;
        };
        let rel = format!("{}{text}", top.prefix);
        let Ok(st) = rustix::fs::statat(&top.fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => c.skip(rel, "symbolic link (not followed)"),
            FileType::Directory => {
                if depth > MAX_COLLECT_DEPTH {
                    c.skip(rel, "directory nesting too deep");
                    continue;
                }
                let Ok(fd) = open_dir_at(&top.fd, name.as_c_str()) else {
                    c.skip(rel, "directory could not be opened");
                    continue;
                };
                let mut entries = match names(&fd, &mut budget) {
                    Ok(e) => e,
                    Err(_) => {
                        c.skip(rel, "directory could not be read");
                        continue;
                    }
                };
                entries.sort();
                stack.push(Frame {
                    fd,
                    prefix: format!("{rel}/"),
                    entries,
                    next: 0,
                });
            }
            FileType::RegularFile => {
                if c.files.len() as u64 >= max_files {
                    c.truncated = true;
                    c.skip(rel, "output file count limit reached");
                    continue;
                }
                let Ok(fd) = rustix::fs::openat(
                    &top.fd,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                ) else {
                    c.skip(rel, "could not be opened without following links");
                    continue;
                };
                let Ok(st) = rustix::fs::fstat(&fd) else {
                    continue;
                };
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    c.skip(rel, "not a regular file");
                    continue;
                }
                let size = st.st_size.max(0) as u64;
                let take = size.min(bytes_left);
                let mut content = Vec::with_capacity(take.min(1 << 20) as usize);
                if std::fs::File::from(fd)
                    .take(take)
                    .read_to_end(&mut content)
                    .is_err()
                {
                    c.skip(rel, "read failed");
                    continue;
                }
                bytes_left -= content.len() as u64;
                let cut = (content.len() as u64) < size;
                c.truncated |= cut;
                c.files.push(CollectedFile {
                    path: rel,
                    content,
                    size_bytes: size,
                    truncated: cut,
                });
            }
            _ => c.skip(rel, "not a regular file"),
        }
        if budget == 0 {
            c.truncated = true;
            c.skip(String::new(), "too many entries in /workspace/out");
            break;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gb-walk-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// A tree deeper than PATH_MAX allows, built with descriptors.
    fn deep_tree(root: &Path, levels: usize, name_len: usize) {
        let name = CString::new(vec![b'd'; name_len]).expect("name");
        let mut cur = open_root(root).expect("open");
        for i in 0..levels {
            rustix::fs::mkdirat(&cur, name.as_c_str(), Mode::from_raw_mode(0o755)).expect("mkdir");
            cur = open_dir_at(&cur, name.as_c_str()).expect("open child");
            if i % 100 == 0 {
                let f = rustix::fs::openat(
                    &cur,
                    c"f",
                    OFlags::WRONLY | OFlags::CREATE,
                    Mode::from_raw_mode(0o644),
                )
                .expect("file");
                rustix::io::write(&f, b"secret data").expect("write");
            }
        }
    }

    #[test]
    fn scrub_removes_a_tree_deeper_than_path_max_without_recursion() {
        let root = tmp("deep");
        // 1,000 levels of 200-byte names: ~200 KB of path, far over PATH_MAX.
        deep_tree(&root, 1000, 200);
        let r = scrub(&root, MAX_ENTRIES);
        assert!(r.complete, "{r:?}");
        assert_eq!(r.files, 10);
        assert_eq!(r.bytes, 10 * 11);
        assert_eq!(std::fs::read_dir(&root).expect("ls").count(), 0);
        std::fs::remove_dir(&root).expect("rmdir");
    }

    #[test]
    fn scrub_unlinks_symlinks_without_following_them() {
        let root = tmp("links");
        let outside = tmp("outside");
        std::fs::write(outside.join("keep"), b"precious").expect("write");
        symlink(outside.join("keep"), root.join("link")).expect("symlink");
        symlink(&outside, root.join("dirlink")).expect("symlink");
        let r = scrub(&root, MAX_ENTRIES);
        assert!(r.complete, "{r:?}");
        assert_eq!(r.files, 0);
        assert_eq!(
            std::fs::read(outside.join("keep")).expect("still there"),
            b"precious"
        );
        std::fs::remove_dir_all(&outside).expect("cleanup");
        std::fs::remove_dir(&root).expect("rmdir");
    }

    #[test]
    fn scrub_of_a_sparse_file_writes_only_its_data() {
        let root = tmp("sparse");
        let f = std::fs::File::create(root.join("sparse")).expect("create");
        f.set_len(1 << 40).expect("1 TB sparse");
        std::fs::write(root.join("small"), b"0123456789").expect("write");
        let r = scrub(&root, MAX_ENTRIES);
        assert!(r.complete, "{r:?}");
        assert_eq!(r.files, 2);
        assert!(r.bytes < 1 << 20, "wrote {} bytes", r.bytes);
        std::fs::remove_dir(&root).expect("rmdir");
    }

    #[test]
    fn scrub_stops_at_its_entry_budget_and_says_so() {
        let root = tmp("budget");
        for i in 0..50 {
            std::fs::write(root.join(format!("f{i}")), b"x").expect("write");
        }
        let r = scrub(&root, 10);
        assert!(!r.complete);
        assert!(
            r.error
                .as_deref()
                .unwrap_or("")
                .contains("stopped after 10")
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn collect_is_bounded_in_depth_and_never_follows_links() {
        let root = tmp("collect");
        let out = root.join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        deep_tree(&out, 300, 100);
        std::fs::write(out.join("a.txt"), b"hello").expect("write");
        symlink("/etc/passwd", out.join("passwd")).expect("symlink");
        let c = collect(&root, 64, 1 << 20);
        let paths: Vec<&str> = c.files.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains(&"a.txt"), "{paths:?}");
        // Files at levels 1 (index 0) collected; deeper than 16 levels skipped.
        assert!(
            paths
                .iter()
                .all(|p| p.matches('/').count() <= MAX_COLLECT_DEPTH)
        );
        assert!(c.skipped.iter().any(|s| s.reason.contains("too deep")));
        assert!(
            c.skipped
                .iter()
                .any(|s| s.path == "passwd" && s.reason.contains("symbolic"))
        );
        assert!(!c.files.iter().any(|f| f.content.starts_with(b"root:")));
        let r = scrub(&root, MAX_ENTRIES);
        assert!(r.complete, "{r:?}");
        std::fs::remove_dir(&root).expect("rmdir");
    }

    #[test]
    fn collect_caps_files_bytes_and_the_skipped_list() {
        let root = tmp("caps");
        let out = root.join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        for i in 0..400 {
            std::fs::write(out.join(format!("f{i:03}")), vec![b'x'; 100]).expect("write");
        }
        let c = collect(&root, 10, 250);
        assert_eq!(c.files.len(), 10);
        assert!(c.truncated);
        let bytes: usize = c.files.iter().map(|f| f.content.len()).sum();
        assert_eq!(bytes, 250);
        assert_eq!(c.skipped_total, 390);
        assert_eq!(c.skipped.len(), MAX_SKIPPED_LISTED);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
