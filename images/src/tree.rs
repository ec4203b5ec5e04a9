//! The canonical tar of a tree and its digest: what names an image.
//!
//! Entries in byte order of their paths, depth first, directory before its
//! contents; numeric owners, permission bits, modification time 0, no user or
//! group names; hard links written as files; anything but directories, regular
//! files and symbolic links is refused. Two trees with the same content therefore
//! have the same tar, byte for byte, and so the same SHA-256 — which is also the
//! `diff_id` of the exported OCI layer. Symbolic links are never followed, and a
//! file that changes size while being read is an error, not a corrupt tar.

use crate::ImageError;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// `sha256:<64 lowercase hex>`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ImageDigest(String);

impl ImageDigest {
    pub fn parse(s: &str) -> Result<ImageDigest, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("digest {s:?} must start with sha256:"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "digest {s:?} must be sha256: and 64 lowercase hex digits"
            ));
        }
        Ok(ImageDigest(s.to_owned()))
    }

    fn from_bytes(bytes: &[u8]) -> ImageDigest {
        ImageDigest(format!("sha256:{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex digits (tags, short listings).
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl std::fmt::Display for ImageDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ImageDigest {
    type Error = String;
    fn try_from(s: String) -> Result<ImageDigest, String> {
        ImageDigest::parse(&s)
    }
}

impl From<ImageDigest> for String {
    fn from(d: ImageDigest) -> String {
        d.0
    }
}

/// What hashing a tree found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSummary {
    pub digest: ImageDigest,
    /// Size of the canonical tar.
    pub tar_bytes: u64,
    /// Entries (directories, files and links).
    pub entries: u64,
    /// Bytes of file content.
    pub content_bytes: u64,
}

/// Hashes `root`'s canonical tar without writing it anywhere.
pub fn digest_tree(root: &Path, image: &str) -> Result<TreeSummary, ImageError> {
    write_canonical_tar(root, image, io::sink()).map(|(_, s)| s)
}

/// Writes `root`'s canonical tar to `out`, returning `out` and the summary.
pub fn write_canonical_tar<W: Write>(
    root: &Path,
    image: &str,
    out: W,
) -> Result<(W, TreeSummary), ImageError> {
    let hashing = Hashing {
        inner: out,
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    };
    let mut builder = tar::Builder::new(hashing);
    builder.follow_symlinks(false);
    let io_err = |path: &Path, step: &'static str| ImageError::io(image, step, path.to_owned());
    let mut entries = 0u64;
    let mut content_bytes = 0u64;
    // (absolute path, path inside the tar); popped in sorted depth-first order.
    let mut stack: Vec<(PathBuf, PathBuf)> = Vec::new();
    push_children(root, Path::new(""), &mut stack).map_err(io_err(root, "read directory"))?;
    while let Some((abs, rel)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&abs).map_err(io_err(&abs, "stat"))?;
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(0);
        let ft = meta.file_type();
        let written = if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            let r = builder.append_data(&mut header, &rel, io::empty());
            push_children(&abs, &rel, &mut stack).map_err(io_err(&abs, "read directory"))?;
            r
        } else if ft.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            content_bytes += meta.len();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&abs)
                .map_err(io_err(&abs, "open"))?;
            builder.append_data(
                &mut header,
                &rel,
                Exact {
                    inner: file.take(meta.len()),
                    remaining: meta.len(),
                },
            )
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&abs).map_err(io_err(&abs, "read link"))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, &rel, &target)
        } else {
            return Err(ImageError::Invalid {
                image: image.to_owned(),
                step: "hash tree",
                path: abs,
                detail: "not a directory, regular file or symbolic link".into(),
            });
        };
        written.map_err(io_err(&abs, "write tar entry"))?;
        entries += 1;
    }
    let hashing = builder.into_inner().map_err(io_err(root, "finish tar"))?;
    let digest = ImageDigest::from_bytes(hashing.ctx.finish().as_ref());
    Ok((
        hashing.inner,
        TreeSummary {
            digest,
            tar_bytes: hashing.bytes,
            entries,
            content_bytes,
        },
    ))
}

