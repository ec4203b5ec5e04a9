//! The canonical tar an evidence bundle is packed in, and a reader that
//! accepts only those exact bytes.
//!
//! Why not any tar: a tar reader accepts a lot — extra members after the
//! end-of-archive marker, garbage after it, a missing marker, arbitrary padding
//! bytes, other header fields. Each of those changes the bundle's SHA-256 (the
//! one `audit.exported` records) while the content still "verifies". So the
//! writer emits one canonical form (docs/evidence-bundle.md, "Byte layout")
//! and the reader rebuilds each header from (name, size) and compares bytes:
//! a bundle verifies only if it is byte for byte what the exporter wrote.
//!
//! Canonical member header (512 bytes, POSIX ustar): name NUL-padded to 100;
//! mode `0000644\0`; uid and gid `0000000\0`; size as 11 octal digits + NUL;
//! mtime `00000000000\0`; checksum as 6 octal digits + NUL + space; typeflag
//! `0`; linkname all NUL; magic `ustar\0`; version `00`; uname and gname all
//! NUL; devmajor and devminor `0000000\0`; prefix and the last 12 bytes NUL.
//! Contents follow, padded with NUL to a multiple of 512; the archive ends
//! with exactly two 512-byte blocks of NUL and nothing after them.

use std::io::{Read, Write};

pub const BLOCK: usize = 512;
/// Largest member a canonical header can describe (11 octal digits).
pub const MAX_MEMBER_BYTES: u64 = 0o77777777777;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error(
        "member {name}: {bytes} bytes is more than a bundle member may hold ({MAX_MEMBER_BYTES})"
    )]
    TooLarge { name: String, bytes: u64 },
    #[error("member name {0:?} is not 1-100 bytes of ASCII")]
    BadName(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    NotCanonical(String),
}

/// The canonical header of a member `name` of `size` bytes.
pub fn header(name: &str, size: u64) -> Result<[u8; BLOCK], TarError> {
    if name.is_empty() || name.len() > 100 || !name.is_ascii() || name.contains('\0') {
        return Err(TarError::BadName(name.to_owned()));
    }
    if size > MAX_MEMBER_BYTES {
        return Err(TarError::TooLarge {
            name: name.to_owned(),
            bytes: size,
        });
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[329..337].copy_from_slice(b"0000000\0");
    h[337..345].copy_from_slice(b"0000000\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Writes members in order, then the end-of-archive marker.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out }
    }

    /// Appends a member of exactly `size` bytes read from `content`.
    pub fn append(&mut self, name: &str, size: u64, content: impl Read) -> Result<(), TarError> {
        self.out.write_all(&header(name, size)?)?;
        let copied = std::io::copy(&mut content.take(size), &mut self.out)?;
        if copied != size {
            return Err(TarError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("member {name}: {copied} of {size} bytes"),
            )));
        }
        self.out.write_all(&[0u8; BLOCK][..padding(size)])?;
        Ok(())
    }

    /// Writes the two NUL blocks and returns the output.
    pub fn finish(mut self) -> Result<W, TarError> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a canonical tar member by member, refusing any byte the writer would
/// not have written.
pub struct Reader<R: Read> {
    inner: R,
    /// Bytes of the current member not yet read, and its padding.
    left: u64,
    pad: usize,
    name: String,
}

