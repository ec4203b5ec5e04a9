//! The standalone `glassbox-verify` binary, as an auditor runs it: on an
//! evidence bundle exported by a real Glassbox (a fixture: 14 records of
//! tenant `acme`, three submissions and a cancellation, proven against a
//! checkpoint of tree size 15) and on its checkpoint note. No database, no
//! server: this test proves the binary needs neither.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn key() -> String {
    std::fs::read_to_string(fixture("verifier.key"))
        .expect("verifier key")
        .trim()
        .to_owned()
}

fn verify(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_glassbox-verify"))
        .args(args)
        .output()
        .expect("run glassbox-verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "glassbox-verify-cli-{}-{}",
        std::process::id(),
        name
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

#[test]
fn an_exported_bundle_verifies_offline() {
    let bundle = fixture("bundle.tar");
    let (code, out, err) = verify(&["bundle", bundle.to_str().expect("path"), "--key", &key()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("bundle verifies: 14 records"), "{out}");
    assert!(out.contains("tree of size 15"), "{out}");

    let (code, out, _) = verify(&[
        "bundle",
        bundle.to_str().expect("path"),
        "--key",
        &key(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verifies"], true);
    assert_eq!(v["report"]["records"], 14);
    assert_eq!(v["report"]["exported_by"], "fixture@glassbox");
    assert_eq!(v["report"]["filters"]["tenant"], "acme");
}

#[test]
fn a_changed_record_does_not_verify() {
    let mut bytes = std::fs::read(fixture("bundle.tar")).expect("bundle");
    // Same length, so the tar stays well-formed: only the record changes.
    let at = bytes
        .windows(19)
        .position(|w| w == br#""reason":"fixture","#)
        .expect("the cancellation's reason");
    bytes[at + 16] = b'f';
    let tampered = temp("tampered.tar", &bytes);
    let (code, out, _) = verify(&[
        "bundle",
        tampered.to_str().expect("path"),
        "--key",
        &key(),
        "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verifies"], false);
    assert!(v["file"].as_str().is_some_and(|f| !f.is_empty()), "{v}");
}

#[test]
fn another_key_or_bad_input_is_refused() {
    let bundle = fixture("bundle.tar");
    let other = glassbox_verify::checkpoint::SigningKey::generate("glassbox.local/ledger")
        .expect("key")
        .verifier()
        .to_string();
    let (code, out, _) = verify(&["bundle", bundle.to_str().expect("path"), "--key", &other]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does NOT verify"), "{out}");

    let (code, _, err) = verify(&["bundle", bundle.to_str().expect("path")]);
    assert_eq!(code, 2);
    assert!(err.contains("--key is required"), "{err}");
    let (code, _, err) = verify(&[
        "bundle",
        bundle.to_str().expect("path"),
        "--key",
        "nonsense",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not a verifier key"), "{err}");
    let garbage = temp("garbage.tar", b"not a tar at all");
    let (code, _, _) = verify(&["bundle", garbage.to_str().expect("path"), "--key", &key()]);
    assert_ne!(code, 0);
}

#[test]
fn a_checkpoint_note_verifies_and_says_what_it_commits_to() {
    let note = fixture("checkpoint.txt");
    let (code, out, err) = verify(&[
        "checkpoint",
        note.to_str().expect("path"),
        "--key",
        &key(),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verifies"], true);
    assert_eq!(v["tree_size"], 15);
    let mut text = std::fs::read_to_string(&note).expect("note");
    text = text.replacen("\n15\n", "\n16\n", 1);
    let forged = temp("forged.txt", text.as_bytes());
    let (code, _, _) = verify(&[
        "checkpoint",
        forged.to_str().expect("path"),
        "--key",
        &key(),
    ]);
    assert_eq!(code, 1);
}