fn push_children(dir: &Path, rel: &Path, stack: &mut Vec<(PathBuf, PathBuf)>) -> io::Result<()> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names.into_iter().rev() {
        stack.push((dir.join(&name), rel.join(&name)));
    }
    Ok(())
}

struct Hashing<W> {
    inner: W,
    ctx: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that must yield exactly `remaining` bytes (the size in the header).
struct Exact<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("usr/bin")).expect("mkdir");
        std::fs::write(dir.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").expect("write");
        std::fs::set_permissions(
            dir.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("usr/bin", dir.join("bin")).expect("symlink");
        std::fs::write(dir.join("z"), b"last").expect("write");
        std::fs::write(dir.join("a"), b"first").expect("write");
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gb-tree-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    #[test]
    fn same_content_same_digest_whatever_the_times_and_creation_order() {
        let a = scratch("a");
        let b = scratch("b");
        tree(&a);
        // b: same content, made in another order, with other times.
        std::fs::write(b.join("a"), b"first").expect("write");
        std::fs::write(b.join("z"), b"last").expect("write");
        std::os::unix::fs::symlink("usr/bin", b.join("bin")).expect("symlink");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(b.join("usr/bin")).expect("mkdir");
        std::fs::write(b.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").expect("write");
        std::fs::set_permissions(
            b.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        let (da, db) = (
            digest_tree(&a, "t").expect("a"),
            digest_tree(&b, "t").expect("b"),
        );
        assert_eq!(da, db);
        assert_eq!(da.entries, 6);
        assert_eq!(da.content_bytes, 18 + 4 + 5);

        // One byte, one mode bit, one link target: each changes the digest.
        std::fs::write(b.join("a"), b"firsT").expect("write");
        let changed = digest_tree(&b, "t").expect("b");
        assert_ne!(changed.digest, da.digest);
        std::fs::write(b.join("a"), b"first").expect("write");
        assert_eq!(digest_tree(&b, "t").expect("b").digest, da.digest);
        std::fs::set_permissions(b.join("a"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        assert_ne!(digest_tree(&b, "t").expect("b").digest, da.digest);
        std::fs::remove_file(a.join("bin")).expect("rm");
        std::os::unix::fs::symlink("usr/sbin", a.join("bin")).expect("symlink");
        assert_ne!(digest_tree(&a, "t").expect("a").digest, da.digest);
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }

    #[test]
    fn the_tar_is_readable_and_holds_the_tree_in_order() {
        let a = scratch("read");
        tree(&a);
        let (bytes, summary) = write_canonical_tar(&a, "t", Vec::new()).expect("tar");
        assert_eq!(bytes.len() as u64, summary.tar_bytes);
        let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
        assert_eq!(summary.digest.hex(), hex::encode(d.as_ref()));
        let mut archive = tar::Archive::new(bytes.as_slice());
        let paths: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                assert_eq!(e.header().mtime().expect("mtime"), 0);
                e.path().expect("path").to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(paths, ["a", "bin", "usr", "usr/bin", "usr/bin/tool", "z"]);
        let _ = std::fs::remove_dir_all(&a);
    }

    #[test]
    fn a_symlink_is_recorded_never_followed_and_special_files_are_refused() {
        let a = scratch("hostile");
        // A link out of the tree: recorded as a link, /etc is not read.
        std::os::unix::fs::symlink("/etc", a.join("escape")).expect("symlink");
        let s = digest_tree(&a, "t").expect("digest");
        assert_eq!(s.entries, 1);
        assert_eq!(s.content_bytes, 0);
        let fifo = a.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let e = digest_tree(&a, "hostile").expect_err("fifo");
        assert!(
            e.to_string().starts_with("image hostile: hash tree:"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&a);
    }

    #[test]
    fn digests_parse_strictly() {
        assert!(ImageDigest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
        ] {
            assert!(ImageDigest::parse(bad).is_err(), "{bad}");
        }
    }
}
