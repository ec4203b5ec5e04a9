//! Signed checkpoints: a C2SP tlog-checkpoint body inside a C2SP signed note,
//! signed with Ed25519 (ring).
//!
//! A checkpoint commits to the whole ledger prefix of `size` records through its
//! Merkle root. Keeping them outside the database's control (an auditor stores the
//! notes it has seen) is what makes a rewritten or truncated tail detectable: the
//! hash chain alone cannot tell a self-consistent rewrite from the original.

use crate::hash::Digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::io::Write as _;
use std::path::Path;

/// Ed25519's algorithm byte in C2SP note keys.
const ALG_ED25519: u8 = 0x01;
/// The em dash that starts every signature line.
const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("key name {0:?} is invalid: it must be non-empty and hold no spaces or '+'")]
    KeyName(String),
    #[error("key text is malformed: {0}")]
    KeyFormat(&'static str),
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is readable by others (mode {mode:o}); it must be 0600")]
    KeyFilePermissions { path: String, mode: u32 },
    #[error("signing key could not be created: {0}")]
    Crypto(&'static str),
    #[error("note is malformed: {0}")]
    NoteFormat(&'static str),
    #[error("note carries no valid signature by key {0}")]
    NoSignature(String),
    #[error("checkpoint body is malformed: {0}")]
    BodyFormat(&'static str),
}

/// `<origin>\n<size>\n<base64 root>\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Digest,
}

impl Checkpoint {
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        )
    }

    pub fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|s| !s.is_empty())
            .ok_or(CheckpointError::BodyFormat("origin line"))?;
        let size_line = lines
            .next()
            .ok_or(CheckpointError::BodyFormat("size line"))?;
        if size_line.is_empty()
            || !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(CheckpointError::BodyFormat(
                "size must be a decimal without leading zeros",
            ));
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| CheckpointError::BodyFormat("size"))?;
        let root_line = lines
            .next()
            .ok_or(CheckpointError::BodyFormat("root line"))?;
        let root = B64
            .decode(root_line)
            .ok()
            .and_then(|b| Digest::from_slice(&b))
            .ok_or(CheckpointError::BodyFormat(
                "root must be base64 of 32 bytes",
            ))?;
        if !body.ends_with('\n') {
            return Err(CheckpointError::BodyFormat("body must end with a newline"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

fn check_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
        return Err(CheckpointError::KeyName(name.to_owned()));
    }
    Ok(())
}

/// Splits `<name>+<hex id>+<base64(0x01 ‖ 32 bytes)>` (the shared shape of
/// verifier and private keys) and checks the name and algorithm byte.
fn split_key_text<'a>(
    text: &'a str,
    what: &'static str,
) -> Result<(&'a str, &'a str, [u8; 32]), CheckpointError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(CheckpointError::KeyFormat(
            "expected <name>+<hex id>+<base64 key>",
        ));
    };
    check_name(name)?;
    let key = B64
        .decode(key_b64)
        .map_err(|_| CheckpointError::KeyFormat("key is not base64"))?;
    if key.len() != 33 || key[0] != ALG_ED25519 {
        return Err(CheckpointError::KeyFormat(what));
    }
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&key[1..]);
    Ok((name, id_hex, bytes))
}

/// Key ID: the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let d = Digest::of_parts(&[name.as_bytes(), b"\n", &[ALG_ED25519], public]);
    [d.0[0], d.0[1], d.0[2], d.0[3]]
}

/// The public half, as `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub id: [u8; 4],
    pub public: [u8; 32],
}

impl VerifierKey {
    pub fn parse(text: &str) -> Result<VerifierKey, CheckpointError> {
        let (name, id_hex, public) = split_key_text(
            text.trim(),
            "key must be 0x01 followed by a 32-byte Ed25519 public key",
        )?;
        let id = key_id(name, &public);
        if hex::encode(id) != id_hex {
            return Err(CheckpointError::KeyFormat(
                "key id does not match name and key",
            ));
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            id,
            public,
        })
    }

    /// Verifies a signed note and returns the checkpoint it carries.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse_body(self.open_text(note)?)
    }

    /// Verifies a signed note of any text and returns its body.
    pub fn open_text<'n>(&self, note: &'n str) -> Result<&'n str, CheckpointError> {
        let (body, sigs) = split_note(note)?;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                return Err(CheckpointError::NoteFormat(
                    "signature line must start with an em dash and a space",
                ));
            };
            let Some((name, sig_b64)) = rest.split_once(' ') else {
                return Err(CheckpointError::NoteFormat(
                    "signature line needs a key name and a signature",
                ));
            };
            if name != self.name {
                continue;
            }
            let Ok(sig) = B64.decode(sig_b64) else {
                continue;
            };
            if sig.len() != 4 + 64 || sig[..4] != self.id {
                continue;
            }
            if UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(body.as_bytes(), &sig[4..])
                .is_ok()
            {
                return Ok(body);
            }
        }
        Err(CheckpointError::NoSignature(self.to_string()))
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(&self.public);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(key)
        )
    }
}

fn split_note(note: &str) -> Result<(&str, &str), CheckpointError> {
    let at = note.find("\n\n").ok_or(CheckpointError::NoteFormat(
        "no blank line between text and signatures",
    ))?;
    let (body, sigs) = (&note[..at + 1], &note[at + 2..]);
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(CheckpointError::NoteFormat(
            "signature block must be non-empty and end with a newline",
        ));
    }
    Ok((body, sigs))
}