fn read_block(r: &mut impl Read, what: &str) -> Result<[u8; BLOCK], TarError> {
    let mut b = [0u8; BLOCK];
    let mut got = 0;
    while got < BLOCK {
        let n = r.read(&mut b[got..])?;
        if n == 0 {
            return Err(TarError::NotCanonical(format!(
                "the archive ends inside {what}"
            )));
        }
        got += n;
    }
    Ok(b)
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            left: 0,
            pad: 0,
            name: String::new(),
        }
    }

    fn skip_rest(&mut self) -> Result<(), TarError> {
        if self.left > 0 {
            let n = std::io::copy(&mut (&mut self.inner).take(self.left), &mut std::io::sink())?;
            if n != self.left {
                return Err(TarError::NotCanonical(format!(
                    "the archive ends inside {}",
                    self.name
                )));
            }
            self.left = 0;
        }
        if self.pad > 0 {
            let mut p = vec![0u8; self.pad];
            self.inner.read_exact(&mut p).map_err(|_| {
                TarError::NotCanonical(format!("the archive ends inside {}'s padding", self.name))
            })?;
            if p.iter().any(|b| *b != 0) {
                return Err(TarError::NotCanonical(format!(
                    "the padding after {} is not all NUL",
                    self.name
                )));
            }
            self.pad = 0;
        }
        Ok(())
    }

    /// Moves to the next member, which must be `expected`; returns its size.
    pub fn next_member(&mut self, expected: &str) -> Result<u64, TarError> {
        self.skip_rest()?;
        let h = read_block(&mut self.inner, &format!("the header of {expected}"))?;
        if h.iter().all(|b| *b == 0) {
            return Err(TarError::NotCanonical(format!(
                "{expected} is missing (the archive ends before it)"
            )));
        }
        let end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&h[..end]).into_owned();
        if name != expected {
            return Err(TarError::NotCanonical(format!(
                "found member {name:?} where {expected} belongs"
            )));
        }
        let size_field = &h[124..135];
        let size = std::str::from_utf8(size_field)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 8).ok())
            .ok_or_else(|| {
                TarError::NotCanonical(format!("the size of {name} is not 11 octal digits"))
            })?;
        if header(&name, size)? != h {
            return Err(TarError::NotCanonical(format!(
                "the header of {name} is not the canonical one"
            )));
        }
        self.name = name;
        self.left = size;
        self.pad = padding(size);
        Ok(size)
    }

    /// The end: exactly two NUL blocks, then nothing.
    pub fn finish(mut self) -> Result<(), TarError> {
        self.skip_rest()?;
        for _ in 0..2 {
            let b = read_block(&mut self.inner, "the end-of-archive marker").map_err(|_| {
                TarError::NotCanonical("the end-of-archive marker is missing or short".into())
            })?;
            if b.iter().any(|x| *x != 0) {
                return Err(TarError::NotCanonical(
                    "something follows the last member where the end-of-archive marker belongs"
                        .into(),
                ));
            }
        }
        let mut one = [0u8; 1];
        if self.inner.read(&mut one)? != 0 {
            return Err(TarError::NotCanonical(
                "bytes follow the end-of-archive marker".into(),
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the archive ends inside {}", self.name),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        for (n, c) in members {
            w.append(n, c.len() as u64, *c).expect("append");
        }
        w.finish().expect("finish")
    }

    fn read_all(bytes: &[u8], names: &[&str]) -> Result<Vec<Vec<u8>>, TarError> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        for n in names {
            r.next_member(n)?;
            let mut b = Vec::new();
            r.read_to_end(&mut b)?;
            out.push(b);
        }
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn the_writer_is_deterministic_and_the_reader_reads_it_back() {
        let a = archive(&[("a.txt", b"hello"), ("b.txt", &[7u8; 600])]);
        assert_eq!(a, archive(&[("a.txt", b"hello"), ("b.txt", &[7u8; 600])]));
        assert_eq!(a.len(), 512 + 512 + 512 + 1024 + 1024);
        let got = read_all(&a, &["a.txt", "b.txt"]).expect("reads");
        assert_eq!(got[0], b"hello");
        assert_eq!(got[1], vec![7u8; 600]);
        // GNU tar and Python's tarfile read it too: the header is plain ustar.
        assert_eq!(&a[257..265], b"ustar\x0000");
    }

    #[test]
    fn every_tamper_of_the_bytes_is_refused() {
        let good = archive(&[("a.txt", b"hello"), ("b.txt", b"world")]);
        let names = ["a.txt", "b.txt"];
        let mut appended = good.clone();
        appended.truncate(good.len() - 1024);
        appended.extend_from_slice(&archive(&[("c.txt", b"extra")]));
        let mut garbage = good.clone();
        garbage.extend_from_slice(b"garbage");
        let no_marker = good[..good.len() - 1024].to_vec();
        let half_marker = good[..good.len() - 512].to_vec();
        let mut padding = good.clone();
        padding[512 + 5] = b'x'; // a padding byte after "hello"
        let mut mtime = good.clone();
        mtime[136] = b'1';
        let mut extra_after_marker = good.clone();
        extra_after_marker.extend_from_slice(&archive(&[("c.txt", b"extra")]));
        for (what, bytes) in [
            ("appended member", &appended),
            ("trailing garbage", &garbage),
            ("missing marker", &no_marker),
            ("half a marker", &half_marker),
            ("changed padding", &padding),
            ("changed header field", &mtime),
            ("member after the marker", &extra_after_marker),
        ] {
            assert!(read_all(bytes, &names).is_err(), "{what} was accepted");
        }
        assert!(read_all(&good, &names).is_ok());
        assert!(read_all(&good, &["b.txt", "a.txt"]).is_err(), "order");
    }
}