/// An Ed25519 signing key with its note name.
pub struct SigningKey {
    name: String,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed.
        write!(f, "SigningKey({})", self.verifier())
    }
}

impl SigningKey {
    pub fn generate(name: &str) -> Result<SigningKey, CheckpointError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| CheckpointError::Crypto("no randomness"))?;
        Self::from_seed(name, seed)
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Result<SigningKey, CheckpointError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| CheckpointError::Crypto("bad Ed25519 seed"))?;
        Ok(SigningKey {
            name: name.to_owned(),
            seed,
            pair,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> VerifierKey {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        VerifierKey {
            name: self.name.clone(),
            id: key_id(&self.name, &public),
            public,
        }
    }

    /// `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>` (the signed-note
    /// private key format of Go's `note` package).
    pub fn to_private_text(&self) -> String {
        let v = self.verifier();
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(v.id),
            B64.encode(key)
        )
    }

    pub fn from_private_text(text: &str) -> Result<SigningKey, CheckpointError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(CheckpointError::KeyFormat(
                "private key must start with PRIVATE+KEY+",
            ))?;
        let (name, id_hex, seed) =
            split_key_text(rest, "key must be 0x01 followed by a 32-byte seed")?;
        let k = Self::from_seed(name, seed)?;
        if hex::encode(k.verifier().id) != id_hex {
            return Err(CheckpointError::KeyFormat("key id does not match the key"));
        }
        Ok(k)
    }

    /// Writes the private key to `path` with mode 0600; refuses to overwrite.
    pub fn write_new_file(&self, path: &Path) -> Result<(), CheckpointError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| CheckpointError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(format!("{}\n", self.to_private_text()).as_bytes())
            .map_err(io)?;
        Ok(())
    }

    /// Loads a private key file, refusing one that group or others may read.
    pub fn load_file(path: &Path) -> Result<SigningKey, CheckpointError> {
        use std::os::unix::fs::PermissionsExt as _;
        let io = |source| CheckpointError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CheckpointError::KeyFilePermissions {
                path: path.display().to_string(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::from_private_text(&text)
    }

    /// Loads the key at `path`, or creates one named `name` there if none exists.
    pub fn load_or_generate(path: &Path, name: &str) -> Result<SigningKey, CheckpointError> {
        if path.exists() {
            Self::load_file(path)
        } else {
            let k = Self::generate(name)?;
            k.write_new_file(path)?;
            Ok(k)
        }
    }

    /// Signs a checkpoint body as a C2SP signed note.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_text(&checkpoint.body())
    }

    /// Signs any note text (non-empty lines, each ending in a newline) as a
    /// C2SP signed note — used for evidence bundle manifests.
    pub fn sign_text(&self, body: &str) -> String {
        let sig = self.pair.sign(body.as_bytes());
        let mut blob = self.verifier().id.to_vec();
        blob.extend_from_slice(sig.as_ref());
        format!("{body}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint {
            origin: "glassbox.test/ledger".into(),
            size: 42,
            root: Digest::of(b"root"),
        }
    }

    #[test]
    fn sign_and_open_round_trip() {
        let k = SigningKey::generate("glassbox.test/ledger").expect("key");
        let note = k.sign(&cp());
        assert!(note.starts_with("glassbox.test/ledger\n42\n"));
        assert!(note.contains("\n\n\u{2014} glassbox.test/ledger "));
        let v = VerifierKey::parse(&k.verifier().to_string()).expect("parse verifier");
        assert_eq!(v.open(&note).expect("opens"), cp());
    }

    #[test]
    fn tampered_note_or_wrong_key_is_refused() {
        let k = SigningKey::generate("glassbox.test/ledger").expect("key");
        let note = k.sign(&cp());
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            k.verifier().open(&forged),
            Err(CheckpointError::NoSignature(_))
        ));
        let other = SigningKey::generate("glassbox.test/ledger").expect("key");
        assert!(other.verifier().open(&note).is_err());
    }

    #[test]
    fn private_key_text_round_trips_and_checks_id() {
        let k = SigningKey::generate("ledger-a").expect("key");
        let text = k.to_private_text();
        let back = SigningKey::from_private_text(&text).expect("parse");
        assert_eq!(back.verifier(), k.verifier());
        let tampered = text.replacen("PRIVATE+KEY+ledger-a+", "PRIVATE+KEY+ledger-b+", 1);
        assert!(SigningKey::from_private_text(&tampered).is_err());
    }

    /// The key ID and verifier format match the C2SP note spec's published
    /// example key (`PeterNeumann`, from golang.org/x/mod/sumdb/note).
    #[test]
    fn verifier_key_matches_published_example() {
        let text = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let v = VerifierKey::parse(text).expect("published example parses");
        assert_eq!(v.to_string(), text);
    }

    #[test]
    fn key_file_is_0600_and_loose_permissions_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("gb-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("ledger.key");
        let k = SigningKey::load_or_generate(&path, "ledger").expect("generate");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = SigningKey::load_or_generate(&path, "ignored").expect("load");
        assert_eq!(again.verifier(), k.verifier());
        assert!(k.write_new_file(&path).is_err(), "never overwrites");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            SigningKey::load_file(&path),
            Err(CheckpointError::KeyFilePermissions { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn body_parsing_is_strict() {
        assert!(Checkpoint::parse_body("o\n042\nAAAA\n").is_err());
        assert!(Checkpoint::parse_body("o\n1\nnotbase64!\n").is_err());
        assert_eq!(Checkpoint::parse_body(&cp().body()).expect("parse"), cp());
    }
}
